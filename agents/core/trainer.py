"""The loop every agent shares: offline phase -> online phase, with evaluation, logs and
exact-resume checkpoints.

Offline: `offline_updates` updates. Online: `online_steps` env steps; after each (past
`warmup_steps`) `updates_per_step` updates. Every batch comes from one `BatchSampler`
(worldmodels/data/samplers.py, the `sampler=` config group), which holds the three sources
(offline store, online store, the world model's store of imagined rows) and decides each
batch's composition from the run's progress. Evaluations every `eval_every` updates/steps and at
the end of each phase.

Agents see progress only as `Progress` values: `update(batch, progress)`, `on_phase(progress)`
at the start of every phase (fresh start or resume), `on_episode_end(episode, progress)`.

A checkpoint holds the agent (networks, optimizers, schedulers, counters), the online store,
the sampler's state, the world model, the env's simulator state, every RNG and the log row
counts, and is written atomically; a run started again in the same directory continues from it
and reproduces the uninterrupted run exactly.

When its offline phase ends, a run also writes `switch.pt`: that checkpoint plus the offline logs and
what the run was (seed, dataset, offline budget, sampler). Another run with `trainer.start_from=<that
run's directory>` starts from it and goes online with its own config; with the same config it makes
the source run's online phase exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from agents.core.agent import Agent, update_autocast
from agents.core.checkpoint import (
    CheckpointError,
    NonFiniteError,
    first_non_finite,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from agents.core.config import TrainerConfig
from agents.core.interrupt import graceful_interrupts
from agents.core.logging import RunLogger, scalars
from agents.core.rundir import SWITCH_FILE
from worldmodels.data.fields import add_fields, fill_episode, fill_offline
from worldmodels.data.samplers import SamplerConfig, Sources, make_sampler, online_seed_reserve
from worldmodels.data.store import Batch, TransitionStore
from worldmodels.envs import get_env_state, run_episodes, set_env_state
from worldmodels.progress import EpisodeEnd, Progress
from worldmodels.world import WorldModel, store_fit_data

POLICIES_DIR = "policies"  # trainer.keep_policies: the agent at every evaluation, <global step>.pt
# tensors a checkpoint may hold non-finite: the dynamics ensemble's holdout error is inf by design until its first fit
NON_FINITE_BY_DESIGN = ("world/model/holdout_mse",)


@dataclass
class EvalResult:
    phase: str
    mean_return: float
    std_return: float
    normalized_score: float | None


@dataclass
class TrainerState:
    offline_updates: int = 0
    env_steps: int = 0
    updates: int = 0
    evaluations: int = 0
    episodes: int = 0
    episode_return: float = 0.0
    episode_length: int = 0
    episode_start_row: int = 0  # the online store row where the current episode began
    last_score: float | None = None  # normalized score of the latest evaluation
    online_started: bool = False
    done: bool = False
    seconds: float = 0.0
    last_eval: dict[str, dict] = field(default_factory=dict)  # phase -> EvalResult fields


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def read_csv_text(path: Path) -> str:
    """A log file's text with its line endings as the csv module wrote them (\\r\\n), so a copy is byte-identical."""
    with path.open(newline="") as f:
        return f.read()


def first_line(err: BaseException) -> str:
    """An exception's message cut to its first line (200 characters), for one-line errors."""
    return str(err).splitlines()[0][:200] if str(err) else ""


class DivergedError(NonFiniteError):
    """A loss or parameter became NaN/inf; the last good checkpoint is kept."""


class Trainer:
    def __init__(
        self,
        agent: Agent,
        cfg: TrainerConfig,
        env_fn: Callable[[], gym.Env],
        offline: TransitionStore | None,
        run_dir: Path | str,
        seed: int = 0,
        ref_scores: tuple[float | None, float | None] = (None, None),
        summary_extra: dict | None = None,
        tensorboard: bool = True,
        world: WorldModel | None = None,
        sampler: SamplerConfig | None = None,
    ):
        self.agent, self.cfg, self.env_fn, self.offline = agent, cfg, env_fn, offline
        self.run_dir = Path(run_dir)
        self.seed, self.ref_scores = seed, ref_scores
        self.summary_extra = summary_extra or {}
        self.device = agent.device
        self.state = TrainerState()
        if cfg.offline_updates > 0 and offline is None:
            raise ValueError(f"trainer.offline_updates={cfg.offline_updates} but no offline dataset was given.")
        self.env = env_fn()
        spec = agent.spec
        sampler = sampler or SamplerConfig()
        self.sampler_cfg = sampler
        # room for every online step, plus the top dataset episodes when they seed the store (ACA)
        capacity = max(cfg.online_steps, 1) + (online_seed_reserve(sampler, offline) if cfg.online_steps else 0)
        self.online = TransitionStore(capacity, spec.obs_dim, spec.act_dim, self.device, source="online")
        self.world = world  # None or null: model-free, rollouts never run
        # every store fills the per-transition fields the agent declared (Cal-QL's return-to-go)
        self.fields = agent.transition_fields()
        for store in (offline, self.online, self.world.store if self.model_based else None):
            if store is not None:
                add_fields(store, self.fields)
        if offline is not None and self.fields:
            fill_offline(offline, self.fields)
        sources = Sources(offline, self.online, self.world.store if self.model_based else None)
        real_ratio = self.world.rollout_cfg.real_ratio if self.model_based and self.world.imagines else 1.0
        self.sampler = make_sampler(sampler, sources, real_ratio)
        self.obs: np.ndarray | None = None
        self.on_evaluate: list[Callable[[Trainer, EvalResult], None]] = []  # e.g. policy snapshots
        self.stop_after: int | None = None  # testing aid: stop (as if killed) after this many checkpoints
        self._checkpoints_written = 0
        self._info: dict = {}  # the latest update's metrics (logged every log_every)
        self.stop = graceful_interrupts(announce=False)  # active while run() runs
        self.interrupted: str | None = None  # the signal that stopped the run (SIGINT, SIGTERM), if any
        self.tensorboard = tensorboard
        self._first_rows: torch.Tensor | None = None  # offline_first_rows, computed on first use

    # --- public ---------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def run(self) -> dict:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(self.seed)
        resumed = self.checkpoint_path.exists() and self.load_checkpoint()
        branched = not resumed and self.cfg.start_from is not None and self.start_from_switch()
        # A fresh start in a used directory (killed before its first checkpoint) drops the old
        # rows; a resume (or a start from another run's switch) drops only the rows written after its checkpoint.
        continued = resumed or branched
        self.logger = RunLogger(self.run_dir, self.tensorboard, purge_step=self.global_step if continued else 0)
        self.logger.truncate(self._log_rows if continued else {})
        if self.state.done:
            self.logger.close()
            return self.write_summary()
        if not continued and self.offline is not None:
            self.agent.on_offline_start(self.offline)
        total = (self.cfg.offline_updates if self.offline is not None else 0) + self.cfg.online_steps
        self.bar = tqdm(total=total, initial=self.global_step, disable=not self.cfg.progress,
                        desc=type(self.agent).__name__, dynamic_ncols=True,
                        mininterval=0.2 if sys.stderr.isatty() else 30.0)  # logs stay readable
        self._clock = time.perf_counter()
        try:
            with self.stop:  # Ctrl-C / SIGTERM: checkpoint at the next step, then stop
                if self.offline is not None and not self.offline_phase():
                    return {}
                if self.offline is not None and self.cfg.offline_updates and not self.state.online_started \
                        and not branched:  # (a run started from another's switch has that run's)
                    self.save_switch()
                if not self.online_phase():
                    return {}
                self.state.done = True
                self.save_checkpoint()
        finally:
            self.bar.close()
            self.logger.close()
        return self.write_summary()

    def progress(self) -> Progress:
        st = self.state
        return Progress("online" if st.online_started else "offline", st.offline_updates, st.env_steps, st.updates,
                        self.cfg.offline_updates, self.cfg.online_steps, st.last_score)

    @property
    def global_step(self) -> int:
        """Monotonic across phases: offline updates, then env steps (the x-axis of the logs)."""
        return self.state.offline_updates + self.state.env_steps

    # --- phases ---------------------------------------------------------------------
    def offline_phase(self) -> bool:
        cfg, st = self.cfg, self.state
        if st.offline_updates >= cfg.offline_updates:
            return True
        self.agent.on_phase(self.progress())
        if self.model_based and not self.world.fitted:
            self.fit_world(store_fit_data(self.offline))
        while st.offline_updates < cfg.offline_updates:
            self.train_step()
            st.offline_updates += 1
            self.bar.update(1)
            if st.offline_updates % cfg.log_every == 0:
                self.log_train(0)
            if st.offline_updates % cfg.eval_every == 0 or st.offline_updates == cfg.offline_updates:
                self.evaluate("offline")
            if st.offline_updates % cfg.checkpoint_every == 0 and not self.checkpoint_and_continue():
                return False
            if self.stop.requested:
                return self.interrupt()
        return True

    def online_phase(self) -> bool:
        cfg, st = self.cfg, self.state
        if cfg.online_steps == 0:
            return True
        first = not st.online_started
        st.online_started = True
        self.agent.on_phase(self.progress())  # on a fresh start and on resume alike: hooks are idempotent
        if first:
            self.sampler.seed_online()  # offline rows copied into the online store (sampler.online_seed_*)
            st.episode_start_row = self.online.cursor
            self.obs, _ = self.env.reset(seed=self.seed)
        self._info = {}
        while st.env_steps < cfg.online_steps:
            self.env_step()
            if self.model_based and self.world.cfg.refit_every and st.env_steps % self.world.cfg.refit_every == 0:
                self.refit_world()
                if self.world.after_refit():
                    self.rollout()
            if st.env_steps > cfg.warmup_steps and self.sampler.ready(self.progress()):
                for _ in range(cfg.updates_per_step):
                    self.train_step()
            self.bar.update(1)
            if st.env_steps % cfg.log_every == 0 and self._info:
                self.log_train(1)
            if st.env_steps % cfg.eval_every == 0 or st.env_steps == cfg.online_steps:
                self.evaluate("online")
            if st.env_steps % cfg.checkpoint_every == 0 and not self.checkpoint_and_continue():
                return False
            if self.stop.requested:
                return self.interrupt()
        return True

    def log_train(self, phase: int) -> None:
        """Log the latest update's metrics; a non-finite loss stops the run here (one host sync
        per log_every updates, none in between)."""
        row = scalars(self._info)
        bad = next((k for k, v in row.items() if not math.isfinite(v)), None)
        if bad is not None:
            raise DivergedError(f"the run diverged: {bad} = {row[bad]} at update {self.state.updates}; "
                                f"{self.last_good()}")
        self.logger.log("train", self.global_step, {"phase": phase} | row)

    def last_good(self) -> str:
        if self.checkpoint_path.exists():
            return (f"the last good checkpoint {self.checkpoint_path} is kept: resume from it with a smaller learning "
                    "rate (or another seed and resume=false)")
        return "no checkpoint was written before it; try a smaller learning rate or another seed"

    def interrupt(self) -> bool:
        """Stop at a signal: checkpoint now (atomically), so the same command resumes from here."""
        self.save_checkpoint()
        self.interrupted = self.stop.signal_name
        return False

    def train_step(self) -> None:
        """One gradient update on one batch; the sampler may read the update's priorities back."""
        progress = self.progress()
        if self.model_based and self.world.due(self.state.updates, progress.online):
            self.rollout()
        batch = self.sampler.sample(self.cfg.batch_size, progress)
        with update_autocast(self.device, self.cfg.precision):  # trainer.precision
            info = self.agent.update(batch, progress)
        self.sampler.after_update(batch, info)
        self._info = info
        self.state.updates += 1

    # --- world model ------------------------------------------------------------------
    @property
    def model_based(self) -> bool:
        return self.world is not None and not self.world.null

    def fit_world(self, data: dict, weights=None) -> None:
        report = self.world.fit(data, weights)
        self.world.model.save(self.run_dir / "dynamics.pt")  # reusable: world_model.load_path=...
        self.logger.log("model", self.global_step, {
            "holdout_mse_elites": sum(report.holdout_mse[i] for i in report.elite_indices) / len(report.elite_indices),
            "epochs": report.epochs, "seconds": report.seconds, "transitions": len(data["obs"])})

    def refit_world(self) -> None:
        """Fit on the real data the sampler trains on (offline rows only where it draws them),
        weighted as it draws them (MOORe's priorities)."""
        progress = self.progress()
        offline = self.offline if self.sampler.uses_offline(progress) else None
        if (len(offline) if offline is not None else 0) + len(self.online) == 0:
            return
        self.fit_world(store_fit_data(offline, self.online),
                       self.sampler.fit_weights(progress) if offline is not None else None)

    def rollout(self) -> None:
        if not self.world.fitted:
            # an online-only run (offline_updates=0) fits on the real data there is before its first rollout
            self.refit_world()
        progress = self.progress()
        self.world.generate(lambda o: self.agent.act(o), lambda n: self.sampler.sample_real(n, progress),
                            self.initial_states if self.offline_first_rows is not None else None)
        self.logger.log("model", self.global_step, self.world.metrics())

    def initial_states(self, m: int) -> Batch:
        """m of the offline data's episode first states, drawn uniformly (rollout.initial_state_share)."""
        first = self.offline_first_rows
        return self.offline.gather(first[torch.randint(len(first), (m,), device=first.device)])

    @property
    def offline_first_rows(self) -> torch.Tensor | None:
        """Rows of the offline store that begin a logged episode: row 0 and each row after a terminal or a cut."""
        if self.offline is None or len(self.offline) == 0:
            return None
        if self._first_rows is None:  # the offline store never wraps: its rows are the dataset's, in order
            rows = self.offline.valid()
            ends = (rows["terminal"] > 0) | (rows["truncated"] > 0)  # [N]
            starts = torch.cat([torch.ones(1, dtype=torch.bool, device=ends.device), ends[:-1]])
            self._first_rows = torch.nonzero(starts).squeeze(1)
        return self._first_rows

    def env_step(self) -> None:
        st = self.state
        obs_t = torch.as_tensor(self.obs, dtype=torch.float32, device=self.device).unsqueeze(0)
        if st.env_steps < self.cfg.warmup_steps:
            act_t = self.agent.random_action(1)
        else:
            act_t = self.agent.act(obs_t)
        act = act_t[0].cpu().numpy()
        next_obs, rew, term, trunc, _ = self.env.step(act)
        rows = self.online.add(
            obs=obs_t, act=act_t, rew=torch.tensor([rew]), next_obs=torch.as_tensor(next_obs).unsqueeze(0),
            terminal=torch.tensor([float(term)]), truncated=torch.tensor([float(trunc and not term)]),
        )
        self.sampler.rows_added("online", rows)
        st.env_steps += 1
        st.episode_return += float(rew)
        st.episode_length += 1
        self.obs = next_obs
        if term or trunc:
            rows = (torch.arange(st.episode_length, device=self.device) + st.episode_start_row) % self.online.capacity
            if self.fields:
                fill_episode(self.online, rows, self.fields)
            episode = EpisodeEnd(st.episode_return, self.normalized(st.episode_return), st.episode_length, rows,
                                 bool(term))
            self.agent.on_episode_end(episode, self.progress())
            st.episode_start_row = self.online.cursor
            self.logger.log("episodes", self.global_step,
                            {"return": st.episode_return, "length": st.episode_length, "env_steps": st.env_steps})
            st.episodes += 1
            st.episode_return, st.episode_length = 0.0, 0
            self.obs, _ = self.env.reset()

    # --- evaluation -----------------------------------------------------------------
    def normalized(self, ret: float) -> float | None:
        lo, hi = self.ref_scores
        if lo is None or hi is None or hi == lo:
            return None
        return 100.0 * (ret - lo) / (hi - lo)

    def evaluate(self, phase: str) -> EvalResult:
        # A seed per evaluation, disjoint from training seeds, and no use of the global RNG
        # stream beyond what the policy consumes (deterministic actions consume none).
        seed = 10_000_000 + 1_000 * self.seed + self.cfg.eval_episodes * self.state.evaluations
        results = run_episodes(self.env_fn, lambda o: self.agent.act(o, deterministic=True),
                               self.cfg.eval_episodes, seed, self.device)
        mean = float(results.returns.mean())
        result = EvalResult(phase, mean, float(results.returns.std()), self.normalized(mean))
        self.state.evaluations += 1
        self.state.last_eval[phase] = result.__dict__
        self.state.last_score = result.normalized_score
        row = {"phase": 0 if phase == "offline" else 1, "return": mean, "return_std": result.std_return,
               "offline_updates": self.state.offline_updates, "env_steps": self.state.env_steps,
               "updates": self.state.updates}
        if result.normalized_score is not None:
            row["normalized_score"] = result.normalized_score
        self.logger.log("eval", self.global_step, row)
        self.logger.flush()
        score = f"{result.normalized_score:.1f}" if result.normalized_score is not None else "n/a"
        self.bar.set_postfix_str(f"{phase} return {mean:.1f} score {score}")
        if self.cfg.keep_policies:
            (self.run_dir / POLICIES_DIR).mkdir(exist_ok=True)
            save_checkpoint(self.run_dir / POLICIES_DIR / f"{self.global_step:09d}.pt",
                            {"agent": self.agent.state_dict(), "offline_updates": self.state.offline_updates,
                             "env_steps": self.state.env_steps, "normalized_score": result.normalized_score,
                             "eval_seed": seed, "eval_episodes": self.cfg.eval_episodes})
        for callback in self.on_evaluate:
            callback(self, result)
        return result

    # --- checkpoints ----------------------------------------------------------------
    def checkpoint_and_continue(self) -> bool:
        self.save_checkpoint()
        self._checkpoints_written += 1
        return self.stop_after is None or self._checkpoints_written < self.stop_after

    def save_checkpoint(self) -> None:
        # atomic, plain data only (loads with weights_only=True), refuses non-finite tensors
        save_checkpoint(self.checkpoint_path, self.checkpoint_state(), allow_non_finite=NON_FINITE_BY_DESIGN)

    def checkpoint_state(self) -> dict:
        now = time.perf_counter()
        self.state.seconds += now - self._clock
        self._clock = now
        state = {
            "trainer": self.state.__dict__,
            "agent": self.agent.state_dict(),
            "online": self.online.state_dict(),
            "rng": rng_state(),
            "env": get_env_state(self.env) if self.state.online_started else None,
            "obs": None if self.obs is None else torch.as_tensor(self.obs),
            "log_rows": dict(self.logger.rows),
            "world": self.world.state_dict() if self.world is not None else {},
            "sampler": self.sampler.state_dict(),
        }
        bad = first_non_finite(self.agent)
        if bad is not None:
            raise DivergedError(f"the run diverged: agent parameter {bad} is not finite at update "
                                f"{self.state.updates}; {self.last_good()}")
        return state

    def save_switch(self) -> None:
        """The run at the end of its offline phase, as `switch.pt`: a checkpoint plus the offline logs and what
        trainer.start_from checks (seed, dataset, offline budget) or compares (the sampler config)."""
        switch = {
            "seed": self.seed,
            "dataset_sha256": self.summary_extra.get("dataset_sha256"),
            "offline_updates": self.state.offline_updates,
            "sampler": dataclasses.asdict(self.sampler_cfg),
            "logs": {path.name: read_csv_text(path) for path in map(self.logger.path, self.logger.rows)
                     if path.exists()},
        }
        save_checkpoint(self.run_dir / SWITCH_FILE, self.checkpoint_state() | {"switch": switch},
                        allow_non_finite=NON_FINITE_BY_DESIGN)

    def start_from_switch(self) -> bool:
        """Take over another run's offline phase (trainer.start_from): its switch.pt's agent, world model, RNG,
        counters and offline logs, and its sampler state when the sampler config is the same (another sampler
        starts fresh at the switch). This run's online phase then runs with this run's config."""
        given = Path(self.cfg.start_from)
        path = given if given.is_file() else given / SWITCH_FILE
        if not path.is_file():
            raise CheckpointError(f"trainer.start_from={given}: no {SWITCH_FILE} there. A run writes it when "
                                  "its offline phase ends (runs made before 2026-12-05 did not): point at a run "
                                  "directory whose offline phase has finished.")
        state = load_checkpoint(path, self.device, required=("trainer", "agent", "rng", "log_rows", "world",
                                                             "sampler", "switch"),
                                ways_out=f"trainer.start_from needs the {SWITCH_FILE} a run writes at its switch")
        source = state["switch"]
        logs = source.get("logs") if isinstance(source, dict) else None
        if not (isinstance(logs, dict) and all(isinstance(k, str) and k.endswith(".csv") and isinstance(v, str)
                                               for k, v in logs.items())):
            raise CheckpointError(f"trainer.start_from={given}: {path} is not a switch checkpoint (its offline logs "
                                  "are missing or malformed); point at the directory of a run made by this package.")
        ours = {"seed": (self.seed, "seed"), "dataset_sha256": (self.summary_extra.get("dataset_sha256"), "dataset"),
                "offline_updates": (self.cfg.offline_updates, "trainer.offline_updates")}
        for key, (value, setting) in ours.items():
            if source.get(key) != value:
                raise CheckpointError(f"trainer.start_from={given}: that run's {key} is {source.get(key)}, this "
                                      f"run's {value}; a run continues only the offline phase of its own seed, "
                                      f"dataset and budget (set {setting} to match).")
        try:
            self.state = TrainerState(**state["trainer"])
            self.agent.load_state_dict(state["agent"])
            if self.world is not None and state["world"]:
                self.world.load_state_dict(state["world"])
            if source["sampler"] == dataclasses.asdict(self.sampler_cfg):
                self.sampler.load_state_dict(state["sampler"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
            raise CheckpointError(f"trainer.start_from={given}: {path} does not fit this run "
                                  f"({type(err).__name__}: {first_line(err)}); "
                                  "the agent and world model must have the source's networks") from err
        set_rng_state(state["rng"])
        for name, text in logs.items():  # the offline rows; run() then opens the logger on them
            with (self.run_dir / Path(name).name).open("w", newline="") as f:
                f.write(text)
        self._log_rows = state["log_rows"]
        return True

    def load_checkpoint(self) -> bool:
        state = load_checkpoint(self.checkpoint_path, self.device,
                                required=("trainer", "agent", "online", "rng", "log_rows", "world", "sampler"))
        try:
            self.restore(state)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
            raise CheckpointError(f"{self.checkpoint_path} does not fit this run ({type(err).__name__}: "
                                  f"{first_line(err)}); move it away to start "
                                  "over, or pass resume=false") from err
        return True

    def restore(self, state: dict) -> None:
        self.state = TrainerState(**state["trainer"])
        self.agent.load_state_dict(state["agent"])
        self.online.load_state_dict(state["online"])
        if state["env"] is not None:
            set_env_state(self.env, state["env"])
        self.obs = None if state["obs"] is None else state["obs"].cpu().numpy()
        set_rng_state(state["rng"])
        self._log_rows = state["log_rows"]
        if self.world is not None:
            self.world.load_state_dict(state["world"])
        self.sampler.load_state_dict(state["sampler"])

    # --- summary --------------------------------------------------------------------
    def write_summary(self) -> dict:
        off, on = self.state.last_eval.get("offline"), self.state.last_eval.get("online")
        summary = {
            "agent": getattr(self.agent.cfg, "name", type(self.agent).__name__.lower()),
            "seed": self.seed,
            "offline_score": off and off["normalized_score"],
            "online_score": on and on["normalized_score"],
            "offline_return": off and off["mean_return"],
            "online_return": on and on["mean_return"],
            "updates": self.state.updates,
            "env_steps": self.state.env_steps,
            "seconds": round(self.state.seconds, 2),
        } | self.summary_extra
        if self.model_based:
            metrics = self.world.metrics()
            summary["model_holdout_mse"] = metrics.get("model/holdout_mse")
            summary["mean_penalty"] = metrics.get("model/penalty_mean")
        tmp = self.run_dir / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, self.run_dir / "summary.json")
        return summary
