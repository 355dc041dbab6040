"""Samplers turn stores into batches. Agents only ever see `Batch`es, so a new sampling
scheme (priorities, density ratios, mixtures) never touches an agent.

Every sampler has `sample(batch_size, generator) -> Batch` and `__len__` (rows it can draw
from). Indices are drawn on the store's device.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from worldmodels.data.store import Batch, TransitionStore


class Sampler(Protocol):
    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch: ...

    def __len__(self) -> int: ...


class UniformSampler:
    """Uniform with replacement over the valid rows of one store."""

    def __init__(self, store: TransitionStore):
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        return self.store.gather(self.store.sample_indices(batch_size, generator))


class PrioritySampler:
    """Sampling proportional to a per-row priority held in the store's `priority` extra.

    The owner writes priorities (MOORe's decaying offline priority, Off2On's density
    ratios); rows with priority 0 are never drawn.
    """

    def __init__(self, store: TransitionStore, key: str = "priority"):
        if key not in store.data:
            raise KeyError(f"PrioritySampler needs the store to have an extra field '{key}'.")
        self.store, self.key = store, key

    def __len__(self) -> int:
        """Rows that can be drawn (positive priority); 0 makes a mixture skip this source."""
        return int((self.store.data[self.key][: len(self.store)] > 0).sum())

    def probabilities(self) -> Tensor:
        weights = self.store.data[self.key][: len(self.store)]
        return weights / weights.sum()

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        weights = self.store.data[self.key][: len(self.store)]
        idx = torch.multinomial(weights, batch_size, replacement=True, generator=generator)
        return self.store.gather(idx)


def split_counts(batch_size: int, shares: list[float]) -> list[int]:
    """Integer counts proportional to `shares` that add up to batch_size exactly."""
    total = sum(shares)
    exact = [batch_size * s / total for s in shares]
    counts = [int(x) for x in exact]
    # hand the remainder to the largest fractional parts (stable order on ties)
    order = sorted(range(len(shares)), key=lambda i: counts[i] - exact[i])
    for i in order[: batch_size - sum(counts)]:
        counts[i] += 1
    return counts


class MixtureSampler:
    """Fixed proportions over several samplers, e.g. 50/50 offline/online.

    The counts per source are exact every batch (not drawn at random), which is what
    "symmetric sampling" means in RLPD and Cal-QL. A source that is empty or has share 0
    gives its share to the others, so an online buffer that has not filled yet does not
    break the batch.
    """

    def __init__(self, sources: dict[str, Sampler], shares: dict[str, float]):
        if set(sources) != set(shares):
            raise ValueError(f"MixtureSampler: sources {sorted(sources)} and shares {sorted(shares)} differ.")
        bad = {k: v for k, v in shares.items() if v < 0}
        if bad or sum(shares.values()) <= 0:
            raise ValueError(f"MixtureSampler shares must be >= 0 and not all zero, got {shares}.")
        self.sources, self.shares = sources, shares

    def __len__(self) -> int:
        return sum(len(s) for k, s in self.sources.items() if self.shares[k] > 0)

    def active(self) -> list[str]:
        return [k for k, s in self.sources.items() if self.shares[k] > 0 and len(s) > 0]

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        names = self.active()
        if not names:
            raise RuntimeError("MixtureSampler: every source with a positive share is empty.")
        counts = split_counts(batch_size, [self.shares[k] for k in names])
        parts = [self.sources[k].sample(n, generator) for k, n in zip(names, counts, strict=True) if n > 0]
        return parts[0] if len(parts) == 1 else Batch.cat(parts)
