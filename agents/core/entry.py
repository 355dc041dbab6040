"""`python -m agents.<name>`: compose the hydra config, load and validate data, run the trainer.

Each agent file calls `run(AgentClass, AgentConfig, "<name>")`; configs/<name>.yaml is its
root config. Errors a user can fix (bad dataset, bad config value, unknown env) print one
line naming the problem and the fix and exit with status 2.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import sys
from pathlib import Path

import gymnasium as gym
import hydra
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from agents.core.agent import Agent, EnvSpec
from agents.core.behaviour import SACBehaviour
from agents.core.checkpoint import CheckpointError
from agents.core.config import ConfigError, RunConfig, check_run_config, keep_freed_memory_checked, resolve_device
from agents.core.rundir import RunDirError, RunLock, discard_unstarted, prepare_run_dir
from agents.core.trainer import Trainer, seed_everything
from worldmodels.data.minari_load import DatasetError, OfflineDataset, load_offline_dataset
from worldmodels.data.recipes import BehaviourInterrupted, Recipe, build
from worldmodels.data.store import TransitionStore
from worldmodels.data.validate import validate
from worldmodels.envs import box_bounds, make_env
from worldmodels.world import make_world_model

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")
#: keys that may change between a run and its resumption
RESUMABLE_KEYS = ("resume", "device", "threads", "trainer.progress")


def load_dataset(cfg: RunConfig, device: torch.device) -> OfflineDataset | None:
    """The offline dataset the config names (a Minari ID or a recipe, built on first use)."""
    d = cfg.dataset
    if d.id is not None:
        return load_offline_dataset(d.id)
    if d.quality == "none":
        return None
    recipe = Recipe(d.env_id, d.quality, d.size, d.train_steps, d.seed)
    return load_offline_dataset(build(recipe, SACBehaviour(), device, progress=cfg.trainer.progress))


def offline_store(ds: OfflineDataset, device: torch.device) -> TransitionStore:
    def t(x):
        return torch.as_tensor(x, dtype=torch.float32)

    return TransitionStore.from_tensors(
        {"obs": t(ds.observations), "act": t(ds.actions), "rew": t(ds.rewards), "next_obs": t(ds.next_observations),
         "terminal": t(ds.terminations), "truncated": t(ds.truncations & ~ds.terminations)},
        device=device,
    )


def build_run(agent_cls: type[Agent], cfg: RunConfig, run_dir: Path) -> Trainer:
    """Everything a run needs, from a composed config: data, env, agent, trainer."""
    check_run_config(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    keep_freed_memory_checked()  # big activations reuse freed heap, no page faults per update (worldmodels/memory.py)
    device = resolve_device(cfg.device)
    dataset = load_dataset(cfg, device)
    env_id = dataset.env_id if dataset is not None else cfg.dataset.env_id
    env = make_env(env_id)
    if dataset is not None:
        validate(dataset, env.observation_space, env.action_space)
    if not isinstance(env.observation_space, gym.spaces.Box) or len(env.observation_space.shape) != 1:
        raise ConfigError(f"{env_id}: only flat Box observations are supported, got {env.observation_space}.")
    if not isinstance(env.action_space, gym.spaces.Box) or len(env.action_space.shape) != 1:
        env.close()
        raise ConfigError(f"{env_id} has {env.action_space} actions; the agents here act in continuous (Box) action "
                          "spaces: pick a task with continuous actions (e.g. dataset.env_id=Pendulum-v1).")
    low, high = box_bounds(env)
    env.close()
    seed_everything(cfg.seed)
    spec = EnvSpec(env.observation_space.shape[0], env.action_space.shape[0], low, high, env_id)
    agent = agent_cls(cfg.agent, spec, device)
    refs = (dataset.ref_min_score, dataset.ref_max_score) if dataset is not None else (None, None)
    data_names = ({"dataset_id": dataset.dataset_id, "dataset_sha256": dataset.fingerprint(), "ref_scores": list(refs)}
                  if dataset is not None else {"dataset_id": None, "dataset_sha256": None, "ref_scores": None})
    extra = data_names | {"env_id": env_id, "experiment": cfg.experiment, "device": str(device)}
    try:
        world = make_world_model(cfg.world_model, cfg.rollout, spec.obs_dim, spec.act_dim, env_id, device,
                                 ref_scores=refs)
    except (OSError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError) as err:
        if str(err).startswith("world_model.penalty_reward_units"):
            raise ConfigError(str(err)) from err
        if not cfg.world_model.load_path:
            raise
        raise ConfigError(f"world_model.load_path={cfg.world_model.load_path} is not a saved dynamics model "
                          f"({one_line(err)}); give the dynamics.pt of a model-based run's directory.") from err
    agent.use_dynamics(world.model)
    return Trainer(agent, cfg.trainer, lambda: make_env(env_id),
                   offline_store(dataset, device) if dataset is not None else None,
                   run_dir, seed=cfg.seed, ref_scores=refs, summary_extra=extra, world=world, sampler=cfg.sampler)


USER_ERRORS = (DatasetError, ConfigError, CheckpointError, RunDirError, gym.error.Error)


def one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def execute(agent_cls: type[Agent], cfg, run_dir: Path) -> dict:
    """Run one job from a composed (Omega)config. The config is validated and the data loaded
    before the run directory is touched; user errors exit with status 2 and one line; Ctrl-C or
    SIGTERM checkpoint and exit with 128 + the signal number."""
    try:
        cfg_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        try:
            run_cfg: RunConfig = OmegaConf.to_object(cfg)
        except OmegaConfBaseException as err:
            raise ConfigError(one_line(err)) from err
        trainer = build_run(agent_cls, run_cfg, run_dir)
        with RunLock(run_dir):
            # the schema's defaults: a run made before a config key existed resumes when the key is at its default
            defaults_yaml = OmegaConf.to_yaml(OmegaConf.structured(RunConfig(agent=type(run_cfg.agent)())))
            prepare_run_dir(run_dir, cfg_yaml, run_cfg.resume, RESUMABLE_KEYS, defaults_yaml)
            summary = trainer.run()
    except USER_ERRORS as err:
        discard_unstarted(run_dir)  # refused before it began: no directory of hydra's files left behind
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
    except BehaviourInterrupted as err:  # a signal while the recipe's behaviour run trained: no dataset yet
        print(f"stopped: {err}", file=sys.stderr)
        sys.exit(err.exit_status)
    if trainer.interrupted:
        print(f"stopped by {trainer.interrupted} at update {trainer.state.updates}, env step "
              f"{trainer.state.env_steps}; the checkpoint in {run_dir} is current: run the same command to resume.",
              file=sys.stderr)
        sys.exit(128 + int(getattr(signal, trainer.interrupted)))
    print(json.dumps(summary))
    return summary


def run(agent_cls: type[Agent], config_cls: type, name: str) -> None:
    ConfigStore.instance().store(name=f"{name}_schema", node=RunConfig(agent=config_cls()))
    started = False
    stderr = HeldStderr(sys.stderr)

    @hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=name)
    def _main(cfg) -> None:
        nonlocal started
        started = True
        stderr.release()
        hydra_cfg = HydraConfig.get()
        warning = rollout_mismatch(cfg, dict(hydra_cfg.runtime.choices), list(hydra_cfg.overrides.task))
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        execute(agent_cls, cfg, Path(hydra_cfg.runtime.output_dir))

    if any(arg in ("--help", "-h") for arg in sys.argv[1:]):
        print(f"python -m agents.{name}: {introduction(agent_cls)}\n")
    problem = unquoted_value(sys.argv[1:]) or unusable_run_dir(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    sys.stderr = stderr
    try:
        _main()
    except SystemExit as exit_:
        # hydra reports a bad override (seed=abc, an unknown key or group option) in a few lines
        # and exits 1 before the job starts: that is a config error like any other, one line, status 2
        if exit_.code == 1 and not started:
            stderr.release(summary=True)
            sys.exit(2)
        raise
    finally:
        stderr.release()


class HeldStderr:
    """stderr that holds what is written until the job starts, so hydra's multi-line report of a
    bad override can be given as one `error:` line; everything else passes through unchanged."""

    def __init__(self, real):
        self.real, self.held, self.holding = real, [], True

    def __reduce__(self):
        # the job function holds this object; the joblib launcher (hydra/launcher=local) pickles that
        # function into its worker processes, where the job has started: plain pass-through to their stderr
        return _passthrough_stderr, ()

    def write(self, text: str) -> int:
        if self.holding:
            self.held.append(text)
            return len(text)
        return self.real.write(text)

    def release(self, summary: bool = False) -> None:
        if not self.holding:
            return
        self.holding = False
        text = "".join(self.held)
        if summary:
            text = text.split("Config search path:")[0]  # hydra's search path says nothing about the fix
            lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "HYDRA_FULL_ERROR" not in ln]
            text = f"error: {'; '.join(lines)}\n" if lines else ""
        self.real.write(text)
        self.real.flush()

    def __getattr__(self, name: str):  # isatty, fileno, flush, encoding ... from the real stream
        return getattr(self.real, name)


def _passthrough_stderr() -> HeldStderr:
    held = HeldStderr(sys.stderr)
    held.holding = False
    return held


def dataset_rollout(dataset: str | None) -> str | None:
    """The rollout config written for a dataset config (MOPO's tuned h and lambda), if there is one. The
    default dataset has none of its own: each model-based agent's root config picks the rollout for it
    (configs/rollout/default.yaml is the base of the others)."""
    if dataset in (None, "default"):
        return None
    return dataset if (Path(CONFIG_DIR) / "rollout" / f"{dataset}.yaml").exists() else None


def rollout_mismatch(cfg, choices: dict[str, str], task_overrides: list[str]) -> str | None:
    """A model-based run on a dataset that has MOPO's tuned (h, lambda) in configs/rollout/<dataset>.yaml, but
    with another rollout config that the command line did not name: the agent's default is written for the
    default dataset, so say which values to add (benchmarks.suite adds them itself)."""
    dataset, rollout = choices.get("dataset"), choices.get("rollout")
    own = dataset_rollout(dataset)
    if cfg.world_model.kind == "none" or not cfg.world_model.rollouts or own is None or own == rollout:
        return None
    if any(o.split("=", 1)[0].lstrip("+~") == "rollout" for o in task_overrides):
        return None
    return (f"dataset={dataset} has its own MOPO rollout values (configs/rollout/{dataset}.yaml: horizon, "
            f"penalty_coef), but this run uses rollout={rollout}; add rollout={dataset} to use them, or name "
            "rollout= yourself to silence this.")


def unquoted_value(argv: list[str]) -> str | None:
    """An override whose value holds `=` unquoted, as a run directory's path does (`trainer.start_from=runs/
    td3bc/seed=1`): hydra's grammar reads it as a second assignment and says only "mismatched input '='"."""
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and not key.startswith("-") and "=" in value and value[:1] not in ("'", '"'):
            return (f"{key}={value}: the value holds '=', which hydra reads as another assignment; quote it, "
                    f"as \"{key}='{value}'\"")
    return None


def unusable_run_dir(argv: list[str]) -> str | None:
    """Hydra creates the run directory before the job starts and answers a path that runs into a
    file or an unwritable directory with a traceback; check the requested (or default) location
    first."""
    given = [a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")]
    path = Path(given[-1] if given else "runs").absolute()
    for part in [path, *path.parents]:
        if part.exists():
            if not part.is_dir():
                return (f"the run directory {path} cannot be created: {part} is a file; "
                        "pick another hydra.run.dir or move the file away.")
            if not os.access(part, os.W_OK | os.X_OK):
                return f"the run directory {path} is not writable (in {part}); pick another hydra.run.dir."
            return None
    return None


def introduction(agent_cls: type[Agent]) -> str:
    """The first lines of the agent module's docstring: the paper and what the agent does."""
    doc = (sys.modules[agent_cls.__module__].__doc__ or agent_cls.__name__).strip()
    return doc.split("\n\n")[0].replace("\n", " ")
