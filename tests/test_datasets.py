"""Tests for worldmodels.data.minari_load / validate / minari_write: write -> load round trip through a real
Minari store.

Every test runs against a temporary MINARI_DATASETS_PATH; the user's ~/.minari is never touched.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from pathlib import Path

import gymnasium as gym
import minari
import numpy as np
import pytest
import torch

from worldmodels.data import minari_load
from worldmodels.data.minari_load import DatasetError, OfflineDataset, dataset_exists, load_offline_dataset
from worldmodels.data.minari_write import recipe_dataset_id, write_minari_dataset
from worldmodels.data.validate import validate

REF_MIN, REF_MAX = -280.0, 12135.0
CHEETAH_ID = recipe_dataset_id("HalfCheetah-v5", "random", 15, 0, 0)
HOPPER_ID = "o2o/test/hopper-random-v0"


def _rollout(env: gym.Env, rng: np.random.Generator, seed: int, max_steps: int) -> dict:
    """Random-action episode in the real env; stops at termination, truncation or max_steps."""
    obs, _ = env.reset(seed=seed)
    observations, actions, rewards, terms, truncs = [obs], [], [], [], []
    for _ in range(max_steps):
        act = rng.uniform(env.action_space.low, env.action_space.high).astype(np.float32)
        obs, rew, term, trunc, _ = env.step(act)
        observations.append(obs)
        actions.append(act)
        rewards.append(rew)
        terms.append(term)
        truncs.append(trunc)
        if term or trunc:
            break
    return {
        "observations": np.array(observations),
        "actions": np.array(actions),
        "rewards": np.array(rewards),
        "terminations": np.array(terms),
        "truncations": np.array(truncs),
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A temp Minari store holding a HalfCheetah dataset (3 episodes) and a Hopper dataset."""
    root = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        rng = np.random.default_rng(0)
        # HalfCheetah never terminates: a 6-step time limit truncates episode 0, episode 1 is
        # cut by the end of the logged data (no flag), episode 2 is another time-limit cut.
        env = gym.make("HalfCheetah-v5", max_episode_steps=6)
        cheetah = [
            _rollout(env, rng, seed=1, max_steps=100),
            _rollout(env, rng, seed=2, max_steps=4),
            _rollout(env, rng, seed=3, max_steps=100),
        ]
        env.close()
        assert cheetah[0]["truncations"][-1] and len(cheetah[0]["rewards"]) == 6
        assert not cheetah[1]["truncations"].any() and len(cheetah[1]["rewards"]) == 4
        write_minari_dataset(CHEETAH_ID, "HalfCheetah-v5", cheetah, REF_MIN, REF_MAX, description="test")
        # Hopper falls over under random actions: a real termination.
        env = gym.make("Hopper-v5")
        hopper = [_rollout(env, rng, seed=4, max_steps=300), _rollout(env, rng, seed=5, max_steps=3)]
        env.close()
        assert hopper[0]["terminations"][-1], "random Hopper episode should terminate"
        write_minari_dataset(HOPPER_ID, "Hopper-v5", hopper, None, None)
        yield {"root": root, "cheetah": cheetah, "hopper": hopper}


@pytest.fixture()
def cheetah(store, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store["root"]))
    return load_offline_dataset(CHEETAH_ID, download=False)


@pytest.fixture()
def spaces():
    env = gym.make("HalfCheetah-v5")
    yield env.observation_space, env.action_space
    env.close()


# ------------------------------------------------------------------------------ round trip


def test_round_trip_matches_env_transitions(store, cheetah):
    eps = store["cheetah"]
    assert cheetah.env_id == "HalfCheetah-v5"
    assert cheetah.dataset_id == CHEETAH_ID
    assert cheetah.num_transitions == 6 + 4 + 6
    assert cheetah.num_episodes == 3
    assert (cheetah.obs_dim, cheetah.act_dim) == (17, 6)
    assert cheetah.observations.dtype == np.float32 and cheetah.rewards.dtype == np.float32
    assert cheetah.terminations.dtype == bool and cheetah.truncations.dtype == bool

    expected_next = np.concatenate([e["observations"][1:] for e in eps]).astype(np.float32)
    expected_obs = np.concatenate([e["observations"][:-1] for e in eps]).astype(np.float32)
    np.testing.assert_array_equal(cheetah.next_observations, expected_next)
    np.testing.assert_array_equal(cheetah.observations, expected_obs)
    np.testing.assert_array_equal(cheetah.actions, np.concatenate([e["actions"] for e in eps]))
    np.testing.assert_allclose(cheetah.rewards, np.concatenate([e["rewards"] for e in eps]), rtol=1e-6)
    np.testing.assert_array_equal(cheetah.episode_ids, np.repeat([0, 1, 2], [6, 4, 6]))


def test_next_obs_never_crosses_episodes(store, cheetah):
    same = cheetah.episode_ids[1:] == cheetah.episode_ids[:-1]
    # inside an episode next_obs[t] is obs[t+1] ...
    np.testing.assert_array_equal(cheetah.next_observations[:-1][same], cheetah.observations[1:][same])
    # ... at a boundary it is the episode's own final observation, not the next reset state
    ends = np.flatnonzero(~same)
    assert len(ends) == 2
    for k, t in enumerate(ends):
        final = store["cheetah"][k]["observations"][-1].astype(np.float32)
        np.testing.assert_array_equal(cheetah.next_observations[t], final)
        assert not np.array_equal(cheetah.next_observations[t], cheetah.observations[t + 1])


def test_terminations_and_truncations_preserved(store, cheetah, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store["root"]))
    assert not cheetah.terminations.any()
    # time-limit cuts at the end of episodes 0 and 2, plus the end-of-data cut of episode 1
    np.testing.assert_array_equal(np.flatnonzero(cheetah.truncations), [5, 9, 15])
    # Minari itself stores episode 1 without any flag; the loader marks it as truncated
    raw = list(minari.load_dataset(CHEETAH_ID).iterate_episodes())
    assert not raw[1].truncations.any() and not raw[1].terminations.any()
    assert raw[0].truncations[-1] and raw[2].truncations[-1]

    hop = load_offline_dataset(HOPPER_ID, download=False)
    t0 = len(store["hopper"][0]["rewards"])
    assert hop.terminations[t0 - 1] and not hop.truncations[t0 - 1]
    assert hop.terminations.sum() == 1
    assert hop.truncations[-1] and not hop.terminations[-1]  # episode 2: end of logged data
    assert hop.env_id == "Hopper-v5"


def test_ref_scores_and_normalized_score(store, cheetah, monkeypatch):
    assert cheetah.ref_min_score == REF_MIN and cheetah.ref_max_score == REF_MAX
    assert cheetah.normalized_score(REF_MIN) == pytest.approx(0.0)
    assert cheetah.normalized_score(REF_MAX) == pytest.approx(100.0)
    mid = 0.5 * (REF_MIN + REF_MAX)
    assert isinstance(cheetah.normalized_score(mid), float)
    np.testing.assert_allclose(
        cheetah.normalized_score(np.array([REF_MIN, mid, 2 * REF_MAX - REF_MIN])), [0.0, 50.0, 200.0]
    )
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store["root"]))
    hop = load_offline_dataset(HOPPER_ID, download=False)
    assert hop.ref_min_score is None and hop.ref_max_score is None
    assert hop.normalized_score(100.0) is None


def test_episode_returns_and_full_returns_to_go(store, cheetah):
    rets = cheetah.episode_returns()
    np.testing.assert_allclose(rets, [e["rewards"].sum() for e in store["cheetah"]], rtol=1e-5)
    rtg = cheetah.returns_to_go(1.0)
    np.testing.assert_allclose(rtg[cheetah.episode_starts], rets, rtol=1e-5)


def test_returns_to_go_hand_checked():
    # episodes: [0,0,0] ends in a terminal, [1,1] ends without a flag, [2,2] ends in a truncation
    rewards = np.array([1.0, 2.0, 4.0, 10.0, 10.0, 1.0, 1.0], dtype=np.float32)
    terms = np.array([0, 0, 1, 0, 0, 0, 0], dtype=bool)
    truncs = np.array([0, 0, 0, 0, 0, 0, 1], dtype=bool)
    ids = np.array([0, 0, 0, 1, 1, 2, 2])
    n = len(rewards)
    ds = OfflineDataset(
        dataset_id="hand",
        env_id="none",
        observations=np.zeros((n, 2), np.float32),
        actions=np.zeros((n, 1), np.float32),
        rewards=rewards,
        next_observations=np.zeros((n, 2), np.float32),
        terminations=terms,
        truncations=truncs,
        episode_ids=ids,
        ref_min_score=None,
        ref_max_score=None,
    )
    # gamma = 0.5: ep0 G2=4, G1=2+2=4, G0=1+2=3 ; ep1 G=10, 10+5=15 ; ep2 G=1, 1+0.5=1.5
    np.testing.assert_allclose(ds.returns_to_go(0.5), [3.0, 4.0, 4.0, 15.0, 10.0, 1.5, 1.0])
    np.testing.assert_allclose(ds.episode_returns(), [7.0, 20.0, 2.0])
    assert ds.num_episodes == 3
    # a terminal flag inside an episode also stops the recursion (zero value after a terminal)
    ds2 = dataclasses.replace(ds, terminations=np.array([1, 0, 0, 0, 0, 0, 0], dtype=bool))
    np.testing.assert_allclose(ds2.returns_to_go(0.5)[:3], [1.0, 4.0, 4.0])


def test_fingerprint_names_the_data_not_the_object(cheetah):
    # equal data in fresh arrays -> the same fingerprint; one reward or one reference score changed -> another
    copy = dataclasses.replace(cheetah, **{f: np.array(getattr(cheetah, f), copy=True) for f in
                                          ("observations", "actions", "rewards", "next_observations")})
    assert copy.fingerprint() == cheetah.fingerprint()
    assert len(cheetah.fingerprint()) == 16
    rewards = np.array(cheetah.rewards, copy=True)
    rewards[len(rewards) // 2] += 1e-3
    assert dataclasses.replace(cheetah, rewards=rewards).fingerprint() != cheetah.fingerprint()
    assert dataclasses.replace(cheetah, ref_max_score=1.0 + (cheetah.ref_max_score or 0.0)).fingerprint() \
        != cheetah.fingerprint()


# ------------------------------------------------------------------------------ writing and IDs


def test_overwrite_and_exists(store, tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    ep = store["cheetah"][1]
    assert not dataset_exists("o2o/t/x-v0")
    assert write_minari_dataset("o2o/t/x-v0", "HalfCheetah-v5", [ep], 0.0, 1.0) == "o2o/t/x-v0"
    assert dataset_exists("o2o/t/x-v0")
    with pytest.raises(DatasetError, match="already exists"):
        write_minari_dataset("o2o/t/x-v0", "HalfCheetah-v5", [ep], 0.0, 1.0)
    write_minari_dataset("o2o/t/x-v0", "HalfCheetah-v5", [ep, ep], 0.0, 2.0, overwrite=True)
    ds = load_offline_dataset("o2o/t/x-v0", download=False)
    assert ds.num_episodes == 2 and ds.ref_max_score == 2.0
    # a lone reference score is stored as given (Minari alone would drop it or roll out a policy)
    write_minari_dataset("o2o/t/y-v0", "HalfCheetah-v5", [ep], -5.0, None)
    ds = load_offline_dataset("o2o/t/y-v0", download=False)
    assert ds.ref_min_score == -5.0 and ds.ref_max_score is None
    assert sorted(minari.list_local_datasets()) == ["o2o/t/x-v0", "o2o/t/y-v0"]


def test_write_rejects_bad_episode(store, tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    ep = dict(store["cheetah"][1])
    ep["observations"] = ep["observations"][:-1]  # T instead of T+1 observations
    with pytest.raises(DatasetError, match="'observations'.*T\\+1"):
        write_minari_dataset("o2o/t/bad-v0", "HalfCheetah-v5", [ep], None, None)
    assert not dataset_exists("o2o/t/bad-v0")


def test_recipe_dataset_id_is_valid_and_unique():
    from minari.dataset.minari_dataset import parse_dataset_id

    ds_id = recipe_dataset_id("HalfCheetah-v5", "medium-replay", 20000, 30000, 0)
    assert ds_id == "o2o/HalfCheetah-v5/medium-replay-s20000-t30000-seed0-v1"
    assert parse_dataset_id(ds_id) == ("o2o/HalfCheetah-v5", "medium-replay-s20000-t30000-seed0", 1)
    ids = {
        recipe_dataset_id(e, q, s, t, seed)
        for e in ("HalfCheetah-v5", "Hopper-v5", "dm.cheetah:run-v0", "dm_cheetah_run-v0")
        for q in ("medium", "medium-replay")
        for s in (1000, 20000)
        for t in (0, 30000)
        for seed in (0, 1)
    }
    assert len(ids) == 4 * 2 * 2 * 2 * 2
    for ds_id in ids:
        parse_dataset_id(ds_id)
        assert minari_load.DATASET_ID_PATTERN.fullmatch(ds_id)
    with pytest.raises(ValueError):
        recipe_dataset_id("Hopper-v5", "medium", 1.5, 0, 0)


# ------------------------------------------------------------------------------ load errors


def test_unknown_id_fails_fast_without_download(store, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store["root"]))
    t0 = time.perf_counter()
    with pytest.raises(DatasetError) as info:
        load_offline_dataset("o2o/nope/missing-v0", download=False)
    msg = str(info.value)
    assert "o2o/nope/missing-v0" in msg and "not in the local Minari store" in msg
    assert CHEETAH_ID in msg and HOPPER_ID in msg  # local IDs are listed
    assert "python -m agents.tools.make_dataset" in msg
    assert time.perf_counter() - t0 < 5


def test_unknown_id_with_real_download_attempt_fails_fast(tmp_path, monkeypatch):
    # no network (or no huggingface_hub) here: the attempt must fail quickly and cleanly
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    monkeypatch.setenv(minari_load.DOWNLOAD_TIMEOUT_ENV, "15")
    t0 = time.perf_counter()
    with pytest.raises(DatasetError, match="not downloadable"):
        load_offline_dataset("mujoco/halfcheetah/nonexistent-v0", download=True)
    assert time.perf_counter() - t0 < 20
    assert not (tmp_path / "mujoco" / "halfcheetah" / "nonexistent-v0").exists()


def test_hanging_download_is_guarded(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    monkeypatch.setenv(minari_load.DOWNLOAD_TIMEOUT_ENV, "0.3")
    release = threading.Event()
    monkeypatch.setattr(minari, "download_dataset", lambda *a, **k: release.wait(10))
    t0 = time.perf_counter()
    try:
        with pytest.raises(DatasetError, match="did not finish within 0.3 s"):
            load_offline_dataset("o2o/slow/hang-v0", download=True)
    finally:
        release.set()
    assert time.perf_counter() - t0 < 3


def test_malformed_id(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    with pytest.raises(DatasetError, match="malformed dataset ID"):
        load_offline_dataset("o2o/bad id.v0", download=False)


def test_corrupt_file(store, tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    write_minari_dataset("o2o/t/corrupt-v0", "HalfCheetah-v5", [store["cheetah"][1]], None, None)
    h5 = Path(tmp_path, "o2o/t/corrupt-v0/data/main_data.hdf5")
    h5.write_bytes(h5.read_bytes()[:300])
    with pytest.raises(DatasetError) as info:
        load_offline_dataset("o2o/t/corrupt-v0", download=False)
    msg = str(info.value)
    assert str(h5.parent) in msg and "delete" in msg and "rebuild" in msg


def test_dict_observation_space_rejected(tmp_path, monkeypatch):
    from minari.data_collector import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    obs_space = gym.spaces.Dict({"pos": gym.spaces.Box(-1, 1, (2,)), "vel": gym.spaces.Box(-1, 1, (1,))})
    act_space = gym.spaces.Box(-1, 1, (1,))
    buf = EpisodeBuffer(
        observations={"pos": np.zeros((3, 2), np.float32), "vel": np.zeros((3, 1), np.float32)},
        actions=np.zeros((2, 1), np.float32),
        rewards=np.zeros(2),
        terminations=np.zeros(2, bool),
        truncations=np.array([False, True]),
    )
    with pytest.warns(UserWarning):
        minari.create_dataset_from_buffers(
            "o2o/t/dict-v0", [buf], observation_space=obs_space, action_space=act_space
        )
    with pytest.raises(DatasetError, match="'observations'.*Dict"):
        load_offline_dataset("o2o/t/dict-v0", download=False)


# ------------------------------------------------------------------------------ validation


def test_validate_accepts_good_data(cheetah, spaces):
    validate(cheetah, *spaces)
    # both flags on one step is allowed (termination wins)
    both = dataclasses.replace(cheetah, terminations=cheetah.truncations.copy())
    validate(both, *spaces)
    # 0/1 integer flags are boolean-able
    validate(dataclasses.replace(cheetah, truncations=cheetah.truncations.astype(np.int64)), *spaces)


def _broken(ds: OfflineDataset, case: str) -> OfflineDataset:
    r = dataclasses.replace
    if case == "empty":
        return r(
            ds,
            **{
                k: getattr(ds, k)[:0]
                for k in ("observations", "actions", "rewards", "next_observations")
                + ("terminations", "truncations", "episode_ids")
            },
        )
    if case == "missing":
        return r(ds, next_observations=None)
    if case == "obs_shape":
        return r(ds, observations=ds.observations[:, :11])
    if case == "act_shape":
        return r(ds, actions=ds.actions[:, :3])
    if case == "nan_reward":
        rew = ds.rewards.copy()
        rew[[4, 7]] = np.nan
        return r(ds, rewards=rew)
    if case == "inf_obs":
        obs = ds.observations.copy()
        obs[3, 2] = np.inf
        return r(ds, observations=obs)
    if case == "action_oob":
        act = ds.actions.copy()
        act[2, 1] = 1.5
        act[8, 0] = -1.00005  # within the 1e-4 tolerance
        return r(ds, actions=act)
    if case == "length":
        return r(ds, rewards=ds.rewards[:-1])
    if case == "flags":
        trunc = ds.truncations.astype(np.float32)
        trunc[3] = 0.5
        return r(ds, truncations=trunc)
    raise KeyError(case)


@pytest.mark.parametrize(
    "case, field, extra",
    [
        ("empty", "rewards", "no transitions"),
        ("missing", "next_observations", "missing"),
        ("obs_shape", "observations", r"\(11,\).*\(17,\)"),
        ("act_shape", "actions", r"\(3,\).*\(6,\)"),
        ("nan_reward", "rewards", "2 non-finite values.*first at index 4"),
        ("inf_obs", "observations", "1 non-finite.*first at index 3"),
        (
            "action_oob",
            "actions",
            "1 values in 1 transitions.*worst 1.5 at index 2, dim 1.*upper bound 1.*Clip",
        ),
        ("length", "rewards", "length"),
        ("flags", "truncations", "not boolean.*index 3"),
    ],
)
def test_validate_errors_name_the_field(cheetah, spaces, case, field, extra):
    with pytest.raises(DatasetError, match=f"field '{field}'") as info:
        validate(_broken(cheetah, case), *spaces)
    msg = str(info.value)
    assert CHEETAH_ID in msg
    assert re.search(extra, msg), msg


def test_validate_wrong_environment(cheetah):
    env = gym.make("Hopper-v5")
    with pytest.raises(DatasetError, match="field 'observations'.*same environment"):
        validate(cheetah, env.observation_space, env.action_space)
    env.close()


def test_recipe_refuses_a_behaviour_run_that_stopped_short(tmp_path, monkeypatch):
    from worldmodels.data.recipes import BehaviourRun, Recipe, build

    class StoppedShort:  # a learner whose run ends before its last step, without saying so
        name = "stub"

        def train(self, env_id, steps, seed, run_dir, device, progress):
            return BehaviourRun([{"env_steps": steps // 2, "return": 1.0}], {})

    monkeypatch.setenv("O2O_CACHE", str(tmp_path))
    recipe = Recipe("HalfCheetah-v5", "medium-replay", size=100, train_steps=1000, seed=11)
    with pytest.raises(RuntimeError, match="ends at env step 500, not 1000"):
        build(recipe, StoppedShort())
    assert not dataset_exists(recipe.dataset_id)


def test_recipe_picks_expert_and_medium_among_trained_snapshots(tmp_path):
    """The 30k-step Hopper run of 2026-12-04: its final policy (352) is far below its best (712), and the
    snapshot closest to a third of the way to the final one was the untrained one at the end of the 3000-step
    warm-up, which cut medium-replay inside the random actions."""
    import json

    from worldmodels.data.recipes import BehaviourRun, Recipe, train_behaviour

    returns = {3000: 55.0, 6000: 238.0, 9000: 322.0, 12000: 712.0, 21000: 712.0, 30000: 352.0}
    snapshots = [{"env_steps": e, "return": r} for e, r in returns.items()]

    class Finished:
        name = "stub"

        def train(self, env_id, steps, seed, run_dir, device, progress):
            return BehaviourRun(snapshots, {}, warmup_steps=3000)

    # reference returns measured before for that expert: no episodes are run here
    (tmp_path / "reference_scores.json").write_text(json.dumps({"random": 18.0, "expert": 700.0,
                                                                "expert_env_steps": 21000}))
    b = train_behaviour(Recipe("Hopper-v5", train_steps=30000), Finished(), tmp_path, torch.device("cpu"), False)
    assert b.expert["env_steps"] == 21000  # the best; the later of two equal returns
    assert b.medium["env_steps"] == 6000  # target 18 + 682 / 3 = 245.3: 238 at 6000, not 55 at 3000 (untrained)
    assert (b.random_return, b.expert_return) == (18.0, 700.0)
