"""Off2On (Lee et al. 2021): the density-ratio estimator, balanced replay's priorities and start share,
the moment-matched mixture policy, and the claim that the vectorized ensemble is E CQL agents: one
batched update equals E separate agents/cql.py updates from the same weights on the same batch."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from agents.core.agent import EnvSpec
from agents.core.networks import EnsembleTanhGaussianActor, mixture_moments
from agents.cql import CQL, CQLConfig
from agents.off2on import Off2On, Off2OnConfig
from worldmodels.data.density_ratio import DensityRatio, DensityRatioConfig, balanced_priority, initial_max_priority
from worldmodels.data.samplers import SamplerConfig, Sources, make_sampler
from worldmodels.data.store import Batch, TransitionStore
from worldmodels.progress import Progress

OFFLINE = Progress("offline", 0, 0, 0, 10, 10)
ONLINE = Progress("online", 10, 5, 10, 10, 10)


# --- the density-ratio estimator ------------------------------------------------------------------
def test_density_ratio_recovers_the_ratio_of_two_gaussians():
    """offline N(0, 1), online N(0.5, 1): w(x) = exp(0.5 x - 1/8); within 15% on [-1, 1.5] after 300 steps
    (the JS loss's minimiser is d_online / d_offline; seen: ~6%)."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net, none = DensityRatio(1, 0, (64, 64), lr=1e-3), torch.zeros(512, 0)
    for _ in range(300):
        net.fit_step(torch.randn(512, 1, generator=g), none, torch.randn(512, 1, generator=g) + 0.5, none)
    x = torch.linspace(-1.0, 1.5, 26)[:, None]
    with torch.no_grad():
        w = net(x, torch.zeros(26, 0))
    true = torch.exp(0.5 * x[:, 0] - 0.125)
    assert ((w - true).abs() / true).max() < 0.15


def test_priority_formula_and_clamp_on_a_hand_case():
    w = torch.tensor([0.0, 1.0, 16.0, 1e20])
    w_off = torch.tensor([1.0, 4.0])  # sqrt: 1 and 2, mean 1.5
    p = balanced_priority(w, w_off, temperature=2.0, lo=1e-3, hi=1e3)
    assert torch.allclose(p, torch.tensor([1e-3, 1 / 1.5, 4 / 1.5, 1e3]))
    assert initial_max_priority(1000, 0.5, 1000) == pytest.approx(1.0)
    assert initial_max_priority(3000, 0.75, 1000) == pytest.approx(9.0)  # M f / ((1 - f) N)


def store(n: int, source: str, capacity: int | None = None, seed: int = 0) -> TransitionStore:
    g = torch.Generator().manual_seed(seed)
    s = TransitionStore(capacity or n, 3, 2, source=source)
    s.add(obs=torch.randn(n, 3, generator=g), act=torch.rand(n, 2, generator=g) * 2 - 1, rew=torch.randn(n),
          next_obs=torch.randn(n, 3, generator=g), terminal=torch.zeros(n), truncated=torch.zeros(n))
    return s


@pytest.mark.parametrize("share", [0.5, 0.75])
def test_online_share_starts_at_the_configured_one(share):
    """M = 300 offline rows at 1; once N = 100 online rows sit at the initial maximum, they hold `share`."""
    offline, online = store(300, "offline"), TransitionStore(200, 3, 2, source="online")
    ratio = DensityRatioConfig(hidden=[8], initial_online_share=share, initial_online_rows=100)
    sampler = make_sampler(SamplerConfig(kind="balanced", ratio=ratio), Sources(offline, online))
    rows = online.add(**store(100, "online", seed=1).valid())
    sampler.rows_added("online", rows)
    assert sampler.tree.get(rows + 300) == pytest.approx(initial_max_priority(300, share, 100))
    draws = sampler.sample(8000, ONLINE, torch.Generator().manual_seed(0))
    assert (draws.source == 1).float().mean().item() == pytest.approx(share, abs=0.02)


def test_balanced_sampler_writes_the_formula_back_and_resumes():
    offline, online = store(300, "offline"), TransitionStore(200, 3, 2, source="online")
    cfg = SamplerConfig(kind="balanced", ratio=DensityRatioConfig(hidden=[16, 16], batch_size=32))
    sampler = make_sampler(cfg, Sources(offline, online))
    sampler.rows_added("online", online.add(**store(50, "online", seed=1).valid()))
    # offline phase: no online rows yet would mean no write-back; here the batch is an online one
    batch = sampler.sample(64, ONLINE, torch.Generator().manual_seed(1))
    net = copy.deepcopy(sampler.ratio)  # the estimator before the update's step
    torch.manual_seed(5)
    info = {"priority": torch.full((64,), 123.0)}  # an agent's own priority is replaced
    sampler.after_update(batch, info)
    torch.manual_seed(5)  # the same uniform draws, by hand
    off = offline.gather(offline.sample_indices(32))
    online.sample_indices(32)  # the online draw comes second
    with torch.no_grad():
        expected = balanced_priority(net(batch.obs, batch.act), net(off.obs, off.act), 5.0, 1e-3, 1e3)
    got = sampler.tree.get(sampler.tree_index(batch.source, batch.index)).float()
    assert torch.allclose(got, expected, rtol=1e-5)
    assert "priority" not in info and {"loss/density_ratio", "replay/online_share"} <= set(info)
    assert not torch.equal(net.net[0].weight, sampler.ratio.net[0].weight)  # the estimator took a step
    start = initial_max_priority(300, 0.5, 1000)
    assert sampler.max_priority.item() == pytest.approx(max(start, expected.max().item()))
    rows = online.add(**store(1, "online", seed=2).valid())  # a new row enters at the running maximum
    sampler.rows_added("online", rows)
    assert sampler.tree.get(rows + 300).item() == pytest.approx(sampler.max_priority.item())
    restored = make_sampler(cfg, Sources(offline, online))
    restored.load_state_dict(sampler.state_dict())
    for a, b in zip(sampler.ratio.state_dict().values(), restored.ratio.state_dict().values(), strict=True):
        assert not isinstance(a, torch.Tensor) or torch.equal(a, b)
    assert restored.ratio.optimizer.state_dict()["state"].keys() == sampler.ratio.optimizer.state_dict()["state"].keys()


# --- the mixture policy ----------------------------------------------------------------------------
def test_mixture_moments_on_a_hand_case():
    means = torch.tensor([1.0, 3.0]).view(2, 1, 1)  # [E, B, A]
    stds = torch.tensor([1.0, 2.0]).view(2, 1, 1)
    mean, std = mixture_moments(means, stds)
    # mean 2; var = ((1 + 1) + (4 + 9)) / 2 - 4 = 3.5
    assert mean.item() == pytest.approx(2.0) and std.item() == pytest.approx(math.sqrt(3.5))
    _, tiny = mixture_moments(torch.zeros(3, 1, 1), torch.full((3, 1, 1), math.exp(-25.0)))
    assert tiny.item() == pytest.approx(math.exp(-20.0))  # the reference's std clamp [e^-20, e^2]


def test_mixture_action_is_the_squashed_mean_of_means():
    torch.manual_seed(0)
    actor = EnsembleTanhGaussianActor(3, 2, torch.full((2,), 2.0), torch.zeros(2), (8,), ensemble_size=4)
    obs = torch.randn(5, 3)
    means, _ = actor.moments(obs)
    act, _ = actor.mixture(obs, deterministic=True)
    assert torch.allclose(act, 2.0 * torch.tanh(means.mean(0)))


# --- the ensemble is E CQL agents --------------------------------------------------------------------
def fixed_noise(shape, dtype=None, device=None):
    """Deterministic 'noise' that depends only on the last two dims: every member of a [E, rows, A] draw
    gets what a single agent's [rows, A] draw gets."""
    rows, cols = shape[-2], shape[-1]
    base = torch.sin(torch.arange(rows * cols, dtype=torch.float32) * 0.7 + 0.3).view(rows, cols)
    return base.expand(*shape).clone().to(dtype=dtype or torch.float32, device=device)


@pytest.fixture
def no_randomness(monkeypatch):
    monkeypatch.setattr(torch.distributions.normal, "_standard_normal", fixed_noise)
    def fixed_rand(*size, device=None, generator=None, dtype=None):
        shape = size[0] if len(size) == 1 and not isinstance(size[0], int) else size
        return (fixed_noise(tuple(shape) if len(shape) > 1 else (1, *shape), dtype, device).view(shape) + 1) / 2

    monkeypatch.setattr(torch, "rand", fixed_rand)


def batch_of(b: int, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(b, 3, generator=g), torch.rand(b, 2, generator=g) * 2 - 1, torch.randn(b, generator=g),
                 torch.randn(b, 3, generator=g), (torch.rand(b, generator=g) < 0.2).float(), torch.zeros(b))


def load_member(ens: Off2On, i: int, agent: CQL) -> None:
    """Copy CQL agent `agent`'s weights into member i of the ensemble."""
    with torch.no_grad():
        linears = [m for m in agent.actor.trunk if isinstance(m, torch.nn.Linear)]
        for layer, lin in zip([*ens.actor.hidden, ens.actor.head], linears, strict=True):
            layer.weight[i] = lin.weight.t()
            layer.bias[i, 0] = lin.bias
        for mine, theirs in ((ens.critic, agent.critic), (ens.critic_target, agent.critic_target)):
            for a, b in zip(mine.parameters(), theirs.parameters(), strict=True):
                a[2 * i:2 * i + 2] = b
        ens.log_alpha[i] = agent.log_alpha
        ens.log_alpha_prime[i] = agent.log_alpha_prime


def assert_member_equals(ens: Off2On, i: int, agent: CQL) -> None:
    kw = {"rtol": 1e-4, "atol": 1e-5}
    linears = [m for m in agent.actor.trunk if isinstance(m, torch.nn.Linear)]
    for layer, lin in zip([*ens.actor.hidden, ens.actor.head], linears, strict=True):
        assert torch.allclose(layer.weight[i], lin.weight.t(), **kw)
        assert torch.allclose(layer.bias[i, 0], lin.bias, **kw)
    for mine, theirs in ((ens.critic, agent.critic), (ens.critic_target, agent.critic_target)):
        for a, b in zip(mine.parameters(), theirs.parameters(), strict=True):
            assert torch.allclose(a[2 * i:2 * i + 2], b, **kw)
    assert torch.allclose(ens.log_alpha[i], agent.log_alpha, **kw)
    assert torch.allclose(ens.log_alpha_prime[i], agent.log_alpha_prime, **kw)


@pytest.mark.parametrize("variant", [{}, {"lagrange": True, "max_target_backup": True}])
def test_vectorized_update_equals_five_separate_cql_updates(no_randomness, variant):
    spec = EnvSpec(3, 2, -torch.ones(2), torch.ones(2))
    cfg = Off2OnConfig(hidden=[32, 32], n_actions=3, ensemble_size=5, **variant)
    cql_cfg = CQLConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(CQLConfig) if f.name != "name"})
    torch.manual_seed(0)
    ens = Off2On(cfg, spec, torch.device("cpu"))
    members = []
    for i in range(cfg.ensemble_size):
        torch.manual_seed(100 + i)  # five independent inits
        members.append(CQL(cql_cfg, spec, torch.device("cpu")))
        load_member(ens, i, members[i])
    for step in range(2):  # two steps: Adam's moments per member too
        batch = batch_of(16, seed=step)
        info = ens.update(batch, OFFLINE)
        single = [agent.update(batch, OFFLINE) for agent in members]
    for i, agent in enumerate(members):
        assert_member_equals(ens, i, agent)
    # the summed losses are the members' losses added up
    assert info["loss/critic"].item() == pytest.approx(sum(s["loss/critic"].item() for s in single), rel=1e-4)


def test_online_update_is_sac_on_the_mixture_without_cql(no_randomness):
    """Online: member i's target min_j Q'_ij(s', a') - alpha log pi(a'|s') with a' from the mixture, and
    alpha a fresh 1.0; the actor loss is alpha log pi - mean_i min_j Q_ij (computed here member by member)."""
    spec = EnvSpec(3, 2, -torch.ones(2), torch.ones(2))
    torch.manual_seed(0)
    ens = Off2On(Off2OnConfig(hidden=[16], ensemble_size=3), spec, torch.device("cpu"))
    batch = batch_of(8)
    loss, info = ens.critic_loss(batch, batch.obs, batch.next_obs, ONLINE)
    a2, lp2 = ens.actor.mixture(batch.next_obs)
    td = 0.0
    for i in range(3):
        q_next = torch.stack([ens.critic_target(batch.next_obs, a2)[2 * i + j] for j in range(2)]).min(0).values
        y = batch.rew + 0.99 * (1 - batch.terminal) * (q_next - 1.0 * lp2)
        td += sum(((ens.critic(batch.obs, batch.act)[2 * i + j] - y) ** 2).mean() for j in range(2))
    assert loss.item() == pytest.approx(td.item(), rel=1e-5) and "cql/diff" not in info
    actor_loss, _ = ens.actor_loss(batch, batch.obs, ONLINE)
    a, lp = ens.actor.mixture(batch.obs)
    q = ens.critic(batch.obs, a).view(3, 2, -1).min(1).values.mean(0)
    assert actor_loss.item() == pytest.approx((lp - q).mean().item(), rel=1e-5)
