"""AWAC: Nair, Gupta, Dalal & Levine, "AWAC: Accelerating Online Reinforcement Learning with Offline
Datasets", 2020.

Twin critics learned against r + gamma (1 - terminal) min_j Q'_j(s', a'), a' ~ pi(s') (no entropy
term), and a policy fitted by advantage-weighted regression exp(A / lambda) * -log pi(a|s) with
A = min Q(s, a) - min Q(s, a_pi), one a_pi ~ pi(s). As CORL's `finetune/awac.py` fine-tunes it:
the same losses online, on offline and online rows pooled (`sampler: uniform`).

    python -m agents.awac
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from agents.core.agent import Agent, EnvSpec
from agents.core.config import ConfigError
from agents.core.networks import CriticEnsemble, GaussianActor, ObsNormalizer, adam, soft_update
from agents.iql import advantage_weighted_loss
from worldmodels.data.store import Batch
from worldmodels.progress import Progress


@dataclass
class AWACConfig:
    name: str = "awac"
    actor_lr: float = 3e-4  # CORL finetune/awac.py learning_rate
    critic_lr: float = 3e-4  # CORL finetune/awac.py learning_rate
    hidden: list[int] = field(default_factory=lambda: [256, 256, 256])  # CORL: 3x256 actor and critics
    gamma: float = 0.99  # CORL
    tau: float = 0.005  # target critics' Polyak rate (CORL)
    awac_lambda: float = 0.1  # weights exp(A / lambda): CORL's fine-tuning configs (its code default is 1.0)
    max_weight: float = 100.0  # weights clipped here (CORL exp_adv_max)
    normalize_obs: bool = True  # CORL normalizes states by dataset mean/std


class AWAC(Agent):
    def __init__(self, cfg: AWACConfig, spec: EnvSpec, device: torch.device):
        super().__init__(cfg, spec, device)
        if cfg.awac_lambda <= 0:
            raise ConfigError(f"agent.awac_lambda={cfg.awac_lambda} must be > 0 (CORL fine-tunes with 0.1).")
        self.normalizer = ObsNormalizer(spec.obs_dim)
        # CORL's AWAC actor: free (no tanh) mean, state-independent log-std, samples clamped into the bounds
        self.actor = GaussianActor(spec.obs_dim, spec.act_dim, spec.act_scale, spec.act_bias, cfg.hidden,
                                   tanh_mean=False)
        self.critic = CriticEnsemble(spec.obs_dim, spec.act_dim, 2, cfg.hidden)  # twin Q
        self.critic_target = CriticEnsemble(spec.obs_dim, spec.act_dim, 2, cfg.hidden)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.to(device)
        self.optimizers = {
            "actor": adam(self.actor.parameters(), cfg.actor_lr),
            "critic": adam(self.critic.parameters(), cfg.critic_lr),
        }

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        return self.actor(self.normalizer(obs), deterministic)[0]

    # --- losses ------------------------------------------------------------------
    @torch.no_grad()
    def td_target(self, batch: Batch, next_obs: Tensor) -> Tensor:
        """r + gamma (1 - terminal) min_j Q'_j(s', a'), a' ~ pi(s'); no entropy; truncation keeps the bootstrap."""
        next_act, _ = self.actor(next_obs)
        next_q = self.critic_target(next_obs, next_act).min(0).values  # [B]
        return batch.rew + self.cfg.gamma * (1.0 - batch.terminal) * next_q

    def critic_loss(self, batch: Batch, obs: Tensor, next_obs: Tensor) -> tuple[Tensor, dict]:
        target = self.td_target(batch, next_obs)  # [B]
        q = self.critic(obs, batch.act)  # [2, B]
        loss = F.mse_loss(q, target.expand_as(q), reduction="none").mean(1).sum()  # MSE1 + MSE2 (CORL)
        return loss, {"loss/critic": loss.detach(), "q/mean": q.detach().mean()}

    def actor_loss(self, batch: Batch, obs: Tensor) -> tuple[Tensor, dict]:
        dist = self.actor.distribution(obs)  # one trunk pass gives both a_pi and log pi(a|s)
        with torch.no_grad():
            pi_act, _ = self.actor.sample(dist)  # one sample a_pi ~ pi(s) stands in for V(s)
            # Q(s, a) and Q(s, a_pi) in one critic pass over 2B rows: [2, 2B] -> min over critics -> [2B]
            q_data, q_pi = self.critic(obs.repeat(2, 1), torch.cat([batch.act, pi_act])).min(0).values.chunk(2)
        return advantage_weighted_loss(self.actor.log_prob(obs, batch.act, dist), q_data - q_pi,
                                       1.0 / self.cfg.awac_lambda, self.cfg.max_weight)

    # --- update ------------------------------------------------------------------
    def update(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        obs, next_obs = self.normalizer(batch.obs), self.normalizer(batch.next_obs)
        critic_loss, info = self.critic_loss(batch, obs, next_obs)
        self.step("critic", critic_loss)
        actor_loss, actor_info = self.actor_loss(batch, obs)  # reads the updated critics (CORL)
        self.step("actor", actor_loss)
        soft_update(self.critic_target, self.critic, self.cfg.tau)
        self.num_updates += 1
        return info | actor_info


def main() -> None:
    from agents.core.entry import run

    run(AWAC, AWACConfig, "awac")


if __name__ == "__main__":
    main()
