"""Tests for the ensemble network, DynamicsEnsemble, termination rules and uncertainty estimators."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from worldmodels.dynamics import DynamicsEnsemble
from worldmodels.ensemble import EnsembleLinear, ProbabilisticEnsemble
from worldmodels.termination import (
    ant_v5,
    hopper_v5,
    inverted_pendulum_v5,
    termination_fn_for,
    walker2d_v5,
)
from worldmodels.uncertainty import (
    AleatoricMax,
    Disagreement,
    EnsembleStd,
    TotalVariance,
    make_uncertainty,
)

OBS_DIM, ACT_DIM = 3, 2
# Linear-Gaussian system: next = s + A s + B a + N(0, SIGMA^2), reward = 0.2 s0 - 0.1 a1 + N(0, SIGMA_R^2).
A = torch.tensor([[-0.1, 0.1, 0.0], [0.0, -0.2, 0.2], [-0.1, 0.0, -0.05]])
B = torch.tensor([[0.1, 0.0], [0.0, 0.2], [0.1, -0.1]])
SIGMA = torch.tensor([0.05, 0.1, 0.2])
SIGMA_R = 0.1



def assert_close(actual, expected, rtol: float = 1.3e-6, atol: float = 1e-5) -> None:
    """Like torch.testing.assert_close for float tensors, without its multi-second first-call import."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
    if actual.dtype == torch.bool:
        assert torch.equal(actual, expected), f"{actual} != {expected}"
        return
    ok = torch.isclose(actual, expected, rtol=rtol, atol=atol)
    assert bool(ok.all()), (
        f"max abs diff {(actual - expected).abs().max():.3g}; {actual[~ok][:5]} vs {expected[~ok][:5]}"
    )


def linear_gaussian(n: int, gen: torch.Generator, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """i.i.d. transitions in random order, so obs[t + 1] is unrelated to next_obs[t]."""
    s = scale * torch.randn(n, OBS_DIM, generator=gen)
    a = torch.rand(n, ACT_DIM, generator=gen) * 2 - 1
    nxt = s + s @ A.T + a @ B.T + SIGMA * torch.randn(n, OBS_DIM, generator=gen)
    r = 0.2 * s[:, 0] - 0.1 * a[:, 1] + SIGMA_R * torch.randn(n, generator=gen)
    return {"obs": s, "act": a, "rew": r, "next_obs": nxt, "terminal": torch.zeros(n)}


def small_model(**kw) -> DynamicsEnsemble:
    kw = {"ensemble_size": 4, "num_elites": 2, "hidden": (32, 32), "weight_decays": (0.0, 0.0, 0.0), **kw}
    return DynamicsEnsemble(OBS_DIM, ACT_DIM, **kw)


@pytest.fixture(scope="module")
def fitted():
    """A model fitted to the linear-Gaussian system long enough for the variance to converge (about 3 s)."""
    gen = torch.Generator().manual_seed(0)
    data = linear_gaussian(16_000, gen)
    model = small_model()
    report = model.fit(data, batch_size=128, max_epochs=25, patience=25, generator=gen)
    return model, report, data


# ------------------------------------------------------------------ ensemble network


def test_ensemble_linear_equals_per_member_linear():
    torch.manual_seed(0)
    layer = EnsembleLinear(5, 3, ensemble_size=4)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(4, 10, 5)
    out = layer(x)  # [4, 10, 3]
    expected = torch.stack([F.linear(x[e], layer.weight[e].T, layer.bias[e, 0]) for e in range(4)])
    assert_close(out, expected)


def test_probabilistic_ensemble_broadcast_bounds_and_losses():
    torch.manual_seed(0)
    net = ProbabilisticEnsemble(4, 3, ensemble_size=5, hidden=(16, 16), weight_decays=(1e-3, 2e-3, 3e-3))
    x = torch.randn(7, 4)
    mean2, logvar2 = net(x)
    mean3, logvar3 = net(x.unsqueeze(0).expand(5, 7, 4).contiguous())
    assert mean2.shape == logvar2.shape == (5, 7, 3)
    assert_close(mean2, mean3)
    assert_close(logvar2, logvar3)
    # members differ (independent initializations)
    assert not torch.allclose(mean2[0], mean2[1])
    # soft bounds hold even for huge pre-activations
    with torch.no_grad():
        net.layers[-1].bias[..., 3:] = 1e3
    _, logvar = net(x)
    assert bool((logvar <= net.max_logvar + 1e-3).all())  # softplus bounds are soft: tiny overshoot allowed
    with torch.no_grad():
        net.layers[-1].bias[..., 3:] = -1e3
    _, logvar = net(x)
    assert bool((logvar >= net.min_logvar - 1e-3).all())
    assert_close(net.bound_loss(), 0.01 * (0.5 - -10.0) * 5 * 3 * torch.ones(()))
    expected = sum(
        0.5 * wd * layer.weight.square().sum() for wd, layer in zip((1e-3, 2e-3, 3e-3), net.layers, strict=True)
    )
    assert_close(net.weight_decay_loss(), expected)


def test_adam_l2_groups_equal_explicit_weight_decay_loss():
    """The fused-Adam L2 groups used in training must be the gradient of weight_decay_loss()."""
    torch.manual_seed(0)
    net_a = ProbabilisticEnsemble(4, 3, ensemble_size=3, hidden=(8,), weight_decays=(0.5, 0.25))
    net_b = copy.deepcopy(net_a)
    opt_a = torch.optim.Adam(net_a.optimizer_param_groups(), lr=1e-2)
    opt_b = torch.optim.Adam(net_b.parameters(), lr=1e-2)
    x, y = torch.randn(3, 6, 4), torch.randn(3, 6, 3)
    for _ in range(3):
        loss_a = (net_a(x)[0] - y).square().mean()
        loss_b = (net_b(x)[0] - y).square().mean() + net_b.weight_decay_loss()
        for opt, loss in ((opt_a, loss_a), (opt_b, loss_b)):
            opt.zero_grad()
            loss.backward()
            opt.step()
    for pa, pb in zip(net_a.parameters(), net_b.parameters(), strict=True):
        assert_close(pa, pb)


# ------------------------------------------------------------------ fit and predict


def test_fit_recovers_noise_variance(fitted):
    check_recovers_linear_gaussian(fitted[0])


def check_recovers_linear_gaussian(model: DynamicsEnsemble) -> None:
    gen = torch.Generator().manual_seed(1)
    test = linear_gaussian(2000, gen)
    mean, var = model.predict(test["obs"], test["act"])
    assert mean.shape == var.shape == (4, 2000, OBS_DIM + 1)
    true_var = torch.cat([SIGMA.square(), torch.tensor([SIGMA_R**2])])
    est_var = var[model.elite_indices].mean(dim=(0, 1))  # [D]
    # within 30% relative per dim (observed within about 10%); the noise stds span 0.05..0.2
    assert_close(est_var, true_var, rtol=0.3, atol=0.0)
    # and the mean is the true conditional mean of (delta obs, reward)
    true_delta = test["obs"] @ A.T + test["act"] @ B.T
    true_rew = 0.2 * test["obs"][:, 0] - 0.1 * test["act"][:, 1]
    err = mean[model.elite_indices].mean(0) - torch.cat([true_delta, true_rew[:, None]], dim=-1)
    assert bool((err.square().mean(0) < 0.1 * true_var).all())


def test_chunked_predict_equals_single_pass(fitted):
    model, _, _ = fitted
    gen = torch.Generator().manual_seed(10)
    obs, act = torch.randn(50, OBS_DIM, generator=gen), torch.rand(50, ACT_DIM, generator=gen)
    chunk = model.predict_chunk
    try:
        model.predict_chunk = None
        whole = model.predict(obs, act)
        model.predict_chunk = 7
        chunked = model.predict(obs, act)
    finally:
        model.predict_chunk = chunk
    for a, b in zip(whole, chunked, strict=True):
        assert_close(a, b)


def test_disagreement_larger_far_from_data(fitted):
    model, _, _ = fitted
    gen = torch.Generator().manual_seed(2)
    near = linear_gaussian(1000, gen)
    far = linear_gaussian(1000, gen, scale=6.0)
    for u in (Disagreement(model), EnsembleStd(model)):
        assert u(far["obs"], far["act"]).mean() > 3 * u(near["obs"], near["act"]).mean()


def test_fit_report_fields_and_elites(fitted):
    model, report, data = fitted
    assert len(report.holdout_mse) == 4
    assert report.epochs == 25 and report.stopped_by == "max_epochs"
    n_train = 16_000 - 1000  # holdout = min(20%, 1000)
    assert report.holdout_indices.shape == (1000,)
    assert report.train_steps == 25 * -(-n_train // 128)
    assert report.seconds > 0
    order = sorted(range(4), key=lambda i: report.holdout_mse[i])
    assert report.elite_indices == order[:2]
    assert model.elite_indices.tolist() == report.elite_indices


def test_early_stopping_stops_and_restores_best_snapshot():
    gen = torch.Generator().manual_seed(3)
    data = linear_gaussian(3000, gen)
    model = small_model()
    # A >100% relative drop is impossible, so only the first epoch (from +inf) counts as an improvement.
    report = model.fit(data, batch_size=256, improvement_threshold=1.0, patience=2, generator=gen)
    assert report.stopped_by == "patience"
    assert report.epochs == 3
    # Every member ends at its epoch-1 snapshot: recompute the holdout MSE (normalized targets) from scratch.
    hold = report.holdout_indices
    mean, _ = model.predict(data["obs"][hold], data["act"][hold])
    targets = torch.cat([data["next_obs"][hold] - data["obs"][hold], data["rew"][hold, None]], dim=-1)
    mse = ((mean - targets) / model.target_std).square().mean(dim=(1, 2))
    assert_close(mse, torch.tensor(report.holdout_mse), rtol=1e-4, atol=1e-6)
    # max_epochs and max_seconds also stop
    assert small_model().fit(data, max_epochs=1, generator=gen).stopped_by == "max_epochs"
    rep = small_model().fit(data, batch_size=8, max_seconds=0.05, generator=gen)
    assert rep.stopped_by == "max_seconds" and rep.epochs == 1


def test_bf16_training_recovers_noise_variance_as_float32_does():
    # the same fit as the `fitted` fixture with bf16 matmuls: the same tolerances must hold
    gen = torch.Generator().manual_seed(0)
    model = small_model(train_precision="bfloat16")
    model.fit(linear_gaussian(16_000, gen), batch_size=128, max_epochs=25, patience=25, generator=gen)
    check_recovers_linear_gaussian(model)
    for p in model.parameters():
        assert p.dtype == torch.float32  # master weights stay float32
    with pytest.raises(ValueError, match="train_precision"):
        small_model(train_precision="float16")


def test_auto_precision_follows_the_hardware(monkeypatch):
    for native, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr("worldmodels.dynamics.native_bf16", lambda device, native=native: native)
        model = small_model(train_precision="auto")
        assert model.train_precision == expected
        assert model.config()["train_precision"] == expected  # saved resolved, so a load trains the same way


def test_weighted_bootstrap_draws_only_positive_weights(monkeypatch):
    model = small_model()
    gen = torch.Generator().manual_seed(4)
    weights = torch.zeros(100)
    weights[10:20] = 1.0
    weights[50] = 5.0
    for limit in (2**24, 50):  # multinomial, then the inverse-CDF path used beyond multinomial's size limit
        monkeypatch.setattr("worldmodels.dynamics._MULTINOMIAL_MAX_CATEGORIES", limit)
        idx = model._bootstrap(100, weights, gen)  # [E, 100]
        assert idx.shape == (4, 100)
        assert bool((weights[idx] > 0).all())
        share_50 = (idx == 50).float().mean()
        assert 0.25 < share_50 < 0.45  # expected 5 / 15
        assert not torch.equal(idx[0], idx[1])  # members get different bootstrap samples
    uniform = model._bootstrap(100, None, gen)
    assert uniform.min() >= 0 and uniform.max() < 100 and len(uniform.unique()) > 80


def test_fit_validates_data():
    model = small_model()
    gen = torch.Generator().manual_seed(5)
    data = linear_gaussian(50, gen)
    with pytest.raises(KeyError, match="next_obs"):
        model.fit({k: v for k, v in data.items() if k != "next_obs"})
    with pytest.raises(ValueError, match="rew"):
        model.fit({**data, "rew": data["rew"][:, None]})
    bad = data["obs"].clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.fit({**data, "obs": bad})


# ------------------------------------------------------------------ step


def _constant_model(member_means: torch.Tensor, elites: list[int]) -> DynamicsEnsemble:
    """Members predict constant (delta obs, reward) = member_means[e] with negligible variance."""
    e = member_means.shape[0]
    model = DynamicsEnsemble(
        OBS_DIM, ACT_DIM, ensemble_size=e, num_elites=len(elites), hidden=(8,), weight_decays=(0.0, 0.0)
    )
    last = model.net.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias[:, 0, : OBS_DIM + 1] = member_means
        last.bias[:, 0, OBS_DIM + 1 :] = -30.0  # log-variance
        model.net.min_logvar.fill_(-40.0)
        model.elite_indices.copy_(torch.tensor(elites))
    return model


def test_step_shapes_and_samples_only_elites():
    member_means = torch.arange(5.0)[:, None] * torch.tensor([1.0, 2.0, 3.0, 10.0])  # reward = 10 e
    model = _constant_model(member_means, elites=[3, 1])
    gen = torch.Generator().manual_seed(6)
    obs, act = torch.randn(2000, OBS_DIM, generator=gen), torch.randn(2000, ACT_DIM, generator=gen)
    out = model.step(obs, act, generator=gen)
    assert out.next_obs.shape == (2000, OBS_DIM) and out.rew.shape == (2000,)
    assert out.terminal.shape == (2000,) and out.terminal.dtype == torch.bool and not out.terminal.any()
    member = out.info["member"]
    assert set(member.unique().tolist()) == {1, 3}
    assert_close(out.rew, 10.0 * member.float(), atol=1e-4, rtol=0)
    assert_close(out.next_obs - obs, member_means[member, :OBS_DIM], atol=1e-4, rtol=0)
    mean_step = model.step(obs, act, propagation="mean")
    assert_close(mean_step.rew, torch.full((2000,), 20.0))
    with pytest.raises(ValueError, match="propagation"):
        model.step(obs, act, propagation="bogus")


def test_step_uncertainty_from_same_forward_pass(fitted):
    model, _, _ = fitted
    gen = torch.Generator().manual_seed(7)
    obs, act = torch.randn(64, OBS_DIM, generator=gen), torch.rand(64, ACT_DIM, generator=gen)
    for name in ("aleatoric", "disagreement", "ensemble_std", "total_variance"):
        u = make_uncertainty(name, model)
        out = model.step(obs, act, generator=gen, uncertainty=u)
        assert_close(out.info["uncertainty"], u(obs, act))


def test_step_uses_termination_rule_and_learned_head():
    gen = torch.Generator().manual_seed(8)
    model = small_model(termination_fn="Hopper-v5")
    obs = torch.tensor([[1.2, 0.0, 0.0], [0.1, 0.0, 0.0]])  # z = 1.2 healthy, z = 0.1 fallen (deltas ~ 0)
    out = model.step(obs, torch.zeros(2, ACT_DIM), generator=gen, propagation="mean")
    assert_close(out.terminal, hopper_v5(obs, None, out.next_obs))

    data = linear_gaussian(4000, gen)
    data["terminal"] = (data["next_obs"][:, 0] > 0.5).float()  # about 30% positives
    learned = small_model(learn_termination=True)
    report = learned.fit(data, batch_size=128, max_epochs=6, generator=gen)
    assert report.termination_holdout_accuracy > 0.95
    test = linear_gaussian(1000, gen)
    pred = learned.terminal(test["obs"], test["act"], test["next_obs"])
    assert (pred == (test["next_obs"][:, 0] > 0.5)).float().mean() > 0.95
    with pytest.raises(ValueError, match="either"):
        small_model(termination_fn="Hopper-v5", learn_termination=True)


# ------------------------------------------------------------------ save / load


def test_save_load_predicts_identically(fitted, tmp_path):
    model, _, _ = fitted
    path = tmp_path / "dyn.pt"
    model.save(path)
    loaded = DynamicsEnsemble.load(path, device="cpu")
    gen = torch.Generator().manual_seed(9)
    obs, act = torch.randn(100, OBS_DIM, generator=gen), torch.rand(100, ACT_DIM, generator=gen)
    for a, b in zip(model.predict(obs, act), loaded.predict(obs, act), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(loaded.elite_indices, model.elite_indices)
    s1 = model.step(obs, act, generator=torch.Generator().manual_seed(0))
    s2 = loaded.step(obs, act, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s1.next_obs, s2.next_obs) and torch.equal(s1.rew, s2.rew)
    # the file holds plain tensors and python types only
    payload = torch.load(path, weights_only=True)
    assert payload["config"]["hidden"] == [32, 32]

    custom = small_model(termination_fn=lambda o, a, n: n[:, 0] > 0)
    custom.save(tmp_path / "custom.pt")
    with pytest.raises(ValueError, match="termination_fn"):
        DynamicsEnsemble.load(tmp_path / "custom.pt")
    named = small_model(termination_fn="Walker2d-v5")
    named.save(tmp_path / "named.pt")
    assert DynamicsEnsemble.load(tmp_path / "named.pt").termination_fn is walker2d_v5
    rule = small_model(termination_fn=termination_fn_for("mujoco/ant/medium-v0"))  # a rule passed as callable
    rule.save(tmp_path / "rule.pt")
    assert DynamicsEnsemble.load(tmp_path / "rule.pt").termination_fn is ant_v5


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # only devices that exist here


@pytest.mark.parametrize("device", DEVICES)
def test_fit_step_stay_on_device(device):
    gen = torch.Generator(device=device).manual_seed(0)
    data = {k: v.to(device) for k, v in linear_gaussian(2000, torch.Generator().manual_seed(0)).items()}
    model = small_model(device=device)
    model.fit(data, max_epochs=2, generator=gen)
    out = model.step(data["obs"][:10], data["act"][:10], generator=gen, uncertainty=AleatoricMax(model))
    assert out.next_obs.device.type == device and out.info["uncertainty"].device.type == device
    assert out.info["uncertainty"].shape == (10,)


# ------------------------------------------------------------------ termination rules


def test_termination_rules():
    t = lambda fn, rows: fn(None, None, torch.tensor(rows, dtype=torch.float32)).tolist()  # noqa: E731
    healthy = [1.25, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert t(hopper_v5, [healthy]) == [False]
    assert t(hopper_v5, [[0.6, 0, 0, 0, 0, 0]]) == [True]  # fallen
    assert t(hopper_v5, [[1.25, 0.3, 0, 0, 0, 0]]) == [True]  # torso tilted
    assert t(hopper_v5, [[1.25, 0.0, 0, 0, 0, 150.0]]) == [True]  # state out of (-100, 100)
    assert t(hopper_v5, [[float("nan"), 0, 0, 0, 0, 0]]) == [True]
    assert t(walker2d_v5, [[1.2, 0.5], [2.1, 0.0], [1.2, -1.1]]) == [False, True, True]
    assert t(ant_v5, [[0.5, 0.0], [1.0, 0.0], [1.1, 0.0], [0.5, float("inf")]]) == [False, False, True, True]
    assert t(inverted_pendulum_v5, [[0.0, 0.1], [0.0, -0.25]]) == [False, True]
    cheetah = termination_fn_for("HalfCheetah-v5")
    assert t(cheetah, [[-100.0] * 17, [float("nan")] * 17]) == [False, False]
    assert termination_fn_for("mujoco/hopper/medium-v0") is hopper_v5
    assert termination_fn_for("Hopper-v4") is None
    assert termination_fn_for("CartPole-v1") is None
    assert termination_fn_for("Humanoid-v5") is not None and termination_fn_for("Swimmer-v5") is not None


@pytest.mark.parametrize("env_id", ["Hopper-v5", "Walker2d-v5", "InvertedPendulum-v5"])
def test_termination_rules_match_gymnasium(env_id):
    import gymnasium as gym
    env = gym.make(env_id)
    rule = termination_fn_for(env_id)
    obs, _ = env.reset(seed=0)
    env.action_space.seed(0)
    seen = 0
    for _ in range(400):
        act = env.action_space.sample()
        nxt, _, terminated, truncated, _ = env.step(act)
        pred = rule(torch.as_tensor(obs)[None], torch.as_tensor(act)[None], torch.as_tensor(nxt)[None])
        assert bool(pred[0]) == terminated
        seen += int(terminated)
        obs = nxt
        if terminated or truncated:
            obs, _ = env.reset()
    assert seen > 0
    env.close()


# ------------------------------------------------------------------ uncertainty estimators


class _Stub:
    def __init__(self, elites):
        self.elite_indices = torch.tensor(elites)


def test_estimator_formulas_on_given_prediction():
    torch.manual_seed(0)
    mean, var = torch.randn(5, 6, 4), torch.rand(5, 6, 4)  # [E, B, D]; last dim is the reward
    model = _Stub([4, 0, 2])
    expected_aleatoric = torch.stack([var[e].sqrt().norm(dim=-1) for e in range(5)]).max(0).values
    assert_close(AleatoricMax(model).from_prediction(mean, var), expected_aleatoric)
    obs_mean = mean[..., :3]
    expected_dis = torch.stack([(obs_mean[e] - obs_mean.mean(0)).norm(dim=-1) for e in range(5)]).max(0).values
    assert_close(Disagreement(model).from_prediction(mean, var), expected_dis)
    expected_std = obs_mean.var(0, unbiased=False).mean(-1).sqrt()
    assert_close(EnsembleStd(model).from_prediction(mean, var), expected_std)
    em, ev = mean[[4, 0, 2]], var[[4, 0, 2]]
    expected_total = (ev.mean(0) + em.var(0, unbiased=False)).sum(-1)
    assert_close(TotalVariance(model).from_prediction(mean, var), expected_total)
    elite_aleatoric = AleatoricMax(model, members="elites").from_prediction(mean, var)
    assert_close(elite_aleatoric, ev.sqrt().norm(dim=-1).max(0).values)
    with pytest.raises(ValueError, match="members"):
        AleatoricMax(model, members="some")


def test_q_ensemble_std_equals_torch_std():
    torch.manual_seed(0)
    weights = torch.randn(10, 5)

    def critic(obs, act):  # [N=10, B]
        return weights @ torch.cat([obs, act], -1).T

    obs, act = torch.randn(8, 3), torch.randn(8, 2)
    u = make_uncertainty("q_std", critic)
    assert_close(u(obs, act), torch.std(critic(obs, act), dim=0))
    assert u.name == "q_std"


def test_make_uncertainty_names():
    model = _Stub([0])
    assert isinstance(make_uncertainty("aleatoric", model), AleatoricMax)
    assert make_uncertainty("disagreement", model, members="elites").members == "elites"
    with pytest.raises(ValueError) as err:
        make_uncertainty("mopo", model)
    for name in ("aleatoric", "disagreement", "ensemble_std", "total_variance", "q_std"):
        assert name in str(err.value)


# ------------------------------------------------------------------ normalize_targets

# Per-target scales of (delta obs, reward) spanning 25x in std, kept inside the default log-variance bounds.
TARGET_SCALE = torch.tensor([0.2, 1.0, 5.0, 3.0])


def scaled_linear_gaussian(n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    data = linear_gaussian(n, gen)
    delta = (data["next_obs"] - data["obs"]) * TARGET_SCALE[:OBS_DIM]
    return data | {"next_obs": data["obs"] + delta, "rew": data["rew"] * TARGET_SCALE[OBS_DIM]}


def test_raw_targets_recover_the_truth_in_raw_units():
    """normalize_targets=False: predict, step and the aleatoric penalty are in raw units, as with True."""
    gen = torch.Generator().manual_seed(0)
    data = scaled_linear_gaussian(4000, gen)
    models, reports = {}, {}
    for normalize in (False, True):
        torch.manual_seed(0)
        models[normalize] = small_model(normalize_targets=normalize)
        reports[normalize] = models[normalize].fit(data, batch_size=128, max_epochs=20, patience=20, generator=gen)
    raw, report = models[False], reports[False]
    assert torch.equal(raw.target_mean, torch.zeros(OBS_DIM + 1))
    assert torch.equal(raw.target_std, torch.ones(OBS_DIM + 1))
    assert not torch.equal(models[True].target_std, torch.ones(OBS_DIM + 1))
    # the holdout MSE (early stopping, elites) is in raw units: recompute it from predict()
    hold = report.holdout_indices
    mean, _ = raw.predict(data["obs"][hold], data["act"][hold])
    targets = torch.cat([data["next_obs"][hold] - data["obs"][hold], data["rew"][hold, None]], dim=-1)
    assert_close((mean - targets).square().mean(dim=(1, 2)), torch.tensor(report.holdout_mse), rtol=1e-4, atol=1e-7)

    test = linear_gaussian(2000, torch.Generator().manual_seed(1))
    true_rew = 0.2 * test["obs"][:, 0] - 0.1 * test["act"][:, 1]
    truth = torch.cat([test["obs"] @ A.T + test["act"] @ B.T, true_rew[:, None]], -1) * TARGET_SCALE  # [B, D]
    true_std = torch.cat([SIGMA, torch.tensor([SIGMA_R])]) * TARGET_SCALE  # [D]
    for normalize, model in models.items():
        mean, _ = model.predict(test["obs"], test["act"])
        err = (mean[model.elite_indices].mean(0) - truth).square().mean(0)  # [D]
        # R^2 > 0.9 on every dim (observed > 0.97); a units mix-up is off by the scales (25x)
        assert bool((err < 0.1 * truth.var(0)).all()), (normalize, err / truth.var(0))
        # MOPO's penalty ~ ||true noise std|| in raw units (observed within 11%)
        u = AleatoricMax(model)(test["obs"], test["act"]).mean()
        assert_close(u, true_std.norm(), rtol=0.3, atol=0.0)
        step = model.step(test["obs"], test["act"], generator=torch.Generator().manual_seed(0), propagation="mean")
        assert_close(step.rew, mean[model.elite_indices].mean(0)[:, -1])


def test_normalize_targets_survives_save_load(tmp_path):
    gen = torch.Generator().manual_seed(4)
    data = scaled_linear_gaussian(600, gen)
    model = small_model(normalize_targets=False)
    model.fit(data, max_epochs=2, generator=gen)
    model.save(tmp_path / "raw.pt")
    loaded = DynamicsEnsemble.load(tmp_path / "raw.pt")
    assert loaded.normalize_targets is False and loaded.config()["normalize_targets"] is False
    obs, act = data["obs"][:50], data["act"][:50]
    for a, b in zip(model.predict(obs, act), loaded.predict(obs, act), strict=True):
        assert torch.equal(a, b)
    # a refit of the loaded model keeps the identity target scaler
    loaded.fit(data, max_epochs=1, generator=gen)
    assert torch.equal(loaded.target_std, torch.ones(OBS_DIM + 1))
    # files written before the option existed standardized their targets
    payload = torch.load(tmp_path / "raw.pt", weights_only=True)
    del payload["config"]["normalize_targets"]
    torch.save(payload, tmp_path / "old.pt")
    assert DynamicsEnsemble.load(tmp_path / "old.pt").normalize_targets is True


def test_normalize_targets_true_is_the_default_bitwise():
    data = scaled_linear_gaussian(600, torch.Generator().manual_seed(5))
    models = []
    for kw in ({}, {"normalize_targets": True}):
        torch.manual_seed(0)
        model = small_model(**kw)
        model.fit(data, max_epochs=2, generator=torch.Generator().manual_seed(6))
        models.append(model)
    default, explicit = models
    assert default.normalize_targets is True
    for (name, a), (_, b) in zip(default.state_dict().items(), explicit.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    obs, act = data["obs"][:50], data["act"][:50]
    for a, b in zip(default.predict(obs, act), explicit.predict(obs, act), strict=True):
        assert torch.equal(a, b)
