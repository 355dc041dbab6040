"""CQL(H): Kumar et al., "Conservative Q-Learning for Offline Reinforcement Learning", NeurIPS 2020.

SAC whose critics are pushed down on out-of-distribution actions and up on dataset actions:
per critic, MSE to y = r + gamma (1 - terminal) min_j Q'_j(s', a') (no entropy term in the
backup) plus alpha_cql * (logsumexp over an importance-sampled action set - Q(s, a)). The set
holds n uniform actions, n actions of pi(.|s) and n actions sampled from pi(.|s') but evaluated
at s, each minus its log density. The same loss continues online (CORL `finetune/cql.py`, the
reference for the defaults below; ../shared/REFERENCES-O2O.md §1), on one pooled buffer
(`sampler: uniform` in configs/cql.yaml).

    python -m agents.cql
    python -m agents.cql agent.lagrange=true agent.max_target_backup=true   # CORL's antmaze setting
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agents.core.agent import EnvSpec
from agents.core.config import ConfigError
from agents.core.networks import adam
from agents.sac import SAC, SACConfig
from worldmodels.data.store import Batch
from worldmodels.progress import Progress


@dataclass
class CQLConfig(SACConfig):
    name: str = "cql"
    actor_lr: float = 1e-4  # CORL finetune policy_lr 1e-4 (CQL authors: 1e-4 or 3e-4)
    critic_lr: float = 3e-4  # CORL finetune qf_lr 3e-4 (CQL authors, d3rlpy: 3e-4)
    alpha_lr: float = 1e-4  # CORL: the entropy temperature uses the policy lr
    hidden: list[int] = field(default_factory=lambda: [256, 256, 256])  # CORL: actor 3x256, critics 3x256 (adroit)
    cql_alpha: float = 5.0  # CQL authors' gym min_q_weight 5, d3rlpy 5, CORL/Cal-QL antmaze 5 (CORL adroit: 1)
    alpha_online: float | None = None  # None = cql_alpha: CORL fine-tunes with the offline value
    n_actions: int = 10  # CORL/CQL cql_n_actions 10 per set (uniform, pi(s), pi(s'))
    temperature: float = 1.0  # CORL cql_temp 1.0
    clip_diff_min: float = -math.inf  # CORL default (antmaze: -200)
    clip_diff_max: float = math.inf  # CORL default
    max_target_backup: bool = False  # CORL default False (CORL antmaze and Cal-QL: True, max over n a' ~ pi(s'))
    lagrange: bool = False  # CORL default False (antmaze: True); CQL authors: off on gym
    target_action_gap: float = 0.8  # CORL/Cal-QL antmaze 0.8 (only with lagrange; CQL authors' antmaze: 5)
    init_log_alpha_prime: float = 1.0  # CORL: log alpha' starts at 1.0 (alpha' = e)
    bc_steps: int = 0  # CORL 0; original rlkit CQL: 40000 updates of BC warm-up (policy_eval_start)


def cql_penalty(q_ood: Tensor, q_data: Tensor, temperature: float = 1.0, clip_min: float = -math.inf,
                clip_max: float = math.inf, weight: Tensor | None = None) -> tuple[Tensor, dict]:
    """Per critic: (T logsumexp_m(q_ood / T) - q_data), clipped, averaged over the batch.

    q_ood: [N, B, M] importance-weighted Q values of the OOD set; q_data: [N, B] Q of dataset actions;
    weight: optional [B] per-row weights applied before the mean (APL's W). Returns ([N], info)."""
    lse = torch.logsumexp(q_ood / temperature, dim=-1) * temperature  # [N, B]
    diff = (lse - q_data).clamp(clip_min, clip_max)  # [N, B]
    diff = (diff if weight is None else diff * weight).mean(1)  # [N]
    return diff, {"cql/ood_lse": lse.detach().mean(), "cql/diff": diff.detach().mean()}


def bc_actor_loss(log_prob: Tensor, data_log_prob: Tensor, alpha: Tensor) -> tuple[Tensor, dict]:
    """The original CQL's warm-up: alpha log pi(a~pi|s) - log pi(a_data|s)."""
    loss = (alpha * log_prob - data_log_prob).mean()
    return loss, {"loss/actor": loss.detach(), "actor/entropy": -log_prob.detach().mean(), "_log_prob": log_prob}


class CQL(SAC):
    def __init__(self, cfg: CQLConfig, spec: EnvSpec, device: torch.device):
        if cfg.pessimism_beta:  # CQL's target below does not read it: refuse rather than ignore
            raise ConfigError("agent.pessimism_beta: CQL's target has no uncertainty penalty; leave it at 0.")
        super().__init__(cfg, spec, device)
        # log of the uniform density over the action box, subtracted from the uniform set's Q
        self.uniform_log_density = -float((spec.act_high - spec.act_low).log().sum())
        self.log_alpha_prime = nn.Parameter(torch.tensor(float(cfg.init_log_alpha_prime), device=device))
        self.optimizers["alpha_prime"] = adam([self.log_alpha_prime], cfg.critic_lr)  # CORL: lr = qf_lr

    # --- losses ------------------------------------------------------------------
    def target_value(self, batch: Batch, next_obs: Tensor) -> Tensor:
        """min_j Q'_j(s', a'), a' ~ pi(s'), no entropy term; with max_target_backup the max over n a'."""
        n = self.cfg.n_actions if self.cfg.max_target_backup else 1
        next_act, _ = self.actor(next_obs, samples=n)  # [B*n, A], state-major
        q = self.critic_target(next_obs.repeat_interleave(n, 0), next_act).min(0).values  # [B*n]
        return q.view(-1, n).max(1).values  # [B]

    def penalty_weight(self, batch: Batch) -> Tensor | None:
        """Hook for APL: per-row weights [B] of the conservative penalty; None = every row 1."""
        return None

    def floor_policy_q(self, q_pi: Tensor, batch: Batch, progress: Progress) -> tuple[Tensor, dict]:
        """Hook for Cal-QL: q_pi [N, B, 2n] are the Q values of the policy actions (pi(s') then pi(s))."""
        return q_pi, {}

    def conservative_q(self, batch: Batch, obs: Tensor, next_obs: Tensor,
                       progress: Progress) -> tuple[Tensor, Tensor, dict]:
        """Q of dataset actions [N, B] and the importance-weighted OOD set [N, B, 3n], in one critic call."""
        b, n, a = obs.shape[0], self.cfg.n_actions, self.spec.act_dim
        with torch.no_grad():
            unif = self.random_action(b * n).view(b, n, a)
            pi_act, pi_log_prob = self.actor(torch.cat([next_obs, obs]), samples=n)  # [2*B*n, ...], state-major
            pi_act = pi_act.view(2, b, n, a).transpose(0, 1).reshape(b, 2 * n, a)  # [B, 2n, A]: pi(s'), pi(s)
            pi_log_prob = pi_log_prob.view(2, b, n).transpose(0, 1).reshape(b, 2 * n)  # [B, 2n]
        acts = torch.cat([batch.act.unsqueeze(1), unif, pi_act], 1)  # [B, 1 + 3n, A]
        m = acts.shape[1]
        q = self.critic(obs.unsqueeze(1).expand(b, m, obs.shape[1]).reshape(b * m, -1), acts.reshape(b * m, a))
        q = q.view(-1, b, m)  # [N, B, 1 + 3n], every action evaluated at s
        q_data, q_unif, q_pi = q[..., 0], q[..., 1:1 + n], q[..., 1 + n:]
        q_pi, info = self.floor_policy_q(q_pi, batch, progress)
        q_ood = torch.cat([q_unif - self.uniform_log_density, q_pi - pi_log_prob], -1)  # [N, B, 3n]
        return q_data, q_ood, info

    def critic_loss(self, batch: Batch, obs: Tensor, next_obs: Tensor,
                    progress: Progress | None = None) -> tuple[Tensor, dict]:
        cfg = self.cfg
        with torch.no_grad():
            target = batch.rew + cfg.gamma * (1.0 - batch.terminal) * self.target_value(batch, next_obs)
        q_data, q_ood, info = self.conservative_q(batch, obs, next_obs, progress)
        td = F.mse_loss(q_data, target.expand_as(q_data), reduction="none").mean(1)  # [N]
        diff, cql_info = cql_penalty(q_ood, q_data, cfg.temperature, cfg.clip_diff_min, cfg.clip_diff_max,
                                     self.penalty_weight(batch))
        alpha = cfg.alpha_online if progress.online and cfg.alpha_online is not None else cfg.cql_alpha
        if cfg.lagrange:
            alpha_prime = self.log_alpha_prime.exp().clamp(0.0, 1e6)
            penalty = alpha_prime.detach() * alpha * (diff - cfg.target_action_gap)  # [N]
            info["_alpha_prime_loss"] = -(alpha_prime * alpha * (diff.detach() - cfg.target_action_gap)).mean()
            info["cql/alpha_prime"] = alpha_prime.detach()
        else:
            penalty = alpha * diff
        loss = (td + penalty).sum()
        return loss, info | cql_info | {"loss/critic": loss.detach(), "loss/td": td.detach().sum(),
                                        "loss/cql": penalty.detach().sum(), "q/mean": q_data.detach().mean()}

    def actor_loss(self, batch: Batch, obs: Tensor, progress: Progress | None = None) -> tuple[Tensor, dict]:
        if progress.updates < self.cfg.bc_steps:
            _, log_prob = self.actor(obs)
            return bc_actor_loss(log_prob, self.actor.log_prob(obs, batch.act), self.alpha)
        return super().actor_loss(batch, obs, progress)

    # --- update: SAC's, plus the Lagrange multiplier's step after the critics' ----------------
    def critic_update(self, batch: Batch, obs: Tensor, next_obs: Tensor, progress: Progress) -> dict[str, Tensor]:
        info = super().critic_update(batch, obs, next_obs, progress)
        if "_alpha_prime_loss" in info:
            self.step("alpha_prime", info.pop("_alpha_prime_loss"))
        return info


def main() -> None:
    from agents.core.entry import run

    run(CQL, CQLConfig, "cql")


if __name__ == "__main__":
    main()
