"""TD3+BC: Fujimoto & Gu, "A Minimalist Approach to Offline Reinforcement Learning", NeurIPS 2021.

TD3 with a behaviour-cloning term in the actor loss and normalized observations. The same
loss continues online ("TD3-BC FT" in Beeson & Montana 2022): the trainer keeps a share of
offline data in the online batches.

    python -m agents.td3bc
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from agents.td3 import TD3, TD3Config
from worldmodels.data.store import Batch


@dataclass
class TD3BCConfig(TD3Config):
    name: str = "td3bc"
    alpha: float = 2.5  # Fujimoto & Gu 2021: lambda = alpha / mean|Q(s, pi(s))|
    normalize_obs: bool = True  # Fujimoto & Gu 2021 normalize states by dataset mean/std


def td3bc_actor_loss(q: Tensor, policy_act: Tensor, data_act: Tensor, alpha: float) -> tuple[Tensor, dict]:
    """-lambda Q(s, pi(s)) + (pi(s) - a)^2 with lambda = alpha / mean|Q| (Q scale not back-propagated)."""
    lmbda = alpha / q.abs().mean().detach()
    bc = F.mse_loss(policy_act, data_act)
    loss = -lmbda * q.mean() + bc
    return loss, {"loss/actor": loss.detach(), "loss/bc": bc.detach(), "actor/lambda": lmbda}


class TD3BC(TD3):
    def actor_loss(self, batch: Batch, obs: Tensor) -> tuple[Tensor, dict]:
        policy_act = self.actor(obs)
        q = self.critic(obs, policy_act)[0]
        return td3bc_actor_loss(q, policy_act, batch.act, self.cfg.alpha)


def main() -> None:
    from agents.core.entry import run

    run(TD3BC, TD3BCConfig, "td3bc")


if __name__ == "__main__":
    main()
