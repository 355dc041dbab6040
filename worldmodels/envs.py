"""Environments: construction, exact state capture for checkpoints, and batched episodes.

`run_episodes` steps K environments in lockstep so the policy runs one batched forward per
step; evaluation and the dataset recipes both use it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
from gymnasium.wrappers import TimeLimit


def _quiet_mujoco() -> None:
    """MuJoCo >= 3.3 warns on every gymnasium v5 model load that `settotalmass` is deprecated
    (gymnasium's XML, nothing we can fix); let that one through once, everything else as usual."""
    try:
        import mujoco
    except ImportError:
        return
    seen: set[str] = set()

    def handler(message: str) -> None:
        if "settotalmass" in message:
            if message in seen:
                return
            seen.add(message)
        warnings.warn(f"MuJoCo: {message.strip()}", stacklevel=2)

    if getattr(mujoco.get_mju_user_warning(), "__name__", "") != "handler":
        mujoco.set_mju_user_warning(handler)


def make_env(env_id: str) -> gym.Env:
    _quiet_mujoco()
    try:
        return gym.make(env_id)
    except gym.error.Error as err:
        raise gym.error.Error(
            f"Cannot make environment {env_id!r}: {err}. Use a gymnasium ID such as HalfCheetah-v5."
        ) from err


def box_bounds(env: gym.Env) -> tuple[torch.Tensor, torch.Tensor]:
    space = env.action_space
    if not isinstance(space, gym.spaces.Box):
        raise TypeError(f"Only continuous (Box) action spaces are supported, got {space}.")
    return torch.as_tensor(space.low, dtype=torch.float32), torch.as_tensor(space.high, dtype=torch.float32)


def _time_limit(env: gym.Env) -> TimeLimit | None:
    while isinstance(env, gym.Wrapper):
        if isinstance(env, TimeLimit):
            return env
        env = env.env
    return None


def _mj_state_spec():
    try:
        import mujoco
    except ImportError:
        return None
    return mujoco.mjtState.mjSTATE_INTEGRATION


MJ_STATE = _mj_state_spec()


def get_env_state(env: gym.Env) -> dict:
    """Everything needed to continue an episode exactly: simulator state, RNG, time-limit counter."""
    u = env.unwrapped
    state: dict = {"np_random": u.np_random.bit_generator.state}
    limit = _time_limit(env)
    if limit is not None:
        state["elapsed_steps"] = int(limit._elapsed_steps or 0)
    if hasattr(u, "data") and hasattr(u, "model"):  # MuJoCo: the full integration state, including
        import mujoco  # the solver's warm start, so the next step is bitwise the uninterrupted one

        buffer = np.empty(mujoco.mj_stateSize(u.model, MJ_STATE))
        mujoco.mj_getState(u.model, u.data, buffer, MJ_STATE)
        state["mujoco"] = torch.as_tensor(buffer)
    elif hasattr(u, "state"):  # classic control
        state["state"] = torch.as_tensor(np.asarray(u.state, dtype=np.float64))
    return state


def set_env_state(env: gym.Env, state: dict) -> None:
    env.reset()  # wrappers insist on a reset before stepping; then overwrite everything
    u = env.unwrapped
    if "mujoco" in state:
        import mujoco

        mujoco.mj_setState(u.model, u.data, state["mujoco"].numpy(), MJ_STATE)
        mujoco.mj_forward(u.model, u.data)
    elif "state" in state:
        u.state = state["state"].numpy()
    limit = _time_limit(env)
    if limit is not None:
        limit._elapsed_steps = state.get("elapsed_steps", 0)
    u.np_random.bit_generator.state = state["np_random"]


@dataclass
class EpisodeResults:
    returns: np.ndarray  # [K]
    lengths: np.ndarray  # [K]
    episodes: list[dict] = field(default_factory=list)  # recorded trajectories (Minari layout)


def run_episodes(
    env_fn: Callable[[], gym.Env],
    policy: Callable[[torch.Tensor], torch.Tensor],
    num_episodes: int,
    seed: int,
    device: torch.device,
    record: bool = False,
    max_transitions: int | None = None,
    num_envs: int = 10,
) -> EpisodeResults:
    """Run whole episodes with a batched policy; K envs step in lockstep.

    With `record`, each episode is returned as observations [T+1], actions, rewards,
    terminations, truncations [T]. `max_transitions` stops early and marks the cut
    episode truncated (its bootstrap stays valid).
    """
    returns, lengths, episodes = [], [], []
    total = 0
    next_seed = seed
    while len(returns) < num_episodes and (max_transitions is None or total < max_transitions):
        k = min(num_envs, num_episodes - len(returns))
        envs = [env_fn() for _ in range(k)]
        obs = np.stack([env.reset(seed=next_seed + i)[0] for i, env in enumerate(envs)]).astype(np.float32)
        next_seed += k
        alive = np.ones(k, dtype=bool)
        ep_ret, ep_len = np.zeros(k), np.zeros(k, dtype=int)
        traj = [{"observations": [obs[i]], "actions": [], "rewards": [], "terminations": [], "truncations": []}
                for i in range(k)]
        while alive.any():
            idx = np.flatnonzero(alive)
            with torch.no_grad():
                act = policy(torch.as_tensor(obs[idx], device=device)).cpu().numpy()
            for j, i in enumerate(idx):
                o, r, term, trunc, _ = envs[i].step(act[j])
                total += 1
                cut = max_transitions is not None and total >= max_transitions
                ep_ret[i] += r
                ep_len[i] += 1
                obs[i] = o
                if record:
                    t = traj[i]
                    t["observations"].append(np.asarray(o, dtype=np.float32))
                    t["actions"].append(act[j])
                    t["rewards"].append(r)
                    t["terminations"].append(term)
                    t["truncations"].append(trunc or (cut and not term))
                if term or trunc or cut:
                    alive[i] = False
                if cut:
                    alive[:] = False
                    break
        for i in range(k):
            if ep_len[i] == 0:
                continue
            returns.append(ep_ret[i])
            lengths.append(ep_len[i])
            if record:
                t = traj[i]
                if not (t["terminations"][-1] or t["truncations"][-1]):
                    t["truncations"][-1] = True  # cut by max_transitions while another env stepped
                episodes.append({
                    "observations": np.stack(t["observations"]).astype(np.float32),
                    "actions": np.stack(t["actions"]).astype(np.float32),
                    "rewards": np.asarray(t["rewards"], dtype=np.float32),
                    "terminations": np.asarray(t["terminations"], dtype=bool),
                    "truncations": np.asarray(t["truncations"], dtype=bool),
                })
        for env in envs:
            env.close()
    return EpisodeResults(np.asarray(returns, dtype=np.float64), np.asarray(lengths), episodes)
