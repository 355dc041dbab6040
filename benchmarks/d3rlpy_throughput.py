"""The reference figure for benchmarks/throughput.py: d3rlpy's updates per second at the same
sizes (256x2 MLPs, batch 256, obs 17, act 6, 100k synthetic transitions), through its own
training loop (`fit`, which includes its replay sampling, as ours does).

d3rlpy pins an old gym, so run it in its own environment:

    uv venv /tmp/d3venv -p 3.11 && VIRTUAL_ENV=/tmp/d3venv uv pip install d3rlpy==2.8.1 torch
    /tmp/d3venv/bin/python benchmarks/d3rlpy_throughput.py --agent td3bc --steps 2000

Prints one JSON line; `--flops` adds the floating-point operations of one update, counted as
benchmarks/throughput.py --flops counts ours (torch.utils.flop_counter over 20 steps of `fit`).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def make_dataset(n: int = 100_000, obs_dim: int = 17, act_dim: int = 6):
    import d3rlpy

    rng = np.random.default_rng(0)
    terminals = np.zeros(n)
    timeouts = np.zeros(n)
    timeouts[999::1000] = 1.0  # 1000-step episodes, as the MuJoCo tasks
    return d3rlpy.dataset.MDPDataset(
        observations=rng.standard_normal((n, obs_dim)).astype(np.float32),
        actions=rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
        rewards=rng.standard_normal(n).astype(np.float32),
        terminals=terminals,
        timeouts=timeouts,
    )


def main() -> None:
    import d3rlpy

    parser = argparse.ArgumentParser()
    parser.add_argument("--agent", choices=["td3bc", "td3", "sac", "cql", "calql", "iql", "awac"], required=True)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--flops", action="store_true", help="add FLOPs per update")
    parser.add_argument("--device", default="cpu:0", help="d3rlpy's device string: cpu:0 or cuda:0")
    args = parser.parse_args()
    config = {
        "td3bc": d3rlpy.algos.TD3PlusBCConfig,
        "td3": d3rlpy.algos.TD3Config,
        "sac": d3rlpy.algos.SACConfig,
        "cql": d3rlpy.algos.CQLConfig,  # 10 action samples per set, 2 critics: the same work as ours
        "calql": d3rlpy.algos.CalQLConfig,
        "iql": d3rlpy.algos.IQLConfig,
        "awac": d3rlpy.algos.AWACConfig,
    }[args.agent](batch_size=256)
    algo = config.create(device=args.device)
    dataset = make_dataset()
    algo.build_with_dataset(dataset)
    kwargs = dict(show_progress=False, save_interval=10**9, logger_adapter=d3rlpy.logging.NoopAdapterFactory())
    algo.fit(dataset, n_steps=200, n_steps_per_epoch=200, **kwargs)  # warm-up
    start = time.perf_counter()
    algo.fit(dataset, n_steps=args.steps, n_steps_per_epoch=args.steps, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # no kernel of the timed steps may still be queued
    elapsed = time.perf_counter() - start
    arithmetic = {}
    if args.flops:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            algo.fit(dataset, n_steps=20, n_steps_per_epoch=20, **kwargs)
        gflop = counter.get_total_flops() / 20 / 1e9
        arithmetic = {"gflop_per_update": round(gflop, 3), "achieved_gflops": round(gflop * args.steps / elapsed, 1)}
    print(json.dumps({"library": f"d3rlpy {d3rlpy.__version__}", "agent": args.agent,
                      "updates_per_second": round(args.steps / elapsed, 1), **arithmetic,
                      "device": args.device, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
