"""D4RL-style datasets built here, for any gymnasium MuJoCo task (D4RL itself cannot be
downloaded on every machine, and its v2 tasks are not the v5 ones).

The recipe follows D4RL (Fu et al. 2020, section 5): one SAC behaviour run per
(env, train_steps, seed), with policy snapshots at every evaluation.

- expert: rollouts of the final policy;
- medium: rollouts of the snapshot whose return is closest to one third of the way from
  the random policy's return to the expert's (D4RL: "about a third of the expert");
- medium-replay: the behaviour run's replay buffer up to that snapshot (the last `size`
  transitions of it when it is longer);
- medium-expert: half medium, half expert rollouts;
- random: uniform random actions.

Collection uses stochastic actions, as D4RL did. ref_min_score is the random policy's mean
return and ref_max_score the expert's, so normalized scores are defined. The behaviour run
lives in a cache folder and resumes from its checkpoint if interrupted; a built dataset is
found in the Minari store and returned at once.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from worldmodels.data import minari_io

QUALITIES = ("random", "medium", "medium-replay", "expert", "medium-expert")
REF_EPISODES = 10  # episodes behind each reference score


@dataclass
class Recipe:
    env_id: str = "HalfCheetah-v5"
    quality: str = "medium-replay"
    size: int = 20_000
    train_steps: int = 30_000
    seed: int = 0

    @property
    def dataset_id(self) -> str:
        return minari_io.recipe_dataset_id(self.env_id, self.quality, self.size, self.train_steps, self.seed)


def cache_root() -> Path:
    return Path(os.environ.get("O2O_CACHE", Path.home() / ".cache" / "o2o-worldmodels"))


@contextmanager
def file_lock(path: Path):
    """Parallel sweep jobs asking for the same dataset build it once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build(recipe: Recipe, device: torch.device | str = "cpu", progress: bool = True) -> str:
    """Build (or find) the recipe's Minari dataset and return its ID."""
    if recipe.quality not in QUALITIES:
        raise ValueError(f"quality={recipe.quality!r} is not a recipe; choose one of {', '.join(QUALITIES)}.")
    dataset_id = recipe.dataset_id
    if minari_io.dataset_exists(dataset_id):
        return dataset_id
    device = torch.device(device)
    run_dir = cache_root() / "behaviour" / f"{recipe.env_id}-t{recipe.train_steps}-seed{recipe.seed}"
    with file_lock(run_dir.with_suffix(".lock")):
        if minari_io.dataset_exists(dataset_id):  # built by a parallel job while we waited
            return dataset_id
        behaviour = train_behaviour(recipe, run_dir, device, progress)
        episodes = collect(recipe, behaviour, device)
        minari_io.write_minari_dataset(
            dataset_id, recipe.env_id, episodes, behaviour.random_return, behaviour.expert_return,
            description=f"D4RL-style {recipe.quality} dataset built by o2o-worldmodels ({recipe}).",
            algorithm_name="SAC (o2o-worldmodels recipe)",
        )
    return dataset_id


@dataclass
class Behaviour:
    snapshots: list[dict]  # {"env_steps", "return", "actor"} in training order
    replay: dict[str, torch.Tensor]  # the behaviour run's transitions, oldest first
    random_return: float
    expert_return: float
    medium: dict  # the chosen medium snapshot


def train_behaviour(recipe: Recipe, run_dir: Path, device: torch.device, progress: bool) -> Behaviour:
    from agents.core.agent import EnvSpec
    from agents.core.config import TrainerConfig
    from agents.core.envs import box_bounds, make_env, run_episodes
    from agents.core.trainer import Trainer
    from agents.sac import SAC, SACConfig

    env = make_env(recipe.env_id)
    low, high = box_bounds(env)
    spec = EnvSpec(env.observation_space.shape[0], env.action_space.shape[0], low, high)
    env.close()
    torch.manual_seed(recipe.seed)
    agent = SAC(SACConfig(), spec, device)
    evals = 10
    cfg = TrainerConfig(
        offline_updates=0, online_steps=recipe.train_steps,
        warmup_steps=min(10_000, recipe.train_steps // 10),  # SAC's uniform-random start (Haarnoja et al. 2018)
        eval_every=max(recipe.train_steps // evals, 1), eval_episodes=3,
        log_every=1000, checkpoint_every=max(recipe.train_steps // evals, 1), progress=progress,
    )
    snapshot_dir = run_dir / "snapshots"
    snapshot_dir.mkdir(parents=True, exist_ok=True)

    def snapshot(trainer: Trainer, result) -> None:
        path = snapshot_dir / f"{trainer.state.env_steps:09d}.pt"
        torch.save({"env_steps": trainer.state.env_steps, "return": result.mean_return,
                    "actor": {k: v.cpu() for k, v in agent.actor.state_dict().items()}}, path)

    trainer = Trainer(agent, cfg, lambda: make_env(recipe.env_id), None, run_dir, seed=recipe.seed,
                      tensorboard=False)
    trainer.on_evaluate.append(snapshot)
    trainer.run()
    snapshots = [torch.load(p, weights_only=True) for p in sorted(snapshot_dir.glob("*.pt"))]

    def returns(policy, seed: int) -> float:
        return float(run_episodes(lambda: make_env(recipe.env_id), policy, REF_EPISODES, seed, device).returns.mean())

    refs_path = run_dir / "reference_scores.json"  # shared by every quality built from this run
    if refs_path.exists():
        refs = json.loads(refs_path.read_text())
    else:
        refs = {"random": returns(lambda o: agent.random_action(o.shape[0]), 1_000_000 + recipe.seed),
                "expert": returns(lambda o: agent.act(o, deterministic=True), 2_000_000 + recipe.seed)}
        refs_path.write_text(json.dumps(refs))
    random_return, expert_return = refs["random"], refs["expert"]
    target = random_return + (expert_return - random_return) / 3
    medium = min(snapshots, key=lambda s: abs(s["return"] - target))
    return Behaviour(snapshots, trainer.online.valid(), random_return, expert_return, medium)


def collect(recipe: Recipe, behaviour: Behaviour, device: torch.device) -> list[dict]:
    from agents.core.envs import run_episodes

    episode_limit = _env(recipe.env_id).spec.max_episode_steps or 1000

    def rollouts(actor_state: dict | None, n: int, seed: int) -> list[dict]:
        policy = _policy(recipe.env_id, actor_state, device)
        # as many lockstep envs as whole episodes fit in n, so episodes are not cut short
        num_envs = max(1, min(10, n // episode_limit))
        return run_episodes(lambda: _env(recipe.env_id), policy, 10**9, seed, device,
                            record=True, max_transitions=n, num_envs=num_envs).episodes

    seed = 3_000_000 + recipe.seed
    final = behaviour.snapshots[-1]["actor"]
    match recipe.quality:
        case "random":
            return rollouts(None, recipe.size, seed)
        case "medium":
            return rollouts(behaviour.medium["actor"], recipe.size, seed)
        case "expert":
            return rollouts(final, recipe.size, seed)
        case "medium-expert":
            half = recipe.size // 2
            return rollouts(behaviour.medium["actor"], half, seed) + rollouts(final, recipe.size - half, seed + 1)
        case "medium-replay":
            end = behaviour.medium["env_steps"]
            rows = {k: v[max(0, end - recipe.size): end].cpu().numpy() for k, v in behaviour.replay.items()}
            return replay_episodes(rows)
    raise ValueError(recipe.quality)


def _env(env_id: str):
    from agents.core.envs import make_env

    return make_env(env_id)


def _policy(env_id: str, actor_state: dict | None, device: torch.device):
    """A stochastic behaviour policy from a snapshot (None = uniform random)."""
    from agents.core.envs import box_bounds
    from agents.core.networks import TanhGaussianActor

    env = _env(env_id)
    low, high = box_bounds(env)
    if actor_state is None:
        return lambda o: low.to(device) + torch.rand(o.shape[0], low.numel(), device=device) * (high - low).to(device)
    actor = TanhGaussianActor(env.observation_space.shape[0], low.numel(), (high - low) / 2, (high + low) / 2,
                              hidden=[actor_state["trunk.0.weight"].shape[0]] * _depth(actor_state))
    actor.load_state_dict(actor_state)
    actor.to(device)
    return lambda o: actor(o)[0]


def _depth(actor_state: dict) -> int:
    return sum(1 for k in actor_state if k.startswith("trunk.") and k.endswith(".weight")) - 1


def replay_episodes(rows: dict[str, np.ndarray]) -> list[dict]:
    """Split replay rows (oldest first) into Minari episodes at terminals and truncations.

    The slice may begin or end inside an episode: the first piece starts mid-episode (a valid
    trajectory from that state) and an unfinished last piece is marked truncated.
    """
    ends = np.flatnonzero((rows["terminal"] > 0) | (rows["truncated"] > 0))
    bounds = list(ends + 1)
    if not bounds or bounds[-1] != len(rows["rew"]):
        bounds.append(len(rows["rew"]))
    episodes, start = [], 0
    for stop in bounds:
        term = rows["terminal"][start:stop] > 0
        trunc = rows["truncated"][start:stop] > 0
        trunc[-1] = trunc[-1] or not term[-1]
        episodes.append({
            "observations": np.concatenate([rows["obs"][start:stop], rows["next_obs"][stop - 1: stop]]),
            "actions": rows["act"][start:stop],
            "rewards": rows["rew"][start:stop],
            "terminations": term,
            "truncations": trunc,
        })
        start = stop
    return episodes
