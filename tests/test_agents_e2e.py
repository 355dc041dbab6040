"""`python -m agents.<name>` end to end on the tiny dataset, and the CLI's user-error paths.

The processes are started in the background by conftest (`agent_runs`, `cli_error_runs`) so
they overlap with the in-process tests; here we only wait for them and check the results.
"""

from __future__ import annotations

import csv

import pytest
from conftest import AGENTS, MISSING_DATASET_ID, MODEL_BASED

from worldmodels.data.minari_load import dataset_exists, load_offline_dataset
from worldmodels.data.minari_write import recipe_dataset_id

REQUIRED_SUMMARY = ("agent", "dataset_id", "seed", "offline_score", "online_score", "offline_return",
                    "online_return", "updates", "env_steps", "seconds")
OFFLINE_AGENTS = {"bc", "td3bc", "mopo", "moore"}


@pytest.mark.parametrize("name", AGENTS)
def test_agent_cli_end_to_end(agent_runs, tiny_dataset_id, name):
    result = agent_runs[name].result()
    assert result.returncode == 0, result.describe()
    run_dir = result.run_dir
    summary = result.summary
    assert set(REQUIRED_SUMMARY) <= set(summary)
    assert summary["agent"] == name and summary["dataset_id"] == tiny_dataset_id and summary["seed"] == 0
    assert summary["env_steps"] == 60
    # the summary names the data it trained on, not only its ID (recipes are not bitwise portable across CPUs)
    assert summary["dataset_sha256"] == load_offline_dataset(tiny_dataset_id).fingerprint()
    with (run_dir / "eval.csv").open() as f:
        evals = list(csv.DictReader(f))
    with (run_dir / "train.csv").open() as f:
        train = list(csv.DictReader(f))
    if name in OFFLINE_AGENTS:
        # 60 offline updates, then one update per env step (no warmup)
        assert summary["updates"] == 120
        assert isinstance(summary["offline_score"], float) and isinstance(summary["online_score"], float)
        assert [float(r["step"]) for r in evals] == [60, 120]  # end of each phase
        assert [float(r["phase"]) for r in evals] == [0, 1]
        assert [float(r["step"]) for r in train] == [20, 40, 60, 80, 100, 120]
    else:
        # online-only: no offline phase; 20 warmup steps of random actions, then 40 updates
        assert summary["updates"] == 40
        assert summary["offline_score"] is None and isinstance(summary["online_score"], float)
        assert [float(r["step"]) for r in evals] == [60]
        assert [float(r["step"]) for r in train] == [40, 60]
    assert summary["online_return"] == pytest.approx(float(evals[-1]["return"]))
    assert all(r["return"] not in ("", "nan") for r in evals)
    events = list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file under tb/"
    assert any(b"eval/return" in e.read_bytes() for e in events)  # scalars were written, not just a header
    assert (run_dir / "checkpoint.pt").exists()
    if name in MODEL_BASED:
        # fitted once offline (moore refits at online steps 30 and 60), rollouts every 30 updates
        assert summary["model_holdout_mse"] > 0 and summary["mean_penalty"] > 0
        assert (run_dir / "dynamics.pt").exists()
        with (run_dir / "model.csv").open() as f:
            model_rows = list(csv.DictReader(f))
        fits = [r for r in model_rows if r.get("epochs")]
        assert len(fits) == (3 if name == "moore" else 1)
        assert sum(1 for r in model_rows if r.get("model/penalty_mean")) == 4  # updates 0, 30, 60, 90
    # the summary is also the last line on stdout
    assert result.stdout.strip().splitlines()[-1].startswith("{")


def test_missing_dataset_id(cli_error_runs):
    result = cli_error_runs["missing_id"].result()
    assert result.returncode == 2, result.describe()
    assert MISSING_DATASET_ID in result.stderr and "agents.tools.make_dataset" in result.stderr, result.describe()
    assert "Traceback" not in result.stderr


def test_offline_share_out_of_range(cli_error_runs):
    result = cli_error_runs["offline_share"].result()
    assert result.returncode == 2, result.describe()
    assert "sampler.offline_share" in result.stderr and "1.5" in result.stderr, result.describe()
    assert MISSING_DATASET_ID not in result.stderr  # rejected before any data is looked up


def test_unknown_device(cli_error_runs):
    result = cli_error_runs["device"].result()
    assert result.returncode == 2, result.describe()
    assert "tpu" in result.stderr and "device" in result.stderr, result.describe()
    assert MISSING_DATASET_ID not in result.stderr


def test_make_rejects_unknown_quality(cli_error_runs):
    result = cli_error_runs["make_quality"].result()
    assert result.returncode != 0, result.describe()
    assert "quality" in result.stderr and "bogus" in result.stderr, result.describe()
    assert "Traceback" not in result.stderr
    assert not dataset_exists(recipe_dataset_id("HalfCheetah-v5", "bogus", 20_000, 30_000, 0))


def test_nan_rewards_dataset(cli_error_runs, nan_rewards_dataset_id):
    result = cli_error_runs["nan_rewards"].result()
    assert result.returncode == 2, result.describe()
    assert "'rewards'" in result.stderr and nan_rewards_dataset_id in result.stderr, result.describe()
    assert "Traceback" not in result.stderr


def _markdown_rows(stdout: str) -> dict[str, tuple[float, float]]:
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        try:
            rows[cells[0]] = (float(cells[1]), float(cells[2]))
        except (ValueError, IndexError):  # the header, the |---| rule and the lines around the table
            continue
    return rows


def test_exploitation_tool_reads_a_model_based_run(agent_runs, tiny_dataset_id):
    """`python -m agents.tools.exploitation RUN_DIR`: the model's figures on the policy's real episodes and
    on the data; the dataset column is checked against the dataset itself, the penalized reward against
    r_hat - lambda u of the run's own estimator."""
    import sys

    import numpy as np
    from conftest import run_cli
    from omegaconf import OmegaConf

    from worldmodels.analysis.evaluation import segment_starts
    from worldmodels.data.minari_load import load_offline_dataset

    mopo = agent_runs["mopo"].result()
    assert mopo.returncode == 0, mopo.describe()
    cmd = [sys.executable, "-m", "agents.tools.exploitation", str(mopo.run_dir), "episodes=1",
           "dataset_rows=1000000"]
    result = run_cli(cmd)
    assert result.returncode == 0, result.describe()
    rows = _markdown_rows(result.stdout)
    ds = load_offline_dataset(tiny_dataset_id)
    cfg = OmegaConf.load(mopo.run_dir / "run_config.yaml")
    penalty, coef, h = cfg.world_model.uncertainty, cfg.rollout.penalty_coef, cfg.rollout.horizon
    starts = segment_starts(ds, h)  # every logged h-step segment, since dataset_rows exceeds their count
    # one HalfCheetah episode of 1000 steps holds 1000 - h + 1 segments
    assert rows["transitions"] == (float(1000 - h + 1), float(len(starts)))
    assert rows["r (true)"][1] == pytest.approx(float(ds.rewards[starts].mean()), abs=1e-3)
    h_step_true = np.mean([ds.rewards[t:t + h].sum() for t in starts])
    assert rows[f"{h}-step true return"][1] == pytest.approx(float(h_step_true), abs=1e-3)
    for col in (0, 1):
        taught = rows["r_hat (model)"][col] - coef * rows[f"u {penalty}"][col]
        assert rows["r_hat - lambda u (taught)"][col] == pytest.approx(taught, abs=5e-3)
        assert rows["taught - true"][col] == pytest.approx(taught - rows["r (true)"][col], abs=5e-3)
        assert rows["abs(r_hat - r)"][col] >= abs(rows["r_hat (model)"][col] - rows["r (true)"][col]) - 2e-3

    # the critic against the true discounted return, over rows with at least 500 steps left in their episode
    ids = np.asarray(ds.episode_ids)
    gamma, ret_to_go, rows_left = cfg.agent.gamma, np.zeros(len(ids)), np.zeros(len(ids), dtype=int)
    for t in reversed(range(len(ids))):
        last = t == len(ids) - 1 or ids[t + 1] != ids[t]
        ret_to_go[t] = ds.rewards[t] + (0.0 if last else gamma * ret_to_go[t + 1])
        rows_left[t] = 1 if last else rows_left[t + 1] + 1
    if (rows_left >= 500).any():
        assert rows["discounted return (true)"][1] == pytest.approx(ret_to_go[rows_left >= 500].mean(), abs=2e-3)
    for col in (0, 1):
        if not np.isnan(rows["Q - return"][col]):
            q_minus = rows["Q(s, a) (critic)"][col] - rows["discounted return (true)"][col]
            assert rows["Q - return"][col] == pytest.approx(q_minus, abs=5e-3)

    # the action-support table at logged states: the logged actions' edge share is the dataset's own
    low, high = -1.0, 1.0  # HalfCheetah's action box
    centre, half = (high + low) / 2, (high - low) / 2
    logged_edge = rows["share of action components at the edge"][0]
    assert logged_edge == pytest.approx(float((np.abs(ds.actions - centre) > 0.95 * half).mean()), abs=1e-3)
    assert 0.0 <= rows["share of action components at the edge"][1] <= 1.0
    assert np.isfinite(rows["outward dQ/da at pi(s)"][1]) and np.isfinite(rows["Q(s, .) (critic, min)"]).all()

    td3bc = agent_runs["td3bc"].result()
    refused = run_cli([sys.executable, "-m", "agents.tools.exploitation", str(td3bc.run_dir)])
    assert refused.returncode == 2 and "model-free" in refused.stderr, refused.describe()
    bad = run_cli([sys.executable, "-m", "agents.tools.exploitation", str(mopo.run_dir), "episodes=two"])
    assert bad.returncode == 2 and "episodes=two must be a positive integer" in bad.stderr, bad.describe()


def test_kept_policies_replay_their_evaluations_and_the_gait_tool_reads_them(tmp_path, tiny_dataset_id):
    """`trainer.keep_policies=true` keeps the agent of every evaluation; `python -m agents.tools.gait RUN_DIR`
    replays each with its evaluation's seeds, so its scores are eval.csv's to the printed digit, and the
    last kept agent is the final checkpoint's. The dataset mode's figures are the dataset's own."""
    import csv
    import sys

    import numpy as np
    from conftest import assert_same_state, run_agent, run_cli

    from agents.core.checkpoint import load_checkpoint
    from worldmodels.data.minari_load import load_offline_dataset

    run = run_agent("td3bc", tmp_path / "kept", tiny_dataset_id, **{"trainer.keep_policies": "true",
                                                                      "trainer.eval_every": "30"})
    assert run.returncode == 0, run.describe()
    kept = sorted((run.run_dir / "policies").glob("*.pt"))
    with open(run.run_dir / "eval.csv") as f:
        scores = [float(r["normalized_score"]) for r in csv.DictReader(f)]
    assert len(kept) == len(scores) == 4  # 60 offline updates and 60 env steps, every 30
    assert_same_state(load_checkpoint(kept[-1], "cpu")["agent"], load_checkpoint(run.run_dir / "checkpoint.pt",
                                                                                  "cpu")["agent"])
    tool = run_cli([sys.executable, "-m", "agents.tools.gait", str(run.run_dir)])
    assert tool.returncode == 0, tool.describe()
    rows = [ln.split("|")[1:-1] for ln in tool.stdout.splitlines() if ln.startswith("| ") and "/" in ln
            and "offline updates" not in ln]
    assert [r[0].strip() for r in rows] == ["30 / 0", "60 / 0", "60 / 30", "60 / 60"]
    assert [float(r[1]) for r in rows] == [round(s, 1) for s in scores]

    data = run_cli([sys.executable, "-m", "agents.tools.gait", f"dataset={tiny_dataset_id}"])
    assert data.returncode == 0, data.describe()
    ds = load_offline_dataset(tiny_dataset_id)
    obs, act = np.asarray(ds.observations), np.asarray(ds.actions)
    [total] = [ln.split("|")[1:-1] for ln in data.stdout.splitlines() if ln.startswith("| all rows")]
    assert float(total[2]) == round(float(obs[:, 8].mean()), 2)  # HalfCheetah: qvel[0] follows qpos[1:9]
    assert float(total[3]) == round(float(0.1 * np.square(act).sum(-1).mean()), 3)
    assert float(total[4]) == round(float(np.mean(np.abs(obs[:, 1]) > np.pi / 2)), 2)
    bad = run_cli([sys.executable, "-m", "agents.tools.gait"])
    assert bad.returncode == 2 and "usage" in bad.stderr, bad.describe()

    # logged_starts=N: every kept policy from N logged states and from the data's episode starts
    starts = run_cli([sys.executable, "-m", "agents.tools.gait", str(run.run_dir), "logged_starts=3"])
    assert starts.returncode == 0, starts.describe()
    table = [ln.split("|")[1:-1] for ln in starts.stdout.split("from 3 logged states")[1].splitlines()
             if ln.startswith("| ") and "/" in ln]
    assert [r[0].strip() for r in table] == ["30 / 0", "60 / 0", "60 / 30", "60 / 60"]
    assert all(0.0 <= float(r[2]) <= 1.0 and 0.0 <= float(r[4]) <= 1.0 for r in table)
    negative = run_cli([sys.executable, "-m", "agents.tools.gait", str(run.run_dir), "logged_starts=-1"])
    assert negative.returncode == 2 and "logged_starts=-1" in negative.stderr, negative.describe()


def test_a_restored_logged_state_steps_to_the_logged_next_state(tiny_dataset_id):
    """The gait tool's restore_state: the simulator set to a logged state, stepped with the logged action, gives
    the logged next observation, so a policy played from there starts where the data was."""
    import numpy as np

    from agents.tools.gait import body_of, restore_state, velocities_from
    from worldmodels.data.minari_load import load_offline_dataset
    from worldmodels.envs import make_env

    ds = load_offline_dataset(tiny_dataset_id)
    body = body_of(ds.env_id)
    env = make_env(ds.env_id)
    env.reset(seed=0)
    for row in (0, 17, len(ds.rewards) - 1):
        restore_state(env, ds.observations[row], body.vel_index)
        nxt = env.step(ds.actions[row])[0]
        np.testing.assert_allclose(nxt, ds.next_observations[row], atol=1e-4)
    # the velocities of a played policy are the observations' forward velocity
    vel = velocities_from(env, lambda o: np.zeros(6, dtype=np.float32), ds.observations[17], body.vel_index, steps=4)
    restore_state(env, ds.observations[17], body.vel_index)
    by_hand = [env.step(np.zeros(6, dtype=np.float32))[0][body.vel_index] for _ in range(4)]
    np.testing.assert_allclose(vel, by_hand)
    env.close()


def test_calibration_ranks_a_runs_critic_ensemble(agent_runs, tiny_dataset_id, tmp_path):
    """`python -m agents.tools.calibration critic_run=RUN_DIR`: the run's critics restored from its checkpoint and
    ranked on the held-out and the training data; a run without a critic ensemble is refused in one line."""
    import json

    from agents.core.config import ConfigError
    from agents.tools.calibration import CalibrationConfig, HeldoutConfig, run

    sac, bc = agent_runs["sac"].result(), agent_runs["bc"].result()
    assert sac.returncode == 0 and bc.returncode == 0, sac.describe() + bc.describe()
    cfg = CalibrationConfig(critic_run=str(sac.run_dir), heldout=HeldoutConfig(id=tiny_dataset_id), num_states=300,
                            critic_min_steps_left=50)  # the tiny data holds no episode of 500 steps
    report = run(cfg, tmp_path)
    assert (report["agent"], report["critics"], report["updates"]) == ("sac", 2, sac.summary["updates"])
    for key in ("heldout", "run_dataset"):
        assert report[key]["dataset"] == tiny_dataset_id and 0 < report[key]["rows"] <= 300
        assert -1.0 <= report[key]["spearman"] <= 1.0 and 0.0 <= report[key]["auroc"] <= 1.0
    assert json.loads((tmp_path / "critic_calibration.json").read_text())["heldout"] == report["heldout"]
    assert "| heldout: " in (tmp_path / "critic_calibration.md").read_text()
    with pytest.raises(ConfigError, match="no ensemble of two or more critics"):
        run(CalibrationConfig(critic_run=str(bc.run_dir), heldout=HeldoutConfig(id=tiny_dataset_id)), tmp_path)
