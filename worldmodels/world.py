"""The world model as the trainer sees it: which batches an agent learns from.

The null world model (the default of every agent; `world_model=none`, or horizon 0, or real
share 1) has no model store and never fits or rolls out, so a model-free agent is exactly the
zero-rollout case. `world_model.rollouts=false` fits (and refits) the ensemble but never rolls it
out: a model for the uncertainty API alone (PEX's dynamics lower bound), the agent trains on real data.
The ensemble world model fits a DynamicsEnsemble on real data and runs
penalized branched rollouts into a model store that keeps the last `keep_rounds` rounds: every
`rollout.every` updates, or online right after each refit (`rollout.schedule=refit`, MOORe).
How many imagined rows go into a batch is the batch sampler's decision
(worldmodels/data/samplers.py), from `rollout.real_ratio`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from worldmodels.data.store import Batch, TransitionStore
from worldmodels.dynamics import DynamicsEnsemble, FitReport
from worldmodels.rollout import RolloutConfig, RolloutResult, rollout
from worldmodels.termination import termination_fn_for
from worldmodels.uncertainty import make_uncertainty


@dataclass
class WorldModelConfig:
    kind: str = "none"  # none | ensemble
    ensemble_size: int = 7  # MOPO (Yu et al. 2020) / MBPO
    num_elites: int = 5  # MOPO / MBPO
    hidden: list[int] = field(default_factory=lambda: [200, 200, 200, 200])  # MOPO / MBPO: 4 x 200
    lr: float = 1e-3  # MOPO / OfflineRL-Kit
    weight_decays: list[float] | None = None  # per layer; None = MBPO/MOPO's 2.5e-5 .. 1e-4 spread over the layers
    uncertainty: str = "aleatoric"  # MOPO's max aleatoric std; see worldmodels/uncertainty.py for the others
    uncertainty_members: str = "all"  # all | elites: members the estimator reads (MOPO reference: all)
    # null: rollout.penalty_coef multiplies `uncertainty` itself (MOPO). An estimator's name (e.g. aleatoric): the
    # coefficient is read in that estimator's units, so the per-dataset lambdas of configs/rollout/ (tuned for
    # MOPO's aleatoric penalty) keep their strength when another estimator ranks errors better. After each fit
    # the first rollout round sets scale = mean u_units / mean u over its start states and their logged actions
    # (real transitions), and every round penalizes with penalty_coef * scale * u (ours; `model/penalty_scale`).
    penalty_units: str | None = None
    # null: rollout.penalty_coef is in this dataset's reward units (MOPO as written). "d4rl": it is in D4RL's
    # reward units for the env, as the per-dataset lambdas of configs/rollout/ were tuned (OfflineRL-Kit, MOPO on
    # D4RL), and is multiplied by (this dataset's ref_max - ref_min) / (D4RL's ref_max - ref_min), so that
    # lambda * u keeps its share of the random-to-expert return range (ours; `model/penalty_reward_units`).
    # Why: on a recipe dataset whose expert returns 862 rather than D4RL's 12135, lambda 0.5 taught -1.4 per step of
    # penalty against a whole random-to-expert range of 1.2 per step (README, "Why MOPO/MOORe fell").
    penalty_reward_units: str | None = None
    termination: str = "auto"  # auto: the env's known rule, else a learned head | learned | none
    propagation: str = "random_elite"  # random_elite (MBPO/MOPO) | mean
    # auto: bf16 autocast for fitting where the device multiplies bf16 natively, else float32 (our choice, measured
    # to fit as well as float32 by benchmarks/model_precision.py; see DynamicsEnsemble) | float32 | bfloat16
    train_precision: str = "auto"
    # standardize the regression targets (delta obs, reward) as well as the inputs (our original behaviour); false =
    # raw-unit targets, as MBPO (Janner et al. 2019) and OfflineRL-Kit's MOPO. See DynamicsEnsemble. True: measured
    # better on the default dataset (HalfCheetah medium-replay, CPU, seed 0). `python -m agents.tools.calibration
    # threads=1 world_model.normalize_targets=true|false` (30 epochs): holdout MSE in the same (train-std) units
    # 0.091 vs 0.493, NLL -0.55 vs 0.81, aleatoric 1-step Spearman/AUROC on medium-expert 0.67/0.82 vs 0.51/0.81,
    # 5-step state error 1.59 vs 2.63; with early stopping (fit_max_epochs=null, ~175 epochs) nearly tied (MSE 0.039 vs
    # 0.047, Spearman 0.69 vs 0.69). `python -m agents.mopo threads=1 [seed=1] world_model.normalize_targets=...`:
    # offline score 46.8, 58.4 vs 39.6, 32.6; online -140.7, -22.8 vs 22.8, -10.1 (the quick online phase is noise).
    normalize_targets: bool = True
    fit_max_epochs: int | None = None  # None = early stopping only (MOPO)
    fit_max_seconds: float | None = None  # wall-clock cap per fit (None = none)
    refit_every: int = 0  # online env steps between refits on offline + online data (0 = never)
    load_path: str | None = None  # a saved DynamicsEnsemble to use instead of fitting offline
    # false: fit (and refit) the ensemble, never roll it out; it serves the uncertainty API alone (e.g. PEX's
    # `agent.uncertainty=ensemble_std` lower bound on a model-free agent) and the rollout group is not read (ours)
    rollouts: bool = True


KINDS = ("none", "ensemble")
# D4RL's reference returns (random, expert) per MuJoCo env: d4rl/gym_mujoco/__init__.py (Fu et al. 2020), the
# normalization every D4RL-tuned lambda was measured under. Keyed by the env's name without its version.
D4RL_REF_SCORES = {"HalfCheetah": (-280.178953, 12135.0), "Hopper": (-20.272305, 3234.3),
                   "Walker2d": (1.629008, 4592.3), "Ant": (-325.6, 3879.7)}
MOPO_WEIGHT_DECAYS = (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4)  # MBPO / MOPO, for 4 hidden layers + output


def weight_decays(cfg: WorldModelConfig) -> list[float]:
    if cfg.weight_decays is not None:
        return list(cfg.weight_decays)
    layers = len(cfg.hidden) + 1
    if layers == len(MOPO_WEIGHT_DECAYS):
        return list(MOPO_WEIGHT_DECAYS)
    return torch.linspace(MOPO_WEIGHT_DECAYS[0], MOPO_WEIGHT_DECAYS[-1], layers).tolist()


def d4rl_reward_units(env_id: str | None, ref_min: float | None, ref_max: float | None) -> float:
    """(ref_max - ref_min) / (D4RL's ref_max - ref_min) for the env: the factor that turns a lambda tuned on D4RL
    into this dataset's reward units (world_model.penalty_reward_units=d4rl). Raises ValueError, naming the fix,
    when the env has no D4RL reference or the dataset has no reference returns."""
    name = (env_id or "").split("-")[0]
    if name not in D4RL_REF_SCORES:
        raise ValueError(f"world_model.penalty_reward_units=d4rl: {env_id} has no D4RL reference returns (known: "
                         f"{', '.join(D4RL_REF_SCORES)}); set world_model.penalty_reward_units=null.")
    if ref_min is None or ref_max is None or ref_max <= ref_min:
        raise ValueError(f"world_model.penalty_reward_units=d4rl needs the dataset's ref_min_score < ref_max_score "
                         f"(got {ref_min}, {ref_max}); use a recipe dataset or set "
                         "world_model.penalty_reward_units=null.")
    d4rl_min, d4rl_max = D4RL_REF_SCORES[name]
    return (ref_max - ref_min) / (d4rl_max - d4rl_min)


def is_null(cfg: WorldModelConfig, rollout_cfg: RolloutConfig) -> bool:
    """No model at all: none, or a model whose rollouts would add nothing (h = 0, real share 1)."""
    return cfg.kind == "none" or (cfg.rollouts and (rollout_cfg.horizon == 0 or rollout_cfg.real_ratio >= 1.0))


class WorldModel:
    """Dynamics ensemble + model store + rollout schedule. Build with `make_world_model`."""

    def __init__(self, cfg: WorldModelConfig, rollout_cfg: RolloutConfig, obs_dim: int, act_dim: int,
                 env_id: str | None, device: torch.device, reward_units: float = 1.0):
        self.cfg, self.rollout_cfg, self.device = cfg, rollout_cfg, device
        self.reward_units = reward_units  # lambda's reward-unit factor (world_model.penalty_reward_units); 1 = none
        self.null = is_null(cfg, rollout_cfg)
        self.imagines = not self.null and cfg.rollouts  # rolls out into a model store (false: fitted for u only)
        self.model: DynamicsEnsemble | None = None
        self.store: TransitionStore | None = None
        self.fitted = False
        self.rounds = 0
        self.last_rollout: RolloutResult | None = None
        self.last_fit: FitReport | None = None
        self._metrics: dict[str, float] = {}  # the latest fit's and rollout's figures; checkpointed
        if cfg.penalty_reward_units is not None:
            self._metrics["model/penalty_reward_units"] = reward_units
        # lambda's unit conversion (world_model.penalty_units); None = due at the next round. 1.0 when unset.
        self.penalty_scale: float | None = 1.0 if cfg.penalty_units is None else None
        if self.null:
            return
        if cfg.load_path:
            self.model = DynamicsEnsemble.load(cfg.load_path, device)
            self.fitted = True
        else:
            self.model = make_dynamics(cfg, obs_dim, act_dim, env_id, device)
        self.uncertainty = make_uncertainty(cfg.uncertainty, self.model, members=cfg.uncertainty_members)
        self.units = (None if cfg.penalty_units is None else
                      make_uncertainty(cfg.penalty_units, self.model, members=cfg.uncertainty_members))
        if not self.imagines:
            return
        r = rollout_cfg
        # one round: num_starts rollouts of h steps, of which about initial_state_share * num_starts (rounded per
        # chunk) run initial_state_horizon steps instead
        longer = max(0, (r.initial_state_horizon or r.horizon) - r.horizon)
        extra = (math.ceil(r.initial_state_share * r.num_starts) + math.ceil(r.num_starts / r.chunk)) * longer
        self.store = TransitionStore((r.num_starts * r.horizon + extra) * r.keep_rounds, obs_dim, act_dim, device,
                                     source="model")

    # --- fitting and rolling out -------------------------------------------------------
    def fit(self, data: dict[str, Tensor], weights: Tensor | None = None) -> FitReport | None:
        if self.null:
            return None
        if weights is not None:
            data = data | {"weights": weights}
        self.last_fit = self.model.fit(data, max_epochs=self.cfg.fit_max_epochs, max_seconds=self.cfg.fit_max_seconds)
        self._metrics["model/holdout_mse"] = min(self.last_fit.holdout_mse[i] for i in self.last_fit.elite_indices)
        self.fitted = True
        if self.units is not None:
            self.penalty_scale = None  # a new model: convert lambda's units again at the next round
        return self.last_fit

    @torch.no_grad()
    def unit_scale(self, obs: Tensor, act: Tensor) -> float:
        """mean u_units / mean u on real (obs [B, o], act [B, a]): the factor that puts lambda in u_units."""
        mean, var = self.model.predict(obs, act)  # [E, B, D]
        return (self.units.from_prediction(mean, var).mean() / self.uncertainty.from_prediction(mean, var).mean()
                .clamp_min(1e-12)).item()

    def due(self, updates: int, online: bool = False) -> bool:
        """A rollout round is due before update number `updates` (and always before the first).
        Online under `rollout.schedule=refit` rounds follow refits instead (`after_refit`)."""
        if not self.imagines:
            return False
        if len(self.store) == 0:
            return True
        if online and self.rollout_cfg.schedule == "refit":
            return False
        return updates % self.rollout_cfg.every == 0

    def after_refit(self) -> bool:
        """MOORe's Algorithm 1: a rollout round right after each online refit."""
        return self.imagines and self.rollout_cfg.schedule == "refit"

    def start_states(self, n: int, starts: Callable[[int], Batch],
                     initial: Callable[[int], Batch] | None = None) -> tuple[Batch, int]:
        """(n start states, m): the last m = round(initial_state_share * n) drawn by `initial` (the logged episodes'
        first states) when it is given, the others by `starts` (the sampler's real rows, MOPO)."""
        m = round(self.rollout_cfg.initial_state_share * n) if initial is not None else 0
        if m == 0:
            return starts(n), 0
        first = initial(m)
        return (first if m == n else Batch.cat([starts(n - m), first])), m

    def generate(self, policy: Callable[[Tensor], Tensor], starts: Callable[[int], Batch],
                 initial: Callable[[int], Batch] | None = None) -> RolloutResult | None:
        """One rollout round from num_starts states (start_states), appended to the model store."""
        if not self.imagines:
            return None
        r = self.rollout_cfg
        initial_horizon = r.initial_state_horizon or r.horizon
        results = []
        for begin in range(0, r.num_starts, r.chunk):
            n = min(r.chunk, r.num_starts - begin)
            batch, m = self.start_states(n, starts, initial)
            if self.penalty_scale is None:
                self.penalty_scale = self.unit_scale(batch.obs, batch.act)
                self._metrics["model/penalty_scale"] = self.penalty_scale
            coef = r.penalty_coef * self.reward_units * self.penalty_scale
            # rows [0, n - m) roll h steps, the m first states initial_state_horizon steps
            parts = [(batch.obs, r.horizon)] if m == 0 or initial_horizon == r.horizon else \
                [(batch.obs[:n - m], r.horizon), (batch.obs[n - m:], initial_horizon)]
            for obs, horizon in parts:
                if obs.shape[0]:
                    results.append(rollout(self.model, policy, obs, horizon, self.uncertainty, coef,
                                           propagation=self.cfg.propagation))
        for res in results:
            if res.transitions:
                self.store.add(**res.transitions)
        self.rounds += 1
        self.last_rollout = RolloutResult(
            {}, sum(x.mean_penalty for x in results) / len(results),
            sum(x.mean_raw_reward for x in results) / len(results),
            sum(x.mean_length for x in results) / len(results),
        )
        self._metrics |= {"model/penalty_mean": self.last_rollout.mean_penalty,
                          "model/rollout_length": self.last_rollout.mean_length,
                          "model/raw_reward_mean": self.last_rollout.mean_raw_reward}
        return self.last_rollout

    def metrics(self) -> dict[str, float]:
        return dict(self._metrics)

    # --- checkpointing --------------------------------------------------------------
    def state_dict(self) -> dict:
        if self.null:
            return {}
        return {"model": self.model.state_dict(), "optimizer": self.model.optimizer.state_dict(),
                "store": self.store.state_dict() if self.imagines else {}, "fitted": self.fitted, "rounds": self.rounds,
                "metrics": self.metrics(), "penalty_scale": self.penalty_scale}

    def load_state_dict(self, state: dict) -> None:
        if self.null or not state:
            return
        self.model.load_state_dict(state["model"])
        self.model.optimizer.load_state_dict(state["optimizer"])
        if self.imagines:
            self.store.load_state_dict(state["store"])
        self.fitted, self.rounds = state["fitted"], state["rounds"]
        self._metrics = dict(state["metrics"])
        self.penalty_scale = state.get("penalty_scale", self.penalty_scale)  # absent in older checkpoints


def make_world_model(cfg: WorldModelConfig, rollout_cfg: RolloutConfig, obs_dim: int, act_dim: int,
                     env_id: str | None, device: torch.device,
                     ref_scores: tuple[float | None, float | None] = (None, None)) -> WorldModel:
    """ref_scores: the dataset's (ref_min_score, ref_max_score), read by world_model.penalty_reward_units=d4rl."""
    if cfg.kind not in KINDS:
        raise ValueError(f"world_model.kind={cfg.kind!r} is unknown; choose one of {', '.join(KINDS)}.")
    units = 1.0
    if cfg.penalty_reward_units == "d4rl" and not is_null(cfg, rollout_cfg):
        units = d4rl_reward_units(env_id, *ref_scores)
    return WorldModel(cfg, rollout_cfg, obs_dim, act_dim, env_id, device, reward_units=units)


def make_dynamics(cfg: WorldModelConfig, obs_dim: int, act_dim: int, env_id: str | None,
                  device: torch.device) -> DynamicsEnsemble:
    """An unfitted DynamicsEnsemble with every world_model setting, for the agents and the analysis tools alike.

    termination=auto takes the env's known rule and learns a head only when there is none.
    """
    rule = termination_fn_for(env_id) if (env_id and cfg.termination == "auto") else None
    return DynamicsEnsemble(
        obs_dim, act_dim, cfg.ensemble_size, cfg.num_elites, cfg.hidden, cfg.lr, weight_decays(cfg),
        termination_fn=rule, learn_termination=rule is None and cfg.termination != "none",
        train_precision=cfg.train_precision, normalize_targets=cfg.normalize_targets, device=device,
    )


def store_fit_data(*stores: TransitionStore) -> dict[str, Tensor]:
    """The fields a dynamics fit reads, concatenated over stores (valid rows only)."""
    keys = ("obs", "act", "rew", "next_obs", "terminal")
    parts = [s.valid() for s in stores if s is not None and len(s) > 0]
    return {k: torch.cat([p[k] for p in parts]) for k in keys}
