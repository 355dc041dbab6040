"""The cost of REDQ's critic ensemble: seconds per update with N critics against 2, measured in
interleaved blocks in one process (the fastest block of each counts, robust to a loaded machine).
The issue's target: 10 critics cost at most 2.5x what 2 do (the ensemble is one batched matmul).

    python benchmarks/redq_critics.py --critics 10 --blocks 8 --device auto
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from agents.core.agent import EnvSpec, update_autocast
from agents.core.config import UPDATE_PRECISIONS, ConfigError, keep_freed_memory_checked, resolve_device
from agents.redq import REDQ, REDQConfig
from benchmarks.throughput import synthetic_store
from worldmodels.progress import Progress


def seconds_per_update(agent: REDQ, batches: list, progress: Progress, device: torch.device,
                       precision: str = "float32") -> float:
    start = time.perf_counter()
    for batch in batches:
        with update_autocast(device, precision):  # as the trainer runs an update (trainer.precision)
            agent.update(batch, progress)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--critics", type=int, default=10)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--updates", type=int, default=40, help="updates per block (a multiple of G = 20)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=UPDATE_PRECISIONS, default="float32",
                        help="the updates' matmul dtype (trainer.precision), the same for both ensembles")
    args = parser.parse_args()
    try:
        keep_freed_memory_checked()  # as every entry point does (worldmodels/memory.py)
        device = resolve_device(args.device)
    except ConfigError as err:
        parser.error(str(err))  # one line, exit status 2
    spec = EnvSpec(17, 6, -torch.ones(6), torch.ones(6))
    store = synthetic_store(100_000, 17, 6, device)
    g = torch.Generator(device=device).manual_seed(0)
    batches = [store.gather(store.sample_indices(256, g)) for _ in range(args.updates)]
    progress = Progress("online", 0, 0, 0, 0, 10**9)
    agents = {n: REDQ(REDQConfig(num_critics=n), spec, device) for n in (args.critics, 2)}
    for agent in agents.values():  # warm-up: allocator, kernels
        seconds_per_update(agent, batches, progress, device, args.precision)
    best = {n: float("inf") for n in agents}
    for _ in range(args.blocks):
        for n, agent in agents.items():
            best[n] = min(best[n], seconds_per_update(agent, batches, progress, device, args.precision))
    print(json.dumps({"ms_per_update": {n: round(1e3 * s, 3) for n, s in best.items()},
                      "ratio": round(best[args.critics] / best[2], 2), "precision": args.precision,
                      "device": str(device),
                      "threads": torch.get_num_threads(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
