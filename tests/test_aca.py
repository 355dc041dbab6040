"""ACA: no jump in Q at the switch (Q = Z + w softclip(log pi_0) on random inputs), the soft clip
and its floor on hand values, the maximum-likelihood actor loss and the baseline loss on hand
cases, the w schedule's endpoints, and a switch that happens once (twice called, resumed before or
after it: the same parameters)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_same_state

from agents.aca import (
    ACA,
    ACAConfig,
    alignment_weight,
    baseline_loss,
    log_prob_floor,
    ml_actor_loss,
    soft_clip,
)
from agents.core.agent import EnvSpec
from agents.core.config import ConfigError
from agents.core.networks import TanhGaussianActor
from worldmodels.data.store import Batch
from worldmodels.progress import Progress

OBS, ACT, B = 4, 2, 16
SPEC = EnvSpec(OBS, ACT, -2 * torch.ones(ACT), 2 * torch.ones(ACT))  # scale 2: the density's units matter
CPU = torch.device("cpu")
OFFLINE = Progress("offline", 0, 0, 0, 10, 10)
SWITCH = Progress("online", 10, 0, 10, 10, 10)


def make_agent(seed: int = 0, **overrides) -> ACA:
    torch.manual_seed(seed)
    agent = ACA(ACAConfig(hidden=[32, 32], **overrides), SPEC, CPU)
    with torch.no_grad():  # non-zero biases everywhere, so a missed copy shows
        for p in agent.baseline.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return agent


def random_batch(seed: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(obs=torch.randn(B, OBS, generator=g), act=3.8 * torch.rand(B, ACT, generator=g) - 1.9,
                 rew=torch.randn(B, generator=g), next_obs=torch.randn(B, OBS, generator=g),
                 terminal=(torch.rand(B, generator=g) < 0.2).float(), truncated=torch.zeros(B))


# --- the switch --------------------------------------------------------------------------------
def test_q_does_not_jump_at_the_switch():
    agent = make_agent()
    for _ in range(3):  # offline updates move the actor, the critic, Z and the temperature
        agent.update(random_batch(), OFFLINE)
    obs, act = random_batch(2).obs, random_batch(2).act
    with torch.no_grad():
        z = agent.baseline(obs)  # [N, B]
        offline_q = agent.critic(obs, act)
        log_pi0 = agent.actor.log_prob(obs, act)  # the offline policy is pi_0
        floor = log_prob_floor(agent.actor, obs, agent.cfg.clip_beta)
    assert not torch.allclose(offline_q, z, atol=1e-3)  # the switch has something to do
    assert agent.alpha.item() != 1.0

    agent.on_phase(SWITCH)
    w = agent.weight(SWITCH)
    assert w == 1.0
    with torch.no_grad():
        q = agent.aligned_q(agent.critic, obs, act, w)  # [N, B]
        q_target = agent.aligned_q(agent.critic_target, obs, act, w)
    expected = z + w * (F.softplus(log_pi0 - floor) + floor)
    torch.testing.assert_close(q, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(q_target, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(agent.critic(obs, act), z, rtol=0, atol=1e-5)  # R(s, a) = Z(s) for every a
    assert agent.alpha.item() == 1.0  # run_aca.py resets the temperature
    assert not any(p.requires_grad for p in agent.ref_actor.parameters())


def switched_after_updates(agent: ACA, online_updates: int) -> ACA:
    agent.on_phase(SWITCH)
    for i in range(online_updates):
        agent.update(random_batch(10 + i), Progress("online", 10, i + 1, 10 + i, 10, 10))
    return agent


def test_switch_happens_once_and_resumes():
    pre = make_agent()
    pre.update(random_batch(), OFFLINE)
    pre_state = copy.deepcopy(pre.state_dict())

    once = switched_after_updates(pre, 0)
    state_once = copy.deepcopy(once.state_dict())
    once.on_phase(SWITCH)  # called again (a resume in the online phase calls it again)
    assert_same_state(state_once, once.state_dict())

    from_offline = make_agent(seed=5)  # other weights: the checkpoint must overwrite them
    from_offline.load_state_dict(pre_state)  # resumed from the last offline checkpoint: switches then
    from_offline.on_phase(SWITCH)
    assert_same_state(state_once, from_offline.state_dict())

    switched_after_updates(once, 2)  # the critics and the actor have moved away from Z and pi_0
    learned = copy.deepcopy(once.state_dict())
    resumed = make_agent(seed=7)
    resumed.load_state_dict(learned)  # resumed from an online checkpoint: no second switch
    resumed.on_phase(SWITCH)
    once.on_phase(SWITCH)
    assert_same_state(learned, resumed.state_dict())
    assert_same_state(learned, once.state_dict())


def test_baseline_learns_offline_only_and_the_online_actor_step_is_clipped():
    agent = make_agent(actor_grad_clip=1e-3)  # far below the raw gradient's norm
    z0 = copy.deepcopy(agent.baseline.state_dict())
    agent.update(random_batch(), OFFLINE)
    assert not torch.equal(z0["head.weight"], agent.baseline.head.weight)
    agent.on_phase(SWITCH)
    z1 = copy.deepcopy(agent.baseline.state_dict())
    agent.update(random_batch(3), Progress("online", 10, 1, 10, 10, 10))
    assert_same_state(z1, agent.baseline.state_dict())
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in agent.actor.parameters()]))
    torch.testing.assert_close(norm, torch.tensor(1e-3))


# --- the pieces by hand ------------------------------------------------------------------------
def test_soft_clip_on_hand_values():
    x = torch.tensor([0.0, -100.0, 10.0, -4.0])
    f = torch.tensor([0.0, -5.0, -5.0, -5.0])
    expected = torch.tensor([math.log(2.0), -5.0, 10.0 + math.log1p(math.exp(-15.0)), -5.0 + math.log1p(math.exp(1.0))])
    torch.testing.assert_close(soft_clip(x, f), expected)


def lp_hand(u: float, mu: float, sigma: float) -> float:
    """log-density of tanh(u) (scale 1) under a tanh-Gaussian N(mu, sigma) in pre-tanh space."""
    gauss = -0.5 * ((u - mu) / sigma) ** 2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)
    return gauss - math.log(1.0 - math.tanh(u) ** 2)


def test_floor_is_the_lower_of_the_two_beta_sigma_points():
    one = torch.ones(1)
    actor = TanhGaussianActor(3, 1, one, 0 * one, hidden=[8])
    with torch.no_grad():
        actor.trunk[-1].weight.zero_()
        actor.trunk[-1].bias.copy_(torch.tensor([1.0, math.log(0.5)]))  # mu 1, sigma 0.5 for every state
    floor = log_prob_floor(actor, torch.randn(2, 3), beta=2.0)
    expected = min(lp_hand(1.0 - 2 * 0.5, 1.0, 0.5), lp_hand(1.0 + 2 * 0.5, 1.0, 0.5))
    assert expected == lp_hand(0.0, 1.0, 0.5)  # the tanh Jacobian lifts the point nearer the bound
    torch.testing.assert_close(floor, torch.full((2,), expected), rtol=1e-5, atol=1e-5)


def test_ml_actor_loss_by_hand():
    q = torch.tensor([2.0, -4.0], requires_grad=True)  # mean|Q| = 3, c = 30: lambda = 10
    log_prob = torch.tensor([-1.0, -1.0])
    data_log_prob = torch.tensor([-2.0, -4.0])  # NLL 3
    loss, info = ml_actor_loss(q, log_prob, data_log_prob, alpha=0.5, ml_weight=30.0)
    # 10 * mean(0.5 * -1 - [2, -4]) + 3 = 10 * 0.5 + 3
    assert torch.isclose(loss, torch.tensor(8.0)) and torch.isclose(info["actor/lambda"], torch.tensor(10.0))
    loss.backward()
    torch.testing.assert_close(q.grad, torch.tensor([-5.0, -5.0]))  # lambda is not differentiated


def test_baseline_loss_by_hand():
    z = torch.tensor([[1.0, 0.0], [2.0, -1.0]])  # [N, B]
    data_log_prob = torch.tensor([-1.0, 0.5])
    target = torch.tensor([0.0, 0.0])
    # residuals log pi + Z - y: member 0 [0, 0.5], member 1 [1, -0.5]: 0.125 + 0.625
    loss, _ = baseline_loss(z, data_log_prob, target)
    assert torch.isclose(loss, torch.tensor(0.75))


def test_w_schedule_endpoints():
    assert alignment_weight(0, 1.0, 40_000, 0.5) == 1.0
    assert alignment_weight(10_000, 1.0, 40_000, 0.5) == 0.75
    assert alignment_weight(20_000, 1.0, 40_000, 0.5) == 0.5  # reaches the floor half-way
    assert alignment_weight(10**6, 1.0, 40_000, 0.5) == 0.5
    assert alignment_weight(10_000, 1.0, 10_000, 0.0) == 0.0  # random datasets: (k, f) = (10, 0)
    assert alignment_weight(5_000, 1.0, 100_000, 1.0) == 1.0  # expert: (100, 1) never decays
    agent = make_agent()  # the agent counts online updates only
    assert agent.weight(Progress("online", 500, 20_000, 500 + 20_000, 500, 10)) == 0.5
    assert agent.weight(Progress("online", 500, 1, 500 + 4_000, 500, 10)) == 0.9


def test_pessimism_penalty_is_refused_not_ignored():
    spec = EnvSpec(3, 2, -torch.ones(2), torch.ones(2))
    with pytest.raises(ConfigError, match="pessimism_beta"):
        ACA(ACAConfig(hidden=[8, 8], pessimism_beta=0.01), spec, torch.device("cpu"))


def test_critic_layer_norm_is_refused_not_ignored():
    """ACA copies a plain value network's layers into its critic at the switch; a LayerNorm critic has no
    place for them."""
    spec = EnvSpec(3, 2, -torch.ones(2), torch.ones(2))
    with pytest.raises(ConfigError, match="critic_layer_norm"):
        ACA(ACAConfig(hidden=[8, 8], critic_layer_norm=True), spec, torch.device("cpu"))
