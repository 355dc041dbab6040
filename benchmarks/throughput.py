"""Updates per second of one agent at standard sizes (256x2 MLPs, batch 256), on the current
device, from a synthetic HalfCheetah-sized store (obs 17, act 6, 100k transitions) so the figure
measures the update, not data loading.

    python benchmarks/throughput.py --agent td3bc --seconds 20

Model-based agents (those whose config turns a world model on: mopo, moore) run with their world
model at the paper's settings (7x4x200 ensemble, a rollout round of 50k start states x h = 5
every 1000 updates, 5% real data), so their figure is updates per second with the rollout cost
amortized in; the ensemble is fitted for one epoch first (fitting is benchmarked by benchmarks/model.py).

`--phase online` times the online-phase update instead: the agent is switched as the trainer
switches it (`on_phase`: PEX's policy set, ACA's re-parameterized critic, UPQ's penalty), batches
come from the agent's own sampler config (configs/<agent>.yaml: 50/50 symmetric, Off2On's balanced
replay with its density-ratio step, APL's windows ...) over the offline store and an online store
of 20k synthetic rows, and the sampler's `after_update` runs as the trainer runs it.

Prints one JSON line. The warm-up updates (first 10% of the time) are not counted.

`--flops` adds the arithmetic: the floating-point operations of one update (counted by
torch.utils.flop_counter over 20 updates: matmuls, the work that grows with the nets), the rate
they ran at, and this machine's rate on a plain 256-wide matmul at the same thread count, so a
figure can be read against what the hardware does at all (benchmarks/d3rlpy_throughput.py
--flops counts d3rlpy's update the same way).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from agents.core.agent import EnvSpec, update_autocast
from agents.core.config import UPDATE_PRECISIONS, ConfigError, keep_freed_memory_checked, resolve_device
from agents.core.registry import discover_agents
from worldmodels.data.fields import add_fields, fill_offline
from worldmodels.data.samplers import SamplerConfig, Sources, make_sampler
from worldmodels.data.store import CORE_FIELDS, TransitionStore
from worldmodels.progress import Progress
from worldmodels.rollout import RolloutConfig
from worldmodels.world import WorldModelConfig, make_world_model, store_fit_data

AGENTS = discover_agents()  # name -> (agent class, config class): every agent in agents/
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CPU = torch.device("cpu")
ONLINE_ROWS = 20_000  # online store of the online-phase benchmark


def synthetic_store(n: int, obs_dim: int, act_dim: int, device: torch.device) -> TransitionStore:
    g = torch.Generator().manual_seed(0)
    return TransitionStore.from_tensors(
        {"obs": torch.randn(n, obs_dim, generator=g), "act": torch.rand(n, act_dim, generator=g) * 2 - 1,
         "rew": torch.randn(n, generator=g), "next_obs": torch.randn(n, obs_dim, generator=g),
         "terminal": (torch.rand(n, generator=g) < 0.01).float(), "truncated": torch.zeros(n)},
        device=device,
    )


def matmul_gflops(device: torch.device, seconds: float = 2.0, rows: int = 8192, width: int = 256) -> float:
    """The machine's rate on [rows, width] @ [width, width] in float32: the size of the layers a
    CQL update runs, so the ceiling an update made of such matmuls can approach."""
    x, w = torch.randn(rows, width, device=device), torch.randn(width, width, device=device)
    for _ in range(10):
        x @ w  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            x @ w
        n += 10
        if device.type == "cuda":
            torch.cuda.synchronize()
    return 2 * rows * width * width * n / (time.perf_counter() - start) / 1e9


def count_update_flops(agent, sampler, progress: Progress, batch_size: int, updates: int = 20,
                       precision: str = "float32", device: torch.device = CPU) -> float:
    """Mean floating-point operations of one `agent.update` (what FlopCounterMode counts: matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        for _ in range(updates):
            batch = sampler.sample(batch_size, progress)
            with update_autocast(device, precision):
                info = agent.update(batch, progress)
            sampler.after_update(batch, info)
    return counter.get_total_flops() / updates


def agent_run_config(agent_name: str):
    """The run config `python -m agents.<name>` composes (its sampler and world-model groups are read)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from agents.core.config import RunConfig

    ConfigStore.instance().store(name=f"{agent_name}_schema", node=RunConfig(agent=AGENTS[agent_name][1]()))
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return OmegaConf.to_object(compose(config_name=agent_name))


def set_fields(cfg, assignments: list[str]) -> dict[str, object]:
    """Apply `field=value` to the agent config (values parsed as YAML: true, 0.5, [256,256]); returns them."""
    fields = {f.name for f in dataclasses.fields(cfg)}
    applied = {}
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"--set {item}: give FIELD=VALUE with FIELD one of {', '.join(sorted(fields))}")
        applied[key] = OmegaConf.to_container(OmegaConf.create(f"value: {text}"))["value"]  # YAML
        setattr(cfg, key, applied[key])
    return applied


def measure(agent_name: str, seconds: float, device: torch.device, batch_size: int = 256,
            critics: int | None = None, hidden: list[int] | None = None, flops: bool = False,
            phase: str = "offline", precision: str = "float32", settings: list[str] | None = None,
            compile_update: bool = False) -> dict:
    agent_cls, config_cls = AGENTS[agent_name]
    spec = EnvSpec(17, 6, -torch.ones(6), torch.ones(6))
    torch.manual_seed(0)
    cfg = config_cls()
    applied = set_fields(cfg, settings or [])
    if hidden is not None:  # d3rlpy's sizes (256x2) where an agent's default differs (CQL, AWAC: 3x256)
        cfg.hidden = hidden
    if critics is not None:  # e.g. REDQ with 10 critics against 2: the ensemble's marginal cost
        if not hasattr(cfg, "num_critics"):
            raise ValueError(f"{agent_name} has no critic ensemble to resize")
        cfg.num_critics = critics
        if hasattr(cfg, "num_min"):
            cfg.num_min = min(cfg.num_min, critics)
    agent = agent_cls(cfg, spec, device)
    update = agent.update
    if compile_update:  # an experiment, not a run option: inductor over the whole update (graph breaks at backward)
        from torch import _dynamo

        _dynamo.config.allow_unspec_int_on_nn_module = True  # num_updates += 1 must not recompile
        update = torch.compile(update)
    store = synthetic_store(100_000, 17, 6, device)
    add_fields(store, agent.transition_fields())  # as the trainer does: Cal-QL's return-to-go
    fill_offline(store, agent.transition_fields())
    agent.on_offline_start(store)
    world = None
    run_cfg = agent_run_config(agent_name)
    if run_cfg.world_model.kind != "none":  # a model-based agent (mopo, moore): its world model at paper settings
        world = make_world_model(WorldModelConfig(kind="ensemble", fit_max_epochs=1), RolloutConfig(),
                                 17, 6, "HalfCheetah-v5", device)
        world.fit(store_fit_data(store))
    # the trainer's data path: offline rows, online rows (online phase), imagined rows (model-based agents)
    online_rows = ONLINE_ROWS if phase == "online" else 0
    online = TransitionStore(max(online_rows, 1), 17, 6, device, source="online")
    add_fields(online, agent.transition_fields())
    sources = Sources(store, online, world.store if world else None)
    sampler_cfg = run_cfg.sampler if phase == "online" else SamplerConfig()
    sampler = make_sampler(sampler_cfg, sources, world.rollout_cfg.real_ratio if world else 1.0)
    if phase == "online":
        fresh = synthetic_store(online_rows, 17, 6, device)
        rows = online.add(**{k: fresh.data[k][:online_rows] for k in CORE_FIELDS})
        sampler.rows_added("online", rows)
        offline_updates = 10**6
        progress = Progress("online", offline_updates, online_rows, offline_updates, offline_updates, 10**9)
        agent.on_phase(progress)  # the switch, as the trainer makes it
    else:
        progress = Progress("offline", 0, 0, 0, 10**9, 0)
    total = 0

    def run_for(budget: float) -> int:
        nonlocal total
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < budget:
            for _ in range(50):
                if world is not None and world.due(total):
                    world.generate(lambda o: agent.act(o), lambda n: sampler.sample_real(n, progress))
                batch = sampler.sample(batch_size, progress)
                with update_autocast(device, precision):  # as the trainer runs an update (trainer.precision)
                    info = update(batch, progress)
                sampler.after_update(batch, info)
                total += 1
            n += 50
        if device.type == "cuda":
            torch.cuda.synchronize()
        return n

    run_for(0.1 * seconds)  # warm-up: allocator, kernels
    start = time.perf_counter()
    n = run_for(seconds)
    elapsed = time.perf_counter() - start
    arithmetic = {}
    if flops:
        gflop = count_update_flops(agent, sampler, progress, batch_size, precision=precision, device=device) / 1e9
        arithmetic = {"gflop_per_update": round(gflop, 3), "achieved_gflops": round(gflop * n / elapsed, 1),
                      "matmul_gflops": round(matmul_gflops(device), 1)}
    return {"agent": agent_name, "phase": phase, "sampler": sampler_cfg.kind if phase == "online" else "uniform",
            "updates_per_second": round(n / elapsed, 1), "updates": n, **arithmetic,
            "seconds": round(elapsed, 2), "batch_size": batch_size, "precision": precision,
            "hidden": list(getattr(cfg, "hidden", [256, 256])),  # the agent's default (CQL: CORL's 3x256)
            "critics": getattr(cfg, "num_critics", None), **({"set": applied} if applied else {}),
            **({"compiled": True} if compile_update else {}),
            "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agent", required=True, choices=sorted(AGENTS))
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--critics", type=int, default=None, help="override the agent's num_critics")
    parser.add_argument("--hidden", type=int, nargs="+", default=None, help="override the agent's hidden sizes")
    parser.add_argument("--flops", action="store_true", help="add FLOPs per update and the machine's matmul rate")
    parser.add_argument("--phase", choices=["offline", "online"], default="offline",
                        help="time the offline update (uniform batches) or the online one (after the switch)")
    parser.add_argument("--precision", choices=UPDATE_PRECISIONS, default="float32",
                        help="the updates' matmul dtype, as trainer.precision sets it for a run")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="an agent config field, e.g. --set critic_layer_norm=true (repeatable)")
    parser.add_argument("--compile", action="store_true",
                        help="time torch.compile(agent.update) instead of the eager update (an experiment)")
    args = parser.parse_args()
    try:
        keep_freed_memory_checked()  # worldmodels/memory.py; O2O_KEEP_FREED_MEMORY=0 measures without
        device = resolve_device(args.device)
    except ConfigError as err:
        parser.error(str(err))  # one line, exit status 2
    try:
        set_fields(AGENTS[args.agent][1](), args.set)  # a bad --set fails here in one line, before any work
    except ValueError as err:
        parser.error(str(err))
    print(json.dumps(measure(args.agent, args.seconds, device, critics=args.critics, hidden=args.hidden,
                             flops=args.flops, phase=args.phase, precision=args.precision, settings=args.set,
                             compile_update=args.compile)))


if __name__ == "__main__":
    main()
