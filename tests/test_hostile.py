"""Hostile inputs: crafted or broken files, unusable run directories, signals.

Whatever a shared run directory holds, a run never executes code from it, never loses results
in it, and answers every bad input with one line naming the problem and the fix.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from agents.core import checkpoint as ckpt
from agents.core.checkpoint import (
    CheckpointError,
    NonFiniteError,
    assert_plain,
    first_non_finite,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from agents.core.interrupt import graceful_interrupts
from agents.core.rundir import RunDirError, RunLock, prepare_run_dir

RESUMABLE = ("resume", "device", "threads", "trainer.progress")


def one_line(err: pytest.ExceptionInfo, *must_name: str) -> str:
    msg = str(err.value)
    assert "\n" not in msg.strip(), msg
    for part in must_name:
        assert part in msg, (part, msg)
    return msg


# ==============================================================================================
# Module-level cases: agents/core/checkpoint.py, rundir.py, interrupt.py
# (CLI-level cases go in their own section below.)
# ==============================================================================================

# --- checkpoint.py: loading untrusted files ----------------------------------------------------
class Payload:
    """Unpickling this calls open(marker, "w"), i.e. runs code chosen by the file's author."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("fmt", ["torch_zip", "raw_pickle"])
def test_pickle_payload_is_refused_and_never_runs(tmp_path, fmt):
    marker, path = tmp_path / "pwned", tmp_path / "checkpoint.pt"
    state = {"trainer": {}, "agent": Payload(marker)}
    if fmt == "torch_zip":
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state, protocol=2))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, "cpu")
    one_line(err, str(path), "resume=false", "move it away")
    assert not marker.exists()
    # the payload is live: an unrestricted load runs it (so the assertion above can fail)
    torch.load(path, weights_only=False) if fmt == "torch_zip" else pickle.loads(path.read_bytes())
    assert marker.exists()


def _good_state() -> dict:
    return {"trainer": {"updates": 3, "last_eval": {"offline": {"mean_return": 1.5, "score": None}}},
            "agent": nn.Linear(3, 2).state_dict(), "rng": rng_state()}


@pytest.mark.parametrize("damage", ["truncated", "random_bytes", "empty", "text"])
def test_broken_checkpoint_is_one_line(tmp_path, damage):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, _good_state())
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "random_bytes": os.urandom(4096), "empty": b"",
                      "text": b"model: not a checkpoint\n"}[damage])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, "cpu")
    one_line(err, str(path), "resume=false")


def test_loadable_but_not_a_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, "cpu")
    one_line(err, str(path), "Tensor")
    torch.save({"agent": {}}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, "cpu", required=("trainer", "agent"))
    one_line(err, str(path), "trainer")


# --- checkpoint.py: saving ---------------------------------------------------------------------
def test_every_plain_type_round_trips_through_a_safe_load(tmp_path):
    """What assert_plain accepts must load with weights_only=True (its allowlist is not a guess)."""
    from collections import OrderedDict

    state = {"none": None, "bool": True, "int": 2**100, "float": 0.5, "complex": 1 + 2j, "str": "s", "bytes": b"b",
             "device": torch.device("cpu"), "dtype": torch.float64, "size": torch.Size([2, 3]),
             "param": nn.Parameter(torch.ones(2)), "int_tensor": torch.arange(3), "half": torch.zeros(2).half(),
             "odict": OrderedDict(a=1), "list": [1, (2, 3)], "set": {4, 5}, (1, 2): "tuple key", 7: "int key"}
    assert_plain(state)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, state)
    loaded = load_checkpoint(path, "cpu")
    assert loaded["int"] == 2**100 and loaded["size"] == torch.Size([2, 3]) and loaded[(1, 2)] == "tuple key"
    assert torch.equal(loaded["param"], state["param"]) and loaded["set"] == {4, 5}


@dataclass
class Stats:
    mean: float


@pytest.mark.parametrize("bad, kind", [(np.float64(1.0), "float64"), (np.zeros(2), "ndarray"),
                                       (Stats(1.0), "Stats"), (slice(1, 2), "slice")])
def test_unsafe_state_is_refused_at_save_time(tmp_path, bad, kind):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"v": 1})
    before = path.read_bytes()
    with pytest.raises(CheckpointError) as err:
        save_checkpoint(path, {"trainer": {"last_eval": [{"ok": 1.0}, {"mean": bad}]}})
    one_line(err, "trainer/last_eval[1]/mean", kind)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_state_never_replaces_the_last_good_checkpoint(tmp_path, value):
    path = tmp_path / "checkpoint.pt"
    good = _good_state()
    save_checkpoint(path, good)
    before = path.read_bytes()
    # an Adam state_dict's layout (built by hand: constructing torch.optim imports dynamo, ~10 s)
    opt = {"state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.tensor([0.0, value])}},
           "param_groups": [{"lr": 1e-3, "params": [0]}]}
    diverged = {**good, "opt": opt, "counts": torch.arange(3)}
    with pytest.raises(NonFiniteError) as err:
        save_checkpoint(path, diverged)
    one_line(err, "opt/state/0/exp_avg", str(path))
    assert isinstance(err.value, CheckpointError)  # the CLI catches one family
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


def test_inf_by_design_can_be_exempted_but_nan_elsewhere_cannot(tmp_path):
    path = tmp_path / "checkpoint.pt"
    state = {"world": {"model": {"holdout_mse": torch.full((3,), float("inf"))}}, "agent": {"w": torch.ones(2)}}
    with pytest.raises(NonFiniteError):
        save_checkpoint(path, state)
    save_checkpoint(path, state, allow_non_finite=("world/model/holdout_mse",))
    assert torch.isinf(load_checkpoint(path, "cpu")["world"]["model"]["holdout_mse"]).all()
    state["agent"]["w"][0] = float("nan")
    with pytest.raises(NonFiniteError) as err:
        save_checkpoint(path, state, allow_non_finite=("world/model/holdout_mse",))
    one_line(err, "agent/w")


@pytest.mark.parametrize("failing, code", [("fsync", errno.ENOSPC), ("replace", errno.ENOSPC),
                                           ("mkstemp", errno.EROFS)])
def test_failed_write_keeps_previous_checkpoint_and_leaves_no_temp(tmp_path, monkeypatch, failing, code):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"v": torch.ones(2)})
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    target = {"fsync": (ckpt.os, "fsync"), "replace": (ckpt.os, "replace"), "mkstemp": (ckpt.tempfile, "mkstemp")}
    monkeypatch.setattr(*target[failing], fail)
    with pytest.raises(CheckpointError) as err:
        save_checkpoint(path, {"v": torch.zeros(1000)})
    one_line(err, str(path), os.strerror(code), "Fix:")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


def test_checkpoint_into_a_run_dir_that_is_a_file(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.write_text("not a directory")
    with pytest.raises(CheckpointError) as err:
        save_checkpoint(run_dir / "checkpoint.pt", {"v": 1})
    one_line(err, str(run_dir / "checkpoint.pt"), "hydra.run.dir")
    assert run_dir.read_text() == "not a directory"


def test_checkpoint_into_read_only_dir(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"v": 1})
    before = path.read_bytes()
    tmp_path.chmod(0o555)
    if os.access(tmp_path, os.W_OK):  # root ignores the mode bits: make the kernel's answer explicit

        def denied(*args, **kwargs):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

        monkeypatch.setattr(ckpt.tempfile, "mkstemp", denied)
    try:
        with pytest.raises(CheckpointError) as err:
            save_checkpoint(path, {"v": 2})
    finally:
        tmp_path.chmod(0o755)
    one_line(err, str(path), os.strerror(errno.EACCES), "writable")
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["checkpoint.pt"]


# --- checkpoint.py: RNG state and divergence ---------------------------------------------------
def _draw() -> list:
    return [random.random(), random.gauss(0, 1), *np.random.normal(size=3).tolist(), *torch.randn(3).tolist()]


def test_rng_state_round_trips_exactly_through_a_safe_load(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached second normal in each generator: that state must travel too
    np.random.normal()
    state = rng_state()
    assert state["python"]["gauss_next"] is not None and state["numpy"]["has_gauss"] == 1
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"rng": state})
    expected = _draw()
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(load_checkpoint(path, "cpu")["rng"])
    assert _draw() == expected


def test_first_non_finite_names_the_offender():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    assert first_non_finite(net) is None
    with torch.no_grad():
        net[1].running_var[0] = float("nan")
    assert first_non_finite(net) == "1.running_var"
    with torch.no_grad():
        net[0].bias[1] = float("inf")
    assert first_non_finite(net) == "0.bias"  # parameters before buffers, in module order
    losses = {"loss/actor": torch.tensor(0.5), "loss/count": torch.tensor(3), "loss/critic": float("nan")}
    assert first_non_finite(losses) == "loss/critic"
    assert first_non_finite({"loss/actor": torch.tensor(0.5), "n": torch.tensor(2**40)}) is None


# --- rundir.py: RunLock ------------------------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_owner_is_refused(tmp_path):
    with RunLock(tmp_path / "run") as lock:
        assert json.loads(lock.path.read_text()) == {"pid": os.getpid(), "host": socket.gethostname()}
        with pytest.raises(RunDirError) as err:
            RunLock(tmp_path / "run").__enter__()
        one_line(err, str(tmp_path / "run"), str(os.getpid()))
        assert lock.path.exists()  # the refused second owner did not remove the first one's lock
    assert not lock.path.exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    lock_path = tmp_path / ".lock"
    lock_path.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    with RunLock(tmp_path):
        assert json.loads(lock_path.read_text())["pid"] == os.getpid()
    assert os.listdir(tmp_path) == []


def test_lock_of_another_host_is_not_taken_over(tmp_path):
    """Its PID cannot be checked from here: refuse rather than guess."""
    (tmp_path / ".lock").write_text(json.dumps({"pid": _dead_pid(), "host": "elsewhere.example"}))
    with pytest.raises(RunDirError) as err:
        RunLock(tmp_path).__enter__()
    one_line(err, "elsewhere.example", str(tmp_path / ".lock"))


def test_lock_is_released_on_exception(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), RunLock(tmp_path):
        raise RuntimeError("boom")
    assert not (tmp_path / ".lock").exists()
    with RunLock(tmp_path):
        pass


def test_lock_on_a_file(tmp_path):
    (tmp_path / "run").write_text("x")
    with pytest.raises(RunDirError) as err:
        RunLock(tmp_path / "run").__enter__()
    one_line(err, str(tmp_path / "run"), "is a file")


# --- rundir.py: prepare_run_dir ----------------------------------------------------------------
CFG = "seed: 0\ndevice: cpu\nagent:\n  lr: 0.001\ntrainer:\n  progress: true\n"


def _finished_run(run_dir: Path, cfg: str = CFG, checkpoint: bool = True) -> dict[str, bytes]:
    """A run directory as a finished run leaves it; returns {relative path: content}."""
    files = {"summary.json": b'{"online_score": 42}', "train.csv": b"step,loss\n1,0.5\n",
             "eval.csv": b"step,return\n1,3\n", "tb/events.out": b"\x00tb", "dynamics.pt": b"dyn",
             "run_config.yaml": cfg.encode()}
    if checkpoint:
        files["checkpoint.pt"] = b"ckpt"
    for name, data in files.items():
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_bytes(data)
    return files


def _contents(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("checkpoint", [True, False])
def test_other_config_is_refused_even_without_checkpoint(tmp_path, checkpoint):
    files = _finished_run(tmp_path, checkpoint=checkpoint)
    with pytest.raises(RunDirError) as err:
        prepare_run_dir(tmp_path, CFG.replace("seed: 0", "seed: 1").replace("lr: 0.001", "lr: 0.01"), True,
                        RESUMABLE)
    one_line(err, str(tmp_path), "seed", "agent.lr", "resume=false", "hydra.run.dir")
    assert _contents(tmp_path) == files  # nothing touched


def test_resumable_keys_may_change(tmp_path):
    files = _finished_run(tmp_path)
    new = CFG.replace("device: cpu", "device: cuda").replace("progress: true", "progress: false")
    prepare_run_dir(tmp_path, new, True, RESUMABLE)
    assert _contents(tmp_path) == {**files, "run_config.yaml": new.encode()}  # resumes in place


def test_a_key_on_one_side_only_is_a_difference(tmp_path):
    _finished_run(tmp_path, cfg=CFG + "extra: null\n")
    with pytest.raises(RunDirError) as err:
        prepare_run_dir(tmp_path, CFG, True, RESUMABLE)
    one_line(err, "extra")


@pytest.mark.parametrize("resume, cfg", [(False, CFG.replace("seed: 0", "seed: 1")), (False, CFG),
                                         (True, None)])
def test_starting_over_moves_results_aside(tmp_path, resume, cfg):
    """resume=false, or a resume with nothing to resume from: the old results move, never vanish."""
    files = _finished_run(tmp_path, checkpoint=cfg is not None)
    (tmp_path / "notes.txt").write_text("mine")  # not a run result: stays where it is
    cfg = cfg or CFG
    prepare_run_dir(tmp_path, cfg, resume, RESUMABLE)
    (moved,) = (tmp_path / "previous").iterdir()
    assert _contents(moved) == files
    assert _contents(tmp_path) == {"notes.txt": b"mine", "run_config.yaml": cfg.encode(),
                                   **{f"previous/{moved.name}/{k}": v for k, v in files.items()}}
    # again, within the same second: a second folder, the first one untouched
    _finished_run(tmp_path)
    prepare_run_dir(tmp_path, cfg, False, RESUMABLE)
    assert len(list((tmp_path / "previous").iterdir())) == 2 and _contents(moved) == files


def test_run_dir_that_is_a_file(tmp_path):
    path = tmp_path / "run"
    path.write_text("mine")
    with pytest.raises(RunDirError) as err:
        prepare_run_dir(path, CFG, True, RESUMABLE)
    one_line(err, str(path), "hydra.run.dir")
    assert path.read_text() == "mine"
    with pytest.raises(RunDirError) as err:
        prepare_run_dir(path / "sub", CFG, True, RESUMABLE)  # below a file: ENOTDIR
    one_line(err, str(path / "sub"))


def test_results_without_their_config_are_not_resumed_blindly(tmp_path):
    files = _finished_run(tmp_path)
    (tmp_path / "run_config.yaml").unlink()
    del files["run_config.yaml"]
    with pytest.raises(RunDirError) as err:
        prepare_run_dir(tmp_path, CFG, True, RESUMABLE)
    one_line(err, "run_config.yaml", "resume=false")
    assert _contents(tmp_path) == files


@pytest.mark.parametrize("saved", ["{unclosed: [", "!!python/object/apply:os.system ['touch pwned']", "- a list"])
def test_unreadable_saved_config(tmp_path, saved):
    _finished_run(tmp_path, cfg=saved)
    with pytest.raises(RunDirError) as err:
        prepare_run_dir(tmp_path, CFG, True, RESUMABLE)
    one_line(err, "run_config.yaml", "resume=false")
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_write_failure_is_one_line(tmp_path, monkeypatch):
    import agents.core.rundir as rundir

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(rundir.tempfile, "mkstemp", no_space)
    with pytest.raises(RunDirError) as err:
        prepare_run_dir(tmp_path, CFG, True, RESUMABLE)
    one_line(err, str(tmp_path), "disk space")


# --- interrupt.py --------------------------------------------------------------------------------
def _wait_for(flag) -> None:
    deadline = time.monotonic() + 2.0
    while not flag() and time.monotonic() < deadline:
        time.sleep(0.001)  # the Python-level handler runs between bytecodes of the main thread


@pytest.fixture
def own_handlers():
    """Sentinel handlers installed before the context, so 'restored' is checkable."""
    def sentinel(signum, frame):
        raise AssertionError("sentinel handler ran")

    saved = {s: signal.signal(s, sentinel) for s in (signal.SIGINT, signal.SIGTERM)}
    yield sentinel
    for s, h in saved.items():
        signal.signal(s, h)


def test_sigterm_becomes_a_flag_and_handlers_come_back(own_handlers, capfd):
    with graceful_interrupts() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        _wait_for(lambda: stop.requested)
        assert stop.requested and stop.signal_name == "SIGTERM"
        os.kill(os.getpid(), signal.SIGTERM)  # a repeat while stopping is absorbed
        time.sleep(0.01)
    assert signal.getsignal(signal.SIGTERM) is own_handlers
    assert signal.getsignal(signal.SIGINT) is own_handlers
    assert capfd.readouterr().err.count("SIGTERM: stopping") == 1


def test_second_sigint_force_quits_and_handlers_come_back(own_handlers):
    with pytest.raises(KeyboardInterrupt), graceful_interrupts(announce=False) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        _wait_for(lambda: stop.requested)
        assert stop.signal_name == "SIGINT"
        os.kill(os.getpid(), signal.SIGINT)
        _wait_for(lambda: False)  # KeyboardInterrupt arrives here
    assert signal.getsignal(signal.SIGINT) is own_handlers
    assert signal.getsignal(signal.SIGTERM) is own_handlers
