"""REDQ: Chen, Wang, Zhou & Ross, "Randomized Ensembled Double Q-Learning: Learning Fast Without a
Model", ICLR 2021 (reference code: watchernyu/REDQ `redq/algos/redq_sac.py`).

SAC with N critics (one vectorized `CriticEnsemble`), a Bellman target that takes the min over a
random M-subset of the N target critics (one subset per update, shared by the whole batch), an
actor trained against the mean of all N critics, and a high update-to-data ratio G (the trainer's
`updates_per_step`) with one policy update every G critic updates. Online from scratch by default
(configs/redq.yaml); `sampler=symmetric` mixes the offline dataset into every batch.

One ordering differs from the reference: there the actor's loss reads the critics before that
update's critic step; here (as in agents/sac.py) it reads them after it, so that N = M = 2 with a
policy update every step and `actor_q=min` is exactly SAC.

    python -m agents.redq
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from agents.core.config import ConfigError
from agents.core.networks import mean_over_critics, subset_min_target
from agents.sac import SAC, SACConfig
from worldmodels.data.store import Batch
from worldmodels.progress import Progress

# redq/algos/core.py mbpo_target_entropy_dict: MBPO's per-task entropy targets (Janner et al. 2019), which
# redq_sac.py uses by default; keyed by the task's name without its version
MBPO_TARGET_ENTROPY = {"Hopper": -1.0, "HalfCheetah": -3.0, "Walker2d": -3.0, "Ant": -4.0, "Humanoid": -2.0}


@dataclass
class REDQConfig(SACConfig):
    name: str = "redq"
    actor_lr: float = 3e-4  # redq_sac.py: lr 3e-4 for every network
    critic_lr: float = 3e-4  # redq_sac.py
    alpha_lr: float = 3e-4  # redq_sac.py
    hidden: list[int] = field(default_factory=lambda: [256, 256])  # redq_sac.py hidden_sizes=(256, 256)
    num_critics: int = 10  # N = 10 (Chen et al. 2021, redq_sac.py num_Q)
    num_min: int = 2  # M = 2 target critics in the min (redq_sac.py num_min)
    policy_update_every: int = 20  # redq_sac.py policy_update_delay = 20 = G: one policy update per env step
    actor_q: str = "mean"  # mean | min: redq_sac.py's actor uses the mean of all N critics; min = SAC's
    gamma: float = 0.99  # redq_sac.py
    tau: float = 0.005  # redq_sac.py polyak = 0.995
    init_alpha: float = 1.0  # redq_sac.py log_alpha starts at 0
    auto_alpha: bool = True  # redq_sac.py auto_alpha=True
    # the entropy target when agent.target_entropy is None: "mbpo", redq_sac.py's default (target_entropy='mbpo'),
    # is MBPO_TARGET_ENTROPY's value for the task (-|A| for a task not in it); "auto" is -|A| on every task
    # (redq_sac.py 'auto', SAC's; this package's REDQ before 2026-12-07). A number in agent.target_entropy wins.
    target_entropy_rule: str = "mbpo"
    target_entropy: float | None = None
    normalize_obs: bool = False  # redq_sac.py feeds raw observations


class REDQ(SAC):
    def __init__(self, cfg: REDQConfig, spec, device: torch.device):
        if cfg.actor_q not in ("mean", "min"):
            raise ConfigError(f"agent.actor_q={cfg.actor_q}: use mean (REDQ) or min (SAC).")
        if not 1 <= cfg.num_min <= cfg.num_critics:
            raise ConfigError(f"agent.num_min={cfg.num_min} must lie in [1, agent.num_critics={cfg.num_critics}].")
        if cfg.policy_update_every < 1:
            raise ConfigError(f"agent.policy_update_every={cfg.policy_update_every} must be at least 1.")
        if cfg.target_entropy_rule not in ("mbpo", "auto"):
            raise ConfigError(f"agent.target_entropy_rule={cfg.target_entropy_rule}: use mbpo (REDQ's per-task "
                              "values) or auto (-|A|), or set agent.target_entropy to a number.")
        super().__init__(cfg, spec, device)
        if cfg.target_entropy is None and cfg.target_entropy_rule == "mbpo":
            self.target_entropy = MBPO_TARGET_ENTROPY.get(spec.env_id.split("-")[0], -float(spec.act_dim))
        # the subset draws have their own checkpointed stream, so they never shift the actor's noise
        self.subset_rng = self.new_generator("subset")

    # --- losses ------------------------------------------------------------------
    def target_value(self, batch: Batch, next_obs: Tensor) -> Tensor:
        """min over a random M-subset of the N target critics, minus alpha log pi(a'|s') (and SAC's optional
        pessimism penalty). Only the M drawn critics run, unless the penalty needs the std over all N."""
        next_act, next_log_prob = self.actor(next_obs)
        q_min, next_q = subset_min_target(self.critic_target, next_obs, next_act, self.cfg.num_min, self.subset_rng,
                                          all_critics=bool(self.cfg.pessimism_beta))  # [B], [M or N, B]
        return self.pessimistic(q_min - self.alpha * next_log_prob, next_q)  # minus beta * std over the N critics

    def actor_loss(self, batch: Batch, obs: Tensor, progress: Progress | None = None) -> tuple[Tensor, dict]:
        act, log_prob = self.actor(obs)
        q_all = self.critic(obs, act)  # [N, B]
        q = mean_over_critics(q_all) if self.cfg.actor_q == "mean" else q_all.min(0).values  # [B]
        loss = (self.alpha * log_prob - q).mean()
        return loss, {"loss/actor": loss.detach(), "actor/entropy": -log_prob.detach().mean(), "_log_prob": log_prob}

    # --- update: critics every call, policy and temperature every `policy_update_every` calls ---
    def policy_due(self) -> bool:
        return (self.num_updates + 1) % self.cfg.policy_update_every == 0  # the last of each G updates


def main() -> None:
    from agents.core.entry import run

    run(REDQ, REDQConfig, "redq")


if __name__ == "__main__":
    main()
