"""Prioritized-replay batches per second: `SumTree` against `torch.multinomial` over the full
priority vector, on one device.

    python benchmarks/sampler.py --rows 1000000 --batch 256 --seconds 10 --device auto

One batch = draw `batch` rows in proportion to priority AND write `batch` new priorities back
to those rows (what prioritized replay does after each update). The baseline does the same with
`torch.multinomial(priorities, batch, replacement=True)` over the whole float32 vector plus an
index_put of the new priorities. torch.multinomial refuses more than 2^24 categories; past that
the baseline is reported as null with its error.

Timing: a warm-up of every contender, then rounds that alternate the contenders (their order
reversed every other round), so load from other processes hits all of them alike; each figure
is its batches over its summed time. On CUDA every timed stretch ends in a synchronize, and the
sum tree (and the baseline, where it can be) is also timed as a CUDA graph replay of the whole
batch, which removes the per-op launch cost that dominates small batches.

Prints one JSON line. Bad arguments exit with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import torch

from agents.core.config import resolve_device
from worldmodels.data.sumtree import SumTree

ROUNDS = 10


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage + message; we want one line
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def graphed(step: Callable[[], None]) -> Callable[[], None]:
    """Capture step() (fixed shapes, default generator) in a CUDA graph; returns its replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def timed(step: Callable[[], None], seconds: float, device: torch.device) -> tuple[int, float]:
    """Run step() for about `seconds`; returns (batches, elapsed) with the device drained."""
    n, start = 0, time.perf_counter()
    while True:
        step()
        n += 1
        if time.perf_counter() - start >= seconds:
            break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n, time.perf_counter() - start


def measure(rows: int, batch: int, seconds: float, device: torch.device, branching: int, top: int) -> dict:
    g = torch.Generator(device=device).manual_seed(0)
    priorities = torch.rand(rows, device=device, generator=g) + 1e-3  # [rows] float32, as a store extra
    new = torch.rand(16, batch, device=device, generator=g) + 1e-3  # [16, batch] new priorities, cycled
    tree = SumTree(rows, device, branching, top)
    tree.set_all(priorities)
    step_no = [0]

    def sumtree_batch(generator: torch.Generator | None = g) -> None:
        idx = tree.sample(batch, generator)  # [batch]
        tree.update(idx, new[step_no[0] % 16])
        step_no[0] += 1

    def multinomial_batch(generator: torch.Generator | None = g) -> None:
        idx = torch.multinomial(priorities, batch, replacement=True, generator=generator)  # [batch]
        priorities[idx] = new[step_no[0] % 16]
        step_no[0] += 1

    contenders: dict[str, Callable[[], None]] = {"sumtree": sumtree_batch}
    result: dict = {"rows": rows, "batch": batch, "device": str(device)}
    try:
        multinomial_batch()
        contenders["multinomial"] = multinomial_batch
    except RuntimeError as err:
        result["multinomial_error"] = str(err).splitlines()[0]
    if device.type == "cuda":
        for name in list(contenders):
            try:
                # graph replays reuse one new-priority row; the default generator is capture-safe
                fn = {"sumtree": sumtree_batch, "multinomial": multinomial_batch}[name]
                contenders[f"{name}_cuda_graph"] = graphed(lambda fn=fn: fn(None))
            except RuntimeError as err:
                result[f"{name}_cuda_graph_error"] = str(err).splitlines()[0]

    for step in contenders.values():  # warm-up: allocator, kernels, caches
        timed(step, 0.05 * seconds / len(contenders), device)
    totals = {name: [0, 0.0] for name in contenders}
    names = list(contenders)
    for r in range(ROUNDS):
        for name in names if r % 2 == 0 else names[::-1]:
            n, elapsed = timed(contenders[name], seconds / ROUNDS / len(contenders), device)
            totals[name][0] += n
            totals[name][1] += elapsed
    rate = {name: round(n / elapsed, 1) for name, (n, elapsed) in totals.items()}

    result["sumtree_batches_per_s"] = rate["sumtree"]
    result["multinomial_batches_per_s"] = rate.get("multinomial")
    result["speedup"] = round(rate["sumtree"] / rate["multinomial"], 2) if "multinomial" in rate else None
    if device.type == "cuda":
        for name in ("sumtree", "multinomial"):
            if f"{name}_cuda_graph" in rate:
                result[f"{name}_cuda_graph_batches_per_s"] = rate[f"{name}_cuda_graph"]
        if "multinomial" in rate and "sumtree_cuda_graph" in rate:
            result["speedup_sumtree_graph_vs_multinomial"] = round(rate["sumtree_cuda_graph"] / rate["multinomial"], 2)
    result |= {
        "branching": tree.branching,
        "top": tree.top,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    return result


def main() -> None:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds, shared by all contenders")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--branching", type=int, default=32, help="SumTree layout")
    parser.add_argument("--top", type=int, default=32, help="SumTree layout")
    args = parser.parse_args()
    for name, low in (("rows", 1), ("batch", 1), ("branching", 2), ("top", 1)):
        if getattr(args, name) < low:
            parser.error(f"--{name} must be >= {low}, got {getattr(args, name)}")
    if not args.seconds > 0:
        parser.error(f"--seconds must be > 0, got {args.seconds}")
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        parser.error(str(err))
    print(json.dumps(measure(args.rows, args.batch, args.seconds, device, args.branching, args.top)))


if __name__ == "__main__":
    main()
