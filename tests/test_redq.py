"""REDQ: the random-subset min, its Bellman target checked by hand, the variant equivalence
REDQ(N = M = 2, policy every update, actor on the min) == SAC, the policy-update schedule, and
the CLI end to end."""

from __future__ import annotations

import pytest
import torch
from conftest import FixedActor, FixedCritics, run_agent

from agents.core.agent import EnvSpec
from agents.core.config import ConfigError, TrainerConfig
from agents.core.networks import CriticEnsemble, mean_over_critics, subset_min_target
from agents.core.trainer import Trainer
from agents.redq import REDQ, REDQConfig
from agents.sac import SAC, SACConfig
from worldmodels.data.store import Batch, TransitionStore
from worldmodels.progress import Progress

OBS, ACT = 3, 2
SPEC = EnvSpec(OBS, ACT, -torch.ones(ACT), torch.ones(ACT))
CPU = torch.device("cpu")


# --- the reductions ----------------------------------------------------------------------------
def test_subset_min_target_full_single_and_coverage():
    torch.manual_seed(0)
    critic = CriticEnsemble(OBS, ACT, 6, [8])
    obs, act = torch.randn(32, OBS), torch.randn(32, ACT)
    q = critic(obs, act)  # [N, B]
    g = torch.Generator().manual_seed(1)
    assert torch.equal(subset_min_target(critic, obs, act, 6, g)[0], q.min(0).values)
    used = set()
    for _ in range(200):
        one, q_one = subset_min_target(critic, obs, act, 1, g)  # [B]: exactly one critic's row
        assert q_one.shape == (1, 32)
        rows = [i for i in range(6) if torch.equal(one, q[i])]
        assert len(rows) == 1
        used.add(rows[0])
        two, _ = subset_min_target(critic, obs, act, 2, g)  # the min of some pair, the same pair for the whole batch
        assert any(torch.equal(two, torch.minimum(q[i], q[j])) for i in range(6) for j in range(i + 1, 6))
    assert used == set(range(6))
    # all_critics: the same draw's min, beside all N rows (what the std penalty reads)
    a, _ = subset_min_target(critic, obs, act, 2, torch.Generator().manual_seed(5))
    b, q_all = subset_min_target(critic, obs, act, 2, torch.Generator().manual_seed(5), all_critics=True)
    assert torch.equal(a, b) and torch.equal(q_all, q)
    assert torch.equal(mean_over_critics(q), q.mean(0))
    with pytest.raises(ValueError):
        subset_min_target(critic, obs, act, 7, g)


def test_the_target_runs_exactly_m_of_the_n_critics():
    """REDQ's target reads M members: its critic FLOPs are M/N of a full ensemble's call."""
    from torch.utils.flop_counter import FlopCounterMode

    critic = CriticEnsemble(OBS, ACT, 10, [16, 16])
    obs, act = torch.randn(8, OBS), torch.randn(8, ACT)
    with FlopCounterMode(display=False) as full:
        critic(obs, act)
    with FlopCounterMode(display=False) as two:
        subset_min_target(critic, obs, act, 2, torch.Generator().manual_seed(0))
    assert full.get_total_flops() > 0
    assert two.get_total_flops() * 5 == full.get_total_flops()


# --- the critic target by hand -------------------------------------------------------------------
def test_critic_target_is_min_over_the_drawn_subset_minus_entropy():
    values = [5.0, 1.0, 7.0, 3.0, 9.0]
    agent = REDQ(REDQConfig(hidden=[8], num_critics=5, num_min=2, init_alpha=0.5), SPEC, CPU)
    agent.critic_target, agent.actor = FixedCritics(values), FixedActor(ACT)
    batch = Batch(obs=torch.zeros(4, OBS), act=torch.zeros(4, ACT), rew=torch.tensor([1.0, 2.0, 0.0, -1.0]),
                  next_obs=torch.zeros(4, OBS), terminal=torch.tensor([0.0, 0.0, 1.0, 0.0]), truncated=torch.zeros(4))
    agent.subset_rng.manual_seed(7)
    pair = torch.randperm(5, generator=torch.Generator().manual_seed(7))[:2].tolist()  # the subset REDQ draws
    agent.subset_rng.manual_seed(7)
    soft_value = agent.target_value(batch, batch.next_obs)
    hand = min(values[i] for i in pair) - 0.5 * -2.0
    assert torch.allclose(soft_value, torch.full((4,), hand))
    # and the Bellman target the critic loss regresses on: r + 0.99 (1 - d) * soft value
    agent.subset_rng.manual_seed(7)
    with torch.no_grad():
        target = batch.rew + agent.cfg.gamma * (1 - batch.terminal) * agent.target_value(batch, batch.next_obs)
    assert torch.allclose(target, torch.tensor([1 + 0.99 * hand, 2 + 0.99 * hand, 0.0, -1 + 0.99 * hand]))


# --- the variant equivalence --------------------------------------------------------------------
def _store(n: int = 256) -> TransitionStore:
    g = torch.Generator().manual_seed(0)
    obs, act = torch.randn(n, OBS, generator=g), torch.rand(n, ACT, generator=g) * 2 - 1
    return TransitionStore.from_tensors({
        "obs": obs, "act": act, "rew": obs[:, 0] - act.square().sum(1), "next_obs": obs + 0.1 * act.sum(1, True),
        "terminal": (obs[:, 1] > 1.5).float(), "truncated": torch.zeros(n)}, device="cpu")


def _train(agent, tmp_path, updates: int = 20):
    cfg = TrainerConfig(offline_updates=updates, online_steps=0, batch_size=32, eval_every=10**6,
                        log_every=5, checkpoint_every=10**6, progress=False)
    trainer = Trainer(agent, cfg, lambda: None, _store(), tmp_path, seed=0, tensorboard=False)
    trainer.evaluate = lambda phase: None  # no env in these unit tests
    trainer.run()
    return [p.detach().clone() for p in agent.parameters()]


SAC_LIKE = dict(hidden=[16, 16], num_critics=2, num_min=2, policy_update_every=1, actor_q="min")


def test_redq_with_two_critics_and_every_step_policy_is_exactly_sac(tmp_path):
    torch.manual_seed(0)
    sac = _train(SAC(SACConfig(hidden=[16, 16]), SPEC, CPU), tmp_path / "sac")
    torch.manual_seed(0)
    redq = _train(REDQ(REDQConfig(**SAC_LIKE), SPEC, CPU), tmp_path / "redq")
    assert len(sac) == len(redq)
    for a, b in zip(sac, redq, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("change", [dict(actor_q="mean"), dict(policy_update_every=2)])
def test_each_redq_difference_changes_the_update(tmp_path, change):
    """The control for the test above: the actor on the critics' mean, or a delayed policy, differs."""
    torch.manual_seed(0)
    sac = _train(SAC(SACConfig(hidden=[16, 16]), SPEC, CPU), tmp_path / "sac")
    torch.manual_seed(0)
    redq = _train(REDQ(REDQConfig(**SAC_LIKE | change), SPEC, CPU), tmp_path / "redq")
    assert any(not torch.equal(a, b) for a, b in zip(sac, redq, strict=True))


def test_policy_updates_once_every_g_critic_updates():
    torch.manual_seed(0)
    agent = REDQ(REDQConfig(hidden=[16, 16], num_critics=4, policy_update_every=3), SPEC, CPU)
    store = _store()
    progress = Progress("online", 0, 0, 0, 0, 100)
    actor_updates = []
    for _ in range(9):
        before = [p.detach().clone() for p in agent.actor.parameters()]
        info = agent.update(store.gather(torch.arange(32)), progress)
        changed = any(not torch.equal(a, b) for a, b in zip(before, agent.actor.parameters(), strict=True))
        assert changed == ("loss/actor" in info) and "loss/critic" in info
        actor_updates.append(changed)
    assert actor_updates == [False, False, True] * 3 and agent.num_updates == 9


# --- the CLI ----------------------------------------------------------------------------------------
def test_cli_runs_end_to_end_online_from_scratch(tmp_path):
    """REDQ's default setting needs no dataset (dataset.quality=none: no reference scores, no build)."""
    overrides = {"dataset.quality": "none", "trainer.offline_updates": "0", "trainer.warmup_steps": "20",
                 "trainer.updates_per_step": "2"}
    result = run_agent("redq", tmp_path / "run", None, threads="1", **overrides)
    assert result.returncode == 0, result.describe()
    summary = result.summary
    assert summary["env_steps"] == 60 and summary["updates"] == (60 - 20) * 2


def test_target_entropy_follows_the_reference_per_task():
    """redq_sac.py's default target_entropy='mbpo': MBPO's per-task values; -|A| elsewhere and under 'auto';
    a number given in agent.target_entropy wins."""
    def target(env_id: str, **cfg) -> float:
        spec = EnvSpec(OBS, ACT, -torch.ones(ACT), torch.ones(ACT), env_id)
        return REDQ(REDQConfig(hidden=[8], **cfg), spec, CPU).target_entropy

    assert (target("Hopper-v5"), target("HalfCheetah-v5"), target("Walker2d-v4")) == (-1.0, -3.0, -3.0)
    assert target("Pendulum-v1") == -float(ACT) and target("") == -float(ACT)  # not in the table: -|A|
    assert target("Hopper-v5", target_entropy_rule="auto") == -float(ACT)
    assert target("Hopper-v5", target_entropy=-0.5) == -0.5
    with pytest.raises(ConfigError):
        target("Hopper-v5", target_entropy_rule="sac")
