"""Hostile Minari datasets: each gets one DatasetError that names the dataset, the field and the fix, and
the agents' CLI turns it into one line on stderr and exit status 2 (no traceback).

The datasets are written with Minari's own API (the package's writer refuses them) into the per-session
store that conftest.py sets up, from real HalfCheetah steps with one thing broken in each.
"""

from __future__ import annotations

import dataclasses
import re
import warnings

import gymnasium as gym
import minari
import numpy as np
import pytest
from conftest import Pending, agent_cmd
from minari.data_collector import EpisodeBuffer

from worldmodels.data.minari_load import DatasetError, load_offline_dataset
from worldmodels.data.minari_write import write_minari_dataset
from worldmodels.data.validate import validate

ENV_ID = "HalfCheetah-v5"
STEPS = 8  # per episode; two episodes per dataset


def _episodes(seed: int = 0) -> list[dict]:
    """Two short random-action HalfCheetah episodes (Minari layout), each cut by the end of the data."""
    env = gym.make(ENV_ID)
    rng = np.random.default_rng(seed)
    episodes = []
    for k in range(2):
        obs, _ = env.reset(seed=seed + k)
        observations, actions, rewards = [obs], [], []
        for _ in range(STEPS):
            act = rng.uniform(env.action_space.low, env.action_space.high).astype(np.float32)
            obs, rew, *_ = env.step(act)
            observations.append(obs)
            actions.append(act)
            rewards.append(rew)
        episodes.append({"observations": np.array(observations, np.float32), "actions": np.array(actions),
                         "rewards": np.array(rewards), "terminations": np.zeros(STEPS, bool),
                         "truncations": np.eye(STEPS, dtype=bool)[-1]})
    env.close()
    return episodes


def _break(episodes: list[dict], case: str) -> list[dict]:
    eps = [dict(e) for e in episodes]
    if case == "flag-2":  # a flag stored as 2.0: astype(bool) would read it as True
        eps[1]["terminations"] = np.where(np.arange(STEPS) == 3, 2.0, 0.0)
    elif case == "trunc-nan":
        eps[0]["truncations"] = np.where(np.arange(STEPS) == 5, np.nan, eps[0]["truncations"].astype(float))
    elif case == "int-actions":  # in bounds, so only the dtype gives it away
        eps[0]["actions"] = np.zeros((STEPS, 6), np.int64)
    elif case == "term-mid":  # terminates at step 2, then 5 more steps in the same episode
        eps[1]["terminations"] = np.arange(STEPS) == 2
    elif case == "obs-dim":  # episode 1 recorded with one observation dim missing
        eps[1]["observations"] = eps[1]["observations"][:, :16]
    else:
        raise KeyError(case)
    return eps


CASES = {  # case -> (field, what the message must say)
    "flag-2": ("terminations", r"episode 1 holds 1 values that are not boolean \(0/1\), first at step 3 \(value 2"),
    "trunc-nan": ("truncations", r"episode 0 holds 1 values that are not boolean.*step 5 \(value nan"),
    "int-actions": ("actions", r"episode 0 holds integer actions \(dtype int64\) for the continuous action space"),
    "term-mid": ("terminations", r"episode 1 terminates at step 2 but goes on for 5 more steps.*Split episode 1"),
    "obs-dim": ("observations", r"episode 1 has observations of shape \(16,\) per step.*\(17,\).*Drop episode 1"),
}


def dataset_id(case: str) -> str:
    return f"o2o/tests/hostile-{case}-v0"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, str]:
    """case -> dataset id, written once into the session's Minari store; the CLI runs start right away."""
    good = _episodes()
    ids = {}
    for case in CASES:
        buffers = [EpisodeBuffer(**ep) for ep in _break(good, case)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Minari's notes on author and code links
            minari.create_dataset_from_buffers(dataset_id(case), buffers, env=ENV_ID, eval_env=ENV_ID,
                                               algorithm_name="hostile", description=case, data_format="hdf5")
        ids[case] = dataset_id(case)
    return ids


@pytest.fixture(scope="module")
def cli_runs(hostile, tmp_path_factory) -> dict[str, Pending]:
    """`python -m agents.td3bc` on two of them, started together so they overlap with the in-process tests."""
    root = tmp_path_factory.mktemp("hostile-cli")
    return {case: Pending(agent_cmd("td3bc", root / case, hostile[case]), root / case).start()
            for case in ("obs-dim", "flag-2")}


def test_start_cli_runs(cli_runs):
    """Starts the background CLI runs first; their checks are the last tests of this file."""
    assert all(p.proc is not None for p in cli_runs.values())


@pytest.mark.parametrize("case", CASES)
def test_loader_names_the_field_and_the_fix(hostile, case):
    field, says = CASES[case]
    with pytest.raises(DatasetError, match=f"field '{field}'") as info:
        load_offline_dataset(hostile[case], download=False)
    msg = str(info.value)
    assert msg.startswith(f"dataset '{hostile[case]}', field '{field}': ") and "\n" not in msg
    assert re.search(says, msg), msg


@pytest.mark.parametrize("case", ["flag-2", "int-actions", "term-mid"])  # it refused a wrong shape already
def test_writer_refuses_what_the_loader_refuses(tmp_path, monkeypatch, case):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    field, _ = CASES[case]
    with pytest.raises(DatasetError, match=f"field '{field}'"):
        write_minari_dataset("o2o/t/refused-v0", ENV_ID, _break(_episodes(), case), None, None)
    assert not (tmp_path / "o2o" / "t" / "refused-v0").exists()


def test_validate_catches_flat_integer_actions_and_steps_after_a_terminal(tmp_path, monkeypatch):
    """The same two problems in flat transitions (an OfflineDataset built in memory, not read from a file)."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    ds = load_offline_dataset(write_minari_dataset("o2o/t/good-v0", ENV_ID, _episodes(), None, None), download=False)
    env = gym.make(ENV_ID)
    spaces = (env.observation_space, env.action_space)
    env.close()
    validate(ds, *spaces)
    with pytest.raises(DatasetError, match="field 'actions': integer actions"):
        validate(dataclasses.replace(ds, actions=np.zeros(ds.actions.shape, np.int64)), *spaces)
    term = ds.terminations.copy()
    term[2] = True  # row 2 of episode 0, which goes on to row 7
    with pytest.raises(DatasetError, match=r"field 'terminations'.*first at index 2 \(episode 0\)"):
        validate(dataclasses.replace(ds, terminations=term), *spaces)
    term[2], term[STEPS - 1] = False, True  # a terminal on an episode's last step is fine
    validate(dataclasses.replace(ds, terminations=term), *spaces)


@pytest.mark.parametrize("case", ["obs-dim", "flag-2"])
def test_cli_prints_one_line_and_exits_2(cli_runs, case):
    result = cli_runs[case].result()
    field, _ = CASES[case]
    assert result.returncode == 2, result.describe()
    assert "Traceback" not in result.stderr, result.describe()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.describe()
    assert lines[0].startswith(f"error: dataset '{dataset_id(case)}', field '{field}'"), result.describe()
