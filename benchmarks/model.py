"""Throughput of the dynamics ensemble: training steps and imagined states per second.

    uv run python benchmarks/model.py --seconds 10 [--device auto]

Prints one JSON line. Setting: 7 members, 4 x 200 SiLU, HalfCheetah-like dims (obs 17, act 6).
train_steps_per_second: full gradient steps of DynamicsEnsemble.train_step (bootstrap gather of 256
transitions per member, NLL, bound loss, per-layer weight decay, Adam), exactly what fit() runs per batch.
train_steps_per_second_bf16: the same with train_precision="bfloat16" (bf16 autocast matmuls, opt-in).
rollout_states_per_second: DynamicsEnsemble.step on 50,000 states (all 7 members forward, random-elite sample,
no termination rule). rollout_with_penalty_states_per_second: the same step also returning the MOPO aleatoric
penalty from the same forward pass.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from worldmodels.dynamics import DynamicsEnsemble
from worldmodels.uncertainty import AleatoricMax

OBS_DIM, ACT_DIM, BATCH, ROLLOUT_STATES, DATASET = 17, 6, 256, 50_000, 200_000


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(fn, seconds: float, device: torch.device, per_call: int = 1) -> float:
    """Calls per second (times per_call) of fn over about `seconds`, after a short warm-up."""
    for _ in range(3):
        fn()
    _sync(device)
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        if calls % 4 == 0:
            _sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return calls * per_call / elapsed


def run(seconds: float, device: torch.device) -> dict:
    gen = torch.Generator(device=device).manual_seed(0)
    model = DynamicsEnsemble(OBS_DIM, ACT_DIM, device=device)
    model_bf16 = DynamicsEnsemble(OBS_DIM, ACT_DIM, train_precision="bfloat16", device=device)
    e = model.ensemble_size
    x_train = torch.randn(DATASET, OBS_DIM + ACT_DIM, device=device, generator=gen)  # normalized inputs
    y_train = torch.randn(DATASET, OBS_DIM + 1, device=device, generator=gen)  # normalized targets
    boot = torch.randint(DATASET, (e, DATASET), device=device, generator=gen)  # [E, N] bootstrap as in fit()
    cursor = [0]

    def train_once(m: DynamicsEnsemble = model) -> None:
        s = cursor[0]
        idx = boot[:, s : s + BATCH]  # [E, 256]
        cursor[0] = (s + BATCH) % (DATASET - BATCH)
        m.train_step(x_train[idx], y_train[idx])  # [E, 256, 23], [E, 256, 18]

    obs = torch.randn(ROLLOUT_STATES, OBS_DIM, device=device, generator=gen)
    act = torch.rand(ROLLOUT_STATES, ACT_DIM, device=device, generator=gen) * 2 - 1
    penalty = AleatoricMax(model)

    train = _rate(train_once, seconds, device)
    train_bf16 = _rate(lambda: train_once(model_bf16), seconds, device)
    rollout = _rate(lambda: model.step(obs, act, generator=gen), seconds, device, ROLLOUT_STATES)
    rollout_pen = _rate(
        lambda: model.step(obs, act, generator=gen, uncertainty=penalty), seconds, device, ROLLOUT_STATES
    )
    return {
        "train_steps_per_second": round(train, 1),
        "train_steps_per_second_bf16": round(train_bf16, 1),
        "rollout_states_per_second": round(rollout),
        "rollout_with_penalty_states_per_second": round(rollout_pen),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "seconds_per_measurement": seconds,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per measurement (there are four)")
    parser.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    args = parser.parse_args(argv)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    print(json.dumps(run(args.seconds, device)))


if __name__ == "__main__":
    main()
