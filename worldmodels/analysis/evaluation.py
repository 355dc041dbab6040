"""Errors of a dynamics ensemble on held-out data, next to every estimator's uncertainty u(s, a).

- one-step error of (s, a, r, s'): ||([s' - s, r] - mu(s, a)) / sigma_y||_2, mu = mean over the elites of
  the members' predicted means, sigma_y = the model's per-dim target std (the std of [s' - s, r] on its
  training data), so every dimension counts in units of its own spread; compared with u(s, a).
- h-step error of a logged segment (s_0, a_0, ..., a_{h-1}, s_h) inside one episode: the logged actions are
  replayed open loop through the model with mean propagation (s_hat_{k+1} = s_hat_k + elite-mean predicted
  delta, no sampling); the error is ||(s_hat_h - s_h) / sigma_s||_2, sigma_s = the model's input std of the
  observation dims; compared with u(s_0, a_0) and with the path sum, sum_k u(s_hat_k, a_k).

`summarize` scores each estimator with worldmodels/analysis/metrics.py.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from worldmodels.analysis.metrics import score
from worldmodels.data.minari_load import DatasetError, OfflineDataset
from worldmodels.dynamics import DynamicsEnsemble
from worldmodels.uncertainty import make_uncertainty

#: the dynamics estimators of worldmodels/uncertainty.py (q_std reads critics, not a dynamics model)
DYNAMICS_ESTIMATORS = ("aleatoric", "disagreement", "ensemble_std", "total_variance")


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
    # errors are in units of the target std: the model's own when it standardizes its targets, else
    # (raw-target models, world_model.normalize_targets=false) that of the evaluated rows, so both
    # kinds of model are scored on the same scale
    if model.normalize_targets:
        scale = model.target_std
    else:
        raw = np.concatenate([ds.next_observations[rows] - ds.observations[rows], ds.rewards[rows, None]], -1)
        scale = _tensor(raw.std(0) + 1e-6, dev)
    for s in range(0, len(rows), chunk):
        r = rows[s : s + chunk]
        obs, act = _tensor(ds.observations[r], dev), _tensor(ds.actions[r], dev)
        target = torch.cat([_tensor(ds.next_observations[r], dev) - obs, _tensor(ds.rewards[r], dev)[:, None]], -1)
        mean, var = model.predict(obs, act)  # [E, B, D]
        z = (target - mean.index_select(0, elites).mean(0)) / scale  # [B, D]
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
