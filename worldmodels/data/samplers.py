"""Samplers turn stores into batches: the one module that decides every batch's composition.

Two layers:

- Store samplers (`UniformSampler`, `MixtureSampler`) draw rows from stores. Every sampler has
  `sample(batch_size, generator) -> Batch` and `__len__` (rows it can draw from). Indices are
  drawn on the store's device.
- The batch sampler (`BatchSampler`, chosen by the `sampler=` config group) holds the trainer's
  sources (offline, online, imagined) and decides, from the run's progress, how many rows of
  each source go into a batch:

  | kind          | online-phase real rows                                              |
  |---------------|---------------------------------------------------------------------|
  | `symmetric`   | exact `offline_share` offline, the rest online (RLPD, Cal-QL 50/50)  |
  | `online_only` | online rows only (TD3/SAC from scratch)                              |
  | `uniform`     | offline and online pooled: shares proportional to their sizes        |
  | `moore_decay` | MOORe's priorities: offline 1/(alpha t), online 1 (Mao et al. 2022)  |
  | `priority`    | a sum tree over offline + online rows; agents write priorities back |
  | `balanced`    | `priority` with density-ratio priorities w(s,a) (Off2On, Lee et al. 2021) |
  | `apl`         | APL (Zheng et al. 2023): whole batch from the recent online rows    |
  |               | w.p. `recent_prob` (source `recent`), else offline + online pooled  |

  The offline phase draws offline rows only, for every kind. Imagined rows make up
  `model_share` (1 - rollout.real_ratio) of a batch whenever the model store holds any.

Counts per source are exact every batch (not multinomial draws): a source's share of a batch
is its share of the sampling mass, rounded by `split_counts`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from worldmodels.data.density_ratio import (
    DensityRatio,
    DensityRatioConfig,
    balanced_priority,
    check_density_ratio_config,
    initial_max_priority,
)
from worldmodels.data.fields import episode_ends, episode_spans
from worldmodels.data.store import SOURCE_IDS, Batch, TransitionStore
from worldmodels.data.sumtree import SumTree
from worldmodels.progress import Progress


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
    break the batch. Parts are concatenated in the order the sources are given.
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

    def counts(self, batch_size: int) -> dict[str, int]:
        names = self.active()
        if not names:
            raise RuntimeError("MixtureSampler: every source with a positive share is empty.")
        return dict(zip(names, split_counts(batch_size, [self.shares[k] for k in names]), strict=True))

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        parts = [self.sources[k].sample(n, generator) for k, n in self.counts(batch_size).items() if n > 0]
        return parts[0] if len(parts) == 1 else Batch.cat(parts)


# --- the batch sampler: sources and composition by config ---------------------------------------
KINDS = ("symmetric", "online_only", "uniform", "moore_decay", "priority", "apl", "balanced")


@dataclass
class SamplerConfig:
    kind: str = "symmetric"  # see the module docstring's table
    # symmetric: offline share of online-phase batches; 0.5 is RLPD's and Cal-QL's symmetric sampling
    offline_share: float = 0.5
    # moore_decay: alpha in Pr(offline, t) = 1/(alpha t); MOORe (Mao et al. 2022) gives no value, 1.0 is our choice
    priority_alpha: float = 1.0
    # moore_decay: env steps per MOORe epoch t (phi); the moore config ties it to world_model.refit_every
    epoch_steps: int = 2500
    # priority: the priority a new online row starts with, relative to the largest so far (PER's max-priority rule)
    initial_priority: float = 1.0
    # balanced: the density-ratio estimator and its priorities (worldmodels/data/density_ratio.py, Off2OnRL values)
    ratio: DensityRatioConfig = field(default_factory=DensityRatioConfig)
    # every kind: offline rows copied into the online store at the switch, max(fraction x dataset, min) of them
    # (at most its capacity), drawn uniformly with replacement; AdaptiveBC (Zhao et al. 2022) seeds its online
    # buffer with max(5%, 50k). 0 and 0: none
    online_seed_fraction: float = 0.0
    online_seed_min: int = 0
    # every kind: instead, the rows of the k dataset episodes with the highest undiscounted return, best first; the
    # online store grows by their number, so online rows never overwrite them (as in ACA's 1M-row buffer). ACA (Yu
    # and Zhang 2023) seeds 50 for medium-replay/medium-expert/expert. 0: none
    online_seed_top_episodes: int = 0
    # apl: the recent window holds the last `recent_size` online rows (APL0 online_size 20k, Zheng et al. 2023)
    recent_size: int = 20_000
    # apl: recent batches only once the window holds more than this many rows (APL0: 10k)
    recent_min: int = 10_000
    # apl: probability that a batch comes from the recent window (APL0 p_online 0.5)
    recent_prob: float = 0.5


def check_sampler_config(cfg: SamplerConfig) -> str | None:
    """The first problem with a sampler config as one line, or None."""
    if cfg.kind not in KINDS:
        return f"sampler={cfg.kind!r} is unknown; choose one of {', '.join(KINDS)}."
    if not 0.0 <= cfg.offline_share <= 1.0:
        return f"sampler.offline_share={cfg.offline_share} must lie in [0, 1]."
    if cfg.priority_alpha <= 0:
        return f"sampler.priority_alpha={cfg.priority_alpha} must be positive."
    if cfg.epoch_steps <= 0:
        return f"sampler.epoch_steps={cfg.epoch_steps} must be a positive number of env steps."
    if cfg.initial_priority <= 0:
        return f"sampler.initial_priority={cfg.initial_priority} must be positive."
    if cfg.kind == "balanced" and check_density_ratio_config(cfg.ratio):
        return check_density_ratio_config(cfg.ratio)
    if not 0.0 <= cfg.online_seed_fraction <= 1.0 or cfg.online_seed_min < 0:
        return (f"sampler.online_seed_fraction={cfg.online_seed_fraction} must lie in [0, 1] and "
                f"sampler.online_seed_min={cfg.online_seed_min} be >= 0.")
    if cfg.online_seed_top_episodes < 0:
        return f"sampler.online_seed_top_episodes={cfg.online_seed_top_episodes} must be >= 0 (0: no seeding)."
    if cfg.online_seed_top_episodes and (cfg.online_seed_fraction or cfg.online_seed_min):
        return ("sampler.online_seed_top_episodes and sampler.online_seed_fraction/online_seed_min both seed the "
                "online store; set one of them to 0.")
    if cfg.recent_size <= 0 or cfg.recent_min < 0:
        return f"sampler.recent_size={cfg.recent_size} must be positive and sampler.recent_min={cfg.recent_min} >= 0."
    if not 0.0 <= cfg.recent_prob <= 1.0:
        return f"sampler.recent_prob={cfg.recent_prob} must lie in [0, 1]."
    return None


@dataclass
class Sources:
    """The trainer's stores. `model` is None when the world model is null."""

    offline: TransitionStore | None
    online: TransitionStore
    model: TransitionStore | None = None


def moore_offline_priority(epoch: int, alpha: float) -> float:
    """MOORe's priority of every offline transition in online epoch t >= 1 (online ones have 1.0)."""
    return 1.0 / (alpha * epoch)


def online_seed_rows(cfg: SamplerConfig, num_offline: int, capacity: int) -> int:
    """How many offline rows seed the online store: max(fraction x dataset, min), at most its capacity."""
    if num_offline == 0 or (cfg.online_seed_fraction == 0 and cfg.online_seed_min == 0):
        return 0
    return min(max(int(cfg.online_seed_fraction * num_offline), cfg.online_seed_min), capacity)


def top_episode_rows(store: TransitionStore, k: int, capacity: int | None = None) -> Tensor:
    """Row indices of the k episodes of `store` with the highest undiscounted return, best episode
    first, each in its own order, cut to `capacity` rows (the lowest-ranked rows go). Episodes split as
    `fields.episode_ends` splits them; equal returns keep dataset order."""
    starts, stops = episode_spans(episode_ends(store))  # [E] each
    rew = store.data["rew"][: len(store)].double().cpu().numpy()
    returns = np.add.reduceat(rew, starts)  # [E] undiscounted return per episode
    best = np.argsort(-returns, kind="stable")[:k]
    rows = np.concatenate([np.arange(starts[e], stops[e]) for e in best])[:capacity]
    return torch.as_tensor(rows, dtype=torch.long, device=store.device)


def online_seed_reserve(cfg: SamplerConfig, offline: TransitionStore | None) -> int:
    """Rows the online store holds beyond the online budget: the top-episode seeds, kept for the whole run."""
    if cfg.online_seed_top_episodes == 0 or offline is None or len(offline) == 0:
        return 0
    return len(top_episode_rows(offline, cfg.online_seed_top_episodes))


class BatchSampler:
    """Every batch's composition: real rows by `real_shares`, imagined rows by `model_share`."""

    def __init__(self, cfg: SamplerConfig, sources: Sources, real_ratio: float = 1.0):
        self.cfg, self.sources = cfg, sources
        self.real_ratio = real_ratio  # share of real rows when imagined rows exist (MOPO: 0.05)
        self.uniform = {name: UniformSampler(store) for name, store in self.stores().items()}

    def stores(self) -> dict[str, TransitionStore]:
        s = self.sources
        return {k: v for k, v in (("offline", s.offline), ("online", s.online), ("model", s.model)) if v is not None}

    # --- composition ------------------------------------------------------------------
    def real_shares(self, progress: Progress) -> dict[str, float]:
        """Sampling mass of each real source (need not sum to 1); offline before online."""
        offline, online = self.sources.offline, self.sources.online
        if not progress.online:
            return {"offline": 1.0} if offline is not None else {}
        if offline is None or self.cfg.kind == "online_only":
            return {"online": 1.0}
        if self.cfg.kind == "symmetric":
            return {"offline": self.cfg.offline_share, "online": 1.0 - self.cfg.offline_share}
        if self.cfg.kind == "moore_decay":
            return {"offline": len(offline) * self.offline_priority(progress), "online": float(len(online))}
        return {"offline": float(len(offline)), "online": float(len(online))}  # uniform, priority (mass by tree)

    def offline_priority(self, progress: Progress) -> float:
        epoch = 1 + progress.env_steps // self.cfg.epoch_steps  # MOORe's online epoch t = 1, 2, ...
        return moore_offline_priority(epoch, self.cfg.priority_alpha)

    def real(self, progress: Progress) -> MixtureSampler | None:
        shares = self.real_shares(progress)
        if sum(shares.values()) <= 0:
            return None
        return MixtureSampler({k: self.uniform[k] for k in shares}, shares)

    def ready(self, progress: Progress) -> bool:
        """Whether a batch can be drawn now (some real source with mass holds rows)."""
        real = self.real(progress)
        return real is not None and len(real.active()) > 0

    def uses_offline(self, progress: Progress) -> bool:
        return self.real_shares(progress).get("offline", 0.0) > 0

    def sample_real(self, n: int, progress: Progress, generator: torch.Generator | None = None) -> Batch:
        """Real rows only: the real part of a batch, and the start states of model rollouts."""
        return self.real(progress).sample(n, generator)

    def sample(self, n: int, progress: Progress, generator: torch.Generator | None = None) -> Batch:
        model = self.sources.model
        if model is None or len(model) == 0 or self.real_ratio >= 1.0:
            return self.sample_real(n, progress, generator)
        n_real, n_model = split_counts(n, [self.real_ratio, 1.0 - self.real_ratio])
        parts = []
        if n_real > 0:
            parts.append(self.sample_real(n_real, progress, generator))
        if n_model > 0:
            parts.append(self.uniform["model"].sample(n_model, generator))
        return parts[0] if len(parts) == 1 else Batch.cat(parts)

    # --- hooks --------------------------------------------------------------------------
    def fit_weights(self, progress: Progress) -> Tensor | None:
        """Per-row weights of the world model's refit data (offline rows first, then online);
        None = uniform. MOORe refits with the same priorities it samples with."""
        if self.cfg.kind != "moore_decay" or self.sources.offline is None:
            return None
        device = self.sources.online.device
        return torch.cat([torch.full((len(self.sources.offline),), self.offline_priority(progress), device=device),
                          torch.ones(len(self.sources.online), device=device)])

    def seed_online(self, generator: torch.Generator | None = None) -> int:
        """At the switch, before the first env step: copy offline rows into the online store, which the
        checkpoint then carries: the top `online_seed_top_episodes` episodes, or `online_seed_rows` rows
        drawn uniformly with replacement. Returns their number."""
        offline, online = self.sources.offline, self.sources.online
        if offline is None or len(offline) == 0:
            return 0
        if self.cfg.online_seed_top_episodes > 0:
            idx = top_episode_rows(offline, self.cfg.online_seed_top_episodes, online.capacity)
        else:
            n = online_seed_rows(self.cfg, len(offline), online.capacity)
            if n == 0:
                return 0
            idx = offline.sample_indices(n, generator)
        self.rows_added("online", online.add(**offline.gather(idx).as_dict()))
        return len(idx)

    def rows_added(self, source: str, rows: Tensor) -> None:
        """New rows were written to a store (the priority sampler gives them a start priority)."""

    def after_update(self, batch: Batch, info: dict[str, Tensor]) -> None:
        """After each gradient update; `info["priority"]` ([B]) is where an agent writes priorities back."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class PriorityBatchSampler(BatchSampler):
    """Online real rows drawn proportionally to per-row priorities kept in a sum tree over the
    offline rows (tree indices [0, N_off)) and the online store ([N_off, N_off + capacity)).

    The agent returns `info["priority"]` ([B], one per batch row) from `update`; the real rows'
    priorities are written back after every update (Off2On's balanced replay writes density
    ratios this way). Rows start at `initial_priority` times the largest priority so far.
    Sampling and updates cost O(log N) per row on the training device, and the tree is part of
    the checkpoint.
    """

    def __init__(self, cfg: SamplerConfig, sources: Sources, real_ratio: float = 1.0):
        super().__init__(cfg, sources, real_ratio)
        self.num_offline = len(sources.offline) if sources.offline is not None else 0
        device = sources.online.device
        self.tree = SumTree(self.num_offline + sources.online.capacity, device)
        if self.num_offline:
            self.tree.update(torch.arange(self.num_offline, device=device),
                             torch.full((self.num_offline,), cfg.initial_priority, device=device))
        self.max_priority = torch.tensor(cfg.initial_priority, dtype=torch.float64, device=device)
        self._real_rows = 0  # rows of the last batch that came from the tree (they come first)

    def tree_index(self, source: Tensor, index: Tensor) -> Tensor:
        return index + (source == SOURCE_IDS["online"]).long() * self.num_offline

    def sample_real(self, n: int, progress: Progress, generator: torch.Generator | None = None) -> Batch:
        self._real_rows = n
        if not progress.online:
            return super().sample_real(n, progress, generator)
        idx = self.tree.sample(n, generator)  # [n] tree indices
        online = self.sources.online
        if self.sources.offline is None:
            return online.gather(idx)
        is_offline = idx < self.num_offline
        from_offline = self.sources.offline.gather(idx.clamp(max=self.num_offline - 1))
        from_online = online.gather((idx - self.num_offline).clamp(min=0, max=max(len(online) - 1, 0)))
        return from_offline.select(is_offline, from_online)

    def rows_added(self, source: str, rows: Tensor) -> None:
        if source == "online":
            start = (self.max_priority * self.cfg.initial_priority).expand(rows.shape[0])
            self.tree.update(rows + self.num_offline, start)

    def after_update(self, batch: Batch, info: dict[str, Tensor]) -> None:
        priority = info.pop("priority", None)
        if priority is None or batch.source is None:
            return
        n = self._real_rows  # imagined rows (after the real ones) have no tree entry
        priority = priority.detach()[:n].double().clamp_min(1e-12)
        self.tree.update(self.tree_index(batch.source[:n], batch.index[:n]), priority)
        self.max_priority = torch.maximum(self.max_priority, priority.max())

    def state_dict(self) -> dict:
        return {"tree": self.tree.state_dict(), "max_priority": self.max_priority.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.tree.load_state_dict(state["tree"])
        self.max_priority = state["max_priority"].to(self.max_priority)


class APLBatchSampler(BatchSampler):
    """APL's online-offline replay (Zheng et al. 2023; zhan0903/APL0 `off_on_interleave.py`).

    Two buffers over the same rows: the main buffer (offline + every online row, drawn pooled as
    `uniform` does) and the recent window (the last `recent_size` online rows). Online, once the
    window holds more than `recent_min` rows, each batch comes whole from the window with
    probability `recent_prob` and from the main buffer otherwise. Window rows carry
    `source = SOURCE_IDS["recent"]`, so the agent reads its regulariser weight (W = 0 on recent
    rows, 1 elsewhere) from the batch. Both candidate batches are gathered and one is kept by a
    coin drawn on the device: no host sync, at the cost of one extra gather.
    """

    def recent_len(self) -> int:
        return min(len(self.sources.online), self.cfg.recent_size)

    def recent_active(self, progress: Progress) -> bool:
        return progress.online and self.recent_len() > self.cfg.recent_min

    def sample_recent(self, n: int, generator: torch.Generator | None = None) -> Batch:
        """n rows uniformly from the last `recent_len()` rows the online ring wrote."""
        online = self.sources.online
        back = torch.randint(0, self.recent_len(), (n,), device=online.device, generator=generator)
        batch = online.gather((online.cursor - 1 - back) % online.capacity)
        batch.source = torch.full_like(batch.source, SOURCE_IDS["recent"])
        return batch

    def sample_real(self, n: int, progress: Progress, generator: torch.Generator | None = None) -> Batch:
        if not self.recent_active(progress):
            return super().sample_real(n, progress, generator)
        main = super().sample_real(n, progress, generator)
        recent = self.sample_recent(n, generator)
        coin = torch.rand((), device=self.sources.online.device, generator=generator) < self.cfg.recent_prob
        return recent.select(coin.expand(n), main)


class BalancedBatchSampler(PriorityBatchSampler):
    """Off2On's balanced replay (Lee et al. 2021; shlee94/Off2OnRL): the priority sampler whose
    priorities are density ratios w(s, a) ~ d_online / d_offline from its own estimator
    (worldmodels/data/density_ratio.py), so `sampler=balanced` works for any agent.

    After every online update the estimator takes one step of its JS loss on `ratio.batch_size`
    uniform offline rows and as many uniform online rows, and the batch's real rows get the
    priority w^(1/T) / mean_offline(w^(1/T)), clamped (w from before that step, as in Off2OnRL).
    Offline rows start at 1 and new online rows at the running maximum, which starts at
    M f / ((1 - f) N): N online rows then hold the share f of the sampling mass. The estimator
    lives here rather than in an agent because only the sampler draws uniformly from each store
    (the agent sees prioritized batches), and it is created and checkpointed with the sampler.
    An agent's own info["priority"] is replaced.
    """

    def __init__(self, cfg: SamplerConfig, sources: Sources, real_ratio: float = 1.0):
        super().__init__(cfg, sources, real_ratio)
        r, online = cfg.ratio, sources.online
        self.ratio = DensityRatio(online.obs_dim, online.act_dim, r.hidden, r.lr, online.device)
        if self.num_offline:
            self.max_priority.fill_(initial_max_priority(self.num_offline, r.initial_online_share,
                                                         r.initial_online_rows))

    def after_update(self, batch: Batch, info: dict[str, Tensor]) -> None:
        info.pop("priority", None)
        offline, online = self.sources.offline, self.sources.online
        if offline is None or len(offline) == 0 or len(online) == 0 or batch.source is None:
            return  # the offline phase: nothing to balance yet
        n, r = self._real_rows, self.cfg.ratio
        with torch.no_grad():
            w = self.ratio(batch.obs[:n], batch.act[:n])  # [n]
        off = offline.gather(offline.sample_indices(r.batch_size))
        on = online.gather(online.sample_indices(r.batch_size))
        w_off, metrics = self.ratio.fit_step(off.obs, off.act, on.obs, on.act)
        info |= metrics
        info["replay/online_share"] = (batch.source[:n] == SOURCE_IDS["online"]).float().mean()
        info["priority"] = balanced_priority(w, w_off, r.temperature, r.priority_min, r.priority_max)
        super().after_update(batch, info)

    def state_dict(self) -> dict:
        return super().state_dict() | {"ratio": self.ratio.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.ratio.load_state_dict(state["ratio"])


def make_sampler(cfg: SamplerConfig, sources: Sources, real_ratio: float = 1.0) -> BatchSampler:
    problem = check_sampler_config(cfg)
    if problem:
        raise ValueError(problem)
    cls = PriorityBatchSampler if cfg.kind == "priority" else BatchSampler
    if cfg.kind == "apl":
        cls = APLBatchSampler
    if cfg.kind == "balanced":
        cls = BalancedBatchSampler
    return cls(cfg, sources, real_ratio)
