"""The calibration report: a Markdown table, a JSON file and two plots (error vs uncertainty, error growth)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from worldmodels.analysis.evaluation import Evaluation


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
