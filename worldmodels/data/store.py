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


@dataclass
class Batch:
    """A batch of transitions; every tensor has leading dimension B."""

    obs: Tensor  # [B, obs_dim]
    act: Tensor  # [B, act_dim]
    rew: Tensor  # [B]
    next_obs: Tensor  # [B, obs_dim]
    terminal: Tensor  # [B] float, 1.0 only for true terminations
    truncated: Tensor  # [B] float, 1.0 where a time limit cut the episode
    extras: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.obs.shape[0]

    def as_dict(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in CORE_FIELDS} | self.extras

    @staticmethod
    def cat(batches: list[Batch]) -> Batch:
        """Concatenate batches; extras are kept only where every batch has them."""
        common = set.intersection(*(set(b.extras) for b in batches)) if batches else set()
        return Batch(
            *(torch.cat([getattr(b, name) for b in batches]) for name in CORE_FIELDS),
            extras={k: torch.cat([b.extras[k] for b in batches]) for k in sorted(common)},
        )


class TransitionStore:
    """Fixed-capacity transition storage on one device, with ring append.

    extras: per-transition fields beyond the core ones, given as name -> trailing shape,
    e.g. {"rtg": (), "priority": ()}. They are zero until written.
    """

    def __init__(
        self,
        capacity: int,
        obs_dim: int,
        act_dim: int,
        device: torch.device | str = "cpu",
        extras: dict[str, tuple[int, ...]] | None = None,
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
        self.size = 0  # number of valid rows
        self.cursor = 0  # next row the ring writes

    def __len__(self) -> int:
        return self.size

    @property
    def extra_names(self) -> list[str]:
        return [k for k in self.data if k not in CORE_FIELDS]

    def add(self, **fields: Tensor) -> Tensor:
        """Append n transitions (each field [n, ...]); returns the row indices written.

        Core fields are required; extras are optional and default to zero. When the store
        is full the oldest rows are overwritten.
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
                tensor[rows] = 0.0
        self.cursor = (self.cursor + n) % self.capacity
        self.size = min(self.size + n, self.capacity)
        return rows

    def gather(self, idx: Tensor) -> Batch:
        rows = {name: tensor[idx] for name, tensor in self.data.items()}
        return Batch(*(rows.pop(name) for name in CORE_FIELDS), extras=rows)

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
    ) -> TransitionStore:
        n = fields["obs"].shape[0]
        store = cls(capacity or n, fields["obs"].shape[1], fields["act"].shape[1], device, extras)
        store.add(**fields)
        return store
