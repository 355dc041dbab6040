"""Uncertainty calibration of a dynamics ensemble on held-out data.

    python -m worldmodels.analysis.calibration                   # default dataset; held-out: medium-expert
    python -m worldmodels.analysis.calibration experiment=smoke  # the same in well under two minutes
    python -m worldmodels.analysis.calibration model_path=runs/mopo/<run>/dynamics.pt heldout.id=<minari id>

For each estimator u (worldmodels/uncertainty.py, each with its own default members and dims) it reports
how well u ranks the model's true errors on held-out transitions:

- one-step error of (s, a, r, s'): ||([s' - s, r] - mu(s, a)) / sigma_y||_2, mu = mean over the elites of
  the members' predicted means, sigma_y = the model's per-dim target std (the std of [s' - s, r] on its
  training data), so every dimension counts in units of its own spread; compared with u(s, a).
- h-step error of a logged segment (s_0, a_0, ..., a_{h-1}, s_h) inside one episode: the logged actions are
  replayed open loop through the model with mean propagation (s_hat_{k+1} = s_hat_k + elite-mean predicted
  delta, no sampling); the error is ||(s_hat_h - s_h) / sigma_s||_2, sigma_s = the model's input std of the
  observation dims; compared with u(s_0, a_0) and with the path sum, sum_k u(s_hat_k, a_k).
- Spearman rank correlation (scipy) and AUROC of u as a detector of "error above the 90th percentile of the
  errors" (`threshold_quantile`), computed from ranks (Mann-Whitney U, ties count one half).

Writes calibration.md, calibration.json, error_vs_uncertainty.png and rollout_error_growth.png into the
hydra run dir (and dynamics.pt when it fits the model itself), then prints the Markdown table. User errors
print one line and exit with status 2.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from agents.core.config import QUALITIES, ConfigError, DatasetConfig, TrainerConfig, resolve_device
from worldmodels.data.minari_io import DatasetError, OfflineDataset
from worldmodels.dynamics import DynamicsEnsemble
from worldmodels.rollout import RolloutConfig
from worldmodels.termination import never_terminates, termination_fn_for
from worldmodels.uncertainty import make_uncertainty
from worldmodels.world import WorldModelConfig, weight_decays

#: the dynamics estimators of worldmodels/uncertainty.py (q_std reads critics, not a dynamics model)
DYNAMICS_ESTIMATORS = ("aleatoric", "disagreement", "ensemble_std", "total_variance")
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


# ------------------------------------------------------------------------------------------ config


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


# ------------------------------------------------------------------------------------------ metrics


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x [N]; tied values share the mean of their ranks."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new = np.empty(len(xs), dtype=bool)
    new[:1] = True
    new[1:] = xs[1:] != xs[:-1]
    starts = np.flatnonzero(new)  # first sorted position of each tie group
    stops = np.append(starts[1:], len(xs))  # one past its last
    group_rank = (starts + 1 + stops) / 2.0  # mean of the ranks starts+1 .. stops
    ranks = np.empty(len(xs), dtype=np.float64)
    ranks[order] = group_rank[np.cumsum(new) - 1]
    return ranks


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative) + 0.5 P(tie) (Mann-Whitney U / (n+ n-)).

    NaN when either class is empty.
    """
    labels = np.asarray(labels, dtype=bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = average_ranks(_finite_or_inf(scores))
    u_stat = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u_stat / (n_pos * n_neg))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (scipy.stats.spearmanr); NaN when either input is constant."""
    from scipy.stats import spearmanr

    x, y = _finite_or_inf(x), _finite_or_inf(y)
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(x, y).statistic)


def top_error_labels(err: np.ndarray, quantile: float) -> np.ndarray:
    """bool [N]: error strictly above its `quantile` (the AUROC positives)."""
    err = _finite_or_inf(err)
    finite = err[np.isfinite(err)]
    threshold = np.quantile(finite, quantile) if len(finite) else np.inf
    return err > threshold


def score(u: np.ndarray, err: np.ndarray, quantile: float) -> dict[str, float]:
    return {"spearman": spearman(u, err), "auroc": auroc(u, top_error_labels(err, quantile))}


def _finite_or_inf(x) -> np.ndarray:
    """NaN (a diverged prediction) ranks as the largest value, like +inf."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    return np.nan_to_num(x, nan=np.inf, posinf=np.inf, neginf=-np.inf)


# ------------------------------------------------------------------------------------------ segments


def segment_starts(ds: OfflineDataset, horizon: int) -> np.ndarray:
    """Rows t such that t .. t + horizon - 1 are consecutive steps of one episode (int64 [S]).

    A segment never spans an episode end (episode_ends, terminations or truncations on rows t .. t + h - 2)
    nor a break in the logged chain (next_observations[t] != observations[t + 1]).
    """
    n = ds.num_transitions
    if n < horizon:
        return np.zeros(0, dtype=np.int64)
    ends = np.asarray(ds.episode_ends) | np.asarray(ds.terminations, bool) | np.asarray(ds.truncations, bool)
    ends = ends.copy()
    if n > 1:
        chained = np.all(ds.next_observations[:-1] == ds.observations[1:], axis=1)
        ends[:-1] |= ~chained
    count = np.concatenate([[0], np.cumsum(ends)])  # count[i] = ends among rows < i
    t = np.arange(n - horizon + 1)
    return t[count[t + horizon - 1] - count[t] == 0].astype(np.int64)


# ------------------------------------------------------------------------------------------ evaluation


@dataclass
class Evaluation:
    one_step_error: np.ndarray  # [N1]
    one_step_u: dict[str, np.ndarray]  # estimator -> [N1]
    rollout_error: np.ndarray  # [S, h]: error after k = 1 .. h open-loop steps
    rollout_u0: dict[str, np.ndarray]  # estimator -> [S], u(s_0, a_0)
    rollout_upath: dict[str, np.ndarray]  # estimator -> [S], sum_k u(s_hat_k, a_k)
    one_step_mse: float  # mean squared normalized one-step error per dim


def _tensor(x: np.ndarray, device: torch.device) -> Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float32, device=device)


@torch.no_grad()
def evaluate(
    model: DynamicsEnsemble,
    ds: OfflineDataset,
    estimators: Sequence[str],
    horizon: int,
    num_states: int,
    seed: int = 0,
    chunk: int = 4096,
) -> Evaluation:
    """One-step and h-step errors of `model` on `ds`, with every estimator's u on the same forward passes."""
    dev = model.device
    rng = np.random.default_rng(seed)
    ests = {name: make_uncertainty(name, model) for name in estimators}
    elites = model.elite_indices
    d_obs = model.obs_dim

    # one-step: (s, a, r, s') sampled uniformly without replacement
    n = ds.num_transitions
    rows = np.sort(rng.choice(n, size=min(num_states, n), replace=False))
    err1, u1 = [], {k: [] for k in ests}
    sq_sum = 0.0
    for s in range(0, len(rows), chunk):
        r = rows[s : s + chunk]
        obs, act = _tensor(ds.observations[r], dev), _tensor(ds.actions[r], dev)
        target = torch.cat([_tensor(ds.next_observations[r], dev) - obs, _tensor(ds.rewards[r], dev)[:, None]], -1)
        mean, var = model.predict(obs, act)  # [E, B, D]
        z = (target - mean.index_select(0, elites).mean(0)) / model.target_std  # [B, D]
        err1.append(torch.linalg.vector_norm(z, dim=-1).cpu())
        sq_sum += float(z.square().mean(-1).sum())
        for k, est in ests.items():
            u1[k].append(est.from_prediction(mean, var).cpu())

    # h-step: logged segments inside one episode, logged actions replayed open loop, mean propagation
    starts = segment_starts(ds, horizon)
    if len(starts) > num_states:
        starts = np.sort(rng.choice(starts, size=num_states, replace=False))
    obs_std = model.in_std[:d_obs]
    errh, u0, upath = [], {k: [] for k in ests}, {k: [] for k in ests}
    for s in range(0, len(starts), chunk):
        t0 = starts[s : s + chunk]
        s_hat = _tensor(ds.observations[t0], dev)  # [B, obs_dim]
        path = {k: torch.zeros(len(t0), device=dev) for k in ests}
        errs = []
        for k in range(horizon):
            act = _tensor(ds.actions[t0 + k], dev)
            mean, var = model.predict(s_hat, act)
            for name, est in ests.items():
                u = est.from_prediction(mean, var)
                if k == 0:
                    u0[name].append(u.cpu())
                path[name] += u
            s_hat = s_hat + mean.index_select(0, elites).mean(0)[:, :d_obs]
            true = _tensor(ds.next_observations[t0 + k], dev)
            errs.append(torch.linalg.vector_norm((s_hat - true) / obs_std, dim=-1))
        errh.append(torch.stack(errs, dim=1).cpu())
        for name in ests:
            upath[name].append(path[name].cpu())

    def cat(parts, shape) -> np.ndarray:
        return torch.cat(parts).double().numpy() if parts else np.zeros(shape)

    return Evaluation(
        one_step_error=cat(err1, (0,)),
        one_step_u={k: cat(v, (0,)) for k, v in u1.items()},
        rollout_error=cat(errh, (0, horizon)),
        rollout_u0={k: cat(v, (0,)) for k, v in u0.items()},
        rollout_upath={k: cat(v, (0,)) for k, v in upath.items()},
        one_step_mse=sq_sum / max(len(rows), 1) if len(rows) else math.nan,
    )


def summarize(ev: Evaluation, quantile: float) -> dict:
    """Per-estimator scores and the error growth with horizon (plain python, JSON-able up to NaN)."""
    eh = ev.rollout_error[:, -1] if ev.rollout_error.size else np.zeros(0)
    per_est = {}
    for name in ev.one_step_u:
        one = score(ev.one_step_u[name], ev.one_step_error, quantile)
        h0 = score(ev.rollout_u0[name], eh, quantile)
        hp = score(ev.rollout_upath[name], eh, quantile)
        per_est[name] = {
            "spearman_1step": one["spearman"],
            "auroc_1step": one["auroc"],
            "spearman_hstep": h0["spearman"],
            "auroc_hstep": h0["auroc"],
            "spearman_hstep_path": hp["spearman"],
            "auroc_hstep_path": hp["auroc"],
        }
    growth = []
    for k in range(ev.rollout_error.shape[1]):
        e = ev.rollout_error[:, k]
        qs = np.quantile(e, [0.1, 0.25, 0.5, 0.75, 0.9]) if len(e) else [math.nan] * 5
        growth.append(
            {
                "k": k + 1,
                "mean": float(np.mean(e)) if len(e) else math.nan,
                **{f"q{int(q * 100)}": float(v) for q, v in zip((0.1, 0.25, 0.5, 0.75, 0.9), qs, strict=True)},
            }
        )
    return {"estimators": per_est, "error_growth": growth}


# ------------------------------------------------------------------------------------------ outputs


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.3f}"


def markdown(report: dict) -> str:
    h, p = report["horizon"], int(round(100 * report["threshold_quantile"]))
    lines = [
        "# Uncertainty calibration",
        "",
        f"- train dataset: `{report['train_dataset']}`",
        f"- held-out dataset: `{report['heldout_dataset']}`",
        f"- model: `{report['model_path']}`; holdout MSE of its elites on its own fit split "
        f"(normalized targets): {_fmt(report['model_holdout_mse'])}; held-out one-step MSE (normalized): "
        f"{_fmt(report['heldout_one_step_mse'])}",
        f"- N: {report['n_one_step']} held-out transitions (one-step), "
        f"{report['n_segments']} logged segments of h = {h} steps inside one episode",
        "- one-step error: ||([s'-s, r] - elite-mean prediction) / target std||_2; h-step error: "
        "||(s_hat_h - s_h) / obs std||_2 after replaying the logged actions open loop "
        "(mean over elites, no sampling)",
        f"- AUROC: u as a detector of error > p{p} (the {p}th percentile of that error); "
        "h-step columns use u(s_0, a_0), 'path' columns the sum of u over the imagined path",
        "",
        f"| estimator | Spearman 1-step | AUROC 1-step (err > p{p}) | Spearman h={h} "
        f"| AUROC h={h} (err > p{p}) "
        f"| Spearman h={h} path | AUROC h={h} path (err > p{p}) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in report["estimators"].items():
        cells = [
            m[k]
            for k in (
                "spearman_1step",
                "auroc_1step",
                "spearman_hstep",
                "auroc_hstep",
                "spearman_hstep_path",
                "auroc_hstep_path",
            )
        ]
        lines.append(f"| {name} | " + " | ".join(_fmt(c) for c in cells) + " |")
    growth = report["error_growth"]
    if growth:
        lines += [
            "",
            f"h-step error growth (normalized state error, {report['n_segments']} segments):",
            "",
            "| k | mean | p10 | p50 | p90 |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {g['k']} | {_fmt(g['mean'])} | {_fmt(g['q10'])} | {_fmt(g['q50'])} | {_fmt(g['q90'])} |" for g in growth
        ]
    return "\n".join(lines) + "\n"


def _json_safe(x):
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _pyplot():
    import logging

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # hydra's root logger would print font-cache notes
    from matplotlib import pyplot as plt

    return plt


def _log_scale_if_wide(axis, set_scale, values: np.ndarray) -> None:
    """Log scale when the values are positive and span more than a decade (else linear reads better)."""
    from matplotlib.ticker import NullFormatter

    if len(values) and values.min() > 0 and values.max() / values.min() > 10:
        set_scale("log")
        axis.set_minor_formatter(NullFormatter())


def plot_error_vs_uncertainty(ev: Evaluation, summary: dict, path: Path, horizon: int, quantile: float) -> None:
    plt = _pyplot()
    names = list(ev.one_step_u)
    fig, axes = plt.subplots(2, len(names), figsize=(3.6 * len(names), 6.4), squeeze=False)
    eh = ev.rollout_error[:, -1] if ev.rollout_error.size else np.zeros(0)
    for j, name in enumerate(names):
        m = summary["estimators"][name]
        rows = (
            (
                ev.one_step_u[name],
                ev.one_step_error,
                "1-step",
                "u(s, a)",
                m["spearman_1step"],
                m["auroc_1step"],
            ),
            (
                ev.rollout_u0[name],
                eh,
                f"{horizon}-step",
                "u(s_0, a_0)",
                m["spearman_hstep"],
                m["auroc_hstep"],
            ),
        )
        for i, (u, e, label, xlabel, rho, auc) in enumerate(rows):
            ax = axes[i, j]
            ok = np.isfinite(u) & np.isfinite(e)
            u, e = u[ok], e[ok]
            ax.scatter(u, e, s=3, alpha=0.3, color="C0" if i == 0 else "C1", rasterized=True)
            if len(e):
                ax.axhline(
                    np.quantile(e, quantile),
                    color="k",
                    lw=0.8,
                    ls="--",
                    label=f"p{int(round(100 * quantile))} error",
                )
                ax.legend(loc="lower right", fontsize=7)
            _log_scale_if_wide(ax.xaxis, ax.set_xscale, u)
            _log_scale_if_wide(ax.yaxis, ax.set_yscale, e)
            ax.set_title(f"{name}: {label}\nSpearman {_fmt(rho)}, AUROC {_fmt(auc)}", fontsize=9)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{label} error (normalized)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_error_growth(ev: Evaluation, summary: dict, path: Path, quantile: float) -> None:
    plt = _pyplot()
    growth = summary["error_growth"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13.5, 4.2))
    ks = [g["k"] for g in growth]
    if ks:
        left.fill_between(
            ks, [g["q10"] for g in growth], [g["q90"] for g in growth], alpha=0.2, color="C0", label="p10-p90"
        )
        left.fill_between(
            ks,
            [g["q25"] for g in growth],
            [g["q75"] for g in growth],
            alpha=0.35,
            color="C0",
            label="p25-p75",
        )
        left.plot(ks, [g["q50"] for g in growth], color="C0", marker="o", label="median")
        left.plot(ks, [g["mean"] for g in growth], color="k", marker="s", ls="--", label="mean")
        _log_scale_if_wide(left.yaxis, left.set_yscale, np.array([[g["q10"], g["q90"]] for g in growth]))
    left.set_xlabel("open-loop steps k (logged actions)")
    left.set_ylabel("k-step state error (normalized)")
    left.set_title(f"Rollout error growth ({ev.rollout_error.shape[0]} segments)")
    left.set_xticks(ks)
    left.legend(fontsize=8)
    p = int(round(100 * quantile))
    for j, (name, u0) in enumerate(ev.rollout_u0.items()):
        if not len(u0):
            break
        top = u0 > np.quantile(u0, quantile)
        for mask, ls, label in (
            (top, "-", f"{name}: top {100 - p}% u(s_0, a_0)"),
            (~top, ":", f"{name}: rest"),
        ):
            if mask.any():
                right.plot(ks, ev.rollout_error[mask].mean(0), color=f"C{j}", ls=ls, marker="o", ms=3, label=label)
    right.set_xlabel("open-loop steps k")
    right.set_ylabel("mean k-step state error (normalized)")
    right.set_title("Error growth of the most vs least uncertain starts")
    right.set_xticks(ks)
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(run_dir: Path, report: dict, ev: Evaluation) -> str:
    run_dir.mkdir(parents=True, exist_ok=True)
    table = markdown(report)
    (run_dir / "calibration.md").write_text(table)
    tmp = run_dir / "calibration.json.tmp"
    tmp.write_text(json.dumps(_json_safe(report), indent=2, allow_nan=False))
    tmp.replace(run_dir / "calibration.json")
    plot_error_vs_uncertainty(
        ev, report, run_dir / "error_vs_uncertainty.png", report["horizon"], report["threshold_quantile"]
    )
    plot_error_growth(ev, report, run_dir / "rollout_error_growth.png", report["threshold_quantile"])
    return table


# ------------------------------------------------------------------------------------------ data and model


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
    return {
        "obs": _tensor(ds.observations, device),
        "act": _tensor(ds.actions, device),
        "rew": _tensor(ds.rewards, device),
        "next_obs": _tensor(ds.next_observations, device),
        "terminal": _tensor(ds.terminations, device),
    }


def fit_model(cfg: CalibrationConfig, ds: OfflineDataset, device: torch.device) -> tuple[DynamicsEnsemble, dict]:
    """A DynamicsEnsemble with the world_model settings, fitted on ds (capped by fit_max_epochs / fit_max_seconds).

    No termination head is learned (calibration never reads terminations); a known rule is kept by env id.
    """
    w = cfg.world_model
    if not 1 <= w.num_elites <= w.ensemble_size:
        raise ConfigError("world_model.num_elites must lie in [1, world_model.ensemble_size].")
    rule = ds.env_id if (w.termination == "auto" and termination_fn_for(ds.env_id) is not None) else None
    model = DynamicsEnsemble(
        ds.obs_dim,
        ds.act_dim,
        w.ensemble_size,
        w.num_elites,
        w.hidden,
        w.lr,
        weight_decays(w),
        termination_fn=rule,
        device=device,
    )
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
    from worldmodels.data.minari_io import load_offline_dataset

    if cfg.heldout.id is not None:
        return load_offline_dataset(cfg.heldout.id)
    from worldmodels.data.recipes import Recipe, build

    d = cfg.dataset
    recipe = Recipe(env_id, cfg.heldout.quality, d.size, d.train_steps, d.seed)
    return load_offline_dataset(build(recipe, device, progress=cfg.trainer.progress))


def check_compatible(model: DynamicsEnsemble, ds: OfflineDataset, model_env: str | None) -> None:
    """The held-out data must come from the model's environment (same observation and action sizes)."""
    trained_on = f" (trained on {model_env})" if model_env else ""
    for what, got, want in (
        ("observations", ds.obs_dim, model.obs_dim),
        ("actions", ds.act_dim, model.act_dim),
    ):
        if got != want:
            raise DatasetError(
                f"dataset '{ds.dataset_id}', field '{what}': {got} dims per step but the "
                f"model{trained_on} expects {want}; the held-out dataset comes from another environment "
                f"({ds.env_id}). Pick a held-out dataset of the model's environment (heldout.id=..., or "
                "heldout.quality=... with dataset.env_id=<the model's env>)."
            )
    if model_env and ds.env_id != model_env:
        print(
            f"warning: held-out dataset env {ds.env_id} differs from the model's env {model_env}",
            file=sys.stderr,
        )


# ------------------------------------------------------------------------------------------ entry


def run(cfg: CalibrationConfig, run_dir: Path) -> dict:
    """Everything after config composition; raises ConfigError / DatasetError on user errors."""
    from agents.core.entry import load_dataset
    from agents.core.trainer import seed_everything

    start = time.perf_counter()
    check_config(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
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
    import gymnasium as gym
    import hydra
    from hydra.core.config_store import ConfigStore
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

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
