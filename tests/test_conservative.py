"""CQL and Cal-QL: the conservative penalty by hand, the importance-sampled OOD set with a critic
whose answers are known, the bitwise Cal-QL(no floor) == CQL equivalence, and both CLIs."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest
import torch
from conftest import Pending, agent_cmd, assert_same_state
from torch import nn

from agents.calql import CalQL, CalQLConfig
from agents.core.agent import EnvSpec
from agents.cql import CQL, CQLConfig, cql_penalty
from worldmodels.data.fields import NO_VALUE
from worldmodels.data.store import Batch
from worldmodels.progress import Progress

CPU = torch.device("cpu")
# action box widths 2 and 3: uniform log density -log 6; every action in it is <= 1
SPEC = EnvSpec(obs_dim=3, act_dim=2, act_low=torch.tensor([-1.0, -2.0]), act_high=torch.tensor([1.0, 1.0]))
OFFLINE = Progress("offline", 0, 0, 0, 10, 10)
ONLINE = Progress("online", 10, 5, 15, 10, 10)


def make_batch(n: int = 5, seed: int = 0, rtg: torch.Tensor | None = None) -> Batch:
    g = torch.Generator().manual_seed(seed)
    act = SPEC.act_low + torch.rand(n, 2, generator=g) * (SPEC.act_high - SPEC.act_low)
    terminal = torch.zeros(n)
    terminal[1] = 1.0
    rtg = torch.randn(n, generator=g) if rtg is None else rtg
    return Batch(torch.randn(n, 3, generator=g), act, torch.randn(n, generator=g), torch.randn(n, 3, generator=g),
                 terminal, torch.zeros(n), extras={"rtg": rtg})


# --- (a) the penalty function ------------------------------------------------------------------
def test_cql_penalty_by_hand():
    q_ood = torch.tensor([[[0.0, 1.0, 2.0], [3.0, 3.0, 3.0]]])  # [N=1, B=2, M=3]
    q_data = torch.tensor([[1.0, -1.0]])
    diff, info = cql_penalty(q_ood, q_data)
    row0 = math.log(1 + math.e + math.e**2) - 1.0
    row1 = 3.0 + math.log(3.0) + 1.0
    assert diff.tolist() == pytest.approx([(row0 + row1) / 2])
    assert info["cql/ood_lse"].item() == pytest.approx((row0 + 1.0 + row1 - 1.0) / 2)
    # temperature T: T logsumexp(q / T); clipping applies per row before the mean
    diff_t, _ = cql_penalty(q_ood, q_data, temperature=2.0, clip_max=4.0)
    t0 = 2.0 * math.log(1 + math.exp(0.5) + math.e) - 1.0
    t1 = min(3.0 + 2.0 * math.log(3.0) + 1.0, 4.0)
    assert diff_t.tolist() == pytest.approx([(t0 + t1) / 2])


def test_cql_penalty_gradient_pushes_ood_down_and_data_up():
    q_ood = torch.zeros(2, 1, 4, requires_grad=True)
    q_data = torch.zeros(2, 1, requires_grad=True)
    cql_penalty(q_ood, q_data)[0].sum().backward()
    assert torch.allclose(q_ood.grad, torch.full((2, 1, 4), 0.25))  # softmax weights
    assert torch.allclose(q_data.grad, -torch.ones(2, 1))


# --- (b) the importance-sampled OOD set with known networks -------------------------------------
class KnownActor(nn.Module):
    """a(s) = 1 + |s[:2]| (outside the box, so the critic below can tell it from uniform actions), log pi = s[2]."""

    def forward(self, obs, deterministic=False, samples=1):
        obs = obs.repeat_interleave(samples, 0)  # n draws per state, state-major (all equal here)
        return 1.0 + obs[:, :2].abs(), obs[:, 2].clone()


class KnownCritic(nn.Module):
    """Q_i(s, a) = (i + 1) sum(s) + sum(relu(a - 1)): zero action part for every action in the box."""

    num_critics = 2

    def forward(self, obs, act):
        scale = torch.arange(1.0, 3.0).unsqueeze(1)  # [N, 1]
        return scale * obs.sum(-1) + torch.relu(act - 1.0).sum(-1)  # [N, B]


def hand_sets(batch: Batch, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q_data [N, B], uniform entry, pi(s') entry, pi(s) entry [N, B]), each set of n equal entries."""
    s, s2 = batch.obs, batch.next_obs
    base = torch.arange(1.0, 3.0).unsqueeze(1) * s.sum(-1)  # [N, B]
    unif = base + math.log(6.0)  # minus the uniform log density -log 6
    nxt = base + s2[:, :2].abs().sum(-1) - s2[:, 2]  # evaluated at s, its log pi at s' subtracted
    cur = base + s[:, :2].abs().sum(-1) - s[:, 2]
    return base, unif, nxt, cur


def known_agent(cls, cfg):
    agent = cls(cfg, SPEC, CPU)
    agent.actor, agent.critic = KnownActor(), KnownCritic()
    return agent


def test_importance_sampled_logsumexp_equals_the_hand_value():
    n = 4
    agent = known_agent(CQL, CQLConfig(hidden=[8], n_actions=n))
    batch = make_batch()
    q_data, q_ood, _ = agent.conservative_q(batch, batch.obs, batch.next_obs, OFFLINE)
    base, unif, nxt, cur = hand_sets(batch, n)
    assert q_ood.shape == (2, 5, 3 * n)
    assert torch.allclose(q_data, base)  # dataset actions lie in the box
    lse = torch.logsumexp(torch.stack([unif, nxt, cur]), 0) + math.log(n)
    assert torch.allclose(torch.logsumexp(q_ood, -1), lse, atol=1e-5)
    diff, _ = cql_penalty(q_ood, q_data)
    assert torch.allclose(diff, (lse - base).mean(1), atol=1e-5)


# --- (c) Cal-QL without its floor is CQL, bitwise -----------------------------------------------
def cql_config_of(cfg: CalQLConfig) -> CQLConfig:
    return CQLConfig(**{f.name: getattr(cfg, f.name) for f in fields(CQLConfig) if f.name != "name"})


def trained(agent, batch, progress, steps=3):
    for _ in range(steps):
        agent.update(batch, progress)
    return agent.state_dict()


@pytest.mark.parametrize(("overrides", "progress"), [({"calibration": False}, OFFLINE),
                                                     ({"online_calibration": "off"}, ONLINE)])
def test_calql_without_floor_makes_exactly_the_cql_update(overrides, progress):
    cfg = CalQLConfig(hidden=[16, 16], lagrange=True, **overrides)
    batch = make_batch(32, rtg=torch.full((32,), 50.0))  # above every Q: a floor would act on every row
    torch.manual_seed(0)
    cql = trained(CQL(cql_config_of(cfg), SPEC, CPU), batch, progress)
    torch.manual_seed(0)
    calql = trained(CalQL(cfg, SPEC, CPU), batch, progress)
    assert_same_state(cql, calql)
    # the control: the floor switched on changes the update
    torch.manual_seed(0)
    floored = trained(CalQL(CalQLConfig(hidden=[16, 16], lagrange=True), SPEC, CPU), batch, progress)
    assert not torch.equal(floored["critic.head.weight"], cql["critic.head.weight"])


# --- (d) the floor acts on the policy sets only --------------------------------------------------
def test_floor_lifts_policy_q_to_the_return_to_go_only():
    n = 4
    rtg = torch.tensor([100.0, NO_VALUE, 100.0, NO_VALUE, 100.0])
    batch = make_batch(rtg=rtg)
    cql = known_agent(CQL, CQLConfig(hidden=[8], n_actions=n))
    calql = known_agent(CalQL, CalQLConfig(hidden=[8], n_actions=n))
    q_data, q_ood, info = calql.conservative_q(batch, batch.obs, batch.next_obs, OFFLINE)
    base, unif, nxt, cur = hand_sets(batch, n)
    floored = rtg != NO_VALUE
    # rows with a return: pi-set Q becomes G before the log pi is subtracted; uniform and data Q untouched
    nxt = torch.where(floored, 100.0 - batch.next_obs[:, 2], nxt)
    cur = torch.where(floored, 100.0 - batch.obs[:, 2], cur)
    assert torch.allclose(q_data, base)
    assert torch.allclose(q_ood[..., :n], unif.unsqueeze(-1).expand(2, 5, n))
    lse = torch.logsumexp(torch.stack([unif, nxt, cur]), 0) + math.log(n)
    assert torch.allclose(torch.logsumexp(q_ood, -1), lse, atol=1e-4)
    assert info["calql/bound_rate"].item() == pytest.approx(3 / 5)  # G above every pi-set Q in 3 of 5 rows
    calql_diff, _ = cql_penalty(q_ood, q_data)
    assert torch.allclose(calql_diff, (lse - base).mean(1), atol=1e-4)
    cql_data, cql_ood, _ = cql.conservative_q(batch, batch.obs, batch.next_obs, OFFLINE)
    cql_diff, _ = cql_penalty(cql_ood, cql_data)
    assert (calql_diff > cql_diff + 1.0).all()
    # online with CORL's switch the floor is off; with the original's it stays on
    calql.cfg.online_calibration = "off"
    assert torch.equal(calql.conservative_q(batch, batch.obs, batch.next_obs, ONLINE)[1],
                       cql.conservative_q(batch, batch.obs, batch.next_obs, ONLINE)[1])
    calql.cfg.online_calibration = "keep"
    assert torch.allclose(torch.logsumexp(calql.conservative_q(batch, batch.obs, batch.next_obs, ONLINE)[1], -1), lse,
                          atol=1e-4)


def test_calql_declares_return_to_go_and_rejects_unknown_switch():
    agent = CalQL(CalQLConfig(hidden=[8], gamma=0.9), SPEC, CPU)
    (rtg,) = agent.transition_fields()
    assert rtg.name == "rtg" and rtg.gamma == 0.9
    with pytest.raises(ValueError, match="online_calibration"):
        CalQL(CalQLConfig(hidden=[8], online_calibration="sometimes"), SPEC, CPU)


# --- (e) both CLIs end to end -------------------------------------------------------------------
def test_cql_and_calql_run_end_to_end(session_dir, tiny_dataset_id):
    small = {"threads": "1", "agent.hidden": "[64,64]", "trainer.batch_size": "64"}  # CQL's 31 actions/row cost
    runs = {name: Pending(agent_cmd(name, session_dir / f"cli-{name}", tiny_dataset_id, **small),
                          session_dir / f"cli-{name}").start() for name in ("cql", "calql")}
    for name, pending in runs.items():
        result = pending.result()
        assert result.returncode == 0, result.describe()
        summary = result.summary
        assert summary["agent"] == name and summary["updates"] == 120 and summary["env_steps"] == 60
        assert math.isfinite(summary["online_score"])
