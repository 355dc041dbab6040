"""Behaviour cloning: a deterministic policy regressed onto the dataset actions (MSE), the
BC baseline of Fujimoto & Gu 2021 and CORL. Online it keeps cloning the mixed batches, which
makes it the "no improvement" reference for fine-tuning curves.

    python -m agents.bc
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from agents.core.agent import Agent, EnvSpec
from agents.core.networks import DeterministicActor, ObsNormalizer, adam
from worldmodels.data.store import Batch
from worldmodels.progress import Progress


@dataclass
class BCConfig:
    name: str = "bc"
    lr: float = 3e-4  # CORL's BC baseline
    hidden: list[int] = field(default_factory=lambda: [256, 256])  # CORL's BC baseline
    normalize_obs: bool = True  # as TD3+BC (Fujimoto & Gu 2021), so BC and TD3+BC compare like for like


def bc_loss(policy_act: Tensor, data_act: Tensor) -> tuple[Tensor, dict]:
    loss = F.mse_loss(policy_act, data_act)
    return loss, {"loss/bc": loss.detach()}


class BC(Agent):
    def __init__(self, cfg: BCConfig, spec: EnvSpec, device: torch.device):
        super().__init__(cfg, spec, device)
        self.normalizer = ObsNormalizer(spec.obs_dim)
        self.actor = DeterministicActor(spec.obs_dim, spec.act_dim, spec.act_scale, spec.act_bias, cfg.hidden)
        self.to(device)
        self.optimizers = {"actor": adam(self.actor.parameters(), cfg.lr)}

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        return self.actor(self.normalizer(obs))

    def update(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        loss, info = bc_loss(self.actor(self.normalizer(batch.obs)), batch.act)
        self.step("actor", loss)
        self.num_updates += 1
        return info


def main() -> None:
    from agents.core.entry import run

    run(BC, BCConfig, "bc")


if __name__ == "__main__":
    main()
