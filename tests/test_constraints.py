"""Relaxed and adaptive BC constraints: TD3-BC PR / PR-FT's schedule and its bitwise TD3+BC special
case, AdaptiveBC's PD controller on a hand-made return sequence (both clips), its 2-of-10 target,
and the sampler option that seeds the online store with offline rows."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import FixedCritics, assert_same_state
from test_lifecycle import compose_config

from agents.adaptive_bc import AdaptiveBC, AdaptiveBCConfig
from agents.core.agent import EnvSpec
from agents.td3bc import TD3BC, TD3BCConfig
from agents.td3bc_pr import TD3BCPR, TD3BCPRConfig, pr_ft_alpha
from worldmodels.data.samplers import SamplerConfig, Sources, check_sampler_config, make_sampler
from worldmodels.data.store import Batch, TransitionStore
from worldmodels.progress import EpisodeEnd, Progress

CPU = torch.device("cpu")
SPEC = EnvSpec(obs_dim=3, act_dim=2, act_low=torch.tensor([-1.0, -2.0]), act_high=torch.tensor([1.0, 1.0]))


def make_batch(n: int = 32, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    act = SPEC.act_low + torch.rand(n, 2, generator=g) * (SPEC.act_high - SPEC.act_low)
    terminal = torch.zeros(n)
    terminal[1] = 1.0
    return Batch(torch.randn(n, 3, generator=g), act, torch.randn(n, generator=g), torch.randn(n, 3, generator=g),
                 terminal, torch.zeros(n))


def online(updates_done: int, offline_updates: int = 100, online_budget: int = 50, score=None) -> Progress:
    return Progress("online", offline_updates, updates_done, offline_updates + updates_done, offline_updates,
                    online_budget, score)


# --- TD3-BC PR / PR-FT ---------------------------------------------------------------------------
def test_pr_ft_schedule_reaches_alpha_end_after_exactly_n_updates():
    start, end, n = 0.4, 0.2, 37
    kappa = math.exp(math.log(end / start) / n)
    alpha = start
    for k in range(n):
        assert pr_ft_alpha(k, start, end, n) == pytest.approx(alpha, rel=1e-12)  # closed form == alpha <- kappa alpha
        assert pr_ft_alpha(k, start, end, n) > end
        alpha *= kappa
    assert alpha == pytest.approx(end, rel=1e-12)
    assert pr_ft_alpha(n, start, end, n) == end and pr_ft_alpha(n + 5, start, end, n) == end  # exact, then held


def test_pr_schedule_reads_online_updates_from_progress_and_resumes_exactly():
    cfg = TD3BCPRConfig(hidden=[16, 16], decay_updates=0, refine_fraction=0.2)  # N = the online budget (50)
    agent = TD3BCPR(cfg, SPEC, CPU)
    offline = lambda k: Progress("offline", k, 0, k, 100, 50)  # noqa: E731
    assert agent.schedule(offline(79)) == 0.4 and agent.schedule(offline(80)) == pytest.approx(0.4 / 5)
    assert agent.schedule(online(0)) == 0.4 and agent.schedule(online(50)) == 0.2
    assert agent.schedule(online(25)) == pytest.approx(0.4 * (0.2 / 0.4) ** 0.5, rel=1e-12)
    # an uninterrupted run of 6 online updates vs one stopped after 3 and restored into a fresh agent
    batch = make_batch()
    torch.manual_seed(0)
    ref = TD3BCPR(cfg, SPEC, CPU)
    weights = [ref.update(batch, online(k)) and ref.bc_weight for k in range(6)]
    torch.manual_seed(0)
    first = TD3BCPR(cfg, SPEC, CPU)
    for k in range(3):
        first.update(batch, online(k))
    torch.manual_seed(1)
    resumed = TD3BCPR(cfg, SPEC, CPU)
    resumed.load_state_dict(first.state_dict())
    resumed_weights = [resumed.update(batch, online(k)) and resumed.bc_weight for k in range(3, 6)]
    assert resumed_weights == weights[3:]
    assert weights == [pr_ft_alpha(k, 0.4, 0.2, 50) for k in range(6)]


def trained(agent, batch, progress, steps=4):
    for _ in range(steps):
        agent.update(batch, progress)
    return agent.state_dict()


@pytest.mark.parametrize("phase", ["offline", "online"])
def test_pr_with_td3bc_weighting_makes_exactly_the_td3bc_update(phase):
    # TD3+BC's loss -(alpha / mean|Q|) Q + bc equals PR's -Q / mean|Q| + alpha' bc when alpha = alpha' = 1
    progress = Progress("offline", 0, 0, 0, 10, 10) if phase == "offline" else online(3)
    pr_cfg = TD3BCPRConfig(hidden=[16, 16], alpha=1.0, relax=1.0, refine_fraction=0.0, alpha_start=1.0,
                           alpha_end=1.0)
    batch = make_batch()
    torch.manual_seed(0)
    td3bc = trained(TD3BC(TD3BCConfig(hidden=[16, 16], alpha=1.0), SPEC, CPU), batch, progress)
    torch.manual_seed(0)
    pr = trained(TD3BCPR(pr_cfg, SPEC, CPU), batch, progress)
    assert_same_state(td3bc, pr)
    # the control: the default (relaxed, decaying) weights change the update
    torch.manual_seed(0)
    relaxed = trained(TD3BCPR(TD3BCPRConfig(hidden=[16, 16]), SPEC, CPU), batch, progress)
    assert not torch.equal(relaxed["actor.net.0.weight"], td3bc["actor.net.0.weight"])


def test_pr_refinement_trains_the_actor_only():
    agent = TD3BCPR(TD3BCPRConfig(hidden=[16, 16], refine_fraction=0.5), SPEC, CPU)
    critic, actor = agent.critic.state_dict(), {k: v.clone() for k, v in agent.actor.state_dict().items()}
    critic = {k: v.clone() for k, v in critic.items()}
    info = agent.update(make_batch(), Progress("offline", 6, 0, 6, 10, 10))  # in the last half
    assert_same_state(critic, agent.critic.state_dict())
    assert not torch.equal(actor["net.0.weight"], agent.actor.state_dict()["net.0.weight"])
    assert info["actor/bc_weight"].item() == pytest.approx(0.4 / 5)


# --- AdaptiveBC --------------------------------------------------------------------------------------
def episode(normalized: float | None, length: int) -> EpisodeEnd:
    return EpisodeEnd(0.0, normalized, length, torch.arange(length), False)


def test_pd_controller_on_a_hand_made_return_sequence():
    agent = AdaptiveBC(AdaptiveBCConfig(hidden=[16, 16]), SPEC, CPU)
    assert agent.bc_alpha == 0.4 and agent.r_avg is None
    agent.on_phase(online(0, score=50.0))  # the offline policy's last evaluation: normalized 50 -> R_avg 0.5
    agent.on_phase(online(0, score=90.0))  # idempotent (a resume): the controller keeps its state
    assert (agent.bc_alpha, agent.r_avg) == (0.4, 0.5)
    # by hand: alpha += T (-3e-5 (1.05 - R_avg) + 1e-4 max(0, R_avg - R)), clip [0, 0.4]; R_avg <- 0.05 R + 0.95 R_avg
    expected = [  # (normalized return, T_ep, alpha after, R_avg after)
        (30.0, 1000, 0.4, 0.49),  # +0.0035 over the top: upper clip
        (90.0, 1000, 0.3832, 0.5105),  # -0.0168
        (100.0, 20000, 0.0595, 0.534975),  # -0.3237
        (100.0, 5000, 0.0, 0.55822625),  # -0.07725375 below zero: lower clip
    ]
    for r, steps, alpha, r_avg in expected:
        agent.on_episode_end(episode(r, steps), online(1))
        assert agent.bc_alpha == pytest.approx(alpha, abs=1e-12)
        assert agent.r_avg == pytest.approx(r_avg, abs=1e-12)
    agent.on_episode_end(episode(None, 1000), online(1))  # no reference scores: nothing moves
    assert (agent.bc_alpha, agent.r_avg) == pytest.approx((0.0, 0.55822625))
    # the controller lives in the checkpoint
    restored = AdaptiveBC(AdaptiveBCConfig(hidden=[16, 16]), SPEC, CPU)
    restored.load_state_dict(agent.state_dict())
    assert (restored.bc_alpha, restored.r_avg, restored.controller_started) == (agent.bc_alpha, agent.r_avg, True)


def test_adaptive_bc_actor_uses_the_controller_weight():
    agent = AdaptiveBC(AdaptiveBCConfig(hidden=[16, 16], policy_delay=1), SPEC, CPU)
    agent.bc_alpha = 0.123
    info = agent.update(make_batch(), online(0))
    assert info["actor/bc_weight"].item() == pytest.approx(0.123)


def test_adaptive_bc_target_reads_a_random_two_of_ten():
    agent = AdaptiveBC(AdaptiveBCConfig(hidden=[16, 16]), SPEC, CPU)
    assert agent.critic.num_critics == agent.critic_target.num_critics == 10
    agent.critic_target = FixedCritics([3.0, 7.0, 1.0, 9.0, 4.0, 0.0, 8.0, 2.0, 6.0, 5.0])  # member i's Q everywhere
    batch = make_batch(4)
    batch.rew.zero_()
    batch.terminal.zero_()
    draws = 2000
    mins = torch.stack([agent.td_target(batch, batch.next_obs)[0] / agent.cfg.gamma for _ in range(draws)])
    counts = torch.bincount(mins.round().long(), minlength=10).double() / draws
    # min over a uniform 2-subset of 10 distinct values: P(min = the k-th smallest) = (9 - k) / 45
    expected = torch.tensor([(9 - k) / 45 for k in range(10)], dtype=torch.float64)
    assert counts[9] == 0  # the largest member is never a min of two
    assert torch.allclose(counts, expected, atol=0.035), counts
    assert counts[8] > 0  # the second largest is (a subset of 3 or more never gives it)


# --- the sampler option: offline rows seed the online store ------------------------------------
def stores(num_offline: int = 200, capacity: int = 30) -> Sources:
    obs = torch.arange(num_offline, dtype=torch.float32)[:, None].expand(num_offline, 3).clone()  # row id in obs
    offline = TransitionStore.from_tensors({"obs": obs, "act": torch.zeros(num_offline, 2),
                                            "rew": torch.arange(num_offline, dtype=torch.float32),
                                            "next_obs": obs + 1, "terminal": torch.zeros(num_offline),
                                            "truncated": torch.zeros(num_offline)}, device=CPU)
    return Sources(offline, TransitionStore(capacity, 3, 2, CPU, source="online"))


@pytest.mark.parametrize(("fraction", "minimum", "promised"), [(0.05, 12, 12), (0.1, 12, 20), (0.5, 0, 30),
                                                               (0.0, 0, 0)])
def test_seeding_puts_the_promised_offline_rows_in_the_online_store(fraction, minimum, promised):
    sources = stores()  # 200 offline rows, online capacity 30
    sampler = make_sampler(SamplerConfig(kind="online_only", online_seed_fraction=fraction,
                                         online_seed_min=minimum), sources)
    g = torch.Generator().manual_seed(0)
    assert sampler.seed_online(g) == promised
    online = sources.online
    assert len(online) == promised and online.cursor == promised % online.capacity
    rows = online.data["obs"][:promised, 0].long()
    # each seeded row is a whole offline row
    assert torch.equal(online.data["rew"][:promised], sources.offline.data["rew"][rows])
    assert torch.equal(online.data["next_obs"][:promised], sources.offline.data["next_obs"][rows])
    # reproducible with the run's generator
    again = stores()
    make_sampler(sampler.cfg, again).seed_online(torch.Generator().manual_seed(0))
    assert torch.equal(again.online.data["obs"], online.data["obs"])


def episode_store() -> TransitionStore:
    """Four episodes of lengths 3, 2, 4, 1 with returns 3, 10, -1, 7, ended by a terminal, a truncation,
    a break in the obs chain only, and the data's end."""
    rew = torch.tensor([1.0, 1, 1, 5, 5, 0, 0, 0, -1, 7])
    obs = torch.arange(10, dtype=torch.float32)[:, None].expand(10, 3).clone()  # row id in obs
    next_obs = obs + 1
    next_obs[8] = 100.0  # row 8's successor is not row 9: the third episode ends there
    terminal, truncated = torch.zeros(10), torch.zeros(10)
    terminal[2], truncated[4] = 1.0, 1.0
    return TransitionStore.from_tensors({"obs": obs, "act": torch.zeros(10, 2), "rew": rew, "next_obs": next_obs,
                                         "terminal": terminal, "truncated": truncated}, device=CPU)


@pytest.mark.parametrize(("k", "capacity", "rows"), [(2, 30, [3, 4, 9]), (3, 30, [3, 4, 9, 0, 1, 2]),
                                                     (3, 4, [3, 4, 9, 0]), (50, 30, [3, 4, 9, 0, 1, 2, 5, 6, 7, 8])])
def test_top_episode_seeding_copies_the_best_episodes_whole_best_first(k, capacity, rows):
    offline = episode_store()
    sources = Sources(offline, TransitionStore(capacity, 3, 2, CPU, source="online"))
    sampler = make_sampler(SamplerConfig(kind="online_only", online_seed_top_episodes=k), sources)
    assert sampler.seed_online(torch.Generator().manual_seed(0)) == len(rows)
    online = sources.online
    assert online.data["obs"][: len(rows), 0].long().tolist() == rows
    for name in ("rew", "next_obs", "terminal", "truncated"):  # whole rows, flags included
        assert torch.equal(online.data[name][: len(rows)], offline.data[name][rows])


def test_seeding_options_are_checked():
    assert "must be >= 0" in check_sampler_config(SamplerConfig(online_seed_top_episodes=-1))
    both = check_sampler_config(SamplerConfig(online_seed_top_episodes=5, online_seed_min=10))
    assert "set one of them to 0" in both
    assert check_sampler_config(SamplerConfig(online_seed_top_episodes=5)) is None


def test_aca_config_seeds_the_top_50_episodes():
    cfg = compose_config("aca", [])
    assert (cfg.sampler.kind, cfg.sampler.online_seed_top_episodes, cfg.sampler.online_seed_min) == (
        "online_only", 50, 0)
    assert compose_config("sac", []).sampler.online_seed_top_episodes == 0  # other agents unchanged


def test_adaptive_bc_config_seeds_max_5_percent_or_50k():
    cfg = compose_config("adaptive_bc", [])
    assert (cfg.sampler.kind, cfg.sampler.online_seed_fraction, cfg.sampler.online_seed_min) == (
        "online_only", 0.05, 50_000)
    assert cfg.trainer.updates_per_step == 10
    assert compose_config("td3bc", []).sampler.online_seed_min == 0  # other agents unchanged
