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
from agents.core.rundir import RunDirError, RunLock, discard_unstarted, prepare_run_dir

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
             "switch.pt": b"switch", "run_config.yaml": cfg.encode()}
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


@pytest.mark.parametrize("new_value, resumes", [("null", True), ("runs/other", False)])
def test_a_key_added_since_the_run_resumes_at_its_default(tmp_path, new_value, resumes):
    """A run made before a config key existed (its run_config.yaml lacks it) resumes when the key is at the
    schema's default (what the old run did), and not at any other value (trainer.start_from, 2026-12-05)."""
    files = _finished_run(tmp_path)
    new = CFG + f"  start_from: {new_value}\n"  # under trainer:
    defaults = "seed: 0\ndevice: cpu\nagent:\n  lr: 0.001\ntrainer:\n  progress: true\n  start_from: null\n"
    if resumes:
        prepare_run_dir(tmp_path, new, True, RESUMABLE, defaults)
        assert _contents(tmp_path) == {**files, "run_config.yaml": new.encode()}  # resumes in place
    else:
        with pytest.raises(RunDirError) as err:
            prepare_run_dir(tmp_path, new, True, RESUMABLE, defaults)
        one_line(err, "trainer.start_from")
        assert _contents(tmp_path) == files
    with pytest.raises(RunDirError):  # without the schema's defaults a missing key is still a difference
        prepare_run_dir(tmp_path, CFG + "  start_from: runs/x\n", True, RESUMABLE)


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


# ==============================================================================================
# CLI-level cases: what a user sees from `python -m agents.<name>` (every new entry point joins)
# ==============================================================================================
from conftest import Pending, agent_cmd, run_cli  # noqa: E402

MARKER_SCRIPT = "the file's author ran code here"


def payload_file(path: Path, marker: Path, wrap: dict | None = None) -> None:
    """A torch file whose unpickling would create `marker`."""
    state = (wrap or {}) | {"agent": Payload(marker)}
    torch.save(state, path)


def copy_run(src: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(src, dest)
    (dest / ".lock").unlink(missing_ok=True)
    return dest


def contents(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != "run_config.yaml"}


def error_line(result) -> str:
    """The run failed with exit 2 and one `error:` line, no traceback."""
    assert result.returncode == 2, result.describe()
    assert "Traceback" not in result.stderr, result.describe()
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.describe()
    return lines[0]


@pytest.fixture(scope="module")
def finished_td3bc(agent_runs) -> Path:
    result = agent_runs["td3bc"].result()
    assert result.returncode == 0, result.describe()
    return result.run_dir


@pytest.fixture(scope="module")
def hostile_cli(tmp_path_factory, finished_td3bc, tiny_dataset_id) -> dict[str, tuple[Pending, Path, dict]]:
    """Every CLI case prepared first, then all started at once (2 cores: they overlap)."""
    root = tmp_path_factory.mktemp("hostile-cli")
    cases: dict[str, tuple[list[str], Path, dict]] = {}

    def td3bc(name: str, run_dir: Path, **overrides) -> None:
        cases[name] = (agent_cmd("td3bc", run_dir, tiny_dataset_id, **overrides), run_dir, {})

    # a crafted checkpoint.pt in a shared run directory
    d = copy_run(finished_td3bc, root / "ckpt-payload")
    payload_file(d / "checkpoint.pt", root / "pwned-ckpt", {"trainer": {}})
    td3bc("ckpt_payload", d)
    # a crafted dynamics model passed as world_model.load_path
    bad_model = root / "dynamics.pt"
    payload_file(bad_model, root / "pwned-dyn")
    cases["dyn_payload"] = (agent_cmd("mopo", root / "dyn", tiny_dataset_id,
                                      **{"world_model.load_path": str(bad_model)}), root / "dyn", {})
    # a crafted behaviour-run checkpoint in the recipe cache (the dataset of a new recipe seed)
    cache = Path(os.environ["O2O_CACHE"]) / "behaviour" / "HalfCheetah-v5-t600-seed11"
    cache.mkdir(parents=True, exist_ok=True)
    payload_file(cache / "checkpoint.pt", root / "pwned-cache", {"trainer": {}})
    cases["cache_payload"] = (agent_cmd("td3bc", root / "cache", None, **{
        "dataset.env_id": "HalfCheetah-v5", "dataset.quality": "medium-replay", "dataset.size": "1000",
        "dataset.train_steps": "600", "dataset.seed": "11"}), root / "cache", {"file": cache / "checkpoint.pt"})
    # a truncated checkpoint
    d = copy_run(finished_td3bc, root / "truncated")
    data = (d / "checkpoint.pt").read_bytes()
    (d / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    td3bc("truncated", d)
    # resume=false plus a bad value elsewhere: validation fails before anything is moved
    d = copy_run(finished_td3bc, root / "typo")
    td3bc("typo", d, resume="false", **{"trainer.batch_size": "0"})
    cases["typo"][2]["before"] = contents(d)
    # results of another config without a checkpoint: refused, not overwritten
    d = copy_run(finished_td3bc, root / "no-ckpt")
    (d / "checkpoint.pt").unlink()
    td3bc("other_seed", d, seed="1")
    cases["other_seed"][2]["before"] = contents(d)
    # resume=false moves the previous run aside
    d = copy_run(finished_td3bc, root / "restart")
    td3bc("restart", d, resume="false")
    cases["restart"][2]["before"] = contents(d)
    # a directory locked by a live process, and one whose owner is dead
    d = root / "locked"
    d.mkdir()
    (d / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    td3bc("locked", d)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    d = root / "stale"
    d.mkdir()
    (d / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    td3bc("stale_lock", d)
    # inputs that are wrong in themselves
    cases["discrete"] = (agent_cmd("sac", root / "cartpole", None, **{
        "dataset": "none", "dataset.env_id": "CartPole-v1", "trainer.offline_updates": "0"}), root / "cartpole", {})
    cases["ensemble_size"] = (agent_cmd("mopo", root / "ens", tiny_dataset_id, **{"world_model.ensemble_size": "0"}),
                              root / "ens", {})
    cases["seed_abc"] = (agent_cmd("td3bc", root / "abc", tiny_dataset_id, seed="abc"), root / "abc", {})
    cases["unquoted"] = (agent_cmd("td3bc", root / "unq", tiny_dataset_id, **{
        "trainer.start_from": "runs/td3bc/experiment=smoke,seed=1"}), root / "unq", {})
    (root / "a-file").write_text("not a directory")
    cases["file_dir"] = (agent_cmd("td3bc", root / "a-file", tiny_dataset_id), root / "a-file", {})
    cases["not_a_model"] = (agent_cmd("mopo", root / "nam", tiny_dataset_id, **{
        "world_model.load_path": str(finished_td3bc / "summary.json")}), root / "nam", {})
    return {k: (Pending(cmd, run_dir).start(), run_dir, extra) for k, (cmd, run_dir, extra) in cases.items()}


def result_of(hostile_cli, name):
    pending, run_dir, extra = hostile_cli[name]
    return pending.result(), run_dir, extra


@pytest.mark.parametrize(("case", "marker", "names"), [
    ("ckpt_payload", "pwned-ckpt", "checkpoint.pt"),
    ("dyn_payload", "pwned-dyn", "world_model.load_path"),
    ("cache_payload", "pwned-cache", "checkpoint.pt"),
])
def test_cli_never_runs_code_from_a_file(hostile_cli, case, marker, names):
    result, run_dir, extra = result_of(hostile_cli, case)
    line = error_line(result)
    assert names in line, line
    if "file" in extra:
        assert str(extra["file"]) in line, line
    assert not (run_dir.parent / marker).exists()


def test_cli_truncated_checkpoint_names_it_and_the_ways_out(hostile_cli):
    result, run_dir, _ = result_of(hostile_cli, "truncated")
    line = error_line(result)
    assert str(run_dir / "checkpoint.pt") in line and "resume=false" in line and "move it away" in line, line


def test_cli_bad_value_with_resume_false_loses_nothing(hostile_cli):
    result, run_dir, extra = result_of(hostile_cli, "typo")
    assert "trainer.batch_size" in error_line(result)
    assert contents(run_dir) == extra["before"] and not (run_dir / "previous").exists()


def test_cli_other_config_refused_even_without_a_checkpoint(hostile_cli):
    result, run_dir, extra = result_of(hostile_cli, "other_seed")
    line = error_line(result)
    assert "seed" in line and "resume=false" in line, line
    assert contents(run_dir) == extra["before"]


def test_cli_resume_false_moves_the_previous_run_aside(hostile_cli):
    result, run_dir, extra = result_of(hostile_cli, "restart")
    assert result.returncode == 0, result.describe()
    [previous] = list((run_dir / "previous").iterdir())
    for name in ("summary.json", "checkpoint.pt", "eval.csv", "train.csv"):
        assert (previous / name).read_bytes() == extra["before"][name], name
    assert json.loads((run_dir / "summary.json").read_text())["updates"] > 0


def test_cli_one_run_per_directory(hostile_cli):
    result, run_dir, _ = result_of(hostile_cli, "locked")
    line = error_line(result)
    assert str(run_dir) in line and str(os.getpid()) in line, line
    result, run_dir, _ = result_of(hostile_cli, "stale_lock")  # a dead owner's lock is taken over
    assert result.returncode == 0, result.describe()
    assert not (run_dir / ".lock").exists()  # released at the end


@pytest.mark.parametrize(("case", "names"), [
    ("discrete", "CartPole-v1"), ("ensemble_size", "world_model.ensemble_size"), ("file_dir", "is a file"),
    ("not_a_model", "world_model.load_path"),
])
def test_cli_bad_input_gets_one_line(hostile_cli, case, names):
    result, run_dir, _ = result_of(hostile_cli, case)
    assert names in error_line(result)
    if case != "file_dir":  # a refused run leaves no directory of hydra's files behind
        assert not run_dir.exists(), sorted(p.name for p in run_dir.rglob("*"))
    assert run_dir.parent.exists()


def test_discard_unstarted_removes_only_hydra_bookkeeping(tmp_path):
    def hydra_dir(name: str) -> Path:
        d = tmp_path / name
        (d / ".hydra").mkdir(parents=True)
        for f in ("config.yaml", "hydra.yaml", "overrides.yaml"):
            (d / ".hydra" / f).write_text("x: 1\n")
        (d / "entry.log").write_text("")
        return d

    assert discard_unstarted(hydra_dir("fresh")) and not (tmp_path / "fresh").exists()
    kept = {"config": "run_config.yaml", "user": "notes.txt", "nested": ".hydra/extra.yaml"}
    for name, extra in kept.items():
        d = hydra_dir(name)
        (d / extra).write_text("mine")
        assert not discard_unstarted(d) and (d / extra).read_text() == "mine", name
    d = hydra_dir("logged")
    (d / "entry.log").write_text("a line a job wrote")
    assert not discard_unstarted(d) and (d / "entry.log").exists()
    assert not discard_unstarted(tmp_path / "missing")


def test_cli_bad_override_type_exits_2_with_one_line(hostile_cli):
    result, _, _ = result_of(hostile_cli, "seed_abc")
    line = error_line(result)
    assert "seed=abc" in line and "Integer" in line, line


def test_cli_unquoted_path_with_equals_names_the_key_and_the_quoting(hostile_cli):
    """A run directory's path holds `=` (its overrides): unquoted, hydra's own message names neither the key
    nor the fix."""
    result, run_dir, _ = result_of(hostile_cli, "unquoted")
    line = error_line(result)
    assert "trainer.start_from=runs/td3bc/experiment=smoke,seed=1" in line and "quote it" in line, line
    assert "\"trainer.start_from='runs/td3bc/experiment=smoke,seed=1'\"" in line, line
    assert not run_dir.exists()


def test_cli_sigterm_checkpoints_and_resumes(tmp_path, tiny_dataset_id):
    """SLURM's SIGTERM mid-run: a checkpoint at that step, one line on how to resume, then the
    same command finishes the run."""
    budget = {"trainer.offline_updates": "3000", "trainer.checkpoint_every": "100000", "trainer.eval_every": "100000",
              "trainer.log_every": "10", "trainer.online_steps": "20", "agent.hidden": "[64,64]"}
    cmd = agent_cmd("td3bc", tmp_path, tiny_dataset_id, **budget)
    pending = Pending(cmd, tmp_path).start()
    deadline = time.time() + 120
    while not (tmp_path / "train.csv").exists() or len((tmp_path / "train.csv").read_text().splitlines()) < 3:
        assert time.time() < deadline and pending.proc.poll() is None, pending.result().describe()
        time.sleep(0.2)
    pending.proc.send_signal(signal.SIGTERM)
    result = pending.result()
    assert result.returncode == 128 + signal.SIGTERM, result.describe()
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "SIGTERM" in last and "resume" in last, last
    state = load_checkpoint(tmp_path / "checkpoint.pt", "cpu")
    stopped_at = state["trainer"]["offline_updates"]
    assert 0 < stopped_at < 3000  # written at the interrupt, not at a checkpoint_every boundary
    again = Pending(cmd, tmp_path).start().result()
    assert again.returncode == 0, again.describe()
    assert json.loads((tmp_path / "summary.json").read_text())["updates"] == 3000 + 20


# --- divergence (in-process: a real run cannot be made to diverge on cue) -----------------------
def test_diverging_run_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    from agents.core.agent import EnvSpec
    from agents.core.config import TrainerConfig
    from agents.core.trainer import DivergedError, Trainer
    from agents.td3bc import TD3BC, TD3BCConfig
    from worldmodels.data.store import TransitionStore

    class Diverging(TD3BC):
        def update(self, batch, progress):
            info = super().update(batch, progress)
            if progress.updates >= 25:  # the critic blows up after 25 updates
                with torch.no_grad():
                    self.critic.head.weight.fill_(float("nan"))
                info["loss/critic"] = torch.tensor(float("nan"))
            return info

    g = torch.Generator().manual_seed(0)
    store = TransitionStore.from_tensors({"obs": torch.randn(64, 3, generator=g), "act": torch.rand(64, 2) * 2 - 1,
                                          "rew": torch.randn(64), "next_obs": torch.randn(64, 3),
                                          "terminal": torch.zeros(64), "truncated": torch.zeros(64)})
    agent = Diverging(TD3BCConfig(hidden=[8]), EnvSpec(3, 2, -torch.ones(2), torch.ones(2)), torch.device("cpu"))
    cfg = TrainerConfig(offline_updates=100, online_steps=0, batch_size=16, eval_every=10**6, log_every=30,
                        checkpoint_every=20, progress=False)
    trainer = Trainer(agent, cfg, lambda: None, store, tmp_path, tensorboard=False)
    trainer.evaluate = lambda phase: None
    with pytest.raises(DivergedError) as err:
        trainer.run()
    one_line(err, "loss/critic", "update 30", "last good checkpoint")
    kept = load_checkpoint(tmp_path / "checkpoint.pt", "cpu")
    assert kept["trainer"]["offline_updates"] == 20  # the checkpoint before the divergence, untouched
    assert first_non_finite({k: v for k, v in kept["agent"].items() if isinstance(v, torch.Tensor)}) is None


# --- a signal while a recipe's behaviour run trains ------------------------------------------------
def test_sigterm_during_the_behaviour_run_writes_no_dataset_and_resumes(tmp_path):
    """A dataset built from part of the behaviour run would carry the full run's name: a signal must
    leave no dataset, and the same command must finish the run and build it."""
    from worldmodels.data.minari_load import dataset_exists
    from worldmodels.data.recipes import Recipe, cache_root

    recipe = Recipe("HalfCheetah-v5", "medium-replay", size=500, train_steps=1200, seed=7)  # used by no other test
    cmd = [sys.executable, "-m", "agents.tools.make_dataset", *(f"{k}={v}" for k, v in vars(recipe).items())]
    log = cache_root() / "behaviour" / "HalfCheetah-v5-t1200-seed7" / "train.csv"
    pending = Pending(cmd).start()
    deadline = time.time() + 240
    while not log.exists() or len(log.read_text().splitlines()) < 2:  # the first log row: 1000 env steps done
        assert time.time() < deadline and pending.proc.poll() is None, pending.result().describe()
        time.sleep(0.2)
    pending.proc.send_signal(signal.SIGTERM)
    result = pending.result()
    assert result.returncode == 128 + signal.SIGTERM, result.describe()
    last = result.stderr.strip().splitlines()[-1]
    assert "SIGTERM" in last and "of 1200" in last and "resume" in last, last
    assert not dataset_exists(recipe.dataset_id)
    again = run_cli(cmd)
    assert again.returncode == 0, again.describe()
    assert again.stdout.strip().splitlines()[-1] == recipe.dataset_id and dataset_exists(recipe.dataset_id)
