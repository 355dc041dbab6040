"""Aggregate a sweep's summary.json files into a table: mean and 95% bootstrap interval of
the offline and online normalized scores per (agent, dataset).

    python scripts/aggregate.py multirun/td3bc/2026-11-26_13-00-00 [more dirs] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

METRICS = ("offline_score", "online_score")


def bootstrap_ci(values: np.ndarray, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean."""
    if len(values) == 1:
        return float(values[0]), float(values[0])
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(n_boot, len(values)), replace=True).mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def collect(dirs: list[Path]) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for root in dirs:
        for path in sorted(root.rglob("summary.json")):
            summary = json.loads(path.read_text())
            groups[(summary["agent"], summary.get("dataset_id") or summary.get("env_id", "?"))].append(summary)
    return groups


def table(groups: dict[tuple[str, str], list[dict]]) -> str:
    lines = ["| agent | dataset | seeds | offline score | online score |", "|---|---|---|---|---|"]
    for (agent, dataset), runs in sorted(groups.items()):
        cells = []
        for metric in METRICS:
            values = np.array([r[metric] for r in runs if r.get(metric) is not None], dtype=float)
            if len(values) == 0:
                cells.append("n/a")
                continue
            lo, hi = bootstrap_ci(values)
            cells.append(f"{values.mean():.1f} [{lo:.1f}, {hi:.1f}]")
        lines.append(f"| {agent} | {dataset} | {len(runs)} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.dirs if not d.is_dir()]
    if missing:
        sys.exit(f"error: not a directory: {', '.join(missing)}")
    groups = collect(args.dirs)
    if not groups:
        sys.exit(f"error: no summary.json under {', '.join(map(str, args.dirs))}; did the sweep finish?")
    out = table(groups)
    print(out)
    if args.markdown:
        args.markdown.write_text(out + "\n")
    return out


if __name__ == "__main__":
    main()
