"""Rank metrics for uncertainty calibration: does u rank the errors the way the errors rank themselves?

Spearman rank correlation (scipy) and AUROC of u as a detector of the largest errors, computed from
ranks (Mann-Whitney U, ties count one half). NaN (a diverged prediction) ranks as the largest value.
"""

from __future__ import annotations

import math
import warnings

import numpy as np


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
