"""The evaluation suite (benchmarks/suite.py): presets, run directories named by config, which
runs it skips or resumes, and one tiny end-to-end suite (two agents, hydra multirun on the local
launcher) that writes report.md and the PNGs. The full `suite=smoke` over every agent is a user's
check, not CI's."""

from __future__ import annotations

import json

import pytest
from conftest import PYCACHE

from benchmarks import report as R
from benchmarks import suite as S
from worldmodels.data.minari_load import load_offline_dataset

#: a few hundred updates per run, nets of 32x32
TINY = {"trainer.offline_updates": "100", "trainer.online_steps": "200", "trainer.eval_every": "100",
        "trainer.eval_episodes": "1", "trainer.log_every": "50", "trainer.checkpoint_every": "200",
        "agent.hidden": "[32,32]", "threads": "1", "trainer.progress": "false"}


def test_presets_name_every_agent_and_their_datasets():
    smoke = S.load_suite({"suite": "smoke"})
    assert smoke.agents == S.all_agents() and len(smoke.agents) >= 10  # every agent that exists, found by looking
    assert smoke.datasets == ["default"] and smoke.seeds == 1 and smoke.overrides == {"experiment": "smoke"}
    quick = S.load_suite({"suite": "quick"})
    assert quick.datasets == ["halfcheetah-medium-replay", "hopper-medium-replay", "walker2d-medium"]
    assert quick.seeds == 3 and quick.overrides["experiment"] == "quick"
    assert int(quick.overrides["dataset.train_steps"]) >= 100_000
    paper = S.load_suite({"suite": "paper"})
    assert sorted(paper.datasets) == sorted(f"{e}-{q}" for e in ("halfcheetah", "hopper", "walker2d")
                                            for q in ("medium", "medium-replay", "medium-expert"))
    assert int(paper.overrides["dataset.train_steps"]) >= 1_000_000 and paper.overrides["experiment"] == "paper"
    assert quick.hydra == {"hydra/launcher": "local"}


def test_command_line_replaces_the_preset():
    s = S.load_suite({"suite": "quick", "agents": "[bc,td3bc]", "datasets": "[default]", "seeds": "2",
                      "trainer.online_steps": "50", "hydra/launcher": "slurm", "hydra.launcher.partition": "gpu"})
    assert (s.agents, s.datasets, s.seeds) == (["bc", "td3bc"], ["default"], 2)
    assert s.overrides["trainer.online_steps"] == "50" and s.overrides["experiment"] == "quick"
    assert s.hydra == {"hydra/launcher": "slurm", "hydra.launcher.partition": "gpu"}
    for bad in ({"agents": "[nope]"}, {"datasets": "[nope]"}, {"suite": "nope"}, {"seed": "3"}, {"seeds": "0"},
                {"agent.hidden": "[32,"}):  # an override hydra cannot parse: one ValueError, not a traceback
        with pytest.raises(ValueError):
            S.load_suite({"suite": "smoke"} | bad)


def test_run_directories_are_named_by_config_and_planned_by_state(tmp_path):
    s = S.load_suite({"suite": "quick", "agents": "[bc]", "datasets": "[default,hopper-medium]", "seeds": "2",
                      "threads": "1"})
    jobs = S.plan(s, tmp_path)
    assert len(jobs) == 4
    # hydra's override_dirname: sorted key=value lines, excluded keys (threads) left out
    name = "dataset.train_steps=100000,dataset=default,experiment=quick,seed=0"
    assert jobs[0].run_dir == tmp_path / "runs" / "bc" / name
    assert [j.status for j in jobs] == ["new"] * 4
    jobs[0].run_dir.mkdir(parents=True)
    (jobs[0].run_dir / "checkpoint.pt").write_bytes(b"")
    (jobs[0].run_dir / "summary.json").write_text("{}")  # finished (its checkpoint stays)
    jobs[3].run_dir.mkdir(parents=True)
    (jobs[3].run_dir / "checkpoint.pt").write_bytes(b"")  # cut off
    assert [j.status for j in jobs] == ["finished", "new", "new", "resume"]
    # default's seed 1 and hopper's seeds 0, 1 remain: two sweeps, none of them reruns a finished job
    assert sorted(S.sweeps(jobs)) == [("bc", ["default"], [1], s.overrides),
                                      ("bc", ["hopper-medium"], [0, 1], s.overrides)]
    cmd = S.sweep_command(s, tmp_path, "bc", ["hopper-medium"], [0, 1], s.overrides)
    assert cmd[2:4] == ["agents.bc", "-m"] and "hydra/launcher=local" in cmd and "threads=1" in cmd
    assert cmd[-2:] == ["dataset=hopper-medium", "seed=0,1"]


def test_model_based_agents_take_each_datasets_rollout_values(tmp_path):
    """MOPO's (h, lambda) differ per dataset (configs/rollout/<dataset>.yaml): a model-based agent's job on
    such a dataset runs with them (named by them), in a sweep of its own; model-free agents, the default
    dataset and a rollout the user names are left alone."""
    s = S.load_suite({"suite": "quick", "agents": "[moore,iql]", "datasets": "[default,hopper-medium-replay]",
                      "seeds": "1"})
    by = {(j.agent, j.dataset): j for j in S.plan(s, tmp_path)}
    assert by[("moore", "hopper-medium-replay")].extra == {"rollout": "hopper-medium-replay"}
    assert "rollout=hopper-medium-replay," in by[("moore", "hopper-medium-replay")].run_dir.name
    assert by[("moore", "default")].extra == {} and by[("iql", "hopper-medium-replay")].extra == {}
    hopper = s.overrides | {"rollout": "hopper-medium-replay"}
    assert sorted(S.sweeps(list(by.values()))) == [
        ("iql", ["default", "hopper-medium-replay"], [0], s.overrides), ("moore", ["default"], [0], s.overrides),
        ("moore", ["hopper-medium-replay"], [0], hopper)]
    cmd = S.sweep_command(s, tmp_path, "moore", ["hopper-medium-replay"], [0], hopper)
    assert "rollout=hopper-medium-replay" in cmd
    named = S.load_suite({"suite": "quick", "agents": "[moore]", "datasets": "[hopper-medium-replay]", "seeds": "1",
                          "rollout": "hopper-medium"})
    assert S.plan(named, tmp_path)[0].extra == {}  # the user's rollout= is every job's
    # the world-model switch makes a model-free agent model-based, and turns a model-based one off
    switched = S.load_suite({"suite": "quick", "agents": "[pex]", "datasets": "[hopper-medium-replay]", "seeds": "1",
                             "world_model": "ensemble"})
    assert S.plan(switched, tmp_path)[0].extra == {"rollout": "hopper-medium-replay"}
    off = S.load_suite({"suite": "quick", "agents": "[moore]", "datasets": "[hopper-medium-replay]", "seeds": "1",
                        "world_model": "none"})
    assert S.plan(off, tmp_path)[0].extra == {}
    # a world model fitted for u alone (world_model.rollouts=false) is never rolled out: no rollout values
    fit_only = S.load_suite({"suite": "quick", "agents": "[pex]", "datasets": "[hopper-medium-replay]", "seeds": "1",
                             "world_model": "ensemble", "world_model.rollouts": "false"})
    assert S.plan(fit_only, tmp_path)[0].extra == {}


def test_suite_end_to_end_two_agents(tmp_path, tiny_dataset_id, monkeypatch):
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)  # the sweeps' processes reuse compiled modules
    monkeypatch.setenv("PYTHONPYCACHEPREFIX", str(PYCACHE))
    args = {"suite": "smoke", "out": str(tmp_path), "agents": "[bc,td3bc]", "datasets": "[default]", "seeds": "1",
            "dataset.id": tiny_dataset_id, "reps": "200",
            # a boolean names the directory as hydra's multirun prints it (False), which the suite must expect
            "trainer.keep_policies": "false"} | TINY
    assert S.main([f"{k}={v}" for k, v in args.items()]) == 0
    runs = sorted((tmp_path / "runs").rglob("summary.json"))
    assert all("trainer.keep_policies=False" in str(p) for p in runs) and len(runs) == 2
    name = S.override_dirname(S.load_suite(args).overrides | {"dataset": "default", "seed": "0"})
    # named by the config, hydra's way (a dataset.id's slashes nest folders), so a rerun finds them
    assert runs == [tmp_path / "runs" / agent / name / "summary.json" for agent in ("bc", "td3bc")]
    for p in runs:
        assert json.loads(p.read_text())["env_steps"] == 200
    report = (tmp_path / "report.md").read_text()
    assert "| bc offline | bc online | td3bc offline | td3bc online |" in report
    ds = load_offline_dataset(tiny_dataset_id)  # the behaviour policies' returns are stated
    assert f"| {tiny_dataset_id} | {ds.ref_min_score:.1f} | {ds.ref_max_score:.1f} |" in report
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["aggregate.png", f"curve_{R.slug(tiny_dataset_id)}.png"]
    assert all((tmp_path / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    # a second call finds every run finished: nothing is launched, the report is made again
    stamp = runs[0].stat().st_mtime_ns
    assert S.main([f"{k}={v}" for k, v in args.items()]) == 0
    assert runs[0].stat().st_mtime_ns == stamp
    # a command on one agent into the same folder keeps the other agent's runs in the folder's report
    assert S.main([f"{k}={v}" for k, v in (args | {"agents": "[bc]"}).items()]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "| bc offline | bc online | td3bc offline | td3bc online |" in report
    assert "With 1 finished run(s) of earlier commands" in report


def test_a_branch_is_named_by_its_source_however_the_path_is_spelled(tmp_path, monkeypatch):
    """configs/common.yaml names a trainer.start_from run by run_name: its overrides, then from=<hash of the
    source's absolute path> (the path itself would nest folders and overflow the name limit)."""
    from agents.core.rundir import run_name, start_from_tag

    monkeypatch.chdir(tmp_path)
    src = tmp_path / "runs" / "off2on" / "dataset=default,seed=0"
    tag = start_from_tag(str(src))
    assert tag.startswith("from=") and len(tag) == len("from=") + 8
    spellings = ["runs/off2on/dataset=default,seed=0", str(src / "switch.pt"), f"{src}/", "runs/x/../off2on/"
                 "dataset=default,seed=0"]
    assert {start_from_tag(p) for p in spellings} == {tag}
    assert start_from_tag(str(src.with_name("dataset=default,seed=1"))) != tag  # another source, another name
    assert start_from_tag(None) == "" and run_name("seed=1") == "seed=1" and run_name("seed=1", None) == "seed=1"
    assert run_name("seed=1", str(src)) == f"seed=1,{tag}" and run_name("", str(src)) == tag


def test_start_from_plans_the_sources_first_and_branches_from_them(tmp_path):
    from agents.core.rundir import start_from_tag

    s = S.load_suite({"suite": "quick", "agents": "[upq]", "datasets": "[default,hopper-medium-replay]",
                      "seeds": "2", "start_from": "off2on", "branch.agent.pessimism_beta": "1e-1", "threads": "1"})
    assert s.branch == {"agent.pessimism_beta": "0.1"}  # as hydra's multirun prints it into the name
    jobs = S.plan(s, tmp_path)
    assert [j.agent for j in jobs] == ["off2on"] * 4 + ["upq"] * 4
    sources = {(j.dataset, j.seed): j.run_dir for j in jobs[:4]}
    for j in jobs[:4]:  # the sources get the suite's overrides, not the branches'
        assert j.run_dir.name == S.override_dirname(s.overrides | {"dataset": j.dataset, "seed": str(j.seed)})
        assert "trainer.start_from" not in j.overrides
    for j in jobs[4:]:
        src = sources[(j.dataset, j.seed)]
        own = s.overrides | {"agent.pessimism_beta": "0.1", "dataset": j.dataset, "seed": str(j.seed)}
        assert j.run_dir.name == S.override_dirname(own) + "," + start_from_tag(str(src))
        # the value hydra fills in at the job (the seed) is exactly the source's directory
        assert j.overrides["trainer.start_from"].strip("'").replace("${seed}", str(j.seed)) == str(src)
    # the sources' sweep comes first (one for both datasets); each dataset's branches sweep their seeds
    assert [(a, d, seeds) for a, d, seeds, _ in S.sweeps(jobs)] == [
        ("off2on", ["default", "hopper-medium-replay"], [0, 1]), ("upq", ["default"], [0, 1]),
        ("upq", ["hopper-medium-replay"], [0, 1])]
    # a finished source without switch.pt (a record committed under results/) is named before anything runs
    assert S.sources_without_switch(jobs) == []
    stale = sources[("default", 1)]
    stale.mkdir(parents=True)
    (stale / "summary.json").write_text("{}")
    assert S.sources_without_switch(jobs) == [stale]
    with pytest.raises(ValueError, match="switch.pt"):
        S.run_suite(s, tmp_path)
    (stale / "switch.pt").write_bytes(b"")
    assert S.sources_without_switch(jobs) == []
    # a user's own trainer.start_from (every run from one source) names the runs as the jobs will
    given = S.load_suite({"suite": "quick", "agents": "[upq]", "datasets": "[default]", "seeds": "1",
                          "trainer.start_from": "'runs/off2on/seed=0'"})
    tag = start_from_tag(str(S.REPO_ROOT / "runs/off2on/seed=0"))
    assert S.plan(given, tmp_path)[0].run_dir.name.endswith("," + tag)
    for bad in ({"start_from": "nope"}, {"branch.agent.hidden": "[8]"},  # a branch override needs a source
                {"start_from": "off2on", "trainer.start_from": "runs/x"}):
        with pytest.raises(ValueError):
            S.load_suite({"suite": "smoke", "agents": "[upq]"} | bad)


def test_suite_start_from_end_to_end(tmp_path, tiny_dataset_id, monkeypatch):
    """A branch run made by the suite lands where the suite looks for it (hydra's resolver and the plan agree),
    takes over its source's offline phase (the same offline evaluations) and differs online."""
    from agents.core.rundir import start_from_tag

    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    monkeypatch.setenv("PYTHONPYCACHEPREFIX", str(PYCACHE))
    args = {"suite": "smoke", "out": str(tmp_path), "agents": "[td3bc]", "datasets": "[default]", "seeds": "1",
            "dataset.id": tiny_dataset_id, "reps": "50", "start_from": "td3bc", "branch.agent.alpha": "100"} | TINY
    assert S.main([f"{k}={v}" for k, v in args.items()]) == 0
    source, branch = S.plan(S.load_suite(args), tmp_path)
    assert (source.run_dir / "summary.json").exists() and (branch.run_dir / "summary.json").exists()
    assert "agent.alpha=100" in str(branch.run_dir) and branch.run_dir.name.endswith(
        "," + start_from_tag(str(source.run_dir)))
    evals = [R.read_evals(j.run_dir / "eval.csv") for j in (source, branch)]
    offline = [[r for r in e if r["phase"] == 0] for e in evals]  # phase 0: offline
    assert offline[0] == offline[1] and len(offline[0]) >= 1
    online = [[r["score"] for r in e if r["phase"] == 1] for e in evals]
    assert online[0] != online[1]  # alpha 100 against 2.5: another online phase
    report = (tmp_path / "report.md").read_text()
    assert "online phases from td3bc's offline ones" in report
    stamp = (branch.run_dir / "summary.json").stat().st_mtime_ns  # a second call finds both finished
    assert S.main([f"{k}={v}" for k, v in args.items()]) == 0
    assert (branch.run_dir / "summary.json").stat().st_mtime_ns == stamp


def test_results_folder_keeps_run_records_and_leaves_checkpoints_out(tmp_path):
    """results/.gitignore: a suite with out=results/... keeps what the suite and the report read (so the suite
    skips a committed run, and the report reads it) and nothing large. Checked by git itself, in a scratch
    repository holding a copy of the rules, so it runs the same in a clone or an unpacked sdist."""
    import shutil
    import subprocess
    from pathlib import Path

    rules = Path(__file__).resolve().parents[1] / "results" / ".gitignore"
    (tmp_path / "results").mkdir()
    shutil.copy(rules, tmp_path / "results" / ".gitignore")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    run = "results/quick/runs/redq/dataset=hopper-medium-replay,seed=0"
    kept = ["summary.json", "run_config.yaml", "eval.csv", "train.csv", "episodes.csv"]
    left = ["checkpoint.pt", "switch.pt", "dynamics.pt", "tb/events.out.tfevents.1", "policies/p.pt", ".lock",
            ".hydra/config.yaml", "previous/2026/checkpoint.pt"]
    data = "results/datasets/o2o/Hopper-v5/medium-replay-s20000-t30000-seed0-v1/data"
    pinned = [f"{data}/main_data.hdf5", f"{data}/metadata.json", "results/datasets/o2o/namespace_metadata.json",
              "results/datasets/fingerprints.txt"]
    paths = [f"{run}/{name}" for name in kept + left] + ["results/quick/report.md", "results/quick/curve_x.png"]
    paths += pinned + ["results/datasets/o2o/Hopper-v5/x-v1/data/main_data.hdf5.lock"]
    ignored = subprocess.run(["git", "-C", str(tmp_path), "check-ignore", "--no-index", *paths], capture_output=True,
                             text=True).stdout.split()
    assert sorted(ignored) == sorted([f"{run}/{name}" for name in left]
                                     + ["results/datasets/o2o/Hopper-v5/x-v1/data/main_data.hdf5.lock"])


def test_pinned_datasets_are_the_data_the_records_were_made_on(monkeypatch):
    """results/datasets is a Minari store of the data behind the committed records (the recipe gives other bits
    on another CPU). Each pinned dataset loads from it with the fingerprint fingerprints.txt names, and every
    committed run on a pinned id trained on exactly that data, so new runs made with the store join their rows."""
    from pathlib import Path

    results = Path(__file__).resolve().parents[1] / "results"
    lines = (results / "datasets" / "fingerprints.txt").read_text().splitlines()
    pinned = dict(line.split() for line in lines if line and not line.startswith("#"))
    assert pinned, "fingerprints.txt lists no dataset"
    stored = sorted(str(p.parent.parent.relative_to(results / "datasets")) for p in
                    (results / "datasets").glob("**/data/main_data.hdf5"))
    assert stored == sorted(pinned), "every dataset in results/datasets needs its line in fingerprints.txt"
    assert S.pinned_store(results / "cons") == results / "datasets"  # suites under results/ train on it
    assert S.pinned_store(results.parent / "eval" / "cons") is None
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(results / "datasets"))
    for dataset_id, fingerprint in pinned.items():
        assert load_offline_dataset(dataset_id).fingerprint() == fingerprint, dataset_id
    stray = []
    for summary in sorted(results.glob("*/runs/**/summary.json")):
        record = json.loads(summary.read_text())
        if record.get("dataset_id") in pinned and record.get("dataset_sha256") != pinned[record["dataset_id"]]:
            stray.append(f"{summary.parent.relative_to(results)}: {record['dataset_sha256']}")
    assert not stray, f"records made on another build of a pinned dataset: {stray}"
