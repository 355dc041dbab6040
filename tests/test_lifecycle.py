"""The agent lifecycle and the data path every agent stands on.

- The contract, for every agent in agents/ (found automatically, so each new one joins): kill a
  run in the offline phase and in the online phase, start it again in the same directory, and
  get bitwise the parameters, buffers, sampler state and log rows of the uninterrupted run.
- Presets set what they promise for every agent.
- A world model is never rolled out before it was fitted, also when there is no offline phase.
- Batches know their rows' sources; per-transition fields (Cal-QL's return-to-go) are filled by
  every store; the priority sampler writes priorities back and resumes exactly.
"""

from __future__ import annotations

import copy
import csv
import functools
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import assert_same_state
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from agents.core.agent import EnvSpec
from agents.core.config import RunConfig
from agents.core.entry import CONFIG_DIR, build_run
from agents.core.registry import discover_agents
from agents.core.trainer import Trainer
from agents.sac import SAC, SACConfig
from worldmodels.data.fields import NO_VALUE, ReturnToGo
from worldmodels.data.samplers import SamplerConfig, Sources, make_sampler
from worldmodels.data.store import Batch, TransitionStore
from worldmodels.progress import EpisodeEnd, Progress

EPISODE = 25  # short HalfCheetah episodes: the online phase crosses resets


AGENTS = discover_agents()


def test_every_seed_agent_is_discovered():
    assert {"bc", "td3", "td3bc", "sac", "mopo", "moore"} <= set(AGENTS)


def compose_config(name: str, overrides: list[str]) -> RunConfig:
    """The run config `python -m agents.<name> <overrides>` would get (a fresh copy each call)."""
    return copy.deepcopy(_composed(name, tuple(overrides)))


@functools.cache
def _composed(name: str, overrides: tuple[str, ...]) -> RunConfig:
    # hydra's compose is ~0.5 s and deterministic: once per (agent, overrides) saves minutes of CI
    agent_cls, config_cls = AGENTS[name]
    ConfigStore.instance().store(name=f"{name}_schema", node=RunConfig(agent=config_cls()))
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        return OmegaConf.to_object(compose(config_name=name, overrides=list(overrides)))


def tiny_overrides(name: str, dataset_id: str) -> list[str]:
    cfg = compose_config(name, [])
    out = [f"dataset.id={dataset_id}", "trainer.offline_updates=40", "trainer.online_steps=40",
           "trainer.checkpoint_every=20", "trainer.eval_every=40", "trainer.eval_episodes=1",
           "trainer.log_every=10", "trainer.batch_size=64", "trainer.warmup_steps=10", "trainer.progress=false",
           "agent.hidden=[32,32]", "device=cpu"]
    if cfg.trainer.updates_per_step > 3:  # REDQ 20, APL and AdaptiveBC 10: 3 still crosses every UTD path
        out += ["trainer.updates_per_step=3"]
    if cfg.world_model.kind != "none":
        out += ["world_model.hidden=[32,32]", "world_model.fit_max_epochs=2", "rollout.num_starts=32",
                "rollout.every=10", "rollout.keep_rounds=2"]
        if cfg.world_model.refit_every:
            out += ["world_model.refit_every=15"]  # refits (and MOORe's rollouts) on both sides of the kill
    return out


def short_env() -> gym.Env:
    return gym.make("HalfCheetah-v5", max_episode_steps=EPISODE)


def make_trainer(name: str, run_dir: Path, dataset_id: str, init_seed: int = 0) -> Trainer:
    torch.manual_seed(init_seed)  # a resumed run starts from other weights: the checkpoint must overwrite them
    trainer = build_run(AGENTS[name][0], compose_config(name, tiny_overrides(name, dataset_id)), run_dir)
    trainer.env.close()
    trainer.env_fn, trainer.env, trainer.tensorboard = short_env, short_env(), False
    return trainer


def run_state(trainer: Trainer) -> dict:
    return {"agent": trainer.agent.state_dict(), "online": trainer.online.state_dict(),
            "sampler": trainer.sampler.state_dict(),
            "world": {k: v for k, v in (trainer.world.state_dict() if trainer.world else {}).items() if k != "metrics"}}


def log_rows(path: Path) -> list[dict]:
    """A CSV log's rows without wall-clock columns (a model fit's seconds)."""
    with path.open() as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_dataset_id):
    runs = {}
    for name in AGENTS:
        trainer = make_trainer(name, tmp_path_factory.mktemp(f"full-{name}"), tiny_dataset_id)
        runs[name] = (trainer, trainer.run())
    return runs


@pytest.mark.parametrize("name", sorted(AGENTS))
@pytest.mark.parametrize(("stop_after", "phase"), [(2, "offline"), (3, "online")])
def test_contract_kill_and_resume_is_exact(name, stop_after, phase, tmp_path, tiny_dataset_id, uninterrupted):
    """Killed right after checkpoint 2 (end of the offline phase) or 3 (mid-episode online)."""
    first = make_trainer(name, tmp_path, tiny_dataset_id)
    first.stop_after = stop_after
    assert first.run() == {}
    resumed = make_trainer(name, tmp_path, tiny_dataset_id, init_seed=123)
    summary = resumed.run()
    ref, ref_summary = uninterrupted[name]
    assert_same_state(run_state(ref), run_state(resumed), name)
    for log in ("train.csv", "eval.csv", "episodes.csv", "model.csv"):
        if (ref.run_dir / log).exists():
            assert log_rows(resumed.run_dir / log) == log_rows(ref.run_dir / log), log
    drop = lambda s: {k: v for k, v in s.items() if k != "seconds"}  # noqa: E731 - wall clock
    assert drop(summary) == drop(ref_summary)
    utd = resumed.cfg.updates_per_step  # REDQ: G = 20 updates per env step
    assert (summary["updates"], summary["env_steps"]) == (40 + 30 * utd, 40)  # online updates start after warm-up


# --- presets ---------------------------------------------------------------------------------------
PRESETS = {  # what each experiment preset promises, for every agent
    "smoke": {"trainer.offline_updates": 500, "trainer.online_steps": 1000},
    "quick": {"trainer.offline_updates": 20000, "trainer.online_steps": 10000},
    "paper": {"trainer.offline_updates": 1_000_000, "trainer.online_steps": 1_000_000, "dataset.size": 1_000_000},
}
AGENT_PRESETS = {  # where a paper's own budget differs, the agent's value wins over the generic preset
    ("td3", "paper"): {"trainer.warmup_steps": 25_000, "trainer.offline_updates": 0},  # TD3 start_timesteps
    ("sac", "paper"): {"trainer.warmup_steps": 10_000, "trainer.offline_updates": 0},
    ("redq", "paper"): {"trainer.warmup_steps": 5_000, "trainer.offline_updates": 0},  # redq_sac.py start_steps
    ("mopo", "paper"): {"trainer.offline_updates": 3_000_000},  # OfflineRL-Kit's MOPO
    ("moore", "paper"): {"trainer.offline_updates": 3_000_000},
    ("apl", "paper"): {"trainer.offline_updates": 100_000, "trainer.online_steps": 100_000},  # APL0
    ("apl_cql", "paper"): {"trainer.offline_updates": 100_000, "trainer.online_steps": 100_000},
}


def lookup(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("name", sorted(AGENTS))
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_set_what_they_promise(name, preset):
    cfg = compose_config(name, [f"experiment={preset}"])
    promised = PRESETS[preset] | AGENT_PRESETS.get((name, preset), {})
    if name in ("td3", "sac", "redq"):
        promised |= {"trainer.offline_updates": 0}  # online-only agents
    for key, value in promised.items():
        assert lookup(cfg, key) == value, (name, preset, key)
    assert cfg.experiment == preset


# --- the world model is fitted before its first rollout ------------------------------------------
def test_online_only_agent_fits_its_world_model_before_the_first_rollout(tmp_path, tiny_dataset_id):
    cfg = compose_config("sac", ["world_model=ensemble", f"dataset.id={tiny_dataset_id}", "trainer.online_steps=30",
                                 "trainer.warmup_steps=20", "trainer.eval_every=30", "trainer.eval_episodes=1",
                                 "trainer.checkpoint_every=30", "trainer.progress=false", "agent.hidden=[16,16]",
                                 "world_model.hidden=[16,16]", "world_model.fit_max_epochs=2",
                                 "rollout.num_starts=8", "trainer.batch_size=16", "device=cpu"])
    trainer = build_run(SAC, cfg, tmp_path)
    trainer.tensorboard = False
    fits = []
    original_fit = trainer.world.fit

    def fit(data, weights=None):
        fits.append((len(data["obs"]), trainer.state.env_steps, trainer.world.rounds))
        return original_fit(data, weights)

    trainer.world.fit = fit
    trainer.run()
    # one fit, on the 21 online rows there are when updates start (online_only: no offline rows), before any rollout
    assert fits == [(21, 21, 0)]
    assert trainer.world.rounds >= 1


# --- batches, fields, priorities --------------------------------------------------------------------
def store_of(n: int, source: str, seed: int = 0, terminal_at: int | None = None) -> TransitionStore:
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(n + 1, 3, generator=g)  # one chain: next_obs[t] == obs[t + 1]
    obs = states[:-1]
    term = torch.zeros(n)
    if terminal_at is not None:
        term[terminal_at] = 1.0
    return TransitionStore.from_tensors({"obs": obs, "act": torch.rand(n, 2, generator=g), "rew": torch.arange(n) * 1.0,
                                         "next_obs": states[1:], "terminal": term, "truncated": torch.zeros(n)},
                                        source=source)


def test_batch_rows_know_their_source_and_index():
    offline, online = store_of(50, "offline"), store_of(20, "online", seed=1)
    sampler = make_sampler(SamplerConfig(kind="symmetric", offline_share=0.25), Sources(offline, online))
    batch = sampler.sample(64, Progress("online", 10, 5, 15, 10, 100))
    assert (batch.source == 0).sum() == 16 and (batch.source == 1).sum() == 48
    for sid, store in ((0, offline), (1, online)):
        rows = batch.source == sid
        assert torch.equal(batch.obs[rows], store.data["obs"][batch.index[rows]])


def test_batch_cat_refuses_sources_that_disagree_on_fields():
    a, b = store_of(5, "offline"), store_of(5, "online")
    a.add_field("rtg", fill=NO_VALUE)
    with pytest.raises(ValueError, match="disagree on extra fields"):
        Batch.cat([a.gather(torch.tensor([0])), b.gather(torch.tensor([0]))])


def test_return_to_go_per_episode_terminal_ends_the_sum():
    # two episodes in one flat store: rows 0-2 end by termination, rows 3-5 by truncation (no bootstrap either)
    store = store_of(6, "offline", terminal_at=2)
    store.data["truncated"][5] = 1.0
    store.data["next_obs"][2] = store.data["obs"][3] + 5  # a chain break marks the episode boundary too
    gamma = 0.5
    rtg = ReturnToGo(gamma).offline(store)
    r = store.data["rew"]
    expected = [r[0] + gamma * r[1] + gamma**2 * r[2], r[1] + gamma * r[2], r[2],
                r[3] + gamma * r[4] + gamma**2 * r[5], r[4] + gamma * r[5], r[5]]
    assert torch.allclose(rtg, torch.stack(expected))
    # Cal-QL's sparse special case: an all-negative-constant episode gets r / (1 - gamma) everywhere
    store.data["rew"][:3] = -5.0
    assert torch.allclose(ReturnToGo(gamma, sparse_negative=-5.0).offline(store)[:3], torch.full((3,), -10.0))


class RtgSAC(SAC):
    """SAC that declares Cal-QL's field, and records what it was handed."""

    def __init__(self, *args):
        super().__init__(*args)
        self.episodes: list[EpisodeEnd] = []
        self.phases: list[str] = []
        self.seen_rtg: list[Tensor] = []

    def transition_fields(self):
        return [ReturnToGo(self.cfg.gamma)]

    def on_phase(self, progress):
        self.phases.append(progress.phase)

    def on_episode_end(self, episode, progress):
        self.episodes.append(episode)

    def update(self, batch, progress):
        self.seen_rtg.append(batch.extras["rtg"])
        return super().update(batch, progress)


Tensor = torch.Tensor


def test_every_store_fills_the_declared_field(tmp_path, tiny_dataset_id):
    from agents.core.config import TrainerConfig
    from agents.core.entry import offline_store
    from worldmodels.data.minari_load import load_offline_dataset
    from worldmodels.envs import box_bounds

    ds = load_offline_dataset(tiny_dataset_id)
    env = short_env()
    low, high = box_bounds(env)
    spec = EnvSpec(env.observation_space.shape[0], env.action_space.shape[0], low, high)
    agent = RtgSAC(SACConfig(hidden=[16, 16]), spec, torch.device("cpu"))
    cfg = TrainerConfig(offline_updates=5, online_steps=2 * EPISODE + 5, batch_size=32, eval_every=10**6,
                        eval_episodes=1, log_every=10, checkpoint_every=10**6, progress=False)
    offline = offline_store(ds, torch.device("cpu"))
    trainer = Trainer(agent, cfg, short_env, offline, tmp_path, ref_scores=(ds.ref_min_score, ds.ref_max_score),
                      tensorboard=False, sampler=SamplerConfig(kind="symmetric"))
    trainer.run()
    assert agent.phases == ["offline", "online"]
    # offline rows: the dataset's per-episode return-to-go
    expected = ReturnToGo(0.99).returns(ds.rewards.astype(np.float64), ds.terminations.astype(np.float64),
                                        np.asarray(ds.truncations | ds.terminations))
    assert torch.allclose(offline.data["rtg"][: len(offline)], torch.as_tensor(expected), rtol=1e-5, atol=1e-4)
    # online rows: written when their episode ends; the unfinished episode's rows hold "no value"
    assert [e.length for e in agent.episodes] == [EPISODE, EPISODE]
    first = agent.episodes[0]
    assert torch.equal(first.rows, torch.arange(EPISODE)) and not first.terminated
    assert first.normalized_return == pytest.approx(trainer.normalized(first.episode_return))
    rew = trainer.online.data["rew"][:EPISODE].double()
    rtg0 = sum(0.99**k * rew[k] for k in range(EPISODE))
    assert trainer.online.data["rtg"][0].item() == pytest.approx(rtg0.item(), rel=1e-5)
    assert torch.all(trainer.online.data["rtg"][2 * EPISODE: len(trainer.online)] == NO_VALUE)
    assert all(r.shape == (32,) for r in agent.seen_rtg)


def test_priority_sampler_writes_back_and_resumes_exactly():
    offline, online = store_of(6, "offline"), TransitionStore(4, 3, 2, source="online")
    cfg = SamplerConfig(kind="priority")
    sampler = make_sampler(cfg, Sources(offline, online))
    progress = Progress("online", 0, 2, 0, 0, 4)
    rows = online.add(**{k: v[:2] for k, v in store_of(2, "online", seed=3).valid().items()})
    sampler.rows_added("online", rows)
    sampler.sample(3, progress)
    # an update on offline rows 4 and 1 and online row 0 writes back priorities 5, 0, 0
    batch = Batch.cat([offline.gather(torch.tensor([4, 1])), online.gather(torch.tensor([0]))])
    sampler.after_update(batch, {"priority": torch.tensor([5.0, 0.0, 0.0])})
    draws = sampler.sample(4000, progress, torch.Generator().manual_seed(0))
    drawn = list(zip(draws.source.tolist(), draws.index.tolist(), strict=True))
    assert (0, 1) not in drawn and (1, 0) not in drawn  # priority ~0 (floored at 1e-12)
    # row (0, 4) holds 5 of a mass of 10: offline rows 0, 2, 3, 5 and online row 1 keep 1 each
    assert drawn.count((0, 4)) / 4000 == pytest.approx(0.5, abs=0.03)
    # a new online row starts at the largest priority so far (5)
    rows = online.add(**{k: v[:1] for k, v in store_of(1, "online", seed=4).valid().items()})
    sampler.rows_added("online", rows)
    assert sampler.tree.get(rows + 6).item() == pytest.approx(5.0)
    restored = make_sampler(cfg, Sources(offline, online))
    restored.load_state_dict(sampler.state_dict())
    a = sampler.sample(64, progress, torch.Generator().manual_seed(7))
    b = restored.sample(64, progress, torch.Generator().manual_seed(7))
    assert torch.equal(a.index, b.index) and torch.equal(a.source, b.source)
