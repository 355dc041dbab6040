"""Dataset validation: every problem a dataset can have gets one DatasetError naming the field and the fix.

Two entry points:

* :func:`check_episode` -- one episode as stored (Minari layout, T+1 observations), run by the
  loader and the writer *before* any cast, so a flag of 2.0 or an integer action is seen as it is
  (after ``astype(bool)`` or ``astype(float32)`` it would look valid).
* :func:`validate` -- flat transitions (an ``OfflineDataset``) against the spaces of the
  environment the agent will act in.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from worldmodels.data.errors import DatasetError, message

#: Tolerance when checking actions against the action-space bounds.
ACTION_BOUND_TOL = 1e-4

FLOAT_FIELDS = ("observations", "actions", "rewards", "next_observations")
ALL_FIELDS = (
    "observations",
    "actions",
    "rewards",
    "next_observations",
    "terminations",
    "truncations",
    "episode_ids",
)
#: the arrays of one episode in the Minari layout
EPISODE_FIELDS = ("observations", "actions", "rewards", "terminations", "truncations")


def box_shape(space, dataset_id: str, field: str) -> tuple[int, ...]:
    """The shape of a Box space; any other space is refused (only Box observations and actions are supported)."""
    import gymnasium as gym

    if not isinstance(space, gym.spaces.Box):
        raise DatasetError(
            message(
                dataset_id,
                field,
                f"the environment space {space} is not a Box; only Box observations and actions are supported",
                "Flatten the space (e.g. gymnasium.wrappers.FlattenObservation) or use a Box-space environment.",
            )
        )
    return tuple(int(s) for s in space.shape)


def _is_continuous(space) -> bool:
    return np.issubdtype(np.dtype(space.dtype), np.floating)


def _integer_actions(dataset_id: str, dtype: np.dtype, action_space, where: str) -> DatasetError:
    return DatasetError(
        message(
            dataset_id,
            "actions",
            f"{where}integer actions (dtype {dtype}) for the continuous action space {action_space}; the data "
            "was probably logged for a discrete or quantized version of the task",
            "Store the actions the policy sent to this environment, as floats (float32) in its units.",
        )
    )


# --------------------------------------------------------------------------------------------
# One episode, as stored
# --------------------------------------------------------------------------------------------


def check_episode(
    dataset_id: str, k: int, episode: dict[str, Any], observation_space, action_space, remedy: str
) -> None:
    """Check episode ``k`` (Minari layout: observations [T+1, ...], the rest [T]) before any cast.

    ``remedy`` ends the messages about the layout (it differs between reading a file and writing one).
    Order: observations, actions, flags (0/1 only), no step after a termination.
    """
    obs, act, rew, term, trunc = (np.asarray(episode[key]) for key in EPISODE_FIELDS)
    t_len = int(rew.size)
    obs_shape = box_shape(observation_space, dataset_id, "observations")
    act_shape = box_shape(action_space, dataset_id, "actions")

    if obs.ndim == 0 or obs.shape[0] != t_len + 1:
        raise DatasetError(
            message(
                dataset_id,
                "observations",
                f"episode {k} has {t_len} steps but observations of shape {obs.shape} "
                f"(Minari stores T+1 = {t_len + 1} observations per episode)",
                remedy,
            )
        )
    if obs.shape[1:] != obs_shape:
        raise DatasetError(
            message(
                dataset_id,
                "observations",
                f"episode {k} has observations of shape {obs.shape[1:]} per step but the observation space "
                f"{observation_space} has {obs_shape}; it was recorded on another environment or version",
                f"Drop episode {k} or record it again on the dataset's environment.",
            )
        )

    act_size = int(np.prod(act_shape))
    if act.ndim == 0 or act.shape[0] != t_len or act.size != t_len * act_size:
        raise DatasetError(
            message(
                dataset_id,
                "actions",
                f"episode {k} has actions of shape {act.shape}, expected {(t_len, *act_shape)} "
                f"({t_len} steps of the action space {action_space})",
                remedy,
            )
        )
    if act.dtype.kind in "iub" and _is_continuous(action_space):
        raise _integer_actions(dataset_id, act.dtype, action_space, f"episode {k} holds ")

    for name, flags in (("terminations", term), ("truncations", trunc)):
        if flags.size != t_len:
            raise DatasetError(
                message(dataset_id, name, f"episode {k} has {flags.size} flags for {t_len} steps", remedy)
            )
        _check_flags(dataset_id, name, flags.reshape(-1), f"episode {k} holds ", "step")

    ended = np.flatnonzero(term.reshape(-1)[:-1].astype(bool))
    if len(ended):
        t = int(ended[0])
        raise DatasetError(
            message(
                dataset_id,
                "terminations",
                f"episode {k} terminates at step {t} but goes on for {t_len - 1 - t} more steps; nothing can "
                "follow a true terminal state",
                f"Split episode {k} after step {t}, or clear the flag there if the environment did not "
                "terminate (a time-limit cut is a truncation).",
            )
        )


def _check_flags(dataset_id: str, name: str, flags: np.ndarray, where: str, unit: str) -> None:
    """Flags must be bool, or numbers that are exactly 0 or 1 (2.0 or NaN is not a flag)."""
    if flags.dtype.kind == "b":
        return
    if flags.dtype.kind not in "iuf":
        problem = f"dtype {flags.dtype} cannot be read as boolean"
        raise DatasetError(message(dataset_id, name, problem, "Store the flags as bool arrays."))
    bad = ~np.isin(flags, (0, 1))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DatasetError(
            message(
                dataset_id,
                name,
                f"{where}{int(bad.sum())} values that are not boolean (0/1), first at {unit} {first} "
                f"(value {flags[first]})",
                "Store the flags as bool arrays: True only where the episode ended that way.",
            )
        )


# --------------------------------------------------------------------------------------------
# Flat transitions against the environment
# --------------------------------------------------------------------------------------------


def validate(ds, observation_space, action_space) -> None:
    """Check an ``OfflineDataset`` against the environment spaces; raise one DatasetError for the first problem.

    Order: empty, missing fields, shapes (vs the spaces, then lengths), dtypes and non-finite floats,
    actions out of bounds, non-boolean termination/truncation flags, steps after a termination.
    """
    did = getattr(ds, "dataset_id", "<unknown>")
    fields = {name: getattr(ds, name, None) for name in ALL_FIELDS}
    present = {k: v for k, v in fields.items() if v is not None}

    # 1. empty
    lengths = {k: (len(v) if np.ndim(v) > 0 else 0) for k, v in present.items()}
    if not present or all(n == 0 for n in lengths.values()):
        raise DatasetError(
            message(
                did,
                "rewards",
                "the dataset holds no transitions (0 steps)",
                "Check the dataset ID and that its episodes were actually written; rebuild it if needed.",
            )
        )

    # 2. missing fields
    missing = [k for k in ALL_FIELDS if k not in present]
    if missing:
        raise DatasetError(
            message(
                did,
                missing[0],
                f"missing (None); missing fields: {', '.join(missing)}",
                "Load the data with load_offline_dataset or fill every field of OfflineDataset.",
            )
        )
    arrs = {k: np.asarray(v) for k, v in present.items()}

    # 3a. shapes vs the spaces
    obs_shape = box_shape(observation_space, did, "observations")
    act_shape = box_shape(action_space, did, "actions")
    for name, want in (
        ("observations", obs_shape),
        ("next_observations", obs_shape),
        ("actions", act_shape),
    ):
        got = arrs[name].shape[1:]
        if got != want:
            space = "observation" if name != "actions" else "action"
            raise DatasetError(
                message(
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
                message(
                    did,
                    name,
                    f"expected a 1-D array [N], got shape {arrs[name].shape}",
                    "Flatten it to one value per transition.",
                )
            )
    # 3b. lengths
    n_ref = len(arrs["observations"])
    for name in ALL_FIELDS:
        if len(arrs[name]) != n_ref:
            all_lens = ", ".join(f"{k}={len(arrs[k])}" for k in ALL_FIELDS)
            raise DatasetError(
                message(
                    did,
                    name,
                    f"length {len(arrs[name])} differs from observations length {n_ref} ({all_lens})",
                    "Every field needs one entry per transition; rebuild the dataset.",
                )
            )

    # 4. dtypes and non-finite floats
    for name in FLOAT_FIELDS:
        a = arrs[name]
        if a.dtype.kind not in "fiub":
            raise DatasetError(message(did, name, f"dtype {a.dtype} is not numeric", "Store numeric arrays (float32)."))
        bad = ~np.isfinite(a)
        if bad.any():
            rows = bad.reshape(len(a), -1).any(axis=1) if a.ndim > 1 else bad
            first = int(np.flatnonzero(rows)[0])
            raise DatasetError(
                message(
                    did,
                    name,
                    f"{int(bad.sum())} non-finite values (NaN/inf) in {int(rows.sum())} transitions, "
                    f"first at index {first} (value {a[first].ravel()[bad[first].ravel()][0]})",
                    "Drop or repair those transitions; NaN/inf usually come from a diverged policy "
                    "or a broken conversion.",
                )
            )
    if arrs["actions"].dtype.kind in "iub" and _is_continuous(action_space):
        raise _integer_actions(did, arrs["actions"].dtype, action_space, "")

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
            message(
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
        _check_flags(did, name, arrs[name], "", "index")

    # 7. a terminal state ends its episode
    ids = arrs["episode_ids"]
    continued = np.flatnonzero(arrs["terminations"][:-1].astype(bool) & (ids[1:] == ids[:-1]))
    if len(continued):
        t = int(continued[0])
        raise DatasetError(
            message(
                did,
                "terminations",
                f"{len(continued)} terminations are followed by more steps of the same episode, first at index "
                f"{t} (episode {ids[t]}); nothing can follow a true terminal state",
                "Start a new episode id after every termination, or clear the flag where the environment did not "
                "terminate (a time-limit cut is a truncation).",
            )
        )
