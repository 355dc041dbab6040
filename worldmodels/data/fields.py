"""Per-transition fields an agent needs beyond (obs, act, rew, next_obs, terminal, truncated).

An agent declares them (`Agent.transition_fields`); the trainer creates every store (offline,
online, imagined) with them, so every batch row has them whatever its source:

- offline rows get `field.offline(store)`, computed per dataset episode before training;
- online rows hold `field.pending` until their episode ends, then `field.episode(rew, terminal)`;
- imagined rows hold `field.pending` (a model rollout has no Monte-Carlo return).

The first user is Cal-QL's return-to-go, which floors policy Q-values: `pending` is the lowest
float, so max(Q, pending) = Q leaves rows without a known return unfloored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from worldmodels.data.store import TransitionStore

NO_VALUE = float(torch.finfo(torch.float32).min)  # finite, so checkpoints of it stay finite


class TransitionField(Protocol):
    name: str
    pending: float

    def offline(self, store: TransitionStore) -> Tensor: ...

    def episode(self, rew: Tensor, terminal: Tensor) -> Tensor: ...


def episode_ends(store: TransitionStore) -> np.ndarray:
    """Boolean [N]: row t is the last of its episode (terminal, truncated, the data's end, or a
    break in the chain next_obs[t] != obs[t+1], as CORL splits D4RL trajectories)."""
    data = {k: v[: len(store)].cpu() for k, v in store.data.items()}
    n = len(store)
    ends = (data["terminal"] > 0) | (data["truncated"] > 0)
    if n > 1:
        gap = (data["next_obs"][:-1] - data["obs"][1:]).norm(dim=-1) > 1e-6
        ends[:-1] |= gap
    ends[n - 1] = True
    return ends.numpy()


def episode_spans(ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, stops) [E] of the episodes that `ends` ([N], as `episode_ends` gives) delimits; stop is one
    past an episode's last row."""
    stops = np.flatnonzero(ends) + 1
    return np.concatenate([[0], stops[:-1]]).astype(np.int64), stops


@dataclass(frozen=True)
class ReturnToGo:
    """Discounted Monte-Carlo return G_t = r_t + gamma (1 - terminal_t) G_{t+1}, zero after an
    episode's last step (a truncated episode bootstraps nothing), as Cal-QL's
    `calc_return_to_go` computes it (Nakamoto et al. 2023; ../shared/REFERENCES-O2O.md §2).

    sparse_negative: Cal-QL's sparse-reward special case: an episode whose every reward equals
    this value gets G_t = value / (1 - gamma) everywhere (antmaze: -5 -> -500). None = off.
    """

    gamma: float = 0.99
    sparse_negative: float | None = None
    name: str = "rtg"
    pending: float = NO_VALUE

    def returns(self, rew: np.ndarray, terminal: np.ndarray, ends: np.ndarray) -> np.ndarray:
        out = np.zeros(len(rew), dtype=np.float64)
        g = 0.0
        for t in range(len(rew) - 1, -1, -1):  # one pass over the data, before training only
            if ends[t]:
                g = 0.0
            g = rew[t] + self.gamma * (1.0 - terminal[t]) * g
            out[t] = g
        if self.sparse_negative is not None:
            for a, b in zip(*episode_spans(ends), strict=True):
                if np.all(rew[a:b] == self.sparse_negative):
                    out[a:b] = self.sparse_negative / (1.0 - self.gamma)
        return out.astype(np.float32)

    def offline(self, store: TransitionStore) -> Tensor:
        n = len(store)
        rew = store.data["rew"][:n].double().cpu().numpy()
        terminal = store.data["terminal"][:n].double().cpu().numpy()
        return torch.as_tensor(self.returns(rew, terminal, episode_ends(store)))

    def episode(self, rew: Tensor, terminal: Tensor) -> Tensor:
        ends = np.zeros(len(rew), dtype=bool)
        ends[-1] = True
        r = rew.double().cpu().numpy()
        return torch.as_tensor(self.returns(r, terminal.double().cpu().numpy(), ends))


def fill_offline(store: TransitionStore, fields: list[TransitionField]) -> None:
    """Compute each declared field on the whole offline store."""
    rows = torch.arange(len(store), device=store.device)
    for f in fields:
        store.write(f.name, rows, f.offline(store))


def fill_episode(store: TransitionStore, rows: Tensor, fields: list[TransitionField]) -> None:
    """Write each declared field for one finished online episode (rows in time order)."""
    for f in fields:
        store.write(f.name, rows, f.episode(store.data["rew"][rows], store.data["terminal"][rows]))


def add_fields(store: TransitionStore, fields: list[TransitionField]) -> None:
    for f in fields:
        store.add_field(f.name, (), f.pending)
