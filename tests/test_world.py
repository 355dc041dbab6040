"""The world-model layer as agents see it: rollouts, the null model, the model-free
equivalence, and MOORe's priorities."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest
import torch

from agents.core.agent import EnvSpec
from agents.core.config import ConfigError, TrainerConfig
from agents.core.trainer import Trainer
from agents.mopo import MOPO, MOPOConfig, mopo_actor_lr
from agents.sac import SAC, SACConfig
from worldmodels.data.samplers import SamplerConfig, Sources, make_sampler, moore_offline_priority
from worldmodels.data.store import TransitionStore
from worldmodels.dynamics import StepResult
from worldmodels.progress import Progress
from worldmodels.rollout import RolloutConfig, penalized_reward, rollout
from worldmodels.uncertainty import make_uncertainty
from worldmodels.world import WorldModelConfig, make_world_model, store_fit_data

OBS, ACT = 3, 2


class CountingModel:
    """next_obs = obs + 1, reward 2, terminal once obs[:, 0] reaches `stop_at`, uncertainty = obs[:, 1]."""

    def __init__(self, stop_at: float):
        self.stop_at = stop_at

    def step(self, obs, act, generator=None, propagation="random_elite", uncertainty=None):
        next_obs = obs + 1.0
        return StepResult(next_obs, torch.full((obs.shape[0],), 2.0), next_obs[:, 0] >= self.stop_at,
                          {"uncertainty": obs[:, 1].clone()})


def test_penalized_reward_formula():
    assert torch.allclose(penalized_reward(torch.tensor([1.0, 2.0]), torch.tensor([0.5, 4.0]), 0.5),
                          torch.tensor([0.75, 0.0]))


def test_rollout_stops_at_termination_and_applies_penalty_exactly():
    # branch A starts at 0 and terminates when it reaches 2 (after 2 steps); branch B starts at -10 and runs to h
    starts = torch.tensor([[0.0, 1.0, 0.0], [-10.0, 3.0, 0.0]])
    result = rollout(CountingModel(stop_at=2.0), lambda o: torch.zeros(o.shape[0], ACT), starts, horizon=4,
                     uncertainty=None, penalty_coef=0.5)
    tr = result.transitions
    assert tr["obs"].shape[0] == 2 + 4  # A: 2 steps, B: 4 steps
    # penalty = 0.5 * obs[:, 1] at the state the step started from
    assert torch.allclose(tr["rew"], 2.0 - 0.5 * tr["obs"][:, 1])
    a_rows = tr["obs"][:, 0] >= 0
    assert tr["terminal"][a_rows].tolist() == [0.0, 1.0]
    assert tr["truncated"][a_rows].tolist() == [0.0, 0.0]
    b_rows = ~a_rows
    assert tr["terminal"][b_rows].tolist() == [0.0] * 4
    assert tr["truncated"][b_rows].tolist() == [0.0, 0.0, 0.0, 1.0]  # horizon end keeps the bootstrap
    assert torch.equal(tr["next_obs"], tr["obs"] + 1.0)
    assert result.mean_length == pytest.approx(3.0)


def _offline_store(n: int = 512, seed: int = 0) -> TransitionStore:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, OBS, generator=g)
    act = torch.rand(n, ACT, generator=g) * 2 - 1
    return TransitionStore.from_tensors({
        "obs": obs, "act": act, "rew": obs[:, 0] - act.square().sum(1), "next_obs": obs + 0.1 * act.sum(1, True),
        "terminal": torch.zeros(n), "truncated": torch.zeros(n)}, device="cpu")


SPEC = EnvSpec(OBS, ACT, -torch.ones(ACT), torch.ones(ACT))
SMALL = dict(hidden=[32, 32])


def _trainer(agent, world, tmp_path, updates: int = 30) -> Trainer:
    cfg = TrainerConfig(offline_updates=updates, online_steps=0, batch_size=32, eval_every=10**6,
                        log_every=10, checkpoint_every=10**6, progress=False)
    trainer = Trainer(agent, cfg, lambda: None, _offline_store(), tmp_path, seed=0, tensorboard=False, world=world)
    trainer.evaluate = lambda phase: None  # no env in these unit tests
    return trainer


def _world(kind="ensemble", horizon=0, real_ratio=0.05):
    wcfg = WorldModelConfig(kind=kind, hidden=[16, 16], fit_max_epochs=2, termination="none")
    rcfg = RolloutConfig(horizon=horizon, real_ratio=real_ratio, num_starts=64, every=10, keep_rounds=2, chunk=64)
    return make_world_model(wcfg, rcfg, OBS, ACT, None, torch.device("cpu"))


def _params(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def sac_config_of(mopo_cfg: MOPOConfig) -> SACConfig:
    """SAC with MOPO's hyperparameters (MOPO changes the actor and temperature learning rates)."""
    return SACConfig(**{f.name: getattr(mopo_cfg, f.name) for f in fields(SACConfig) if f.name != "name"})


@pytest.mark.parametrize("horizon,real_ratio", [(0, 0.05), (5, 1.0)])
def test_mopo_with_null_world_makes_exactly_the_sac_update(tmp_path, horizon, real_ratio):
    torch.manual_seed(0)
    sac = SAC(sac_config_of(MOPOConfig(**SMALL)), SPEC, torch.device("cpu"))
    _trainer(sac, None, tmp_path / "sac").run()
    torch.manual_seed(0)
    mopo = MOPO(MOPOConfig(**SMALL), SPEC, torch.device("cpu"))
    world = _world(horizon=horizon, real_ratio=real_ratio)
    assert world.null
    _trainer(mopo, world, tmp_path / "mopo").run()
    assert len(world.store or []) == 0 and world.model is None  # never fitted, never rolled out
    for a, b in zip(_params(sac), _params(mopo), strict=True):
        assert torch.equal(a, b)


def _progress(phase: str, offline_updates: int, budget: int = 1000) -> Progress:
    online = phase == "online"
    return Progress(phase, offline_updates, 5 if online else 0, offline_updates + (5 if online else 0), budget, 100)


def test_mopo_cosine_actor_lr_anneals_offline_and_restarts_online():
    """OfflineRL-Kit's cosine: actor_lr at the first offline update, half at mid-phase, near 0 at the last; the
    online phase (which that reference does not have) trains at actor_lr again, never with a frozen actor."""
    cfg = MOPOConfig(actor_lr=1e-4, actor_lr_schedule="cosine")
    assert mopo_actor_lr(cfg, _progress("offline", 0)) == pytest.approx(1e-4)
    assert mopo_actor_lr(cfg, _progress("offline", 500)) == pytest.approx(0.5e-4)
    assert mopo_actor_lr(cfg, _progress("offline", 999)) == pytest.approx(0.5e-4 * (1 + math.cos(math.pi * 0.999)))
    assert mopo_actor_lr(cfg, _progress("offline", 999)) < 1e-9
    assert mopo_actor_lr(cfg, _progress("online", 1000)) == 1e-4
    constant = MOPOConfig(actor_lr=1e-4)
    assert {mopo_actor_lr(constant, _progress(p, n)) for p, n in (("offline", 0), ("offline", 999),
                                                                   ("online", 1000))} == {1e-4}


def test_mopo_cosine_update_sets_the_rate_and_the_actor_moves_online():
    torch.manual_seed(0)
    mopo = MOPO(MOPOConfig(**SMALL, actor_lr=1e-3, actor_lr_schedule="cosine"), SPEC, torch.device("cpu"))
    store = _offline_store(64)
    batch = store.gather(store.sample_indices(32, torch.Generator().manual_seed(0)))
    mopo.update(batch, _progress("offline", 250))
    assert mopo.optimizers["actor"].param_groups[0]["lr"] == pytest.approx(0.5e-3 * (1 + math.cos(math.pi / 4)))
    before = _params(mopo.actor)
    mopo.update(batch, _progress("online", 1000))
    assert mopo.optimizers["actor"].param_groups[0]["lr"] == 1e-3
    assert any(not torch.equal(a, b) for a, b in zip(before, _params(mopo.actor), strict=True))


def test_mopo_refuses_an_unknown_actor_lr_schedule():
    with pytest.raises(ConfigError, match="actor_lr_schedule='cosin'.*constant, cosine"):
        MOPO(MOPOConfig(**SMALL, actor_lr_schedule="cosin"), SPEC, torch.device("cpu"))


def test_model_based_mopo_differs_and_fills_its_store(tmp_path):
    """The control for the test above: with imagined data the update must change."""
    torch.manual_seed(0)
    sac = SAC(sac_config_of(MOPOConfig(**SMALL)), SPEC, torch.device("cpu"))
    _trainer(sac, None, tmp_path / "sac").run()
    torch.manual_seed(0)
    mopo = MOPO(MOPOConfig(**SMALL), SPEC, torch.device("cpu"))
    world = _world(horizon=3, real_ratio=0.5)
    trainer = _trainer(mopo, world, tmp_path / "mopo")
    summary = trainer.run()
    assert world.rounds == 3  # before updates 0, 10, 20
    assert 0 < len(world.store) <= 64 * 3 * 2
    assert summary["mean_penalty"] > 0 and summary["model_holdout_mse"] is not None
    assert any(not torch.equal(a, b) for a, b in zip(_params(sac), _params(mopo), strict=True))
    assert (tmp_path / "mopo" / "dynamics.pt").exists()


def test_null_world_model_has_no_store_and_never_rolls_out():
    world = _world(kind="none", horizon=5, real_ratio=0.05)
    real = _offline_store()
    assert world.null and world.store is None and not world.due(0)
    assert world.generate(lambda o: o, real.gather) is None and world.fit(store_fit_data(real)) is None


def online_progress(env_steps: int) -> Progress:
    return Progress("online", 100, env_steps, 100 + env_steps, 100, 1000)


def test_moore_decay_sampler_follows_one_over_alpha_t():
    assert [moore_offline_priority(t, 2.0) for t in (1, 2, 4)] == [0.5, 0.25, 0.125]
    offline, online = _offline_store(400), _offline_store(100, seed=1)
    online.source, online.source_id = "online", 1
    sampler = make_sampler(SamplerConfig(kind="moore_decay", priority_alpha=2.0, epoch_steps=100),
                           Sources(offline, online))
    for env_steps, epoch in [(0, 1), (99, 1), (100, 2), (350, 4)]:
        progress = online_progress(env_steps)
        priority = 1.0 / (2.0 * epoch)
        assert sampler.offline_priority(progress) == pytest.approx(priority)
        weights = sampler.fit_weights(progress)
        assert torch.allclose(weights[:400], torch.full((400,), priority)) and torch.all(weights[400:] == 1.0)
        # sampling proportional to priority: the offline share of a batch is its priority mass
        shares = sampler.real_shares(progress)
        assert shares["offline"] / (shares["offline"] + shares["online"]) == pytest.approx(
            400 * priority / (400 * priority + 100))
        batch = sampler.sample(1000, progress)
        expected_offline = round(1000 * 400 * priority / (400 * priority + 100))
        from_offline = (batch.obs.unsqueeze(1) == offline.data["obs"].unsqueeze(0)).all(-1).any(1).sum()
        assert abs(int(from_offline) - expected_offline) <= 1
        assert int((batch.source == 0).sum()) == int(from_offline)  # rows know their source
    # the offline phase draws offline rows only, whatever the kind
    assert sampler.real_shares(Progress("offline", 0, 0, 0, 100, 1000)) == {"offline": 1.0}


def compose_run_config(agent: str, overrides: list[str]):
    """The RunConfig a CLI call `python -m agents.<agent> OVERRIDES` would run with."""
    import importlib

    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from agents.core.config import RunConfig
    from agents.core.entry import CONFIG_DIR

    mod = importlib.import_module(f"agents.{agent}")
    config_cls = {"td3bc": "TD3BCConfig", "mopo": "MOPOConfig", "moore": "MOOReConfig"}[agent]
    ConfigStore.instance().store(name=f"{agent}_schema", node=RunConfig(agent=getattr(mod, config_cls)()))
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        return OmegaConf.to_object(compose(config_name=agent, overrides=overrides))


def test_uncertainty_and_precision_overrides_reach_the_world_model():
    from agents.core.config import ConfigError, check_run_config

    cfg = compose_run_config("td3bc", ["world_model=ensemble", "rollout.horizon=5", "uncertainty=disagreement"])
    assert (cfg.world_model.kind, cfg.world_model.uncertainty, cfg.rollout.horizon) == ("ensemble", "disagreement", 5)
    paper = compose_run_config("mopo", ["experiment=paper"])  # MOPO's own values
    assert (paper.world_model.uncertainty, paper.world_model.penalty_units, paper.rollout.real_ratio,
            paper.agent.init_alpha, paper.agent.critic_layer_norm, paper.agent.policy_average_tau) == (
                "aleatoric", None, 0.05, 1.0, False, 0.0)
    # the quick budget's named departures (configs/agent_experiment/mopo_quick.yaml), for MOORe alike
    for agent in ("mopo", "moore"):
        quick = compose_run_config(agent, [])
        assert (quick.world_model.uncertainty, quick.world_model.penalty_units, quick.rollout.real_ratio,
                quick.agent.init_alpha, quick.rollout.penalty_coef, quick.agent.critic_layer_norm,
                quick.agent.policy_average_tau) == ("ensemble_std", "aleatoric", 0.5, 0.1, 0.5, True, 0.001)
    assert compose_run_config("mopo", []).world_model.train_precision == "auto"
    with pytest.raises(ConfigError, match="world_model=ensemble"):  # an estimator without a model: say so
        check_run_config(compose_run_config("td3bc", ["uncertainty=disagreement"]))
    bad = compose_run_config("mopo", ["world_model.train_precision=float16"])
    with pytest.raises(ConfigError, match="train_precision"):
        check_run_config(bad)
    world = make_world_model(WorldModelConfig(kind="ensemble", hidden=[8], train_precision="float32",
                                              termination="none"), RolloutConfig(horizon=1), OBS, ACT, None,
                             torch.device("cpu"))
    assert world.model.train_precision == "float32"


def test_real_imagined_split_averages_each_source_separately():
    from agents.mopo import real_imagined_split
    from worldmodels.data.store import SOURCE_IDS, Batch

    source = torch.tensor([SOURCE_IDS["offline"], SOURCE_IDS["online"], SOURCE_IDS["model"], SOURCE_IDS["model"]])
    z = torch.zeros(4)
    batch = Batch(torch.zeros(4, 2), torch.zeros(4, 1), torch.tensor([1.0, 3.0, -1.0, -2.0]), torch.zeros(4, 2),
                  z, z, source=source, index=torch.arange(4))
    q, target = torch.tensor([10.0, 20.0, 30.0, 50.0]), torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = real_imagined_split(batch, q=q, target=target)
    assert out["q/real"] == 15.0 and out["q/imagined"] == 40.0
    assert out["target/real"] == 1.5 and out["target/imagined"] == 3.5
    assert out["reward/real"] == 2.0 and out["reward/imagined"] == -1.5
    # a batch with no imagined rows reads 0 there, not NaN
    out = real_imagined_split(Batch(batch.obs, batch.act, batch.rew, batch.next_obs, z, z, source=torch.zeros(4).long(),
                                    index=torch.arange(4)), q=torch.ones(4), target=torch.ones(4))
    assert out["q/imagined"] == 0.0 and out["q/real"] == 1.0


def _fitted_world(uncertainty: str, penalty_units: str | None, penalty_coef: float):
    wcfg = WorldModelConfig(kind="ensemble", hidden=[16, 16], fit_max_epochs=2, termination="none",
                            uncertainty=uncertainty, penalty_units=penalty_units)
    rcfg = RolloutConfig(horizon=3, penalty_coef=penalty_coef, num_starts=64, every=10, keep_rounds=2, chunk=64)
    torch.manual_seed(0)
    world = make_world_model(wcfg, rcfg, OBS, ACT, None, torch.device("cpu"))
    world.fit(store_fit_data(_offline_store()))
    return world


def test_penalty_units_convert_lambda_into_the_named_estimators_units():
    """world_model.penalty_units=aleatoric with ensemble_std: scale = mean u_aleatoric / mean u_ensemble_std on the
    round's real start rows, and the round is bitwise the round of lambda * scale with no conversion."""
    from worldmodels.uncertainty import make_uncertainty

    real = _offline_store()
    starts = lambda n: real.gather(torch.arange(n))  # noqa: E731  the same real rows every round
    policy = lambda o: torch.tanh(o[:, :ACT])  # noqa: E731
    converted = _fitted_world("ensemble_std", "aleatoric", 0.5)
    assert converted.penalty_scale is None  # due at the first round after a fit
    torch.manual_seed(1)
    converted.generate(policy, starts)
    rows = starts(64)
    mean, var = converted.model.predict(rows.obs, rows.act)
    expected = (make_uncertainty("aleatoric", converted.model).from_prediction(mean, var).mean()
                / make_uncertainty("ensemble_std", converted.model).from_prediction(mean, var).mean()).item()
    assert converted.penalty_scale == pytest.approx(expected, rel=1e-6) and converted.penalty_scale > 1.0
    assert converted.metrics()["model/penalty_scale"] == converted.penalty_scale

    plain = _fitted_world("ensemble_std", None, 0.5 * converted.penalty_scale)
    assert plain.penalty_scale == 1.0
    torch.manual_seed(1)
    plain.generate(policy, starts)
    for key in ("obs", "act", "rew", "next_obs"):
        assert torch.equal(converted.store.valid()[key], plain.store.valid()[key]), key

    # the scale survives a checkpoint, and a refit makes it due again
    restored = _fitted_world("ensemble_std", "aleatoric", 0.5)
    restored.load_state_dict(converted.state_dict())
    assert restored.penalty_scale == converted.penalty_scale
    converted.fit(store_fit_data(real))
    assert converted.penalty_scale is None
    same_units = _fitted_world("aleatoric", "aleatoric", 0.5)
    same_units.generate(policy, starts)
    assert same_units.penalty_scale == pytest.approx(1.0, rel=1e-6)


def test_penalty_units_must_name_a_dynamics_estimator():
    from agents.core.config import ConfigError, check_run_config

    with pytest.raises(ConfigError, match="penalty_units"):
        check_run_config(compose_run_config("mopo", ["world_model.penalty_units=q_std"]))


def test_d4rl_reward_units_is_the_ratio_of_reference_ranges():
    """penalty_reward_units=d4rl: lambda x (ref_max - ref_min) / (D4RL's ref_max - ref_min) for the env, by hand
    for the default dataset's recipe references and D4RL's HalfCheetah (-280.178953, 12135.0)."""
    from worldmodels.world import d4rl_reward_units

    assert d4rl_reward_units("HalfCheetah-v5", -333.25, 862.09) == pytest.approx(1195.34 / 12415.178953, rel=1e-12)
    assert d4rl_reward_units("Hopper-v5", -20.272305, 3234.3) == pytest.approx(1.0, rel=1e-12)  # D4RL's own range
    with pytest.raises(ValueError, match="no D4RL reference.*penalty_reward_units=null"):
        d4rl_reward_units("Pendulum-v1", -1500.0, 0.0)
    with pytest.raises(ValueError, match="ref_min_score < ref_max_score"):
        d4rl_reward_units("HalfCheetah-v5", None, 862.0)


def test_penalty_reward_units_scale_lambda_bitwise_and_are_logged():
    """A world with penalty_reward_units=d4rl makes bitwise the round of lambda * units with none; unset is 1."""
    real = _offline_store()
    starts = lambda n: real.gather(torch.arange(n))  # noqa: E731
    policy = lambda o: torch.tanh(o[:, :ACT])  # noqa: E731
    refs = (-333.25, 862.09)
    units = 1195.34 / 12415.178953

    def world(penalty_reward_units, coef, ref_scores):
        wcfg = WorldModelConfig(kind="ensemble", hidden=[16, 16], fit_max_epochs=2, termination="none",
                                uncertainty="aleatoric", penalty_reward_units=penalty_reward_units)
        rcfg = RolloutConfig(horizon=3, penalty_coef=coef, num_starts=64, every=10, keep_rounds=2, chunk=64)
        torch.manual_seed(0)
        w = make_world_model(wcfg, rcfg, OBS, ACT, "HalfCheetah-v5", torch.device("cpu"), ref_scores=ref_scores)
        w.fit(store_fit_data(real))
        torch.manual_seed(1)
        w.generate(policy, starts)
        return w

    scaled, plain = world("d4rl", 0.5, refs), world(None, 0.5 * units, refs)
    assert scaled.reward_units == pytest.approx(units, rel=1e-12) and plain.reward_units == 1.0
    assert scaled.metrics()["model/penalty_reward_units"] == scaled.reward_units
    assert "model/penalty_reward_units" not in plain.metrics()
    for key in ("obs", "act", "rew", "next_obs"):
        assert torch.equal(scaled.store.valid()[key], plain.store.valid()[key]), key
    unscaled = world(None, 0.5, refs)
    assert not torch.equal(scaled.store.valid()["rew"], unscaled.store.valid()["rew"])  # the factor did act


def test_penalty_reward_units_refuses_unknown_values():
    from agents.core.config import ConfigError, check_run_config

    with pytest.raises(ConfigError, match="penalty_reward_units='minari'"):
        check_run_config(compose_run_config("mopo", ["world_model.penalty_reward_units=minari"]))


def test_a_model_based_run_on_a_dataset_with_its_own_rollout_values_is_told_to_use_them():
    from types import SimpleNamespace

    from agents.core.entry import rollout_mismatch

    def cfg(kind, rollouts=True):
        return SimpleNamespace(world_model=SimpleNamespace(kind=kind, rollouts=rollouts))

    choices = {"dataset": "hopper-medium-replay", "rollout": "halfcheetah-medium-replay"}
    line = rollout_mismatch(cfg("ensemble"), choices, ["dataset=hopper-medium-replay"])
    assert "rollout=hopper-medium-replay" in line and "configs/rollout/hopper-medium-replay.yaml" in line
    assert rollout_mismatch(cfg("none"), choices, []) is None  # model-free: no rollouts at all
    assert rollout_mismatch(cfg("ensemble", rollouts=False), choices, []) is None  # fitted for u, never rolled out
    assert rollout_mismatch(cfg("ensemble"), choices, ["rollout=halfcheetah-medium-replay"]) is None  # named
    assert rollout_mismatch(cfg("ensemble"), choices | {"rollout": "hopper-medium-replay"}, []) is None
    assert rollout_mismatch(cfg("ensemble"), {"dataset": "default", "rollout": "halfcheetah-medium-replay"},
                            []) is None
    assert rollout_mismatch(cfg("ensemble"), {"dataset": "hopper-random", "rollout": "default"}, []) is None


def test_rollout_starts_take_their_initial_state_share_from_logged_episode_starts(tmp_path):
    """rollout.initial_state_share: the last round(share * n) start states of a round are the offline data's
    episode first states (row 0 and each row after a terminal or a cut), the rest the sampler's real rows, and
    they roll rollout.initial_state_horizon steps; at share 0 the starts are the sampler's draw, the same random
    stream as before the option existed."""
    store = _offline_store(n=40)
    # episodes: rows 0-9 (terminal at 9), 10-24 (cut at 24), 25-39 (cut by the data's end)
    store.data["terminal"][9] = 1.0
    store.data["truncated"][24] = 1.0
    store.data["truncated"][39] = 1.0
    first = {0, 10, 25}
    rcfg = RolloutConfig(horizon=1, num_starts=64, chunk=64, keep_rounds=1, initial_state_share=0.25,
                         initial_state_horizon=3)
    world = make_world_model(WorldModelConfig(kind="ensemble", hidden=[16], fit_max_epochs=1, termination="none"),
                             rcfg, OBS, ACT, None, torch.device("cpu"))
    agent = SAC(SACConfig(**SMALL), SPEC, torch.device("cpu"))
    trainer = Trainer(agent, TrainerConfig(progress=False, online_steps=0), lambda: None, store, tmp_path,
                      tensorboard=False, world=world)
    assert trainer.offline_first_rows.tolist() == sorted(first)
    progress = _progress("offline", 0)
    real = lambda n: trainer.sampler.sample_real(n, progress)  # noqa: E731
    rows_of = {tuple(store.data["obs"][i].tolist()): i for i in range(40)}
    torch.manual_seed(3)
    starts, m = world.start_states(64, real, trainer.initial_states)
    picked = [rows_of[tuple(o.tolist())] for o in starts.obs]
    assert m == 16 and len(picked) == 64 and set(picked[48:]) <= first  # 0.25 * 64 from the episode starts
    assert not set(picked[:48]) <= first  # the rest: the sampler's uniform draw over all 40 rows
    torch.manual_seed(3)
    plain = world.start_states(64, real)[0].obs
    torch.manual_seed(3)
    assert torch.equal(plain, real(64).obs)  # no initial states: the sampler's draw, the same stream

    # a round: 48 rollouts of h = 1 step, 16 of initial_state_horizon = 3 steps (next_obs = obs + 1 each step)
    world.model = CountingModel(stop_at=1e9)
    world.generate(lambda o: torch.zeros(o.shape[0], ACT), real, trainer.initial_states)
    stored = world.store.valid()
    assert len(world.store) == 48 * 1 + 16 * 3
    from_first = torch.tensor([min(abs(o[0] - store.data["obs"][i][0]).item() for i in first) < 1e-6
                               for o in stored["obs"]])
    assert int(from_first.sum()) >= 16  # the first step of every initial rollout starts at a first state
    assert float(stored["truncated"].sum()) == 64  # each branch ends once, at its own horizon
    world.rollout_cfg.initial_state_share = 0.0
    with pytest.raises(ConfigError, match="initial_state_share"):
        from agents.core.config import RunConfig, check_run_config
        check_run_config(RunConfig(agent=SACConfig(), world_model=WorldModelConfig(kind="ensemble"),
                                   rollout=RolloutConfig(initial_state_share=1.5)))
    with pytest.raises(ConfigError, match="initial_state_horizon"):
        check_run_config(RunConfig(agent=SACConfig(), world_model=WorldModelConfig(kind="ensemble"),
                                   rollout=RolloutConfig(initial_state_horizon=-1)))


def test_a_world_model_without_rollouts_is_fitted_for_u_and_the_agent_trains_on_real_rows_only(tmp_path):
    """world_model.rollouts=false (PEX's dynamics lower bound): the ensemble is fitted, so u reads a trained model,
    but it never rolls out, every batch row is real, and its state survives a checkpoint."""
    wcfg = WorldModelConfig(kind="ensemble", hidden=[16, 16], fit_max_epochs=2, termination="none", rollouts=False)
    rcfg = RolloutConfig(horizon=5, real_ratio=0.05, num_starts=64, every=10, keep_rounds=2, chunk=64)
    world = make_world_model(wcfg, rcfg, OBS, ACT, None, torch.device("cpu"))
    assert not world.null and not world.imagines and world.store is None and not world.due(0)
    torch.manual_seed(0)
    mopo = MOPO(MOPOConfig(**SMALL), SPEC, torch.device("cpu"))
    trainer = _trainer(mopo, world, tmp_path)
    sources = []
    update = mopo.update
    mopo.update = lambda batch, progress: sources.append(batch.source) or update(batch, progress)
    trainer.run()
    assert world.fitted and world.rounds == 0 and (tmp_path / "dynamics.pt").exists()
    assert len(sources) == 30 and all(bool((s == 0).all()) for s in sources)  # offline rows only
    u = make_uncertainty("ensemble_std", world.model)
    real = _offline_store(64, seed=1).valid()
    assert torch.isfinite(u(real["obs"], real["act"])).all() and (u(real["obs"], real["act"]) > 0).all()
    # a checkpoint of the fit-only world restores the fitted model into a fresh one
    fresh = make_world_model(wcfg, rcfg, OBS, ACT, None, torch.device("cpu"))
    fresh.load_state_dict(world.state_dict())
    assert fresh.fitted and fresh.store is None
    for a, b in zip(world.model.state_dict().values(), fresh.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
