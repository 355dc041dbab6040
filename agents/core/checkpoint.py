"""Checkpoint files that are safe to share: plain data in, plain data out, never code.

Run directories travel between researchers, so `checkpoint.pt` is untrusted input. It is read
only with `torch.load(weights_only=True)`, whose unpickler rebuilds tensors and python
containers and refuses every other global, so a crafted file cannot run code. That only works
if what we write is plain too: `assert_plain` refuses, at save time, anything the restricted
unpickler would reject later (numpy arrays and scalars, dataclasses, slices...), and
`rng_state` stores every generator's state as tensors and python numbers.

Writes are atomic (unique temp file in the same directory, fsync, `os.replace`): a kill, a full
disk or a diverged model (NaN/inf) never replaces the last good checkpoint.
"""

from __future__ import annotations

import errno
import fnmatch
import math
import os
import random
import re
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read; the message is one line naming the file and the fix."""


class NonFiniteError(CheckpointError):
    """A tensor holds NaN/inf: the run diverged and its state must not replace a good checkpoint."""


# --- RNG state as plain data ------------------------------------------------------------------
def rng_state() -> dict:
    """Python, numpy (global) and torch (CPU + every CUDA device) RNG states, as tensors and numbers."""
    version, words, gauss_next = random.getstate()  # words: 624 uint32 + position, all python ints
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": {"version": version, "words": torch.tensor(words, dtype=torch.int64), "gauss_next": gauss_next},
        # uint32 keys widened to int64: exact, and int64 tensors work with every torch op
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Mapping) -> None:
    """Restore what `rng_state` captured; the next draws equal the draws the saved run made."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(w) for w in py["words"].tolist()), py["gauss_next"]))
    nps = state["numpy"]
    np.random.set_state((nps["name"], nps["keys"].cpu().numpy().astype(np.uint32), nps["pos"],
                         nps["has_gauss"], nps["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        # a checkpoint from a machine with more GPUs restores the devices this one has
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.cpu(), i)


# --- what weights_only loading accepts ----------------------------------------------------------
# Checked by exact type: np.float64 subclasses float but pickles as a numpy global, which the
# restricted unpickler refuses. Each entry is exercised by a save/load test.
_PLAIN_LEAVES = (type(None), bool, int, float, complex, str, bytes, torch.device, torch.dtype, torch.Size)
_PLAIN_TENSORS = (Tensor, nn.Parameter)
_PLAIN_CONTAINERS = (dict, OrderedDict, list, tuple, set)


def _walk(obj, path: str, seen: set[int]) -> Iterator[tuple[str, object]]:
    """(key path, leaf) pairs of a nested state; containers are descended, each one once."""
    if type(obj) in _PLAIN_CONTAINERS:
        if id(obj) in seen:  # shared or cyclic containers: torch.save handles them, visit once
            return
        seen.add(id(obj))
        if isinstance(obj, dict):
            for k, v in obj.items():
                key = f"{path}/{k}" if path else str(k)
                if type(k) not in (str, int):  # keys are pickled too; the common ones need no walk
                    yield from _walk(k, f"{key} (key)", seen)
                yield from _walk(v, key, seen)
        else:
            for i, v in enumerate(obj):
                yield from _walk(v, f"{path}[{i}]", seen)
    else:
        yield path or "<root>", obj


def assert_plain(state) -> None:
    """Raise CheckpointError naming the first value that `torch.load(weights_only=True)` would refuse."""
    for path, leaf in _walk(state, "", set()):
        if type(leaf) not in _PLAIN_LEAVES and type(leaf) not in _PLAIN_TENSORS:
            kind = type(leaf)
            raise CheckpointError(
                f"checkpoint state {path} is a {kind.__module__}.{kind.__qualname__}, which a safe "
                "(weights_only) load refuses; store tensors, numbers, strings, lists and dicts only."
            )


# --- divergence ---------------------------------------------------------------------------------
def first_non_finite(named: Mapping[str, Tensor | float] | nn.Module) -> str | None:
    """Name of the first tensor (or python float) holding NaN/inf, else None.

    A module is checked through its parameters and buffers; a dict may hold losses as tensors or
    floats. Tensors are reduced on their own device and read back in one transfer, so a check
    after every update costs one sync, not one per tensor.
    """
    if isinstance(named, nn.Module):
        items = [*named.named_parameters(), *named.named_buffers()]
    else:
        items = list(named.items())
    finite = [True] * len(items)
    by_device: dict[torch.device, list[int]] = {}
    for i, (_, value) in enumerate(items):
        if isinstance(value, Tensor) and (value.is_floating_point() or value.is_complex()):
            by_device.setdefault(value.device, []).append(i)
        elif isinstance(value, float):
            finite[i] = math.isfinite(value)
    for idx in by_device.values():
        flags = torch.stack([torch.isfinite(items[i][1]).all() for i in idx]).tolist()  # one sync per device
        for i, ok in zip(idx, flags, strict=True):
            finite[i] = ok
    return next((items[i][0] for i, ok in enumerate(finite) if not ok), None)


def _first_non_finite_in(state, allowed: tuple[str, ...]) -> str | None:
    # tensors only: a NaN python metric (say, an undefined score) is a report, not a diverged model
    return first_non_finite({p: v for p, v in _walk(state, "", set())
                             if isinstance(v, Tensor) and not any(fnmatch.fnmatchcase(p, a) for a in allowed)})


# --- save / load ----------------------------------------------------------------------------------
_FIXES = {
    errno.ENOSPC: "free space on that disk (or pick another hydra.run.dir) and resume",
    errno.EDQUOT: "free space within your quota (or pick another hydra.run.dir) and resume",
    errno.EROFS: "the file system is read-only; pick another hydra.run.dir",
    errno.EACCES: "make the run directory writable or pick another hydra.run.dir",
    errno.EPERM: "make the run directory writable or pick another hydra.run.dir",
    errno.ENOTDIR: "the run directory is missing or is a file; pick another hydra.run.dir",
    errno.ENOENT: "the run directory is missing or is a file; pick another hydra.run.dir",
}


def save_checkpoint(path: Path, state: dict, allow_non_finite: tuple[str, ...] = ()) -> None:
    """Write `state` to `path` atomically; a refused or failed write leaves the previous file as it was.

    Raises NonFiniteError if any floating tensor holds NaN/inf (a diverged run must not overwrite
    the last good checkpoint), CheckpointError if the state is not plain data or the write fails.
    `allow_non_finite`: key-path globs exempt from that check, for tensors that are inf by design
    (e.g. "world/model/holdout_mse": the dynamics ensemble's "no fit yet" marker).
    """
    path = Path(path)
    bad = _first_non_finite_in(state, allow_non_finite)
    if bad is not None:
        raise NonFiniteError(
            f"not writing {path}: {bad} holds NaN/inf (the run diverged); the previous checkpoint is kept, "
            "resume from it with a smaller learning rate or another seed."
        )
    assert_plain(state)
    tmp: str | None = None
    try:
        # unique name: two writers (or a leftover from a kill) never share a temp file
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # data on disk before the rename makes it visible
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)  # the rename itself survives a power cut
    except OSError as err:
        fix = _FIXES.get(err.errno, "check the run directory or pick another hydra.run.dir")
        raise CheckpointError(
            f"cannot write checkpoint {path}: {err.strerror or err}; the previous checkpoint is kept. Fix: {fix}."
        ) from err
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:  # already gone, or the directory became unreachable: nothing left to clean
                pass


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_GLOBAL = re.compile(r"GLOBAL (\S+)")


def _cause(err: Exception) -> str:
    """The reason in a few words. torch's weights_only message is a page that ends up suggesting
    weights_only=False -- exactly what must not be done with a shared file -- so keep only the
    global the file asked for."""
    text = _ANSI.sub("", str(err)).strip()
    if text.startswith("Weights only load failed"):
        found = _GLOBAL.search(text)
        return f"it asks to run {found.group(1)}, which a safe load refuses" if found else \
            "corrupt, or not a checkpoint"
    first = text.splitlines()[0].split(". ")[0][:160] if text else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def load_checkpoint(path: Path, map_location: str | torch.device | None = "cpu",
                    required: tuple[str, ...] = (), ways_out: str | None = None) -> dict:
    """Read a checkpoint with `torch.load(weights_only=True)`: plain data only, never code.

    Anything that is not a dict holding the `required` keys -- random bytes, a truncated file, a
    pickle that asks for any global outside torch's allowlist -- raises CheckpointError, whose message
    ends with `ways_out` (by default: how to start the run over).
    """
    path = Path(path)
    ways_out = ways_out or (f"move it away to start over, or pass resume=false (which moves it into "
                            f"{path.parent}/previous/)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # untrusted file: any failure of the load means "not a checkpoint"
        raise CheckpointError(f"{path} is not a readable checkpoint ({_cause(err)}); {ways_out}.") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a checkpoint (it holds a {type(state).__name__}); {ways_out}.")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a checkpoint of this trainer (no {', '.join(missing)}); {ways_out}.")
    return state
