"""PEX and APL: PEX's selection rule by hand (the paper's softmax over Q, and the LCB with a penalty),
its frozen pi_offline and its IQL offline phase; APL's online-offline replay (sources, W, the
threshold and the recent window) and the bitwise GTD3BC(W = 1) == TD3+BC equivalence; GCQL's gated
penalty."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest
import torch
from conftest import assert_same_state
from torch import nn

from agents.apl import APL, APLConfig, regulariser_weight
from agents.apl_cql import APLCQL, APLCQLConfig
from agents.core.agent import EnvSpec
from agents.cql import cql_penalty
from agents.iql import IQL, IQLConfig
from agents.pex import PEX, PEXConfig, selection_probs
from agents.td3bc import TD3BC, TD3BCConfig
from worldmodels.data.samplers import SamplerConfig, Sources, make_sampler
from worldmodels.data.store import SOURCE_IDS, Batch, TransitionStore
from worldmodels.progress import Progress

CPU = torch.device("cpu")
SPEC = EnvSpec(obs_dim=3, act_dim=2, act_low=torch.tensor([-1.0, -2.0]), act_high=torch.tensor([1.0, 1.0]))
OFFLINE = Progress("offline", 0, 0, 0, 10, 10)
ONLINE = Progress("online", 10, 5, 15, 10, 10)
RECENT = SOURCE_IDS["recent"]


def make_batch(n: int = 32, seed: int = 0, source: int | None = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    act = SPEC.act_low + torch.rand(n, 2, generator=g) * (SPEC.act_high - SPEC.act_low)
    terminal = torch.zeros(n)
    terminal[1] = 1.0
    src = None if source is None else torch.full((n,), source, dtype=torch.long)
    return Batch(torch.randn(n, 3, generator=g), act, torch.randn(n, generator=g), torch.randn(n, 3, generator=g),
                 terminal, torch.zeros(n), source=src, index=None if source is None else torch.arange(n))


def config_as(cls, cfg):
    """The parent's config with the variant's shared field values (its own `name`)."""
    names = {f.name for f in fields(cls)} - {"name"}
    return cls(**{f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name in names})


def trained(agent, batch, progress, steps=3):
    for _ in range(steps):
        agent.update(batch, progress)
    return agent.state_dict()


# --- PEX: the selection rule -----------------------------------------------------------------------
def test_selection_probs_by_hand():
    q = torch.tensor([[1.0, 1.2], [0.0, -0.3]])
    probs = selection_probs(q, 10.0)
    e2, e3 = math.exp(2.0), math.exp(3.0)
    assert probs.flatten().tolist() == pytest.approx([1 / (1 + e2), e2 / (1 + e2), e3 / (1 + e3), 1 / (1 + e3)])
    # kappa = 0 is the paper's rule bit for bit: u is not even read (NaN would poison any use of it)
    assert torch.equal(selection_probs(q, 10.0, torch.full_like(q, math.nan), 0.0), torch.softmax(10.0 * q, -1))
    # the LCB: scores 1 - 0.1 = 0.9 vs 1.2 - 0.5 = 0.7 flip the first row's preference
    u = torch.tensor([[0.1, 0.5], [0.0, 0.0]])
    lcb = selection_probs(q, 10.0, u, 1.0)
    assert lcb.flatten().tolist() == pytest.approx([e2 / (1 + e2), 1 / (1 + e2), e3 / (1 + e3), 1 / (1 + e3)])


class KnownCritic(nn.Module):
    """Q_i(s, a) = (i + 1) sum(a) + sum(s): min and std over the two critics are known by hand."""

    def forward(self, obs, act):
        scale = torch.arange(1.0, 3.0).unsqueeze(1)  # [2, 1]
        return scale * act.sum(-1) + obs.sum(-1)  # [2, B]


def expanded_pex(**overrides) -> PEX:
    torch.manual_seed(0)
    agent = PEX(PEXConfig(hidden=[16, 16], **overrides), SPEC, CPU)
    agent.on_phase(ONLINE)
    agent.critic = KnownCritic()
    return agent


@pytest.mark.parametrize("kappa", [0.0, 0.5])
def test_agent_selects_by_the_softmax_of_q_or_its_lcb(kappa):
    agent = expanded_pex(selection_penalty=kappa)
    obs = torch.randn(64, 3, generator=torch.Generator().manual_seed(1))
    acts = agent.candidates(obs, deterministic=True)  # [2, B, A]: pi_offline's mode, pi_new's mode
    assert torch.equal(acts[0], agent.pi_offline(obs, True)[0]) and torch.equal(acts[1], agent.pi_new(obs, True)[0])
    s = acts.sum(-1).T  # [B, K]
    q = torch.minimum(s, 2 * s) + obs.sum(-1, keepdim=True)  # min over the twin critics
    u = s.abs() / math.sqrt(2.0)  # unbiased std of {s, 2s}
    probs = agent.selection(obs, acts)
    assert torch.allclose(probs, torch.softmax(10.0 * (q - kappa * u), -1), atol=1e-6)
    if kappa == 0.0:  # the paper's rule exactly: 10 x min Q of the online critics
        assert torch.equal(probs, torch.softmax(10.0 * agent.critic(obs.repeat(2, 1), acts.reshape(128, 2))
                                                .min(0).values.view(2, 64).T, -1))
    else:  # the candidate with the larger u loses probability against the paper's rule
        paper = torch.softmax(10.0 * q, -1)
        shift = probs[:, 1] - paper[:, 1]
        mixed = (paper[:, 1] > 0.01) & (paper[:, 1] < 0.99)  # not saturated
        assert mixed.sum() > 5
        assert ((shift < 0) == (u[:, 1] > u[:, 0]))[mixed].all()
    # deterministic acting takes the argmax candidate
    chosen, w = agent.select(obs, deterministic=True)
    assert torch.equal(w, probs.argmax(-1)) and torch.equal(chosen, acts[w, torch.arange(64)])


def test_lcb_reads_the_dynamics_ensemble_in_env_units():
    """agent.uncertainty=ensemble_std: u comes from the run's dynamics ensemble (handed over by use_dynamics), at
    the states in env units although the critics see them normalized; without a world model, one clear error."""
    from agents.core.config import ConfigError
    from worldmodels.dynamics import DynamicsEnsemble
    from worldmodels.uncertainty import EnsembleStd

    agent = expanded_pex(selection_penalty=0.5, uncertainty="ensemble_std", normalize_obs=True)
    gen = torch.Generator().manual_seed(2)
    agent.normalizer.fit(3.0 + 2.0 * torch.randn(500, 3, generator=gen))  # far from the identity
    with pytest.raises(ConfigError, match="world_model=ensemble"):
        agent.use_dynamics(None)
    model = DynamicsEnsemble(3, 2, ensemble_size=3, num_elites=2, hidden=(16,), weight_decays=(0.0, 0.0))
    agent.use_dynamics(model)
    raw = 3.0 + 2.0 * torch.randn(64, 3, generator=gen)
    obs = agent.normalizer(raw)
    acts = agent.candidates(obs, deterministic=True)  # [2, B, A]
    s = acts.sum(-1).T  # [B, K]
    q = torch.minimum(s, 2 * s) + obs.sum(-1, keepdim=True)  # KnownCritic's min, at the normalized states
    u = EnsembleStd(model)(raw.repeat(2, 1), acts.reshape(128, 2)).view(2, 64).T  # [B, K], env units
    assert u.std() > 0
    assert torch.allclose(agent.selection(obs, acts), torch.softmax(10.0 * (q - 0.5 * u), -1), atol=1e-5)
    with pytest.raises(ConfigError, match="q_std"):
        PEX(PEXConfig(hidden=[16, 16], uncertainty="q_mean"), SPEC, CPU)


def test_sampled_choices_follow_the_selection_probabilities(monkeypatch):
    agent = expanded_pex()
    n = 20_000
    obs = torch.zeros(n, 3)
    acts = torch.stack([torch.full((n, 2), 0.05), torch.full((n, 2), 0.1)])  # sums 0.1 and 0.2
    monkeypatch.setattr(agent, "candidates", lambda o, deterministic=False: acts)
    torch.manual_seed(3)
    chosen, w = agent.select(obs)
    p_new = 1.0 / (1.0 + math.exp(-1.0))  # softmax(10 * [0.1, 0.2])[1]
    assert abs(w.float().mean().item() - p_new) < 0.015
    assert torch.equal(chosen, acts[w, torch.arange(n)])


def test_pi_offline_is_the_frozen_trained_actor_and_pi_new_learns():
    torch.manual_seed(0)
    agent = PEX(PEXConfig(hidden=[16, 16]), SPEC, CPU)
    batch = make_batch()
    trained(agent, batch, OFFLINE)
    actor = {k: v.clone() for k, v in agent.actor.state_dict().items()}
    pi_new = {k: v.clone() for k, v in agent.pi_new.state_dict().items()}
    assert agent.act(batch.obs, True).shape == (32, 2) and not agent.expanded  # offline: IQL's actor
    agent.on_phase(ONLINE)
    assert_same_state(agent.pi_offline.state_dict(), actor, "pi_offline")
    assert not any(p.requires_grad for p in agent.pi_offline.parameters())
    trained(agent, batch, ONLINE)
    assert_same_state(agent.pi_offline.state_dict(), actor, "pi_offline")  # frozen online
    assert_same_state(agent.actor.state_dict(), actor, "actor")  # the offline actor is not trained online
    assert not torch.equal(agent.pi_new.net[0].weight, pi_new["net.0.weight"])  # pi_new is
    # idempotent and resume-safe: the copy runs once, also across a checkpoint
    with torch.no_grad():
        agent.actor.net[0].weight.add_(1.0)
    agent.on_phase(ONLINE)
    assert_same_state(agent.pi_offline.state_dict(), actor, "pi_offline")
    resumed = PEX(PEXConfig(hidden=[16, 16]), SPEC, CPU)
    resumed.load_state_dict(agent.state_dict())
    resumed.on_phase(ONLINE)
    assert resumed.expanded
    assert_same_state(resumed.pi_offline.state_dict(), actor, "pi_offline")


def test_pex_offline_phase_is_iql():
    cfg = PEXConfig(hidden=[16, 16])
    batch = make_batch()
    torch.manual_seed(0)
    iql = trained(IQL(config_as(IQLConfig, cfg), SPEC, CPU), batch, OFFLINE)
    torch.manual_seed(0)
    pex = trained(PEX(cfg, SPEC, CPU), batch, OFFLINE)
    shared = {k: v for k, v in pex.items() if k in iql and k != "_extra_state"}
    assert set(iql) - {"_extra_state"} <= set(shared)
    assert_same_state({k: iql[k] for k in shared}, shared)


# --- APL: the online-offline replay ---------------------------------------------------------------
def store(n: int, source: str, capacity: int | None = None) -> TransitionStore:
    s = TransitionStore(capacity or n, 3, 2, source=source)
    rows = torch.arange(n, dtype=torch.float32)
    s.add(obs=rows.unsqueeze(1).expand(n, 3), act=torch.zeros(n, 2), rew=rows, next_obs=torch.zeros(n, 3),
          terminal=torch.zeros(n), truncated=torch.zeros(n))
    return s


def apl_sampler(n_online: int, capacity: int = 200):
    cfg = SamplerConfig(kind="apl", recent_size=20, recent_min=10, recent_prob=0.5)
    return make_sampler(cfg, Sources(store(60, "offline"), store(n_online, "online", capacity)))


def draws(sampler, progress, n=2000, size=16):
    torch.manual_seed(0)
    return [sampler.sample(size, progress) for _ in range(n)]


def test_apl_batches_come_whole_from_the_recent_window_half_the_time():
    sampler = apl_sampler(100)
    batches = draws(sampler, ONLINE)
    recent = [b for b in batches if (b.source == RECENT).any()]
    assert all((b.source == RECENT).all() for b in recent)  # never mixed
    assert abs(len(recent) / len(batches) - 0.5) < 0.04
    rows = torch.cat([b.index for b in recent])
    assert rows.min() == 80 and rows.max() == 99  # the last 20 online rows only, all of them drawn
    assert torch.equal(torch.cat([b.rew for b in recent]), rows.float())  # gathered from those rows
    main = torch.cat([b.source for b in batches if not (b.source == RECENT).any()])
    assert abs((main == 0).float().mean().item() - 60 / 160) < 0.02  # offline + online pooled by size
    for b in batches[:50]:  # W read from the batch: 0 on recent batches, 1 on main ones
        assert torch.equal(regulariser_weight(b), torch.full((16,), 0.0 if (b.source == RECENT).any() else 1.0))


def test_apl_recent_window_follows_the_ring_and_the_threshold():
    # the ring wrapped: capacity 50, 70 rows written, the last 20 are rows 50..69 at slots 0..19
    wrapped = apl_sampler(70, capacity=50)
    recent = torch.cat([b.rew for b in draws(wrapped, ONLINE, 400) if (b.source == RECENT).all()])
    assert recent.min() == 50 and recent.max() == 69
    # a window of 10 rows is not more than recent_min = 10: main buffer only; 11 rows: both, all online rows
    assert not any((b.source == RECENT).any() for b in draws(apl_sampler(10), ONLINE, 200))
    few = [b for b in draws(apl_sampler(11), ONLINE, 400) if (b.source == RECENT).all()]
    assert 150 < len(few) < 250 and torch.cat([b.index for b in few]).unique().tolist() == list(range(11))
    # the offline phase draws offline rows with W = 1
    assert all((b.source == 0).all() and (regulariser_weight(b) == 1).all() for b in draws(apl_sampler(100),
                                                                                          OFFLINE, 50))


@pytest.mark.parametrize("progress", [OFFLINE, ONLINE])
def test_apl_with_w_one_makes_exactly_the_td3bc_update(progress):
    cfg = APLConfig(hidden=[16, 16], policy_delay=1)
    main_batch = make_batch(source=SOURCE_IDS["online"])
    torch.manual_seed(0)
    td3bc = trained(TD3BC(config_as(TD3BCConfig, cfg), SPEC, CPU), main_batch, progress)
    torch.manual_seed(0)
    apl = trained(APL(cfg, SPEC, CPU), main_batch, progress)
    assert_same_state(td3bc, apl)
    # the control: recent rows (W = 0) drop the BC term and change the actor's update
    torch.manual_seed(0)
    gated = trained(APL(cfg, SPEC, CPU), make_batch(source=RECENT), progress)
    assert not torch.equal(gated["actor.net.0.weight"], td3bc["actor.net.0.weight"])


def test_gcql_penalty_is_gated_per_row():
    q_ood = torch.tensor([[[0.0, 1.0, 2.0], [3.0, 3.0, 3.0]]])  # [N=1, B=2, M=3]
    q_data = torch.tensor([[1.0, -1.0]])
    full, _ = cql_penalty(q_ood, q_data)
    assert torch.equal(cql_penalty(q_ood, q_data, weight=torch.ones(2))[0], full)
    row0 = math.log(1 + math.e + math.e**2) - 1.0
    assert cql_penalty(q_ood, q_data, weight=torch.tensor([1.0, 0.0]))[0].tolist() == pytest.approx([row0 / 2])
    torch.manual_seed(0)
    agent = APLCQL(APLCQLConfig(hidden=[16, 16], n_actions=2), SPEC, CPU)
    assert agent.critic(make_batch().obs, make_batch().act).shape == (5, 32)
    recent, main = make_batch(source=RECENT), make_batch(source=SOURCE_IDS["online"])
    assert agent.critic_loss(recent, recent.obs, recent.next_obs, ONLINE)[1]["loss/cql"] == 0
    assert agent.critic_loss(main, main.obs, main.next_obs, ONLINE)[1]["loss/cql"] != 0


def test_apl_variant_argument_picks_the_entry(monkeypatch, capsys):
    """`python -m agents.apl variant=cql` runs GCQL (agents.apl_cql), `variant=td3bc` or none GTD3BC; the argument
    never reaches hydra (no such config key), and a wrong or swept value is one error line, exit status 2."""
    import sys

    import agents.apl as apl_module
    import agents.core.entry as entry

    assert apl_module.entry_for(["seed=1", "variant=cql"]) == ("apl_cql", ["seed=1"])
    assert apl_module.entry_for(["variant=td3bc", "seed=1"]) == ("apl", ["seed=1"])
    assert apl_module.entry_for(["seed=1"]) == ("apl", ["seed=1"])
    ran = []
    monkeypatch.setattr(entry, "run", lambda cls, cfg_cls, name: ran.append((cls, name, list(sys.argv[1:]))))
    monkeypatch.setattr(sys, "argv", ["agents.apl", "variant=cql", "experiment=smoke"])
    apl_module.main()
    assert ran == [(APLCQL, "apl_cql", ["experiment=smoke"])]
    for bad in (["variant=sac"], ["-m", "variant=cql,td3bc"], ["variant=cql", "variant=td3bc"]):
        monkeypatch.setattr(sys, "argv", ["agents.apl", *bad])
        with pytest.raises(SystemExit) as exit_:
            apl_module.main()
        assert exit_.value.code == 2
        assert capsys.readouterr().err.count("\n") == 1
    assert len(ran) == 1
