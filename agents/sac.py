"""SAC: Haarnoja et al., "Soft Actor-Critic Algorithms and Applications", 2018 (automatic
entropy tuning). Online by default; MOPO (agents/mopo.py) is SAC on model-augmented batches.

    python -m agents.sac
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agents.core.agent import Agent, EnvSpec
from agents.core.config import ConfigError
from agents.core.networks import CriticEnsemble, ObsNormalizer, TanhGaussianActor, adam, soft_update
from worldmodels.data.store import Batch
from worldmodels.progress import Progress
from worldmodels.uncertainty import QEnsembleStd


@dataclass
class SACConfig:
    name: str = "sac"
    actor_lr: float = 3e-4  # Haarnoja et al. 2018, table 1
    critic_lr: float = 3e-4  # Haarnoja et al. 2018, table 1
    alpha_lr: float = 3e-4  # Haarnoja et al. 2018, table 1
    hidden: list[int] = field(default_factory=lambda: [256, 256])  # Haarnoja et al. 2018
    num_critics: int = 2  # clipped double Q (Haarnoja et al. 2018)
    gamma: float = 0.99  # Haarnoja et al. 2018
    tau: float = 0.005  # Haarnoja et al. 2018
    init_alpha: float = 1.0  # common reference choice (CleanRL, OfflineRL-Kit start at 1)
    auto_alpha: bool = True  # Haarnoja et al. 2018: tune alpha to a target entropy
    target_entropy: float | None = None  # None = -act_dim (Haarnoja et al. 2018)
    normalize_obs: bool = False
    # UPQ-style pessimism on any critic ensemble: the target's value minus beta * std over the N target
    # critics at (s', a'). 0 = off (Haarnoja et al. 2018 has none); the seed table's UPQ presets are 0.1,
    # 0.01 and 0.001 (../shared/REFERENCES-O2O.md section 10)
    pessimism_beta: float = 0.0
    # LayerNorm between each hidden layer of the critics and its ReLU (RLPD, Ball et al. 2023, who use it to
    # keep Q from extrapolating upward off the data). False = Haarnoja et al. 2018's plain MLP critics.
    critic_layer_norm: bool = False
    # > 0: the deterministic policy (every evaluation, and the policy a run ends with) is the Polyak average of
    # the actor's weights, updated after each actor step by actor_average <- (1 - tau) actor_average + tau actor:
    # iterate averaging (Polyak & Juditsky 1992) against snapshots that swing from one evaluation to the next.
    # Exploration, rollouts and every loss keep the live actor, so training is the same update for update.
    # 0 = off: the last iterate, as Haarnoja et al. 2018.
    policy_average_tau: float = 0.0


class SAC(Agent):
    def __init__(self, cfg: SACConfig, spec: EnvSpec, device: torch.device):
        if cfg.pessimism_beta < 0 or (cfg.pessimism_beta and cfg.num_critics < 2):
            raise ConfigError(f"agent.pessimism_beta={cfg.pessimism_beta} needs beta >= 0 and, when positive, "
                              f"agent.num_critics >= 2 (got {cfg.num_critics}): U is the std over the critics.")
        if not 0.0 <= cfg.policy_average_tau <= 1.0:
            raise ConfigError(f"agent.policy_average_tau={cfg.policy_average_tau} must lie in [0, 1] (0 = off: "
                              "evaluate the last iterate; 0.001 averages over about 1000 actor steps).")
        super().__init__(cfg, spec, device)
        self.normalizer = ObsNormalizer(spec.obs_dim)
        self.actor = TanhGaussianActor(spec.obs_dim, spec.act_dim, spec.act_scale, spec.act_bias, cfg.hidden)
        # only when on, so the state dict (and every checkpoint) is what it was before the option
        self.actor_average = copy.deepcopy(self.actor).requires_grad_(False) if cfg.policy_average_tau else None
        self.critic = CriticEnsemble(spec.obs_dim, spec.act_dim, cfg.num_critics, cfg.hidden, cfg.critic_layer_norm)
        self.critic_target = CriticEnsemble(spec.obs_dim, spec.act_dim, cfg.num_critics, cfg.hidden,
                                            cfg.critic_layer_norm)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(float(cfg.init_alpha)).log())
        self.target_entropy = -float(spec.act_dim) if cfg.target_entropy is None else cfg.target_entropy
        self.q_uncertainty = QEnsembleStd(self.critic_target)  # U(s, a) of agent.pessimism_beta
        self.to(device)
        self.optimizers = {
            "actor": adam(self.actor.parameters(), cfg.actor_lr),
            "critic": adam(self.critic.parameters(), cfg.critic_lr),
            "alpha": adam([self.log_alpha], cfg.alpha_lr),
        }

    @property
    def alpha(self) -> Tensor:
        return self.log_alpha.detach().exp()

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        averaged = deterministic and self.actor_average is not None  # agent.policy_average_tau
        return (self.actor_average if averaged else self.actor)(self.normalizer(obs), deterministic)[0]

    # --- losses ------------------------------------------------------------------
    def target_value(self, batch: Batch, next_obs: Tensor) -> Tensor:
        """Soft value of s' for the Bellman target: min_i Q'_i(s', a') - alpha log pi(a'|s')."""
        next_act, next_log_prob = self.actor(next_obs)
        next_q = self.critic_target(next_obs, next_act)  # [N, B]
        return self.pessimistic(next_q.min(0).values - self.alpha * next_log_prob, next_q)

    def pessimistic(self, value: Tensor, next_q: Tensor) -> Tensor:
        """value - beta U(s', a') with U the std over the target critics' next_q [N, B] (agent.pessimism_beta,
        UPQ's penalty); beta 0 returns `value` itself, so the update is exactly the unpenalized one."""
        if not self.cfg.pessimism_beta:
            return value
        return value - self.cfg.pessimism_beta * self.q_uncertainty.from_prediction(next_q)

    def critic_loss(self, batch: Batch, obs: Tensor, next_obs: Tensor,
                    progress: Progress | None = None) -> tuple[Tensor, dict]:
        with torch.no_grad():
            # truncation keeps the bootstrap: only true terminals zero it
            target = batch.rew + self.cfg.gamma * (1.0 - batch.terminal) * self.target_value(batch, next_obs)
        q = self.critic(obs, batch.act)  # [N, B]
        loss = F.mse_loss(q, target.expand_as(q), reduction="none").mean(1).sum()
        # "_q" [N, B] and "_target" [B] are for subclasses' diagnostics (MOPO's real/imagined split); never logged
        return loss, {"loss/critic": loss.detach(), "q/mean": q.detach().mean(), "_q": q.detach(), "_target": target}

    def actor_loss(self, batch: Batch, obs: Tensor, progress: Progress | None = None) -> tuple[Tensor, dict]:
        act, log_prob = self.actor(obs)
        q = self.critic(obs, act).min(0).values  # [B]
        loss = (self.alpha * log_prob - q).mean()
        return loss, {"loss/actor": loss.detach(), "actor/entropy": -log_prob.detach().mean(), "_log_prob": log_prob}

    def alpha_loss(self, log_prob: Tensor) -> tuple[Tensor, dict]:
        loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
        return loss, {"loss/alpha": loss.detach(), "alpha": self.alpha}

    # --- update ------------------------------------------------------------------
    def update(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        obs, next_obs = self.normalizer(batch.obs), self.normalizer(batch.next_obs)
        info = self.critic_update(batch, obs, next_obs, progress)
        if self.policy_due():
            info |= self.policy_update(batch, obs, progress)
        soft_update(self.critic_target, self.critic, self.cfg.tau)
        self.num_updates += 1
        return info

    def critic_update(self, batch: Batch, obs: Tensor, next_obs: Tensor, progress: Progress) -> dict[str, Tensor]:
        critic_loss, info = self.critic_loss(batch, obs, next_obs, progress)
        self.step("critic", critic_loss)
        return info

    def policy_due(self) -> bool:
        """Whether this update also steps the actor and the temperature (every update in SAC)."""
        return True

    def policy_update(self, batch: Batch, obs: Tensor, progress: Progress) -> dict[str, Tensor]:
        # the actor reads the updated critic; its gradient must not reach the critic's params
        self.critic.requires_grad_(False)
        actor_loss, info = self.actor_loss(batch, obs, progress)
        self.step("actor", actor_loss)
        self.critic.requires_grad_(True)
        if self.actor_average is not None:
            soft_update(self.actor_average, self.actor, self.cfg.policy_average_tau)
        log_prob = info.pop("_log_prob")
        if self.cfg.auto_alpha:
            alpha_loss, alpha_info = self.alpha_loss(log_prob)
            self.step("alpha", alpha_loss)
            info |= alpha_info
        return info


def main() -> None:
    from agents.core.entry import run

    run(SAC, SACConfig, "sac")


if __name__ == "__main__":
    main()
