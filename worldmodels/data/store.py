"""Device-resident transition storage.

A `TransitionStore` is a set of preallocated tensors on the training device. Online data
goes in by ring append; samplers draw indices on the device and gather a `Batch`, so the
update loop never touches numpy or the host.

`terminal` marks true terminations only (the bootstrap is zeroed); `truncated` marks an
episode cut by a time limit or by the end of logged data (the bootstrap is kept). The two
never merge.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

CORE_FIELDS = ("obs", "act", "rew", "next_obs", "terminal", "truncated")
#: where a batch row came from (`Batch.source`); a store is created with one of these
SOURCE_IDS = {"offline": 0, "online": 1, "model": 2, "recent": 3}  # recent: online rows of APL's recent window


@dataclass
class Batch:
    """A batch of transitions; every tensor has leading dimension B."""

    obs: Tensor  # [B, obs_dim]
    act: Tensor  # [B, act_dim]
    rew: Tensor  # [B]
    next_obs: Tensor  # [B, obs_dim]
    terminal: Tensor  # [B] float, 1.0 only for true terminations
    truncated: Tensor  # [B] float, 1.0 where a time limit cut the episode
    extras: dict[str, Tensor] = field(default_factory=dict)  # per-transition fields an agent declared, [B, ...]
    source: Tensor | None = None  # [B] long, SOURCE_IDS of each row's store (priority write-back, APL)
    index: Tensor | None = None  # [B] long, each row's index in its store

    def __len__(self) -> int:
        return self.obs.shape[0]

    def as_dict(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in CORE_FIELDS} | self.extras

    @staticmethod
    def cat(batches: list[Batch]) -> Batch:
        """Concatenate batches in order. Sources must agree on their extra fields: dropping a field
        some rows lack would silently change what an agent learns from."""
        names = [sorted(b.extras) for b in batches]
        if any(n != names[0] for n in names):
            raise ValueError(f"Batch.cat: sources disagree on extra fields {names}; create every store with the "
                             "fields the agent declares (Agent.transition_fields) so each one fills them.")
        tracked = all(b.source is not None for b in batches)
        return Batch(
            *(torch.cat([getattr(b, name) for b in batches]) for name in CORE_FIELDS),
            extras={k: torch.cat([b.extras[k] for b in batches]) for k in names[0]},
            source=torch.cat([b.source for b in batches]) if tracked else None,
            index=torch.cat([b.index for b in batches]) if tracked else None,
        )

    def select(self, mask: Tensor, other: Batch) -> Batch:
        """Row-wise `mask ? self : other` (two gathers of the same size merged without a host sync)."""
        def pick(a: Tensor, b: Tensor) -> Tensor:
            return torch.where(mask.reshape(-1, *([1] * (a.dim() - 1))), a, b)

        return Batch(*(pick(getattr(self, n), getattr(other, n)) for n in CORE_FIELDS),
                     extras={k: pick(v, other.extras[k]) for k, v in self.extras.items()},
                     source=pick(self.source, other.source), index=pick(self.index, other.index))


class TransitionStore:
    """Fixed-capacity transition storage on one device, with ring append.

    extras: per-transition fields beyond the core ones, given as name -> trailing shape,
    e.g. {"rtg": (), "priority": ()}. A row's extra is `fills[name]` (default 0) until written:
    Cal-QL's return-to-go of an unfinished online episode must mean "no floor", not 0.
    source: which source this store is ("offline", "online", "model"); batches carry it per row.
    """

    def __init__(
        self,
        capacity: int,
        obs_dim: int,
        act_dim: int,
        device: torch.device | str = "cpu",
        extras: dict[str, tuple[int, ...]] | None = None,
        source: str = "offline",
        fills: dict[str, float] | None = None,
    ):
        if capacity <= 0:
            raise ValueError(f"TransitionStore capacity must be positive, got {capacity}.")
        self.capacity = int(capacity)
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.device = torch.device(device)
        shapes = {
            "obs": (obs_dim,),
            "act": (act_dim,),
            "rew": (),
            "next_obs": (obs_dim,),
            "terminal": (),
            "truncated": (),
        } | dict(extras or {})
        self.data: dict[str, Tensor] = {
            name: torch.zeros((self.capacity, *shape), dtype=torch.float32, device=self.device)
            for name, shape in shapes.items()
        }
        self.source = source
        self.source_id = SOURCE_IDS[source]
        self.fills = {name: float((fills or {}).get(name, 0.0)) for name in self.data if name not in CORE_FIELDS}
        for name, value in self.fills.items():
            self.data[name].fill_(value)
        self.size = 0  # number of valid rows
        self.cursor = 0  # next row the ring writes

    def __len__(self) -> int:
        return self.size

    @property
    def extra_names(self) -> list[str]:
        return [k for k in self.data if k not in CORE_FIELDS]

    def add(self, **fields: Tensor) -> Tensor:
        """Append n transitions (each field [n, ...]); returns the row indices written.

        Core fields are required; extras are optional and default to their fill value. When
        the store is full the oldest rows are overwritten.
        """
        missing = [name for name in CORE_FIELDS if name not in fields]
        unknown = [name for name in fields if name not in self.data]
        if missing or unknown:
            raise KeyError(f"TransitionStore.add: missing fields {missing}, unknown fields {unknown}.")
        n = fields["obs"].shape[0]
        if n > self.capacity:
            # Only the last `capacity` rows would survive; keep exactly those.
            fields = {k: v[-self.capacity :] for k, v in fields.items()}
            n = self.capacity
        rows = (torch.arange(n, device=self.device) + self.cursor) % self.capacity
        for name, tensor in self.data.items():
            if name in fields:
                value = torch.as_tensor(fields[name], dtype=torch.float32, device=self.device)
                tensor[rows] = value.reshape(n, *tensor.shape[1:])
            else:
                tensor[rows] = self.fills.get(name, 0.0)
        self.cursor = (self.cursor + n) % self.capacity
        self.size = min(self.size + n, self.capacity)
        return rows

    def gather(self, idx: Tensor) -> Batch:
        rows = {name: tensor[idx] for name, tensor in self.data.items()}
        source = torch.full_like(idx, self.source_id)
        return Batch(*(rows.pop(name) for name in CORE_FIELDS), extras=rows, source=source, index=idx)

    def add_field(self, name: str, shape: tuple[int, ...] = (), fill: float = 0.0) -> None:
        """Give an existing store one more extra field (every row holds `fill` until written)."""
        if name in self.data:
            if tuple(self.data[name].shape[1:]) != tuple(shape):
                raise ValueError(f"TransitionStore: field {name!r} exists with another shape "
                                 f"{tuple(self.data[name].shape[1:])}.")
            return
        self.data[name] = torch.full((self.capacity, *shape), fill, dtype=torch.float32, device=self.device)
        self.fills[name] = float(fill)

    def write(self, name: str, rows: Tensor, values: Tensor) -> None:
        """Set an extra field on given rows (a finished episode's return-to-go, new priorities)."""
        if name in CORE_FIELDS or name not in self.data:
            raise KeyError(f"TransitionStore.write: {name!r} is not an extra field of this store ({self.extra_names}).")
        self.data[name][rows] = values.to(self.data[name])

    def sample_indices(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        if self.size == 0:
            raise RuntimeError("Cannot sample from an empty TransitionStore.")
        return torch.randint(0, self.size, (n,), device=self.device, generator=generator)

    def valid(self) -> dict[str, Tensor]:
        """The stored rows in insertion order (oldest first)."""
        if self.size < self.capacity:
            order = torch.arange(self.size, device=self.device)
        else:
            order = (torch.arange(self.capacity, device=self.device) + self.cursor) % self.capacity
        return {name: tensor[order] for name, tensor in self.data.items()}

    # checkpointing: only the valid rows are saved, so a mostly empty store stays small
    def state_dict(self) -> dict:
        return {
            "capacity": self.capacity,
            "size": self.size,
            "cursor": self.cursor,
            "data": {k: v[: self.size].cpu() for k, v in self.data.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(
                f"Checkpointed store has capacity {state['capacity']}, this one {self.capacity}; "
                "resume with the same config."
            )
        self.size, self.cursor = int(state["size"]), int(state["cursor"])
        for k, v in state["data"].items():
            self.data[k][: self.size] = v.to(self.device)

    @classmethod
    def from_tensors(
        cls,
        fields: dict[str, Tensor],
        device: torch.device | str = "cpu",
        capacity: int | None = None,
        extras: dict[str, tuple[int, ...]] | None = None,
        source: str = "offline",
        fills: dict[str, float] | None = None,
    ) -> TransitionStore:
        n = fields["obs"].shape[0]
        store = cls(capacity or n, fields["obs"].shape[1], fields["act"].shape[1], device, extras, source, fills)
        store.add(**fields)
        return store
