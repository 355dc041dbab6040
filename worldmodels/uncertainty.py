"""The one uncertainty API: ``u(obs, act) -> Tensor[B]``, larger = less trustworthy.

Dynamics estimators read a ``DynamicsEnsemble``'s per-member Gaussians (mean, var [E, B, obs_dim + 1], in
denormalized (delta obs, reward) units; the last dim is the reward). ``from_prediction(mean, var)`` computes
the same number from an existing forward pass, so ``DynamicsEnsemble.step(..., uncertainty=u)`` costs no
extra pass. ``QEnsembleStd`` reads a critic ensemble. ``make_uncertainty(name, model)`` builds any of them by
name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class Uncertainty(Protocol):
    name: str

    def __call__(self, obs: Tensor, act: Tensor) -> Tensor:  # [B]
        ...


class _DynamicsUncertainty:
    """Shared plumbing: member selection and the (obs, act) -> predict -> from_prediction path."""

    name = ""
    default_members = "all"
    default_include_reward = True

    def __init__(self, model, members: str | None = None, include_reward: bool | None = None) -> None:
        members = self.default_members if members is None else members
        if members not in ("all", "elites"):
            raise ValueError(f"members must be 'all' or 'elites', got {members!r}")
        self.model = model
        self.members = members
        self.include_reward = self.default_include_reward if include_reward is None else include_reward

    def __call__(self, obs: Tensor, act: Tensor) -> Tensor:
        mean, var = self.model.predict(obs, act)
        return self.from_prediction(mean, var)

    def _select(self, x: Tensor) -> Tensor:
        """[E, B, D] -> [M, B, D'] with the chosen members and dims."""
        if self.members == "elites":
            x = x.index_select(0, self.model.elite_indices)
        return x if self.include_reward else x[..., :-1]

    def from_prediction(self, mean: Tensor, var: Tensor) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(members={self.members!r}, include_reward={self.include_reward})"


class AleatoricMax(_DynamicsUncertainty):
    """MOPO (Yu et al. 2020): max over members of ||predicted std||_2.

    Default: all members and all dims including the reward, as the common reference (OfflineRL-Kit's MOPO)
    does.
    """

    name = "aleatoric"

    def from_prediction(self, mean: Tensor, var: Tensor) -> Tensor:
        std = self._select(var).sqrt()  # [M, B, D]
        return torch.linalg.vector_norm(std, dim=-1).amax(dim=0)  # [B]


class Disagreement(_DynamicsUncertainty):
    """Max over members of ||member mean - ensemble mean||_2 ("pairwise-diff" in OfflineRL-Kit).

    Default: all members and the next-state dims only (no reward), as in OfflineRL-Kit.
    """

    name = "disagreement"
    default_include_reward = False

    def from_prediction(self, mean: Tensor, var: Tensor) -> Tensor:
        m = self._select(mean)  # [M, B, D]
        return torch.linalg.vector_norm(m - m.mean(dim=0), dim=-1).amax(dim=0)  # [B]


class EnsembleStd(_DynamicsUncertainty):
    """sqrt(mean over dims of the variance across members of the means) ("ensemble_std" in OfflineRL-Kit).

    Default: all members, next-state dims only, population variance, as in OfflineRL-Kit.
    """

    name = "ensemble_std"
    default_include_reward = False

    def from_prediction(self, mean: Tensor, var: Tensor) -> Tensor:
        m = self._select(mean)  # [M, B, D]
        return m.var(dim=0, correction=0).mean(dim=-1).sqrt()  # [B]


class TotalVariance(_DynamicsUncertainty):
    """Sum over dims of (mean of variances + variance of means): the total variance of the member mixture.

    Default: elites and all dims, because step() samples from the uniform mixture of the elites' Gaussians,
    and this is exactly that mixture's total predictive variance (aleatoric + epistemic).
    """

    name = "total_variance"
    default_members = "elites"

    def from_prediction(self, mean: Tensor, var: Tensor) -> Tensor:
        m, v = self._select(mean), self._select(var)  # [M, B, D]
        return (v.mean(dim=0) + m.var(dim=0, correction=0)).sum(dim=-1)  # [B]


class QEnsembleStd:
    """Std across critics of ``critic(obs, act) -> [N, B]`` (unbiased, as torch.std); UPQ's std_i Q_i."""

    name = "q_std"

    def __init__(self, critic: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.critic = critic

    def __call__(self, obs: Tensor, act: Tensor) -> Tensor:
        return self.from_prediction(self.critic(obs, act))

    @staticmethod
    def from_prediction(q_values: Tensor) -> Tensor:
        return q_values.std(dim=0)  # [N, B] -> [B]


_REGISTRY: dict[str, Callable[..., Uncertainty]] = {
    AleatoricMax.name: AleatoricMax,
    Disagreement.name: Disagreement,
    EnsembleStd.name: EnsembleStd,
    TotalVariance.name: TotalVariance,
    QEnsembleStd.name: QEnsembleStd,
}
UNCERTAINTIES = tuple(_REGISTRY)  # the names make_uncertainty builds


def make_uncertainty(name: str, model, **kwargs) -> Uncertainty:
    """Build an estimator by name; ``model`` is a DynamicsEnsemble, or for "q_std" a callable -> [N, B].

    Extra keyword arguments (members=..., include_reward=...) go to the dynamics estimators; None values
    mean "the estimator's default" and are dropped.
    """
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown uncertainty {name!r}; valid names: {', '.join(sorted(_REGISTRY))}") from None
    return cls(model, **{k: v for k, v in kwargs.items() if v is not None})
