"""Run configuration shared by every agent: what data, what budget, which device.

An agent's own hyperparameters live in its file as a dataclass; `RunConfig.agent` holds it.
Hydra composes these with the YAML groups in configs/ (dataset/, experiment/).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from worldmodels.data.samplers import SamplerConfig, check_sampler_config
from worldmodels.dynamics import TRAIN_PRECISIONS
from worldmodels.memory import keep_freed_memory
from worldmodels.rollout import RolloutConfig
from worldmodels.world import KINDS, WorldModelConfig

UPDATE_PRECISIONS = ("float32", "bfloat16")
QUALITIES = ("random", "medium", "medium-replay", "expert", "medium-expert")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and a valid choice."""


@dataclass
class DatasetConfig:
    id: str | None = None  # a Minari dataset ID; when set, the recipe fields below are ignored
    env_id: str = "HalfCheetah-v5"  # recipe: gymnasium MuJoCo task
    quality: str = "medium-replay"  # recipe: random | medium | medium-replay | expert | medium-expert
    size: int = 20_000  # recipe: transitions in the dataset
    train_steps: int = 100_000  # recipe: env steps of the behaviour SAC run (configs/dataset/default.yaml: why)
    seed: int = 0  # recipe: seed of the behaviour run and collection


@dataclass
class TrainerConfig:
    offline_updates: int = 20_000  # gradient updates on offline data before going online
    online_steps: int = 10_000  # env steps in the online phase
    updates_per_step: int = 1  # UTD ratio online
    warmup_steps: int = 0  # online steps with uniform random actions and no updates (online-only agents)
    batch_size: int = 256  # TD3+BC, SAC, CQL papers
    eval_every: int = 5_000  # updates (offline) / env steps (online) between evaluations
    eval_episodes: int = 5
    log_every: int = 1_000  # updates between train-metric rows
    checkpoint_every: int = 5_000  # updates (offline) / env steps (online) between checkpoints
    progress: bool = True  # tqdm progress bar
    # keep the agent's state of every evaluation in policies/<global step>.pt (plain data, a few MB each), so
    # how the policy moved between evaluations can be replayed afterwards (python -m agents.tools.gait RUN_DIR)
    keep_policies: bool = False
    # float32 | bfloat16: the dtype of the hidden layers' matmuls inside every agent update (a bf16 autocast;
    # weights, optimizers, losses and every network output stay float32, worldmodels.ensemble.Float32Output).
    # Our choice, not a paper's: float32 by default so runs stay bitwise reproducible; bfloat16 is for CPUs with
    # AMX and GPUs with bf16 tensor cores, where conservative agents' big critic passes run several times faster
    # (README, Benchmarks). Acting and evaluation always run in float32.
    precision: str = "float32"
    # a run directory (or its switch.pt) whose offline phase this run takes over: agent, world model, sampler
    # state, RNG and the offline logs as they were when that run's offline phase ended; this run then goes
    # online with its own config. For online variants from one offline training (UPQ's betas from one Off2On
    # pretraining, MOORe and MOPO, CQL with and without its online penalty). Needs the same seed, dataset and
    # trainer.offline_updates; the agent may differ only where the state dict does not (README, Runs).
    start_from: str | None = None


@dataclass
class RunConfig:
    agent: Any = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    world_model: WorldModelConfig = field(default_factory=WorldModelConfig)  # none: model-free
    rollout: RolloutConfig = field(default_factory=RolloutConfig)  # read only when world_model is not none
    sampler: SamplerConfig = field(default_factory=SamplerConfig)  # every batch's composition (samplers.py)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda[:N]; auto takes the GPU when present
    threads: int = 0  # torch CPU threads; 0 = torch's default. Use 1 when several runs share the cores
    experiment: str = "quick"
    resume: bool = True  # continue from run_dir/checkpoint.pt when it exists


def keep_freed_memory_checked() -> None:
    """worldmodels.memory.keep_freed_memory, with a bad O2O_KEEP_FREED_MEMORY as a ConfigError (one error line)."""
    try:
        keep_freed_memory()
    except ValueError as err:
        raise ConfigError(str(err)) from None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name} was asked for but no CUDA device is available; use device=auto or cpu.")
        return torch.device(name)
    raise ConfigError(f"device={name!r} is not a device; use auto, cpu or cuda.")


def check_run_config(cfg: RunConfig) -> None:
    """Fail early, with the key and a fix, on values that would break the run later."""
    t, d, w = cfg.trainer, cfg.dataset, cfg.world_model
    positive = {
        "trainer.batch_size": t.batch_size,
        "trainer.eval_episodes": t.eval_episodes,
        "trainer.eval_every": t.eval_every,
        "trainer.log_every": t.log_every,
        "trainer.checkpoint_every": t.checkpoint_every,
        "trainer.updates_per_step": t.updates_per_step,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}={value} must be a positive integer.")
    for key, value in {"trainer.offline_updates": t.offline_updates, "trainer.online_steps": t.online_steps,
                       "trainer.warmup_steps": t.warmup_steps}.items():
        if value < 0:
            raise ConfigError(f"{key}={value} must be >= 0 (0 skips it).")
    if t.precision not in UPDATE_PRECISIONS:
        raise ConfigError(f"trainer.precision={t.precision!r}: choose {' or '.join(UPDATE_PRECISIONS)} (the dtype "
                          "of the agents' hidden-layer matmuls during updates).")
    problem = check_sampler_config(cfg.sampler)
    if problem:
        raise ConfigError(problem)
    if d.id is None and d.quality == "none" and t.offline_updates > 0:
        raise ConfigError(f"trainer.offline_updates={t.offline_updates} needs offline data but dataset.quality=none "
                          "gives none; pick a dataset or set trainer.offline_updates=0.")
    if cfg.rollout.schedule not in ("updates", "refit"):
        raise ConfigError(f"rollout.schedule={cfg.rollout.schedule!r}: choose updates or refit.")
    if cfg.rollout.schedule == "refit" and w.kind != "none" and w.refit_every <= 0:
        raise ConfigError("rollout.schedule=refit rolls out after each online refit; set world_model.refit_every > 0 "
                          "(env steps between refits) or use rollout.schedule=updates.")
    if d.id is None:
        if d.quality not in (*QUALITIES, "none"):
            raise ConfigError(
                f"dataset.quality={d.quality!r} is not a recipe; choose one of {', '.join(QUALITIES)} or none."
            )
        if d.size <= 0 or d.train_steps <= 0:
            raise ConfigError("dataset.size and dataset.train_steps must be positive.")
    w, r = cfg.world_model, cfg.rollout
    if w.kind not in KINDS:
        raise ConfigError(f"world_model={w.kind!r} is unknown; choose one of {', '.join(KINDS)}.")
    if w.kind == "none" and w.uncertainty != WorldModelConfig.uncertainty:
        raise ConfigError(f"uncertainty={w.uncertainty} has no effect without a world model; add "
                          "world_model=ensemble (and rollout.horizon > 0) to penalize imagined rollouts with it.")
    if w.kind != "none":
        if r.horizon < 0 or r.num_starts <= 0 or r.every <= 0 or r.keep_rounds <= 0 or r.chunk <= 0:
            raise ConfigError("rollout.horizon must be >= 0 and rollout.num_starts/every/keep_rounds/chunk positive.")
        if not 0.0 <= r.initial_state_share <= 1.0:
            raise ConfigError(f"rollout.initial_state_share={r.initial_state_share} must lie in [0, 1] (the share of "
                              "rollout start states taken from the logged episodes' first states; 0 = MOPO).")
        if r.initial_state_horizon < 0:
            raise ConfigError(f"rollout.initial_state_horizon={r.initial_state_horizon} must be >= 0 "
                              "(0 = rollout.horizon).")
        if not 0.0 <= r.real_ratio <= 1.0:
            raise ConfigError(f"rollout.real_ratio={r.real_ratio} must lie in [0, 1].")
        if r.penalty_coef < 0:
            raise ConfigError(f"rollout.penalty_coef={r.penalty_coef} must be >= 0 (it scales a penalty).")
        if w.uncertainty not in ("aleatoric", "disagreement", "ensemble_std", "total_variance"):
            raise ConfigError(f"uncertainty={w.uncertainty!r} is not a dynamics estimator; choose aleatoric, "
                              "disagreement, ensemble_std or total_variance.")
        if w.penalty_units not in (None, "aleatoric", "disagreement", "ensemble_std", "total_variance"):
            raise ConfigError(f"world_model.penalty_units={w.penalty_units!r} is not a dynamics estimator; choose "
                              "aleatoric, disagreement, ensemble_std or total_variance, or null (lambda multiplies "
                              "world_model.uncertainty itself).")
        if w.penalty_reward_units not in (None, "d4rl"):
            raise ConfigError(f"world_model.penalty_reward_units={w.penalty_reward_units!r}: choose d4rl (lambda in "
                              "D4RL's reward units for the env) or null (lambda in this dataset's reward units).")
        if w.train_precision not in TRAIN_PRECISIONS:
            raise ConfigError(f"world_model.train_precision={w.train_precision!r}: choose one of "
                              f"{', '.join(TRAIN_PRECISIONS)}.")
        if w.termination not in ("auto", "learned", "none"):
            raise ConfigError(f"world_model.termination={w.termination!r}: choose auto, learned or none.")
        if w.ensemble_size < 1:
            raise ConfigError(f"world_model.ensemble_size={w.ensemble_size} must be at least 1 (MOPO uses 7).")
        if not 1 <= w.num_elites <= w.ensemble_size:
            raise ConfigError("world_model.num_elites must lie in [1, world_model.ensemble_size].")
        if w.load_path is not None and not Path(w.load_path).is_file():
            raise ConfigError(f"world_model.load_path={w.load_path} does not exist; give a dynamics.pt from a run dir.")
    if cfg.threads < 0:
        raise ConfigError(f"threads={cfg.threads} must be >= 0 (0 = torch's default).")
    resolve_device(cfg.device)
