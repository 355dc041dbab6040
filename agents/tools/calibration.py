"""Uncertainty calibration of a dynamics ensemble on held-out data.

    python -m agents.tools.calibration                   # default dataset; held-out: medium-expert
    python -m agents.tools.calibration experiment=smoke  # the same in well under two minutes
    python -m agents.tools.calibration model_path=runs/mopo/<run>/dynamics.pt heldout.id=<minari id>
    python -m agents.tools.calibration critic_run=runs/redq/<run>   # a run's critic ensemble instead

For each estimator u (worldmodels/uncertainty.py, each with its own default members and dims) it reports
how well u ranks the model's true errors on held-out transitions: the one-step error and the h-step
open-loop error of logged segments (worldmodels/analysis/evaluation.py), scored by Spearman rank
correlation and by the AUROC of u as a detector of "error above the 90th percentile of the errors"
(`threshold_quantile`; worldmodels/analysis/metrics.py).

The model is fitted with every world_model setting through `worldmodels.world.make_dynamics`, the builder
the agents use (or loaded from model_path). The data come from the agents' loader (dataset.id or a recipe
built with the SAC behaviour learner), which is why this tool lives above both layers.

Writes calibration.md, calibration.json, error_vs_uncertainty.png and rollout_error_growth.png into the
hydra run dir (and dynamics.pt when it fits the model itself; worldmodels/analysis/report.py), then prints
the Markdown table. User errors print one line and exit with status 2.

`critic_run=RUN_DIR` ranks a critic ensemble the same way: u = the std over the run's critics (the Q-ensemble
estimator of worldmodels/uncertainty.py, UPQ's U) against its error |mean_i Q_i(s, a) - G(s, a)|, G the true
discounted return from the logged (s, a), on the held-out data (`heldout.*`, of the run's own recipe) and on
the run's dataset. Writes critic_calibration.md and critic_calibration.json.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import gymnasium as gym
import hydra
import numpy as np
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from torch import Tensor

from agents.core.behaviour import SACBehaviour
from agents.core.config import (
    QUALITIES,
    ConfigError,
    DatasetConfig,
    TrainerConfig,
    keep_freed_memory_checked,
    resolve_device,
)
from agents.core.entry import CONFIG_DIR, load_dataset
from agents.core.trainer import seed_everything
from worldmodels.analysis.evaluation import DYNAMICS_ESTIMATORS, check_compatible, evaluate, summarize
from worldmodels.analysis.metrics import score
from worldmodels.analysis.report import write_outputs
from worldmodels.data.minari_load import DatasetError, OfflineDataset, load_offline_dataset
from worldmodels.data.recipes import Recipe, build
from worldmodels.dynamics import DynamicsEnsemble
from worldmodels.rollout import RolloutConfig
from worldmodels.termination import never_terminates
from worldmodels.uncertainty import QEnsembleStd
from worldmodels.world import WorldModelConfig, make_dynamics


@dataclass
class HeldoutConfig:
    id: str | None = None  # a Minari dataset id; when set, `quality` is ignored
    quality: str = "medium-expert"  # else: this quality of the training recipe (same env, size, behaviour run)


@dataclass
class CalibrationConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)  # training data (read when fitting)
    world_model: WorldModelConfig = field(default_factory=lambda: WorldModelConfig(kind="ensemble"))  # when fitting
    heldout: HeldoutConfig = field(default_factory=HeldoutConfig)
    model_path: str | None = None  # a saved DynamicsEnsemble (dynamics.pt, or a run dir holding one); None = fit
    horizon: int = 5  # h of the h-step rollout error (MOPO's most common rollout length, Yu et al. 2020)
    num_states: int = 5000  # held-out transitions (and segments) evaluated, at most the dataset size
    estimators: list[str] = field(default_factory=lambda: list(DYNAMICS_ESTIMATORS))
    threshold_quantile: float = 0.9  # AUROC positives: error above this quantile of the errors
    seed: int = 0
    device: str = "auto"
    # torch CPU threads; 1 by default: these small matmuls gain little from a second thread and lose up to 6x
    # when the cores are shared (measured: 31 ms vs 204 ms per ensemble train step on 2 busy cores); 0 = torch's
    threads: int = 1
    experiment: str = "quick"
    critic_run: str | None = None  # a run directory: rank its critic ensemble's std instead of a dynamics model's u
    # critic_run: rows whose discounted return is known, i.e. in a terminated episode or at least this many steps
    # before a time-limit cut (0.99^500 = 0.007 of the return lies past the cut)
    critic_min_steps_left: int = 500
    # Present so that the shared experiment presets compose; only trainer.progress is read (dataset build).
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)


def check_config(cfg: CalibrationConfig) -> None:
    """Fail before touching any data, with the key and a fix."""
    if cfg.horizon < 1:
        raise ConfigError(f"horizon={cfg.horizon} must be >= 1 (steps of the open-loop rollout error).")
    if cfg.threads < 0:
        raise ConfigError(f"threads={cfg.threads} must be >= 0 (0 = torch's default).")
    if cfg.num_states < 1:
        raise ConfigError(f"num_states={cfg.num_states} must be a positive integer.")
    if not 0.0 < cfg.threshold_quantile < 1.0:
        raise ConfigError(f"threshold_quantile={cfg.threshold_quantile} must lie in (0, 1).")
    if not cfg.estimators:
        raise ConfigError(f"estimators is empty; choose some of {', '.join(DYNAMICS_ESTIMATORS)}.")
    unknown = [e for e in cfg.estimators if e not in DYNAMICS_ESTIMATORS]
    if unknown:
        raise ConfigError(f"estimators: unknown estimator {unknown[0]!r}; valid: {', '.join(DYNAMICS_ESTIMATORS)}.")
    if len(set(cfg.estimators)) != len(cfg.estimators):
        raise ConfigError(f"estimators={list(cfg.estimators)} lists an estimator twice.")
    if model_file(cfg) is None:
        if cfg.world_model.kind != "ensemble":
            raise ConfigError(
                f"world_model={cfg.world_model.kind!r} has no uncertainty to calibrate; use "
                "world_model=ensemble or pass model_path=<dynamics.pt>."
            )
        d = cfg.dataset
        if d.id is None and d.quality not in QUALITIES:
            raise ConfigError(
                f"dataset.quality={d.quality!r}: fitting a model needs training data; choose one of "
                f"{', '.join(QUALITIES)}, set dataset.id, or pass model_path=<dynamics.pt>."
            )
    if cfg.heldout.id is None and cfg.heldout.quality not in QUALITIES:
        raise ConfigError(
            f"heldout.quality={cfg.heldout.quality!r} is not a recipe; choose one of "
            f"{', '.join(QUALITIES)} or set heldout.id to a Minari dataset id."
        )
    if cfg.dataset.id is None and (cfg.dataset.size <= 0 or cfg.dataset.train_steps <= 0):
        raise ConfigError("dataset.size and dataset.train_steps must be positive.")
    resolve_device(cfg.device)


def model_file(cfg: CalibrationConfig) -> Path | None:
    """The dynamics.pt to load (model_path, else world_model.load_path), or None to fit one."""
    raw = cfg.model_path or cfg.world_model.load_path
    if not raw:
        return None
    path = Path(raw)
    if path.is_dir() and (path / "dynamics.pt").is_file():
        path = path / "dynamics.pt"
    if not path.is_file():
        key = "model_path" if cfg.model_path else "world_model.load_path"
        raise ConfigError(
            f"{key}={raw} does not exist; give the dynamics.pt of a model-based run (or its run dir), "
            "or leave it unset to fit a model here."
        )
    return path


def load_model(path: Path, device: torch.device) -> DynamicsEnsemble:
    """DynamicsEnsemble.load; a model saved with a callable termination rule loads without it (unused)."""
    try:
        try:
            return DynamicsEnsemble.load(path, device)
        except ValueError as err:
            if "custom termination_fn" not in str(err):
                raise
            return DynamicsEnsemble.load(path, device, termination_fn=never_terminates)
    except Exception as err:  # not a checkpoint, truncated, another format, ...: one line, exit status 2
        first = (str(err).strip().splitlines() or [""])[0]
        raise ConfigError(
            f"model_path={path} is not a loadable DynamicsEnsemble checkpoint "
            f"({type(err).__name__}: {first}); give the dynamics.pt written by a model-based run."
        ) from err


def fit_data(ds: OfflineDataset, device: torch.device) -> dict[str, Tensor]:
    fields = {"obs": ds.observations, "act": ds.actions, "rew": ds.rewards, "next_obs": ds.next_observations,
              "terminal": ds.terminations}
    return {k: torch.as_tensor(np.asarray(v), dtype=torch.float32, device=device) for k, v in fields.items()}


def fit_model(cfg: CalibrationConfig, ds: OfflineDataset, device: torch.device) -> tuple[DynamicsEnsemble, dict]:
    """A DynamicsEnsemble built like the agents' (make_dynamics: every world_model setting, train_precision
    included), fitted on ds and capped by fit_max_epochs / fit_max_seconds."""
    w = cfg.world_model
    if not 1 <= w.num_elites <= w.ensemble_size:
        raise ConfigError("world_model.num_elites must lie in [1, world_model.ensemble_size].")
    model = make_dynamics(w, ds.obs_dim, ds.act_dim, ds.env_id, device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    fit = model.fit(fit_data(ds, device), max_epochs=w.fit_max_epochs, max_seconds=w.fit_max_seconds, generator=gen)
    return model, {
        "epochs": fit.epochs,
        "seconds": round(fit.seconds, 2),
        "train_steps": fit.train_steps,
        "stopped_by": fit.stopped_by,
        "transitions": ds.num_transitions,
    }


def load_heldout(cfg: CalibrationConfig, env_id: str, device: torch.device) -> OfflineDataset:
    if cfg.heldout.id is not None:
        return load_offline_dataset(cfg.heldout.id)
    d = cfg.dataset
    recipe = Recipe(env_id, cfg.heldout.quality, d.size, d.train_steps, d.seed)
    return load_offline_dataset(build(recipe, SACBehaviour(), device, progress=cfg.trainer.progress))


@torch.no_grad()
def critic_ranking(agent, ds: OfflineDataset, gamma: float, num_rows: int, min_steps_left: int, quantile: float,
                   seed: int, device: torch.device) -> dict:
    """How well u = std_i Q_i(s, a) over the agent's critics ranks their error |mean_i Q_i(s, a) - G(s, a)| on ds's
    logged (s, a), G the discounted return from there: at most num_rows rows (a fixed draw) whose G is known."""
    end = ds.episode_end_rows()  # [N]
    left = end - np.arange(ds.num_transitions) + 1  # steps left in the episode, counting this one
    rows = np.flatnonzero(np.asarray(ds.terminations, dtype=bool)[end] | (left >= min_steps_left))
    if len(rows) == 0:
        raise DatasetError(f"dataset '{ds.dataset_id}': no row with a known return (no terminated episode, none "
                           f"{min_steps_left} steps before a time limit); lower critic_min_steps_left.")
    rows = np.sort(rows[np.random.default_rng(seed).permutation(len(rows))[:num_rows]])
    obs = torch.as_tensor(ds.observations[rows], dtype=torch.float32, device=device)
    normalizer = getattr(agent, "normalizer", None)
    obs = normalizer(obs) if normalizer is not None else obs
    q = agent.critic(obs, torch.as_tensor(ds.actions[rows], dtype=torch.float32, device=device)).float()  # [N, R]
    u = QEnsembleStd.from_prediction(q)  # [R]
    ret = torch.as_tensor(ds.returns_to_go(gamma)[rows], device=device)  # [R]
    err = (q.mean(0) - ret).abs()  # [R]
    return {"dataset": ds.dataset_id, "rows": int(len(rows)), "q_mean": q.mean().item(),
            "return_mean": ret.mean().item(), "q_minus_return": (q.mean(0) - ret).mean().item(),
            "u_mean": u.mean().item(), **score(u.cpu().numpy(), err.cpu().numpy(), quantile)}


def run_critic(cfg: CalibrationConfig, out_dir: Path) -> dict:
    """critic_run=RUN_DIR: the run's critic ensemble (restored from its checkpoint) ranked on held-out data of its
    own recipe and on the run's dataset (its training data, or its offline data's stand-in for an online-only run)."""
    from agents.tools.exploitation import load_trainer  # the run loader shared with the exploitation tool

    start = time.perf_counter()
    if cfg.critic_min_steps_left < 1:
        raise ConfigError(f"critic_min_steps_left={cfg.critic_min_steps_left} must be a positive integer.")
    trainer, run_cfg = load_trainer(Path(cfg.critic_run), model_based=False)
    critic = getattr(trainer.agent, "critic", None)
    if critic is None or getattr(critic, "num_critics", 0) < 2:
        raise ConfigError(f"critic_run={cfg.critic_run}: agent {run_cfg.agent.name} has no ensemble of two or more "
                          "critics to calibrate; give a run of an agent with one (sac, cql, redq, off2on, ...).")
    if run_cfg.dataset.id is not None and cfg.heldout.id is None:
        raise ConfigError(f"critic_run={cfg.critic_run} trained on dataset.id={run_cfg.dataset.id}, not a recipe; "
                          "name the held-out data with heldout.id=<minari id>.")
    device = trainer.device
    train_ds = load_dataset(run_cfg, device)
    heldout = load_heldout(replace(cfg, dataset=run_cfg.dataset), train_ds.env_id, device)
    if heldout.env_id != train_ds.env_id:
        raise ConfigError(f"heldout: {heldout.dataset_id} is {heldout.env_id} data; the run's critics are "
                          f"{train_ds.env_id}'s.")
    trainer.agent.eval()
    args = (run_cfg.agent.gamma, cfg.num_states, cfg.critic_min_steps_left, cfg.threshold_quantile, cfg.seed, device)
    report = {"critic_run": str(cfg.critic_run), "agent": run_cfg.agent.name, "critics": critic.num_critics,
              "updates": trainer.state.updates, "gamma": run_cfg.agent.gamma,
              "u": "std over the critics of Q_i(s, a) (q_std)", "error": "|mean_i Q_i(s, a) - G(s, a)|",
              "auroc_positive": f"error > quantile {cfg.threshold_quantile} of the errors",
              "heldout": critic_ranking(trainer.agent, heldout, *args),
              "run_dataset": critic_ranking(trainer.agent, train_ds, *args)}
    report["seconds"] = round(time.perf_counter() - start, 2)
    lines = [f"Critic ensemble of {cfg.critic_run} ({report['agent']}, {report['critics']} critics, update "
             f"{report['updates']}): u = std_i Q_i(s, a) against |mean_i Q_i(s, a) - G(s, a)|\n",
             "| data | rows | Spearman | AUROC | mean Q | mean G | mean Q - G | mean u |",
             "|---|---|---|---|---|---|---|---|"]
    for key in ("heldout", "run_dataset"):
        r = report[key]
        lines.append(f"| {key}: {r['dataset']} | {r['rows']} | {r['spearman']:.3f} | {r['auroc']:.3f} | "
                     f"{r['q_mean']:.2f} | {r['return_mean']:.2f} | {r['q_minus_return']:.2f} | {r['u_mean']:.3f} |")
    table = "\n".join(lines) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "critic_calibration.md").write_text(table)
    (out_dir / "critic_calibration.json").write_text(json.dumps(report, indent=2) + "\n")
    print(table)
    return report


def run(cfg: CalibrationConfig, run_dir: Path) -> dict:
    """Everything after config composition; raises ConfigError / DatasetError on user errors."""
    if cfg.critic_run is not None:
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        return run_critic(cfg, run_dir)
    start = time.perf_counter()
    check_config(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    keep_freed_memory_checked()  # big activations reuse freed heap, no page faults per update (worldmodels/memory.py)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    path = model_file(cfg)
    train_ds = None
    if path is None or (cfg.heldout.id is None and cfg.dataset.id is not None):
        print("calibration: loading the training dataset (built on first use)", file=sys.stderr)
        train_ds = load_dataset(cfg, device)  # dataset.id or the recipe (reads dataset.*, trainer.progress)
    fit_info = None
    if path is None:
        w = cfg.world_model
        print(
            f"calibration: fitting a {w.ensemble_size}-member ensemble on {train_ds.dataset_id} "
            f"(max epochs {w.fit_max_epochs}, max seconds {w.fit_max_seconds})",
            file=sys.stderr,
        )
        model, fit_info = fit_model(cfg, train_ds, device)
        run_dir.mkdir(parents=True, exist_ok=True)
        model.save(run_dir / "dynamics.pt")
        model_desc = str(run_dir / "dynamics.pt")
    else:
        model = load_model(path, device)
        model_desc = str(path)
    model.eval()
    model_env = train_ds.env_id if train_ds is not None else None  # a loaded model: only its dims are known
    env_id = train_ds.env_id if train_ds is not None else cfg.dataset.env_id
    heldout = load_heldout(cfg, env_id, device)
    check_compatible(model, heldout, model_env)
    if train_ds is not None and heldout.dataset_id == train_ds.dataset_id and path is None:
        print("warning: the held-out dataset is the training dataset; the errors are in-sample", file=sys.stderr)

    ev = evaluate(model, heldout, cfg.estimators, cfg.horizon, cfg.num_states, cfg.seed)
    if len(ev.one_step_error) == 0:
        raise DatasetError(f"dataset '{heldout.dataset_id}': no held-out transitions to evaluate.")
    if ev.rollout_error.shape[0] == 0:
        print(
            f"warning: no episode of {heldout.dataset_id} is {cfg.horizon} steps long; the h-step columns are "
            "n/a (lower horizon)",
            file=sys.stderr,
        )
    summary = summarize(ev, cfg.threshold_quantile)
    elites = model.elite_indices.tolist()
    holdout_mse = [float(x) for x in model.holdout_mse.tolist()]
    report = {
        "train_dataset": train_ds.dataset_id if train_ds is not None else "n/a (model loaded from model_path)",
        "heldout_dataset": heldout.dataset_id,
        "env_id": heldout.env_id,
        "model_path": model_desc,
        "model_holdout_mse": float(np.mean([holdout_mse[i] for i in elites])),
        "heldout_one_step_mse": ev.one_step_mse,
        "fit": fit_info,
        "n_one_step": int(len(ev.one_step_error)),
        "n_segments": int(ev.rollout_error.shape[0]),
        "horizon": cfg.horizon,
        "threshold_quantile": cfg.threshold_quantile,
        "errors": {
            "one_step": "||([s'-s, r] - mean over elites of predicted means) / model target std||_2",
            "h_step": "||(s_hat_h - s_h) / model obs std||_2, logged actions replayed open loop, mean "
            "propagation over elites; u = u(s_0, a_0) (hstep) or sum_k u(s_hat_k, a_k) (hstep_path)",
            "auroc_positive": f"error > quantile {cfg.threshold_quantile} of the errors",
        },
        **summary,
    }
    report["seconds"] = round(time.perf_counter() - start, 2)
    table = write_outputs(run_dir, report, ev)
    print(table)
    return report


def main() -> None:
    ConfigStore.instance().store(name="calibration_schema", node=CalibrationConfig)

    @hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="calibration")
    def _main(dict_cfg) -> None:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            cfg: CalibrationConfig = OmegaConf.to_object(dict_cfg)
            run(cfg, run_dir)
        except (DatasetError, ConfigError, gym.error.Error) as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    _main()


if __name__ == "__main__":
    main()
