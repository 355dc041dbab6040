"""Aggregate a sweep's runs into a table: mean and 95% bootstrap interval of the offline and
online normalized scores per (agent, dataset).

    python scripts/aggregate.py multirun/td3bc/2026-11-26_13-00-00 [more dirs] [--markdown out.md]

The full report (the same runs by dataset and agent, the dip and steps-to-90% criteria,
aggregates across datasets, curves) is `python -m benchmarks.report DIR... out=REPORT_DIR`; this
table uses its run discovery and estimators.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchmarks import estimators as est
from benchmarks.report import find_runs, group

METRICS = ("offline", "online")


def table(dirs: list[Path]) -> str:
    runs, _ = find_runs(dirs)
    groups = sorted((agent, dataset, rs) for dataset, by_agent in group(runs).items() for agent, rs in by_agent.items())
    lines = ["| agent | dataset | seeds | offline score | online score |", "|---|---|---|---|---|"]
    for agent, dataset, rs in groups:
        cells = []
        for metric in METRICS:
            values = np.array([getattr(r, metric) for r in rs if getattr(r, metric) is not None], dtype=float)
            if len(values) == 0:
                cells.append("n/a")
                continue
            mean, lo, hi = est.interval(est.mean, [values], reps=10_000)
            cells.append(f"{mean:.1f} [{lo:.1f}, {hi:.1f}]")
        lines.append(f"| {agent} | {dataset} | {len(rs)} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) if groups else ""


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.dirs if not d.is_dir()]
    if missing:
        sys.exit(f"error: not a directory: {', '.join(missing)}")
    out = table(args.dirs)
    if not out:
        sys.exit(f"error: no finished run (summary.json) under {', '.join(map(str, args.dirs))}; did the sweep finish?")
    print(out)
    if args.markdown:
        args.markdown.write_text(out + "\n")
    return out


if __name__ == "__main__":
    main()
