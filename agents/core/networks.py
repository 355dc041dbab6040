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

from worldmodels.ensemble import EnsembleLinear, Float32EnsembleLinear, Float32Linear, make_adam

# Every Normal below is built with validate_args=False: argument validation runs an `.all()` check per
# construction and per log_prob (9 per AWAC update), each a device-to-host sync on a GPU, and a NaN from a
# diverged network is caught once per log_every updates by the trainer (DivergedError, which names the last
# good checkpoint) rather than as a bare constraint error inside the update.


def mlp(in_dim: int, out_dim: int, hidden: Sequence[int] = (256, 256), activation=nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), activation()]
        in_dim = width
    layers.append(Float32Linear(in_dim, out_dim))  # outputs stay float32 under trainer.precision=bfloat16
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

    def inverse(self, obs: Tensor) -> Tensor:
        """Normalized states back to env units (up to rounding)."""
        return obs * self.std + self.mean


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over the last dim with a learned scale and shift per member: x [E, B, H] -> [E, B, H].

    The critic's normalization of RLPD (Ball et al. 2023, `critic_layer_norm`: Dense -> LayerNorm -> ReLU on
    every hidden layer, flax's eps 1e-6), which bounds how far Q can extrapolate off the data."""

    def __init__(self, width: int, ensemble_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(ensemble_size, 1, width))  # [E, 1, H]
        self.bias = nn.Parameter(torch.zeros(ensemble_size, 1, width))  # [E, 1, H]

    def forward(self, x: Tensor, members: Tensor | None = None) -> Tensor:
        weight, bias = self.weight, self.bias
        if members is not None:
            weight, bias = weight.index_select(0, members), bias.index_select(0, members)
        return torch.addcmul(bias, nn.functional.layer_norm(x, x.shape[-1:], eps=self.eps), weight)


class CriticEnsemble(nn.Module):
    """N independent Q-networks evaluated together: Q(s, a) -> [N, B]. `layer_norm` puts RLPD's LayerNorm
    (EnsembleLayerNorm) between every hidden layer and its ReLU; off, the module is exactly the plain MLP."""

    def __init__(self, obs_dim: int, act_dim: int, num_critics: int = 2, hidden: Sequence[int] = (256, 256),
                 layer_norm: bool = False):
        super().__init__()
        self.num_critics = num_critics
        dims = [obs_dim + act_dim, *hidden]
        self.hidden = nn.ModuleList(EnsembleLinear(i, o, num_critics) for i, o in zip(dims[:-1], dims[1:], strict=True))
        # no norms at all when off, so the state dict (and every checkpoint) is what it was before the option
        self.norms = nn.ModuleList(EnsembleLayerNorm(o, num_critics) for o in dims[1:]) if layer_norm else None
        self.head = Float32EnsembleLinear(dims[-1], 1, num_critics)

    def forward(self, obs: Tensor, act: Tensor, members: Tensor | None = None) -> Tensor:
        """Q values [N, B]; with `members` [M] (critic indices) only those critics run: [M, B], the cost of
        M critics, not N (REDQ's target reads M of N)."""
        x = torch.cat([obs, act], dim=-1)  # [B, in] (shared) or [N or M, B, in] (per critic)
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.num_critics if members is None else len(members), *x.shape)
        for i, layer in enumerate(self.hidden):
            x = layer(x, members)  # [N or M, B, hidden]
            if self.norms is not None:
                x = self.norms[i](x, members)
            x = torch.relu(x)
        return self.head(x, members).squeeze(-1)  # [N or M, B]


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
        return Normal(mean, log_std.exp(), validate_args=False)

    def forward(self, obs: Tensor, deterministic: bool = False, samples: int = 1) -> tuple[Tensor, Tensor]:
        """Returns (action [B*samples, act_dim], log_prob [B*samples]) with the tanh change of variables.

        samples > 1 draws that many actions per state, rows in `repeat_interleave` order (state-major):
        the trunk runs once per state and only the noise differs, which gives the same numbers as
        `self(obs.repeat_interleave(samples, 0))` for 1/samples of the trunk's work (CQL's 20 policy
        actions per row; tests/test_losses.py checks the equality)."""
        dist = self.distribution(obs)
        if samples > 1:
            dist = Normal(dist.loc.repeat_interleave(samples, 0), dist.scale.repeat_interleave(samples, 0),
                          validate_args=False)
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


def random_subset(n: int, m: int, generator: torch.Generator) -> Tensor:
    """M distinct critic indices out of N, uniformly (REDQ, Chen et al. 2021: one fresh subset per
    update, shared by the whole batch) -> [M], on the generator's device."""
    if not 1 <= m <= n:
        raise ValueError(f"subset size {m} must lie in [1, {n}] (the number of critics)")
    return torch.randperm(n, generator=generator, device=generator.device)[:m]


def subset_min_target(critic: CriticEnsemble, obs: Tensor, act: Tensor, m: int, generator: torch.Generator,
                      all_critics: bool = False) -> tuple[Tensor, Tensor]:
    """The min over a random M-subset of the target critics, [B], and the Q values computed, [M, B]: only
    the M drawn critics run (as redq_sac.py evaluates only them). all_critics=True runs all N and
    returns [N, B] beside the min (what an ensemble-std penalty needs)."""
    subset = random_subset(critic.num_critics, m, generator)  # [M]
    if all_critics:
        q = critic(obs, act)  # [N, B]
        return q.index_select(0, subset).min(0).values, q
    q = critic(obs, act, members=subset)  # [M, B]
    return q.min(0).values, q


def mean_over_critics(q: Tensor) -> Tensor:
    """Mean over all N critics: q [N, B] -> [B] (REDQ's actor objective)."""
    return q.mean(0)


class GaussianActor(nn.Module):
    """A Gaussian policy with a state-independent log-std and no tanh change of variables (CORL's IQL
    `GaussianPolicy` and AWAC `Actor`): pi(a|s) = N(mu(s), sigma) in [-1, 1]-normalized action units,
    samples clamped into the bounds, log-probs those of the unsquashed Normal. `tanh_mean` bounds the
    mean (IQL) or leaves it free (AWAC)."""

    LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # CORL finetune/iql.py and finetune/awac.py

    def __init__(self, obs_dim: int, act_dim: int, act_scale: Tensor, act_bias: Tensor, hidden=(256, 256),
                 tanh_mean: bool = True):
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden)
        self.log_std = nn.Parameter(torch.zeros(act_dim))  # CORL: zeros, state-independent
        self.tanh_mean = tanh_mean
        self.register_buffer("act_scale", act_scale.clone().float())
        self.register_buffer("act_bias", act_bias.clone().float())

    def distribution(self, obs: Tensor) -> Normal:
        mean = self.net(obs)  # [B, act_dim], normalized units
        if self.tanh_mean:
            mean = torch.tanh(mean)
        return Normal(mean, self.log_std.clamp(self.LOG_STD_MIN, self.LOG_STD_MAX).exp(), validate_args=False)

    def forward(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor]:
        """(action [B, act_dim] in env units, clamped into the bounds; log_prob [B] of the clamped action)."""
        return self.sample(self.distribution(obs), deterministic)

    def sample(self, dist: Normal, deterministic: bool = False) -> tuple[Tensor, Tensor]:
        """`forward` on a distribution already computed (AWAC draws a_pi from the trunk pass its loss uses)."""
        u = (dist.mean if deterministic else dist.rsample()).clamp(-1.0, 1.0)
        return u * self.act_scale + self.act_bias, dist.log_prob(u).sum(-1) - torch.log(self.act_scale).sum()

    def log_prob(self, obs: Tensor, act: Tensor, dist: Normal | None = None) -> Tensor:
        """log pi(a|s) [B] of env-space actions (the density in env units); `dist` reuses a trunk pass."""
        u = (act - self.act_bias) / self.act_scale
        dist = self.distribution(obs) if dist is None else dist
        return dist.log_prob(u).sum(-1) - torch.log(self.act_scale).sum()


class ValueEnsemble(nn.Module):
    """N independent state-value networks evaluated together: V(s) -> [N, B]. The same layers as
    `CriticEnsemble` with the state alone as input, so a member's weights can seed a critic's (ACA's
    R = Z initialisation, agents/aca.py)."""

    def __init__(self, obs_dim: int, num_members: int = 2, hidden: Sequence[int] = (256, 256)):
        super().__init__()
        self.num_members = num_members
        dims = [obs_dim, *hidden]
        self.hidden = nn.ModuleList(EnsembleLinear(i, o, num_members) for i, o in zip(dims[:-1], dims[1:], strict=True))
        self.head = Float32EnsembleLinear(dims[-1], 1, num_members)

    def forward(self, obs: Tensor) -> Tensor:
        x = obs.unsqueeze(0).expand(self.num_members, *obs.shape)  # [N, B, obs_dim]
        for layer in self.hidden:
            x = torch.relu(layer(x))  # [N, B, hidden]
        return self.head(x).squeeze(-1)  # [N, B]


def mixture_moments(means: Tensor, stds: Tensor, log_std_min: float = -20.0,
                    log_std_max: float = 2.0) -> tuple[Tensor, Tensor]:
    """The Gaussian matching the first two moments of an equal-weight mixture of E Gaussians (Off2On's
    ensemble policy, Lee et al. 2021; Off2OnRL `ParallelTanhGaussianPolicy`, in the pre-tanh space):
    means, stds [E, B, A] -> mean [B, A] = mean_e mu_e and std [B, A] with
    var = mean_e(sigma_e^2 + mu_e^2) - mean^2. The std is kept in [e^log_std_min, e^log_std_max] (the
    reference's clamp), applied to the variance so that round-off below 0 never reaches the sqrt."""
    mean = means.mean(0)  # [B, A]
    var = (stds.square() + means.square()).mean(0) - mean.square()  # [B, A]
    return mean, var.clamp(math.exp(2.0 * log_std_min), math.exp(2.0 * log_std_max)).sqrt()


def squashed_sample(mean: Tensor, std: Tensor, act_scale: Tensor, act_bias: Tensor,
                    deterministic: bool = False) -> tuple[Tensor, Tensor]:
    """tanh-Gaussian action [..., A] in env units and its log-density [...] (TanhGaussianActor's maths for
    any leading shape)."""
    dist = Normal(mean, std, validate_args=False)
    pre_tanh = dist.mean if deterministic else dist.rsample()
    log_det = 2.0 * (math.log(2.0) - pre_tanh - nn.functional.softplus(-2.0 * pre_tanh))
    log_prob = (dist.log_prob(pre_tanh) - log_det).sum(-1) - torch.log(act_scale).sum()
    return torch.tanh(pre_tanh) * act_scale + act_bias, log_prob


class EnsembleTanhGaussianActor(nn.Module):
    """E squashed-Gaussian policies as one module (EnsembleLinear layers: one batched matmul per layer
    for all members). `forward` gives every member's own sample; `mixture` samples the moment-matched
    mixture of the members (Off2On's acting and online policy)."""

    LOG_STD_MIN, LOG_STD_MAX = TanhGaussianActor.LOG_STD_MIN, TanhGaussianActor.LOG_STD_MAX

    def __init__(self, obs_dim: int, act_dim: int, act_scale: Tensor, act_bias: Tensor, hidden=(256, 256),
                 ensemble_size: int = 5):
        super().__init__()
        self.ensemble_size = ensemble_size
        dims = [obs_dim, *hidden]
        self.hidden = nn.ModuleList(EnsembleLinear(i, o, ensemble_size) for i, o in zip(dims[:-1], dims[1:],
                                                                                        strict=True))
        self.head = Float32EnsembleLinear(dims[-1], 2 * act_dim, ensemble_size)
        self.register_buffer("act_scale", act_scale.clone().float())
        self.register_buffer("act_bias", act_bias.clone().float())

    def moments(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """obs [B, obs] (shared) or [E, B, obs] -> each member's pre-tanh mean and std, [E, B, A]."""
        x = obs if obs.dim() == 3 else obs.unsqueeze(0).expand(self.ensemble_size, *obs.shape)
        for layer in self.hidden:
            x = torch.relu(layer(x))  # [E, B, hidden]
        mean, log_std = self.head(x).chunk(2, dim=-1)  # [E, B, A] each
        return mean, log_std.clamp(self.LOG_STD_MIN, self.LOG_STD_MAX).exp()

    def forward(self, obs: Tensor, deterministic: bool = False, samples: int = 1) -> tuple[Tensor, Tensor]:
        """Every member's action [E, B*samples, A] and log-density [E, B*samples]; samples > 1 draws that
        many per state from one trunk pass (rows state-major, as TanhGaussianActor)."""
        mean, std = self.moments(obs)  # [E, B, A]
        if samples > 1:
            mean, std = mean.repeat_interleave(samples, 1), std.repeat_interleave(samples, 1)  # [E, B*samples, A]
        return squashed_sample(mean, std, self.act_scale, self.act_bias, deterministic)

    def mixture(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor]:
        """The moment-matched mixture's action [B, A] and log-density [B]."""
        mean, std = mixture_moments(*self.moments(obs), self.LOG_STD_MIN, self.LOG_STD_MAX)
        return squashed_sample(mean, std, self.act_scale, self.act_bias, deterministic)
