"""Networks shared by every agent: MLPs, the vectorized critic ensemble, actors, target updates.

The critic ensemble is one module with a leading ensemble dimension (the same
`EnsembleLinear` the dynamics ensemble uses), so N critics cost one batched matmul per
layer, never a Python loop over members.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Normal

from worldmodels.ensemble import EnsembleLinear, make_adam


def mlp(in_dim: int, out_dim: int, hidden: Sequence[int] = (256, 256), activation=nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), activation()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class ObsNormalizer(nn.Module):
    """(obs - mean) / std with statistics fixed from the offline dataset.

    TD3+BC (Fujimoto & Gu 2021) normalizes states by dataset mean and std; the statistics are
    buffers, so they travel with the agent's checkpoint. Identity until `fit` is called.
    """

    def __init__(self, obs_dim: int, eps: float = 1e-3):
        super().__init__()
        self.register_buffer("mean", torch.zeros(obs_dim))
        self.register_buffer("std", torch.ones(obs_dim))
        self.eps = eps

    def fit(self, obs: Tensor) -> None:
        self.mean.copy_(obs.mean(0))
        self.std.copy_(obs.std(0) + self.eps)

    def forward(self, obs: Tensor) -> Tensor:
        return (obs - self.mean) / self.std


class CriticEnsemble(nn.Module):
    """N independent Q-networks evaluated together: Q(s, a) -> [N, B]."""

    def __init__(self, obs_dim: int, act_dim: int, num_critics: int = 2, hidden: Sequence[int] = (256, 256)):
        super().__init__()
        self.num_critics = num_critics
        dims = [obs_dim + act_dim, *hidden]
        self.hidden = nn.ModuleList(EnsembleLinear(i, o, num_critics) for i, o in zip(dims[:-1], dims[1:], strict=True))
        self.head = EnsembleLinear(dims[-1], 1, num_critics)

    def forward(self, obs: Tensor, act: Tensor) -> Tensor:
        x = torch.cat([obs, act], dim=-1)  # [B, in] (shared) or [N, B, in] (per critic)
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.num_critics, *x.shape)  # [N, B, in]
        for layer in self.hidden:
            x = torch.relu(layer(x))  # [N, B, hidden]
        return self.head(x).squeeze(-1)  # [N, B]


class DeterministicActor(nn.Module):
    """a = scale * tanh(f(s)) + bias, so actions always lie inside the env's bounds."""

    def __init__(self, obs_dim: int, act_dim: int, act_scale: Tensor, act_bias: Tensor, hidden=(256, 256)):
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden)
        self.register_buffer("act_scale", act_scale.clone().float())
        self.register_buffer("act_bias", act_bias.clone().float())

    def forward(self, obs: Tensor) -> Tensor:
        return torch.tanh(self.net(obs)) * self.act_scale + self.act_bias


class TanhGaussianActor(nn.Module):
    """SAC's squashed Gaussian policy (Haarnoja et al. 2018, appendix C)."""

    LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # SAC reference implementation bounds

    def __init__(self, obs_dim: int, act_dim: int, act_scale: Tensor, act_bias: Tensor, hidden=(256, 256)):
        super().__init__()
        self.trunk = mlp(obs_dim, 2 * act_dim, hidden)
        self.register_buffer("act_scale", act_scale.clone().float())
        self.register_buffer("act_bias", act_bias.clone().float())

    def distribution(self, obs: Tensor) -> Normal:
        mean, log_std = self.trunk(obs).chunk(2, dim=-1)
        log_std = log_std.clamp(self.LOG_STD_MIN, self.LOG_STD_MAX)
        return Normal(mean, log_std.exp())

    def forward(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor]:
        """Returns (action [B, act_dim], log_prob [B]) with the tanh change of variables."""
        dist = self.distribution(obs)
        pre_tanh = dist.mean if deterministic else dist.rsample()
        squashed = torch.tanh(pre_tanh)
        # log|d tanh(u)/du| = 2 (log 2 - u - softplus(-2u)), the numerically stable form
        log_det = 2.0 * (math.log(2.0) - pre_tanh - nn.functional.softplus(-2.0 * pre_tanh))
        log_prob = (dist.log_prob(pre_tanh) - log_det).sum(-1) - torch.log(self.act_scale).sum()
        return squashed * self.act_scale + self.act_bias, log_prob

    def log_prob(self, obs: Tensor, act: Tensor) -> Tensor:
        """log pi(a|s) of given env-space actions (used by BC-style and AWAC/IQL losses)."""
        squashed = ((act - self.act_bias) / self.act_scale).clamp(-1 + 1e-6, 1 - 1e-6)
        pre_tanh = torch.atanh(squashed)
        log_det = 2.0 * (math.log(2.0) - pre_tanh - nn.functional.softplus(-2.0 * pre_tanh))
        dist = self.distribution(obs)
        return (dist.log_prob(pre_tanh) - log_det).sum(-1) - torch.log(self.act_scale).sum()


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging target <- (1 - tau) target + tau source, in place with one foreach lerp."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def adam(params: Iterable[Tensor], lr: float) -> torch.optim.Adam:
    return make_adam(params, lr)


def cosine_lr(base_lr: float, fraction_done: float) -> float:
    """Cosine annealing from base_lr to 0 as fraction_done goes from 0 to 1 (Loshchilov & Hutter 2017)."""
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(max(fraction_done, 0.0), 1.0)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
