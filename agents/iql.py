"""IQL: Kostrikov, Nair & Levine, "Offline Reinforcement Learning with Implicit Q-Learning", ICLR 2022.

An expectile value V(s) of the target critics' min Q(s, a) over dataset actions, Q learned
against r + gamma (1 - terminal) V(s') (never a policy action), and a policy extracted by
advantage-weighted regression exp(beta (Q - V)) * -log pi(a|s). Fine-tuned as CORL's
`finetune/iql.py` does: the same losses online, on offline and online rows pooled
(`sampler: uniform`).

    python -m agents.iql                                   # locomotion: expectile 0.7, beta 3
    python -m agents.iql agent.expectile=0.9 agent.beta=10 # sparse rewards (AntMaze)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from agents.core.agent import Agent, EnvSpec
from agents.core.config import ConfigError
from agents.core.networks import (
    CriticEnsemble,
    DeterministicActor,
    GaussianActor,
    ObsNormalizer,
    adam,
    cosine_lr,
    mlp,
    set_lr,
    soft_update,
)
from worldmodels.data.store import Batch
from worldmodels.progress import Progress


@dataclass
class IQLConfig:
    name: str = "iql"
    actor_lr: float = 3e-4  # Kostrikov et al. 2022, CORL finetune/iql.py
    critic_lr: float = 3e-4  # Kostrikov et al. 2022, CORL
    value_lr: float = 3e-4  # Kostrikov et al. 2022, CORL
    hidden: list[int] = field(default_factory=lambda: [256, 256])  # Kostrikov et al. 2022: 2x256 for Q, V, actor
    gamma: float = 0.99  # Kostrikov et al. 2022
    tau: float = 0.005  # target critics' Polyak rate (Kostrikov et al. 2022, CORL)
    # Locomotion values (Kostrikov et al. 2022 configs/mujoco_config.py, CORL's default). Sparse rewards
    # (AntMaze): agent.expectile=0.9 agent.beta=10; Adroit: agent.expectile=0.8 agent.beta=3.
    expectile: float = 0.7  # tau of the expectile loss L2_tau (CORL `iql_tau`)
    beta: float = 3.0  # inverse temperature of the advantage weights
    max_weight: float = 100.0  # exp(beta A) clipped here (Kostrikov et al. 2022, CORL EXP_ADV_MAX)
    # gaussian: CORL's GaussianPolicy (tanh mean, state-independent log-std, unsquashed log-prob, samples
    # clamped); deterministic: CORL's `iql_deterministic` (advantage-weighted squared error)
    actor: str = "gaussian"
    exploration_noise: float = 0.03  # deterministic actor online: N(0, 0.03) x action scale (CORL expl_noise)
    noise_clip: float = 0.5  # deterministic actor online: noise clipped here x action scale (CORL)
    # cosine: CORL's CosineAnnealingLR(T_max = offline updates) stepped on every update of both phases, so the
    # actor lr falls to 0 at the switch and climbs back toward actor_lr over the next offline-budget of updates;
    # constant: the original IQL fine-tuning config (ikostrikov antmaze_finetune_config: opt_decay_schedule=None)
    actor_lr_schedule: str = "cosine"
    normalize_obs: bool = True  # CORL normalizes states by dataset mean/std (the original IQL does not)


def expectile_loss(diff: Tensor, expectile: float) -> tuple[Tensor, dict]:
    """L2_tau(u) = |tau - 1(u < 0)| u^2 averaged over the batch, u = Q(s, a) - V(s) (Kostrikov et al. 2022, eq. 5)."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    loss = (weight * diff.square()).mean()
    return loss, {"loss/value": loss.detach()}


def advantage_weighted_loss(log_prob: Tensor, advantage: Tensor, beta: float, clip: float) -> tuple[Tensor, dict]:
    """mean(min(exp(beta A), clip) * -log pi(a|s)) with A held constant: the advantage-weighted regression of
    IQL (beta = inverse temperature) and AWAC (beta = 1 / lambda)."""
    weight = torch.exp(beta * advantage.detach()).clamp(max=clip)
    loss = -(weight * log_prob).mean()
    return loss, {"loss/actor": loss.detach(), "actor/weight_mean": weight.mean().detach(),
                  "actor/weight_clipped": (weight >= clip).float().mean()}


def corl_cosine_lr(base_lr: float, updates: int, period: int) -> float:
    """CosineAnnealingLR(T_max=period) after `updates` steps in closed form: cosine from base_lr to 0 over the
    period, then (it keeps stepping) back up over the next one. No period means a constant lr."""
    if period <= 0:
        return base_lr
    phase = (updates / period) % 2.0
    return cosine_lr(base_lr, min(phase, 2.0 - phase))


class IQL(Agent):
    def __init__(self, cfg: IQLConfig, spec: EnvSpec, device: torch.device):
        super().__init__(cfg, spec, device)
        if cfg.actor not in ("gaussian", "deterministic"):
            raise ConfigError(f"agent.actor={cfg.actor!r}: choose gaussian or deterministic.")
        if cfg.actor_lr_schedule not in ("constant", "cosine"):
            raise ConfigError(f"agent.actor_lr_schedule={cfg.actor_lr_schedule!r}: choose constant or cosine.")
        if not 0.0 < cfg.expectile < 1.0:
            raise ConfigError(f"agent.expectile={cfg.expectile} must lie in (0, 1) (0.7 locomotion, 0.9 AntMaze).")
        scale, bias = spec.act_scale, spec.act_bias
        self.normalizer = ObsNormalizer(spec.obs_dim)
        if cfg.actor == "gaussian":
            self.actor = GaussianActor(spec.obs_dim, spec.act_dim, scale, bias, cfg.hidden, tanh_mean=True)
        else:
            self.actor = DeterministicActor(spec.obs_dim, spec.act_dim, scale, bias, cfg.hidden)
        self.critic = CriticEnsemble(spec.obs_dim, spec.act_dim, 2, cfg.hidden)  # twin Q
        self.critic_target = CriticEnsemble(spec.obs_dim, spec.act_dim, 2, cfg.hidden)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.value = mlp(spec.obs_dim, 1, cfg.hidden)  # V(s)
        self.to(device)
        self.optimizers = {
            "actor": adam(self.actor.parameters(), cfg.actor_lr),
            "critic": adam(self.critic.parameters(), cfg.critic_lr),
            "value": adam(self.value.parameters(), cfg.value_lr),
        }

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        obs = self.normalizer(obs)
        if self.cfg.actor == "gaussian":
            return self.actor(obs, deterministic)[0]
        action = self.actor(obs)
        if deterministic:
            return action
        scale, bias = self.actor.act_scale, self.actor.act_bias
        noise = (torch.randn_like(action) * self.cfg.exploration_noise).clamp(-self.cfg.noise_clip,
                                                                               self.cfg.noise_clip)
        return torch.maximum(torch.minimum(action + noise * scale, bias + scale), bias - scale)

    def v(self, obs: Tensor) -> Tensor:
        return self.value(obs).squeeze(-1)  # [B]

    # --- losses ------------------------------------------------------------------
    @torch.no_grad()
    def td_target(self, batch: Batch, next_obs: Tensor) -> Tensor:
        """r + gamma (1 - terminal) V(s'): no policy action anywhere; truncation keeps the bootstrap."""
        return batch.rew + self.cfg.gamma * (1.0 - batch.terminal) * self.v(next_obs)

    def critic_loss(self, batch: Batch, obs: Tensor, target: Tensor) -> tuple[Tensor, dict]:
        q = self.critic(obs, batch.act)  # [2, B]
        loss = F.mse_loss(q, target.expand_as(q))  # mean over both critics (CORL)
        return loss, {"loss/critic": loss.detach(), "q/mean": q.detach().mean()}

    def actor_log_prob(self, obs: Tensor, act: Tensor) -> Tensor:
        """log pi(a|s) [B]; the deterministic actor's stand-in is minus the squared error in [-1, 1] units."""
        if self.cfg.actor == "gaussian":
            return self.actor.log_prob(obs, act)
        return -((self.actor(obs) - act) / self.actor.act_scale).square().sum(-1)

    # --- update ------------------------------------------------------------------
    def update(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        if self.cfg.actor_lr_schedule == "cosine":
            # a function of progress, not a stateful scheduler: resumes exactly by construction
            set_lr(self.optimizers["actor"], corl_cosine_lr(self.cfg.actor_lr, progress.updates,
                                                            progress.offline_budget))
        obs, next_obs = self.normalizer(batch.obs), self.normalizer(batch.next_obs)
        target = self.td_target(batch, next_obs)  # V(s') before this update's value step (CORL)
        with torch.no_grad():
            q_data = self.critic_target(obs, batch.act).min(0).values  # [B]
        advantage = q_data - self.v(obs)  # [B]
        value_loss, info = expectile_loss(advantage, self.cfg.expectile)
        critic_loss, critic_info = self.critic_loss(batch, obs, target)
        losses = {"value": value_loss, "critic": critic_loss}
        actor_loss, actor_info = self.actor_loss(batch, obs, advantage, progress)
        if actor_loss is not None:
            losses["actor"] = actor_loss
        # CORL steps V, then Q, then the actor, but no loss reads a network another step changes (Q's target
        # and the advantage are V's values before its step, the actor sees the advantage detached), and each
        # reaches only its own network: one backward pass gives all three their gradients (Agent.step_together)
        self.step_together(losses)
        soft_update(self.critic_target, self.critic, self.cfg.tau)
        self.num_updates += 1
        return info | critic_info | actor_info | {"v/mean": (q_data - advantage).detach().mean()}

    def actor_loss(self, batch: Batch, obs: Tensor, advantage: Tensor,
                   progress: Progress) -> tuple[Tensor | None, dict[str, Tensor]]:
        """The policy's advantage-weighted regression on dataset actions (None: no policy step; PEX online)."""
        return advantage_weighted_loss(self.actor_log_prob(obs, batch.act), advantage, self.cfg.beta,
                                       self.cfg.max_weight)


def main() -> None:
    from agents.core.entry import run

    run(IQL, IQLConfig, "iql")


if __name__ == "__main__":
    main()
