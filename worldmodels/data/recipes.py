"""D4RL-style datasets built here, for any gymnasium MuJoCo task (D4RL itself cannot be
downloaded on every machine, and its v2 tasks are not the v5 ones).

The recipe follows D4RL (Fu et al. 2020, section 5): one SAC behaviour run per
(env, train_steps, seed), with policy snapshots at every evaluation. The learner that trains
it is passed in (a `BehaviourLearner`; the agents' SAC is agents/core/behaviour.py), so this
layer never imports the agents.

- expert: rollouts of the best trained snapshot (highest evaluation return; D4RL trains SAC to
  completion and takes its final policy, but a short run's final policy can be far below its best:
  a 30k-step Hopper run peaked at 712 and ended at 352);
- medium: rollouts of the trained snapshot whose return is closest to one third of the way from
  the random policy's return to the expert's (D4RL: "about a third of the expert"). Snapshots taken
  during the learner's random warm-up are never medium (nor expert): they are untrained policies, and
  a medium-replay cut there would hold random actions only;
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
import signal
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from worldmodels.data.minari_load import dataset_exists
from worldmodels.data.minari_write import recipe_dataset_id, write_minari_dataset
from worldmodels.envs import make_env, run_episodes

QUALITIES = ("random", "medium", "medium-replay", "expert", "medium-expert")
REF_EPISODES = 10  # episodes behind each reference score

Policy = Callable[[Tensor], Tensor]  # obs [B, obs_dim] -> act [B, act_dim], env units


class BehaviourInterrupted(RuntimeError):
    """A signal stopped the behaviour run before its last step: its checkpoint is current, and no
    dataset was written (one from a part of the run would carry the full run's name)."""

    def __init__(self, signal_name: str, env_steps: int, steps: int, run_dir: Path):
        super().__init__(f"the behaviour run was stopped by {signal_name} at env step {env_steps} of {steps}; "
                         f"its checkpoint in {run_dir} is current: run the same command to resume it.")
        self.signal_name = signal_name

    @property
    def exit_status(self) -> int:
        """128 + the signal's number, as a shell reports a process the signal stopped."""
        return 128 + int(getattr(signal, self.signal_name))


@dataclass
class BehaviourRun:
    """What a behaviour run leaves behind for the recipe."""

    snapshots: list[dict]  # in training order; each has "env_steps" and "return", the rest is the learner's
    replay: dict[str, Tensor]  # its transitions, oldest first: obs, act, rew, next_obs, terminal, truncated
    warmup_steps: int = 0  # env steps of random actions before any update: snapshots up to it are untrained


def trained(run: BehaviourRun) -> list[dict]:
    """The snapshots taken after the warm-up (all of them if none was)."""
    return [s for s in run.snapshots if s["env_steps"] > run.warmup_steps] or run.snapshots


def expert_snapshot(run: BehaviourRun) -> dict:
    """The trained snapshot of highest evaluation return (the later one on a tie)."""
    candidates = trained(run)
    return max(reversed(candidates), key=lambda s: s["return"])


class BehaviourLearner(Protocol):
    """The RL algorithm behind a recipe, injected by the layer above (the agents' SAC, see agents/core/behaviour.py).

    The data layer knows how to turn a run into datasets, not how to train one.
    """

    #: recorded in the dataset's metadata (algorithm_name)
    name: str

    def train(self, env_id: str, steps: int, seed: int, run_dir: Path, device: torch.device,
              progress: bool) -> BehaviourRun:
        """Train for `steps` env steps in `run_dir`, resuming there if interrupted; snapshot every evaluation.
        Stopped by a signal: checkpoint and raise `BehaviourInterrupted`."""
        ...

    def policy(self, env_id: str, snapshot: dict | None, device: torch.device, deterministic: bool = False) -> Policy:
        """A batched policy from one of `train`'s snapshots; None = uniform random over the action box."""
        ...


@dataclass
class Recipe:
    env_id: str = "HalfCheetah-v5"
    quality: str = "medium-replay"
    size: int = 20_000
    train_steps: int = 100_000  # configs/dataset/default.yaml says why
    seed: int = 0

    @property
    def dataset_id(self) -> str:
        return recipe_dataset_id(self.env_id, self.quality, self.size, self.train_steps, self.seed)


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


def build(recipe: Recipe, learner: BehaviourLearner, device: torch.device | str = "cpu",
          progress: bool = True) -> str:
    """Build (or find) the recipe's Minari dataset and return its ID; `learner` trains the behaviour run."""
    if recipe.quality not in QUALITIES:
        raise ValueError(f"quality={recipe.quality!r} is not a recipe; choose one of {', '.join(QUALITIES)}.")
    dataset_id = recipe.dataset_id
    if dataset_exists(dataset_id):
        return dataset_id
    device = torch.device(device)
    run_dir = cache_root() / "behaviour" / f"{recipe.env_id}-t{recipe.train_steps}-seed{recipe.seed}"
    with file_lock(run_dir.with_suffix(".lock")):
        if dataset_exists(dataset_id):  # built by a parallel job while we waited
            return dataset_id
        behaviour = train_behaviour(recipe, learner, run_dir, device, progress)
        episodes = collect(recipe, learner, behaviour, device)
        write_minari_dataset(
            dataset_id, recipe.env_id, episodes, behaviour.random_return, behaviour.expert_return,
            description=f"D4RL-style {recipe.quality} dataset built by o2o-worldmodels ({recipe}).",
            algorithm_name=f"{learner.name} (o2o-worldmodels recipe)",
        )
    return dataset_id


@dataclass
class Behaviour:
    snapshots: list[dict]  # {"env_steps", "return", ...} in training order
    replay: dict[str, torch.Tensor]  # the behaviour run's transitions, oldest first
    random_return: float
    expert_return: float
    medium: dict  # the chosen medium snapshot
    expert: dict  # the chosen expert snapshot


def train_behaviour(recipe: Recipe, learner: BehaviourLearner, run_dir: Path, device: torch.device,
                    progress: bool) -> Behaviour:
    """The behaviour run, its reference scores and the medium snapshot (D4RL: a third of the way to expert)."""
    run = learner.train(recipe.env_id, recipe.train_steps, recipe.seed, run_dir, device, progress)
    last = run.snapshots[-1]["env_steps"] if run.snapshots else 0
    if last != recipe.train_steps:  # any learner: never build a dataset from part of its run
        raise RuntimeError(f"the behaviour run in {run_dir} ends at env step {last}, not {recipe.train_steps}; "
                           "delete that folder to train it again.")

    def returns(policy: Policy, seed: int) -> float:
        return float(run_episodes(lambda: make_env(recipe.env_id), policy, REF_EPISODES, seed, device).returns.mean())

    expert_at = expert_snapshot(run)
    refs_path = run_dir / "reference_scores.json"  # shared by every quality built from this run
    refs = json.loads(refs_path.read_text()) if refs_path.exists() else {}
    if refs.get("expert_env_steps") != expert_at["env_steps"]:  # absent, or cached for another expert
        random_return = returns(learner.policy(recipe.env_id, None, device), 1_000_000 + recipe.seed)
        # Building a policy may draw from the global RNG (network init) and the deterministic expert
        # draws nothing else: fork, so the collection below sees the same stream whether or not the
        # scores were cached.
        with torch.random.fork_rng(devices=[]):
            expert = learner.policy(recipe.env_id, expert_at, device, deterministic=True)
            expert_return = returns(expert, 2_000_000 + recipe.seed)
        refs = {"random": random_return, "expert": expert_return, "expert_env_steps": expert_at["env_steps"]}
        refs_path.write_text(json.dumps(refs))
    random_return, expert_return = refs["random"], refs["expert"]
    target = random_return + (expert_return - random_return) / 3
    medium = min(trained(run), key=lambda s: abs(s["return"] - target))
    return Behaviour(run.snapshots, run.replay, random_return, expert_return, medium, expert_at)


def collect(recipe: Recipe, learner: BehaviourLearner, behaviour: Behaviour, device: torch.device) -> list[dict]:
    env = make_env(recipe.env_id)
    episode_limit = env.spec.max_episode_steps or 1000
    env.close()

    def rollouts(snapshot: dict | None, n: int, seed: int) -> list[dict]:
        policy = learner.policy(recipe.env_id, snapshot, device)  # stochastic, as D4RL collected
        # as many lockstep envs as whole episodes fit in n, so episodes are not cut short
        num_envs = max(1, min(10, n // episode_limit))
        return run_episodes(lambda: make_env(recipe.env_id), policy, 10**9, seed, device,
                            record=True, max_transitions=n, num_envs=num_envs).episodes

    seed = 3_000_000 + recipe.seed
    expert = behaviour.expert
    match recipe.quality:
        case "random":
            return rollouts(None, recipe.size, seed)
        case "medium":
            return rollouts(behaviour.medium, recipe.size, seed)
        case "expert":
            return rollouts(expert, recipe.size, seed)
        case "medium-expert":
            half = recipe.size // 2
            return rollouts(behaviour.medium, half, seed) + rollouts(expert, recipe.size - half, seed + 1)
        case "medium-replay":
            end = behaviour.medium["env_steps"]
            rows = {k: v[max(0, end - recipe.size): end].cpu().numpy() for k, v in behaviour.replay.items()}
            return replay_episodes(rows)
    raise ValueError(recipe.quality)


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
