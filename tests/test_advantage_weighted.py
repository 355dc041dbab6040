"""IQL and AWAC: the expectile loss, the clipped advantage weights, IQL's V(s') target, the cosine
actor lr (CORL's, resumed exactly), IQL's one-backward update against CORL's three steps in turn,
AWAC's actor loss on a hand-built batch, and both agents run end to end through the CLI."""

from __future__ import annotations

import io
import math

import pytest
import torch
from conftest import Pending, agent_cmd, assert_same_state
from torch import nn

from agents.awac import AWAC, AWACConfig
from agents.core.agent import EnvSpec
from agents.core.networks import soft_update
from agents.iql import IQL, IQLConfig, advantage_weighted_loss, expectile_loss
from agents.pex import PEX, PEXConfig
from worldmodels.data.store import Batch
from worldmodels.progress import Progress

CPU = torch.device("cpu")
LOW, HIGH = torch.tensor([-1.0, 0.0, -3.0]), torch.tensor([2.0, 1.0, -1.0])  # scale (1.5, 0.5, 1)
SPEC = EnvSpec(obs_dim=4, act_dim=3, act_low=LOW, act_high=HIGH)


@pytest.fixture(scope="module", autouse=True)
def cli_runs(tmp_path_factory, tiny_dataset_id):
    """Both agents' CLI runs, started together so they overlap with the in-process tests."""
    root = tmp_path_factory.mktemp("aw-cli")
    return {name: Pending(agent_cmd(name, root / name, tiny_dataset_id, threads="1"), root / name).start()
            for name in ("iql", "awac")}


def make_batch(n: int = 6, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    act = LOW + torch.rand(n, 3, generator=g) * (HIGH - LOW)
    terminal, truncated = torch.zeros(n), torch.zeros(n)
    terminal[1] = 1.0  # true termination: bootstrap zeroed
    truncated[2] = 1.0  # time-limit cut: bootstrap kept
    terminal[3], truncated[3] = 1.0, 1.0  # both: termination wins
    return Batch(torch.randn(n, 4, generator=g), act, torch.randn(n, generator=g), torch.randn(n, 4, generator=g),
                 terminal, truncated)


def test_expectile_loss_by_hand():
    # u = +2 weighs tau = 0.7, u = -3 weighs 1 - tau = 0.3: (0.7 * 4 + 0.3 * 9) / 2
    loss, info = expectile_loss(torch.tensor([2.0, -3.0]), 0.7)
    assert loss.item() == pytest.approx((0.7 * 4 + 0.3 * 9) / 2)
    assert info["loss/value"].item() == pytest.approx(loss.item())
    # tau = 0.5 is half the MSE; tau 0.9 on a positive residual
    assert expectile_loss(torch.tensor([1.0, -1.0]), 0.5)[0].item() == pytest.approx(0.5)
    assert expectile_loss(torch.tensor([-2.0]), 0.9)[0].item() == pytest.approx(0.1 * 4)


def test_advantage_weights_clip_at_100_and_equal_exp_beta_a_below():
    log_prob = torch.tensor([-1.0, -2.0, 0.5, -0.5], requires_grad=True)
    adv = torch.tensor([0.5, -1.0, 2.0, 1.0], requires_grad=True)
    loss, info = advantage_weighted_loss(log_prob, adv, beta=3.0, clip=100.0)
    w = [math.exp(1.5), math.exp(-3.0), 100.0, math.exp(3.0)]  # exp(6) = 403 > 100 is clipped
    expected = -sum(wi * lp for wi, lp in zip(w, [-1.0, -2.0, 0.5, -0.5], strict=True)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert info["actor/weight_mean"].item() == pytest.approx(sum(w) / 4, rel=1e-6)
    assert info["actor/weight_clipped"].item() == pytest.approx(0.25)
    loss.backward()
    assert adv.grad is None  # the advantage is a constant for the actor
    assert log_prob.grad.tolist() == pytest.approx([-wi / 4 for wi in w], rel=1e-6)


def test_iql_q_target_uses_v_of_next_state_and_zeroes_only_on_terminal():
    torch.manual_seed(0)
    agent = IQL(IQLConfig(hidden=[8, 8]), SPEC, CPU)
    with torch.no_grad():  # a target critic far from the online one: the Q target must not read either
        for p in agent.critic_target.parameters():
            p.add_(1.0)
    batch = make_batch()
    target = agent.td_target(batch, batch.next_obs)
    v_next = agent.value(batch.next_obs).squeeze(-1).detach()
    expected = batch.rew + 0.99 * v_next
    expected[1], expected[3] = batch.rew[1], batch.rew[3]  # terminal rows; row 2 (truncated) bootstraps
    assert torch.allclose(target, expected)
    assert not torch.isclose(target[2], batch.rew[2])


def lr_progress(updates: int, offline_budget: int = 100) -> Progress:
    phase = "offline" if updates < offline_budget else "online"
    env_steps = max(updates - offline_budget, 0)
    return Progress(phase, min(updates, offline_budget), env_steps, updates, offline_budget, 1000)


def test_cosine_actor_lr_follows_corl_and_resumes_mid_schedule():
    torch.manual_seed(0)
    cfg = IQLConfig(hidden=[8, 8], actor_lr_schedule="cosine")
    agent = IQL(cfg, SPEC, CPU)
    batch = make_batch()
    lrs = {}
    for t in (0, 50, 100, 150):
        agent.update(batch, lr_progress(t))
        lrs[t] = agent.optimizers["actor"].param_groups[0]["lr"]
    # 0.5 lr (1 + cos(pi t / T)): full at 0, half at T/2, 0 at the switch, CORL climbs back online
    assert lrs[0] == pytest.approx(3e-4)
    assert lrs[50] == pytest.approx(1.5e-4)
    assert lrs[100] == pytest.approx(0.0, abs=1e-12)
    assert lrs[150] == pytest.approx(1.5e-4)
    # a resume mid-schedule: a fresh agent from the checkpoint uses the uninterrupted run's lr at t = 30
    torch.manual_seed(1)
    resumed = IQL(cfg, SPEC, CPU)
    first = IQL(cfg, SPEC, CPU)
    first.update(batch, lr_progress(29))
    saved = io.BytesIO()  # through a checkpoint file, as the trainer resumes
    torch.save(first.state_dict(), saved)
    saved.seek(0)
    resumed.load_state_dict(torch.load(saved))
    for a in (first, resumed):
        a.update(batch, lr_progress(30))
    lr30 = 0.5 * 3e-4 * (1 + math.cos(math.pi * 30 / 100))
    assert first.optimizers["actor"].param_groups[0]["lr"] == pytest.approx(lr30)
    assert resumed.optimizers["actor"].param_groups[0]["lr"] == first.optimizers["actor"].param_groups[0]["lr"]
    for p, q in zip(first.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)
    # constant: never touched
    const = IQL(IQLConfig(hidden=[8, 8], actor_lr_schedule="constant"), SPEC, CPU)
    const.update(batch, lr_progress(50))
    assert const.optimizers["actor"].param_groups[0]["lr"] == 3e-4


class LinearTwinQ(nn.Module):
    """Q_1(s, a) = sum(a) + sum(s), Q_2 = Q_1 + 0.5 (so min = Q_1)."""

    def forward(self, obs, act):
        q = act.sum(-1) + obs.sum(-1)
        return torch.stack([q, q + 0.5])


def corl_order_update(agent: IQL, batch: Batch, progress: Progress) -> None:
    """IQL's update as CORL writes it: V's step, then Q's loss and step, the Polyak step, then the actor's loss
    and step, each loss computed after the steps before it (PEX online: pi_new's step in place of the actor's)."""
    obs, next_obs = agent.normalizer(batch.obs), agent.normalizer(batch.next_obs)
    target = agent.td_target(batch, next_obs)
    with torch.no_grad():
        q_data = agent.critic_target(obs, batch.act).min(0).values
    advantage = q_data - agent.v(obs)
    agent.step("value", expectile_loss(advantage, agent.cfg.expectile)[0])
    agent.step("critic", agent.critic_loss(batch, obs, target)[0])
    soft_update(agent.critic_target, agent.critic, agent.cfg.tau)
    if progress.online and isinstance(agent, PEX):
        agent.pi_new_update(obs)
    else:
        agent.step("actor", advantage_weighted_loss(agent.actor_log_prob(obs, batch.act), advantage, agent.cfg.beta,
                                                    agent.cfg.max_weight)[0])
    agent.num_updates += 1


@pytest.mark.parametrize("cls, cfg_cls, online", [(IQL, IQLConfig, False), (IQL, IQLConfig, True),
                                                  (PEX, PEXConfig, True)])
def test_iql_one_backward_update_equals_corl_steps_in_turn(cls, cfg_cls, online):
    """Agent.step_together's premise for IQL (and PEX online): no loss reads a network another step changes and
    none reaches another's parameters, so one backward over the sum makes the sequential update bit for bit. A
    loss that read an updated network, or leaked a gradient into another network, would break the equality."""
    progress = Progress("online", 10, 5, 15, 10, 10) if online else Progress("offline", 3, 0, 3, 10, 10)
    cfg = cfg_cls(hidden=[16, 16], actor_lr_schedule="constant")
    agents = []
    for _ in range(2):
        torch.manual_seed(0)
        agents.append(cls(cfg, SPEC, CPU))
    joint, reference = agents
    for agent in agents:
        agent.on_phase(progress)  # PEX: freezes pi_offline at the switch
    for i in range(3):
        batch = make_batch(seed=i)
        torch.manual_seed(10 + i)  # PEX's selection and pi_new draws read the global stream
        joint.update(batch, progress)
        torch.manual_seed(10 + i)
        corl_order_update(reference, batch, progress)
    assert_same_state(joint.state_dict(), reference.state_dict())
    if isinstance(joint, PEX):  # online, IQL's actor takes no step: pi_offline holds it
        assert torch.equal(joint.actor.net[0].weight, joint.pi_offline.net[0].weight)


def test_awac_actor_loss_on_a_hand_built_batch():
    torch.manual_seed(0)
    agent = AWAC(AWACConfig(hidden=[8, 8], awac_lambda=0.1), SPEC, CPU)
    agent.critic = LinearTwinQ()
    mean_u = torch.tensor([0.2, -0.4, 0.1])  # the actor's mean in [-1, 1] units, the same for every state
    with torch.no_grad():
        for p in agent.actor.net.parameters():
            p.zero_()
        agent.actor.net[-1].bias.copy_(mean_u)
        agent.actor.log_std.fill_(math.log(0.5))
    batch = make_batch(4)
    torch.manual_seed(7)
    loss, info = agent.actor_loss(batch, batch.obs)
    torch.manual_seed(7)
    pi_act, _ = agent.actor(batch.obs)  # the same single sample a_pi the loss drew
    scale, bias = (HIGH - LOW) / 2, (HIGH + LOW) / 2
    assert torch.all(pi_act <= HIGH) and torch.all(pi_act >= LOW)
    adv = batch.act.sum(-1) - pi_act.sum(-1)  # min Q(s, a) - min Q(s, a_pi): the sum(s) terms cancel
    weight = torch.exp(adv / 0.1).clamp(max=100.0)
    u = (batch.act - bias) / scale
    log_prob = (-0.5 * ((u - mean_u) / 0.5) ** 2 - math.log(0.5) - 0.5 * math.log(2 * math.pi)).sum(-1) \
        - torch.log(scale).sum()
    assert loss.item() == pytest.approx((-(weight * log_prob)).mean().item(), rel=1e-5)
    assert info["actor/weight_mean"].item() == pytest.approx(weight.mean().item(), rel=1e-5)


def test_awac_q_target_uses_the_policy_action_and_target_critics():
    torch.manual_seed(0)
    agent = AWAC(AWACConfig(hidden=[8, 8]), SPEC, CPU)
    agent.critic_target = LinearTwinQ()
    batch = make_batch()
    torch.manual_seed(3)
    target = agent.td_target(batch, batch.next_obs)
    torch.manual_seed(3)
    next_act, _ = agent.actor(batch.next_obs)
    expected = batch.rew + 0.99 * (1 - batch.terminal) * (next_act.sum(-1) + batch.next_obs.sum(-1))
    assert torch.allclose(target, expected)


@pytest.mark.parametrize("name", ["iql", "awac"])
def test_cli_end_to_end(name, cli_runs):
    result = cli_runs[name].result()
    assert result.returncode == 0, result.describe()
    summary = result.summary
    assert summary["agent"] == name and summary["env_steps"] == 60
    assert summary["updates"] == 120  # 60 offline + one per online step from the first (no warm-up)
    assert math.isfinite(summary["offline_score"]) and math.isfinite(summary["online_score"])
