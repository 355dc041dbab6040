"""Run logs: CSV files (one per kind: train, eval) and TensorBoard, resumable without losing
or duplicating rows (the checkpoint records how many rows each file had)."""

from __future__ import annotations

import csv
from pathlib import Path

import torch


class RunLogger:
    def __init__(self, run_dir: Path, tensorboard: bool = True, purge_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.rows: dict[str, int] = {}
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge_step)

    def path(self, kind: str) -> Path:
        return self.run_dir / f"{kind}.csv"

    def log(self, kind: str, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step} | {k: float(v) for k, v in metrics.items()}
        path = self.path(kind)
        new = not path.exists() or path.stat().st_size == 0
        if not new:
            with path.open() as f:
                header = next(csv.reader(f))
            if set(header) != set(row):  # keys changed (e.g. a new phase logs more): widen the file
                self._widen(path, header, list(row))
                new = False
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._header(path, row), restval="")
            if new:
                writer.writeheader()
            writer.writerow(row)
        self.rows[kind] = self.rows.get(kind, 0) + 1
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(f"{kind}/{k}" if "/" not in k else k, float(v), step)

    @staticmethod
    def _header(path: Path, row: dict) -> list[str]:
        if path.exists() and path.stat().st_size > 0:
            with path.open() as f:
                return next(csv.reader(f))
        return list(row)

    @staticmethod
    def _widen(path: Path, header: list[str], keys: list[str]) -> None:
        fields = header + [k for k in keys if k not in header]
        with path.open() as f:
            old = list(csv.DictReader(f))
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, restval="")
            writer.writeheader()
            writer.writerows(old)

    def truncate(self, rows: dict[str, int]) -> None:
        """Drop rows written after the checkpoint we resume from."""
        for kind in list(self.rows) + [p.stem for p in self.run_dir.glob("*.csv")]:
            path = self.path(kind)
            if not path.exists():
                continue
            keep = rows.get(kind, 0)
            with path.open(newline="") as f:  # the csv module's \r\n endings kept: a resumed log is byte-identical
                lines = f.readlines()
            with path.open("w", newline="") as f:
                f.writelines(lines[: keep + 1] if keep else [])
            self.rows[kind] = keep

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def scalars(info: dict[str, torch.Tensor]) -> dict[str, float]:
    """One host sync for a whole metrics dict (called every log_every updates, not every step)."""
    keys = [k for k in info if not k.startswith("_")]
    if not keys:
        return {}
    values = torch.stack([info[k].detach().float().reshape(()) for k in keys]).cpu().tolist()
    return dict(zip(keys, values, strict=True))
