"""MOORe: Mao, Wang, Wang & Zhang, "MOORe: Model-based Offline-to-Online Reinforcement
Learning", arXiv 2201.10070 (Algorithm 1).

Offline: MOPO (keeping the policy, the ensemble and Q). Online, in epoch t (phi env steps,
phi = world_model.refit_every): every offline transition has priority Pr(d, t) = 1/(alpha t)
and every online transition 1.0; the real env is stepped once at a time with the current
policy; every phi steps the ensemble is refitted on offline + online data with bootstrap
draws proportional to the priorities; rollout start states are drawn by the same priorities;
each env step makes `trainer.updates_per_step` updates on batches that are
`rollout.real_ratio` real (drawn by priority) and the rest imagined.

Priorities are constant within each source, so drawing proportionally to them is the same as
a two-source mixture whose shares are the sources' priority masses: N_off/(alpha t) against
N_on. That is how it is sampled here (exact counts per batch instead of multinomial ones).

    python -m agents.moore
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from agents.mopo import MOPO, MOPOConfig
from worldmodels.data.samplers import MixtureSampler, Sampler, UniformSampler
from worldmodels.data.store import Batch, TransitionStore


@dataclass
class MOOReConfig(MOPOConfig):
    name: str = "moore"
    priority_alpha: float = 1.0  # alpha in Pr(d, t) = 1/(alpha t); the paper gives no value, 1.0 is our choice


def offline_priority(epoch: int, alpha: float) -> float:
    """MOORe's priority of every offline transition in online epoch t >= 1 (online ones have 1.0)."""
    return 1.0 / (alpha * epoch)


class PriorityMixture:
    """Offline/online sampling proportional to MOORe's priorities, recomputed each batch."""

    def __init__(self, offline: TransitionStore, online: TransitionStore, priority: callable):
        self.offline, self.online, self.priority = offline, online, priority
        self.mixture = MixtureSampler({"offline": UniformSampler(offline), "online": UniformSampler(online)},
                                      {"offline": 1.0, "online": 0.0})

    def __len__(self) -> int:
        return len(self.offline) + len(self.online)

    def shares(self) -> dict[str, float]:
        return {"offline": len(self.offline) * self.priority(), "online": float(len(self.online))}

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        self.mixture.shares = self.shares()
        return self.mixture.sample(batch_size, generator)


class MOORe(MOPO):
    def on_online_start(self, trainer) -> None:
        self.trainer = trainer
        world = trainer.world
        self.epoch_steps = world.cfg.refit_every if world is not None and world.cfg.refit_every > 0 else 1000

    def epoch(self) -> int:
        """Online epoch t = 1, 2, ... (phi env steps each)."""
        return 1 + self.trainer.state.env_steps // self.epoch_steps

    def current_offline_priority(self) -> float:
        return offline_priority(self.epoch(), self.cfg.priority_alpha)

    def make_online_sampler(self, offline: TransitionStore | None, online: TransitionStore,
                            offline_share: float) -> Sampler:
        if offline is None:
            return UniformSampler(online)
        return PriorityMixture(offline, online, self.current_offline_priority)

    def model_fit_weights(self, num_offline: int, num_online: int) -> Tensor | None:
        device = self.device
        return torch.cat([torch.full((num_offline,), self.current_offline_priority(), device=device),
                          torch.ones(num_online, device=device)])


def main() -> None:
    from agents.core.entry import run

    run(MOORe, MOOReConfig, "moore")


if __name__ == "__main__":
    main()
