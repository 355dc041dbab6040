"""Bridge to mbrl-lib 0.2.0 (PyPI ``mbrl``), in both directions. How-to: docs/mbrl_lib.md.

- ``from_mbrl(model)``: an mbrl-lib ``OneDTransitionRewardModel`` around a ``GaussianMLP`` ensemble, seen as
  one of our dynamics models (``predict`` / ``step`` / ``terminal`` / ``elite_indices``), so it plugs into
  ``worldmodels.rollout.rollout``, the ``worldmodels.uncertainty`` estimators and the agents' world model.
- ``to_model_env(ensemble, env)``: our ``DynamicsEnsemble`` as an ``mbrl.models.ModelEnv``, so mbrl-lib's
  planners (CEM, iCEM, MPPI through ``mbrl.planning``) run on it.

Facts about mbrl-lib 0.2.0 this relies on (read from its source):

- ``OneDTransitionRewardModel`` feeds ``[obs_process_fn(obs), act]`` through an optional input
  ``Normalizer`` ((x - mean) / std); targets are not normalized. The output layout is ``[obs part, reward]``
  (reward last) when ``learned_rewards``; the obs part is ``next_obs - obs`` when ``target_is_delta``, except
  the dims in ``no_delta_list``, which (like every dim when ``target_is_delta=False``) predict ``next_obs``.
- ``GaussianMLP.forward(x, use_propagation=False)`` on 2-D x returns every member's mean and log-variance
  ``[E, B, D]`` (log-variance ``None`` for a deterministic model); ``elite_models`` is ``None`` (all members)
  or a list.
- ``ModelEnv.step`` calls ``dynamics_model.sample(act, model_state, deterministic=not sample, rng=...)`` and
  then ``termination_fn(act, next_obs) -> bool [B, 1]``; rewards are ``[B, 1]``; ``reset`` gets a float32
  numpy batch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

try:
    import mbrl.models as mbrl_models
except ImportError as err:  # the core package never imports this module
    raise ImportError(
        f"worldmodels.integrations.mbrl_lib needs mbrl-lib 0.2.0 ({err}). It is in this project's dev "
        "dependency group (`uv sync`); with pip, install it without its outdated pins (plus termcolor, "
        "which it imports): `pip install --no-deps mbrl==0.2.0 termcolor` (see docs/mbrl_lib.md)."
    ) from err

from worldmodels.dynamics import DynamicsEnsemble, StepResult
from worldmodels.termination import TerminationFn, termination_fn_for

MbrlTermFn = Callable[[Tensor, Tensor], Tensor]  # mbrl-lib: (act [B, A], next_obs [B, D]) -> bool [B, 1]
MbrlRewardFn = Callable[[Tensor, Tensor], Tensor]  # mbrl-lib: (act [B, A], next_obs [B, D]) -> [B, 1]

__all__ = ["EnsembleModelAdapter", "MbrlDynamics", "as_termination_fn", "from_mbrl", "to_model_env"]


# --------------------------------------------------------------------------------------- termination helpers


def _required_positional(fn: Callable) -> int | None:
    """Number of required positional parameters, or None when it cannot be told (e.g. *args)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in kinds and p.default is inspect.Parameter.empty for p in params)


def _is_mbrl_style(fn: Callable) -> bool:
    return _required_positional(fn) == 2


def as_termination_fn(fn: TerminationFn | MbrlTermFn | str | None) -> TerminationFn | None:
    """Our rule ``(obs, act, next_obs) -> bool [B]`` from any accepted form.

    fn: None (never terminate), a gymnasium/Minari id resolved with ``termination_fn_for`` (e.g.
    "Hopper-v5"), our three-argument rule, or an mbrl-lib two-argument ``(act, next_obs) -> bool [B, 1]``
    function such as ``mbrl.env.termination_fns.hopper`` (told apart by its two required positional
    parameters).
    """
    if fn is None:
        return None
    if isinstance(fn, str):
        rule = termination_fn_for(fn)
        if rule is None:
            raise ValueError(f"no known termination rule for {fn!r}; pass a termination function instead")
        return rule
    if not callable(fn):
        raise TypeError(f"termination_fn must be None, an env id or a callable, got {type(fn).__name__}")
    if _is_mbrl_style(fn):
        mbrl_fn = fn

        def rule(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
            return mbrl_fn(act, next_obs).reshape(-1).to(torch.bool)  # [B, 1] -> [B]

        return rule
    return fn


def _as_tensor(x, device: torch.device) -> Tensor:
    """numpy or tensor -> float32 tensor on device (actions from a numpy planner may be float64)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    return x.to(device=device, dtype=torch.float32)


# ------------------------------------------------------------------------------------------ mbrl-lib -> ours


class MbrlDynamics(nn.Module):
    """An mbrl-lib ``OneDTransitionRewardModel`` (``GaussianMLP`` ensemble) with our dynamics-model API.

    Inference only: train it with mbrl-lib (``ModelTrainer``) and save it with its own ``save(dir)``.
    ``predict`` returns per-member Gaussians over (delta obs, reward) in original units, as
    ``DynamicsEnsemble.predict`` does; ``step`` is ``DynamicsEnsemble.step`` itself (same propagation rules:
    "random_elite" and "mean"), so rollouts and uncertainty penalties behave the same on either model.
    Elites follow the wrapped model's ``elite_models`` (all members when it has none), read at every call.

    Args:
        model: the mbrl-lib model; it stays shared (not copied), so further mbrl-lib training shows up here.
        termination_fn: see ``as_termination_fn``; default None = never terminate.
        reward_fn: optional mbrl-lib ``(act, next_obs) -> [B, 1]`` reward; required when the model has
            ``learned_rewards=False``. When given, ``step`` returns ``reward_fn(act, next_obs)`` (as
            mbrl-lib's ``ModelEnv`` does) and ``predict``'s reward column is ``reward_fn`` at each member's
            mean next observation with zero variance (only when the model learns no reward).
    """

    def __init__(
        self,
        model: mbrl_models.OneDTransitionRewardModel,
        termination_fn: TerminationFn | MbrlTermFn | str | None = None,
        reward_fn: MbrlRewardFn | None = None,
    ) -> None:
        super().__init__()
        if isinstance(model, mbrl_models.GaussianMLP):
            raise TypeError(
                "from_mbrl needs the OneDTransitionRewardModel around the GaussianMLP (it holds the input "
                "normalizer, target_is_delta and learned_rewards); pass that wrapper instead"
            )
        if not isinstance(model, mbrl_models.OneDTransitionRewardModel):
            raise TypeError(
                f"from_mbrl expects an mbrl.models.OneDTransitionRewardModel, got {type(model).__name__}"
            )
        if not isinstance(model.model, mbrl_models.GaussianMLP):
            raise TypeError(
                "from_mbrl supports a GaussianMLP inside the OneDTransitionRewardModel, "
                f"got {type(model.model).__name__}"
            )
        if not model.learned_rewards and reward_fn is None:
            raise ValueError("this mbrl-lib model learns no reward (learned_rewards=False): pass reward_fn")
        self.mbrl_model = model
        net = model.model
        self.learned_rewards = bool(model.learned_rewards)
        self.obs_dim = int(net.out_size) - int(self.learned_rewards)
        # obs_process_fn must keep the observation size (mbrl-lib's contract), so in_size = obs_dim + act_dim
        self.act_dim = int(net.in_size) - self.obs_dim
        self.ensemble_size = int(net.num_members)
        self.termination_fn = as_termination_fn(termination_fn)
        self.reward_fn = reward_fn
        absolute = torch.ones(self.obs_dim, dtype=torch.bool)  # dims whose target is next_obs itself
        if model.target_is_delta:
            absolute.zero_()
            absolute[list(model.no_delta_list)] = True
        self.register_buffer("absolute_dims", absolute.to(self.device), persistent=False)
        self._elite_key: tuple[int, ...] | None = None
        self._elite_tensor: Tensor | None = None

    # ------------------------------------------------------------------ attributes our API reads

    @property
    def net(self) -> mbrl_models.GaussianMLP:
        return self.mbrl_model.model

    @property
    def device(self) -> torch.device:
        return torch.device(self.mbrl_model.device)

    @property
    def elite_indices(self) -> Tensor:
        """long [num_elites] on the device: the wrapped GaussianMLP's ``elite_models``, or all members."""
        elites = self.net.elite_models
        key = tuple(range(self.ensemble_size)) if elites is None else tuple(int(i) for i in elites)
        if key != self._elite_key:
            self._elite_tensor = torch.tensor(key, dtype=torch.long, device=self.device)
            self._elite_key = key
        return self._elite_tensor

    @property
    def num_elites(self) -> int:
        return int(self.elite_indices.numel())

    # ------------------------------------------------------------------ prediction

    def _model_input(self, obs: Tensor, act: Tensor) -> Tensor:
        """OneDTransitionRewardModel's network input: normalize([obs_process_fn(obs), act]) -> [B, in]."""
        model = self.mbrl_model
        if model.obs_process_fn is not None:
            obs = _as_tensor(model.obs_process_fn(obs), self.device)
        x = torch.cat([obs, act], dim=-1)
        if model.input_normalizer is not None:
            x = model.input_normalizer.normalize(x).float()
        return x

    @torch.no_grad()
    def predict(self, obs: Tensor, act: Tensor) -> tuple[Tensor, Tensor]:
        """obs [B, obs_dim], act [B, act_dim] -> (mean [E, B, obs_dim + 1], var [E, B, obs_dim + 1]) over
        (delta obs, reward) in original units, for every member (as ``DynamicsEnsemble.predict``)."""
        obs, act = _as_tensor(obs, self.device), _as_tensor(act, self.device)
        mean, logvar = self.net(self._model_input(obs, act), use_propagation=False)  # [E, B, out]
        # A deterministic GaussianMLP predicts no log-variance.
        var = torch.zeros_like(mean) if logvar is None else logvar.exp()
        obs_mean, obs_var = mean[..., : self.obs_dim], var[..., : self.obs_dim]  # [E, B, obs_dim]
        if bool(self.absolute_dims.any()):
            obs_mean = torch.where(self.absolute_dims, obs_mean - obs, obs_mean)  # next_obs -> delta
        if self.learned_rewards:
            rew_mean, rew_var = mean[..., self.obs_dim :], var[..., self.obs_dim :]  # [E, B, 1]
        else:
            e, b = mean.shape[:2]
            next_obs = (obs + obs_mean).reshape(e * b, self.obs_dim)
            rew_mean = self.reward_fn(act.repeat(e, 1), next_obs).reshape(e, b, 1).to(mean.dtype)
            rew_var = torch.zeros_like(rew_mean)
        return torch.cat([obs_mean, rew_mean], dim=-1), torch.cat([obs_var, rew_var], dim=-1)

    @torch.no_grad()
    def terminal(self, obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
        """bool [B]: the termination rule if one was given, else all False."""
        if self.termination_fn is None:
            return torch.zeros(next_obs.shape[0], dtype=torch.bool, device=next_obs.device)
        return self.termination_fn(obs, act, next_obs).to(torch.bool)

    @torch.no_grad()
    def step(
        self,
        obs: Tensor,
        act: Tensor,
        generator: torch.Generator | None = None,
        propagation: str = "random_elite",
        uncertainty=None,
    ) -> StepResult:
        """One imagined transition per row, exactly as ``DynamicsEnsemble.step`` (see there)."""
        obs, act = _as_tensor(obs, self.device), _as_tensor(act, self.device)
        # DynamicsEnsemble.step only reads predict, terminal, elite_indices, num_elites and obs_dim.
        result = DynamicsEnsemble.step(self, obs, act, generator, propagation, uncertainty)
        if self.reward_fn is not None:
            result.rew = self.reward_fn(act, result.next_obs).reshape(-1).to(result.next_obs.dtype)
        return result

    def forward(self, obs: Tensor, act: Tensor) -> tuple[Tensor, Tensor]:
        return self.predict(obs, act)


def from_mbrl(
    model: mbrl_models.OneDTransitionRewardModel,
    termination_fn: TerminationFn | MbrlTermFn | str | None = None,
    reward_fn: MbrlRewardFn | None = None,
) -> MbrlDynamics:
    """Wrap a trained mbrl-lib ``OneDTransitionRewardModel`` (``GaussianMLP`` ensemble) as our dynamics model.

    The result works with ``rollout(model, ...)``, ``make_uncertainty(name, model)`` and anywhere a
    ``DynamicsEnsemble`` is used for inference (not ``fit`` / ``save``). Arguments: see ``MbrlDynamics``.
    """
    return MbrlDynamics(model, termination_fn=termination_fn, reward_fn=reward_fn)


# ------------------------------------------------------------------------------------------ ours -> mbrl-lib


class EnsembleModelAdapter(mbrl_models.Model):
    """Our dynamics ensemble behind the part of the ``mbrl.models.Model`` API that ``ModelEnv`` uses.

    ``reset(obs, rng) -> model_state`` and ``sample(act, model_state, deterministic, rng) -> (next_obs [B, D],
    reward [B, 1], None, model_state)``. With ``deterministic=True`` (``ModelEnv.step(..., sample=False)``,
    the default) the step is ``ensemble.step(propagation="mean")``. Otherwise ``propagation`` decides:

    - "random_elite": a fresh elite member per particle and step, then a Gaussian sample (our rollouts' rule,
      MBPO / MOPO; PETS' TS1);
    - "fixed_elite": an elite member per particle drawn at ``reset`` and kept for the whole trajectory
      (PETS' TS-inf);
    - "mean": always the elites' mean prediction.

    Training goes through ``DynamicsEnsemble.fit``; ``loss`` and ``eval_score`` are not provided.
    """

    PROPAGATIONS = ("random_elite", "fixed_elite", "mean")

    def __init__(self, ensemble: DynamicsEnsemble, propagation: str = "random_elite") -> None:
        if propagation not in self.PROPAGATIONS:
            raise ValueError(f"unknown propagation {propagation!r}; valid: {', '.join(self.PROPAGATIONS)}")
        super().__init__(torch.device(ensemble.device))
        self.ensemble = ensemble
        self.propagation = propagation
        # The last transition sample() produced, for the termination function ModelEnv calls right after it
        # (mbrl-lib's termination functions get (act, next_obs) only, our rules also take obs).
        self.last_transition: tuple[Tensor, Tensor, Tensor, Tensor] | None = None

    def __len__(self) -> int:
        return int(self.ensemble.ensemble_size)

    def reset(self, obs, rng: torch.Generator | None = None) -> dict[str, Tensor]:
        obs = _as_tensor(obs, self.device)
        if obs.ndim != 2 or obs.shape[1] != self.ensemble.obs_dim:
            raise ValueError(f"reset expects obs [B, {self.ensemble.obs_dim}], got {tuple(obs.shape)}")
        state = {"obs": obs}
        if self.propagation == "fixed_elite":
            pick = torch.randint(self.ensemble.num_elites, (obs.shape[0],), generator=rng, device=self.device)
            state["members"] = self.ensemble.elite_indices[pick]  # [B]
        return state

    @torch.no_grad()
    def sample(
        self,
        act,
        model_state: dict[str, Tensor],
        deterministic: bool = False,
        rng: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, None, dict[str, Tensor]]:
        obs, act = model_state["obs"], _as_tensor(act, self.device)
        if deterministic or self.propagation == "mean":
            step = self.ensemble.step(obs, act, propagation="mean")
        elif self.propagation == "random_elite":
            step = self.ensemble.step(obs, act, generator=rng, propagation="random_elite")
        else:
            step = self._fixed_member_step(obs, act, model_state["members"], rng)
        self.last_transition = (obs, act, step.next_obs, step.terminal)
        return step.next_obs, step.rew.unsqueeze(-1), None, {**model_state, "obs": step.next_obs}

    def _fixed_member_step(self, obs: Tensor, act: Tensor, members: Tensor, rng) -> StepResult:
        e = self.ensemble
        mean, var = e.predict(obs, act)  # [E, B, D]
        rows = torch.arange(obs.shape[0], device=obs.device)
        mu, std = mean[members, rows], var[members, rows].sqrt()  # [B, D]
        noise = torch.randn(mu.shape, generator=rng, device=mu.device, dtype=mu.dtype)
        sample = mu + std * noise
        next_obs = obs + sample[:, : e.obs_dim]
        rew = sample[:, e.obs_dim]
        if getattr(e, "reward_fn", None) is not None:  # a from_mbrl model with its own reward function
            rew = e.reward_fn(act, next_obs).reshape(-1).to(next_obs.dtype)
        return StepResult(next_obs, rew, e.terminal(obs, act, next_obs), {"member": members})

    def loss(self, model_in: Any, target: Tensor | None = None):
        raise NotImplementedError("train our ensemble with DynamicsEnsemble.fit, not through mbrl-lib")

    def eval_score(self, model_in: Any, target: Tensor | None = None):
        raise NotImplementedError(
            "evaluate our ensemble with DynamicsEnsemble.fit's holdout, not through mbrl-lib"
        )


def _has_own_termination(ensemble) -> bool:
    return (
        getattr(ensemble, "termination_fn", None) is not None
        or getattr(ensemble, "termination_head", None) is not None
    )


def _mbrl_termination(
    adapter: EnsembleModelAdapter, env, termination_fn: TerminationFn | MbrlTermFn | str | None
) -> MbrlTermFn:
    """The (act, next_obs) -> bool [B, 1] function for ModelEnv (see to_model_env for the order of choice)."""
    if termination_fn is not None and not isinstance(termination_fn, str) and _is_mbrl_style(termination_fn):
        return termination_fn  # already mbrl-lib's signature
    ensemble = adapter.ensemble
    own = termination_fn is None and _has_own_termination(ensemble)
    if termination_fn is not None:
        rule = as_termination_fn(termination_fn)
    elif own:
        rule = ensemble.terminal
    else:
        env_id = getattr(getattr(env, "spec", None), "id", None)
        rule = termination_fn_for(env_id) if env_id else None
    if rule is None:

        def never(act: Tensor, next_obs: Tensor) -> Tensor:
            return torch.zeros(next_obs.shape[0], 1, dtype=torch.bool, device=next_obs.device)

        return never

    def termination(act: Tensor, next_obs: Tensor) -> Tensor:
        last = adapter.last_transition
        if last is None or last[2] is not next_obs:
            raise RuntimeError(
                "this ModelEnv's termination_fn reads the observation before next_obs, so it only answers "
                "for the transition its dynamics model sampled last (as ModelEnv.step calls it)"
            )
        obs, _, _, terminal = last
        done = terminal if own else rule(obs, act, next_obs)  # own rule: already evaluated in sample()
        return done.reshape(-1, 1).to(torch.bool)

    return termination


def to_model_env(
    ensemble: DynamicsEnsemble,
    env,
    termination_fn: TerminationFn | MbrlTermFn | str | None = None,
    reward_fn: MbrlRewardFn | None = None,
    generator: torch.Generator | None = None,
    propagation: str = "random_elite",
) -> mbrl_models.ModelEnv:
    """Our dynamics ensemble as an ``mbrl.models.ModelEnv`` (for ``mbrl.planning`` and model rollouts).

    Args:
        ensemble: a fitted ``DynamicsEnsemble`` (or any model with its ``predict`` / ``step`` / ``terminal``
            API, e.g. ``from_mbrl(...)``).
        env: the gymnasium environment it models (its observation and action spaces are used).
        termination_fn: an env id, our ``(obs, act, next_obs) -> [B]`` rule, or an mbrl-lib
            ``(act, next_obs) -> [B, 1]`` function. Default: the ensemble's own termination (its rule or
            learned head) if it has one, else the known rule for ``env.spec.id`` (``termination_fn_for``),
            else never terminate.
        reward_fn: optional mbrl-lib ``(act, next_obs) -> [B, 1]`` reward replacing the predicted one.
        generator: torch generator on the ensemble's device for the sampling (ModelEnv makes one otherwise).
        propagation: "random_elite" (default), "fixed_elite" or "mean"; see ``EnsembleModelAdapter``.
    """
    obs_shape, act_shape = tuple(env.observation_space.shape), tuple(env.action_space.shape)
    if obs_shape != (ensemble.obs_dim,) or act_shape != (ensemble.act_dim,):
        raise ValueError(
            f"the env's spaces {obs_shape} / {act_shape} do not match the ensemble's "
            f"obs_dim={ensemble.obs_dim}, act_dim={ensemble.act_dim}"
        )
    adapter = EnsembleModelAdapter(ensemble, propagation=propagation)
    return mbrl_models.ModelEnv(
        env,
        adapter,
        _mbrl_termination(adapter, env, termination_fn),
        reward_fn=reward_fn,
        generator=generator,
    )
