"""PEX: Zhang, Xu & Yu, "Policy Expansion for Bridging Offline-to-Online Reinforcement Learning", ICLR 2023
(reference code: Haichao-Zhang/PEX `pex/algorithms/pex.py`, `main_online.py`; ../shared/REFERENCES-O2O.md §8).

Offline: IQL (agents/iql.py). At the switch the trained actor is frozen as pi_offline and a fresh
policy pi_new joins it: the policy set {pi_offline, pi_new}. Each online action is one of the set's
candidates, a_1 = pi_offline's mode and a_2 ~ pi_new, picked by w ~ Categorical(softmax(inv_temperature
* score(s, a_i))), where the score is min(Q_1, Q_2)(s, a_i) of the online critics. Q and V keep IQL's
losses on buffer actions; pi_new learns by IQL's advantage-weighted regression on actions re-drawn
from the set at the batch states, exp(beta (min Q'(s, a) - V(s))) * -log pi_new(a|s), with V after its
step of the same update (as the reference). Batches are half offline, half online (`sampler: symmetric`).

`agent.selection_penalty=kappa` ranks the candidates by a lower confidence bound Q - kappa u(s, a_i)
instead, with u the shared uncertainty API (worldmodels/uncertainty.py; `agent.uncertainty=q_std`: the
std over this agent's critics; a dynamics estimator such as `ensemble_std` reads the world model's ensemble
when one is on); kappa = 0 is the paper's rule exactly (u is never computed).

Differences from the reference: no 5000-step collection before the first update (the trainer's
warm-up would act uniformly at random, PEX acts with the set); evaluation takes both modes and the
argmax (the reference keeps eps 0.1 sampling in each); pi_new uses the package's GaussianActor
(PyTorch default init, the reference xavier) with the reference's log-std floor -5.

    python -m agents.pex
    python -m agents.pex agent.selection_penalty=1.0   # LCB selection: Q - 1.0 * std_i Q_i
    # LCB by the dynamics ensemble's std; the model is fitted on the data but not rolled out (IQL trains on real
    # rows only, as the paper's); without world_model.rollouts=false PEX also trains on the model's rollouts
    python -m agents.pex world_model=ensemble world_model.rollouts=false agent.selection_penalty=1.0 \
        agent.uncertainty=ensemble_std
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from agents.core.agent import EnvSpec
from agents.core.config import ConfigError
from agents.core.networks import GaussianActor, adam
from agents.iql import IQL, IQLConfig, advantage_weighted_loss
from worldmodels.data.store import Batch
from worldmodels.progress import Progress
from worldmodels.uncertainty import UNCERTAINTIES, make_uncertainty

if TYPE_CHECKING:
    from worldmodels.dynamics import DynamicsEnsemble


@dataclass
class PEXConfig(IQLConfig):
    name: str = "pex"
    # main_online.py defaults: tau (expectile) 0.7, beta 10; the README's AntMaze commands use 0.9 / 10
    expectile: float = 0.7
    beta: float = 10.0
    inv_temperature: float = 10.0  # main_online.py --inv_temperature 10: logits = 10 * [Q(s, a_1), Q(s, a_2)]
    log_std_min: float = -5.0  # PEX GaussianPolicy clamps log-std to [-5, 2] (CORL's IQL: -20)
    normalize_obs: bool = False  # PEX feeds raw states (no state normalization)
    # selection by a lower confidence bound Q - kappa * u(s, a); 0 = the paper's rule (our extension)
    selection_penalty: float = 0.0
    # u for the LCB (worldmodels/uncertainty.py): q_std = the std over the agent's twin critics; a dynamics estimator
    # (aleatoric, disagreement, ensemble_std, total_variance) reads the world model's ensemble (world_model=ensemble)
    uncertainty: str = "q_std"


def selection_probs(q: Tensor, inv_temperature: float, u: Tensor | None = None, kappa: float = 0.0) -> Tensor:
    """softmax(inv_temperature * score) over candidates: q, u [B, K] -> [B, K]; score = q - kappa u, or q
    itself when kappa is 0 (the paper's rule, bit for bit)."""
    score = q if kappa == 0.0 else q - kappa * u
    return torch.softmax(inv_temperature * score, dim=-1)


class PEX(IQL):
    def __init__(self, cfg: PEXConfig, spec: EnvSpec, device: torch.device):
        if cfg.actor != "gaussian":
            raise ConfigError(f"agent.actor={cfg.actor!r}: PEX's policy set is Gaussian (agent.actor=gaussian).")
        if cfg.uncertainty not in UNCERTAINTIES:
            raise ConfigError(f"agent.uncertainty={cfg.uncertainty!r} is unknown; choose one of "
                              f"{', '.join(sorted(UNCERTAINTIES))}.")
        super().__init__(cfg, spec, device)
        scale, bias = spec.act_scale, spec.act_bias
        self.pi_offline = GaussianActor(spec.obs_dim, spec.act_dim, scale, bias, cfg.hidden, tanh_mean=True)
        self.pi_offline.requires_grad_(False)  # frozen: filled from the trained actor at the switch
        self.pi_new = GaussianActor(spec.obs_dim, spec.act_dim, scale, bias, cfg.hidden, tanh_mean=True)
        for actor in (self.actor, self.pi_offline, self.pi_new):
            actor.LOG_STD_MIN = cfg.log_std_min
        self.to(device)
        self.optimizers["pi_new"] = adam(self.pi_new.parameters(), cfg.actor_lr)  # PEX: no lr schedule online
        # the dynamics estimators read the run's world model, handed over by use_dynamics
        self.uncertainty = make_uncertainty("q_std", self.critic_values) if cfg.uncertainty == "q_std" else None
        self.expanded = False  # whether pi_offline holds the trained actor (checkpointed: the copy runs once)

    def critic_values(self, obs: Tensor, act: Tensor) -> Tensor:
        return self.critic(obs, act)  # [2, B]

    def extra_state(self) -> dict:
        return {"expanded": self.expanded}

    def load_extra_state(self, state: dict) -> None:
        self.expanded = state["expanded"]

    def on_phase(self, progress: Progress) -> None:
        """At the switch: freeze a copy of the offline-trained actor as pi_offline (once; resume keeps it)."""
        if progress.online and not self.expanded:
            self.pi_offline.load_state_dict(self.actor.state_dict())
            self.expanded = True

    def use_dynamics(self, model: DynamicsEnsemble | None) -> None:
        if self.cfg.uncertainty == "q_std":
            return
        if model is None:
            raise ConfigError(f"agent.uncertainty={self.cfg.uncertainty} reads the dynamics ensemble of a world model; "
                              "turn one on (world_model=ensemble, and world_model.rollouts=false to fit it for u "
                              "alone) or use agent.uncertainty=q_std.")
        self.uncertainty = make_uncertainty(self.cfg.uncertainty, model)

    def candidate_uncertainty(self, obs: Tensor, act: Tensor) -> Tensor:
        """u(s, a) [N] at normalized obs [N, obs]: the critics read them as they are, the dynamics ensemble
        (trained on the data's own states) in env units."""
        if self.uncertainty is None:
            raise RuntimeError(f"agent.uncertainty={self.cfg.uncertainty} needs use_dynamics(model) first")
        if self.cfg.uncertainty == "q_std":
            return self.uncertainty(obs, act)
        return self.uncertainty(self.normalizer.inverse(obs), act)

    # --- the policy set -------------------------------------------------------------
    def candidates(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        """[K=2, B, A]: pi_offline's mode and a draw from pi_new (its mode when deterministic)."""
        a_offline = self.pi_offline(obs, deterministic=True)[0]
        a_new = self.pi_new(obs, deterministic)[0]
        return torch.stack([a_offline, a_new])

    def selection(self, obs: Tensor, acts: Tensor) -> Tensor:
        """Selection probabilities [B, K] of the candidates acts [K, B, A] at normalized obs [B, obs]."""
        k, b = acts.shape[:2]
        obs_k, acts_k = obs.repeat(k, 1), acts.reshape(k * b, -1)  # [K*B, ...], candidate-major
        q = self.critic(obs_k, acts_k).min(0).values.view(k, b).T  # [B, K]
        kappa = self.cfg.selection_penalty
        u = self.candidate_uncertainty(obs_k, acts_k).view(k, b).T if kappa != 0.0 else None  # [B, K]
        return selection_probs(q, self.cfg.inv_temperature, u, kappa)

    def select(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor]:
        """(action [B, A], which candidate [B]) from the set at normalized obs."""
        acts = self.candidates(obs, deterministic)
        probs = self.selection(obs, acts)
        w = probs.argmax(-1) if deterministic else torch.multinomial(probs, 1).squeeze(-1)  # [B]
        return acts.gather(0, w.view(1, -1, 1).expand(1, *acts.shape[1:])).squeeze(0), w

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        if not self.expanded:
            return super().act(obs, deterministic)  # offline evaluation: the IQL actor
        return self.select(self.normalizer(obs), deterministic)[0]

    # --- online: pi_new by advantage-weighted regression on actions of the set ----------
    def actor_loss(self, batch: Batch, obs: Tensor, advantage: Tensor,
                   progress: Progress) -> tuple[Tensor | None, dict[str, Tensor]]:
        if progress.online:
            return None, {}  # the IQL actor is done: pi_offline holds it, pi_new learns after V's step (below)
        return super().actor_loss(batch, obs, advantage, progress)

    def update(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        info = super().update(batch, progress)  # IQL's V and Q steps (and its actor's, offline)
        if progress.online:
            info |= self.pi_new_update(self.normalizer(batch.obs))
        return info

    def pi_new_update(self, obs: Tensor) -> dict[str, Tensor]:
        """pi_new's step on actions re-drawn from the set, weighted by exp(beta A) with V after its step and the
        target critics after their Polyak step (the reference's order)."""
        with torch.no_grad():
            act, w = self.select(obs)
            advantage = self.critic_target(obs, act).min(0).values - self.v(obs)
        loss, info = advantage_weighted_loss(self.pi_new.log_prob(obs, act), advantage, self.cfg.beta,
                                             self.cfg.max_weight)
        self.step("pi_new", loss)
        return info | {"pex/new_share": w.float().mean()}


def main() -> None:
    from agents.core.entry import run

    run(PEX, PEXConfig, "pex")


if __name__ == "__main__":
    main()
