"""TD3: Fujimoto, van Hoof & Meger, "Addressing Function Approximation Error in Actor-Critic
Methods", ICML 2018. Online by default; TD3+BC (agents/td3bc.py) changes only the actor loss.

    python -m agents.td3
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from agents.core.agent import Agent, EnvSpec
from agents.core.networks import CriticEnsemble, DeterministicActor, ObsNormalizer, adam, soft_update
from worldmodels.data.store import Batch
from worldmodels.progress import Progress


@dataclass
class TD3Config:
    name: str = "td3"
    actor_lr: float = 3e-4  # TD3 reference code (Fujimoto 2018)
    critic_lr: float = 3e-4  # TD3 reference code
    hidden: list[int] = field(default_factory=lambda: [256, 256])  # TD3 paper, 256x2 in the code
    gamma: float = 0.99  # TD3 paper
    tau: float = 0.005  # TD3 paper
    policy_noise: float = 0.2  # target policy smoothing std, TD3 paper (x action scale)
    noise_clip: float = 0.5  # TD3 paper (x action scale)
    policy_delay: int = 2  # TD3 paper: actor and targets update every 2 critic updates
    exploration_noise: float = 0.1  # TD3 paper: Gaussian N(0, 0.1) on actions online
    normalize_obs: bool = False  # state normalization by dataset statistics (TD3+BC turns it on)


class TD3(Agent):
    def __init__(self, cfg: TD3Config, spec: EnvSpec, device: torch.device):
        super().__init__(cfg, spec, device)
        scale, bias = spec.act_scale, spec.act_bias
        self.normalizer = ObsNormalizer(spec.obs_dim)
        self.actor = DeterministicActor(spec.obs_dim, spec.act_dim, scale, bias, cfg.hidden)
        self.critic = CriticEnsemble(spec.obs_dim, spec.act_dim, 2, cfg.hidden)  # clipped double Q
        self.actor_target = DeterministicActor(spec.obs_dim, spec.act_dim, scale, bias, cfg.hidden)
        self.critic_target = CriticEnsemble(spec.obs_dim, spec.act_dim, 2, cfg.hidden)
        self.actor_target.load_state_dict(self.actor.state_dict())
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.to(device)
        self.optimizers = {
            "actor": adam(self.actor.parameters(), cfg.actor_lr),
            "critic": adam(self.critic.parameters(), cfg.critic_lr),
        }

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        action = self.actor(self.normalizer(obs))
        if deterministic:
            return action
        return self.clip_action(action + torch.randn_like(action) * self.cfg.exploration_noise * self.actor.act_scale)

    def clip_action(self, action: Tensor) -> Tensor:
        """Clamp into the env's bounds (the actor's scale/bias buffers already live on the device)."""
        scale, bias = self.actor.act_scale, self.actor.act_bias
        return torch.maximum(torch.minimum(action, bias + scale), bias - scale)

    # --- losses ------------------------------------------------------------------
    def td_target(self, batch: Batch, next_obs: Tensor) -> Tensor:
        """r + gamma (1 - terminal) min_i Q'_i(s', pi'(s') + clipped noise); truncation keeps the bootstrap."""
        with torch.no_grad():
            scale = self.actor.act_scale
            noise = (torch.randn_like(batch.act) * self.cfg.policy_noise * scale).clamp(
                -self.cfg.noise_clip * scale, self.cfg.noise_clip * scale
            )
            next_act = self.clip_action(self.actor_target(next_obs) + noise)
            next_q = self.target_q(next_obs, next_act)  # [B]
            return batch.rew + self.cfg.gamma * (1.0 - batch.terminal) * next_q

    def target_q(self, next_obs: Tensor, next_act: Tensor) -> Tensor:
        """Clipped double Q: the min over the target critics, [B] (AdaptiveBC: over a random 2 of 10)."""
        return self.critic_target(next_obs, next_act).min(0).values  # [N, B] -> [B]

    def critic_loss(self, batch: Batch, obs: Tensor, next_obs: Tensor) -> tuple[Tensor, dict]:
        target = self.td_target(batch, next_obs)  # [B]
        q = self.critic(obs, batch.act)  # [2, B]
        loss = F.mse_loss(q, target.expand_as(q), reduction="none").mean(1).sum()
        return loss, {"loss/critic": loss.detach(), "q/mean": q.detach().mean()}

    def actor_loss(self, batch: Batch, obs: Tensor) -> tuple[Tensor, dict]:
        q = self.critic(obs, self.actor(obs))[0]  # TD3 uses Q1 for the actor
        loss = -q.mean()
        return loss, {"loss/actor": loss.detach()}

    # --- update ------------------------------------------------------------------
    def update(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        obs, next_obs = self.normalizer(batch.obs), self.normalizer(batch.next_obs)
        loss, info = self.critic_loss(batch, obs, next_obs)
        self.step("critic", loss)
        self.num_updates += 1
        if self.num_updates % self.cfg.policy_delay == 0:
            self.critic.requires_grad_(False)  # the actor's gradient needs no critic weight grads
            loss, actor_info = self.actor_loss(batch, obs)
            self.step("actor", loss)
            self.critic.requires_grad_(True)
            soft_update(self.critic_target, self.critic, self.cfg.tau)
            soft_update(self.actor_target, self.actor, self.cfg.tau)
            info |= actor_info
        return info


def main() -> None:
    from agents.core.entry import run

    run(TD3, TD3Config, "td3")


if __name__ == "__main__":
    main()
