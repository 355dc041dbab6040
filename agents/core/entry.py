"""`python -m agents.<name>`: compose the hydra config, load and validate data, run the trainer.

Each agent file calls `run(AgentClass, AgentConfig, "<name>")`; configs/<name>.yaml is its
root config. Errors a user can fix (bad dataset, bad config value, unknown env) print one
line naming the problem and the fix and exit with status 2.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import gymnasium as gym
import hydra
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from agents.core.agent import Agent, EnvSpec
from agents.core.behaviour import SACBehaviour
from agents.core.config import ConfigError, RunConfig, check_run_config, resolve_device
from agents.core.trainer import Trainer, seed_everything
from worldmodels.data.minari_load import DatasetError, OfflineDataset, load_offline_dataset
from worldmodels.data.recipes import Recipe, build
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


def check_run_dir(run_dir: Path, cfg_yaml: str, resume: bool) -> None:
    """A run directory belongs to one config: resuming with another one is refused."""
    saved = run_dir / "run_config.yaml"
    if not resume:
        for path in [*run_dir.glob("*.csv"), run_dir / "checkpoint.pt", run_dir / "summary.json",
                     run_dir / "dynamics.pt"]:
            path.unlink(missing_ok=True)
        shutil.rmtree(run_dir / "tb", ignore_errors=True)
    elif saved.exists() and (run_dir / "checkpoint.pt").exists():
        old, new = OmegaConf.create(saved.read_text()), OmegaConf.create(cfg_yaml)
        for key in RESUMABLE_KEYS:
            OmegaConf.update(old, key, None, force_add=True)
            OmegaConf.update(new, key, None, force_add=True)
        if old != new:
            diff = [k for k in _flat(new) if _flat(old).get(k) != _flat(new).get(k)]
            raise ConfigError(
                f"{run_dir} holds a run with a different config (differs in: {', '.join(diff) or 'keys'}). "
                "Resume it with its own config, pick another hydra.run.dir, or pass resume=false to start over."
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    saved.write_text(cfg_yaml)


def _flat(cfg) -> dict:
    out: dict = {}

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v

    walk(OmegaConf.to_container(cfg), "")
    return out


def build_run(agent_cls: type[Agent], cfg: RunConfig, run_dir: Path) -> Trainer:
    """Everything a run needs, from a composed config: data, env, agent, trainer."""
    check_run_config(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    dataset = load_dataset(cfg, device)
    env_id = dataset.env_id if dataset is not None else cfg.dataset.env_id
    env = make_env(env_id)
    if dataset is not None:
        validate(dataset, env.observation_space, env.action_space)
    if not isinstance(env.observation_space, gym.spaces.Box) or len(env.observation_space.shape) != 1:
        raise ConfigError(f"{env_id}: only flat Box observations are supported, got {env.observation_space}.")
    low, high = box_bounds(env)
    env.close()
    seed_everything(cfg.seed)
    spec = EnvSpec(env.observation_space.shape[0], env.action_space.shape[0], low, high)
    agent = agent_cls(cfg.agent, spec, device)
    refs = (dataset.ref_min_score, dataset.ref_max_score) if dataset is not None else (None, None)
    extra = {"dataset_id": dataset.dataset_id if dataset is not None else None, "env_id": env_id,
             "experiment": cfg.experiment, "device": str(device)}
    world = make_world_model(cfg.world_model, cfg.rollout, spec.obs_dim, spec.act_dim, env_id, device)
    return Trainer(agent, cfg.trainer, lambda: make_env(env_id),
                   offline_store(dataset, device) if dataset is not None else None,
                   run_dir, seed=cfg.seed, ref_scores=refs, summary_extra=extra, world=world, sampler=cfg.sampler)


def execute(agent_cls: type[Agent], cfg, run_dir: Path) -> dict:
    """Run one job from a composed (Omega)config; user errors exit with status 2."""
    try:
        cfg_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        run_cfg: RunConfig = OmegaConf.to_object(cfg)
        check_run_dir(run_dir, cfg_yaml, run_cfg.resume)
        trainer = build_run(agent_cls, run_cfg, run_dir)
        summary = trainer.run()
    except (DatasetError, ConfigError, gym.error.Error) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(summary))
    return summary


def run(agent_cls: type[Agent], config_cls: type, name: str) -> None:
    ConfigStore.instance().store(name=f"{name}_schema", node=RunConfig(agent=config_cls()))

    @hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=name)
    def _main(cfg) -> None:
        execute(agent_cls, cfg, Path(HydraConfig.get().runtime.output_dir))

    _main()
