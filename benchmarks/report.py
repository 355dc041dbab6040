"""The evaluation report of any set of run directories: tables in report.md and PNG curves.

    python -m benchmarks.report runs/td3bc runs/iql multirun/... out=report/ [reps=2000] [seed=0]

Every directory holding a summary.json below the given ones is a finished run (folders named
`previous/`, the results a `resume=false` moved aside, are skipped); run directories without
one are listed as unfinished. Runs are grouped by agent (the summary's `agent`) and dataset (its
`dataset_id`); the seeds of a group are its runs. Runs of one agent whose configs differ on the same
dataset are variants, each its own column named by what differs: `pex (selection_penalty=1.0)`.
Runs whose data under one id differ (the summary's `dataset_sha256`: a recipe dataset rebuilt on
another machine or with other code) are never pooled:
each version becomes its own dataset row, named `id @sha`, and report.md says so.

report.md holds:
- one row per dataset, a column pair per agent: offline -> online normalized score, mean +- std
  over seeds;
- per agent and dataset the three criteria: (1) the offline score, (2) the dip = the lowest online
  evaluation minus the offline score, (3) the online env steps until an online evaluation first
  reaches 90% of the final online score (n/a when the final score is not positive); and the last
  offline evaluation minus the best one (a collapse inside the offline phase);
- per agent aggregates across datasets with stratified bootstrap 95% intervals
  (benchmarks/estimators.py): IQM, mean, optimality gap, and P(online > offline);
- the datasets' behaviour-policy returns (random = ref_min, expert = ref_max, the recipe's
  medium target, the data's own mean episode return).

PNGs: `curve_<dataset>.png` (normalized score against total steps, one line per agent, mean and
a 95% bootstrap band over seeds, the offline -> online switch marked) and `aggregate.png`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from agents.core.registry import discover_agents
from agents.core.rundir import flat_config
from benchmarks import estimators as est
from worldmodels.data.samplers import SamplerConfig
from worldmodels.rollout import RolloutConfig
from worldmodels.world import WorldModelConfig

PREVIOUS_DIR = "previous"


@dataclass
class Run:
    """One finished run: its summary, its evaluations and the quantities the report needs."""

    path: Path
    agent: str
    dataset: str
    seed: int
    offline: float | None  # final offline evaluation (normalized)
    online: float | None  # final online evaluation
    evals: list[dict] = field(default_factory=list)  # eval.csv rows: step, phase, env_steps, normalized_score
    config: dict = field(default_factory=dict)  # run_config.yaml
    dataset_id: str | None = None  # the Minari id (`dataset` also names the version when ids collide)
    fingerprint: str | None = None  # the summary's dataset_sha256

    @property
    def online_evals(self) -> list[dict]:
        return [r for r in self.evals if r["phase"] == 1 and r["score"] is not None]

    @property
    def dip(self) -> float | None:
        """Lowest online evaluation minus the offline score (negative: the policy got worse first)."""
        scores = [r["score"] for r in self.online_evals]
        if self.offline is None or not scores:
            return None
        return min(scores) - self.offline

    @property
    def steps_to_90(self) -> int | None:
        """Online env steps until an online evaluation first reaches 90% of the final online score."""
        if self.online is None or self.online <= 0:
            return None
        return next((r["env_steps"] for r in self.online_evals if r["score"] >= 0.9 * self.online), None)

    @property
    def offline_drop(self) -> float | None:
        """Last offline evaluation minus the best one (0: the offline phase ended at its best)."""
        scores = [r["score"] for r in self.evals if r["phase"] == 0 and r["score"] is not None]
        return scores[-1] - max(scores) if scores else None

    @property
    def switch_step(self) -> int:
        """The total step at which the online phase starts (the offline updates done)."""
        offline = [r["step"] for r in self.evals if r["phase"] == 0]
        return max(offline) if offline else 0


def _float(text: str | None) -> float | None:
    return None if text in (None, "") else float(text)


def read_evals(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as f:
        return [{"step": int(float(r["step"])), "phase": int(float(r["phase"])),
                 "env_steps": int(float(r["env_steps"])), "score": _float(r.get("normalized_score"))}
                for r in csv.DictReader(f)]


def find_runs(dirs: list[Path]) -> tuple[list[Run], list[Path]]:
    """(finished runs, unfinished run directories) below `dirs`."""
    runs, unfinished, seen = [], [], set()
    for root in dirs:
        for cfg in sorted(Path(root).rglob("run_config.yaml")):
            run_dir = cfg.parent.resolve()
            if PREVIOUS_DIR in run_dir.relative_to(Path(root).resolve()).parts or run_dir in seen:
                continue
            seen.add(run_dir)
            summary_path = run_dir / "summary.json"
            if not summary_path.exists():
                unfinished.append(run_dir)
                continue
            s = json.loads(summary_path.read_text())
            runs.append(Run(run_dir, s["agent"], s.get("dataset_id") or f"{s.get('env_id', '?')} (no data)",
                            int(s["seed"]), s.get("offline_score"), s.get("online_score"),
                            read_evals(run_dir / "eval.csv"), OmegaConf.to_container(OmegaConf.load(cfg)),
                            s.get("dataset_id"), s.get("dataset_sha256")))
    return label_variants(split_versions(runs)), unfinished


def split_versions(runs: list[Run]) -> list[Run]:
    """Name a dataset `id @sha` wherever runs under one id trained on different data."""
    versions: dict[str, set[str | None]] = defaultdict(set)
    for r in runs:
        versions[r.dataset].add(r.fingerprint)
    for r in runs:
        if len(versions[r.dataset]) > 1:
            r.dataset = f"{r.dataset} @{r.fingerprint or 'unknown'}"
    return runs


def version_note(runs: list[Run]) -> str:
    """One line per dataset id that the runs hold in more than one version, or ''."""
    by_id: dict[str, set[str]] = defaultdict(set)
    for r in runs:
        if r.dataset_id and r.dataset != r.dataset_id:
            by_id[r.dataset_id].add(r.dataset)
    return "\n".join(f"- `{i}` has {len(v)} versions among these runs ({', '.join(sorted(v))}): their seeds are "
                     "not pooled; rebuild or copy one version to compare them." for i, v in sorted(by_id.items()))


# The config sections that define what an agent learns; a run's other settings (seed, threads, device,
# evaluation and logging cadence, the dataset that names the row) never make a variant.
VARIANT_SECTIONS = ("agent", "world_model", "rollout", "sampler")
VARIANT_TRAINER_KEYS = ("offline_updates", "online_steps", "updates_per_step", "warmup_steps", "batch_size",
                        "precision")


def _settings(tree: dict) -> dict[str, str]:
    """A nested config as {"a.b": its value as text}, lists as JSON, so two runs' values compare as text."""
    return {k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in flat_config(tree).items()}


def agent_defaults(config_cls: type | None) -> dict[str, str]:
    """An agent config class's current defaults as `agent.<field>` settings, and those of the world model,
    rollout and sampler sections (the agent part is empty for an agent no longer in agents/): a run written
    before a field existed ran with what the field's default keeps (rollout.initial_state_share, 2026-12-07)."""
    shared = _settings({"world_model": dataclasses.asdict(WorldModelConfig()),
                        "rollout": dataclasses.asdict(RolloutConfig()),
                        "sampler": dataclasses.asdict(SamplerConfig())})
    return shared | (_settings({"agent": dataclasses.asdict(config_cls())}) if config_cls else {})


def variant_settings(config: dict, defaults: dict[str, str] | None = None) -> dict[str, str]:
    """The flattened settings of a run's config that make it a variant of its agent; agent fields the run's
    config lacks take `defaults`."""
    picked = {k: config[k] for k in VARIANT_SECTIONS if k in config}
    picked["trainer"] = {k: v for k, v in (config.get("trainer") or {}).items() if k in VARIANT_TRAINER_KEYS}
    return unread_dropped((defaults or {}) | _settings(picked))


def unread_dropped(settings: dict[str, str]) -> dict[str, str]:
    """Settings without those the run never reads, so they cannot split an agent: a model-free run
    (world_model.kind=none) reads no other world_model or rollout field, and a world model that is never rolled
    out (world_model.rollouts=false, PEX's dynamics lower bound) reads no rollout field."""
    if settings.get("world_model.kind") == "none":
        return {k: v for k, v in settings.items() if not k.startswith("rollout.")
                and (not k.startswith("world_model.") or k == "world_model.kind")}
    if settings.get("world_model.rollouts") == "False":
        return {k: v for k, v in settings.items() if not k.startswith("rollout.")}
    return settings


def label_variants(runs: list[Run]) -> list[Run]:
    """Name runs of one agent apart when their configs differ on one dataset (PEX with and without
    `agent.selection_penalty`): `pex (selection_penalty=1.0)`. The keys are those that differ between runs of
    the agent on the same dataset; a value that differs only across datasets (MOPO's per-dataset rollout
    values) does not split the agent."""
    registry = discover_agents()
    defaults = {agent: agent_defaults(registry.get(agent, (None, None))[1]) for agent in {r.agent for r in runs}}
    settings = {id(r): variant_settings(r.config, defaults[r.agent]) for r in runs}
    keys: dict[str, set[str]] = defaultdict(set)  # agent -> distinguishing keys
    by_group: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for r in runs:
        by_group[(r.agent, r.dataset)].append(r)
    for (agent, _), rs in by_group.items():
        every = set().union(*(settings[id(r)] for r in rs))
        # a key a run does not read (unread_dropped) differs only among the runs that read it
        keys[agent] |= {k for k in every if len({settings[id(r)][k] for r in rs if k in settings[id(r)]}) > 1}
    for r in runs:
        if keys[r.agent]:
            shown = ", ".join(f"{k.removeprefix('agent.')}={settings[id(r)][k]}"
                              for k in sorted(keys[r.agent]) if k in settings[id(r)])
            r.agent = f"{r.agent} ({shown})"
    return runs


def group(runs: list[Run]) -> dict[str, dict[str, list[Run]]]:
    """dataset -> agent -> runs (sorted by seed)."""
    out: dict[str, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for r in sorted(runs, key=lambda r: (r.dataset, r.agent, r.seed)):
        out[r.dataset][r.agent].append(r)
    return out


def mean_std(values: list[float | None], fmt: str = "{:.1f}") -> str:
    """'mean +- std' over the defined values (population std; one value: just the value)."""
    v = np.array([x for x in values if x is not None], dtype=float)
    if len(v) == 0:
        return "n/a"
    text = fmt.format(v.mean()) if len(v) == 1 else f"{fmt.format(v.mean())} ± {fmt.format(v.std())}"
    return text + (f" ({len(v)}/{len(values)})" if len(v) < len(values) else "")


# --- tables ---------------------------------------------------------------------------------------
def score_table(groups, agents: list[str]) -> str:
    head = "| dataset | " + " | ".join(f"{a} offline | {a} online" for a in agents) + " |"
    lines = [head, "|---|" + "---|---|" * len(agents)]
    for dataset, by_agent in groups.items():
        cells = []
        for a in agents:
            rs = by_agent.get(a, [])
            cells += [mean_std([r.offline for r in rs]) if rs else "", mean_std([r.online for r in rs]) if rs else ""]
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def criteria_table(groups, agents: list[str]) -> str:
    lines = ["| agent | dataset | seeds | (1) offline score | (2) dip | (3) env steps to 90% of final "
             "| last - best offline evaluation |", "|---|---|---|---|---|---|---|"]
    for a in agents:
        for dataset, by_agent in groups.items():
            rs = by_agent.get(a)
            if rs:
                lines.append(f"| {a} | {dataset} | {len(rs)} | {mean_std([r.offline for r in rs])} | "
                             f"{mean_std([r.dip for r in rs])} | {mean_std([r.steps_to_90 for r in rs], '{:.0f}')} | "
                             f"{mean_std([r.offline_drop for r in rs])} |")
    return "\n".join(lines)


def task_scores(groups, agent: str, attr: str) -> list[np.ndarray]:
    """One array of the agent's run scores per dataset where all its runs have the score."""
    out = []
    for by_agent in groups.values():
        values = [getattr(r, attr) for r in by_agent.get(agent, [])]
        if values and all(v is not None for v in values):
            out.append(np.array(values, dtype=float))
    return out


def aggregates(groups, agents: list[str], reps: int, seed: int) -> dict[str, dict[str, tuple]]:
    """agent -> metric -> (estimate, lo, hi); metrics of the online scores, IQM of the offline
    ones, and P(online > offline) on the datasets that have both."""
    out = {}
    for a in agents:
        online, offline = task_scores(groups, a, "online"), task_scores(groups, a, "offline")
        row: dict[str, tuple] = {"datasets": (len(online),)}
        if offline:
            row["IQM offline"] = est.interval(est.iqm, offline, reps, seed)
        for name, fn in est.AGGREGATES.items():
            if online:
                row[f"{name} online"] = est.interval(fn, online, reps, seed)
        paired = [([r.online for r in by[a]], [r.offline for r in by[a]]) for by in groups.values() if a in by]
        paired = [(np.array(on, float), np.array(off, float)) for on, off in paired
                  if None not in on and None not in off]
        if paired:
            row["P(online > offline)"] = est.improvement_interval([p[0] for p in paired], [p[1] for p in paired],
                                                                  reps, seed)
        out[a] = row
    return out


AGGREGATE_COLUMNS = ("IQM offline", "IQM online", "mean online", "optimality gap online", "P(online > offline)")


def aggregate_table(aggs: dict[str, dict[str, tuple]]) -> str:
    lines = ["| agent | datasets | " + " | ".join(AGGREGATE_COLUMNS) + " |",
             "|---|---|" + "---|" * len(AGGREGATE_COLUMNS)]
    for a, row in aggs.items():
        cells = []
        for c in AGGREGATE_COLUMNS:
            if c not in row:
                cells.append("n/a")
                continue
            v, lo, hi = row[c]
            fmt = "{:.2f}" if c.startswith("P(") else "{:.1f}"
            cells.append(f"{fmt.format(v)} [{fmt.format(lo)}, {fmt.format(hi)}]")
        lines.append(f"| {a} | {row['datasets'][0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _show(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def behaviour_table(groups) -> str:
    """Each dataset's reference returns, from its Minari metadata and the recipe that built it."""
    from worldmodels.data.minari_load import DatasetError, dataset_exists, load_offline_dataset

    lines = ["| dataset | random return (ref_min) | expert return (ref_max) | medium target (recipe: 1/3 of the way) "
             "| data: mean episode return (normalized), episodes | built by |", "|---|---|---|---|---|---|"]
    for dataset, by_agent in groups.items():
        first = next(iter(by_agent.values()))[0]
        cfg, fingerprint = first.config.get("dataset", {}), first.fingerprint
        recipe = (f"recipe: {cfg.get('quality')}, {cfg.get('size')} transitions, SAC behaviour run of "
                  f"{cfg.get('train_steps')} env steps, seed {cfg.get('seed')}") if cfg.get("id") is None else "given"
        try:
            if not first.dataset_id or not dataset_exists(first.dataset_id):
                raise DatasetError("not in the local Minari store")
            ds = load_offline_dataset(first.dataset_id, download=False, check=False)
            if fingerprint is not None and ds.fingerprint() != fingerprint:
                raise DatasetError(f"the local copy is another version (sha256 {ds.fingerprint()})")
        except (DatasetError, ValueError) as err:
            lines.append(f"| {dataset} | ? | ? | ? | not readable here ({str(err).splitlines()[0][:80]}) | {recipe} |")
            continue
        lo, hi = ds.ref_min_score, ds.ref_max_score
        medium = f"{lo + (hi - lo) / 3:.1f}" if lo is not None and hi is not None else "n/a"
        returns = ds.episode_returns()
        data = f"{returns.mean():.1f}" if len(returns) else "n/a"
        if len(returns) and lo is not None and hi is not None and hi != lo:
            data += f" ({ds.normalized_score(returns.mean()):.1f})"
        lines.append(f"| {dataset} | {_show(lo)} | {_show(hi)} | {medium} | {data}, {len(returns)} | {recipe} |")
    return "\n".join(lines)


# --- plots ----------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    from matplotlib import pyplot as plt

    return plt


def curve(runs: list[Run], reps: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, lo, hi) over seeds at every total step some seed evaluated; the band is the
    bootstrap 95% interval of the mean over the seeds evaluated there."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for r in runs:
        for row in r.evals:
            if row["score"] is not None:
                by_step[row["step"]].append(row["score"])
    steps = np.array(sorted(by_step))
    stats = np.array([est.interval(est.mean, [np.array(by_step[s])], reps, seed) for s in steps]).reshape(-1, 3)
    return steps, stats[:, 0], stats[:, 1], stats[:, 2]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_")


def plot_curves(groups, agents: list[str], out: Path, reps: int, seed: int) -> list[Path]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab20")  # the 10 dark hues first, then their light twins
    colors = {a: cmap((2 * i) % 20 + (i // 10) % 2) for i, a in enumerate(agents)}
    paths = []
    for dataset, by_agent in groups.items():
        fig, ax = plt.subplots(figsize=(7, 4.5))
        switches = set()
        for a in agents:
            rs = by_agent.get(a)
            if not rs:
                continue
            steps, m, lo, hi = curve(rs, reps, seed)
            if len(steps) == 0:
                continue
            ax.plot(steps, m, color=colors[a], label=f"{a} ({len(rs)} seeds)")
            ax.fill_between(steps, lo, hi, color=colors[a], alpha=0.2, linewidth=0)
            switches |= {r.switch_step for r in rs if r.switch_step > 0}  # online-only runs have no switch
        for i, s in enumerate(sorted(switches)):
            ax.axvline(s, color="grey", linestyle="--", linewidth=1, label="offline → online" if i == 0 else None)
        ax.set(xlabel="total steps (offline updates, then env steps)", ylabel="normalized score", title=dataset)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"curve_{slug(dataset)}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_aggregates(aggs: dict[str, dict[str, tuple]], out: Path) -> Path:
    plt = _pyplot()
    agents = list(aggs)
    fig, axes = plt.subplots(1, len(AGGREGATE_COLUMNS), figsize=(3.2 * len(AGGREGATE_COLUMNS), 0.5 * len(agents) + 1.5),
                             sharey=True, squeeze=False)
    for ax, col in zip(axes[0], AGGREGATE_COLUMNS, strict=True):
        for y, a in enumerate(agents):
            if col in aggs[a]:
                v, lo, hi = aggs[a][col]
                ax.plot([lo, hi], [y, y], color="tab:blue", linewidth=6, alpha=0.4, solid_capstyle="butt")
                ax.plot([v], [y], "|", color="black", markersize=12)
        ax.set_title(col, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(agents)), agents)
    axes[0][0].set_ylim(len(agents) - 0.5, -0.5)  # first agent on top
    fig.suptitle("aggregates across datasets, stratified bootstrap 95% intervals", fontsize=10)
    fig.tight_layout()
    path = out / "aggregate.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- the report -----------------------------------------------------------------------------------
def make_report(dirs: list[Path], out: Path, reps: int = 2000, seed: int = 0, header: str = "") -> Path:
    """Write report.md and the PNGs into `out` from the runs below `dirs`; returns report.md."""
    runs, unfinished = find_runs(dirs)
    if not runs:
        raise ValueError(f"no finished run (summary.json with run_config.yaml) under {', '.join(map(str, dirs))}")
    out.mkdir(parents=True, exist_ok=True)
    groups = group(runs)
    agents = sorted({r.agent for r in runs})
    aggs = aggregates(groups, agents, reps, seed)
    curves = plot_curves(groups, agents, out, reps, seed)
    agg_png = plot_aggregates(aggs, out)
    parts = [
        "# Evaluation report", header,
        f"{len(runs)} finished runs: {len(agents)} agents x {len(groups)} datasets. Scores are D4RL-normalized "
        "(0 = random policy, 100 = the dataset's expert). Bootstrap: "
        f"{reps} resamples, seed {seed}.",
        version_note(runs),
        "## Offline -> online score (mean ± std over seeds, population std)", score_table(groups, agents),
        "## Criteria per agent",
        "(1) final offline evaluation; (2) lowest online evaluation minus (1); (3) online env steps until an "
        "online evaluation first reaches 90% of the final online score (n/a when that score is not positive); "
        "last - best offline evaluation: how far the offline phase fell from its best before the switch. "
        "Mean ± std over seeds; (k/n) when only k of n seeds define the value.",
        criteria_table(groups, agents),
        "## Aggregates across datasets (stratified bootstrap 95% intervals)",
        "IQM: mean of the middle 50% of all runs; mean: mean of the per-dataset means; optimality gap: "
        "100 - mean of min(score, 100); P(online > offline): probability that a fine-tuned run beats an offline "
        "run of the same agent on the same dataset, averaged over datasets (rliable's definitions).",
        aggregate_table(aggs), f"![aggregates]({agg_png.name})",
        "## Behaviour policies of the datasets", behaviour_table(groups),
        "## Curves", "\n\n".join(f"![{p.stem}]({p.name})" for p in curves),
    ]
    if unfinished:
        parts += ["## Unfinished runs (no summary.json)", "\n".join(f"- {p}" for p in unfinished)]
    path = out / "report.md"
    path.write_text("\n\n".join(p for p in parts if p) + "\n")
    return path


def parse_args(argv: list[str]) -> tuple[list[Path], dict[str, str]]:
    """Positional run directories and key=value options."""
    dirs, opts = [], {}
    for arg in argv:
        if "=" in arg and not Path(arg).exists():
            k, v = arg.split("=", 1)
            opts[k] = v
        else:
            dirs.append(Path(arg))
    return dirs, opts


def main(argv: list[str] | None = None) -> int:
    dirs, opts = parse_args(sys.argv[1:] if argv is None else argv)
    unknown = set(opts) - {"out", "reps", "seed"}
    if not dirs or "out" not in opts or unknown:
        print(f"usage: python -m benchmarks.report RUN_DIR... out=DIR [reps=2000] [seed=0]"
              f"{'; unknown: ' + ', '.join(sorted(unknown)) if unknown else ''}", file=sys.stderr)
        return 2
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        print(f"error: not a directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    for key in ("reps", "seed"):
        if key in opts and not opts[key].isdigit():
            print(f"error: {key}={opts[key]}: give a non-negative integer", file=sys.stderr)
            return 2
    try:
        path = make_report(dirs, Path(opts["out"]), int(opts.get("reps", 2000)), int(opts.get("seed", 0)))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
