"""Aggregate scores across tasks with stratified bootstrap intervals, as rliable defines them
(Agarwal et al. 2021, "Deep RL at the Edge of the Statistical Precipice"), written here in numpy.

Scores come per task as a list of 1-D arrays, one value per run (seed); tasks may hold
different numbers of runs. Normalized scores are on D4RL's 0-100 scale, so the optimality
gap's target is 100 (rliable's 1 on its 0-1 scale).

- IQM: the mean of the middle 50% of all runs pooled over tasks (a 25% trimmed mean, cutting
  int(0.25 n) values from each end, as scipy.stats.trim_mean does);
- mean: the mean over tasks of each task's mean over runs;
- optimality gap: target - mean of min(score, target) over all runs pooled;
- probability of improvement P(X > Y): per task the Mann-Whitney statistic
  P(x > y) + 0.5 P(x = y) over all run pairs, averaged over tasks.

The stratified bootstrap resamples runs with replacement within each task (never across
tasks); a pair of algorithms is resampled independently (rliable's
StratifiedIndependentBootstrap). Intervals are percentile intervals.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Tasks = Sequence[np.ndarray]  # one 1-D array of run scores per task
TARGET = 100.0  # D4RL normalized score of the expert


def iqm(tasks: Tasks) -> float:
    """Interquartile mean of all runs pooled over tasks."""
    x = np.sort(np.concatenate([np.asarray(t, dtype=float).ravel() for t in tasks]))
    cut = int(0.25 * len(x))
    return float(x[cut: len(x) - cut].mean())


def mean(tasks: Tasks) -> float:
    """Mean over tasks of the per-task mean."""
    return float(np.mean([np.mean(t) for t in tasks]))


def optimality_gap(tasks: Tasks, target: float = TARGET) -> float:
    """How far the runs fall short of `target`, scores above it counting as `target`."""
    x = np.concatenate([np.asarray(t, dtype=float).ravel() for t in tasks])
    return float(target - np.minimum(x, target).mean())


def probability_of_improvement(x_tasks: Tasks, y_tasks: Tasks) -> float:
    """P(X > Y): per task the share of run pairs (x, y) with x > y, ties counting one half,
    averaged over tasks."""
    per_task = []
    for x, y in zip(x_tasks, y_tasks, strict=True):
        x, y = np.asarray(x, dtype=float)[:, None], np.asarray(y, dtype=float)[None, :]
        per_task.append(float(((x > y) + 0.5 * (x == y)).mean()))
    return float(np.mean(per_task))


def resample(tasks: Tasks, reps: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Stratified bootstrap: per task (in order) a [reps, n_task] array of runs drawn with
    replacement from that task's own runs."""
    out = []
    for t in tasks:
        t = np.asarray(t, dtype=float)
        out.append(t[rng.integers(0, len(t), size=(reps, len(t)))])
    return out


def percentile_interval(values: np.ndarray, size: float = 0.95) -> tuple[float, float]:
    tail = 100 * (1 - size) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def interval(statistic: Callable[[Tasks], float], tasks: Tasks, reps: int = 2000, seed: int = 0,
             size: float = 0.95) -> tuple[float, float, float]:
    """(point estimate, lower, upper): the statistic and its stratified bootstrap interval."""
    draws = resample(tasks, reps, np.random.default_rng(seed))
    stats = np.array([statistic([d[i] for d in draws]) for i in range(reps)])
    return (statistic(tasks), *percentile_interval(stats, size))


def improvement_interval(x_tasks: Tasks, y_tasks: Tasks, reps: int = 2000, seed: int = 0,
                         size: float = 0.95) -> tuple[float, float, float]:
    """P(X > Y) and its interval, X's and Y's runs resampled independently within each task."""
    rng = np.random.default_rng(seed)
    xs, ys = resample(x_tasks, reps, rng), resample(y_tasks, reps, rng)
    stats = np.array([probability_of_improvement([d[i] for d in xs], [d[i] for d in ys]) for i in range(reps)])
    return (probability_of_improvement(x_tasks, y_tasks), *percentile_interval(stats, size))


AGGREGATES: dict[str, Callable[[Tasks], float]] = {"IQM": iqm, "mean": mean, "optimality gap": optimality_gap}
