"""APL (GCQL): Zheng, Luo, Yu et al., "Adaptive Policy Learning for Offline-to-Online Reinforcement
Learning", AAAI 2023 (reference code: zhan0903/APL0 `agents/GCQL.py`, `agents/cql.py`;
../shared/REFERENCES-O2O.md §11). The TD3+BC variant and the shared rule are agents/apl.py.

CQL with 5 critics whose Bellman target is the min over a random 2 of the 5 target critics (no entropy
backup), an actor on alpha log pi - the mean of the 5 critics, and the conservative term multiplied per
row by W: 0 on batches from the recent online window, 1 on batches from the main buffer
(`sampler: apl`, W read from the batch's sources).

Differences from the reference: `updates_per_step` = 10 updates per env step instead of APL0's rounds
of 1000 env steps then 10000 updates.

    python -m agents.apl_cql
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from agents.apl import regulariser_weight
from agents.core.agent import EnvSpec
from agents.core.config import ConfigError
from agents.core.networks import mean_over_critics, subset_min_target
from agents.cql import CQL, CQLConfig
from worldmodels.data.store import Batch
from worldmodels.progress import Progress


@dataclass
class APLCQLConfig(CQLConfig):
    name: str = "apl_cql"
    actor_lr: float = 1e-4  # GCQL policy lr 1e-4
    critic_lr: float = 3e-4  # GCQL Q lr 3e-4
    alpha_lr: float = 1e-4  # the policy lr, as CORL's CQL (APL0's value unverified)
    hidden: list[int] = field(default_factory=lambda: [256, 256, 256])  # GCQL: policy and critics 3x256
    num_critics: int = 5  # GCQL: 5 critics
    num_min: int = 2  # GCQL: target = min over a random 2 of the 5 target critics
    tau: float = 0.005  # GCQL polyak 0.995
    cql_alpha: float = 5.0  # GCQL: CQL weight 5 (when W = 1)
    n_actions: int = 10  # GCQL: 10 samples per set, importance sampled
    lagrange: bool = False  # GCQL: no Lagrange multiplier
    max_target_backup: bool = False  # GCQL: a single a' ~ pi(s')
    auto_alpha: bool = True  # GCQL: automatic entropy tuning
    bc_steps: int = 0  # CORL 0 (rlkit CQL's 40k BC warm-up: APL0's use of it unverified)
    normalize_obs: bool = False  # APL0 feeds raw states


class APLCQL(CQL):
    def __init__(self, cfg: APLCQLConfig, spec: EnvSpec, device: torch.device):
        if not 1 <= cfg.num_min <= cfg.num_critics:
            raise ConfigError(f"agent.num_min={cfg.num_min} must lie in [1, agent.num_critics={cfg.num_critics}].")
        super().__init__(cfg, spec, device)
        self.subset_rng = self.new_generator("subset")  # the subset draws' own checkpointed stream

    def penalty_weight(self, batch: Batch) -> Tensor:
        return regulariser_weight(batch)  # W: 0 on recent-window rows, 1 elsewhere

    def target_value(self, batch: Batch, next_obs: Tensor) -> Tensor:
        """min over a random M-subset of the N target critics at a' ~ pi(s') (max over n a' with max backup)."""
        n = self.cfg.n_actions if self.cfg.max_target_backup else 1
        next_act, _ = self.actor(next_obs, samples=n)  # [B*n, A], state-major
        q, _ = subset_min_target(self.critic_target, next_obs.repeat_interleave(n, 0), next_act, self.cfg.num_min,
                                 self.subset_rng)  # [B*n]: only the M drawn critics run
        return q.view(-1, n).max(1).values  # [B]

    def actor_loss(self, batch: Batch, obs: Tensor, progress: Progress | None = None) -> tuple[Tensor, dict]:
        if progress.updates < self.cfg.bc_steps:
            return super().actor_loss(batch, obs, progress)
        act, log_prob = self.actor(obs)
        q = mean_over_critics(self.critic(obs, act))  # [B], the mean of all N critics (GCQL)
        loss = (self.alpha * log_prob - q).mean()
        return loss, {"loss/actor": loss.detach(), "actor/entropy": -log_prob.detach().mean(), "_log_prob": log_prob}


def main() -> None:
    from agents.core.entry import run

    run(APLCQL, APLCQLConfig, "apl_cql")


if __name__ == "__main__":
    main()
