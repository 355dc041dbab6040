"""Shared test setup: an isolated data/cache location, one tiny recipe dataset per session,
and helpers that run the agents' hydra entry points as subprocesses.

Nothing here (or in any test) may touch ~/.minari or ~/.cache: both locations are pointed at
a per-session temporary directory *before* anything imports minari.

Speed (2 shared CPU cores): agent CLI runs are started in the background as soon as the
session begins, so they overlap with the in-process tests; the tests that assert on their
results run last (see `pytest_collection_modifyitems`).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# --- environment: must happen at import time, before minari / torch are imported ------------
SESSION_ROOT = Path(tempfile.mkdtemp(prefix="o2o-tests-"))
os.environ["MINARI_DATASETS_PATH"] = str(SESSION_ROOT / "minari")
os.environ["O2O_CACHE"] = str(SESSION_ROOT / "cache")
os.environ["HF_HUB_OFFLINE"] = "1"  # a missing dataset id must never turn into a network download
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
# Byte-compile into the session dir (never into the repo or the venv): the subprocesses below
# then reuse what this process compiled instead of recompiling torch on every start (the
# environment sets PYTHONDONTWRITEBYTECODE, which costs ~5 s per subprocess otherwise).
PYCACHE = SESSION_ROOT / "pycache"
sys.pycache_prefix = str(PYCACHE)
sys.dont_write_bytecode = False
atexit.register(shutil.rmtree, SESSION_ROOT, ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_RECIPE = dict(env_id="HalfCheetah-v5", quality="medium-replay", size=1000, train_steps=600, seed=0)
# A valid Minari id that is never built: used where a run must fail before touching data.
MISSING_DATASET_ID = "o2o/tests/does-not-exist-v0"

#: tiny budgets for `python -m agents.<name>` (the brief's smoke overrides)
TINY_BUDGET = {
    "experiment": "smoke",
    "trainer.offline_updates": "60",
    "trainer.online_steps": "60",
    "trainer.eval_every": "60",
    "trainer.eval_episodes": "1",
    "trainer.log_every": "20",
    "trainer.checkpoint_every": "30",
    "trainer.progress": "false",
}
#: online-only agents start with `warmup_steps` (500 in their configs) of random actions; 20
#: keeps some real updates inside the 60-step budget
ONLINE_ONLY = {"td3": {"trainer.warmup_steps": "20", "trainer.offline_updates": "0"},
               "sac": {"trainer.warmup_steps": "20", "trainer.offline_updates": "0"}}
#: model-based agents: a few seconds of model fitting and small rollout rounds every 30 updates
_MODEL = {"world_model.fit_max_epochs": "5", "world_model.hidden": "[64,64]", "rollout.num_starts": "64",
          "rollout.every": "30"}
MODEL_BASED = {"mopo": _MODEL, "moore": _MODEL | {"world_model.refit_every": "30"}}
AGENT_OVERRIDES = ONLINE_ONLY | MODEL_BASED
AGENTS = ("bc", "td3", "td3bc", "sac", "mopo", "moore")


# --- subprocess helpers -----------------------------------------------------------------------
def cli_env() -> dict[str, str]:
    env = os.environ.copy()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    return env


def agent_cmd(name: str, run_dir: Path, dataset_id: str | None, **overrides: str) -> list[str]:
    """`python -m agents.<name>` with the tiny budget; keyword overrides replace/add keys
    (write dotted keys as `**{"trainer.batch_size": "128"}`)."""
    args = dict(TINY_BUDGET) | AGENT_OVERRIDES.get(name, {})
    if dataset_id is not None:
        args["dataset.id"] = dataset_id
    args |= overrides
    args["hydra.run.dir"] = str(run_dir)
    return [sys.executable, "-m", f"agents.{name}", *(f"{k}={v}" for k, v in args.items())]


@dataclass
class CliResult:
    cmd: list[str]
    returncode: int
    stdout: str
    stderr: str
    run_dir: Path | None = None

    @property
    def summary(self) -> dict:
        assert self.run_dir is not None
        return json.loads((self.run_dir / "summary.json").read_text())

    def describe(self) -> str:
        return f"cmd: {' '.join(self.cmd)}\nexit {self.returncode}\nstdout:\n{self.stdout[-3000:]}\n" \
               f"stderr:\n{self.stderr[-3000:]}"


_STARTED: list[Pending] = []


@dataclass
class Pending:
    """A CLI run started in the background; `result()` waits for it (once)."""

    cmd: list[str]
    run_dir: Path | None = None
    timeout: float = 300
    proc: subprocess.Popen | None = None
    _result: CliResult | None = field(default=None, repr=False)

    def start(self) -> Pending:
        self.proc = subprocess.Popen(self.cmd, cwd=REPO_ROOT, env=cli_env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        _STARTED.append(self)
        return self

    def result(self) -> CliResult:
        if self._result is None:
            try:
                out, err = self.proc.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, err = self.proc.communicate()
                raise AssertionError(
                    f"timed out after {self.timeout} s: {' '.join(self.cmd)}\n{err[-3000:]}") from None
            self._result = CliResult(self.cmd, self.proc.returncode, out, err, self.run_dir)
        return self._result


def run_cli(cmd: list[str], run_dir: Path | None = None, timeout: float = 300) -> CliResult:
    return Pending(cmd, run_dir, timeout).start().result()


def run_agent(name: str, run_dir: Path, dataset_id: str | None, **overrides: str) -> CliResult:
    """Run an agent's hydra entry to completion in a subprocess (see `agent_cmd`)."""
    return run_cli(agent_cmd(name, run_dir, dataset_id, **overrides), run_dir)


def assert_same_state(a, b, path: str = "agent") -> None:
    """Bitwise equality of nested state (tensors, dicts, lists, plain values)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            assert_same_state(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


# --- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    """Session-scoped scratch directory for run directories."""
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def tiny_dataset_id() -> str:
    """A tiny D4RL-style HalfCheetah medium-replay dataset, built once per session (~25 s)."""
    from agents.core.behaviour import SACBehaviour
    from worldmodels.data.recipes import Recipe, build

    return build(Recipe(**TINY_RECIPE), SACBehaviour(), device="cpu", progress=False)


@pytest.fixture(scope="session")
def nan_rewards_dataset_id() -> str:
    """A HalfCheetah dataset whose rewards contain a NaN (written through the package writer)."""
    import gymnasium as gym
    import numpy as np

    from worldmodels.data.minari_write import write_minari_dataset

    env = gym.make("HalfCheetah-v5")
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    observations, actions, rewards = [obs], [], []
    for _ in range(10):
        act = rng.uniform(env.action_space.low, env.action_space.high).astype(np.float32)
        obs, rew, *_ = env.step(act)
        observations.append(obs)
        actions.append(act)
        rewards.append(rew)
    env.close()
    rewards[3] = float("nan")
    episode = {"observations": np.array(observations), "actions": np.array(actions),
               "rewards": np.array(rewards), "terminations": np.zeros(10, bool),
               "truncations": np.eye(10, dtype=bool)[-1]}
    return write_minari_dataset("o2o/tests/nan-rewards-v0", "HalfCheetah-v5", [episode], -300.0, 1000.0)


@pytest.fixture(scope="session")
def cli_error_runs(session_dir, nan_rewards_dataset_id) -> dict[str, Pending]:
    """CLI calls that must fail with a clear message, all started at once (none needs the tiny dataset)."""
    d = session_dir / "errors"
    runs = {
        "missing_id": Pending(agent_cmd("td3bc", d / "missing_id", MISSING_DATASET_ID), d / "missing_id"),
        "offline_share": Pending(agent_cmd("td3bc", d / "share", MISSING_DATASET_ID,
                                           **{"sampler.offline_share": "1.5"}), d / "share"),
        "device": Pending(agent_cmd("td3bc", d / "device", MISSING_DATASET_ID, device="tpu"), d / "device"),
        "nan_rewards": Pending(agent_cmd("td3bc", d / "nan", nan_rewards_dataset_id), d / "nan"),
        "make_quality": Pending([sys.executable, "-m", "agents.tools.make_dataset", "env_id=HalfCheetah-v5",
                                 "quality=bogus"]),
    }
    return {k: p.start() for k, p in runs.items()}


@pytest.fixture(scope="session")
def agent_runs(session_dir, tiny_dataset_id) -> dict[str, Pending]:
    """`python -m agents.<name>` for bc, td3, td3bc, sac on the tiny dataset, started together."""
    return {name: Pending(agent_cmd(name, session_dir / f"cli-{name}", tiny_dataset_id),
                          session_dir / f"cli-{name}").start() for name in AGENTS}


@pytest.fixture(scope="session", autouse=True)
def _start_background_runs(request):
    """Start the subprocess runs the selected tests need before the first test, so they run
    while the in-process tests do (errors first: they overlap with the dataset build)."""
    files = {item.path.name for item in request.session.items}
    if "test_agents_e2e.py" in files:
        request.getfixturevalue("cli_error_runs")
    if files & {"test_agents_e2e.py", "test_trainer.py", "test_hostile.py"}:
        request.getfixturevalue("agent_runs")
    yield
    for p in _STARTED:  # never leave a process behind (e.g. after a failing or interrupted test)
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.communicate()


def pytest_collection_modifyitems(session, config, items):
    # tests that wait on the background CLI runs go last (stable sort keeps the rest in order)
    last = {"test_trainer.py": 1, "test_agents_e2e.py": 2, "test_hostile.py": 3}
    items.sort(key=lambda item: last.get(item.path.name, 0))


# --- stand-ins for critics and actors in hand-checked targets (REDQ, UPQ) ----------------------------
class FixedCritics(torch.nn.Module):
    """Critic i answers values[i] for every (s, a): [N, B]; with `members` only those critics: [M, B]."""

    def __init__(self, values):
        super().__init__()
        self.register_buffer("values", torch.tensor(values))
        self.num_critics = len(values)

    def forward(self, obs, act, members=None):
        values = self.values if members is None else self.values.index_select(0, members)
        return values[:, None].expand(-1, obs.shape[0])


class FixedActor(torch.nn.Module):
    """a' = 0 and log pi(a'|s') = -2, as a single actor and as Off2On's mixture."""

    def __init__(self, act_dim: int):
        super().__init__()
        self.act_dim = act_dim

    def forward(self, obs, deterministic=False):
        return torch.zeros(obs.shape[0], self.act_dim), torch.full((obs.shape[0],), -2.0)

    mixture = forward

