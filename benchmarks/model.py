"""Throughput of the dynamics ensemble against mbrl-lib's: training steps and imagined states per second.

    uv run python benchmarks/model.py --seconds 10 [--device auto] [--no-mbrl]

Setting: 7 members, 4 x 200 SiLU, HalfCheetah-like dims (obs 17, act 6), batch 256 per member.

- train_steps_per_second: full gradient steps of DynamicsEnsemble.train_step (bootstrap gather of 256
  transitions per member, NLL, bound loss, per-layer weight decay, Adam), exactly what fit() runs per batch,
  in the package default precision (`train_precision="auto"`: bf16 matmuls where the hardware multiplies
  bf16 natively, float32 elsewhere; `train_precision_auto` says which). The float32 and bfloat16 figures
  are also printed separately.
- rollout_states_per_second: DynamicsEnsemble.step on 50,000 states (all 7 members forward, random-elite
  sample, no termination rule); rollout_with_penalty_states_per_second also returns MOPO's aleatoric penalty
  from the same forward pass.
- float32_matmul_bound_steps_per_second: the float32 matmuls of a training step alone (forward, weight and
  input gradients of every layer), timed the same way: the ceiling for any float32 implementation here.
- mbrl_*: mbrl-lib 0.2.0's GaussianMLP at the same setting (`update` with Adam, and one forward of 50k states
  with a random-member sample), when mbrl-lib is installed (it is in the dev environment).

This VM's speed drifts by +-20% from minute to minute, so every contender runs in turn for `--rounds`
short slices and each figure is the median over its slices: the ratios compare measurements taken
side by side. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from agents.core.config import ConfigError, keep_freed_memory_checked, resolve_device
from worldmodels.dynamics import DynamicsEnsemble, native_bf16
from worldmodels.uncertainty import AleatoricMax

OBS_DIM, ACT_DIM, BATCH, ROLLOUT_STATES, DATASET = 17, 6, 256, 50_000, 200_000


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(fn: Callable[[], object], seconds: float, device: torch.device, per_call: int = 1) -> float:
    """Calls per second (times per_call) of fn over about `seconds`, after a short warm-up."""
    for _ in range(2):
        fn()
    _sync(device)
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        _sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * per_call / elapsed


def interleaved(contenders: dict[str, tuple[Callable[[], object], int]], seconds: float, rounds: int,
                device: torch.device) -> dict[str, float]:
    """Median rate of each contender over `rounds` slices of seconds / rounds, taken in turn."""
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, (fn, per_call) in contenders.items():
            rates[name].append(_rate(fn, seconds / rounds, device, per_call))
    return {name: statistics.median(r) for name, r in rates.items()}


def ours(device: torch.device) -> tuple[dict, dict]:
    gen = torch.Generator(device=device).manual_seed(0)
    models = {p: DynamicsEnsemble(OBS_DIM, ACT_DIM, train_precision=p, device=device) for p in ("float32", "bfloat16")}
    e = models["float32"].ensemble_size
    x_train = torch.randn(DATASET, OBS_DIM + ACT_DIM, device=device, generator=gen)  # normalized inputs
    y_train = torch.randn(DATASET, OBS_DIM + 1, device=device, generator=gen)  # normalized targets
    boot = torch.randint(DATASET, (e, DATASET), device=device, generator=gen)  # [E, N] bootstrap as in fit()
    cursor = [0]

    def train_once(m: DynamicsEnsemble) -> None:
        s = cursor[0]
        idx = boot[:, s : s + BATCH]  # [E, 256]
        cursor[0] = (s + BATCH) % (DATASET - BATCH)
        m.train_step(x_train[idx], y_train[idx])  # [E, 256, 23], [E, 256, 18]

    obs = torch.randn(ROLLOUT_STATES, OBS_DIM, device=device, generator=gen)
    act = torch.rand(ROLLOUT_STATES, ACT_DIM, device=device, generator=gen) * 2 - 1
    model, penalty = models["float32"], AleatoricMax(models["float32"])
    train = {f"train_{p}": ((lambda m=m: train_once(m)), 1) for p, m in models.items()}
    rollout = {
        "rollout": (lambda: model.step(obs, act, generator=gen), ROLLOUT_STATES),
        "rollout_penalty": (lambda: model.step(obs, act, generator=gen, uncertainty=penalty), ROLLOUT_STATES),
    }
    return train, rollout


def matmul_bound(device: torch.device) -> dict:
    """Only the float32 matmuls of one training step (forward, weight-gradient and input-gradient bmm of every
    layer): the steps/s no float32 implementation of this model can beat on this device."""
    sizes = (OBS_DIM + ACT_DIM, 200, 200, 200, 200, 2 * (OBS_DIM + 1))
    acts = [torch.randn(7, BATCH, d, device=device) for d in sizes]  # [E, B, d] per layer boundary
    weights = [torch.randn(7, i, o, device=device) for i, o in zip(sizes[:-1], sizes[1:], strict=True)]

    def matmuls() -> None:
        for layer, w in enumerate(weights):
            torch.bmm(acts[layer], w)  # forward
            torch.bmm(acts[layer].transpose(1, 2), acts[layer + 1])  # weight gradient
            if layer > 0:
                torch.bmm(acts[layer + 1], w.transpose(1, 2))  # input gradient (none for the data)

    return {"matmul_bound_float32": (matmuls, 1)}


def mbrl_lib(device: torch.device) -> tuple[dict, dict]:
    """mbrl-lib 0.2.0's GaussianMLP, set up as its MBPO / PETS configs do (Adam 1e-3, weight decay 5e-5)."""
    from mbrl.models import GaussianMLP

    m = GaussianMLP(in_size=OBS_DIM + ACT_DIM, out_size=OBS_DIM + 1, device=str(device), num_layers=4,
                    ensemble_size=7, hid_size=200, deterministic=False, propagation_method="random_model",
                    activation_fn_cfg={"_target_": "torch.nn.SiLU"})
    opt = torch.optim.Adam(m.parameters(), lr=1e-3, weight_decay=5e-5)
    x = torch.randn(7, BATCH, OBS_DIM + ACT_DIM, device=device)
    y = torch.randn(7, BATCH, OBS_DIM + 1, device=device)
    states = torch.randn(ROLLOUT_STATES, OBS_DIM + ACT_DIM, device=device)
    rows = torch.arange(ROLLOUT_STATES, device=device)

    @torch.no_grad()
    def forward_sample() -> torch.Tensor:
        mean, logvar = m.forward(states, use_propagation=False)  # [7, 50k, 18] each
        member = torch.randint(7, (ROLLOUT_STATES,), device=device)
        mu, std = mean[member, rows], logvar[member, rows].exp().sqrt()
        return mu + std * torch.randn_like(mu)

    return {"mbrl_train": ((lambda: m.update(x, opt, y)), 1)}, {"mbrl_rollout": (forward_sample, ROLLOUT_STATES)}


def run(seconds: float, rounds: int, device: torch.device, compare: bool) -> dict:
    train, rollout = ours(device)
    if compare:
        mbrl_train, mbrl_rollout = mbrl_lib(device)
        train, rollout = train | mbrl_train, rollout | mbrl_rollout
    rates = interleaved(train | matmul_bound(device), seconds, rounds, device)
    rates |= interleaved(rollout, seconds, rounds, device)
    auto = "bfloat16" if native_bf16(device) else "float32"
    out = {
        "train_steps_per_second": round(rates[f"train_{auto}"], 1),
        "train_precision_auto": auto,
        "train_steps_per_second_float32": round(rates["train_float32"], 1),
        "train_steps_per_second_bf16": round(rates["train_bfloat16"], 1),
        "float32_matmul_bound_steps_per_second": round(rates["matmul_bound_float32"], 1),
        "rollout_states_per_second": round(rates["rollout"]),
        "rollout_with_penalty_states_per_second": round(rates["rollout_penalty"]),
    }
    if compare:
        out |= {
            "mbrl_train_steps_per_second": round(rates["mbrl_train"], 1),
            "mbrl_rollout_states_per_second": round(rates["mbrl_rollout"]),
            "train_ratio": round(rates[f"train_{auto}"] / rates["mbrl_train"], 2),
            "train_ratio_float32": round(rates["train_float32"] / rates["mbrl_train"], 2),
            "rollout_ratio": round(rates["rollout"] / rates["mbrl_rollout"], 2),
        }
    return out | {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
                  "seconds_per_contender": seconds, "rounds": rounds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per contender, split over the rounds")
    parser.add_argument("--rounds", type=int, default=8, help="slices per contender, taken in turn")
    parser.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda | cuda:1 ...")
    parser.add_argument("--no-mbrl", action="store_true", help="skip mbrl-lib even if it is installed")
    args = parser.parse_args(argv)
    try:
        keep_freed_memory_checked()  # worldmodels/memory.py; O2O_KEEP_FREED_MEMORY=0 measures without
        device = resolve_device(args.device)
    except ConfigError as err:
        parser.error(str(err))  # one line, exit status 2
    compare = not args.no_mbrl
    if compare:
        try:
            import mbrl.models  # noqa: F401
        except ImportError:
            compare = False
    print(json.dumps(run(args.seconds, args.rounds, device, compare)))


if __name__ == "__main__":
    main()
