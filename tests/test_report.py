"""The report (benchmarks/report.py) and its estimators (benchmarks/estimators.py) against hand
computations: rliable's IQM, mean, optimality gap and probability of improvement on hand cases,
the stratified bootstrap against the same resampling written out in numpy, and report.md's
cells (mean +- std, dip, steps to 90%, aggregates) on hand-made run directories of known scores."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy.stats import trim_mean

from benchmarks import estimators as est
from benchmarks import report as R


# --- estimators ---------------------------------------------------------------------------------
def test_iqm_is_the_middle_half_pooled_over_tasks():
    assert est.iqm([np.arange(1, 9)]) == 4.5  # drop 1, 2 and 7, 8: mean(3, 4, 5, 6)
    assert est.iqm([np.array([1, 2, 3]), np.array([4, 5, 6, 7, 100])]) == 4.5  # pooled: same middle, 100 cut
    rng = np.random.default_rng(1)
    for n in (4, 5, 10, 13):  # cut int(n / 4) from each end, as scipy's trim_mean (rliable calls it)
        x = rng.normal(size=n)
        assert est.iqm([x[:2], x[2:]]) == pytest.approx(trim_mean(x, 0.25))


def test_mean_optimality_gap_and_probability_of_improvement_by_hand():
    assert est.mean([np.array([0.0, 10.0]), np.array([20.0])]) == 12.5  # mean of task means, not of runs
    assert est.optimality_gap([np.array([50.0, 120.0]), np.array([100.0, 80.0])]) == 17.5  # 100 - mean(50,100,100,80)
    # task 1: pairs (1,1) tie 0.5, (1,0) 1, (2,1) 1, (2,0) 1 -> 3.5 / 4; task 2: 0 -> mean 0.4375
    assert est.probability_of_improvement([np.array([1, 2]), np.array([0])], [np.array([1, 0]), np.array([5])]) \
        == pytest.approx(0.4375)


def direct_bootstrap(tasks, reps, seed):
    """The stratified resampling written out: per rep, per task, n draws from that task's runs."""
    rng = np.random.default_rng(seed)
    idx = [rng.integers(0, len(t), size=(reps, len(t))) for t in tasks]
    return [[t[i[r]] for t, i in zip(tasks, idx, strict=True)] for r in range(reps)]


def test_bootstrap_interval_matches_direct_resampling_on_a_fixed_seed():
    tasks = [np.array([10.0, 20.0, 30.0, 35.0]), np.array([50.0, 55.0, 90.0])]
    point, lo, hi = est.interval(est.iqm, tasks, reps=300, seed=7)
    stats = [trim_mean(np.concatenate(s), 0.25) for s in direct_bootstrap(tasks, 300, 7)]
    assert point == pytest.approx(trim_mean(np.concatenate(tasks), 0.25))
    assert (lo, hi) == pytest.approx(tuple(np.percentile(stats, [2.5, 97.5])))
    assert lo < point < hi
    # a resample never mixes tasks: every task's draws come from its own runs
    assert all(set(s[1]) <= set(tasks[1]) for s in direct_bootstrap(tasks, 50, 0))
    # one run per task leaves nothing to resample
    assert est.interval(est.mean, [np.array([3.0]), np.array([5.0])], reps=50) == (4.0, 4.0, 4.0)


def test_improvement_interval_resamples_the_two_independently():
    x = [np.array([14.0, 30, 50]), np.array([80.0, 60, 90])]
    y = [np.array([10.0, 20, 30]), np.array([50.0, 60, 70])]
    point, lo, hi = est.improvement_interval(x, y, reps=200, seed=3)
    rng = np.random.default_rng(3)
    xi = [rng.integers(0, 3, size=(200, 3)) for _ in x]  # x's tasks first, then y's, from one stream
    yi = [rng.integers(0, 3, size=(200, 3)) for _ in y]

    def p(a, b):
        pairs = zip(a, b, strict=True)
        return np.mean([np.mean([[(u > v) + 0.5 * (u == v) for v in bb] for u in aa]) for aa, bb in pairs])

    stats = [p([t[i[r]] for t, i in zip(x, xi, strict=True)], [t[i[r]] for t, i in zip(y, yi, strict=True)])
             for r in range(200)]
    assert point == pytest.approx((6.5 / 9 + 7.5 / 9) / 2)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(stats, [2.5, 97.5])))


# --- hand-made run directories ------------------------------------------------------------------
OFFLINE_STEPS = 100  # offline updates; online evaluations at env steps 50, 100, 150
#: (agent, dataset) -> per seed (offline score or None, online evaluation scores)
RUNS = {
    ("a", "test/d1-v0"): [(10.0, [5.0, 13.0, 14.0]), (20.0, [15.0, 28.0, 30.0]), (30.0, [40.0, 20.0, 50.0])],
    ("a", "test/d2-v0"): [(50.0, [55.0, 60.0, 80.0]), (60.0, [30.0, 65.0, 60.0]), (70.0, [70.0, 75.0, 90.0])],
    ("b", "test/d1-v0"): [(None, [10.0, 20.0, 40.0]), (None, [-5.0, -2.0, -1.0])],  # online only
}


def write_run(path, agent, dataset, seed, offline, online, sha=None, config=""):
    path.mkdir(parents=True)
    (path / "run_config.yaml").write_text(f"seed: {seed}\ndataset:\n  id: {dataset}\n{config}")
    rows = []
    switch = OFFLINE_STEPS if offline is not None else 0
    if offline is not None:
        rows += [(50, 0, 0, offline + 2 * seed), (OFFLINE_STEPS, 0, 0, offline)]  # last - best: 0, -2, -4
    rows += [(switch + e, 1, e, s) for e, s in zip((50, 100, 150), online, strict=True)]
    with (path / "eval.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "phase", "return", "env_steps", "normalized_score"])
        w.writerows([step, phase, 10 * score, env, score] for step, phase, env, score in rows)
    summary = {"agent": agent, "dataset_id": dataset, "seed": seed, "offline_score": offline,
               "online_score": online[-1], "dataset_sha256": sha}
    (path / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def runs_dir(tmp_path):
    root = tmp_path / "runs"
    for (agent, dataset), seeds in RUNS.items():
        for seed, (off, on) in enumerate(seeds):
            write_run(root / agent / f"{dataset.replace('/', '_')}-seed{seed}", agent, dataset, seed, off, on)
    # results a resume=false moved aside are not runs; a run without a summary is unfinished
    write_run(root / "a" / "test_d1-v0-seed0" / "previous" / "20261127T000000Z", "a", "test/d1-v0", 0, 99.0,
              [99.0, 99.0, 99.0])
    (root / "a" / "cut-off").mkdir()
    (root / "a" / "cut-off" / "run_config.yaml").write_text("seed: 9\n")
    return root


def row(text: str, first: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {first} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_report_numbers_are_the_hand_computed_ones(runs_dir, tmp_path):
    out = tmp_path / "report"
    assert R.main([str(runs_dir), f"out={out}", "reps=200", "seed=0"]) == 0
    text = (out / "report.md").read_text()
    # offline -> online, mean ± std (population) over seeds; b has no offline phase
    assert row(text, "test/d1-v0") == ["test/d1-v0", "20.0 ± 8.2", "31.3 ± 14.7", "n/a", "19.5 ± 20.5"]
    assert row(text, "test/d2-v0") == ["test/d2-v0", "60.0 ± 8.2", "76.7 ± 12.5", "", ""]
    # criteria: dips (5-10, 15-20, 20-30) = (-5, -5, -10); steps to 90% of (14, 30, 50): 100, 100, 150
    lines = [ln for ln in text.splitlines() if ln.startswith("| a | test/d1-v0 |")]
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["a", "test/d1-v0", "3", "20.0 ± 8.2", "-6.7 ± 2.4",
                                                                    "117 ± 24", "-2.0 ± 1.6"]
    lines = [ln for ln in text.splitlines() if ln.startswith("| b | test/d1-v0 |")]
    # b: no offline score, so no dip; seed 1's final score is negative: steps to 90% defined for 1 of 2 seeds
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["b", "test/d1-v0", "2", "n/a", "n/a", "150 (1/2)",
                                                                    "n/a"]
    # aggregates of a: online runs (14, 30, 50 | 80, 60, 90): IQM mean(30, 50, 60, 80) = 55, mean of task means
    # (31.33 + 76.67) / 2 = 54, optimality gap 100 - 54 = 46; offline IQM mean(20, 30, 50, 60) = 40;
    # P(online > offline) = (6.5/9 + 7.5/9) / 2 = 0.78
    aggregate = text.split("## Aggregates")[1]
    cells = row(aggregate, "a")
    tasks = [np.array([14.0, 30, 50]), np.array([80.0, 60, 90])]
    stats = [trim_mean(np.concatenate(s), 0.25) for s in direct_bootstrap(tasks, 200, 0)]
    lo, hi = np.percentile(stats, [2.5, 97.5])
    assert cells[1] == "2" and cells[2].startswith("40.0 [") and cells[3] == f"55.0 [{lo:.1f}, {hi:.1f}]"
    assert cells[4].startswith("54.0 [") and cells[5].startswith("46.0 [") and cells[6].startswith("0.78 [")
    assert row(aggregate, "b")[1:4] == ["1", "n/a", "19.5 [-1.0, 40.0]"] and row(aggregate, "b")[6] == "n/a"
    # the run moved aside is not counted; the cut-off one is listed
    assert "99.0" not in text and "cut-off" in text.split("## Unfinished runs")[1]
    assert sorted(p.name for p in out.glob("*.png")) == ["aggregate.png", "curve_test_d1-v0.png",
                                                         "curve_test_d2-v0.png"]


def test_runs_on_two_versions_of_one_dataset_are_not_pooled(tmp_path):
    root = tmp_path / "runs"
    for seed, (sha, off) in enumerate([("aaaa", 10.0), ("aaaa", 20.0), ("bbbb", 70.0)]):
        write_run(root / f"s{seed}", "a", "test/d1-v0", seed, off, [off, off, off], sha=sha)
    out = tmp_path / "report"
    assert R.main([str(root), f"out={out}", "reps=50"]) == 0
    text = (out / "report.md").read_text()
    assert row(text, "test/d1-v0 @aaaa")[1:3] == ["15.0 ± 5.0", "15.0 ± 5.0"]
    assert row(text, "test/d1-v0 @bbbb")[1:3] == ["70.0", "70.0"]
    assert "`test/d1-v0` has 2 versions" in text
    # one version only: the plain id, no note
    (root / "s2" / "summary.json").unlink()
    assert R.main([str(root), f"out={out}", "reps=50"]) == 0
    text = (out / "report.md").read_text()
    assert row(text, "test/d1-v0")[1] == "15.0 ± 5.0" and "versions among" not in text


def test_variants_of_one_agent_get_their_own_columns(tmp_path):
    """Two PEX configs on one dataset are two columns named by what differs; a rollout value that differs
    only between datasets (MOPO's per-dataset lambda) and the evaluation cadence split nothing."""
    root = tmp_path / "runs"
    for seed in (0, 1):
        for kappa, off in (("0.0", 10.0), ("1.0", 30.0)):
            write_run(root / f"pex-k{kappa}-s{seed}", "pex", "test/d1-v0", seed, off + seed, [off] * 3,
                      config=f"agent:\n  selection_penalty: {kappa}\n  beta: 10.0\n"
                             f"trainer:\n  eval_every: {1000 * (seed + 1)}\n")
        for ds, lam in (("test/d1-v0", 0.5), ("test/d2-v0", 2.5)):
            write_run(root / f"mopo-{ds.replace('/', '_')}-s{seed}", "mopo", ds, seed, 5.0, [5.0] * 3,
                      config=f"rollout:\n  penalty_coef: {lam}\n")
    # a run written before the field existed reads as the agent's default (PEX: 0.0) and pools with those
    write_run(root / "pex-old-s2", "pex", "test/d1-v0", 2, 12.0, [10.0] * 3, config="agent:\n  beta: 10.0\n")
    # the same for the rollout section: a run that states a new field at its default pools with one that predates it
    write_run(root / "pex-new-s3", "pex", "test/d1-v0", 3, 8.0, [10.0] * 3,
              config="agent:\n  beta: 10.0\nrollout:\n  initial_state_share: 0.0\n  initial_state_horizon: 0\n")
    out = tmp_path / "report"
    assert R.main([str(root), f"out={out}", "reps=50"]) == 0
    text = (out / "report.md").read_text()
    assert row(text, "pex (selection_penalty=0.0)")[1:4] == ["test/d1-v0", "4", "10.2 ± 1.5"]
    assert row(text, "pex (selection_penalty=1.0)")[1:4] == ["test/d1-v0", "2", "30.5 ± 0.5"]
    assert [r[1] for r in (row(text, "mopo"),)] == ["test/d1-v0"]  # one mopo column, on both datasets
    assert "mopo (" not in text


def test_settings_a_run_never_reads_do_not_split_an_agent(tmp_path):
    """A rollout value differs between runs of one dataset, but only runs that roll a model out read it: a
    model-free run and a world model fitted for u alone (world_model.rollouts=false) pool with their kind."""
    root = tmp_path / "runs"
    for seed, lam in ((0, 0.5), (1, 1.0)):
        fit_only = f"world_model:\n  kind: ensemble\n  rollouts: false\nrollout:\n  penalty_coef: {lam}\n"
        write_run(root / f"fit-only-s{seed}", "pex", "test/d1-v0", seed, 10.0, [10.0] * 3, config=fit_only)
        model_free = f"world_model:\n  kind: none\n  uncertainty: disagreement\nrollout:\n  penalty_coef: {lam}\n"
        write_run(root / f"free-s{seed}", "pex", "test/d1-v0", seed, 20.0, [20.0] * 3, config=model_free)
        rolled = f"world_model:\n  kind: ensemble\nrollout:\n  penalty_coef: {lam}\n"
        write_run(root / f"rolled-s{seed}", "pex", "test/d1-v0", seed, 30.0 + seed, [30.0] * 3, config=rolled)
    out = tmp_path / "report"
    assert R.main([str(root), f"out={out}", "reps=50"]) == 0
    text = (out / "report.md").read_text()
    assert row(text, "pex (world_model.kind=none)")[1:4] == ["test/d1-v0", "2", "20.0 ± 0.0"]
    assert row(text, "pex (world_model.kind=ensemble, world_model.rollouts=False)")[1:4] == ["test/d1-v0", "2",
                                                                                           "10.0 ± 0.0"]
    # rolled out, the coefficient is read and splits the runs
    assert row(text, "pex (rollout.penalty_coef=0.5, world_model.kind=ensemble, world_model.rollouts=True)")[2] == "1"
    assert row(text, "pex (rollout.penalty_coef=1.0, world_model.kind=ensemble, world_model.rollouts=True)")[2] == "1"


def test_curve_is_the_mean_over_seeds_at_each_step(runs_dir):
    runs, _ = R.find_runs([runs_dir])
    groups = R.group(runs)
    a = groups["test/d1-v0"]["a"]
    steps, mean, lo, hi = R.curve(a, reps=100, seed=0)
    assert steps.tolist() == [50, 100, 150, 200, 250]
    # e.g. step 50: (10 + 22 + 34) / 3, step 150: (5 + 15 + 40) / 3
    assert mean.tolist() == pytest.approx([22.0, 20.0, 20.0, 61 / 3, 94 / 3])
    assert np.all(lo <= mean) and np.all(mean <= hi) and lo[-1] < hi[-1]
    assert {r.switch_step for r in a} == {OFFLINE_STEPS}
    assert {r.switch_step for r in groups["test/d1-v0"]["b"]} == {0}


def test_report_cli_refuses_what_it_cannot_use(tmp_path, capsys):
    assert R.main([str(tmp_path), f"out={tmp_path / 'o'}"]) == 2  # no finished run
    assert "no finished run" in capsys.readouterr().err
    assert R.main([str(tmp_path)]) == 2  # no out=
    assert R.main([str(tmp_path / "missing"), f"out={tmp_path / 'o'}"]) == 2


def test_cli_refuses_a_non_integer_option_in_one_line(runs_dir, tmp_path, capsys):
    for key in ("reps", "seed"):
        assert R.main([str(runs_dir), f"out={tmp_path / 'r'}", f"{key}=abc"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: {key}=abc: give a non-negative integer"]
    assert not (tmp_path / "r").exists()
