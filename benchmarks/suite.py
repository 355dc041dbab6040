"""The evaluation suite: agents x datasets x seeds through hydra multirun, then the report.

    python -m benchmarks.suite suite=smoke|quick|paper out=DIR [agents=[bc,td3bc]] [datasets=[default]]
                               [seeds=N] [reps=2000] [KEY=VALUE ...] [hydra/launcher=slurm hydra.launcher.X=...]

A preset (configs/suite/<name>.yaml) names the agents (`all`: every agents/<name>.py, found by
agents/core/registry.py, so a new agent joins by existing), the datasets (configs/dataset/
names), the number of seeds and the overrides every run gets; `agents=`, `datasets=`, `seeds=`
replace the preset's, and any other KEY=VALUE is added to every run's overrides (e.g.
`trainer.online_steps=2000`, `threads=1`, `device=cuda`).

Each agent's jobs go to one `python -m agents.<name> -m ...` sweep on the local parallel
launcher (`hydra/launcher=local`, joblib) unless a `hydra/launcher=` is given (`slurm`). A job's
directory is DIR/runs/<agent>/<its overrides>/, hydra's override_dirname as configs/common.yaml
sets it, so the same command finds the same directories: a run with summary.json is finished and
skipped, a run with a checkpoint is started again and resumes from it (agents/core/entry.py), the
rest start fresh. Then the report (benchmarks/report.py) goes into DIR: every finished run in DIR/runs,
this command's and those of earlier commands with the same out=.

`start_from=SOURCE` shares offline phases: each run of the listed agents takes over the offline phase of
agent SOURCE's run on the same dataset and seed (`trainer.start_from`, the source's switch.pt) and trains
only its own online phase. The source runs are the suite's too: made first when missing, with the suite's
overrides, and in the report beside their branches. `branch.KEY=VALUE` overrides go to the branches only
(what makes them differ from the source). UPQ's three betas from one Off2On pretraining:

    python -m benchmarks.suite suite=quick out=DIR agents=[upq] start_from=off2on branch.agent.pessimism_beta=0.1
    python -m benchmarks.suite suite=quick out=DIR agents=[upq] start_from=off2on branch.agent.pessimism_beta=0.01

(the second finds the Off2On runs the first made). A branch's directory name ends in `from=<hash of
the source's path>` (agents/core/rundir.py run_name).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from agents.core.rundir import SWITCH_FILE, run_name
from benchmarks.report import find_runs, make_report

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
SUITE_KEYS = ("suite", "out", "agents", "datasets", "seeds", "reps", "start_from")
BRANCH = "branch."  # the prefix of overrides for the runs that start from another agent's, not for the sources
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Job:
    agent: str
    dataset: str
    seed: int
    run_dir: Path
    extra: dict[str, str] = field(default_factory=dict)  # the job's own overrides beyond the suite's (rollout=)
    # the job's task overrides but dataset and seed: the suite's and extra, and for a branch (start_from) its
    # branch. overrides and the trainer.start_from template; jobs with the same ones share a sweep
    overrides: dict[str, str] = field(default_factory=dict)
    source: Path | None = None  # the run whose offline phase a branch takes over (start_from)

    @property
    def status(self) -> str:
        """finished (summary.json), resume (a checkpoint of a cut-off run) or new."""
        if (self.run_dir / "summary.json").exists():
            return "finished"
        if (self.run_dir / "checkpoint.pt").exists():
            return "resume"
        return "new"


@dataclass
class Suite:
    agents: list[str]
    datasets: list[str]
    seeds: int
    overrides: dict[str, str]  # every run's task overrides (they name its directory)
    hydra: dict[str, str]  # hydra overrides: launcher and its fields (never in the directory name)
    start_from: str | None = None  # an agent whose runs' offline phases the suite's agents take over
    branch: dict[str, str] = field(default_factory=dict)  # task overrides of the agents' runs only (with start_from)


def fmt(value) -> str:
    """A YAML value as a hydra override value (lists as [a,b], booleans and null in lowercase)."""
    if isinstance(value, list | tuple):
        return "[" + ",".join(fmt(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def as_job_value(key: str, value: str) -> str:
    """A task override's value as hydra's multirun writes it into each job's overrides, and so into the job's
    directory name: parsed and printed back (true -> True, 1e-3 -> 0.001), as its BasicSweeper does. The
    suite names the directories it expects with the same text, so it finds the runs a sweep made."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_override(f"{key}={value}").get_value_element_as_str()
    except HydraException as err:  # one line from main(), not a parser traceback
        raise ValueError(f"{key}={value} is not a valid hydra override ({err}); quote or fix its value") from err


def as_list(text) -> list[str]:
    """`[a,b]`, `a,b` or a YAML list -> ['a', 'b']."""
    if isinstance(text, list | tuple):
        return [str(t) for t in text]
    text = str(text).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return [t.strip() for t in text.split(",") if t.strip()]


def all_agents() -> list[str]:
    from agents.core.registry import discover_agents

    return sorted(discover_agents())


def load_suite(args: dict[str, str]) -> Suite:
    """The preset named by `suite=` with the command line's replacements and extra overrides."""
    name = args.get("suite", "smoke")
    path = CONFIG_DIR / "suite" / f"{name}.yaml"
    if not path.exists():
        names = ", ".join(sorted(p.stem for p in (CONFIG_DIR / "suite").glob("*.yaml")))
        raise ValueError(f"suite={name} is not a preset; choose one of {names}")
    preset = OmegaConf.to_container(OmegaConf.load(path))
    known = all_agents()
    agents = args.get("agents", preset["agents"])
    agents = known if agents == "all" else as_list(agents)
    unknown = [a for a in agents if a not in known]
    if unknown:
        raise ValueError(f"unknown agent(s) {', '.join(unknown)}; the agents are {', '.join(known)}")
    datasets = as_list(args.get("datasets", preset["datasets"]))
    unknown = [d for d in datasets if not (CONFIG_DIR / "dataset" / f"{d}.yaml").exists()]
    if unknown:
        raise ValueError(f"unknown dataset(s) {', '.join(unknown)}: each must be a configs/dataset/<name>.yaml "
                         "(a Minari id goes in as dataset.id=ID with datasets=[default])")
    seeds = int(args.get("seeds", preset["seeds"]))
    if seeds < 1:
        raise ValueError(f"seeds={seeds}: give at least 1")
    branch = {k[len(BRANCH):]: v for k, v in args.items() if k.startswith(BRANCH)}
    extra = {k: v for k, v in args.items() if k not in SUITE_KEYS and not k.startswith(BRANCH)}
    for key in ("seed", "dataset"):
        if key in extra:
            raise ValueError(f"{key}= is set by the suite; use {key}s= instead")
    overrides = {k: fmt(v) for k, v in preset.get("overrides", {}).items()}
    overrides |= {k: v for k, v in extra.items() if not k.startswith("hydra")}
    overrides = {k: as_job_value(k, v) for k, v in overrides.items()}
    hydra = {"hydra/launcher": "local"} | {k: v for k, v in extra.items() if k.startswith("hydra")}
    source = args.get("start_from")
    if source is not None and source not in known:
        raise ValueError(f"start_from={source} is not an agent; name the agent whose offline phases the runs take "
                         f"over (one of {', '.join(known)})")
    if source is not None and "trainer.start_from" in overrides | branch:
        raise ValueError("give start_from=AGENT (the suite finds each run's source) or trainer.start_from=, not both")
    if branch and source is None:
        raise ValueError(f"{', '.join(BRANCH + k for k in branch)}: branch. overrides are for the runs that "
                         "start from another agent's; add start_from=AGENT, or drop the prefix")
    branch = {k: as_job_value(k, v) for k, v in branch.items()}
    return Suite(agents, datasets, seeds, overrides, hydra, source, branch)


def excluded_keys() -> list[str]:
    """The keys that do not name a run directory (configs/common.yaml)."""
    common = OmegaConf.load(CONFIG_DIR / "common.yaml")
    return list(common.hydra.job.config.override_dirname.exclude_keys)


def override_dirname(overrides: dict[str, str], start_from: Path | None = None) -> str:
    """The directory name a job with these task overrides gets (configs/common.yaml): hydra's override_dirname
    (the `key=value` lines, excluded keys left out, sorted, joined by commas), then the tag of the run it
    starts from, `start_from` or a trainer.start_from among the overrides (a user's, for every run)."""
    skip = set(excluded_keys())
    if start_from is None and "trainer.start_from" in overrides:  # relative to where the jobs run (REPO_ROOT)
        start_from = REPO_ROOT / overrides["trainer.start_from"].strip("'\"")
    return run_name(",".join(sorted(f"{k}={v}" for k, v in overrides.items() if k not in skip)),
                    None if start_from is None else str(start_from))


def model_based(agent: str, overrides: dict[str, str] | None = None) -> bool:
    """Whether the agent's runs have a world model: `world_model=` among the overrides (any agent trains on
    imagined data by that switch), else its root config's defaults list's world_model choice. A world model
    that is never rolled out (`world_model.rollouts=false`) reads no rollout values."""
    if overrides and str(overrides.get("world_model.rollouts", "true")).lower() == "false":
        return False
    if overrides and "world_model" in overrides:
        return overrides["world_model"] != "none"
    defaults = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / f"{agent}.yaml")).get("defaults", [])
    return any(isinstance(d, dict) and d.get("world_model", "none") != "none" for d in defaults)


def rollout_for(agent: str, dataset: str, overrides: dict[str, str]) -> dict[str, str]:
    """A model-based agent on a dataset with MOPO's tuned (h, lambda) in configs/rollout/<dataset>.yaml runs
    with them (rollout=<dataset>), unless the suite's overrides name a rollout. The default dataset keeps the
    agent's own choice, which is written for it (configs/rollout/default.yaml is the base of the others)."""
    from agents.core.entry import dataset_rollout

    own = dataset_rollout(dataset)
    if "rollout" in overrides or own is None or not model_based(agent, overrides):
        return {}
    return {"rollout": own}


def source_template(out: Path, source: str, overrides: dict[str, str]) -> str:
    """trainer.start_from for one dataset's branches: the source run's directory (`overrides` name it, dataset
    included) with the seed left for hydra to fill in at each job (`${seed}`), so one sweep covers the seeds.
    Quoted: the path holds `=` and `,`. Sorting puts `seed=${seed}` where `seed=0` would be, since two
    different keys differ before their values do."""
    return f"'{out / 'runs' / source}/{override_dirname(overrides | {'seed': '${seed}'})}'"


def plan(suite: Suite, out: Path) -> list[Job]:
    """Every run of the suite: the sources first (start_from), then the agents' runs, in grid order."""
    jobs, templates = [], {}
    if suite.start_from is not None:
        for dataset in suite.datasets:
            extra = rollout_for(suite.start_from, dataset, suite.overrides)
            overrides = suite.overrides | extra
            templates[dataset] = source_template(out, suite.start_from, overrides | {"dataset": dataset})
            for seed in range(suite.seeds):
                name = override_dirname(overrides | {"dataset": dataset, "seed": str(seed)})
                jobs.append(Job(suite.start_from, dataset, seed, out / "runs" / suite.start_from / name, extra,
                                overrides))
    sources = {(j.dataset, j.seed): j.run_dir for j in jobs}
    for agent in suite.agents:
        for dataset in suite.datasets:
            own = suite.overrides | suite.branch
            extra = rollout_for(agent, dataset, own)
            overrides = own | extra
            start = {"trainer.start_from": templates[dataset]} if templates else {}
            for seed in range(suite.seeds):
                source = sources.get((dataset, seed))
                name = override_dirname(overrides | {"dataset": dataset, "seed": str(seed)}, source)
                jobs.append(Job(agent, dataset, seed, out / "runs" / agent / name, extra, overrides | start, source))
    return jobs


def sources_without_switch(jobs: list[Job]) -> list[Path]:
    """Finished source runs that an unfinished branch needs but that hold no switch.pt: a record committed
    under results/ (switch.pt stays on the machine that made it) or a run made before 2026-12-05. The suite
    would skip them and every branch would fail, so it stops first."""
    return sorted({j.source for j in jobs if j.source is not None and j.status != "finished"
                   and (j.source / "summary.json").exists() and not (j.source / SWITCH_FILE).exists()})


def sweeps(jobs: list[Job]) -> list[tuple[str, list[str], list[int], dict[str, str]]]:
    """The unfinished jobs as few hydra sweeps as their grid allows, in the jobs' order (sources first):
    (agent, datasets, seeds, overrides), one per agent, set of seeds still to run and job overrides (a
    model-based agent's datasets with their own rollout values go to sweeps of their own)."""
    todo: dict[tuple, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for j in jobs:
        if j.status != "finished":
            todo[(j.agent, tuple(j.overrides.items()))][j.dataset].append(j.seed)
    out = []
    for (agent, overrides), by_dataset in todo.items():
        by_seeds: dict[tuple[int, ...], list[str]] = defaultdict(list)
        for dataset, seeds in by_dataset.items():
            by_seeds[tuple(seeds)].append(dataset)
        out += [(agent, datasets, list(seeds), dict(overrides)) for seeds, datasets in by_seeds.items()]
    return out


def sweep_command(suite: Suite, out: Path, agent: str, datasets: list[str], seeds: list[int],
                  overrides: dict[str, str]) -> list[str]:
    """The hydra multirun of one sweep: `overrides` are its task overrides but dataset and seed (Job.overrides)."""
    return [sys.executable, "-m", f"agents.{agent}", "-m", f"hydra.sweep.dir={out / 'runs' / agent}",
            *(f"{k}={v}" for k, v in suite.hydra.items()), *(f"{k}={v}" for k, v in overrides.items()),
            f"dataset={','.join(datasets)}", f"seed={','.join(map(str, seeds))}"]


def pinned_store(out: Path) -> Path | None:
    """The Minari store of the records kept in git (results/datasets) when `out` lies under results/: the recipe
    gives other bits on another CPU, so runs added to committed records must train on the pinned data to share
    their rows (results/README.md). None for any other `out`."""
    results = REPO_ROOT / "results"
    return results / "datasets" if out.absolute().is_relative_to(results) else None


def run_suite(suite: Suite, out: Path, reps: int = 2000) -> tuple[Path, list[Job]]:
    """Run what is not finished, then write the report; returns (report.md, the jobs without a summary)."""
    out = out.absolute()
    jobs = plan(suite, out)
    counts = defaultdict(int)
    for j in jobs:
        counts[j.status] += 1
    stale = sources_without_switch(jobs)
    if stale:
        raise ValueError(f"{len(stale)} finished {suite.start_from} run(s) that branches start from hold no "
                         f"{SWITCH_FILE} (made on another machine, or before 2026-12-05), e.g. {stale[0]}: move "
                         "them out of the way and the suite makes them again with it")
    sources = f" + {suite.start_from}'s to start from" if suite.start_from else ""
    print(f"suite: {len(jobs)} runs ({len(suite.agents)} agents{sources} x {len(suite.datasets)} datasets x "
          f"{suite.seeds} seeds): {counts['finished']} finished (skipped), {counts['resume']} to resume, "
          f"{counts['new']} new",
          flush=True)
    env = os.environ.copy()
    if suite.hydra["hydra/launcher"] != "slurm":
        env.setdefault("OMP_NUM_THREADS", "1")  # parallel local jobs: one thread each
    store = pinned_store(out)
    if store is not None and "MINARI_DATASETS_PATH" not in env:
        env["MINARI_DATASETS_PATH"] = str(store)
        print(f"suite: datasets from {store}, the data of the committed records (set MINARI_DATASETS_PATH to "
              "use another store)", flush=True)
    for agent, datasets, seeds, overrides in sweeps(jobs):
        cmd = sweep_command(suite, out, agent, datasets, seeds, overrides)
        print("suite:", " ".join(cmd[1:]), flush=True)
        code = subprocess.run(cmd, cwd=REPO_ROOT, env=env).returncode
        if code != 0:
            print(f"suite: the {agent} sweep exited with status {code}; continuing with the others", file=sys.stderr)
    failed = [j for j in jobs if j.status != "finished"]
    header = ""
    if failed:
        header = "**Runs without a result** (rerun the same command to resume them):\n\n" + "\n".join(
            f"- {j.agent} / {j.dataset} / seed {j.seed}: {j.run_dir}" for j in failed)
    finished = [j.run_dir for j in jobs if j.status == "finished"]
    if not finished:
        raise RuntimeError("no run of the suite finished; see the errors above")
    # DIR/report.md describes DIR: earlier commands' runs there (other agents, branches, seeds) stay in it
    done = {p.resolve() for p in finished}
    earlier = [r.path for r in find_runs([out / "runs"])[0] if r.path not in done]
    if earlier:
        header += ("\n\n" if header else "") + (f"With {len(earlier)} finished run(s) of earlier commands in "
                                                 f"{out / 'runs'}: the report covers every run there.")
    branch = f" (online phases from {suite.start_from}'s offline ones)" if suite.start_from else ""
    own = f"; their own overrides {' '.join(f'{k}={v}' for k, v in suite.branch.items())}" if suite.branch else ""
    preset = (f"Suite: agents {', '.join(suite.agents)}{branch}; datasets {', '.join(suite.datasets)}; "
              f"{suite.seeds} seeds; overrides {' '.join(f'{k}={v}' for k, v in suite.overrides.items())}{own}.")
    return make_report(finished + earlier, out, reps=reps, header=preset + ("\n\n" + header if header else "")), failed


def parse(argv: list[str]) -> dict[str, str]:
    bad = [a for a in argv if "=" not in a]
    if bad:
        raise ValueError(f"arguments are KEY=VALUE; got {' '.join(bad)}")
    return dict(a.split("=", 1) for a in argv)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
        if "out" not in args:
            raise ValueError("give out=DIR (the runs go to DIR/runs/, the report to DIR/report.md)")
        if not str(args.get("reps", "2000")).isdigit():
            raise ValueError(f"reps={args['reps']}: give a non-negative integer (bootstrap resamples)")
        suite = load_suite(args)
        report, failed = run_suite(suite, Path(args["out"]), int(args.get("reps", 2000)))
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"suite: report in {report}" + (f"; {len(failed)} runs without a result" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
