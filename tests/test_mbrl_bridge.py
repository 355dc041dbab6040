"""The mbrl-lib 0.2.0 bridge in both directions (worldmodels.integrations.mbrl_lib).

mbrl-lib is in the dev dependency group, so a missing install fails this module at collection (never a skip).
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import mbrl.env.termination_fns as mbrl_termination_fns
import mbrl.models as mbrl_models
import mbrl.planning
import mbrl.types
import numpy as np
import omegaconf
import pytest
import torch

from worldmodels.dynamics import DynamicsEnsemble, StepResult
from worldmodels.integrations.mbrl_lib import EnsembleModelAdapter, MbrlDynamics, from_mbrl, to_model_env
from worldmodels.rollout import rollout
from worldmodels.termination import hopper_v5
from worldmodels.uncertainty import make_uncertainty

OBS_DIM, ACT_DIM = 3, 2
REPO = Path(__file__).resolve().parents[1]



# ------------------------------------------------------------------------------------------ mbrl-lib -> ours


def synthetic_batch(n: int, seed: int) -> mbrl.types.TransitionBatch:
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, OBS_DIM)).astype(np.float32)
    act = rng.uniform(-1, 1, size=(n, ACT_DIM)).astype(np.float32)
    nxt = obs + 0.1 * obs[:, ::-1] + 0.2 * act.sum(1, keepdims=True) + 0.05 * rng.normal(size=(n, OBS_DIM))
    rew = obs[:, 0] - 0.5 * act[:, 1]
    done = np.zeros(n, dtype=bool)
    return mbrl.types.TransitionBatch(obs, act, nxt.astype(np.float32), rew.astype(np.float32), done, done)


def mbrl_model(seed: int = 0, members: int = 5, **kw) -> mbrl_models.OneDTransitionRewardModel:
    torch.manual_seed(seed)
    learned_rewards = kw.get("learned_rewards", True)
    net = mbrl_models.GaussianMLP(
        OBS_DIM + ACT_DIM,
        OBS_DIM + int(learned_rewards),
        "cpu",
        num_layers=2,
        ensemble_size=members,
        hid_size=32,
        propagation_method="expectation",
    )
    return mbrl_models.OneDTransitionRewardModel(net, **{"normalize": True, **kw})


@pytest.fixture(scope="module")
def trained_mbrl() -> mbrl_models.OneDTransitionRewardModel:
    """A GaussianMLP ensemble trained for 100 steps with mbrl-lib's own update, elites set to 3 of 5."""
    model = mbrl_model(target_is_delta=True, learned_rewards=True)
    batch = synthetic_batch(256, seed=0)
    model.update_normalizer(batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(100):
        model.update(batch, optimizer)
    model.set_elite([0, 2, 4])
    return model


def mbrl_expectation_step(model, obs: torch.Tensor, act: torch.Tensor):
    """mbrl-lib's own deterministic step: elites' mean prediction (propagation "expectation")."""
    state = model.reset(obs, rng=torch.Generator())
    with torch.no_grad():
        next_obs, rew, _, _ = model.sample(act, state, deterministic=True, rng=torch.Generator())
    return next_obs, rew


def test_from_mbrl_predict_matches_mbrl_forward(trained_mbrl):
    wrapped = from_mbrl(trained_mbrl)
    assert isinstance(wrapped, MbrlDynamics)
    assert (wrapped.obs_dim, wrapped.act_dim, wrapped.ensemble_size, wrapped.num_elites) == (
        OBS_DIM,
        ACT_DIM,
        5,
        3,
    )
    assert wrapped.device == torch.device("cpu")
    assert wrapped.elite_indices.dtype == torch.long and wrapped.elite_indices.tolist() == [0, 2, 4]

    # mbrl-lib's "expectation" propagation needs a batch size that is a multiple of the number of elites.
    batch = synthetic_batch(9, seed=1)
    obs, act = torch.from_numpy(batch.obs), torch.from_numpy(batch.act)
    mean, var = wrapped.predict(obs, act)
    assert mean.shape == var.shape == (5, 9, OBS_DIM + 1)

    with torch.no_grad():  # mbrl-lib's forward on its normalized input: raw (delta obs, reward) targets
        x = trained_mbrl.input_normalizer.normalize(torch.cat([obs, act], dim=-1)).float()
        ref_mean, ref_logvar = trained_mbrl.model(x, use_propagation=False)
    torch.testing.assert_close(mean, ref_mean)
    torch.testing.assert_close(var, ref_logvar.exp())

    # Layout (obs delta first, reward last) and elites agree with mbrl-lib's own sample().
    ref_next, ref_rew = mbrl_expectation_step(trained_mbrl, obs, act)
    step = wrapped.step(obs, act, propagation="mean")
    assert isinstance(step, StepResult)
    torch.testing.assert_close(step.next_obs, ref_next)
    torch.testing.assert_close(step.rew, ref_rew[:, 0])
    # mbrl-lib's training worked (an untrained ensemble is off by ~0.16 in next_obs and ~0.7 in reward).
    assert float((step.next_obs - torch.from_numpy(batch.next_obs)).abs().mean()) < 0.1
    assert float((step.rew - torch.from_numpy(batch.rewards)).abs().mean()) < 0.4


@pytest.mark.parametrize(
    "layout", [{"target_is_delta": False}, {"target_is_delta": True, "no_delta_list": [1]}]
)
def test_from_mbrl_absolute_targets(layout):
    """Dims that predict next_obs itself (target_is_delta=False, no_delta_list) come out as deltas."""
    model = mbrl_model(seed=1, members=3, **layout)
    model.update_normalizer(synthetic_batch(64, seed=2))
    wrapped = from_mbrl(model)
    batch = synthetic_batch(6, seed=3)
    obs, act = torch.from_numpy(batch.obs), torch.from_numpy(batch.act)
    ref_next, ref_rew = mbrl_expectation_step(model, obs, act)
    step = wrapped.step(obs, act, propagation="mean")
    torch.testing.assert_close(step.next_obs, ref_next)
    torch.testing.assert_close(step.rew, ref_rew[:, 0])


def test_from_mbrl_rollout_uncertainty_and_termination(trained_mbrl):
    mbrl_style_termination = lambda act, next_obs: next_obs[:, :1] > 1.5  # noqa: E731
    wrapped = from_mbrl(trained_mbrl, termination_fn=mbrl_style_termination)
    starts = torch.from_numpy(synthetic_batch(40, seed=4).obs)
    obs, act = starts, torch.zeros(40, ACT_DIM)

    u = make_uncertainty("aleatoric", wrapped)
    values = u(obs, act)
    mean, var = wrapped.predict(obs, act)
    assert values.shape == (40,)
    torch.testing.assert_close(values, var.sqrt().norm(dim=-1).amax(dim=0))
    assert make_uncertainty("disagreement", wrapped, members="elites")(obs, act).shape == (40,)

    gen = torch.Generator().manual_seed(0)
    step = wrapped.step(obs, act, generator=gen, uncertainty=u)
    assert set(step.info["member"].tolist()) <= {0, 2, 4}
    torch.testing.assert_close(step.info["uncertainty"], values)
    assert torch.equal(step.terminal, step.next_obs[:, 0] > 1.5)

    result = rollout(
        wrapped,
        lambda o: torch.rand(o.shape[0], ACT_DIM) * 2 - 1,
        starts,
        horizon=4,
        uncertainty=u,
        penalty_coef=0.5,
        generator=gen,
    )
    tr = result.transitions
    m = tr["obs"].shape[0]
    assert 40 <= m <= 160
    assert (
        tr["next_obs"].shape == (m, OBS_DIM) and tr["act"].shape == (m, ACT_DIM) and tr["rew"].shape == (m,)
    )
    assert torch.isfinite(tr["rew"]).all() and result.mean_penalty > 0
    assert torch.equal(tr["terminal"].bool(), tr["next_obs"][:, 0] > 1.5)


def test_from_mbrl_reward_fn_and_errors(trained_mbrl):
    with pytest.raises(TypeError, match="OneDTransitionRewardModel"):
        from_mbrl(trained_mbrl.model)
    no_reward = mbrl_model(seed=2, members=2, learned_rewards=False)
    with pytest.raises(ValueError, match="reward_fn"):
        from_mbrl(no_reward)

    def reward_fn(act, next_obs):  # mbrl-lib's reward signature
        return -next_obs.square().sum(dim=-1, keepdim=True)

    wrapped = from_mbrl(no_reward, reward_fn=reward_fn)
    assert (wrapped.obs_dim, wrapped.act_dim) == (OBS_DIM, ACT_DIM)
    obs, act = torch.randn(5, OBS_DIM), torch.rand(5, ACT_DIM)
    mean, var = wrapped.predict(obs, act)
    assert mean.shape == (2, 5, OBS_DIM + 1) and bool((var[..., -1] == 0).all())
    torch.testing.assert_close(mean[..., -1], -(obs + mean[..., :-1]).square().sum(-1))
    step = wrapped.step(obs, act, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(step.rew, reward_fn(act, step.next_obs)[:, 0])


# ------------------------------------------------------------------------------------------ ours -> mbrl-lib


@pytest.fixture(scope="module")
def pendulum():
    """A small DynamicsEnsemble fitted for a few epochs on random Pendulum-v1 transitions."""
    env = gym.make("Pendulum-v1")
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    rows = {"obs": [], "act": [], "rew": [], "next_obs": []}
    for _ in range(1500):
        act = rng.uniform(-2.0, 2.0, size=(1,)).astype(np.float32)
        nxt, rew, term, trunc, _ = env.step(act)
        for k, v in zip(rows, (obs, act, rew, nxt), strict=True):
            rows[k].append(v)
        obs = env.reset()[0] if term or trunc else nxt
    data = {k: torch.tensor(np.array(v), dtype=torch.float32) for k, v in rows.items()}
    data["terminal"] = torch.zeros(len(data["rew"]))
    torch.manual_seed(0)
    ensemble = DynamicsEnsemble(
        3, 1, ensemble_size=4, num_elites=2, hidden=(64, 64), weight_decays=(0.0,) * 3
    )
    ensemble.fit(data, max_epochs=10, generator=torch.Generator().manual_seed(0))
    yield env, ensemble, data
    env.close()


def test_to_model_env_mean_step_is_our_prediction(pendulum):
    env, ensemble, data = pendulum
    model_env = to_model_env(ensemble, env, generator=torch.Generator().manual_seed(0))
    assert isinstance(model_env, mbrl_models.ModelEnv)
    assert isinstance(model_env.dynamics_model, EnsembleModelAdapter) and len(model_env.dynamics_model) == 4
    obs, act = data["obs"][:16], data["act"][:16]

    state = model_env.reset(obs.numpy())
    next_obs, rew, done, state = model_env.step(act.numpy().astype(np.float64), state)  # sample=False: mean
    ref = ensemble.step(obs, act, propagation="mean")
    assert isinstance(next_obs, np.ndarray) and rew.shape == (16, 1) and done.shape == (16, 1)
    np.testing.assert_allclose(next_obs, ref.next_obs.numpy())
    np.testing.assert_allclose(rew[:, 0], ref.rew.numpy())
    assert done.dtype == bool and not done.any()  # Pendulum never terminates
    # The fitted model is a usable Pendulum model.
    assert np.abs(next_obs - data["next_obs"][:16].numpy()).mean() < 0.3
    torch.testing.assert_close(state["obs"], ref.next_obs)


def test_to_model_env_sampling_follows_our_step(pendulum):
    env, ensemble, data = pendulum
    obs, act = data["obs"][:32], data["act"][:32]
    model_env = to_model_env(ensemble, env, generator=torch.Generator().manual_seed(7))
    state = model_env.reset(obs.numpy(), return_as_np=False)
    next_obs, rew, _, _ = model_env.step(act, state, sample=True)
    ref = ensemble.step(obs, act, generator=torch.Generator().manual_seed(7), propagation="random_elite")
    torch.testing.assert_close(next_obs, ref.next_obs)
    torch.testing.assert_close(rew[:, 0], ref.rew)

    fixed = to_model_env(ensemble, env, generator=torch.Generator().manual_seed(1), propagation="fixed_elite")
    state = fixed.reset(obs.numpy(), return_as_np=False)
    members = state["members"]
    assert set(members.tolist()) <= set(ensemble.elite_indices.tolist())
    for _ in range(3):  # TS-inf: each particle keeps its member
        nxt, _, _, state = fixed.step(act, state, sample=True)
        assert state["members"] is members and torch.isfinite(nxt).all()

    returns = model_env.evaluate_action_sequences(torch.zeros(6, 5, 1), obs[0].numpy(), num_particles=3)
    assert returns.shape == (6,) and torch.isfinite(returns).all()


def test_to_model_env_termination_choices():
    env = gym.make("Hopper-v5")
    try:
        obs = torch.from_numpy(np.stack([env.reset(seed=s)[0] for s in range(8)])).float()
        obs[::2, 0] = 0.5  # torso too low on half the rows
        act = torch.zeros(8, 3)

        def dones(ensemble, **kw):
            model_env = to_model_env(ensemble, env, **kw)
            state = model_env.reset(obs.numpy(), return_as_np=False)
            nxt, _, done, _ = model_env.step(act, state)
            assert done.shape == (8, 1) and done.dtype == torch.bool
            return nxt, done[:, 0]

        torch.manual_seed(0)
        plain = DynamicsEnsemble(11, 3, ensemble_size=2, num_elites=1, hidden=(16,), weight_decays=(0.0, 0.0))
        nxt, done = dones(plain)  # no rule in the model: the known rule for env.spec.id ("Hopper-v5")
        assert torch.equal(done, hopper_v5(obs, act, nxt))
        assert done.any() and not done.all()
        _, done_mbrl = dones(plain, termination_fn=mbrl_termination_fns.hopper)  # mbrl-lib's own function
        assert torch.equal(done_mbrl, done)
        _, never = dones(plain, termination_fn=lambda o, a, n: torch.zeros(n.shape[0], dtype=torch.bool))
        assert not never.any()

        learned = DynamicsEnsemble(
            11,
            3,
            ensemble_size=2,
            num_elites=1,
            hidden=(16,),
            weight_decays=(0.0, 0.0),
            learn_termination=True,
        )
        nxt, done = dones(learned)  # the model's own (learned) termination wins over the env's rule
        assert torch.equal(done, learned.terminal(obs, act, nxt))

        with pytest.raises(ValueError, match="do not match"):
            to_model_env(plain, gym.make("Pendulum-v1"))
    finally:
        env.close()


@pytest.mark.parametrize("optimizer", ["cem", "icem", "mppi"])
def test_mbrl_planner_on_our_model(pendulum, optimizer):
    env, ensemble, data = pendulum
    model_env = to_model_env(ensemble, env, generator=torch.Generator().manual_seed(0))
    bounds = {"lower_bound": "???", "upper_bound": "???", "device": "cpu"}
    optimizer_cfg = {
        "cem": {
            "_target_": "mbrl.planning.CEMOptimizer",
            "num_iterations": 2,
            "elite_ratio": 0.1,
            "population_size": 40,
            "alpha": 0.1,
            "return_mean_elites": True,
        },
        "icem": {
            "_target_": "mbrl.planning.ICEMOptimizer",
            "num_iterations": 2,
            "elite_ratio": 0.1,
            "population_size": 40,
            "population_decay_factor": 1.3,
            "colored_noise_exponent": 2.0,
            "keep_elite_frac": 0.3,
            "alpha": 0.1,
        },
        "mppi": {
            "_target_": "mbrl.planning.MPPIOptimizer",
            "num_iterations": 2,
            "population_size": 40,
            "gamma": 0.9,
            "sigma": 1.0,
            "beta": 0.9,
        },
    }[optimizer] | bounds
    agent_cfg = omegaconf.OmegaConf.create(
        {
            "_target_": "mbrl.planning.TrajectoryOptimizerAgent",
            "_recursive_": False,  # hydra >= 1.1 would build the optimizer before its bounds are filled in
            "action_lb": "???",
            "action_ub": "???",
            "planning_horizon": 5,
            "replan_freq": 1,
            "verbose": False,
            "optimizer_cfg": optimizer_cfg,
        }
    )
    agent = mbrl.planning.create_trajectory_optim_agent_for_model(model_env, agent_cfg, num_particles=2)
    action = agent.act(data["obs"][0].numpy())
    assert action.shape == (1,) and np.isfinite(action).all()
    assert env.action_space.low[0] <= action[0] <= env.action_space.high[0]


def test_round_trip_mbrl_model_in_mbrl_model_env(trained_mbrl):
    """mbrl-lib model -> from_mbrl -> to_model_env steps exactly like mbrl-lib's own ModelEnv on the model."""
    space = gym.spaces.Box(-1.0, 1.0, shape=(OBS_DIM,), dtype=np.float32)
    env = SimpleNamespace(observation_space=space, action_space=gym.spaces.Box(-1.0, 1.0, shape=(ACT_DIM,)))
    never = mbrl_termination_fns.no_termination
    theirs = mbrl_models.ModelEnv(env, trained_mbrl, never, generator=torch.Generator())
    ours = to_model_env(from_mbrl(trained_mbrl), env, termination_fn=never, propagation="fixed_elite")
    batch = synthetic_batch(9, seed=5)
    s_theirs, s_ours = theirs.reset(batch.obs), ours.reset(batch.obs)
    for _ in range(3):  # deterministic steps: the elites' mean (mbrl-lib's "expectation")
        o_theirs, r_theirs, d_theirs, s_theirs = theirs.step(batch.act, s_theirs)
        o_ours, r_ours, d_ours, s_ours = ours.step(batch.act, s_ours)
        np.testing.assert_allclose(o_ours, o_theirs, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(r_ours, r_theirs, rtol=1e-5, atol=1e-5)
        assert not d_ours.any() and not d_theirs.any()
    assert set(s_ours["members"].tolist()) <= {0, 2, 4}
    nxt, _, _, _ = ours.step(batch.act, s_ours, sample=True)  # TS-inf sampling through the wrapper
    assert nxt.shape == (9, OBS_DIM) and np.isfinite(nxt).all()


# --------------------------------------------------------------------------------------- optional dependency


def test_core_does_not_import_mbrl():
    for path in (REPO / "worldmodels").rglob("*.py"):
        if path.name == "mbrl_lib.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            assert not any(n == "mbrl" or n.startswith("mbrl.") for n in names), f"{path} imports mbrl-lib"


def test_missing_mbrl_gives_install_hint(monkeypatch):
    for name in [n for n in sys.modules if n == "mbrl" or n.startswith("mbrl.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "worldmodels.integrations.mbrl_lib")
    with pytest.raises(ImportError, match=r"pip install --no-deps mbrl==0\.2\.0"):
        importlib.import_module("worldmodels.integrations.mbrl_lib")
    import worldmodels.integrations  # the package itself imports without mbrl-lib

    assert "from_mbrl" in worldmodels.integrations.__all__
