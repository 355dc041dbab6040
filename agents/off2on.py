"""Off2On: Lee, Seo, Lee, Abbeel & Shin, "Offline-to-Online Reinforcement Learning via Balanced Replay
and Pessimistic Q-Ensemble", CoRL 2021 (reference code: shlee94/Off2OnRL `rlkit/examples/ours.py`,
`rlkit/rlkit/torch/sac/ours.py`; ../shared/REFERENCES-O2O.md §9).

An ensemble of E CQL agents (agents/cql.py's losses), each a tanh-Gaussian actor and a twin critic,
held as ONE module with a member dimension: the actors are an `EnsembleTanhGaussianActor` (weights
[E, in, out]) and the E twin critics one `CriticEnsemble` of 2E critics (critic 2i + j is member i's
twin j), so the E offline CQL updates are one batched update. Online, the ensemble is fine-tuned with
plain SAC (no CQL term):

- acting and the policy = the moment-matched mixture of the members' Gaussians (pre-tanh): mean of
  the means, variance mean(sigma^2 + mu^2) - mean^2 (`mixture_moments`);
- member i's target r + gamma (1 - d) [min_j Q'_ij(s', a') - alpha log pi(a'|s')], a' from the mixture,
  the critics' losses summed over members;
- actor: alpha log pi(a|s) - mean_i min_j Q_ij(s, a), a from the mixture (the pessimistic Q-ensemble);
- a fresh temperature alpha = 1 and fresh Adam states (Off2OnRL loads only the networks' weights).

Balanced replay is the sampler's job (`sampler: balanced` in configs/off2on.yaml,
worldmodels/data/density_ratio.py): any agent can use it, and Off2On with another sampler is the
ensemble alone. Two orderings differ from the reference: the actor reads the critics after this
update's critic step (as agents/sac.py, so the offline phase equals E separate CQL updates), and
Off2OnRL's first online epoch of 10x updates is not reproduced.

    python -m agents.off2on
    python -m agents.off2on sampler=uniform   # the pessimistic ensemble without balanced replay
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agents.core.agent import Agent, EnvSpec
from agents.core.config import ConfigError
from agents.core.networks import CriticEnsemble, EnsembleTanhGaussianActor, ObsNormalizer, adam, soft_update
from agents.cql import CQLConfig, cql_penalty
from worldmodels.data.store import Batch
from worldmodels.progress import Progress
from worldmodels.uncertainty import QEnsembleStd


@dataclass
class Off2OnConfig(CQLConfig):
    name: str = "off2on"
    ensemble_size: int = 5  # Off2OnRL --ensemble_size 5 CQL agents (seeds i*4 + seed)
    hidden: list[int] = field(default_factory=lambda: [256, 256])  # Off2OnRL: Q and policy 2 x 256
    # offline phase: CQL per member; agents/cql.py's defaults (CORL; Off2OnRL ships pretrained CQL weights
    # and not its pretraining config: the CQL authors' gym setting, policy lr 1e-4, min_q_weight 5, matches)
    cql_alpha: float = 5.0  # CQL authors' gym min_q_weight 5 (agents/cql.py)
    alpha_online: float | None = None  # unused: Off2On drops the CQL term online (Off2OnRL ours.py)
    # online phase: plain SAC on the ensemble (Off2OnRL ours.py)
    online_actor_lr: float = 3e-4  # Off2OnRL --policy_lr 3e-4
    online_critic_lr: float = 3e-4  # Off2OnRL --lr 3e-4 (qf_lr)
    online_alpha_lr: float = 3e-4  # Off2OnRL alpha_lr = policy_lr
    online_init_alpha: float = 1.0  # Off2OnRL init_alpha=1.0, a fresh temperature at the switch
    tau: float = 5e-3  # Off2OnRL soft_target_tau 5e-3
    gamma: float = 0.99  # Off2OnRL discount 0.99


class Off2On(Agent):
    def __init__(self, cfg: Off2OnConfig, spec: EnvSpec, device: torch.device):
        if cfg.ensemble_size < 1:
            raise ConfigError(f"agent.ensemble_size={cfg.ensemble_size} must be at least 1.")
        if cfg.num_critics != 2:
            raise ConfigError(f"agent.num_critics={cfg.num_critics}: Off2On's members are twin critics (2).")
        if cfg.bc_steps:
            raise ConfigError("agent.bc_steps: Off2On has no BC warm-up; leave it at 0.")
        if cfg.policy_average_tau:
            raise ConfigError("agent.policy_average_tau: Off2On acts with its members' moment-matched mixture, "
                              "which has no averaged copy; leave it at 0.")
        if cfg.pessimism_beta and type(self).target_value is Off2On.target_value:  # read by agents/upq.py only
            raise ConfigError("agent.pessimism_beta: Off2On's target has no uncertainty penalty; UPQ "
                              "(python -m agents.upq) is Off2On with it.")
        super().__init__(cfg, spec, device)
        e = cfg.ensemble_size
        self.normalizer = ObsNormalizer(spec.obs_dim)
        self.actor = EnsembleTanhGaussianActor(spec.obs_dim, spec.act_dim, spec.act_scale, spec.act_bias,
                                               cfg.hidden, e)
        # 2i + j: member i, twin j
        self.critic = CriticEnsemble(spec.obs_dim, spec.act_dim, 2 * e, cfg.hidden, cfg.critic_layer_norm)
        self.critic_target = CriticEnsemble(spec.obs_dim, spec.act_dim, 2 * e, cfg.hidden, cfg.critic_layer_norm)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.full((e,), math.log(cfg.init_alpha)))  # [E] offline, per member
        self.log_alpha_prime = nn.Parameter(torch.full((e,), float(cfg.init_log_alpha_prime)))  # [E]
        self.log_alpha_online = nn.Parameter(torch.tensor(math.log(cfg.online_init_alpha)))  # shared online
        self.target_entropy = -float(spec.act_dim) if cfg.target_entropy is None else cfg.target_entropy
        self.uniform_log_density = -float((spec.act_high - spec.act_low).log().sum())
        self.to(device)
        # the online phase steps its own optimizers: fresh Adam states and lrs, no switch state to resume
        self.optimizers = {
            "actor": adam(self.actor.parameters(), cfg.actor_lr),
            "critic": adam(self.critic.parameters(), cfg.critic_lr),
            "alpha": adam([self.log_alpha], cfg.alpha_lr),
            "alpha_prime": adam([self.log_alpha_prime], cfg.critic_lr),  # CORL: lr = qf_lr
            "actor_online": adam(self.actor.parameters(), cfg.online_actor_lr),
            "critic_online": adam(self.critic.parameters(), cfg.online_critic_lr),
            "alpha_online": adam([self.log_alpha_online], cfg.online_alpha_lr),
        }

    def alpha(self, progress: Progress) -> Tensor:
        """[E, 1] per-member temperatures offline, the shared one online (detached)."""
        return (self.log_alpha_online if progress.online else self.log_alpha.unsqueeze(1)).detach().exp()

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        return self.actor.mixture(self.normalizer(obs), deterministic)[0]

    def member_q(self, critic: CriticEnsemble, obs: Tensor, act: Tensor) -> Tensor:
        """Every member's twin Q values [E, 2, B]; obs [B, obs] and act [B, A] (shared) or [E, B, A]
        (member i's actions go to member i's twins)."""
        if act.dim() == 3:
            act = act.repeat_interleave(2, 0)  # [2E, B, A]
            obs = obs.expand(act.shape[0], *obs.shape)  # [2E, B, obs], a view
        return critic(obs, act).view(self.cfg.ensemble_size, 2, -1)

    # --- losses ------------------------------------------------------------------
    def target_value(self, batch: Batch, next_obs: Tensor, progress: Progress) -> Tensor:
        """Member i's value of s' [E, B]. Offline (CQL): min_j Q'_ij(s', a'), a' ~ pi_i(s'), no entropy
        term (max over n a' with max_target_backup). Online (SAC): min_j Q'_ij(s', a') - alpha log pi(a'|s'),
        a' from the mixture. The one Bellman-target hook (UPQ overrides it)."""
        e = self.cfg.ensemble_size
        if progress.online:
            next_act, next_log_prob = self.actor.mixture(next_obs)  # [B, A], [B]
            next_q = self.member_q(self.critic_target, next_obs, next_act).min(1).values  # [E, B]
            return next_q - self.alpha(progress) * next_log_prob
        n = self.cfg.n_actions if self.cfg.max_target_backup else 1
        next_act, _ = self.actor(next_obs, samples=n)  # [E, B*n, A], state-major
        next_q = self.member_q(self.critic_target, next_obs.repeat_interleave(n, 0), next_act).min(1).values
        return next_q.view(e, -1, n).max(2).values  # [E, B]

    def conservative_q(self, batch: Batch, obs: Tensor, next_obs: Tensor) -> tuple[Tensor, Tensor]:
        """CQL's sets per member, in one critic call: Q of dataset actions [2E, B] and the importance-
        weighted OOD set [2E, B, 3n] (n uniform, n of pi_i(s'), n of pi_i(s), all evaluated at s)."""
        e, b, n, a = self.cfg.ensemble_size, obs.shape[0], self.cfg.n_actions, self.spec.act_dim
        low, high = self.spec.act_low.to(self.device), self.spec.act_high.to(self.device)
        with torch.no_grad():
            unif = (low + torch.rand((e, b * n, a), device=self.device) * (high - low)).view(e, b, n, a)
            pi_act, pi_log_prob = self.actor(torch.cat([next_obs, obs]), samples=n)  # [E, 2Bn, ...]
            pi_act = pi_act.view(e, 2, b, n, a).transpose(1, 2).reshape(e, b, 2 * n, a)  # pi(s'), pi(s)
            pi_log_prob = pi_log_prob.view(e, 2, b, n).transpose(1, 2).reshape(e, 1, b, 2 * n)  # both twins
        acts = torch.cat([batch.act.expand(e, b, a).unsqueeze(2), unif, pi_act], 2)  # [E, B, 1 + 3n, A]
        m = acts.shape[2]
        obs_m = obs.unsqueeze(1).expand(b, m, obs.shape[1]).reshape(b * m, -1)  # [B*m, obs]
        q = self.member_q(self.critic, obs_m, acts.reshape(e, b * m, a)).view(e, 2, b, m)
        q_ood = torch.cat([q[..., 1:1 + n] - self.uniform_log_density, q[..., 1 + n:] - pi_log_prob], -1)
        return q[..., 0].flatten(0, 1), q_ood.flatten(0, 1)  # [2E, B], [2E, B, 3n]

    def critic_loss(self, batch: Batch, obs: Tensor, next_obs: Tensor, progress: Progress) -> tuple[Tensor, dict]:
        """Summed over members and twins: MSE to member i's target, plus offline the CQL penalty."""
        cfg = self.cfg
        with torch.no_grad():
            target = batch.rew + cfg.gamma * (1.0 - batch.terminal) * self.target_value(batch, next_obs, progress)
        target = target.repeat_interleave(2, 0)  # [2E, B]: both twins of a member share its target
        if progress.online:  # plain SAC: no CQL term (Off2OnRL ours.py)
            q_data, info = self.member_q(self.critic, obs, batch.act).flatten(0, 1), {}  # [2E, B]
            penalty = torch.zeros((), device=self.device)
        else:
            q_data, q_ood = self.conservative_q(batch, obs, next_obs)
            diff, info = cql_penalty(q_ood, q_data, cfg.temperature, cfg.clip_diff_min, cfg.clip_diff_max)  # [2E]
            if cfg.lagrange:
                alpha_prime = self.log_alpha_prime.exp().clamp(0.0, 1e6).repeat_interleave(2)  # [2E]
                penalty = alpha_prime.detach() * cfg.cql_alpha * (diff - cfg.target_action_gap)
                gap = alpha_prime * cfg.cql_alpha * (diff.detach() - cfg.target_action_gap)
                info["_alpha_prime_loss"] = -gap.view(-1, 2).mean(1).sum()  # CQL's per member
                info["cql/alpha_prime"] = alpha_prime.detach().mean()
            else:
                penalty = cfg.cql_alpha * diff
        td = F.mse_loss(q_data, target, reduction="none").mean(1)  # [2E]
        loss = (td + penalty).sum()
        member_q = q_data.detach().view(-1, 2, q_data.shape[1]).min(1).values  # [E, B]
        spread = QEnsembleStd.from_prediction(member_q).mean() if cfg.ensemble_size > 1 else member_q.new_zeros(())
        return loss, info | {"loss/critic": loss.detach(), "loss/td": td.detach().sum(), "q/member_std": spread,
                             "loss/cql": penalty.detach().sum(), "q/mean": q_data.detach().mean()}

    def actor_loss(self, batch: Batch, obs: Tensor, progress: Progress) -> tuple[Tensor, dict]:
        """Offline: each member's SAC actor on its own twins (summed over members). Online: the mixture
        against mean_i min_j Q_ij."""
        alpha = self.alpha(progress)
        if progress.online:
            act, log_prob = self.actor.mixture(obs)  # [B, A], [B]
            q = self.member_q(self.critic, obs, act).min(1).values.mean(0)  # [B]
            loss = (alpha * log_prob - q).mean()
        else:
            act, log_prob = self.actor(obs)  # [E, B, A], [E, B]
            q = self.member_q(self.critic, obs, act).min(1).values  # [E, B]
            loss = (alpha * log_prob - q).mean(1).sum()
        return loss, {"loss/actor": loss.detach(), "actor/entropy": -log_prob.detach().mean(), "_log_prob": log_prob}

    def alpha_loss(self, log_prob: Tensor, progress: Progress) -> tuple[Tensor, dict]:
        """SAC's temperature loss: per member offline (log_prob [E, B]), shared online ([B])."""
        if progress.online:
            loss = -(self.log_alpha_online * (log_prob.detach() + self.target_entropy)).mean()
        else:
            loss = -(self.log_alpha.unsqueeze(1) * (log_prob.detach() + self.target_entropy)).mean(1).sum()
        return loss, {"loss/alpha": loss.detach(), "alpha": self.alpha(progress).mean()}

    # --- update: SAC's order (critics, then actor on the updated critics, then alpha) ---------------
    def update(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        phase = "_online" if progress.online else ""
        obs, next_obs = self.normalizer(batch.obs), self.normalizer(batch.next_obs)
        loss, info = self.critic_loss(batch, obs, next_obs, progress)
        self.step("critic" + phase, loss)
        if "_alpha_prime_loss" in info:
            self.step("alpha_prime", info.pop("_alpha_prime_loss"))
        self.critic.requires_grad_(False)  # the actor's gradient must not reach the critics
        loss, actor_info = self.actor_loss(batch, obs, progress)
        self.step("actor" + phase, loss)
        self.critic.requires_grad_(True)
        log_prob = actor_info.pop("_log_prob")
        if self.cfg.auto_alpha:
            loss, alpha_info = self.alpha_loss(log_prob, progress)
            self.step("alpha" + phase, loss)
            actor_info |= alpha_info
        soft_update(self.critic_target, self.critic, self.cfg.tau)
        self.num_updates += 1
        return info | actor_info


def main() -> None:
    from agents.core.entry import run

    run(Off2On, Off2OnConfig, "off2on")


if __name__ == "__main__":
    main()
