"""Minari loading: a Minari dataset as flat transitions (``OfflineDataset``), checked as it is read.

Conventions (see DESIGN.md, "terminal and truncated are different everywhere"):

* ``terminations[t]`` -- the environment reached a true terminal state at step t; the
  bootstrap after t must be zeroed.  If both flags are set on one step, termination wins.
  A termination ends its episode: a stored episode that goes on after one is refused.
* ``truncations[t]`` -- the episode was cut after step t without a true termination, either
  by a time limit or because the logged data simply ends there.  The bootstrap is kept.
  When loading, the last step of every episode that carries neither flag is marked as a
  truncation, so ``terminations | truncations`` always marks every episode end.
* ``next_observations[t]`` is always the observation that followed step t in the *same*
  episode (Minari stores T+1 observations per episode); it never crosses an episode.

Every episode is checked as stored, before any cast (``validate.check_episode``), and the flat
result against the dataset's own spaces (``validate.validate``).

Minari dataset IDs (checked against ``minari.dataset.minari_dataset.DATASET_ID_RE`` in
Minari 0.5.4) have the form ``namespace/.../name-vN``: the namespace may hold several
``/``-separated parts made of ``[A-Za-z0-9_-]``, the name is ``[A-Za-z0-9_-]+`` (no dots,
no spaces) and the ``-vN`` suffix is required in practice (``parse_dataset_id`` calls
``int(version)``).  ``minari_write.recipe_dataset_id`` builds IDs of that form.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worldmodels.data.errors import DatasetError, message
from worldmodels.data.validate import check_episode, validate

__all__ = [
    "DatasetError",
    "OfflineDataset",
    "load_offline_dataset",
    "dataset_exists",
    "dataset_dir",
    "check_id",
    "DATASET_ID_PATTERN",
]

#: Dataset IDs accepted by Minari 0.5.4 (with the version suffix required, see module docstring).
DATASET_ID_PATTERN = re.compile(
    r"^(?:(?P<namespace>[-\w][-\w/]*[-\w])/)?(?P<name>[-\w]+?)-v(?P<version>\d+)$"
)

#: Seconds to wait for ``minari.download_dataset`` before giving up (env var overrides).
DOWNLOAD_TIMEOUT_ENV = "WORLDMODELS_DOWNLOAD_TIMEOUT"
DEFAULT_DOWNLOAD_TIMEOUT = 900.0

#: how a file that breaks the Minari layout is repaired
REBUILD = "The file does not follow the Minari layout; rebuild it with write_minari_dataset."


# --------------------------------------------------------------------------------------------
# The flat transition dataset
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class OfflineDataset:
    """Flat transitions of an offline dataset (numpy, host memory)."""

    dataset_id: str
    env_id: str
    observations: np.ndarray  # [N, obs_dim] float32
    actions: np.ndarray  # [N, act_dim] float32
    rewards: np.ndarray  # [N] float32
    next_observations: np.ndarray  # [N, obs_dim] float32
    terminations: np.ndarray  # [N] bool
    truncations: np.ndarray  # [N] bool
    episode_ids: np.ndarray  # [N] int64, contiguous runs, 0..E-1 when loaded from Minari
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    observation_space: Any = None  # gymnasium space stored with the dataset, when known
    action_space: Any = None

    # ---- sizes -------------------------------------------------------------------------
    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def num_transitions(self) -> int:
        return int(len(self.rewards))

    @property
    def episode_starts(self) -> np.ndarray:
        """Bool [N]: True on the first transition of each episode."""
        ids = np.asarray(self.episode_ids)
        starts = np.ones(len(ids), dtype=bool)
        if len(ids) > 1:
            starts[1:] = ids[1:] != ids[:-1]
        return starts

    @property
    def episode_ends(self) -> np.ndarray:
        """Bool [N]: True on the last transition of each episode."""
        ids = np.asarray(self.episode_ids)
        ends = np.ones(len(ids), dtype=bool)
        if len(ids) > 1:
            ends[:-1] = ids[1:] != ids[:-1]
        return ends

    def episode_end_rows(self) -> np.ndarray:
        """Int [N]: the row of the last transition of each row's episode (steps left, this one included, is
        that minus the row plus one)."""
        ends = np.flatnonzero(self.episode_ends)
        return ends[np.searchsorted(ends, np.arange(self.num_transitions))]

    @property
    def num_episodes(self) -> int:
        return int(self.episode_starts.sum())

    def fingerprint(self) -> str:
        """sha256 (first 16 hex digits) of the transitions, episode ids and reference scores.

        A recipe dataset is identified by its config, but the SAC behaviour run behind it is not
        bitwise portable across CPUs (the same recipe gave HalfCheetah an expert return of 862 on
        an Intel Xeon and 548 on an AMD EPYC), so a run's summary names the data it trained on."""
        digest = hashlib.sha256()
        for field in (self.observations, self.actions, self.rewards, self.next_observations,
                      self.terminations, self.truncations, self.episode_ids):
            array = np.ascontiguousarray(field)
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(array.tobytes())
        digest.update(repr((self.ref_min_score, self.ref_max_score)).encode())
        return digest.hexdigest()[:16]

    # ---- scores and returns ------------------------------------------------------------
    def normalized_score(self, returns):
        """D4RL normalized score ``100 * (R - ref_min) / (ref_max - ref_min)``.

        Returns a float for a scalar input, an array for an array input, and None when the
        dataset has no reference scores.
        """
        if self.ref_min_score is None or self.ref_max_score is None:
            return None
        span = float(self.ref_max_score) - float(self.ref_min_score)
        if span == 0.0:
            raise DatasetError(
                message(
                    self.dataset_id,
                    "ref_max_score",
                    f"ref_max_score equals ref_min_score ({self.ref_min_score}), so scores cannot be "
                    "normalized",
                    "Rebuild the dataset with distinct reference scores (random policy vs expert policy).",
                )
            )
        r = np.asarray(returns, dtype=np.float64)
        score = 100.0 * (r - float(self.ref_min_score)) / span
        return float(score) if score.ndim == 0 else score

    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of every episode, in dataset order, float64 [num_episodes]."""
        if self.num_transitions == 0:
            return np.zeros(0, dtype=np.float64)
        starts = np.flatnonzero(self.episode_starts)
        return np.add.reduceat(np.asarray(self.rewards, dtype=np.float64), starts)

    def returns_to_go(self, gamma: float) -> np.ndarray:
        """Discounted return-to-go per transition, float32 [N].

        ``G_t = r_t + gamma * G_{t+1}`` inside an episode; the recursion stops (G = r_t) at an
        episode end, at a terminal (zero value after a terminal) and at a truncation (the data
        after it is not available, so the tail is not bootstrapped).  Used as the Monte-Carlo
        reference value by Cal-QL.
        """
        n = self.num_transitions
        out = np.empty(n, dtype=np.float64)
        rewards = np.asarray(self.rewards, dtype=np.float64).tolist()
        cut = (
            np.asarray(self.terminations, dtype=bool)
            | np.asarray(self.truncations, dtype=bool)
            | self.episode_ends
        ).tolist()
        g = 0.0
        gamma = float(gamma)
        for t in range(n - 1, -1, -1):
            if cut[t]:
                g = 0.0
            g = rewards[t] + gamma * g
            out[t] = g
        return out.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Store helpers
# --------------------------------------------------------------------------------------------


def _datasets_root() -> Path:
    root = os.environ.get("MINARI_DATASETS_PATH")
    if root is None:
        root = os.path.join(os.path.expanduser("~"), ".minari", "datasets")
    return Path(root)


def dataset_dir(dataset_id: str) -> Path:
    return _datasets_root() / dataset_id


def dataset_exists(dataset_id: str) -> bool:
    """True if ``dataset_id`` is in the local Minari store (``MINARI_DATASETS_PATH``)."""
    return (dataset_dir(dataset_id) / "data").is_dir()


def _local_ids() -> list[str]:
    import minari

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return sorted(minari.list_local_datasets().keys())
    except Exception:  # listing is only for the error message
        return []


def check_id(dataset_id: str) -> None:
    if not isinstance(dataset_id, str) or not DATASET_ID_PATTERN.fullmatch(dataset_id):
        raise DatasetError(
            message(
                str(dataset_id),
                None,
                "malformed dataset ID; Minari IDs look like 'namespace/sub/name-v0' "
                "(letters, digits, '_' and '-' only, '/' between namespace parts, '-vN' suffix required)",
                "Fix the ID, e.g. use worldmodels.data.minari_write.recipe_dataset_id(...) to build one.",
            )
        )


def _not_found(dataset_id: str, reason: str) -> DatasetError:
    ids = _local_ids()
    shown = ", ".join(ids[:20]) + (f", ... ({len(ids)} in total)" if len(ids) > 20 else "")
    local = shown if ids else "none"
    return DatasetError(
        message(
            dataset_id,
            None,
            f"not in the local Minari store ({_datasets_root()}) and not downloadable ({reason}); "
            f"local datasets: {local}",
            "Pick a local ID, set MINARI_DATASETS_PATH to the right store, or build a D4RL-style "
            "dataset with `python -m agents.tools.make_dataset env_id=... quality=...`.",
        )
    )


def _download_timeout() -> float:
    try:
        return float(os.environ.get(DOWNLOAD_TIMEOUT_ENV, DEFAULT_DOWNLOAD_TIMEOUT))
    except ValueError:
        return DEFAULT_DOWNLOAD_TIMEOUT


def _try_download(dataset_id: str) -> None:
    """Run ``minari.download_dataset`` with a wall-clock guard; raise DatasetError on failure."""
    import minari

    path = dataset_dir(dataset_id)
    existed = path.exists()
    result: dict[str, BaseException | None] = {"error": None}

    def _run():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                minari.download_dataset(dataset_id)
        except BaseException as e:  # noqa: B036 - reported to the caller below
            result["error"] = e

    timeout = _download_timeout()
    worker = threading.Thread(target=_run, name=f"minari-download-{dataset_id}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise _not_found(
            dataset_id,
            f"the download did not finish within {timeout:g} s (set {DOWNLOAD_TIMEOUT_ENV} to wait longer); "
            f"if a partial copy appears at {path}, delete it",
        )
    err = result["error"]
    if err is not None:
        if not existed and path.exists():  # do not leave a half-downloaded dataset behind
            shutil.rmtree(path, ignore_errors=True)
        raise _not_found(dataset_id, f"{type(err).__name__}: {err}") from err
    if not dataset_exists(dataset_id):
        raise _not_found(dataset_id, "the download returned but no data was written")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _corrupt(dataset_id: str, path: Path, err: BaseException) -> DatasetError:
    return DatasetError(
        message(
            dataset_id,
            None,
            f"the files at {path} cannot be read ({type(err).__name__}: {err})",
            f"The dataset is probably truncated or corrupt: delete {path.parent} "
            f"(minari.delete_dataset('{dataset_id}')) and rebuild or re-download it.",
        )
    )


def _opt_float(x) -> float | None:
    return None if x is None else float(x)


def load_offline_dataset(
    dataset_id: str, download: bool | None = None, *, check: bool = True
) -> OfflineDataset:
    """Load a Minari dataset from the local store and flatten it into transitions.

    Args:
        dataset_id: Minari dataset ID, e.g. ``mujoco/halfcheetah/medium-v0``.
        download: if the ID is not local, try ``minari.download_dataset``: True = yes,
            False = never, None = yes unless ``HF_HUB_OFFLINE`` is set.
        check: run :func:`validate` against the spaces stored with the dataset. The per-episode
            layout checks (``check_episode``) always run: they guard the casts to flat arrays.
    """
    import gymnasium as gym
    import minari

    check_id(dataset_id)
    if not dataset_exists(dataset_id):
        if download is None:
            download = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("", "0", "false", "no")
        if not download:
            raise _not_found(dataset_id, "downloading was disabled")
        _try_download(dataset_id)

    data_path = dataset_dir(dataset_id) / "data"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mds = minari.load_dataset(dataset_id)
        obs_space, act_space = mds.observation_space, mds.action_space
        metadata = mds.storage.metadata
    except DatasetError:
        raise
    except Exception as e:  # json / hdf5 / arrow / minari-version errors
        raise _corrupt(dataset_id, data_path, e) from e

    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise DatasetError(
            message(
                dataset_id,
                "observations",
                f"observation space {obs_space} is not supported; only flat Box observations are",
                "Flatten the observations (e.g. gymnasium.wrappers.FlattenObservation) and rebuild "
                "the dataset.",
            )
        )
    if not isinstance(act_space, gym.spaces.Box) or len(act_space.shape) != 1:
        raise DatasetError(
            message(
                dataset_id,
                "actions",
                f"action space {act_space} is not supported; only flat continuous Box actions are",
                "Use a continuous-control dataset, or rebuild it with a flat Box action space.",
            )
        )

    env_spec = mds.spec.env_spec or getattr(mds, "_eval_env_spec", None)
    if env_spec is None:
        raise DatasetError(
            message(
                dataset_id,
                "env_spec",
                "the dataset stores no environment spec, so the environment cannot be rebuilt for "
                "online steps",
                "Rebuild the dataset with env=<gymnasium id> (write_minari_dataset does this).",
            )
        )
    env_id = env_spec.id

    obs_l, next_l, act_l, rew_l, term_l, trunc_l, ids_l = [], [], [], [], [], [], []
    n_eps = 0
    try:
        for k, ep in enumerate(mds.iterate_episodes()):
            obs = np.asarray(ep.observations)
            t_len = len(ep.rewards)
            if t_len == 0:
                continue
            # the raw arrays, before any cast: astype(bool) would turn a flag of 2.0 into True
            raw = {"observations": obs, "actions": ep.actions, "rewards": ep.rewards,
                   "terminations": ep.terminations, "truncations": ep.truncations}
            check_episode(dataset_id, k, raw, obs_space, act_space, REBUILD)
            term = np.asarray(ep.terminations).astype(bool).reshape(-1)
            trunc = np.asarray(ep.truncations).astype(bool).reshape(-1).copy()
            if not (term[-1] or trunc[-1]):
                trunc[-1] = True  # logged data ends here: cut, but keep the bootstrap
            obs_l.append(obs[:-1])
            next_l.append(obs[1:])
            act_l.append(np.asarray(ep.actions).reshape(t_len, -1))
            rew_l.append(np.asarray(ep.rewards).reshape(-1))
            term_l.append(term)
            trunc_l.append(trunc)
            ids_l.append(np.full(t_len, n_eps, dtype=np.int64))
            n_eps += 1
    except DatasetError:
        raise
    except Exception as e:
        raise _corrupt(dataset_id, data_path, e) from e

    obs_dim, act_dim = int(obs_space.shape[0]), int(act_space.shape[0])

    def _cat(parts, dtype, shape_tail):
        if not parts:
            return np.zeros((0, *shape_tail), dtype=dtype)
        return np.concatenate(parts).astype(dtype, copy=False)

    ds = OfflineDataset(
        dataset_id=dataset_id,
        env_id=env_id,
        observations=_cat(obs_l, np.float32, (obs_dim,)),
        actions=_cat(act_l, np.float32, (act_dim,)),
        rewards=_cat(rew_l, np.float32, ()),
        next_observations=_cat(next_l, np.float32, (obs_dim,)),
        terminations=_cat(term_l, bool, ()),
        truncations=_cat(trunc_l, bool, ()),
        episode_ids=_cat(ids_l, np.int64, ()),
        ref_min_score=_opt_float(metadata.get("ref_min_score")),
        ref_max_score=_opt_float(metadata.get("ref_max_score")),
        observation_space=obs_space,
        action_space=act_space,
    )
    if check:
        validate(ds, obs_space, act_space)
    return ds
