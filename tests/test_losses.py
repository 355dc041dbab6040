"""Losses, targets and networks on inputs whose answer is known by hand or by an independent
reference computation."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.distributions import AffineTransform, Normal, TanhTransform, TransformedDistribution

from agents.bc import bc_loss
from agents.core.agent import EnvSpec
from agents.core.networks import CriticEnsemble, DeterministicActor, TanhGaussianActor, soft_update
from agents.sac import SAC, SACConfig
from agents.td3 import TD3, TD3Config
from agents.td3bc import td3bc_actor_loss
from worldmodels.data.store import Batch
from worldmodels.progress import Progress

CPU = torch.device("cpu")
# asymmetric, exactly representable bounds: scale (1.5, 0.5, 1), bias (0.5, 0.5, -2)
LOW = torch.tensor([-1.0, 0.0, -3.0])
HIGH = torch.tensor([2.0, 1.0, -1.0])
SPEC = EnvSpec(obs_dim=4, act_dim=3, act_low=LOW, act_high=HIGH)


def make_batch(n: int = 6, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    act = LOW + torch.rand(n, 3, generator=g) * (HIGH - LOW)
    terminal = torch.zeros(n)
    truncated = torch.zeros(n)
    terminal[1] = 1.0  # true termination: bootstrap zeroed
    truncated[2] = 1.0  # time-limit cut: bootstrap kept
    terminal[3], truncated[3] = 1.0, 1.0  # both set: termination wins
    obs, next_obs = torch.randn(n, 4, generator=g), torch.randn(n, 4, generator=g)
    rew = torch.randn(n, generator=g)
    return Batch(obs, act, rew, next_obs, terminal, truncated)


def perturb(module: torch.nn.Module, seed: int) -> None:
    """Make a target network differ from its online twin, so using the wrong one is caught."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))


def member_forward(critic: CriticEnsemble, i: int, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """Q_i(s, a) by hand from member i's weights: plain matmuls, no batching over members."""
    x = torch.cat([obs, act], -1)
    for layer in critic.hidden:
        x = torch.relu(x @ layer.weight[i] + layer.bias[i, 0])
    return (x @ critic.head.weight[i] + critic.head.bias[i, 0]).squeeze(-1)


def reference_log_prob(actor: TanhGaussianActor, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """log pi(a|s) from torch.distributions: Normal -> tanh -> affine, in float64."""
    dist = actor.distribution(obs)
    base = Normal(dist.loc.double(), dist.scale.double())
    squash = TransformedDistribution(base, [TanhTransform(), AffineTransform(actor.act_bias.double(),
                                                                             actor.act_scale.double())])
    return squash.log_prob(act.double()).sum(-1)


# --- TD3+BC and BC ---------------------------------------------------------------------------
def test_td3bc_actor_loss_by_hand():
    q = torch.tensor([1.0, -3.0], requires_grad=True)
    policy = torch.tensor([[0.5, -0.5], [0.0, 1.0]])
    data = torch.zeros(2, 2)
    loss, info = td3bc_actor_loss(q, policy, data, alpha=2.5)
    lmbda = 2.5 / 2.0  # alpha / mean|Q| = 2.5 / ((1 + 3) / 2)
    mse = (0.25 + 0.25 + 0.0 + 1.0) / 4
    assert info["actor/lambda"].item() == pytest.approx(lmbda)
    assert info["loss/bc"].item() == pytest.approx(mse)
    assert loss.item() == pytest.approx(-lmbda * (-1.0) + mse)
    assert info["loss/actor"].item() == pytest.approx(loss.item())
    loss.backward()
    # lambda is a constant for the gradient (Fujimoto & Gu 2021): d loss / d q_i = -lambda / B
    assert q.grad.tolist() == pytest.approx([-lmbda / 2, -lmbda / 2])


def test_td3bc_bc_term_gradient_pulls_toward_data():
    policy = torch.tensor([[0.5, -0.5], [0.0, 1.0]], requires_grad=True)
    data = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    loss, _ = td3bc_actor_loss(torch.tensor([2.0, 2.0]), policy, data, alpha=2.5)
    loss.backward()
    assert torch.allclose(policy.grad, 2 * (policy - data).detach() / 4)


def test_bc_loss_by_hand():
    policy = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    data = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    loss, info = bc_loss(policy, data)
    expected = (1.0 + 0.0 + 4.0 + 4.0) / 4
    assert loss.item() == pytest.approx(expected)
    assert info["loss/bc"].item() == pytest.approx(expected)


# --- TD3 target -------------------------------------------------------------------------------
def tiny_td3(**kw) -> TD3:
    torch.manual_seed(0)
    agent = TD3(TD3Config(hidden=[8, 8], **kw), SPEC, CPU)
    perturb(agent.actor_target, 1)
    perturb(agent.critic_target, 2)
    return agent


def test_td3_target_zeroes_bootstrap_only_on_terminal():
    agent = tiny_td3(policy_noise=0.0)
    batch = make_batch()
    target = agent.td_target(batch, batch.next_obs)
    with torch.no_grad():
        next_act = agent.actor_target(batch.next_obs)
        next_q = torch.minimum(member_forward(agent.critic_target, 0, batch.next_obs, next_act),
                               member_forward(agent.critic_target, 1, batch.next_obs, next_act))
    not_done = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])  # terminal rows 1 and 3; row 2 is truncated only
    expected = batch.rew + 0.99 * not_done * next_q
    assert torch.allclose(target, expected, atol=1e-6)
    assert target[1] == batch.rew[1] and target[3] == batch.rew[3]
    assert not torch.isclose(target[2], batch.rew[2])  # truncation keeps the bootstrap


def test_td3_target_policy_smoothing_noise_is_clipped_and_bounded():
    agent = tiny_td3(policy_noise=0.8, noise_clip=0.5)  # large noise so both clips are exercised
    batch = make_batch(64)
    torch.manual_seed(7)
    target = agent.td_target(batch, batch.next_obs)
    torch.manual_seed(7)
    with torch.no_grad():
        scale = (HIGH - LOW) / 2
        noise = torch.randn_like(batch.act) * 0.8 * scale
        noise = torch.maximum(torch.minimum(noise, 0.5 * scale), -0.5 * scale)
        next_act = torch.maximum(torch.minimum(agent.actor_target(batch.next_obs) + noise, HIGH), LOW)
        q = torch.stack([member_forward(agent.critic_target, i, batch.next_obs, next_act) for i in range(2)])
    expected = batch.rew + 0.99 * (1 - batch.terminal) * q.min(0).values
    assert torch.allclose(target, expected, atol=1e-6)


def test_td3_critic_loss_regresses_both_critics_on_one_target():
    agent = tiny_td3(policy_noise=0.0)
    batch = make_batch()
    loss, _ = agent.critic_loss(batch, batch.obs, batch.next_obs)
    target = agent.td_target(batch, batch.next_obs)
    q = [member_forward(agent.critic, i, batch.obs, batch.act) for i in range(2)]
    expected = sum(((qi - target) ** 2).mean() for qi in q)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


# --- SAC target -------------------------------------------------------------------------------
def test_sac_critic_target_by_hand():
    torch.manual_seed(0)
    alpha, gamma = 0.05, 0.9
    agent = SAC(SACConfig(hidden=[8, 8], auto_alpha=False, init_alpha=alpha, gamma=gamma), SPEC, CPU)
    perturb(agent.critic_target, 3)
    batch = make_batch()

    def manual_loss(b: Batch) -> torch.Tensor:
        with torch.no_grad():
            dist = agent.actor.distribution(b.next_obs)
            u = dist.rsample().double()  # the same draw the agent makes after the same seed
            mean, std = dist.loc.double(), dist.scale.double()
            scale, bias = agent.actor.act_scale.double(), agent.actor.act_bias.double()
            log_prob = (-((u - mean) ** 2) / (2 * std**2) - std.log() - 0.5 * math.log(2 * math.pi)
                        - torch.log(1 - torch.tanh(u) ** 2) - scale.log()).sum(-1)
            next_act = (torch.tanh(u) * scale + bias).float()
            next_q = torch.stack([member_forward(agent.critic_target, i, b.next_obs, next_act)
                                  for i in range(2)])
            soft_v = next_q.min(0).values.double() - alpha * log_prob
            target = b.rew.double() + gamma * (1 - b.terminal.double()) * soft_v
        q = torch.stack([member_forward(agent.critic, i, b.obs, b.act) for i in range(2)]).double()
        return ((q - target) ** 2).mean(1).sum()

    torch.manual_seed(11)
    loss, _ = agent.critic_loss(batch, batch.obs, batch.next_obs)
    torch.manual_seed(11)
    assert loss.item() == pytest.approx(manual_loss(batch).item(), rel=1e-4)

    # truncation flags do not enter the target; termination flags do
    no_trunc = Batch(batch.obs, batch.act, batch.rew, batch.next_obs, batch.terminal, torch.zeros(len(batch)))
    torch.manual_seed(11)
    same = agent.critic_loss(no_trunc, batch.obs, batch.next_obs)[0].item()
    assert same == pytest.approx(loss.item(), rel=1e-6)
    no_term = Batch(batch.obs, batch.act, batch.rew, batch.next_obs, torch.zeros(len(batch)), batch.truncated)
    torch.manual_seed(11)
    changed = agent.critic_loss(no_term, batch.obs, batch.next_obs)[0].item()
    assert changed != pytest.approx(loss.item(), rel=1e-3)


def test_sac_update_with_fixed_alpha_keeps_alpha_and_moves_only_its_nets():
    torch.manual_seed(0)
    agent = SAC(SACConfig(hidden=[8, 8], auto_alpha=False, init_alpha=0.05), SPEC, CPU)
    before = {k: v.clone() for k, v in agent.state_dict().items() if isinstance(v, torch.Tensor)}
    agent.update(make_batch(16), Progress("offline", 0, 0, 0, 1, 0))
    after = agent.state_dict()
    assert agent.alpha.item() == pytest.approx(0.05)
    assert torch.equal(after["log_alpha"], before["log_alpha"])
    assert not torch.equal(after["critic.head.weight"], before["critic.head.weight"])
    assert not torch.equal(after["actor.trunk.0.weight"], before["actor.trunk.0.weight"])
    # target = (1 - tau) target + tau * updated critic (targets started equal to the critic)
    expected = 0.995 * before["critic_target.head.weight"] + 0.005 * after["critic.head.weight"]
    assert torch.allclose(after["critic_target.head.weight"], expected, atol=1e-7)


def test_sac_with_layer_norm_critics_trains_them_and_resumes_exactly():
    """agent.critic_layer_norm: the norms' scales move with the critic, the target tracks them by Polyak,
    and a state dict loaded into a fresh agent gives the same next update (the norms are checkpointed)."""
    torch.manual_seed(0)
    agent = SAC(SACConfig(hidden=[8, 8], critic_layer_norm=True), SPEC, CPU)
    before = {k: v.clone() for k, v in agent.state_dict().items() if isinstance(v, torch.Tensor)}
    agent.update(make_batch(16), Progress("offline", 0, 0, 0, 1, 0))
    after = agent.state_dict()
    assert not torch.equal(after["critic.norms.0.weight"], before["critic.norms.0.weight"])
    expected = 0.995 * before["critic_target.norms.0.weight"] + 0.005 * after["critic.norms.0.weight"]
    assert torch.allclose(after["critic_target.norms.0.weight"], expected, atol=1e-7)
    twin = SAC(SACConfig(hidden=[8, 8], critic_layer_norm=True), SPEC, CPU)
    twin.load_state_dict(copy.deepcopy(agent.state_dict()))  # a copy, as a checkpoint file is: Adam's moments
    rng = torch.get_rng_state()
    agent.update(make_batch(16, seed=1), Progress("offline", 1, 0, 1, 1, 0))
    torch.set_rng_state(rng)
    twin.update(make_batch(16, seed=1), Progress("offline", 1, 0, 1, 1, 0))
    for (k, a), b in zip(agent.state_dict().items(), twin.state_dict().values(), strict=True):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), k


def test_policy_average_is_the_polyak_recursion_and_leaves_training_unchanged():
    """agent.policy_average_tau: the same updates as without it (params bit for bit, the live actor explores),
    the averaged actor follows avg <- (1 - tau) avg + tau actor after every actor step, evaluation
    (deterministic) reads it, and it is checkpointed (a loaded copy makes the same next update)."""
    tau = 0.25
    torch.manual_seed(0)
    plain = SAC(SACConfig(hidden=[8, 8]), SPEC, CPU)
    torch.manual_seed(0)
    agent = SAC(SACConfig(hidden=[8, 8], policy_average_tau=tau), SPEC, CPU)
    expected = {k: v.clone() for k, v in agent.actor.state_dict().items()}  # starts as the initial actor
    assert all(torch.equal(v, agent.actor_average.state_dict()[k]) for k, v in expected.items())
    for i in range(3):
        rng = torch.get_rng_state()
        plain.update(make_batch(16, seed=i), Progress("offline", i, 0, i, 10, 0))
        torch.set_rng_state(rng)
        agent.update(make_batch(16, seed=i), Progress("offline", i, 0, i, 10, 0))
        expected = {k: (1 - tau) * v + tau * agent.actor.state_dict()[k] for k, v in expected.items()}
    for k, v in plain.state_dict().items():  # training unchanged: every shared tensor bit for bit
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, agent.state_dict()[k]), k
    for k, v in expected.items():
        assert torch.allclose(agent.actor_average.state_dict()[k], v, atol=1e-6), k
    assert not torch.allclose(agent.actor_average.trunk[0].weight, agent.actor.trunk[0].weight)
    obs = torch.randn(5, 4)
    assert torch.equal(agent.act(obs, deterministic=True), agent.actor_average(obs, deterministic=True)[0])
    assert torch.equal(plain.act(obs, deterministic=True),
                       agent.actor(obs, deterministic=True)[0])  # the live actor is the plain agent's
    torch.manual_seed(5)
    explored = agent.act(obs)
    torch.manual_seed(5)
    assert torch.equal(explored, agent.actor(obs)[0])  # exploration: the live actor
    twin = SAC(SACConfig(hidden=[8, 8], policy_average_tau=tau), SPEC, CPU)
    twin.load_state_dict(copy.deepcopy(agent.state_dict()))
    assert torch.equal(twin.act(obs, deterministic=True), agent.act(obs, deterministic=True))
    with pytest.raises(Exception, match="policy_average_tau"):
        SAC(SACConfig(hidden=[8, 8], policy_average_tau=1.5), SPEC, CPU)


def built_or_refused(field: str, value) -> dict:
    """Every agent whose config has `field`, built with it set to `value`: name -> the agent, or None where the
    agent refused it in one ConfigError that names the field (asserted here)."""
    from agents.core.config import ConfigError
    from agents.core.registry import discover_agents

    out = {}
    for name, (agent_cls, config_cls) in sorted(discover_agents().items()):
        if field not in config_cls.__dataclass_fields__:
            continue
        torch.manual_seed(0)
        try:
            out[name] = agent_cls(config_cls(hidden=[8, 8], **{field: value}), SPEC, CPU)
        except ConfigError as err:
            assert field in str(err), name
            out[name] = None
    return out


def test_every_agent_with_the_policy_average_switch_builds_it_or_refuses():
    """The switch lives on SACConfig: every agent whose config inherits it evaluates an averaged actor or
    refuses it in one ConfigError (Off2On's mixture policy), never ignores it."""
    checked = []
    for name, agent in built_or_refused("policy_average_tau", 0.5).items():
        checked.append(name)
        if agent is None:
            continue
        with torch.no_grad():
            agent.actor_average.trunk[-1].bias.add_(3.0)  # the averaged actor must be the one evaluated
        obs = torch.randn(4, 4)
        assert torch.equal(agent.act(obs, deterministic=True), agent.actor_average(obs, deterministic=True)[0]), name
        assert not torch.equal(agent.act(obs, deterministic=True), agent.actor(obs, deterministic=True)[0]), name
    assert {"sac", "cql", "calql", "mopo", "moore", "redq", "off2on", "upq", "aca", "apl_cql"} <= set(checked)


# --- networks ---------------------------------------------------------------------------------
def test_soft_update_is_polyak_average():
    torch.manual_seed(0)
    target, source = CriticEnsemble(4, 3, 3, [5]), CriticEnsemble(4, 3, 3, [5])
    expected = [0.9 * t.detach().clone() + 0.1 * s.detach() for t, s in zip(target.parameters(),
                                                                        source.parameters(), strict=True)]
    source_before = [s.detach().clone() for s in source.parameters()]
    soft_update(target, source, 0.1)
    for t, e in zip(target.parameters(), expected, strict=True):
        assert torch.allclose(t, e, atol=1e-6)
    for s, b in zip(source.parameters(), source_before, strict=True):
        assert torch.equal(s, b)
    soft_update(target, source, 1.0)
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        assert torch.allclose(t, s, atol=1e-7)


def test_critic_ensemble_equals_per_member_forward():
    torch.manual_seed(0)
    critic = CriticEnsemble(4, 3, num_critics=5, hidden=[7, 6])
    obs, act = torch.randn(9, 4), torch.randn(9, 3)
    q = critic(obs, act)
    assert q.shape == (5, 9)
    for i in range(5):
        assert torch.allclose(q[i], member_forward(critic, i, obs, act), atol=1e-6)
    # per-critic inputs [N, B, *]: member i sees only its own slice
    obs_n, act_n = torch.randn(5, 9, 4), torch.randn(5, 9, 3)
    q_n = critic(obs_n, act_n)
    for i in range(5):
        assert torch.allclose(q_n[i], member_forward(critic, i, obs_n[i], act_n[i]), atol=1e-6)
    # members are independent networks, not copies
    assert not torch.allclose(q[0], q[1])


def test_layer_norm_critic_equals_per_member_reference():
    """critic_layer_norm (RLPD): Linear -> LayerNorm -> ReLU per member, checked against torch's own
    F.layer_norm on each member's slice with that member's scale and shift; a members subset runs only those."""
    torch.manual_seed(0)
    critic = CriticEnsemble(4, 3, num_critics=4, hidden=[7, 6], layer_norm=True)
    perturb(critic, 1)  # scales and shifts away from 1 and 0, distinct per member
    obs, act = torch.randn(9, 4), torch.randn(9, 3)
    q = critic(obs, act)  # [4, 9]
    for i in range(4):
        x = torch.cat([obs, act], -1)
        for layer, norm in zip(critic.hidden, critic.norms, strict=True):
            h = x @ layer.weight[i] + layer.bias[i, 0]
            x = torch.relu(torch.nn.functional.layer_norm(h, (h.shape[-1],), norm.weight[i, 0], norm.bias[i, 0],
                                                          eps=1e-6))
        expected = (x @ critic.head.weight[i] + critic.head.bias[i, 0]).squeeze(-1)
        assert torch.allclose(q[i], expected, atol=1e-5)
    subset = torch.tensor([3, 1])
    assert torch.allclose(critic(obs, act, members=subset), q[subset], atol=1e-6)
    # the plain critic is unchanged by the option's existence: no norm parameters, the same state-dict keys
    plain = CriticEnsemble(4, 3, num_critics=4, hidden=[7, 6])
    assert plain.norms is None
    assert set(plain.state_dict()) == {k for k in critic.state_dict() if not k.startswith("norms.")}


def test_layer_norm_bounds_q_far_off_the_data():
    """Why RLPD normalizes: with LayerNorm the features entering the head have norm sqrt(H) whatever the
    input, so |Q| has a bound set by the weights alone, while the plain critic's Q grows with the input."""
    torch.manual_seed(0)
    normed = CriticEnsemble(4, 3, num_critics=2, hidden=[16, 16], layer_norm=True)
    plain = CriticEnsemble(4, 3, num_critics=2, hidden=[16, 16])
    obs, act = torch.randn(64, 4), torch.randn(64, 3)
    bound = (normed.head.weight.norm(dim=(1, 2)) * 16 ** 0.5 + normed.head.bias.abs().view(-1)).view(2, 1)
    for scale in (1.0, 1e3):
        assert (normed(obs * scale, act * scale).abs() <= bound + 1e-4).all()
    assert plain(obs * 1e3, act * 1e3).abs().max() > 100 * plain(obs, act).abs().max()


def test_tanh_gaussian_log_prob_consistency():
    torch.manual_seed(0)
    actor = TanhGaussianActor(4, 3, SPEC.act_scale, SPEC.act_bias, hidden=[16, 16])
    obs = torch.randn(256, 4)
    act, log_prob = actor(obs)
    assert log_prob.shape == (256,)
    assert torch.allclose(actor.log_prob(obs, act), log_prob, atol=1e-4)
    assert torch.allclose(log_prob.double(), reference_log_prob(actor, obs, act), atol=1e-4)
    det_act, det_log_prob = actor(obs, deterministic=True)
    assert torch.allclose(det_act, torch.tanh(actor.distribution(obs).mean) * SPEC.act_scale + SPEC.act_bias)
    assert torch.allclose(actor.log_prob(obs, det_act), det_log_prob, atol=1e-4)


def test_several_samples_per_state_equal_sampling_repeated_states():
    """actor(obs, samples=n) runs the trunk once per state: it must give what the repeated batch gives
    (state-major rows, the same noise draws), for the single and the ensemble actor."""
    from agents.core.networks import EnsembleTanhGaussianActor

    obs = torch.randn(7, 4)
    for actor in (TanhGaussianActor(4, 3, SPEC.act_scale, SPEC.act_bias, hidden=[16, 16]),
                  EnsembleTanhGaussianActor(4, 3, SPEC.act_scale, SPEC.act_bias, hidden=[16, 16], ensemble_size=3)):
        torch.manual_seed(1)
        act, log_prob = actor(obs, samples=5)
        torch.manual_seed(1)
        act_rep, log_prob_rep = actor(obs.repeat_interleave(5, 0))
        torch.testing.assert_close(act, act_rep, rtol=0, atol=1e-6)
        torch.testing.assert_close(log_prob, log_prob_rep, rtol=0, atol=1e-5)
        # five different draws per state, not one draw repeated
        assert act.view(-1, 7, 5, 3).std(2).min() > 0


def test_actions_stay_within_asymmetric_bounds():
    torch.manual_seed(0)
    obs = torch.cat([torch.randn(200, 4), 1e3 * torch.randn(200, 4)])  # large inputs saturate tanh
    gaussian = TanhGaussianActor(4, 3, SPEC.act_scale, SPEC.act_bias, hidden=[16, 16])
    deterministic = DeterministicActor(4, 3, SPEC.act_scale, SPEC.act_bias, hidden=[16, 16])
    td3 = TD3(TD3Config(hidden=[8, 8], exploration_noise=2.0), SPEC, CPU)  # noise far beyond the bounds
    sac = SAC(SACConfig(hidden=[8, 8]), SPEC, CPU)
    candidates = {
        "gaussian": gaussian(obs)[0], "gaussian-det": gaussian(obs, deterministic=True)[0],
        "deterministic": deterministic(obs), "td3": td3.act(obs), "td3-det": td3.act(obs, deterministic=True),
        "sac": sac.act(obs), "random": td3.random_action(400),
    }
    for name, a in candidates.items():
        assert a.shape == (400, 3), name
        assert torch.all(a >= LOW) and torch.all(a <= HIGH), name
    # the whole range is used: the bounds are where the env puts them, not [-1, 1]
    assert torch.all(candidates["random"].min(0).values < LOW + 0.1)
    assert torch.all(candidates["random"].max(0).values > HIGH - 0.1)
    assert torch.all(candidates["td3"].max(0).values > HIGH - 0.1)


def test_every_agent_with_the_critic_layer_norm_switch_builds_it_or_refuses():
    """The switch lives on SACConfig, so every agent whose config inherits it either puts LayerNorm in every
    critic it builds (Off2On and UPQ build their own) or refuses it in one ConfigError; never ignores it."""
    from agents.core.networks import EnsembleLayerNorm

    checked = []
    for name, agent in built_or_refused("critic_layer_norm", True).items():
        checked.append(name)
        if agent is None:
            continue
        critics = [m for m in agent.modules() if isinstance(m, CriticEnsemble)]
        assert critics and all(c.norms is not None for c in critics), name
        assert all(isinstance(n, EnsembleLayerNorm) for c in critics for n in c.norms), name
    assert {"sac", "cql", "calql", "mopo", "moore", "redq", "off2on", "upq", "aca"} <= set(checked)
