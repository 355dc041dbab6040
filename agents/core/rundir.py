"""Run directory rules, applied by the CLI before anything else touches the directory.

A run directory belongs to one config and one live process:
- `RunLock` keeps two processes from writing the same directory (a lock left by a dead process
  on this host is taken over);
- `prepare_run_dir` refuses to resume a directory whose results came from another config and
  never deletes results: starting over moves them into `previous/<UTC time>/`.
Every refusal is a `RunDirError` whose message is one line naming the directory and the fix.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


class RunDirError(ValueError):
    """The run directory cannot be used as asked; the message names it and the fix."""


LOCK_NAME = ".lock"
CONFIG_NAME = "run_config.yaml"
PREVIOUS_DIR = "previous"
#: what a run writes; the glob patterns are matched in the run directory itself
RESULT_PATTERNS = ("checkpoint.pt", "switch.pt", "summary.json", "*.csv", "tb", "dynamics.pt", "policies")
SWITCH_FILE = "switch.pt"  # a run at the end of its offline phase (trainer.start_from reads it)


def start_from_tag(start_from: str | None) -> str:
    """What a run's directory name says of `trainer.start_from`: `from=<8 hex>`, a hash of the source run's
    absolute path. The path itself would nest folders and overflow the 255-byte name limit (a source's own
    name is often 100+ characters and may hold slashes itself), so configs/common.yaml leaves the key out of
    hydra's override_dirname and appends this instead; the full path is in run_config.yaml. The same source,
    however the path is spelled (relative, absolute, its switch.pt), gives the same tag, so the same command
    resumes the same run."""
    if start_from is None or str(start_from) == "":
        return ""
    source = Path(os.path.abspath(str(start_from)))
    if source.name == SWITCH_FILE:
        source = source.parent
    digest = hashlib.sha256(str(source).encode()).hexdigest()[:8]
    return f"from={digest}"


def run_name(override_dirname: str, start_from: str | None = None) -> str:
    """A run directory's name: hydra's override_dirname (sorted key=value overrides, configs/common.yaml's
    excluded keys left out) and, for a run that starts from another run's offline phase, start_from_tag."""
    tag = start_from_tag(start_from)
    return ",".join(part for part in (override_dirname, tag) if part)


# configs/common.yaml names run directories with it (hydra resolves hydra.run.dir in the process that imports this)
if not OmegaConf.has_resolver("run_name"):
    OmegaConf.register_new_resolver("run_name", run_name)


def _check_usable(run_dir: Path) -> None:
    """A directory we can create files in (created if missing), else one line saying why not."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} is a file; move it away or pick another hydra.run.dir.")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(f"cannot create run directory {run_dir} ({err.strerror}); pick another hydra.run.dir.") \
            from err
    if not os.access(run_dir, os.W_OK | os.X_OK):  # root passes this; the writes below still catch EROFS
        raise RunDirError(f"run directory {run_dir} is not writable; fix its permissions or pick another "
                          "hydra.run.dir.")


# --- lock -------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """`with RunLock(run_dir):` -- this process is the only one running in `run_dir`.

    The lock is `run_dir/.lock`, created with O_CREAT|O_EXCL (atomic on local and NFSv3+ file
    systems) and holding `{"pid", "host"}`; it is removed on exit, exceptions included.
    """

    def __init__(self, run_dir: Path | str):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.owner = {"pid": os.getpid(), "host": socket.gethostname()}
        self.held = False

    def __enter__(self) -> RunLock:
        _check_usable(self.run_dir)
        for _ in range(3):  # a takeover can race with another process's; retry a few times, then refuse
            if self._create():
                self.held = True
                return self
            holder = self._read()
            if holder == {}:  # released between our create and read
                continue
            if holder is None or holder.get("host") != self.owner["host"] or _pid_alive(holder["pid"]):
                raise RunDirError(self._busy(holder))
            self._take_over(holder)
        raise RunDirError(self._busy(None))

    def __exit__(self, *exc) -> None:
        if self.held and self._read() == self.owner:  # never remove a lock someone else took over
            self.path.unlink(missing_ok=True)
        self.held = False

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as err:
            raise RunDirError(f"cannot lock run directory {self.run_dir} ({err.strerror}); "
                              "fix its permissions or pick another hydra.run.dir.") from err
        with os.fdopen(fd, "w") as f:  # one small write: readers see it whole or (rarely) empty
            f.write(json.dumps(self.owner))
        return True

    def _read(self) -> dict | None:
        """The lock's owner; None if it cannot be read (being written right now, or garbage)."""
        for _ in range(5):  # give a writer between O_EXCL and its write a moment
            try:
                owner = json.loads(self.path.read_text())
                if isinstance(owner, dict) and isinstance(owner.get("pid"), int):
                    return owner
            except FileNotFoundError:
                return {}  # released meanwhile: no owner, `_create` will succeed on the next try
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        return None

    def _take_over(self, stale: dict) -> None:
        # Rename the dead owner's lock aside and check it is still the one we judged dead: a
        # process that took it over between our read and the rename gets its lock back.
        aside = self.run_dir / f"{LOCK_NAME}.stale.{os.getpid()}.{time.monotonic_ns()}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(aside.read_text())
        except (OSError, ValueError):
            moved = None
        if moved == stale:
            aside.unlink(missing_ok=True)
        else:
            os.replace(aside, self.path)

    def _busy(self, holder: dict | None) -> str:
        if holder is None:
            return (f"run directory {self.run_dir} holds a {LOCK_NAME} that cannot be read or taken over; "
                    f"if no run is using the directory, delete {self.path}.")
        where = f"process {holder.get('pid')} on {holder.get('host')}"
        return (f"run directory {self.run_dir} is in use by {where}; wait for it, stop it, or pick another "
                f"hydra.run.dir (if that run is gone, delete {self.path}).")


# --- config and results -----------------------------------------------------------------------
def flat_config(cfg) -> dict:
    """{"a.b.c": value} of a config (a DictConfig or a plain nested dict), interpolations left as written
    (nothing is resolved)."""
    out: dict = {}

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v

    walk(OmegaConf.to_container(cfg) if isinstance(cfg, DictConfig) else cfg, "")
    return out


def config_diff(old_yaml: str, new_yaml: str, resumable_keys: tuple[str, ...] = (),
                defaults_yaml: str | None = None) -> list[str]:
    """Dotted keys whose values differ between two configs, ignoring `resumable_keys` and below.

    A key on one side only differs, even from a null on the other, with one exception: a key the old config
    lacks whose new value is its default in `defaults_yaml` (the schema's defaults). That key was added to the
    package after the old run was made, and its default is what that run did, so the run still resumes."""
    old, new = OmegaConf.create(old_yaml), OmegaConf.create(new_yaml)
    if not (isinstance(old, DictConfig) and isinstance(new, DictConfig)):
        raise ValueError("a run config is a mapping")
    old, new = flat_config(old), flat_config(new)
    defaults = flat_config(OmegaConf.create(defaults_yaml)) if defaults_yaml else {}
    missing = object()

    def resumable(key: str) -> bool:
        return any(key == r or key.startswith(f"{r}.") for r in resumable_keys)

    def added_since(key: str) -> bool:
        return key not in old and key in defaults and new.get(key, missing) == defaults[key]

    return sorted(k for k in old.keys() | new.keys()
                  if not resumable(k) and not added_since(k) and old.get(k, missing) != new.get(k, missing))


def run_results(run_dir: Path) -> list[Path]:
    """The files and folders a run left in `run_dir` (checkpoint and switch, summary, CSVs, tb/, dynamics.pt,
    policies/)."""
    return sorted({p for pattern in RESULT_PATTERNS for p in run_dir.glob(pattern)})


HYDRA_BOOKKEEPING = frozenset({".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml"})


def discard_unstarted(run_dir: Path) -> bool:
    """Remove `run_dir` if it holds nothing but what hydra wrote before the job started (its .hydra/
    copies of the config and an empty job log): a run refused for a bad config or dataset leaves no
    directory behind. Anything else in it (a run_config.yaml, results, a file of the user's) keeps it
    all. Returns whether it was removed."""
    run_dir = Path(run_dir)
    try:
        files = [p for p in run_dir.rglob("*") if not p.is_dir()]
        names = {p.relative_to(run_dir).as_posix() for p in files}
        logs = {n for n in names - HYDRA_BOOKKEEPING if "/" not in n and n.endswith(".log")}
        if not names - logs <= HYDRA_BOOKKEEPING or any((run_dir / n).stat().st_size for n in logs):
            return False
        for p in files:
            p.unlink()
        for d in sorted((p for p in run_dir.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            d.rmdir()
        run_dir.rmdir()
    except OSError:  # unreadable, or something appeared meanwhile: leave it as it is
        return False
    return True


def move_aside(run_dir: Path, paths: list[Path]) -> Path:
    """Move `paths` into a new `run_dir/previous/<UTC time>/`; returns that folder."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = run_dir / PREVIOUS_DIR
    base.mkdir(exist_ok=True)
    for n in range(1000):  # two restarts within one second get distinct folders
        dest = base / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            dest.mkdir()
            break
        except FileExistsError:
            continue
    else:
        raise RunDirError(f"{base} holds 1000 folders named {stamp}*; clean it up.")
    for p in paths:
        os.rename(p, dest / p.name)  # same file system: a rename, never a copy that could fail halfway
    return dest


def prepare_run_dir(run_dir: Path | str, cfg_yaml: str, resume: bool, resumable_keys: tuple[str, ...],
                    defaults_yaml: str | None = None) -> None:
    """Make `run_dir` ready for a run of `cfg_yaml` (already validated); call it under `RunLock`.

    - a path that is a file or not writable: refused;
    - resume=True and the directory holds results of a run with another config (keys outside
      `resumable_keys` differ; a key added since, at its default in `defaults_yaml`, does not): refused,
      whether or not a checkpoint is still there;
    - resume=True with matching results and a checkpoint: left as is, the trainer resumes;
    - otherwise (resume=False, or results but no checkpoint to resume from): the old results and
      their run_config.yaml move into previous/<UTC time>/ -- nothing is ever deleted;
    then run_config.yaml is written (atomically).
    """
    run_dir = Path(run_dir)
    _check_usable(run_dir)
    saved = run_dir / CONFIG_NAME
    try:
        results = run_results(run_dir)
        if resume and results:
            _check_same_config(run_dir, saved, cfg_yaml, resumable_keys, defaults_yaml)
        if results and not (resume and (run_dir / "checkpoint.pt").exists()):
            move_aside(run_dir, results + ([saved] if saved.exists() else []))
        fd, tmp = tempfile.mkstemp(prefix=f".{CONFIG_NAME}.", suffix=".tmp", dir=run_dir)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(cfg_yaml)
            os.replace(tmp, saved)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        hint = "free some disk space" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "fix its permissions"
        raise RunDirError(f"cannot prepare run directory {run_dir} ({err.strerror}: {err.filename}); {hint} or "
                          "pick another hydra.run.dir.") from err


def _check_same_config(run_dir: Path, saved: Path, cfg_yaml: str, resumable_keys: tuple[str, ...],
                       defaults_yaml: str | None) -> None:
    fixes = "resume it with its own config, pick another hydra.run.dir, or pass resume=false to start over"
    if not saved.exists():
        raise RunDirError(f"{run_dir} holds results of a run but no {CONFIG_NAME}, so its config is unknown; "
                          f"pick another hydra.run.dir, or pass resume=false to move them into {PREVIOUS_DIR}/.")
    try:
        diff = config_diff(saved.read_text(), cfg_yaml, resumable_keys, defaults_yaml)
    except Exception as err:  # a file from outside: any YAML/OmegaConf failure means "unreadable"
        raise RunDirError(f"{saved} is not a readable config ({type(err).__name__}); {fixes}.") from err
    if diff:
        shown = ", ".join(diff[:8]) + (f" and {len(diff) - 8} more" if len(diff) > 8 else "")
        raise RunDirError(f"{run_dir} holds a run with a different config (differs in: {shown}); {fixes} "
                          f"(its results move into {PREVIOUS_DIR}/).")
