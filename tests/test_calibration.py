"""worldmodels.analysis (metrics, evaluation, report) and agents.tools.calibration: rank metrics on hand examples,
segments that never cross an episode end, the config checks, and `python -m agents.tools.calibration` end to end
on a tiny recipe dataset.

The CLI runs start in the background when the module's first test begins (a module fixture) and are
awaited by the last tests, so the in-process tests overlap with the dataset build.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, cli_env

from agents.core.config import ConfigError
from agents.tools.calibration import CalibrationConfig, HeldoutConfig, check_config
from worldmodels.analysis.evaluation import DYNAMICS_ESTIMATORS, check_compatible, evaluate, segment_starts, summarize
from worldmodels.analysis.metrics import auroc, average_ranks, score, spearman, top_error_labels
from worldmodels.analysis.report import markdown
from worldmodels.data.minari_load import DatasetError, OfflineDataset
from worldmodels.dynamics import DynamicsEnsemble

torch.set_num_threads(1)

TINY = {
    "experiment": "smoke",
    "dataset.size": "600",
    "dataset.train_steps": "600",
    "world_model.fit_max_epochs": "5",
    "num_states": "200",
    "trainer.progress": "false",
}


_REPORT = {
    "horizon": 4,
    "threshold_quantile": 0.9,
    "train_dataset": "t/a-v0",
    "heldout_dataset": "t/b-v0",
    "model_path": "m.pt",
    "model_holdout_mse": 0.1,
    "heldout_one_step_mse": 0.2,
    "n_one_step": 5,
    "n_segments": 0,
}


def _cli(run_dir: Path, **overrides: str) -> list[str]:
    args = TINY | overrides | {"hydra.run.dir": str(run_dir)}
    return [sys.executable, "-m", "agents.tools.calibration", *(f"{k}={v}" for k, v in args.items())]


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """The CLI on the tiny recipe (fits a model, builds the medium-expert held-out set)."""
    root = tmp_path_factory.mktemp("calibration")
    env = cli_env()
    # conftest already points both at a per-session temporary directory; never use the user's stores
    for key in ("MINARI_DATASETS_PATH", "O2O_CACHE"):
        env.setdefault(key, str(root / key.lower()))
    runs = {"ok": (root / "ok", _cli(root / "ok"))}
    procs = {
        k: (
            d,
            subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        )
        for k, (d, cmd) in runs.items()
    }
    yield procs
    for _, p in procs.values():
        if p.poll() is None:
            p.kill()
            p.communicate()


def _wait(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


# ------------------------------------------------------------------------------------------ rank metrics


def test_start_cli_runs(cli_runs):
    """Starts the background CLI runs first (module fixture); the checks are in the last tests."""
    assert all(p.poll() in (None, 0) for _, p in cli_runs.values())


def test_average_ranks_share_ties():
    np.testing.assert_allclose(average_ranks(np.array([3.0, 1.0, 2.0, 2.0])), [4.0, 1.0, 2.5, 2.5])
    np.testing.assert_allclose(average_ranks(np.array([5.0, 5.0, 5.0])), [2.0, 2.0, 2.0])


def test_auroc_hand_examples():
    labels = np.array([0, 0, 1, 1], dtype=bool)
    assert auroc(np.array([0.1, 0.2, 0.3, 0.4]), labels) == 1.0  # perfect ranking
    assert auroc(np.array([0.4, 0.3, 0.2, 0.1]), labels) == 0.0  # reversed
    assert auroc(np.array([0.7, 0.7, 0.7, 0.7]), labels) == 0.5  # all tied
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), labels) == 0.75  # 3 of 4 pairs ordered
    # one tie between a positive and a negative counts one half: (1 + 0.5 + 1 + 1) / 4
    assert auroc(np.array([1.0, 2.0, 2.0, 3.0]), np.array([0, 1, 0, 1], dtype=bool)) == 0.875
    assert math.isnan(auroc(np.array([1.0, 2.0]), np.array([True, True])))  # one class only


def test_spearman_hand_examples():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert math.isnan(spearman(x, np.ones(5)))


def test_estimator_equal_to_the_error_is_perfect():
    err = np.random.default_rng(0).lognormal(size=1000)
    labels = top_error_labels(err, 0.9)
    assert labels.sum() == 100  # strictly above the 90th percentile
    assert score(err, err, 0.9) == {"spearman": pytest.approx(1.0), "auroc": 1.0}
    assert score(2 * err + 1, err, 0.9)["auroc"] == 1.0  # only the ranking matters
    assert score(-err, err, 0.9)["auroc"] == 0.0


# ------------------------------------------------------------------------------------------ segments


def _dataset(lengths: list[int], obs_dim: int = 3, act_dim: int = 2, seed: int = 0, dataset_id: str = "t/x-v0"):
    """Chained episodes (next_obs[t] == obs[t + 1] inside each episode) of the given lengths."""
    rng = np.random.default_rng(seed)
    obs, nxt, ids, term, trunc = [], [], [], [], []
    for e, n in enumerate(lengths):
        states = rng.normal(size=(n + 1, obs_dim)).astype(np.float32)
        obs.append(states[:-1])
        nxt.append(states[1:])
        ids.append(np.full(n, e))
        term.append(np.eye(n, dtype=bool)[-1] & (e % 2 == 0))  # even episodes terminate, odd ones are truncated
        trunc.append(np.eye(n, dtype=bool)[-1] & (e % 2 == 1))
    n = sum(lengths)
    return OfflineDataset(
        dataset_id,
        "HalfCheetah-v5",
        np.concatenate(obs),
        rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
        rng.normal(size=n).astype(np.float32),
        np.concatenate(nxt),
        np.concatenate(term),
        np.concatenate(trunc),
        np.concatenate(ids).astype(np.int64),
    )


@pytest.mark.parametrize("horizon", [1, 2, 3, 5, 7])
def test_segments_never_cross_an_episode_end(horizon):
    lengths = [3, 1, 5, 2, 6]
    ds = _dataset(lengths)
    starts = segment_starts(ds, horizon)
    assert len(starts) == sum(max(0, n - horizon + 1) for n in lengths)
    for t in starts:
        rows = np.arange(t, t + horizon)
        assert len(set(ds.episode_ids[rows])) == 1
        assert not (ds.terminations[rows[:-1]] | ds.truncations[rows[:-1]]).any()
        np.testing.assert_array_equal(ds.next_observations[rows[:-1]], ds.observations[rows[1:]])


def test_segments_skip_a_broken_chain():
    ds = _dataset([6])
    ds.next_observations[2] += 1.0  # the logged data is not one trajectory across rows 2 -> 3
    assert segment_starts(ds, 2).tolist() == [0, 1, 3, 4]
    assert segment_starts(ds, 1).tolist() == list(range(6))


def test_evaluate_shapes_and_one_step_rollout_error():
    torch.manual_seed(0)
    ds = _dataset([8, 4, 10])
    model = DynamicsEnsemble(3, 2, ensemble_size=3, num_elites=2, hidden=(16, 16), weight_decays=(0.0, 0.0, 0.0))
    model.fit(
        {
            "obs": ds.observations,
            "act": ds.actions,
            "rew": ds.rewards,
            "next_obs": ds.next_observations,
            "terminal": ds.terminations.astype(np.float32),
        },
        max_epochs=2,
    )
    ev = evaluate(model, ds, DYNAMICS_ESTIMATORS, horizon=3, num_states=1000)
    assert ev.one_step_error.shape == (22,) and ev.rollout_error.shape == (16, 3)
    assert set(ev.one_step_u) == set(ev.rollout_u0) == set(ev.rollout_upath) == set(DYNAMICS_ESTIMATORS)
    assert all(np.isfinite(u).all() and (u >= ev.rollout_u0[k]).all() for k, u in ev.rollout_upath.items())
    # horizon 1: the rollout error is the normalized state part of the one-step error, for every row
    ev1 = evaluate(model, ds, ["aleatoric"], horizon=1, num_states=1000)
    obs, act = torch.as_tensor(ds.observations), torch.as_tensor(ds.actions)
    mean, _ = model.predict(obs, act)
    pred = obs + mean[model.elite_indices].mean(0)[:, :3]
    want = torch.linalg.vector_norm((pred - torch.as_tensor(ds.next_observations)) / model.in_std[:3], dim=-1)
    np.testing.assert_allclose(ev1.rollout_error[:, 0], want.numpy(), rtol=1e-5)
    # episodes shorter than the horizon: no segments, the h-step scores are NaN (n/a), nothing crashes
    short = evaluate(model, _dataset([3, 2]), ["disagreement"], horizon=4, num_states=10)
    assert short.rollout_error.shape == (0, 4)
    summary = summarize(short, 0.9)
    assert math.isnan(summary["estimators"]["disagreement"]["auroc_hstep"])
    assert "n/a" in markdown({**_REPORT, **summary})


# ------------------------------------------------------------------------------------------ bad input


def test_config_checks():
    with pytest.raises(ConfigError, match="horizon"):
        check_config(CalibrationConfig(horizon=0))
    with pytest.raises(ConfigError, match="bogus"):
        check_config(CalibrationConfig(estimators=["aleatoric", "bogus"]))
    with pytest.raises(ConfigError, match="model_path"):
        check_config(CalibrationConfig(model_path="/nonexistent/dynamics.pt"))
    with pytest.raises(ConfigError, match="heldout.quality"):
        check_config(CalibrationConfig(heldout=HeldoutConfig(quality="great")))


def test_heldout_from_another_env_is_refused():
    model = DynamicsEnsemble(3, 2, ensemble_size=2, num_elites=1, hidden=(8,), weight_decays=(0.0, 0.0))
    with pytest.raises(DatasetError, match="observations"):
        check_compatible(model, _dataset([4], obs_dim=5, dataset_id="t/other-env-v0"), "HalfCheetah-v5")
    check_compatible(model, _dataset([4]), "HalfCheetah-v5")


# ------------------------------------------------------------------------------------------ CLI (last)


def test_cli_bad_estimator_exits_2(tmp_path, monkeypatch, capsys):
    """The hydra entry in-process (a subprocess would cost ~5 s of imports): one error line, exit status 2."""
    from agents.tools.calibration import main

    argv = ["calibration", "estimators=[aleatoric,bogus]", f"hydra.run.dir={tmp_path}"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "bogus" in lines[0] and "Traceback" not in err, err


def test_cli_end_to_end(cli_runs):
    run_dir, proc = cli_runs["ok"]
    code, out, err = _wait(proc)
    assert code == 0, err[-3000:]
    for name in (
        "calibration.md",
        "calibration.json",
        "error_vs_uncertainty.png",
        "rollout_error_growth.png",
        "dynamics.pt",
    ):
        assert (run_dir / name).is_file(), name
    table = (run_dir / "calibration.md").read_text()
    rows = [
        line
        for line in table.splitlines()
        if line.startswith("| ") and line.split("|")[1].strip() in DYNAMICS_ESTIMATORS
    ]
    assert [r.split("|")[1].strip() for r in rows] == list(DYNAMICS_ESTIMATORS)
    assert "err > p90" in table
    assert table.strip() in out  # printed to stdout too
    report = json.loads((run_dir / "calibration.json").read_text())
    assert report["heldout_dataset"].startswith("o2o/HalfCheetah-v5/medium-expert-s600-t600")
    assert report["train_dataset"].startswith("o2o/HalfCheetah-v5/medium-replay-s600-t600")
    assert report["n_one_step"] == 200 and report["horizon"] == 5 and len(report["error_growth"]) == 5
    for name in DYNAMICS_ESTIMATORS:
        m = report["estimators"][name]
        assert -1.0 <= m["spearman_1step"] <= 1.0 and 0.0 <= m["auroc_1step"] <= 1.0
        assert 0.0 <= m["auroc_hstep"] <= 1.0 and 0.0 <= m["auroc_hstep_path"] <= 1.0


def test_critic_ranking_by_hand():
    """critic_run's core: rows with a known return (a terminated episode whole, a truncated one only
    min_steps_left or more steps before its cut), u = the std over the critics, error = |mean Q - G|.
    Critics answering G and G + 2d have mean G + d and std sqrt(2) d: u ranks the error perfectly."""
    from agents.tools.calibration import critic_ranking

    rng = np.random.default_rng(0)
    lengths = (5, 8)  # episode A ends in a termination, B at a time limit
    n = sum(lengths)
    ds = OfflineDataset(
        dataset_id="t/hand-v0", env_id="Pendulum-v1",
        observations=np.zeros((n, 3), np.float32), actions=np.zeros((n, 1), np.float32),
        rewards=rng.normal(size=n).astype(np.float32), next_observations=np.zeros((n, 3), np.float32),
        terminations=np.array([False] * 4 + [True] + [False] * 8), truncations=np.array([False] * 12 + [True]),
        episode_ids=np.repeat([0, 1], lengths))
    gamma = 0.9
    g = ds.returns_to_go(gamma)
    d = rng.uniform(0.1, 5.0, size=n).astype(np.float32)  # each row's error, all distinct
    ds.observations[:, 0], ds.observations[:, 1] = g, d

    class Agent:  # no normalizer: the critics read the states as they are
        @staticmethod
        def critic(obs, act):
            return torch.stack([obs[:, 0], obs[:, 0] + 2 * obs[:, 1]])  # [2, R]

    report = critic_ranking(Agent(), ds, gamma, num_rows=100, min_steps_left=3, quantile=0.5, seed=0,
                            device=torch.device("cpu"))
    kept = np.r_[0:5, 5:11]  # all of A; B's rows with 8, 7, ..., 3 steps left
    assert report["rows"] == len(kept)
    assert report["return_mean"] == pytest.approx(float(g[kept].mean()), rel=1e-5)
    assert report["q_minus_return"] == pytest.approx(float(d[kept].mean()), rel=1e-5)
    assert report["u_mean"] == pytest.approx(math.sqrt(2) * float(d[kept].mean()), rel=1e-5)
    assert report["spearman"] == pytest.approx(1.0) and report["auroc"] == pytest.approx(1.0)
    assert critic_ranking(Agent(), ds, gamma, 4, 3, 0.5, 0, torch.device("cpu"))["rows"] == 4  # a subsample
    with pytest.raises(DatasetError, match="critic_min_steps_left"):
        ds.terminations[:] = False
        critic_ranking(Agent(), ds, gamma, 100, 9, 0.5, 0, torch.device("cpu"))


def test_action_support_figures_on_a_hand_case():
    """The exploitation tool's action-support table: u, Q and the edge share at the logged and the policy's
    actions, and the outward component of dQ/da, on a critic and an estimator whose values are known."""
    from agents.tools.exploitation import action_support_figures

    obs = torch.zeros(2, 3)
    logged = torch.tensor([[0.0, 0.5], [0.2, -0.1]])
    pi = torch.tensor([[0.99, -0.5], [-1.0, 0.0]])  # 2 of 4 components within 5% of the box's edge
    w = torch.tensor([2.0, -1.0])
    critic = lambda o, a: torch.stack([(a * w).sum(-1) + 1.0, (a * w).sum(-1)])  # noqa: E731  min = a . w; dQ/da = w
    estimator = lambda o, a: a.abs().sum(-1)  # noqa: E731
    low, high = -torch.ones(2), torch.ones(2)
    out = action_support_figures(lambda o: pi, critic, estimator, obs, logged, low, high)
    u_logged, u_pi = out["u (the run's penalty estimator)"]
    assert u_logged == pytest.approx((0.5 + 0.3) / 2) and u_pi == pytest.approx((1.49 + 1.0) / 2)
    assert out["share of action components at the edge"] == (0.0, 0.5)
    q_logged, q_pi = out["Q(s, .) (critic, min)"]
    assert q_logged == pytest.approx((-0.5 + 0.5) / 2) and q_pi == pytest.approx((2.48 - 2.0) / 2)
    # sign(pi) = [[+, -], [-, 0]]: w * sign = [[2, 1], [-2, 0]], mean 0.25
    assert out["outward dQ/da at pi(s)"][1] == pytest.approx(0.25)
    # an off-centre box: the edge and the outward sign are measured from its centre, not from 0
    shifted = action_support_figures(lambda o: pi + 1.0, critic, estimator, obs, logged + 1.0, low + 1.0, high + 1.0)
    assert shifted["share of action components at the edge"] == (0.0, 0.5)
    assert shifted["outward dQ/da at pi(s)"][1] == pytest.approx(0.25)
    assert "Q(s, .) (critic, min)" not in action_support_figures(lambda o: pi, None, estimator, obs, logged, low, high)
