"""DynamicsEnsemble: a probabilistic ensemble world model with normalization, holdout/elites and sampling.

Targets are (next_obs - obs, reward), built from the stored ``next_obs`` only (never from obs[t + 1], which
would cross episode ends at time-limit truncations). Inputs are standardized with training-data statistics
(stored as buffers); targets too when ``normalize_targets`` (the default here; MBPO and OfflineRL-Kit standardize
the inputs only). ``predict`` and ``step`` work in the original (denormalized) units either way.

Defaults follow MOPO (Yu et al. 2020) as implemented in OfflineRL-Kit: 7 members, 5 elites, 4x200 SiLU, Adam
1e-3, batch 256, holdout min(20%, 1000), improvement threshold 1% relative, patience 5.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from worldmodels.ensemble import ProbabilisticEnsemble, make_adam
from worldmodels.termination import TerminationFn, rule_name, termination_fn_for

_FORMAT = "o2o-worldmodels/dynamics-ensemble/v1"
_MULTINOMIAL_MAX_CATEGORIES = 2**24  # torch.multinomial limit; beyond it we sample by inverse CDF


TRAIN_PRECISIONS = ("float32", "bfloat16", "auto")


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware: AVX512-BF16 or AMX on CPU, compute capability
    8.0+ on CUDA. (oneDNN also runs bf16 on plain AVX512 by emulation, which is no faster than float32.)"""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        try:
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        except AttributeError:  # private helpers missing from this torch build: stay exact
            return False
    return False


@dataclass
class FitReport:
    """Outcome of ``DynamicsEnsemble.fit``.

    holdout_mse: best holdout MSE per member (the early-stopping metric), in the fit's target units: standardized
        with ``normalize_targets``, else raw (delta obs, reward) units.
    elite_indices: the ``num_elites`` members with the lowest holdout MSE, best first.
    epochs: epochs run (the last may be partial when ``max_seconds`` ran out).
    seconds: wall-clock time of the fit.
    train_steps: gradient steps taken (each updates all members at once).
    stopped_by: "patience", "max_epochs" or "max_seconds".
    termination_holdout_accuracy: accuracy of the learned termination head on the holdout, if one is learned.
    holdout_indices: long [H], rows of the fitted data held out (e.g. for calibration analysis).
    """

    holdout_mse: list[float]
    elite_indices: list[int]
    epochs: int
    seconds: float
    train_steps: int
    stopped_by: str
    termination_holdout_accuracy: float | None = None
    holdout_indices: Tensor | None = field(default=None, repr=False)


@dataclass
class StepResult:
    """One imagined transition per start state.

    next_obs [B, obs_dim]; rew [B]; terminal [B] bool; info: "member" [B] long (the member sampled from, -1
    for propagation="mean") and, when an uncertainty estimator is passed to ``step``, "uncertainty" [B].
    """

    next_obs: Tensor
    rew: Tensor
    terminal: Tensor
    info: dict[str, Tensor] = field(default_factory=dict)


class DynamicsEnsemble(nn.Module):
    """Probabilistic dynamics ensemble p(delta obs, reward | obs, act) with elites and termination.

    Args:
        obs_dim, act_dim: sizes of the flat observation and action.
        ensemble_size: members (7, MOPO / MBPO).
        num_elites: members used for sampling (5, MOPO / MBPO).
        hidden: hidden layer widths (4 x 200, MOPO / MBPO).
        lr: Adam learning rate (1e-3, MOPO / OfflineRL-Kit).
        weight_decays: per-layer L2 coefficients (MBPO / OfflineRL-Kit).
        termination_fn: a rule ``fn(obs, act, next_obs) -> bool [B]`` or a gymnasium/Minari id resolved with
            ``termination_fn_for``. Ids and the rules of ``worldmodels.termination`` are saved with the model;
            any other callable must be passed again to ``load``.
        learn_termination: train a separate MLP classifier on (obs, act, next_obs) with BCE in ``fit`` and
            use it when no rule is given. Without either, imagined transitions never terminate.
        train_precision: "float32" (default), "bfloat16" or "auto". "bfloat16" runs the training
            forward/backward matmuls under bf16 autocast; weights, optimizer, loss and every prediction stay
            float32. "auto" picks bfloat16 where the device multiplies bf16 natively (``native_bf16``), else
            float32; the resolved value is what ``train_precision`` holds and what ``save`` records.
            benchmarks/model_precision.py measures the trade: on the default HalfCheetah dataset bf16 fits
            reach the holdout MSE and NLL of float32 fits within their seed spread (MSE 0.0865 against 0.0864,
            seed sd 0.0027) at 1.4x the fit speed.
        normalize_targets: standardize the regression targets (delta obs, reward) with their training mean and
            std, as inputs always are (True, the default: this class's original behaviour). False keeps the
            targets in raw units, as MBPO (Janner et al. 2019) and OfflineRL-Kit's MOPO do (they standardize
            inputs only): the target scaler is then the identity (mean 0, std 1), so the NLL loss, the holdout
            MSE, early stopping and the elites weigh each dimension by its raw scale. Saved with the model.
            ``predict``, ``step`` and the uncertainty estimators read raw units in both modes.
        device: where every tensor lives.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        ensemble_size: int = 7,
        num_elites: int = 5,
        hidden: Sequence[int] = (200, 200, 200, 200),
        lr: float = 1e-3,
        weight_decays: Sequence[float] = (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4),
        termination_fn: TerminationFn | str | None = None,
        learn_termination: bool = False,
        train_precision: str = "float32",
        normalize_targets: bool = True,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        if train_precision not in TRAIN_PRECISIONS:
            raise ValueError(f"train_precision must be one of {TRAIN_PRECISIONS}, got {train_precision!r}")
        if train_precision == "auto":
            train_precision = "bfloat16" if native_bf16(device) else "float32"
        self.train_precision = train_precision
        if not 1 <= num_elites <= ensemble_size:
            raise ValueError(f"num_elites must be in [1, ensemble_size={ensemble_size}], got {num_elites}")
        if termination_fn is not None and learn_termination:
            raise ValueError("pass either termination_fn (a known rule) or learn_termination=True, not both")
        self.device = torch.device(device)
        self.obs_dim = int(obs_dim)
        self.act_dim = int(act_dim)
        self.ensemble_size = int(ensemble_size)
        self.num_elites = int(num_elites)
        self.hidden = tuple(int(h) for h in hidden)
        self.lr = float(lr)
        self.weight_decays = tuple(float(w) for w in weight_decays)
        self.learn_termination = bool(learn_termination)
        self.normalize_targets = bool(normalize_targets)

        self.termination_id: str | None = None
        if isinstance(termination_fn, str):
            rule = termination_fn_for(termination_fn)
            if rule is None:
                raise ValueError(
                    f"no known termination rule for {termination_fn!r}; use learn_termination=True instead"
                )
            self.termination_id = termination_fn
            termination_fn = rule
        elif termination_fn is not None:
            self.termination_id = rule_name(termination_fn)  # a rule from worldmodels.termination, or None
        self.termination_fn: TerminationFn | None = termination_fn

        in_dim, out_dim = self.obs_dim + self.act_dim, self.obs_dim + 1
        self.net = ProbabilisticEnsemble(
            in_dim, out_dim, self.ensemble_size, self.hidden, nn.SiLU, self.weight_decays, device=self.device
        )
        dev = self.device
        self.register_buffer("in_mean", torch.zeros(in_dim, device=dev))
        self.register_buffer("in_std", torch.ones(in_dim, device=dev))
        self.register_buffer("target_mean", torch.zeros(out_dim, device=dev))
        self.register_buffer("target_std", torch.ones(out_dim, device=dev))
        self.register_buffer("elite_indices", torch.arange(self.num_elites, device=dev))
        self.register_buffer("holdout_mse", torch.full((self.ensemble_size,), math.inf, device=dev))
        self.optimizer = make_adam(self.net.optimizer_param_groups(), self.lr)
        # Rows per forward pass in predict(); on CPU small chunks stay in cache (not saved, a runtime knob).
        self.predict_chunk: int | None = 1024 if self.device.type == "cpu" else None

        self.termination_head: nn.Module | None = None
        self.termination_optimizer: torch.optim.Optimizer | None = None
        if self.learn_termination:
            # Classifier on normalized (obs, act, next_obs); no paper default, sized like a policy MLP.
            self.termination_head = nn.Sequential(
                nn.Linear(2 * self.obs_dim + self.act_dim, 200),
                nn.SiLU(),
                nn.Linear(200, 200),
                nn.SiLU(),
                nn.Linear(200, 1),
            ).to(dev)
            self.termination_optimizer = make_adam(self.termination_head.parameters(), 1e-3)

    # ------------------------------------------------------------------ normalization

    def _norm_inputs(self, obs: Tensor, act: Tensor) -> Tensor:
        return (torch.cat([obs, act], dim=-1) - self.in_mean) / self.in_std  # [B, obs_dim + act_dim]

    def _termination_features(self, obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
        obs_mean, obs_std = self.in_mean[: self.obs_dim], self.in_std[: self.obs_dim]
        x = self._norm_inputs(obs, act)
        return torch.cat([x, (next_obs - obs_mean) / obs_std], dim=-1)  # [B, 2 obs_dim + act_dim]

    # ------------------------------------------------------------------ prediction

    @torch.no_grad()
    def predict(self, obs: Tensor, act: Tensor) -> tuple[Tensor, Tensor]:
        """Per-member Gaussian over (delta obs, reward) in original units.

        obs [B, obs_dim], act [B, act_dim] -> (mean [E, B, obs_dim + 1], var [E, B, obs_dim + 1]).
        """
        x = self._norm_inputs(obs, act)  # [B, in]
        batch, chunk = x.shape[0], self.predict_chunk
        if chunk is None or batch <= chunk:
            return self._denormalize(*self.net(x))
        # Chunks keep each layer's activations [E, chunk, 200] in cache; one pass over 50k rows is ~2x slower.
        mean = x.new_empty(self.ensemble_size, batch, self.obs_dim + 1)  # [E, B, D]
        var = torch.empty_like(mean)  # [E, B, D]
        for s in range(0, batch, chunk):
            m, v = self._denormalize(*self.net(x[s : s + chunk]))
            mean[:, s : s + chunk] = m
            var[:, s : s + chunk] = v
        return mean, var

    def _denormalize(self, mean: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
        mean = torch.addcmul(self.target_mean, mean, self.target_std)  # [E, b, D]
        var = logvar.exp_().mul_(self.target_std.square())  # [E, b, D]
        return mean, var

    @torch.no_grad()
    def terminal(self, obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
        """bool [B]: the known rule if given, else the learned head (p > 0.5), else all False."""
        if self.termination_fn is not None:
            return self.termination_fn(obs, act, next_obs).to(torch.bool)
        if self.termination_head is not None:
            logits = self.termination_head(self._termination_features(obs, act, next_obs)).squeeze(-1)
            return logits > 0.0
        return torch.zeros(obs.shape[0], dtype=torch.bool, device=obs.device)

    @torch.no_grad()
    def step(
        self,
        obs: Tensor,
        act: Tensor,
        generator: torch.Generator | None = None,
        propagation: str = "random_elite",
        uncertainty=None,
    ) -> StepResult:
        """Imagine one transition per row of obs [B, obs_dim], act [B, act_dim].

        propagation: "random_elite" draws a member uniformly among the elites for each sample and samples
            from its Gaussian (MBPO / MOPO); "mean" returns the mean over elites of the members' means
            (deterministic).
        uncertainty: optional estimator with ``from_prediction(mean, var) -> [B]`` (see
            ``worldmodels.uncertainty``), evaluated on this step's forward pass, returned as
            info["uncertainty"].
        The generator, if given, must live on the model's device.
        """
        mean, var = self.predict(obs, act)  # [E, B, D]
        batch = obs.shape[0]
        if propagation == "random_elite":
            pick = torch.randint(self.num_elites, (batch,), generator=generator, device=obs.device)
            member = self.elite_indices[pick]  # [B]
            rows = torch.arange(batch, device=obs.device)
            mu, v = mean[member, rows], var[member, rows]  # [B, D]
            noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            sample = torch.addcmul(mu, v.sqrt_(), noise)  # [B, D]
        elif propagation == "mean":
            member = torch.full((batch,), -1, dtype=torch.long, device=obs.device)
            sample = mean.index_select(0, self.elite_indices).mean(dim=0)  # [B, D]
        else:
            raise ValueError(f"unknown propagation {propagation!r}; valid: 'random_elite', 'mean'")
        next_obs = obs + sample[:, : self.obs_dim]
        rew = sample[:, self.obs_dim]
        info = {"member": member}
        if uncertainty is not None:
            info["uncertainty"] = uncertainty.from_prediction(mean, var)
        return StepResult(next_obs, rew, self.terminal(obs, act, next_obs), info)

    # ------------------------------------------------------------------ training

    def train_step(self, x: Tensor, y: Tensor) -> Tensor:
        """One Adam step on normalized x [E, b, in] and targets y [E, b, D]; returns the loss (no sync).

        Loss as in PETS / MBPO / OfflineRL-Kit: Gaussian NLL (mean over batch and dims, summed over members)
        + bound loss; the per-layer weight decay enters through Adam's L2 term (see optimizer_param_groups).
        """
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.train_precision == "bfloat16"):
            mean, logvar = self.net(x)  # [E, b, D], float32
        nll = ((mean - y).square() * torch.exp(-logvar) + logvar).mean(dim=(1, 2)).sum()
        loss = nll + self.net.bound_loss()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    @torch.no_grad()
    def _holdout_mse(self, x: Tensor, y: Tensor, w: Tensor | None) -> Tensor:
        mean, _ = self.net(x)  # [E, H, D]
        per_sample = (mean - y).square().mean(dim=-1)  # [E, H]
        if w is None:
            return per_sample.mean(dim=-1)  # [E]
        return per_sample @ w  # [E]; w sums to one

    def _bootstrap(self, n: int, weights: Tensor | None, generator: torch.Generator | None) -> Tensor:
        """Per-member bootstrap indices [E, n] into the training split (weighted when weights are given)."""
        e, dev = self.ensemble_size, self.device
        if weights is None:
            return torch.randint(n, (e, n), generator=generator, device=dev)
        if n <= _MULTINOMIAL_MAX_CATEGORIES:
            return torch.multinomial(weights.expand(e, n), n, replacement=True, generator=generator)
        cdf = torch.cumsum(weights.double(), dim=0)
        u = torch.rand(e, n, generator=generator, device=dev, dtype=torch.float64) * cdf[-1]
        # right=True: u in [cdf[i-1], cdf[i]) maps to i, so zero-weight rows (empty intervals) are never drawn
        return torch.searchsorted(cdf, u, right=True).clamp_(max=n - 1)

    def _check_data(self, data: dict[str, Tensor]) -> dict[str, Tensor]:
        missing = [k for k in ("obs", "act", "rew", "next_obs", "terminal") if k not in data]
        if missing:
            raise KeyError(f"fit data is missing {missing}; expected obs, act, rew, next_obs, terminal[, weights]")
        keys = ("obs", "act", "rew", "next_obs", "terminal", "weights")
        out = {k: torch.as_tensor(data[k]).to(self.device, torch.float32) for k in keys if k in data}
        n = out["obs"].shape[0]
        expected = {
            "obs": (n, self.obs_dim),
            "act": (n, self.act_dim),
            "next_obs": (n, self.obs_dim),
            "rew": (n,),
            "terminal": (n,),
        }
        if "weights" in out:
            expected["weights"] = (n,)
        for key, shape in expected.items():
            if tuple(out[key].shape) != shape:
                raise ValueError(f"fit data[{key!r}] has shape {tuple(out[key].shape)}, expected {shape}")
        for key in expected:
            if not bool(torch.isfinite(out[key]).all()):
                raise ValueError(f"fit data[{key!r}] contains NaN or inf; clean the dataset before fitting")
        if "weights" in out and not bool((out["weights"] >= 0).all() & (out["weights"].sum() > 0)):
            raise ValueError("fit data['weights'] must be non-negative with a positive sum")
        return out

    def fit(
        self,
        data: dict[str, Tensor],
        holdout_ratio: float = 0.2,
        max_holdout: int = 1000,
        batch_size: int = 256,
        max_epochs: int | None = None,
        max_seconds: float | None = None,
        improvement_threshold: float = 0.01,
        patience: int = 5,
        generator: torch.Generator | None = None,
    ) -> FitReport:
        """Fit all members on ``data`` (warm-started from the current weights, normalizer refitted, as MBPO).

        data: obs [N, obs_dim], act [N, act_dim], rew [N], next_obs [N, obs_dim], terminal [N] and optionally
        weights [N] (priorities: each member's bootstrap is drawn proportionally to them, as MOORe retrains
        its model by prioritized sampling; the holdout MSE is then weighted the same way).
        Holdout min(holdout_ratio * N, max_holdout) (MOPO / MBPO); a member improves when its holdout MSE
        drops by more than ``improvement_threshold`` relative; training stops after ``patience`` epochs
        without any member improving, or at max_epochs / max_seconds. Each member ends at its best snapshot;
        elites are the ``num_elites`` lowest holdout MSEs. The generator, if given, must live on the model's
        device.
        """
        start = time.perf_counter()
        d = self._check_data(data)
        n = d["obs"].shape[0]
        n_hold = min(int(n * holdout_ratio), max_holdout)
        if n_hold < 1 or n - n_hold < 1:
            raise ValueError(f"need at least one training and one holdout transition; got N={n}, holdout={n_hold}")
        perm = torch.randperm(n, generator=generator, device=self.device)
        hold_idx, train_idx = perm[:n_hold], perm[n_hold:]

        inputs = torch.cat([d["obs"], d["act"]], dim=-1)  # [N, in]
        targets = torch.cat([d["next_obs"] - d["obs"], d["rew"].unsqueeze(-1)], dim=-1)  # [N, D]
        scaled = [(self.in_mean, self.in_std, inputs[train_idx])]
        if self.normalize_targets:
            scaled.append((self.target_mean, self.target_std, targets[train_idx]))
        with torch.no_grad():
            for buf_mean, buf_std, values in scaled:
                std, mean = torch.std_mean(values, dim=0, correction=0)
                buf_mean.copy_(mean)
                # constant dims are left unscaled
                buf_std.copy_(torch.where(std < 1e-8, torch.ones_like(std), std))
            if not self.normalize_targets:  # identity scaler: predict() then returns the net's outputs as they are
                self.target_mean.zero_()
                self.target_std.fill_(1.0)
        x_all = (inputs - self.in_mean) / self.in_std
        y_all = (targets - self.target_mean) / self.target_std if self.normalize_targets else targets
        x_train, y_train = x_all[train_idx], y_all[train_idx]  # [n, in], [n, D]
        x_hold, y_hold = x_all[hold_idx], y_all[hold_idx]  # [H, in], [H, D]
        w_train = w_hold = None
        if "weights" in d:
            w_train = d["weights"][train_idx]
            w_hold = d["weights"][hold_idx]
            w_hold = w_hold / w_hold.sum() if bool(w_hold.sum() > 0) else None
        head = self.termination_head
        if head is not None:
            z_all = self._termination_features(d["obs"], d["act"], d["next_obs"])
            z_train, z_hold = z_all[train_idx], z_all[hold_idx]
            t_train, t_hold = d["terminal"][train_idx], d["terminal"][hold_idx]
            head.train()

        n_train = n - n_hold
        params = list(self.net.parameters())
        best_params = [p.detach().clone() for p in params]
        best = torch.full((self.ensemble_size,), math.inf, device=self.device)
        boot = self._bootstrap(n_train, w_train, generator)  # [E, n]
        epochs = steps = since_improvement = 0
        stopped_by = "patience"
        while True:
            if max_epochs is not None and epochs >= max_epochs:
                stopped_by = "max_epochs"
                break
            if epochs > 0:
                # reshuffle each member's bootstrap sample between epochs (as MBPO / OfflineRL-Kit)
                order = torch.rand(boot.shape, generator=generator, device=self.device).argsort(dim=1)
                boot = boot.gather(1, order)
            out_of_time = False
            for s in range(0, n_train, batch_size):
                idx = boot[:, s : s + batch_size]  # [E, b]
                self.train_step(x_train[idx], y_train[idx])  # [E, b, in], [E, b, D]
                if head is not None:
                    self._termination_step(z_train[idx[0]], t_train[idx[0]])
                steps += 1
                if max_seconds is not None and steps % 32 == 0 and time.perf_counter() - start > max_seconds:
                    out_of_time = True
                    break
            epochs += 1
            mse = self._holdout_mse(x_hold, y_hold, w_hold)  # [E]
            # (best - mse) / best > threshold; the first epoch always improves on +inf
            improved = torch.isinf(best) | (mse < best * (1.0 - improvement_threshold))
            best = torch.where(improved, mse, best)
            with torch.no_grad():
                for p, b in zip(params, best_params, strict=True):
                    b.copy_(torch.where(improved.view(-1, *([1] * (p.dim() - 1))), p, b))
            since_improvement = 0 if bool(improved.any()) else since_improvement + 1
            if out_of_time or (max_seconds is not None and time.perf_counter() - start > max_seconds):
                stopped_by = "max_seconds"
                break
            if since_improvement >= patience:
                break

        with torch.no_grad():
            for p, b in zip(params, best_params, strict=True):
                p.copy_(b)
            self.holdout_mse.copy_(best)
            self.elite_indices.copy_(torch.argsort(best)[: self.num_elites])
        accuracy = None
        if head is not None:
            head.eval()
            with torch.no_grad():
                pred = head(z_hold).squeeze(-1) > 0.0
                accuracy = float((pred == (t_hold > 0.5)).float().mean())
        return FitReport(
            holdout_mse=best.tolist(),
            elite_indices=self.elite_indices.tolist(),
            epochs=epochs,
            seconds=time.perf_counter() - start,
            train_steps=steps,
            stopped_by=stopped_by,
            termination_holdout_accuracy=accuracy,
            holdout_indices=hold_idx,
        )

    def _termination_step(self, z: Tensor, t: Tensor) -> None:
        logits = self.termination_head(z).squeeze(-1)  # [b]
        loss = F.binary_cross_entropy_with_logits(logits, t)
        self.termination_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.termination_optimizer.step()

    # ------------------------------------------------------------------ persistence

    def config(self) -> dict:
        """Plain-python constructor arguments (JSON-able)."""
        if self.termination_id is not None:
            termination = self.termination_id
        else:
            termination = "custom" if self.termination_fn is not None else None
        return {
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "ensemble_size": self.ensemble_size,
            "num_elites": self.num_elites,
            "hidden": list(self.hidden),
            "lr": self.lr,
            "weight_decays": list(self.weight_decays),
            "termination": termination,
            "learn_termination": self.learn_termination,
            "train_precision": self.train_precision,
            "normalize_targets": self.normalize_targets,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write config + tensors (no pickled objects) atomically; load with ``DynamicsEnsemble.load``."""
        payload = {
            "format": _FORMAT,
            "config": self.config(),
            "state": self.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }
        if self.termination_optimizer is not None:
            payload["termination_optimizer"] = self.termination_optimizer.state_dict()
        tmp = f"{os.fspath(path)}.tmp"
        torch.save(payload, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        device: torch.device | str = "cpu",
        termination_fn: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
    ) -> DynamicsEnsemble:
        """Rebuild a saved model on ``device`` (``torch.load(weights_only=True)``).

        A model saved with a custom termination callable needs it again as ``termination_fn``.
        """
        payload = torch.load(path, map_location=device, weights_only=True)
        if payload.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a DynamicsEnsemble checkpoint (format {payload.get('format')!r})")
        config = dict(payload["config"])
        config.setdefault("normalize_targets", True)  # files saved before the option standardized targets
        termination = config.pop("termination")
        if termination == "custom" and termination_fn is None:
            raise ValueError(f"{path} was saved with a custom termination_fn; pass it to load(termination_fn=...)")
        rule = termination_fn if termination_fn is not None else termination
        model = cls(**config, termination_fn=rule, device=device)
        model.load_state_dict(payload["state"])
        model.optimizer.load_state_dict(payload["optimizer"])
        if model.termination_optimizer is not None and "termination_optimizer" in payload:
            model.termination_optimizer.load_state_dict(payload["termination_optimizer"])
        return model
