"""Vectorized probabilistic ensemble network: one batched matmul per layer for all members.

Every parameter carries a leading ensemble dimension ``E``, so a forward pass over all members is one
``torch.baddbmm`` per layer and per-member snapshots are plain indexing along dimension 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class EnsembleLinear(nn.Module):
    """``E`` independent affine maps applied in one batched matmul.

    weight: [E, in, out], bias: [E, 1, out]; ``forward`` maps x [E, B, in] -> [E, B, out].
    ``weight_decay`` is the coefficient of the L2 term ``0.5 * wd * ||W||^2`` (bias not decayed), the form
    used by MBPO (Janner et al. 2019, ``tf.nn.l2_loss``) and OfflineRL-Kit's MOPO.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        ensemble_size: int,
        weight_decay: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.ensemble_size = ensemble_size
        self.weight_decay = float(weight_decay)
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(ensemble_size, in_features, out_features, **kw))  # [E, in, out]
        self.bias = nn.Parameter(torch.empty(ensemble_size, 1, out_features, **kw))  # [E, 1, out]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Truncated normal with std 1 / (2 sqrt(in)) and zero bias, as in MBPO (Janner et al. 2019) and the
        # OfflineRL-Kit MOPO ensemble; truncation at 2 std as in tf.truncated_normal.
        std = 1.0 / (2.0 * math.sqrt(self.in_features))
        with torch.no_grad():
            nn.init.trunc_normal_(self.weight, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)
            self.bias.zero_()

    def forward(self, x: Tensor, members: Tensor | None = None) -> Tensor:
        """x [E, B, in] -> [E, B, out]; with `members` [M] (indices) only those: x [M, B, in] -> [M, B, out]."""
        if members is None:
            return torch.baddbmm(self.bias, x, self.weight)  # [E, 1, out] + [E, B, in] @ [E, in, out]
        return torch.baddbmm(self.bias.index_select(0, members), x, self.weight.index_select(0, members))

    def weight_decay_loss(self) -> Tensor:
        return 0.5 * self.weight_decay * self.weight.square().sum()

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"ensemble_size={self.ensemble_size}, weight_decay={self.weight_decay}"
        )


class Float32Output:
    """Mixin for a network's last layer: it computes in float32 even inside a bf16 autocast.

    Under ``trainer.precision=bfloat16`` the hidden layers' matmuls run in bf16 (8 bits of mantissa), but a
    Q value, a value, a policy mean or log-std leaves the network in float32: a bf16 Q of 100 would be
    rounded to a multiple of 0.5, coarser than the TD errors it is regressed on. Outside an autocast this
    is the parent layer exactly (no cast, no context), so float32 runs are bitwise unchanged.
    """

    def forward(self, x: Tensor, *args) -> Tensor:
        if not torch.is_autocast_enabled(x.device.type):
            return super().forward(x, *args)
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float(), *args)


class Float32Linear(Float32Output, nn.Linear):
    """``nn.Linear`` as a last layer (same parameters and state-dict keys), float32 under autocast."""


class Float32EnsembleLinear(Float32Output, EnsembleLinear):
    """``EnsembleLinear`` as a last layer (same parameters and state-dict keys), float32 under autocast.

    A one-output head on bf16 activations (every critic and value ensemble under trainer.precision=bfloat16)
    takes `_ScalarHead`: the same float32 forward, and a backward that runs as a bf16 layer's would."""

    def forward(self, x: Tensor, members: Tensor | None = None) -> Tensor:
        if self.out_features != 1 or x.dtype != torch.bfloat16 or not torch.is_autocast_enabled(x.device.type):
            return super().forward(x, members)
        weight, bias = self.weight, self.bias
        if members is not None:
            weight, bias = weight.index_select(0, members), bias.index_select(0, members)
        with torch.autocast(x.device.type, enabled=False):
            return _ScalarHead.apply(x, weight, bias)


class _ScalarHead(torch.autograd.Function):
    """q [E, B, 1] = x [E, B, D] @ w [E, D, 1] + b [E, 1, 1] with x in bf16 and q in float32.

    The forward is the float32 matvec of Float32Output. In a training step (backward inside the trainer's
    autocast) autograd's backward of that matvec runs its matmuls in bf16, and this backward computes the same
    numbers, bitwise (tests/test_precision.py), but writes the input gradient as one elementwise bf16 product
    instead of a K = 1 outer-product matmul, which on CQL's [2, 7936, 256] activations was about 3x slower."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return torch.baddbmm(bias, x.float(), weight)  # [E, B, 1] float32

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, weight = ctx.saved_tensors
        grad_bf16 = grad.to(x.dtype)  # [E, B, 1]
        grad_x = grad_bf16 * weight.transpose(1, 2).to(x.dtype)  # [E, B, D] bf16
        grad_weight = torch.bmm(x.transpose(1, 2), grad_bf16).float()  # [E, D, 1]
        return grad_x, grad_weight, grad.sum(1, keepdim=True)  # bias: [E, 1, 1]


def soft_clamp(x: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """Differentiable clamp of ``x`` into (low, high) with softplus, as in PETS (Chua et al. 2018)."""
    x = high - F.softplus(high - x)
    return low + F.softplus(x - low)


class ProbabilisticEnsemble(nn.Module):
    """Ensemble of Gaussian MLPs returning per-member mean and log-variance.

    Architecture and defaults from MOPO (Yu et al. 2020) / MBPO (Janner et al. 2019) as implemented in
    OfflineRL-Kit: 4 hidden layers of 200 units, SiLU (Swish), per-layer weight decays
    (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4), and log-variance soft-clamped between learned bounds.

    Input: x [B, in] (shared by all members) or [E, B, in]. Output: (mean, logvar), each [E, B, out_dim].

    The learned bounds are per member ([E, 1, out_dim]; PETS shares one bound vector across members):
    per-member bounds make a member's best snapshot self-contained, which early stopping relies on.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        ensemble_size: int = 7,
        hidden: Sequence[int] = (200, 200, 200, 200),
        activation: type[nn.Module] = nn.SiLU,
        weight_decays: Sequence[float] = (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4),
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        if len(weight_decays) != len(hidden) + 1:
            raise ValueError(
                f"weight_decays needs one entry per layer ({len(hidden) + 1} for hidden={hidden}), "
                f"got {len(weight_decays)}"
            )
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.ensemble_size = ensemble_size
        sizes = (in_dim, *hidden, 2 * out_dim)  # the last layer emits mean and log-variance together
        self.layers = nn.ModuleList(
            EnsembleLinear(sizes[i], sizes[i + 1], ensemble_size, weight_decays[i], device=device)
            for i in range(len(sizes) - 1)
        )
        self.activation = activation()
        try:  # without autograd (rollouts) the activation can overwrite its input: ~5% faster on CPU
            self.activation_inplace: nn.Module | None = activation(inplace=True)
        except TypeError:
            self.activation_inplace = None
        # Initial bounds 0.5 and -10 as in PETS / MBPO / OfflineRL-Kit.
        bound_shape = (ensemble_size, 1, out_dim)  # [E, 1, D]
        self.max_logvar = nn.Parameter(torch.full(bound_shape, 0.5, device=device))
        self.min_logvar = nn.Parameter(torch.full(bound_shape, -10.0, device=device))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.ensemble_size, -1, -1)  # [B, in] -> [E, B, in] (a view, no copy)
        h = x
        act = self.activation
        if self.activation_inplace is not None and not torch.is_grad_enabled():
            act = self.activation_inplace
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(h)  # [E, B, hidden_i]
            if i < last:
                h = act(h)
        # .float(): under a bf16 autocast (DynamicsEnsemble(train_precision="bfloat16")) the bounds and the
        # loss stay in float32; a no-op otherwise.
        mean, raw_logvar = h.float().split(self.out_dim, dim=-1)  # each [E, B, D]
        logvar = soft_clamp(raw_logvar, self.min_logvar, self.max_logvar)
        return mean, logvar

    def bound_loss(self) -> Tensor:
        """Keeps the learned log-variance bounds tight (weight 0.01, PETS / MBPO)."""
        return 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())

    def weight_decay_loss(self) -> Tensor:
        return sum(layer.weight_decay_loss() for layer in self.layers)

    def optimizer_param_groups(self) -> list[dict]:
        """Adam parameter groups whose L2 ``weight_decay`` equals the gradient of ``weight_decay_loss()``.

        Adam's (coupled, non-AdamW) ``weight_decay=wd`` adds ``wd * W`` to the gradient, exactly the gradient
        of ``0.5 * wd * ||W||^2``; letting the fused optimizer apply it saves a pass over the weights per
        step.
        """
        groups = [{"params": [layer.weight], "weight_decay": layer.weight_decay} for layer in self.layers]
        others = [layer.bias for layer in self.layers] + [self.max_logvar, self.min_logvar]
        groups.append({"params": others, "weight_decay": 0.0})
        return groups


def make_adam(params, lr: float) -> torch.optim.Adam:
    """Fused Adam where available (CPU and CUDA in torch >= 2.4), else the foreach implementation.
    Shared by the dynamics ensemble and every agent's networks."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, foreach=True)
