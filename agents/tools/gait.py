"""What a planar locomotion policy (HalfCheetah, Hopper, Walker2d) physically does, and what a dataset holds:
the figures behind a score.

    python -m agents.tools.gait RUN_DIR [episodes=5]   # every policy of policies/ (trainer.keep_policies=true),
                                                       # else the checkpoint's
    python -m agents.tools.gait dataset=MINARI_ID       # the logged episodes
    python -m agents.tools.gait RUN_DIR logged_starts=60 # also: each policy from 60 logged states and from
                                                       # the data's episode starts (below)

For each kept policy it replays that evaluation's deterministic episodes (its seeds, so the score is
the one in eval.csv); for a checkpoint it plays `episodes` fresh ones (seed 10**6). One Markdown row
each: normalized score, forward velocity, control cost per step, the share of steps with the torso
upside down (|torso angle| > 90 degrees) and the share of action components at the box's edge
(|a| > 0.95 of the half-range). For a dataset, the same figures per logged episode.

With `logged_starts=N`, a second table plays each policy for 200 steps from N logged states (a fixed draw)
and from every logged episode's first state, the simulator set to each state (planar walkers observe qpos[1:]
and qvel, and the x position does not change the dynamics), and gives the forward velocity over the last 50
steps and the share of starts that end running backwards. The offline phase trains the policy on logged states
and short model rollouts from them, while an evaluation starts from a standstill: a policy can run forward from
the first and backward from the second (README, "Why MOPO/MOORe fell", step 12).

Why: a score alone cannot tell a policy that stands still pushing its joints from one that walks
slowly; on HalfCheetah a motionless policy scores anywhere between its zero-action value and that
value minus the full control cost (README, "Why MOPO/MOORe fell", step 7).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from agents.core.checkpoint import load_checkpoint
from agents.core.config import ConfigError
from agents.core.entry import USER_ERRORS, load_dataset, one_line
from agents.core.trainer import POLICIES_DIR
from agents.tools.exploitation import load_trainer
from worldmodels.data.minari_load import load_offline_dataset
from worldmodels.data.validate import validate
from worldmodels.envs import make_env, run_episodes

#: planar walkers whose observation is qpos[1:] then qvel: obs[1] is the torso angle, obs[nq - 1] = qvel[0]
#: the forward velocity (gymnasium v5, exclude_current_positions_from_observation=True)
PLANAR = ("HalfCheetah", "Hopper", "Walker2d")


@dataclass
class Body:
    """What the figures need of a planar walker: where its forward velocity sits in the observation, its
    control-cost weight, its action box, and its spaces (to validate a dataset against)."""
    vel_index: int
    ctrl_weight: float
    act_low: np.ndarray
    act_high: np.ndarray
    observation_space: gym.Space
    action_space: gym.Space


def body_of(env_id: str) -> Body:
    if env_id.split("-")[0] not in PLANAR:
        raise ConfigError(f"{env_id}: this tool reads planar walkers only ({', '.join(PLANAR)}).")
    env = make_env(env_id)
    try:
        return Body(env.unwrapped.model.nq - 1, float(env.unwrapped._ctrl_cost_weight),
                    np.asarray(env.action_space.low), np.asarray(env.action_space.high),
                    env.observation_space, env.action_space)
    finally:
        env.close()


def gait_figures(obs: np.ndarray, act: np.ndarray, body: Body) -> dict[str, float]:
    """Means over one episode's steps: obs [T(+1), obs_dim], act [T, act_dim]."""
    half, mid = (body.act_high - body.act_low) / 2, (body.act_high + body.act_low) / 2
    return {"forward velocity": float(obs[:, body.vel_index].mean()),
            "control cost per step": float(body.ctrl_weight * np.square(act).sum(-1).mean()),
            "upside down": float(np.mean(np.abs(obs[:, 1]) > math.pi / 2)),
            "actions at the edge": float(np.mean(np.abs((act - mid) / half) > 0.95))}


def normalized(ret: float, refs: tuple) -> float:
    lo, hi = refs
    return 100.0 * (ret - lo) / (hi - lo) if lo is not None and hi is not None and hi != lo else float("nan")


def row(label: str, score: float, figs: list[dict[str, float]]) -> str:
    mean = {k: np.mean([f[k] for f in figs]) for k in figs[0]}
    return (f"| {label} | {score:.1f} | {mean['forward velocity']:.2f} | {mean['control cost per step']:.3f} | "
            f"{mean['upside down']:.2f} | {mean['actions at the edge']:.2f} |")


HEADER = ("| {} | normalized score | forward velocity | control cost per step | share upside down | "
          "share of actions at the edge |\n|---|---|---|---|---|---|")


def policies_of(run_dir: Path) -> list[Path]:
    kept = sorted((run_dir / POLICIES_DIR).glob("*.pt"))
    return kept or [run_dir / "checkpoint.pt"]


def run_report(run_dir: Path, episodes: int) -> list[str]:
    trainer, _ = load_trainer(run_dir, model_based=False)
    body = body_of(trainer.summary_extra["env_id"])
    lines = [HEADER.format("offline updates / env steps")]
    for path in policies_of(run_dir):
        state = load_checkpoint(path, trainer.device)  # plain data only
        trainer.agent.load_state_dict(state["agent"])
        # a kept policy replays its own evaluation (same seed, same episodes: the same score); a checkpoint
        # gets `episodes` fresh ones
        seed, n = (state["eval_seed"], state["eval_episodes"]) if "eval_seed" in state else (10**6, episodes)
        played = run_episodes(trainer.env_fn, lambda o: trainer.agent.act(o, deterministic=True), n,
                              seed=seed, device=trainer.device, record=True)
        figs = [gait_figures(np.asarray(e["observations"]), np.asarray(e["actions"]), body) for e in played.episodes]
        at = state if "offline_updates" in state else state["trainer"]  # a kept policy, or a checkpoint
        score = normalized(float(played.returns.mean()), trainer.ref_scores)
        lines.append(row(f"{at['offline_updates']} / {at['env_steps']}", score, figs))
    return lines


def restore_state(env: gym.Env, obs: np.ndarray, vel_index: int) -> None:
    """Set a planar walker's simulator to the state behind obs = (qpos[1:], qvel); x = 0 (it does not enter the
    dynamics or the observation). vel_index = nq - 1, where qvel starts."""
    env.unwrapped.set_state(np.r_[0.0, obs[:vel_index]], obs[vel_index:])


def velocities_from(env: gym.Env, policy, obs0: np.ndarray, vel_index: int, steps: int = 200) -> np.ndarray:
    """Forward velocities of `steps` steps of `policy` (obs [o] -> act [a], numpy) from the state behind obs0,
    fewer if the walker falls (a termination)."""
    restore_state(env, obs0, vel_index)
    obs, vels = obs0, []
    for _ in range(steps):
        obs, _, terminated, _, _ = env.step(policy(obs))
        vels.append(float(obs[vel_index]))
        if terminated:
            break
    return np.asarray(vels)


LOGGED_HEADER = ("| offline updates / env steps | from {n} logged states: velocity, last 50 of 200 steps "
                 "| share ending backwards | from the data's {k} episode starts: velocity | share ending backwards |\n"
                 "|---|---|---|---|---|")


def logged_starts_report(run_dir: Path, n: int) -> list[str]:
    """Each kept policy from n logged states and from the logged episodes' first states (the module docstring)."""
    trainer, cfg = load_trainer(run_dir, model_based=False)
    body = body_of(trainer.summary_extra["env_id"])
    data = load_dataset(cfg, trainer.device)
    first = np.flatnonzero(data.episode_starts)  # each logged episode's first row
    drawn = np.random.default_rng(0).choice(data.num_transitions, min(n, data.num_transitions), replace=False)
    env = make_env(trainer.summary_extra["env_id"])
    env.reset(seed=0)
    agent, device = trainer.agent, trainer.device

    def policy(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            o = torch.as_tensor(obs, dtype=torch.float32, device=device)[None]
            return agent.act(o, deterministic=True)[0].cpu().numpy()

    def figures(rows: np.ndarray) -> tuple[float, float]:
        ends = np.array([velocities_from(env, policy, data.observations[r], body.vel_index)[-50:].mean()
                         for r in rows])
        return float(ends.mean()), float(np.mean(ends < 0))

    lines = [LOGGED_HEADER.format(n=len(drawn), k=len(first))]
    try:
        for path in policies_of(run_dir):
            state = load_checkpoint(path, trainer.device)
            agent.load_state_dict(state["agent"])
            at = state if "offline_updates" in state else state["trainer"]
            (v_logged, back_logged), (v_first, back_first) = figures(drawn), figures(first)
            lines.append(f"| {at['offline_updates']} / {at['env_steps']} | {v_logged:.2f} | {back_logged:.2f} | "
                         f"{v_first:.2f} | {back_first:.2f} |")
    finally:
        env.close()
    return lines


def dataset_report(dataset_id: str) -> list[str]:
    ds = load_offline_dataset(dataset_id)
    body = body_of(ds.env_id)
    validate(ds, body.observation_space, body.action_space)  # wrong shapes, NaNs ...: one DatasetError line
    ends = np.flatnonzero(np.asarray(ds.terminations) | np.asarray(ds.truncations))
    starts = np.r_[0, ends[:-1] + 1]
    refs = (ds.ref_min_score, ds.ref_max_score)
    obs, act, rew = np.asarray(ds.observations), np.asarray(ds.actions), np.asarray(ds.rewards)
    lines = [HEADER.format("logged episode (rows)")]
    for s, e in zip(starts, ends, strict=True):
        figs = gait_figures(obs[s:e + 1], act[s:e + 1], body)
        lines.append(row(f"{s}-{e}", normalized(float(rew[s:e + 1].sum()), refs), [figs]))
    total = gait_figures(obs, act, body)
    lines.append(row("all rows", float("nan"), [total]).replace("| nan |", "| |"))
    return lines


def main(argv: list[str]) -> list[str]:
    keys = ("episodes", "dataset", "logged_starts")
    opts = dict(a.split("=", 1) for a in argv if "=" in a and a.split("=", 1)[0] in keys)
    args = [a for a in argv if a.split("=", 1)[0] not in keys]
    episodes, logged = opts.get("episodes", "5"), opts.get("logged_starts", "0")
    if not episodes.isdigit() or int(episodes) < 1:
        raise ConfigError(f"episodes={episodes} must be a positive integer (default 5).")
    if not logged.isdigit():
        raise ConfigError(f"logged_starts={logged} must be a non-negative integer (default 0: off).")
    if ("dataset" in opts) == (len(args) == 1) or len(args) > 1 or ("dataset" in opts and int(logged)):
        raise ConfigError("usage: python -m agents.tools.gait RUN_DIR [episodes=5] [logged_starts=N]  or  "
                          "python -m agents.tools.gait dataset=MINARI_ID")
    if "dataset" in opts:
        lines = dataset_report(opts["dataset"])
    else:
        lines = run_report(Path(args[0]), int(episodes))
        if int(logged):
            lines += [""] + logged_starts_report(Path(args[0]), int(logged))
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    torch.set_num_threads(1)
    try:
        main(sys.argv[1:])
    except (*USER_ERRORS, OSError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
