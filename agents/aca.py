"""ACA: Yu & Zhang, "Actor-Critic Alignment for Offline-to-Online Reinforcement Learning", ICML 2023
(reference code: ZishunYu/Actor-Critic-Alignment, d3rlpy v1; ../shared/REFERENCES-O2O.md §12).

Offline (SAC+ML, the reference's `sacml_impl.py`): SAC whose actor loss adds a maximum-likelihood term,

    lambda (alpha log pi(b|s) - min_i Q_i(s, b)) - log pi(a|s),   b ~ pi(s),   lambda = c / mean|Q| (detached),

and a state baseline ensemble Z_i(s), fitted jointly by the Bellman residual of log pi(a|s) + Z_i(s):

    (log pi(a|s) + Z_i(s) - y)^2,   y = r + gamma (1 - d) (log pi(a'|s') + min_i Z_i(s') - alpha log pi(a'|s')),

with a' ~ pi(s') and no target network for Z.

At the switch (`on_phase` entering the online phase; done once, a saved flag makes it idempotent):
pi_0 becomes a frozen copy of the offline actor; the critics become the residual R of

    Q_i(s, a) = R_i(s, a) + w softclip(log pi_0(a|s)),   softclip(x) = softplus(x - f) + f,

with R_i initialised as Z_i (Z_i's weights, zero weights on the action inputs of the first layer, so
R_i(s, a) = Z_i(s) and Q does not jump; targets synced, `utility.critic_init`); the temperature is reset
to 1 (`run_aca.py`). The floor f = min over the two signs of log pi_0(tanh(mu +- beta sigma)) keeps the
log-likelihood from running to -inf. Online, SAC's losses run on that Q (the pi_0 term is a constant in
the critic's regression and a differentiable function of the action in the actor's), w falls linearly
from `w_start` to `w_floor` over `w_decay_updates` online updates, the actor's gradient norm is clipped
to 0.25, Z is no longer trained, and batches hold online rows only (configs/aca.yaml `sampler:
online_only`), the online store seeded at the switch with the 50 highest-return dataset episodes as the
reference does for medium-replay, medium-expert and expert (`sampler.online_seed_top_episodes`; 0 for
medium and random). Optimizer states carry over the switch, as d3rlpy's `load_model` restores them.

The inherited SAC defaults are the reference's: lr 3e-4 (actor, critic, temperature), 256x2, 2 critics
with the min target, gamma 0.99, tau 5e-3, temperature from 1, target entropy -|A| (`run_sacml.py`,
`run_aca.py`, d3rlpy v1 SAC defaults). The reference's update order is temperature, critic, Z, actor;
here (as in agents/sac.py) critic, Z, actor, temperature.

    python -m agents.aca
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Normal

from agents.core.agent import EnvSpec
from agents.core.config import ConfigError
from agents.core.networks import CriticEnsemble, TanhGaussianActor, ValueEnsemble, adam
from agents.sac import SAC, SACConfig
from worldmodels.data.store import Batch
from worldmodels.progress import Progress


@dataclass
class ACAConfig(SACConfig):
    name: str = "aca"
    ml_weight: float = 30.0  # c in lambda = c / mean|Q|: the reference's offline configs, alpha: 30 (mjc)
    baseline_lr: float = 3e-4  # Z's Adam lr: run_sacml.py baseline_learning_rate=3e-4
    # the floor at mu +- beta sigma: configs/online beta 7 (random/medium/medium-replay), 15 (expert/medium-expert)
    clip_beta: float = 7.0
    w_start: float = 1.0  # interpolation[0] = 1 in every configs/online/*.yaml
    # interpolation[1] * 1000 (aca.py hard-codes 1000 updates per unit): k = 40 medium & medium-replay,
    # 10 random, 100 expert/medium-expert
    w_decay_updates: int = 40_000
    w_floor: float = 0.5  # interpolation[2]: 0.5 medium & medium-replay, 0 random, 1 expert/medium-expert
    online_init_alpha: float = 1.0  # run_aca.py resets the log-temperature to 0 at the switch
    actor_grad_clip: float = 0.25  # aca_impl.py update_actor: clip_grad_norm_(policy, 0.25), online only


# --- the pieces as functions -----------------------------------------------------------------
def ml_actor_loss(q: Tensor, log_prob: Tensor, data_log_prob: Tensor, alpha: Tensor | float,
                  ml_weight: float) -> tuple[Tensor, dict]:
    """lambda (alpha log pi(b|s) - Q(s, b)) - log pi(a|s), lambda = c / mean|Q| (not back-propagated)."""
    lmbda = ml_weight / q.abs().mean().detach()
    nll = -data_log_prob.mean()
    loss = lmbda * (alpha * log_prob - q).mean() + nll
    return loss, {"loss/actor": loss.detach(), "loss/nll": nll.detach(), "actor/lambda": lmbda}


def baseline_loss(z: Tensor, data_log_prob: Tensor, target: Tensor) -> tuple[Tensor, dict]:
    """sum_i mean_B (log pi(a|s) + Z_i(s) - y)^2 with z [N, B], data_log_prob and target [B]."""
    residual = data_log_prob + z - target  # [N, B]
    loss = residual.square().mean(1).sum()
    return loss, {"loss/baseline": loss.detach(), "q/baseline_mean": z.detach().mean()}


def soft_clip(log_prob: Tensor, floor: Tensor) -> Tensor:
    """softplus(x - f) + f: x where x >> f, f where x << f, smooth in between (aca_impl.py clip_log_pi)."""
    return F.softplus(log_prob - floor) + floor


def squashed_log_prob(dist: Normal, pre_tanh: Tensor, act_scale: Tensor) -> Tensor:
    """log-density [B] in env units of the action tanh(pre_tanh) * scale + bias (TanhGaussianActor's)."""
    log_det = 2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))
    return (dist.log_prob(pre_tanh) - log_det).sum(-1) - torch.log(act_scale).sum()


def log_prob_floor(actor: TanhGaussianActor, obs: Tensor, beta: float) -> Tensor:
    """min over +- of log pi(tanh(mu +- beta sigma)|s) [B], the soft clip's floor (no gradient)."""
    with torch.no_grad():
        dist = actor.distribution(obs)
        low, high = (squashed_log_prob(dist, dist.mean + sign * beta * dist.stddev, actor.act_scale)
                     for sign in (-1.0, 1.0))
        return torch.minimum(low, high)


def alignment_weight(online_updates: int, start: float, decay_updates: int, floor: float) -> float:
    """w after n online updates: from `start`, down by start / decay_updates per update, never below `floor`."""
    return max(start * (1.0 - online_updates / decay_updates), floor)


@torch.no_grad()
def critic_from_baseline(critic: CriticEnsemble, baseline: ValueEnsemble, obs_dim: int) -> None:
    """Critic i <- Z_i with zero first-layer weights on the action inputs, so critic(s, a) = Z(s)."""
    first, z_first = critic.hidden[0], baseline.hidden[0]
    first.weight[:, :obs_dim].copy_(z_first.weight)  # weight [N, in, out], in = obs then act
    first.weight[:, obs_dim:].zero_()
    first.bias.copy_(z_first.bias)
    for layer, z_layer in zip([*critic.hidden[1:], critic.head], [*baseline.hidden[1:], baseline.head], strict=True):
        layer.load_state_dict(z_layer.state_dict())


class ACA(SAC):
    def __init__(self, cfg: ACAConfig, spec: EnvSpec, device: torch.device):
        if cfg.w_decay_updates < 1 or cfg.actor_grad_clip <= 0:
            raise ConfigError(f"agent.w_decay_updates={cfg.w_decay_updates} must be at least 1 and "
                              f"agent.actor_grad_clip={cfg.actor_grad_clip} positive.")
        if cfg.pessimism_beta:  # the aligned critic's online target has no place for U; refuse, never ignore
            raise ConfigError(f"agent.pessimism_beta={cfg.pessimism_beta}: ACA's aligned critic does not take the "
                              "Q-ensemble penalty; leave it at 0.")
        if cfg.critic_layer_norm:  # critic_from_baseline copies a plain MLP's layers; refuse rather than ignore
            raise ConfigError("agent.critic_layer_norm=true: ACA's critic is re-parameterized from a value "
                              "network without LayerNorm; leave it false.")
        super().__init__(cfg, spec, device)
        self.baseline = ValueEnsemble(spec.obs_dim, cfg.num_critics, cfg.hidden).to(device)  # Z, as many as critics
        self.ref_actor = TanhGaussianActor(spec.obs_dim, spec.act_dim, spec.act_scale, spec.act_bias,
                                           cfg.hidden).to(device)  # pi_0, filled at the switch
        self.ref_actor.requires_grad_(False)
        self.optimizers["baseline"] = adam(self.baseline.parameters(), cfg.baseline_lr)
        self.switched = False

    def extra_state(self) -> dict:
        return {"switched": self.switched}

    def load_extra_state(self, state: dict) -> None:
        self.switched = state["switched"]

    # --- the switch --------------------------------------------------------------------
    def on_phase(self, progress: Progress) -> None:
        if progress.online and not self.switched:
            self.switch()
            self.switched = True

    @torch.no_grad()
    def switch(self) -> None:
        self.ref_actor.load_state_dict(self.actor.state_dict())
        critic_from_baseline(self.critic, self.baseline, self.spec.obs_dim)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.log_alpha.fill_(math.log(self.cfg.online_init_alpha))

    def weight(self, progress: Progress) -> float:
        """w for this update: a function of the online updates done so far (resumes exactly)."""
        c = self.cfg
        return alignment_weight(progress.updates - progress.offline_updates, c.w_start, c.w_decay_updates, c.w_floor)

    def prior(self, obs: Tensor, act: Tensor) -> Tensor:
        """softclip(log pi_0(a|s)) [B]; differentiable in the action, pi_0 frozen."""
        return soft_clip(self.ref_actor.log_prob(obs, act), log_prob_floor(self.ref_actor, obs, self.cfg.clip_beta))

    def aligned_q(self, critic: CriticEnsemble, obs: Tensor, act: Tensor, w: float) -> Tensor:
        """Q_i(s, a) = R_i(s, a) + w softclip(log pi_0(a|s)): [N, B]."""
        return critic(obs, act) + w * self.prior(obs, act)

    # --- losses ------------------------------------------------------------------------
    def critic_loss(self, batch: Batch, obs: Tensor, next_obs: Tensor,
                    progress: Progress | None = None) -> tuple[Tensor, dict]:
        if not self.switched:
            return super().critic_loss(batch, obs, next_obs, progress)
        w = self.weight(progress)
        with torch.no_grad():
            next_act, next_log_prob = self.actor(next_obs)
            next_q = self.aligned_q(self.critic_target, next_obs, next_act, w).min(0).values  # [B]
            next_v = next_q - self.alpha * next_log_prob
            target = batch.rew + self.cfg.gamma * (1.0 - batch.terminal) * next_v
            prior = w * self.prior(obs, batch.act)  # [B], a constant in the regression
        q = self.critic(obs, batch.act) + prior  # [N, B]
        loss = F.mse_loss(q, target.expand_as(q), reduction="none").mean(1).sum()
        return loss, {"loss/critic": loss.detach(), "q/mean": q.detach().mean(),
                      "aca/w": torch.full((), w, device=q.device)}

    def actor_loss(self, batch: Batch, obs: Tensor, progress: Progress | None = None) -> tuple[Tensor, dict]:
        act, log_prob = self.actor(obs)
        if self.switched:
            q = self.aligned_q(self.critic, obs, act, self.weight(progress)).min(0).values  # [B]
            loss = (self.alpha * log_prob - q).mean()
            info = {"loss/actor": loss.detach()}
        else:
            q = self.critic(obs, act).min(0).values  # [B]
            loss, info = ml_actor_loss(q, log_prob, self.actor.log_prob(obs, batch.act), self.alpha,
                                       self.cfg.ml_weight)
        return loss, info | {"actor/entropy": -log_prob.detach().mean(), "_log_prob": log_prob}

    def baseline_loss(self, batch: Batch, obs: Tensor, next_obs: Tensor) -> tuple[Tensor, dict]:
        with torch.no_grad():
            _, next_log_prob = self.actor(next_obs)
            next_v = next_log_prob + self.baseline(next_obs).min(0).values - self.alpha * next_log_prob
            target = batch.rew + self.cfg.gamma * (1.0 - batch.terminal) * next_v
            data_log_prob = self.actor.log_prob(obs, batch.act)
        return baseline_loss(self.baseline(obs), data_log_prob, target)

    # --- update: SAC's, plus Z offline and the clipped actor step online ----------------
    def critic_update(self, batch: Batch, obs: Tensor, next_obs: Tensor, progress: Progress) -> dict[str, Tensor]:
        info = super().critic_update(batch, obs, next_obs, progress)
        if not self.switched:
            loss, z_info = self.baseline_loss(batch, obs, next_obs)
            self.step("baseline", loss)
            info |= z_info
        return info

    def step(self, name: str, loss: Tensor) -> None:
        if name != "actor" or not self.switched:
            return super().step(name, loss)
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.actor.parameters(), self.cfg.actor_grad_clip)
        opt.step()


def main() -> None:
    from agents.core.entry import run

    run(ACA, ACAConfig, "aca")


if __name__ == "__main__":
    main()
