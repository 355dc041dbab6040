"""Our updates per second against d3rlpy's, taken side by side in alternating rounds.

This VM's speed drifts by 20% or more from minute to minute, so one figure of each library
taken minutes apart can give a ratio that is off by a third. Here each round runs
benchmarks/throughput.py and benchmarks/d3rlpy_throughput.py one right after the other
(in the opposite order every other round), each for about the same seconds. It reports every
round's pair, the median of each library, and the ratio of the medians with the range of the
per-round ratios.

    python benchmarks/versus_d3rlpy.py --agent cql awac --rounds 5 --seconds 6 \
        --d3rlpy-python /tmp/d3venv/bin/python

d3rlpy needs its own environment (benchmarks/d3rlpy_throughput.py says how). Both sides run
at d3rlpy's sizes: 256x2 MLPs, batch 256, 2 critics, 100k synthetic HalfCheetah-sized rows.
Prints one JSON line per agent.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from agents.core.config import UPDATE_PRECISIONS

HERE = Path(__file__).resolve().parent
D3RLPY_AGENTS = ("td3bc", "td3", "sac", "cql", "calql", "iql", "awac")


# glibc's malloc settings that worldmodels.memory.keep_freed_memory() makes in our processes, given to d3rlpy's
# process through the environment when --d3rlpy-keep-freed-memory asks for a like-for-like allocator
KEEP_FREED_TUNABLES = "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=2147483647"


def run_json(cmd: list[str], env: dict | None = None) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent, env=env)
    if out.returncode != 0:
        raise SystemExit(f"benchmark failed ({' '.join(cmd)}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def ours(agent: str, seconds: float, precision: str, device: str = "cpu") -> float:
    cmd = [sys.executable, str(HERE / "throughput.py"), "--agent", agent, "--seconds", str(seconds),
           "--hidden", "256", "256", "--precision", precision, "--device", device]
    return run_json(cmd)["updates_per_second"]


def d3rlpy(python: str, agent: str, steps: int, keep_freed: bool, device: str = "cpu") -> float:
    env = os.environ | {"GLIBC_TUNABLES": KEEP_FREED_TUNABLES} if keep_freed else None
    cmd = [python, str(HERE / "d3rlpy_throughput.py"), "--agent", agent, "--steps", str(steps),
           "--device", "cuda:0" if device == "cuda" else "cpu:0"]
    return run_json(cmd, env)["updates_per_second"]


def compare(agent: str, rounds: int, seconds: float, python: str, precision: str = "float32",
            keep_freed: bool = False, device: str = "cpu") -> dict:
    pairs: list[tuple[float, float]] = []
    guess = None  # d3rlpy's rate, to size its step count to about `seconds`
    for r in range(rounds):
        order = ("ours", "d3rlpy") if r % 2 == 0 else ("d3rlpy", "ours")
        figures = {}
        for side in order:
            if side == "ours":
                figures["ours"] = ours(agent, seconds, precision, device)
            else:
                steps = max(50, round((guess or figures.get("ours", 100.0) / 2) * seconds))
                figures["d3rlpy"] = guess = d3rlpy(python, agent, steps, keep_freed, device)
        pairs.append((figures["ours"], figures["d3rlpy"]))
        print(f"# {agent} round {r + 1}: ours {figures['ours']:.1f}, d3rlpy {figures['d3rlpy']:.1f} updates/s",
              file=sys.stderr, flush=True)
    ours_median = statistics.median(p[0] for p in pairs)
    theirs_median = statistics.median(p[1] for p in pairs)
    ratios = [a / b for a, b in pairs]
    return {"agent": agent, "device": device, "rounds": rounds, "seconds": seconds, "precision": precision,
            "d3rlpy_keep_freed_memory": keep_freed,
            "ours": [p[0] for p in pairs], "d3rlpy": [p[1] for p in pairs],
            "ours_median": ours_median, "d3rlpy_median": theirs_median,
            "ratio_of_medians": round(ours_median / theirs_median, 2),
            "round_ratio_min": round(min(ratios), 2), "round_ratio_max": round(max(ratios), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agent", nargs="+", required=True, choices=D3RLPY_AGENTS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per side per round")
    parser.add_argument("--d3rlpy-python", default="/tmp/d3venv/bin/python",
                        help="the interpreter of an environment with d3rlpy 2.8.1 installed")
    parser.add_argument("--precision", choices=UPDATE_PRECISIONS, default="float32",
                        help="our updates' matmul dtype (trainer.precision); d3rlpy's stay float32")
    parser.add_argument("--d3rlpy-keep-freed-memory", action="store_true",
                        help="give d3rlpy's process the malloc settings ours makes (worldmodels/memory.py)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="both sides run on this device")
    args = parser.parse_args()
    if not Path(args.d3rlpy_python).exists():
        raise SystemExit(f"--d3rlpy-python {args.d3rlpy_python} does not exist; make d3rlpy's environment first "
                         "(benchmarks/d3rlpy_throughput.py's docstring has the two commands).")
    for agent in args.agent:
        print(json.dumps(compare(agent, args.rounds, args.seconds, args.d3rlpy_python, args.precision,
                                 args.d3rlpy_keep_freed_memory, args.device)), flush=True)


if __name__ == "__main__":
    main()
