"""Minari writing: episodes (Minari layout) into the local store, and the IDs of recipe datasets.

An episode is checked with the loader's own ``check_episode`` before any cast, so the writer
never stores what the loader would refuse (a flag of 2.0, integer actions, a step after a
termination, one episode of another environment).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import warnings

import numpy as np

from worldmodels.data.errors import DatasetError, message
from worldmodels.data.minari_load import DATASET_ID_PATTERN, check_id, dataset_dir
from worldmodels.data.validate import EPISODE_FIELDS, box_shape, check_episode

__all__ = ["write_minari_dataset", "recipe_dataset_id"]

#: how a bad episode handed to the writer is repaired
FIX_EPISODE = "Fix the episode arrays (Minari layout) before writing."


def _sanitize_part(text: str, what: str) -> str:
    """Make ``text`` usable inside a Minari ID; keep it injective by appending a hash if changed."""
    clean = re.sub(r"[^-\w/]", "_", text.strip("/"))
    clean = re.sub(r"/+", "/", clean)
    if clean != text or not clean:
        digest = hashlib.sha1(text.encode()).hexdigest()[:6]
        clean = f"{clean or what}_{digest}"
    return clean


RECIPE_VERSION = 1  # the recipe's version is the Minari id's: a changed recipe never reuses cached data


def recipe_dataset_id(env_id: str, quality: str, size: int, train_steps: int, seed: int) -> str:
    """Minari ID for a D4RL-style recipe dataset, e.g.
    ``o2o/HalfCheetah-v5/medium-replay-s20000-t30000-seed0-v1``.

    The env id becomes a namespace part; characters Minari does not accept are replaced by
    ``_`` and a short hash of the original string is appended to keep IDs unique.
    """
    for name, v in (("size", size), ("train_steps", train_steps), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"recipe_dataset_id: {name} must be a non-negative int, got {v!r}")
    env_part = _sanitize_part(str(env_id), "env")
    q_part = _sanitize_part(str(quality), "quality").replace("/", "_")
    # v1 (2026-12-04): the expert is the best trained snapshot and the medium one is never taken in the
    # warm-up; v0 took the final snapshot as expert and could cut medium-replay inside the random warm-up
    dataset_id = f"o2o/{env_part}/{q_part}-s{int(size)}-t{int(train_steps)}-seed{int(seed)}-v{RECIPE_VERSION}"
    assert DATASET_ID_PATTERN.fullmatch(dataset_id), dataset_id
    return dataset_id


def _episode_buffers(dataset_id: str, episodes: list[dict], obs_space, act_space) -> list:
    from minari.data_collector import EpisodeBuffer

    act_shape = tuple(act_space.shape)
    buffers = []
    for k, ep in enumerate(episodes):
        for key in EPISODE_FIELDS:
            if key not in ep or ep[key] is None:
                raise DatasetError(
                    message(dataset_id, key, f"episode {k} has no '{key}'", "Provide all five arrays per episode.")
                )
        t_len = int(np.asarray(ep["rewards"]).size)
        if t_len == 0:
            raise DatasetError(
                message(dataset_id, "rewards", f"episode {k} has 0 steps", "Drop empty episodes before writing.")
            )
        check_episode(dataset_id, k, ep, obs_space, act_space, FIX_EPISODE)  # as given, before the casts below
        buffers.append(
            EpisodeBuffer(
                observations=np.asarray(ep["observations"], dtype=obs_space.dtype),
                actions=np.asarray(ep["actions"], dtype=act_space.dtype).reshape(t_len, *act_shape),
                rewards=np.asarray(ep["rewards"], dtype=np.float64).reshape(-1),
                terminations=np.asarray(ep["terminations"]).astype(bool).reshape(-1),
                truncations=np.asarray(ep["truncations"]).astype(bool).reshape(-1),
            )
        )
    return buffers


def write_minari_dataset(
    dataset_id: str,
    env_id: str,
    episodes: list[dict],
    ref_min_score: float | None,
    ref_max_score: float | None,
    description: str = "",
    algorithm_name: str = "",
    overwrite: bool = False,
) -> str:
    """Write episodes as a Minari dataset into the local store and return its ID.

    Each episode is a dict of numpy arrays: ``observations [T+1, obs_dim]``,
    ``actions [T, act_dim]``, ``rewards [T]``, ``terminations [T]``, ``truncations [T]``.
    Reference scores are stored as given; no policy is ever rolled out to compute them.
    """
    import gymnasium as gym
    import minari

    check_id(dataset_id)
    if not episodes:
        raise DatasetError(
            message(dataset_id, "episodes", "no episodes to write", "Collect at least one episode first.")
        )
    path = dataset_dir(dataset_id)
    if path.exists():
        if not overwrite:
            raise DatasetError(
                message(
                    dataset_id,
                    None,
                    f"already exists at {path}",
                    "Pass overwrite=True to replace it, or use another ID / version suffix.",
                )
            )
        if (path / "data").exists():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                minari.delete_dataset(dataset_id)
        else:
            shutil.rmtree(path)

    env = gym.make(env_id)
    try:
        obs_space, act_space = env.observation_space, env.action_space
    finally:
        env.close()
    box_shape(obs_space, dataset_id, "observations")
    box_shape(act_space, dataset_id, "actions")
    buffers = _episode_buffers(dataset_id, episodes, obs_space, act_space)

    # Minari only stores ref scores when ref_max_score is given, and if ref_min_score is then
    # missing it rolls out a random policy for 100 episodes. Pass both only when both exist and
    # write a lone score into the metadata ourselves.
    both = ref_min_score is not None and ref_max_score is not None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mds = minari.create_dataset_from_buffers(
                dataset_id=dataset_id,
                buffer=buffers,
                env=env_id,
                eval_env=env_id,
                algorithm_name=algorithm_name,
                description=description,
                ref_min_score=float(ref_min_score) if both else None,
                ref_max_score=float(ref_max_score) if both else None,
                expert_policy=None,
                data_format="hdf5",
            )
            extra = {}
            if not both:
                if ref_min_score is not None:
                    extra["ref_min_score"] = float(ref_min_score)
                if ref_max_score is not None:
                    extra["ref_max_score"] = float(ref_max_score)
            if extra:
                mds.storage.update_metadata(extra)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)  # never leave a half-written dataset behind
        raise
    return dataset_id
