"""The trainer's checkpoints: a run killed after any checkpoint and started again in the same
directory ends exactly where the uninterrupted run ends (parameters, optimizer state, logs,
online buffer); and the CLI's run-directory rules (config mismatch, resume=false, summary).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from conftest import agent_cmd, assert_same_state, run_cli

from agents.core.agent import EnvSpec
from agents.core.checkpoint import CheckpointError
from agents.core.config import TrainerConfig
from agents.core.entry import offline_store
from agents.core.trainer import Trainer, seed_everything
from agents.td3bc import TD3BC, TD3BCConfig
from worldmodels.data.minari_load import load_offline_dataset
from worldmodels.data.samplers import SamplerConfig, top_episode_rows
from worldmodels.data.store import TransitionStore
from worldmodels.envs import box_bounds

CPU = torch.device("cpu")
EPISODE = 25  # short HalfCheetah episodes: evaluation is cheap and the online phase crosses resets
LOGS = ("train.csv", "eval.csv", "episodes.csv")
REQUIRED_SUMMARY = ("agent", "dataset_id", "seed", "offline_score", "online_score", "offline_return",
                    "online_return", "updates", "env_steps", "seconds")


def short_env() -> gym.Env:
    return gym.make("HalfCheetah-v5", max_episode_steps=EPISODE)


@pytest.fixture(scope="module")
def dataset(tiny_dataset_id):
    return load_offline_dataset(tiny_dataset_id)


def make_trainer(run_dir: Path, dataset, init_seed: int = 0, sampler: SamplerConfig | None = None,
                 offline: TransitionStore | None = None, seed: int = 0, **trainer_cfg) -> Trainer:
    env = short_env()
    low, high = box_bounds(env)
    spec = EnvSpec(env.observation_space.shape[0], env.action_space.shape[0], low, high)
    env.close()
    seed_everything(init_seed)  # a resumed run starts from other weights: the checkpoint must overwrite them
    agent = TD3BC(TD3BCConfig(hidden=[32, 32]), spec, CPU)
    cfg = TrainerConfig(**(dict(offline_updates=40, online_steps=40, checkpoint_every=20, eval_every=40,
                                eval_episodes=1, log_every=10, batch_size=64, progress=False) | trainer_cfg))
    offline = offline if offline is not None else offline_store(dataset, CPU)
    return Trainer(agent, cfg, short_env, offline, run_dir, seed=seed,
                   ref_scores=(dataset.ref_min_score, dataset.ref_max_score), tensorboard=False, sampler=sampler)


def read_rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, dataset):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    trainer = make_trainer(run_dir, dataset)
    summary = trainer.run()
    return trainer, summary


def assert_matches_uninterrupted(resumed: Trainer, summary: dict, uninterrupted) -> None:
    ref, ref_summary = uninterrupted
    assert_same_state(ref.agent.state_dict(), resumed.agent.state_dict())
    assert (resumed.online.size, resumed.online.cursor) == (ref.online.size, ref.online.cursor) == (40, 0)
    for name, value in ref.online.valid().items():
        assert torch.equal(resumed.online.valid()[name], value), name
    for name in LOGS:
        assert (resumed.run_dir / name).read_bytes() == (ref.run_dir / name).read_bytes(), name
    drop = lambda s: {k: v for k, v in s.items() if k != "seconds"}  # noqa: E731 - wall clock
    assert drop(summary) == drop(ref_summary)
    assert summary["updates"] == 80 and summary["env_steps"] == 40


def test_top_episode_seeds_survive_the_whole_online_phase(tmp_path, dataset):
    # ACA's seeding: the online store holds the seeds plus every online step, so none is overwritten
    offline = offline_store(dataset, CPU)
    offline.data["truncated"][[99, 199]] = 1.0  # three episodes: rows 0-99, 100-199, 200-359
    seeds = top_episode_rows(offline, 2)
    assert 0 < len(seeds) < len(offline)
    trainer = make_trainer(tmp_path, dataset, sampler=SamplerConfig(kind="online_only", online_seed_top_episodes=2),
                           offline=offline)
    trainer.run()
    online = trainer.online
    assert online.capacity == len(seeds) + 40 and online.size == online.capacity
    for name in ("obs", "act", "rew", "next_obs", "terminal"):
        assert torch.equal(online.data[name][: len(seeds)], offline.data[name][seeds]), name


def test_uninterrupted_run_logs(uninterrupted):
    trainer, summary = uninterrupted
    assert [float(r["step"]) for r in read_rows(trainer.run_dir / "eval.csv")] == [40, 80]
    train_steps = [float(r["step"]) for r in read_rows(trainer.run_dir / "train.csv")]
    assert train_steps == [10, 20, 30, 40, 50, 60, 70, 80]
    episodes = read_rows(trainer.run_dir / "episodes.csv")
    assert [float(r["length"]) for r in episodes] == [EPISODE]  # one time-limit cut in 40 online steps
    assert float(episodes[0]["env_steps"]) == EPISODE
    # the online buffer keeps truncation and termination apart: HalfCheetah only truncates
    data = trainer.online.valid()
    assert data["terminal"].sum() == 0
    assert data["truncated"].nonzero().flatten().tolist() == [EPISODE - 1]
    assert summary["offline_score"] is not None and summary["online_score"] is not None


@pytest.mark.parametrize(("stop_after", "offline_updates", "env_steps"),
                         [(2, 40, 0),    # killed at the end of the offline phase
                          (3, 40, 20)])  # killed mid-episode in the online phase
def test_kill_and_resume_is_exact(tmp_path, dataset, uninterrupted, stop_after, offline_updates, env_steps):
    first = make_trainer(tmp_path, dataset)
    first.stop_after = stop_after
    assert first.run() == {}  # stopped, as if killed right after its checkpoint
    assert not (tmp_path / "summary.json").exists()
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert (ckpt["trainer"]["offline_updates"], ckpt["trainer"]["env_steps"]) == (offline_updates, env_steps)
    # a real kill may land after rows were written past the checkpoint: they must not survive
    for name in ("train.csv", "eval.csv"):
        with (tmp_path / name).open("a") as f:
            f.write("999,9,9,9,9,9,9,9\n")

    resumed = make_trainer(tmp_path, dataset, init_seed=123)
    summary = resumed.run()
    assert_matches_uninterrupted(resumed, summary, uninterrupted)


def test_finished_run_is_not_rerun(tmp_path, dataset, uninterrupted):
    ref, ref_summary = uninterrupted
    run_dir = tmp_path / "copy"
    shutil.copytree(ref.run_dir, run_dir)
    again = make_trainer(run_dir, dataset, init_seed=5)
    summary = again.run()
    assert summary["updates"] == ref_summary["updates"]
    assert summary["online_return"] == ref_summary["online_return"]
    assert again.agent.num_updates == 80
    for name in LOGS:
        assert (run_dir / name).read_text() == (ref.run_dir / name).read_text(), name


def test_start_from_another_runs_switch_makes_its_online_phase_exactly(tmp_path, dataset, uninterrupted):
    """trainer.start_from: a run that takes over the uninterrupted run's switch.pt, with the same config, ends
    where that run ended (parameters, optimizer state, online store, every log row) without an offline update
    of its own; with another online config it keeps the offline rows and goes its own way online."""
    ref, _ = uninterrupted
    switch = torch.load(ref.run_dir / "switch.pt", weights_only=True)
    assert (switch["trainer"]["offline_updates"], switch["trainer"]["env_steps"]) == (40, 0)
    assert set(switch["switch"]["logs"]) == {"train.csv", "eval.csv"}
    branch = make_trainer(tmp_path / "same", dataset, init_seed=123, start_from=str(ref.run_dir))
    updates = []
    branch.on_evaluate.append(lambda t, r: updates.append(t.agent.num_updates))
    summary = branch.run()
    assert updates == [80]  # its only evaluation is the online one: the offline phase was taken over
    assert_matches_uninterrupted(branch, summary, uninterrupted)
    assert not (tmp_path / "same" / "switch.pt").exists()  # it ran no offline phase of its own

    other = make_trainer(tmp_path / "other", dataset, start_from=str(ref.run_dir / "switch.pt"), updates_per_step=2)
    other.run()
    ref_eval, other_eval = read_rows(ref.run_dir / "eval.csv"), read_rows(tmp_path / "other" / "eval.csv")
    assert other_eval[0] == ref_eval[0] and other_eval[1] != ref_eval[1]  # same offline row, another online phase
    assert other.agent.num_updates == 40 + 2 * 40


@pytest.mark.parametrize(("setting", "message"), [
    ({"seed": 1}, "that run's seed is 0, this run's 1"),
    ({"offline_updates": 20}, "set trainer.offline_updates to match"),
    ({"start_from": "missing"}, "no switch.pt there"),
    ({"start_from": "checkpoint"}, "no switch"),
])
def test_start_from_refuses_what_it_cannot_continue(tmp_path, dataset, uninterrupted, setting, message):
    ref, _ = uninterrupted
    setting = dict(setting)
    start_from = {"missing": tmp_path / "nowhere", "checkpoint": ref.run_dir / "checkpoint.pt"}.get(
        setting.pop("start_from", None), ref.run_dir)
    branch = make_trainer(tmp_path / "run", dataset, start_from=str(start_from), **setting)
    with pytest.raises(CheckpointError, match=message):
        branch.run()
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


class _OpensAFile:
    """Unpickling this would call open(marker, "w"): code chosen by the file's author."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_start_from_a_crafted_switch_file_runs_no_code(tmp_path, dataset):
    marker, source = tmp_path / "pwned", tmp_path / "source"
    source.mkdir()
    torch.save({"trainer": {}, "agent": _OpensAFile(marker), "rng": {}, "log_rows": {}, "world": {}, "sampler": {},
                "switch": {"logs": {}}}, source / "switch.pt")
    branch = make_trainer(tmp_path / "run", dataset, start_from=str(source))
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        branch.run()
    assert not marker.exists()


# --- the CLI's run-directory rules (uses the background runs started in conftest) ---------------
def finished_cli_run(agent_runs, name: str, dest: Path) -> Path:
    result = agent_runs[name].result()
    assert result.returncode == 0, result.describe()
    shutil.copytree(result.run_dir, dest)
    return dest


def test_cli_resume_with_another_config_is_refused(agent_runs, tiny_dataset_id, tmp_path):
    run_dir = finished_cli_run(agent_runs, "td3bc", tmp_path / "run")
    before = {name: (run_dir / name).read_bytes() for name in ("summary.json", "checkpoint.pt", "eval.csv")}
    # device is one of the keys that may change between a run and its resumption
    result = run_cli(agent_cmd("td3bc", run_dir, tiny_dataset_id, device="cpu",
                               **{"trainer.batch_size": "128"}), run_dir)
    assert result.returncode == 2, result.describe()
    message = result.stderr.strip().splitlines()[-1]
    assert "trainer.batch_size" in message and "resume=false" in message, message
    assert "device" not in message.split("differs in:")[1].split(")")[0], message
    assert "Traceback" not in result.stderr
    for name, content in before.items():
        assert (run_dir / name).read_bytes() == content, f"{name} changed by a refused run"


def test_cli_resume_false_starts_over(agent_runs, tiny_dataset_id, tmp_path):
    run_dir = finished_cli_run(agent_runs, "td3bc", tmp_path / "run")
    budget = {"trainer.offline_updates": "20", "trainer.online_steps": "20", "trainer.eval_every": "20",
              "trainer.checkpoint_every": "20"}
    result = run_cli(agent_cmd("td3bc", run_dir, tiny_dataset_id, resume="false", **budget), run_dir)
    assert result.returncode == 0, result.describe()
    summary = result.summary
    assert (summary["updates"], summary["env_steps"]) == (40, 20)
    # only the new run's rows: nothing kept or appended from the finished run
    assert [float(r["step"]) for r in read_rows(run_dir / "eval.csv")] == [20, 40]
    assert [float(r["step"]) for r in read_rows(run_dir / "train.csv")] == [20, 40]
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["trainer"]["offline_updates"] == 20 and ckpt["trainer"]["done"]


def test_summary_has_required_keys(agent_runs, tiny_dataset_id):
    refs = load_offline_dataset(tiny_dataset_id)
    for name in ("td3bc", "sac"):
        result = agent_runs[name].result()
        assert result.returncode == 0, result.describe()
        summary = result.summary
        assert set(REQUIRED_SUMMARY) <= set(summary), (name, sorted(summary))
        assert summary["agent"] == name and summary["dataset_id"] == tiny_dataset_id and summary["seed"] == 0
        assert summary["online_score"] == pytest.approx(
            100 * (summary["online_return"] - refs.ref_min_score) / (refs.ref_max_score - refs.ref_min_score))
        assert isinstance(summary["seconds"], float | int) and summary["seconds"] >= 0
    td3bc, sac = agent_runs["td3bc"].result().summary, agent_runs["sac"].result().summary
    assert isinstance(td3bc["offline_score"], float) and isinstance(td3bc["offline_return"], float)
    # online-only SAC never evaluates an offline phase
    assert sac["offline_score"] is None and sac["offline_return"] is None
