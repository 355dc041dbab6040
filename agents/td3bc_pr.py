"""TD3-BC PR / PR-FT: Beeson & Montana, "Improving TD3-BC: Relaxed Policy Constraint for Offline
Learning and Stable Online Fine-Tuning", 2022.

TD3+BC (agents/td3bc.py) with the actor objective written as a BC weight,

    max  Q(s, pi(s)) / mean|Q|  -  alpha' (pi(s) - a)^2,

where alpha = 0.4 = 1 / 2.5 is TD3+BC's balance rewritten. PR (policy refinement): the last
`refine_fraction` of the offline updates relax the constraint to alpha' = alpha / lambda and, by
default, train the actor only against the frozen critic. PR-FT (online): the weight decays
geometrically from `alpha_start` to `alpha_end` over N online updates, alpha <- kappa alpha with
kappa = exp(log(alpha_end / alpha_start) / N), written in closed form of the online updates done
(from `progress`), so a resumed run continues the schedule exactly.

The paper's text and the authors' code were not found (/work/shared/REFERENCES-O2O.md section 7):
the defaults follow the third-party reimplementation maxdoesch/td3_bc and are unverified against
the paper.

    python -m agents.td3bc_pr
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from agents.core.config import ConfigError
from agents.core.networks import soft_update
from agents.td3bc import TD3BC, TD3BCConfig
from worldmodels.data.store import Batch
from worldmodels.progress import Progress


@dataclass
class TD3BCPRConfig(TD3BCConfig):
    name: str = "td3bc_pr"
    # the BC weight alpha in Q/mean|Q| - alpha (pi - a)^2 (here NOT TD3+BC's Q weight 2.5): 0.4 = 1/2.5,
    # TD3+BC rewritten (maxdoesch/td3_bc, third-party; paper value unverified)
    alpha: float = 0.4
    # lambda: refinement relaxes the weight to alpha / lambda; 5 from maxdoesch/td3_bc (paper value unverified)
    relax: float = 5.0
    # share of the offline updates (the last ones) that are the refinement; maxdoesch/td3_bc runs it as a
    # separate phase of unknown length: 0.2 is our choice (unverified)
    refine_fraction: float = 0.2
    # refinement trains the actor only, the critic (and its target) frozen: maxdoesch/td3_bc (unverified)
    refine_freeze_critic: bool = True
    # PR-FT: online BC weight at the switch and after N updates; 0.4 -> 0.2 from maxdoesch/td3_bc (unverified)
    alpha_start: float = 0.4
    alpha_end: float = 0.2
    # N: online updates the decay takes; 0 = the online budget in env steps (one update per step); maxdoesch
    # decays over its train steps (unverified)
    decay_updates: int = 0


def pr_ft_alpha(online_updates: int, alpha_start: float, alpha_end: float, decay_updates: int) -> float:
    """The BC weight after `online_updates` online updates: alpha_start kappa^n with
    kappa = exp(log(alpha_end / alpha_start) / N); exactly alpha_end from n = N on."""
    if online_updates >= decay_updates:
        return alpha_end
    kappa = math.exp(math.log(alpha_end / alpha_start) / decay_updates)
    return alpha_start * kappa**online_updates


def pr_actor_loss(q: Tensor, policy_act: Tensor, data_act: Tensor, bc_weight: float) -> tuple[Tensor, dict]:
    """-Q(s, pi(s)) / mean|Q| + alpha' (pi(s) - a)^2 (Q scale not back-propagated)."""
    lmbda = 1.0 / q.abs().mean().detach()
    bc = F.mse_loss(policy_act, data_act)
    loss = -lmbda * q.mean() + bc_weight * bc
    return loss, {"loss/actor": loss.detach(), "loss/bc": bc.detach(), "actor/lambda": lmbda,
                  "actor/bc_weight": torch.full((), bc_weight, device=bc.device)}


class TD3BCPR(TD3BC):
    def __init__(self, cfg: TD3BCPRConfig, spec, device: torch.device):
        if cfg.relax <= 0 or not 0.0 <= cfg.refine_fraction <= 1.0:
            raise ConfigError(f"agent.relax={cfg.relax} must be positive and agent.refine_fraction="
                              f"{cfg.refine_fraction} lie in [0, 1].")
        if cfg.alpha_start <= 0 or cfg.alpha_end <= 0 or cfg.decay_updates < 0:
            raise ConfigError(f"agent.alpha_start={cfg.alpha_start} and agent.alpha_end={cfg.alpha_end} must be "
                              f"positive, agent.decay_updates={cfg.decay_updates} at least 0.")
        super().__init__(cfg, spec, device)
        self.bc_weight = cfg.alpha  # set from progress at every update (a schedule, never state)

    def refining(self, progress: Progress) -> bool:
        """Whether this offline update is one of the last `refine_fraction` (the PR step)."""
        n_refine = round(self.cfg.refine_fraction * progress.offline_budget)
        return not progress.online and progress.offline_updates >= progress.offline_budget - n_refine

    def schedule(self, progress: Progress) -> float:
        cfg = self.cfg
        if progress.online:
            n = progress.updates - progress.offline_updates  # online updates done before this one
            return pr_ft_alpha(n, cfg.alpha_start, cfg.alpha_end, cfg.decay_updates or progress.online_budget)
        return cfg.alpha / cfg.relax if self.refining(progress) else cfg.alpha

    def actor_loss(self, batch: Batch, obs: Tensor) -> tuple[Tensor, dict]:
        policy_act = self.actor(obs)
        q = self.critic(obs, policy_act)[0]  # Q1, as TD3+BC
        return pr_actor_loss(q, policy_act, batch.act, self.bc_weight)

    def update(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        self.bc_weight = self.schedule(progress)
        if not (self.cfg.refine_freeze_critic and self.refining(progress)):
            return super().update(batch, progress)
        # refinement: one actor step per update against the frozen critic; the actor target follows
        self.num_updates += 1
        self.critic.requires_grad_(False)
        loss, info = self.actor_loss(batch, self.normalizer(batch.obs))
        self.step("actor", loss)
        self.critic.requires_grad_(True)
        soft_update(self.actor_target, self.actor, self.cfg.tau)
        return info


def main() -> None:
    from agents.core.entry import run

    run(TD3BCPR, TD3BCPRConfig, "td3bc_pr")


if __name__ == "__main__":
    main()
