"""Minari I/O: load a Minari dataset as flat transitions, validate it, write new ones.

Conventions (see DESIGN.md, "terminal and truncated are different everywhere"):

* ``terminations[t]`` -- the environment reached a true terminal state at step t; the
  bootstrap after t must be zeroed.  If both flags are set on one step, termination wins.
* ``truncations[t]`` -- the episode was cut after step t without a true termination, either
  by a time limit or because the logged data simply ends there.  The bootstrap is kept.
  When loading, the last step of every episode that carries neither flag is marked as a
  truncation, so ``terminations | truncations`` always marks every episode end.
* ``next_observations[t]`` is always the observation that followed step t in the *same*
  episode (Minari stores T+1 observations per episode); it never crosses an episode.

Minari dataset IDs (checked against ``minari.dataset.minari_dataset.DATASET_ID_RE`` in
Minari 0.5.4) have the form ``namespace/.../name-vN``: the namespace may hold several
``/``-separated parts made of ``[A-Za-z0-9_-]``, the name is ``[A-Za-z0-9_-]+`` (no dots,
no spaces) and the ``-vN`` suffix is required in practice (``parse_dataset_id`` calls
``int(version)``).  :func:`recipe_dataset_id` builds IDs of that form.
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

__all__ = [
    "DatasetError",
    "OfflineDataset",
    "load_offline_dataset",
    "validate",
    "write_minari_dataset",
    "recipe_dataset_id",
    "dataset_exists",
    "DATASET_ID_PATTERN",
]

#: Dataset IDs accepted by Minari 0.5.4 (with the version suffix required, see module docstring).
DATASET_ID_PATTERN = re.compile(
    r"^(?:(?P<namespace>[-\w][-\w/]*[-\w])/)?(?P<name>[-\w]+?)-v(?P<version>\d+)$"
)

#: Tolerance when checking actions against the action-space bounds.
ACTION_BOUND_TOL = 1e-4

#: Seconds to wait for ``minari.download_dataset`` before giving up (env var overrides).
DOWNLOAD_TIMEOUT_ENV = "WORLDMODELS_DOWNLOAD_TIMEOUT"
DEFAULT_DOWNLOAD_TIMEOUT = 900.0

_FLOAT_FIELDS = ("observations", "actions", "rewards", "next_observations")
_ALL_FIELDS = (
    "observations",
    "actions",
    "rewards",
    "next_observations",
    "terminations",
    "truncations",
    "episode_ids",
)


class DatasetError(ValueError):
    """A dataset cannot be used as it is. The message names the dataset, the field and the fix."""


def _msg(dataset_id: str, field: str | None, problem: str, fix: str) -> str:
    where = f"dataset '{dataset_id}'" + (f", field '{field}'" if field else "")
    return f"{where}: {problem}. {fix}"


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

    @property
    def num_episodes(self) -> int:
        return int(self.episode_starts.sum())

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
                _msg(
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


def _dataset_dir(dataset_id: str) -> Path:
    return _datasets_root() / dataset_id


def dataset_exists(dataset_id: str) -> bool:
    """True if ``dataset_id`` is in the local Minari store (``MINARI_DATASETS_PATH``)."""
    return (_dataset_dir(dataset_id) / "data").is_dir()


def _local_ids() -> list[str]:
    import minari

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return sorted(minari.list_local_datasets().keys())
    except Exception:  # listing is only for the error message
        return []


def _check_id(dataset_id: str) -> None:
    if not isinstance(dataset_id, str) or not DATASET_ID_PATTERN.fullmatch(dataset_id):
        raise DatasetError(
            _msg(
                str(dataset_id),
                None,
                "malformed dataset ID; Minari IDs look like 'namespace/sub/name-v0' "
                "(letters, digits, '_' and '-' only, '/' between namespace parts, '-vN' suffix required)",
                "Fix the ID, e.g. use worldmodels.data.minari_io.recipe_dataset_id(...) to build one.",
            )
        )


def _not_found(dataset_id: str, reason: str) -> DatasetError:
    ids = _local_ids()
    shown = ", ".join(ids[:20]) + (f", ... ({len(ids)} in total)" if len(ids) > 20 else "")
    local = shown if ids else "none"
    return DatasetError(
        _msg(
            dataset_id,
            None,
            f"not in the local Minari store ({_datasets_root()}) and not downloadable ({reason}); "
            f"local datasets: {local}",
            "Pick a local ID, set MINARI_DATASETS_PATH to the right store, or build a D4RL-style "
            "dataset with `python -m worldmodels.data.make env_id=... quality=...`.",
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

    path = _dataset_dir(dataset_id)
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
        _msg(
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
        check: run :func:`validate` against the spaces stored with the dataset.
    """
    import gymnasium as gym
    import minari

    _check_id(dataset_id)
    if not dataset_exists(dataset_id):
        if download is None:
            download = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("", "0", "false", "no")
        if not download:
            raise _not_found(dataset_id, "downloading was disabled")
        _try_download(dataset_id)

    data_path = _dataset_dir(dataset_id) / "data"
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
            _msg(
                dataset_id,
                "observations",
                f"observation space {obs_space} is not supported; only flat Box observations are",
                "Flatten the observations (e.g. gymnasium.wrappers.FlattenObservation) and rebuild "
                "the dataset.",
            )
        )
    if not isinstance(act_space, gym.spaces.Box) or len(act_space.shape) != 1:
        raise DatasetError(
            _msg(
                dataset_id,
                "actions",
                f"action space {act_space} is not supported; only flat continuous Box actions are",
                "Use a continuous-control dataset, or rebuild it with a flat Box action space.",
            )
        )

    env_spec = mds.spec.env_spec or getattr(mds, "_eval_env_spec", None)
    if env_spec is None:
        raise DatasetError(
            _msg(
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
            if obs.ndim != 2 or obs.shape[0] != t_len + 1:
                raise DatasetError(
                    _msg(
                        dataset_id,
                        "observations",
                        f"episode {k} has {t_len} steps but observations of shape {obs.shape} "
                        f"(Minari stores T+1 = {t_len + 1} observations per episode)",
                        "The file does not follow the Minari layout; rebuild it with write_minari_dataset.",
                    )
                )
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


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _space_shape(space, dataset_id: str, field: str) -> tuple[int, ...]:
    import gymnasium as gym

    if not isinstance(space, gym.spaces.Box):
        raise DatasetError(
            _msg(
                dataset_id,
                field,
                f"the environment space {space} is not a Box; only Box observations and actions are "
                "supported",
                "Flatten the space (e.g. gymnasium.wrappers.FlattenObservation) or use a Box-space "
                "environment.",
            )
        )
    return tuple(int(s) for s in space.shape)


def validate(ds: OfflineDataset, observation_space, action_space) -> None:
    """Check ``ds`` against the environment spaces; raise one DatasetError for the first problem.

    Order: empty, missing fields, shapes (vs the spaces, then lengths), non-finite floats,
    actions out of bounds, non-boolean termination/truncation flags.
    """
    did = getattr(ds, "dataset_id", "<unknown>")
    fields = {name: getattr(ds, name, None) for name in _ALL_FIELDS}
    present = {k: v for k, v in fields.items() if v is not None}

    # 1. empty
    lengths = {k: (len(v) if np.ndim(v) > 0 else 0) for k, v in present.items()}
    if not present or all(n == 0 for n in lengths.values()):
        raise DatasetError(
            _msg(
                did,
                "rewards",
                "the dataset holds no transitions (0 steps)",
                "Check the dataset ID and that its episodes were actually written; rebuild it if needed.",
            )
        )

    # 2. missing fields
    missing = [k for k in _ALL_FIELDS if k not in present]
    if missing:
        raise DatasetError(
            _msg(
                did,
                missing[0],
                f"missing (None); missing fields: {', '.join(missing)}",
                "Load the data with load_offline_dataset or fill every field of OfflineDataset.",
            )
        )
    arrs = {k: np.asarray(v) for k, v in present.items()}

    # 3a. shapes vs the spaces
    obs_shape = _space_shape(observation_space, did, "observations")
    act_shape = _space_shape(action_space, did, "actions")
    for name, want in (
        ("observations", obs_shape),
        ("next_observations", obs_shape),
        ("actions", act_shape),
    ):
        got = arrs[name].shape[1:]
        if got != want:
            space = "observation" if name != "actions" else "action"
            raise DatasetError(
                _msg(
                    did,
                    name,
                    f"per-step shape {got} (array shape {arrs[name].shape}) does not match the "
                    f"environment's {space} space shape {want}",
                    "Make sure the dataset was collected on the same environment (id and version) "
                    "you are training on.",
                )
            )
    for name in ("rewards", "terminations", "truncations", "episode_ids"):
        if arrs[name].ndim != 1:
            raise DatasetError(
                _msg(
                    did,
                    name,
                    f"expected a 1-D array [N], got shape {arrs[name].shape}",
                    "Flatten it to one value per transition.",
                )
            )
    # 3b. lengths
    n_ref = len(arrs["observations"])
    for name in _ALL_FIELDS:
        if len(arrs[name]) != n_ref:
            all_lens = ", ".join(f"{k}={len(arrs[k])}" for k in _ALL_FIELDS)
            raise DatasetError(
                _msg(
                    did,
                    name,
                    f"length {len(arrs[name])} differs from observations length {n_ref} ({all_lens})",
                    "Every field needs one entry per transition; rebuild the dataset.",
                )
            )

    # 4. non-finite floats
    for name in _FLOAT_FIELDS:
        a = arrs[name]
        if a.dtype.kind not in "fiub":
            raise DatasetError(
                _msg(did, name, f"dtype {a.dtype} is not numeric", "Store numeric arrays (float32).")
            )
        bad = ~np.isfinite(a)
        if bad.any():
            rows = bad.reshape(len(a), -1).any(axis=1) if a.ndim > 1 else bad
            first = int(np.flatnonzero(rows)[0])
            raise DatasetError(
                _msg(
                    did,
                    name,
                    f"{int(bad.sum())} non-finite values (NaN/inf) in {int(rows.sum())} transitions, "
                    f"first at index {first} (value {a[first].ravel()[bad[first].ravel()][0]})",
                    "Drop or repair those transitions; NaN/inf usually come from a diverged policy "
                    "or a broken conversion.",
                )
            )

    # 5. action bounds
    a = arrs["actions"].astype(np.float64, copy=False)
    low = np.broadcast_to(np.asarray(action_space.low, dtype=np.float64), act_shape)
    high = np.broadcast_to(np.asarray(action_space.high, dtype=np.float64), act_shape)
    below = (low - a) - ACTION_BOUND_TOL
    above = (a - high) - ACTION_BOUND_TOL
    excess = np.maximum(below, above)
    bad = excess > 0
    if bad.any():
        flat = int(np.argmax(excess))
        i, j = np.unravel_index(flat, excess.shape)
        value = a[i, j]
        is_low = below[i, j] > above[i, j]
        bound = low[j] if is_low else high[j]
        rows = bad.reshape(len(a), -1).any(axis=1)
        raise DatasetError(
            _msg(
                did,
                "actions",
                f"{int(bad.sum())} values in {int(rows.sum())} transitions lie outside the action bounds "
                f"(tolerance {ACTION_BOUND_TOL:g}); worst {value:.6g} at index {i}, dim {j}, "
                f"{'lower' if is_low else 'upper'} bound {bound:.6g}",
                "Clip the actions to the action space, or check the action scaling "
                "(e.g. actions stored before/after a rescaling wrapper).",
            )
        )

    # 6. boolean flags
    for name in ("terminations", "truncations"):
        f = arrs[name]
        if f.dtype.kind == "b":
            continue
        if f.dtype.kind in "iuf":
            bad = ~np.isin(f, (0, 1))
            if bad.any():
                first = int(np.flatnonzero(bad)[0])
                raise DatasetError(
                    _msg(
                        did,
                        name,
                        f"{int(bad.sum())} values are not boolean (0/1), first at index {first} "
                        f"(value {f[first]})",
                        "Store the flags as bool arrays.",
                    )
                )
            continue
        raise DatasetError(
            _msg(did, name, f"dtype {f.dtype} cannot be read as boolean", "Store the flags as bool arrays.")
        )


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _sanitize_part(text: str, what: str) -> str:
    """Make ``text`` usable inside a Minari ID; keep it injective by appending a hash if changed."""
    clean = re.sub(r"[^-\w/]", "_", text.strip("/"))
    clean = re.sub(r"/+", "/", clean)
    if clean != text or not clean:
        digest = hashlib.sha1(text.encode()).hexdigest()[:6]
        clean = f"{clean or what}_{digest}"
    return clean


def recipe_dataset_id(env_id: str, quality: str, size: int, train_steps: int, seed: int) -> str:
    """Minari ID for a D4RL-style recipe dataset, e.g.
    ``o2o/HalfCheetah-v5/medium-replay-s20000-t30000-seed0-v0``.

    The env id becomes a namespace part; characters Minari does not accept are replaced by
    ``_`` and a short hash of the original string is appended to keep IDs unique.
    """
    for name, v in (("size", size), ("train_steps", train_steps), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"recipe_dataset_id: {name} must be a non-negative int, got {v!r}")
    env_part = _sanitize_part(str(env_id), "env")
    q_part = _sanitize_part(str(quality), "quality").replace("/", "_")
    dataset_id = f"o2o/{env_part}/{q_part}-s{int(size)}-t{int(train_steps)}-seed{int(seed)}-v0"
    assert DATASET_ID_PATTERN.fullmatch(dataset_id), dataset_id
    return dataset_id


def _episode_buffers(dataset_id: str, episodes: list[dict], obs_space, act_space) -> list:
    from minari.data_collector import EpisodeBuffer

    obs_shape, act_shape = tuple(obs_space.shape), tuple(act_space.shape)
    buffers = []
    for k, ep in enumerate(episodes):
        for key in ("observations", "actions", "rewards", "terminations", "truncations"):
            if key not in ep or ep[key] is None:
                raise DatasetError(
                    _msg(
                        dataset_id, key, f"episode {k} has no '{key}'", "Provide all five arrays per episode."
                    )
                )
        obs = np.asarray(ep["observations"], dtype=obs_space.dtype)
        act = np.asarray(ep["actions"], dtype=act_space.dtype)
        rew = np.asarray(ep["rewards"], dtype=np.float64).reshape(-1)
        term = np.asarray(ep["terminations"]).astype(bool).reshape(-1)
        trunc = np.asarray(ep["truncations"]).astype(bool).reshape(-1)
        t_len = len(rew)
        if t_len == 0:
            raise DatasetError(
                _msg(dataset_id, "rewards", f"episode {k} has 0 steps", "Drop empty episodes before writing.")
            )
        checks = (
            ("observations", obs.shape, (t_len + 1, *obs_shape)),
            ("actions", act.shape, (t_len, *act_shape)),
            ("terminations", term.shape, (t_len,)),
            ("truncations", trunc.shape, (t_len,)),
        )
        for key, got, want in checks:
            if got != want:
                raise DatasetError(
                    _msg(
                        dataset_id,
                        key,
                        f"episode {k} has shape {got}, expected {want} "
                        f"(T={t_len} steps; observations hold T+1 entries including the final one)",
                        "Fix the episode arrays (Minari layout) before writing.",
                    )
                )
        buffers.append(
            EpisodeBuffer(
                observations=obs,
                actions=act,
                rewards=rew,
                terminations=term,
                truncations=trunc,
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

    _check_id(dataset_id)
    if not episodes:
        raise DatasetError(
            _msg(dataset_id, "episodes", "no episodes to write", "Collect at least one episode first.")
        )
    path = _dataset_dir(dataset_id)
    if path.exists():
        if not overwrite:
            raise DatasetError(
                _msg(
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
    _space_shape(obs_space, dataset_id, "observations")
    _space_shape(act_space, dataset_id, "actions")
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
