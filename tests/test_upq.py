"""UPQ (Off2On + beta * std over the critics inside the online target) and `agent.pessimism_beta` on any
SAC-family critic ensemble: beta 0 is the unpenalized update bitwise (UPQ == Off2On, SAC and REDQ == their
pre-penalty targets), beta > 0 lowers the target by beta * std on hand cases, and U is the
`QEnsembleStd` estimator that the calibration code builds with make_uncertainty("q_std", ...)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import FixedActor, FixedCritics

from agents.core.agent import EnvSpec
from agents.core.config import ConfigError
from agents.core.networks import random_subset
from agents.cql import CQL, CQLConfig
from agents.off2on import Off2On, Off2OnConfig
from agents.redq import REDQ, REDQConfig
from agents.sac import SAC, SACConfig
from agents.upq import UPQ, UPQConfig
from worldmodels.data.store import Batch
from worldmodels.progress import Progress
from worldmodels.uncertainty import QEnsembleStd, make_uncertainty

SPEC = EnvSpec(3, 2, -torch.ones(2), torch.ones(2))
CPU = torch.device("cpu")
OFFLINE = Progress("offline", 0, 0, 0, 10, 10)
ONLINE = Progress("online", 10, 5, 10, 10, 10)


def batch_of(b: int, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(b, 3, generator=g), torch.rand(b, 2, generator=g) * 2 - 1, torch.randn(b, generator=g),
                 torch.randn(b, 3, generator=g), (torch.rand(b, generator=g) < 0.2).float(), torch.zeros(b))


def run_updates(agent, phases) -> list[dict]:
    infos = []
    for k, progress in enumerate(phases):
        torch.manual_seed(10 + k)  # the same draws (CQL sets, actions) for both agents
        infos.append(agent.update(batch_of(16, seed=k), progress))
    return infos


def assert_equal_state(x, y, path="") -> None:
    """Bitwise equality of two (nested) state dicts: weights, optimizer moments, extra state."""
    if isinstance(x, dict):
        assert x.keys() == y.keys(), path
        for k in x:
            assert_equal_state(x[k], y[k], f"{path}/{k}")
    elif isinstance(x, list | tuple):
        assert len(x) == len(y), path
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            assert_equal_state(u, v, f"{path}/{i}")
    elif isinstance(x, torch.Tensor):
        assert torch.equal(x, y), path
    else:
        assert x == y, path


def assert_same(a, b, infos_a, infos_b) -> None:
    assert_equal_state(a.state_dict(), b.state_dict())
    for ia, ib in zip(infos_a, infos_b, strict=True):
        assert ia.keys() == ib.keys() and all(torch.equal(ia[k], ib[k]) for k in ia)


def pair(cls_a, cfg_a, cls_b, cfg_b):
    torch.manual_seed(0)
    a = cls_a(cfg_a, SPEC, CPU)
    torch.manual_seed(0)
    return a, cls_b(cfg_b, SPEC, CPU)


# --- UPQ ---------------------------------------------------------------------------------------
def test_upq_with_beta_0_is_off2on_bitwise_offline_and_online():
    small = {"hidden": [16], "ensemble_size": 3, "n_actions": 2}
    off2on, upq = pair(Off2On, Off2OnConfig(**small), UPQ, UPQConfig(pessimism_beta=0.0, **small))
    phases = [OFFLINE, OFFLINE, ONLINE, ONLINE]
    assert_same(off2on, upq, run_updates(off2on, phases), run_updates(upq, phases))


def test_upq_penalizes_online_only():
    """The penalty is the online (SAC) target's: offline UPQ is Off2On's CQL even with beta > 0."""
    small = {"hidden": [16], "ensemble_size": 3, "n_actions": 2}
    off2on, upq = pair(Off2On, Off2OnConfig(**small), UPQ, UPQConfig(pessimism_beta=0.1, **small))
    assert_same(off2on, upq, run_updates(off2on, [OFFLINE]), run_updates(upq, [OFFLINE]))
    torch.manual_seed(1)
    online_off2on = off2on.update(batch_of(16, seed=5), ONLINE)
    torch.manual_seed(1)
    online_upq = upq.update(batch_of(16, seed=5), ONLINE)
    assert online_upq["loss/td"] != online_off2on["loss/td"]


def test_upq_target_on_a_hand_case():
    """E = 2 members, critics [1, 3 | 2, 6]: member mins [1, 2]; std over the four = sqrt(14 / 3)
    (mean 3, squares 4 + 0 + 1 + 9 over n - 1 = 3); online alpha 1, log pi -2, beta 0.1."""
    torch.manual_seed(0)
    upq = UPQ(UPQConfig(hidden=[8], ensemble_size=2, pessimism_beta=0.1), SPEC, CPU)
    upq.critic_target, upq.actor = FixedCritics([1.0, 3.0, 2.0, 6.0]), FixedActor(2)
    batch = batch_of(4)
    value = upq.target_value(batch, batch.next_obs, ONLINE)  # [E, B]
    expected = torch.tensor([1.0, 2.0])[:, None] + 2.0 - 0.1 * math.sqrt(14 / 3)
    assert value.shape == (2, 4)
    assert torch.allclose(value, expected.expand(2, 4))


def test_q_uncertainty_is_the_calibration_codes_estimator():
    """U is worldmodels/uncertainty.py's QEnsembleStd over the target critics: what make_uncertainty("q_std")
    builds for the calibration code, the unbiased std over the [N, B] Q values."""
    torch.manual_seed(0)
    for agent in (UPQ(UPQConfig(hidden=[8], ensemble_size=2), SPEC, CPU),
                  REDQ(REDQConfig(hidden=[8], pessimism_beta=0.01), SPEC, CPU)):
        assert type(agent.q_uncertainty) is QEnsembleStd and agent.q_uncertainty.critic is agent.critic_target
        batch = batch_of(5)
        u = agent.q_uncertainty(batch.obs, batch.act)
        assert torch.equal(u, make_uncertainty("q_std", agent.critic_target)(batch.obs, batch.act))
        assert torch.allclose(u, agent.critic_target(batch.obs, batch.act).std(0))


# --- agent.pessimism_beta on SAC and REDQ --------------------------------------------------------
class OldSAC(SAC):
    """SAC's target before the pessimism config, written out."""

    def target_value(self, batch, next_obs):
        next_act, next_log_prob = self.actor(next_obs)
        return self.critic_target(next_obs, next_act).min(0).values - self.alpha * next_log_prob


class OldREDQ(REDQ):
    def target_value(self, batch, next_obs):
        next_act, next_log_prob = self.actor(next_obs)
        next_q = self.critic_target(next_obs, next_act)  # all N run; the new target runs only the M drawn
        subset = random_subset(self.cfg.num_critics, self.cfg.num_min, self.subset_rng)
        return next_q.index_select(0, subset).min(0).values - self.alpha * next_log_prob


@pytest.mark.parametrize("cls, old, cfg_cls", [(SAC, OldSAC, SACConfig), (REDQ, OldREDQ, REDQConfig)])
def test_pessimism_beta_0_is_the_unpenalized_update_bitwise(cls, old, cfg_cls):
    cfg = cfg_cls(hidden=[16], pessimism_beta=0.0)
    new, ref = pair(cls, cfg, old, cfg)
    phases = [ONLINE] * 3
    assert_same(new, ref, run_updates(new, phases), run_updates(ref, phases))
    # and beta > 0 takes another path
    penalized, ref = pair(cls, cfg_cls(hidden=[16], pessimism_beta=0.1), old, cfg)
    a, b = run_updates(penalized, [ONLINE]), run_updates(ref, [ONLINE])
    assert a[0]["loss/critic"] != b[0]["loss/critic"]


def test_redq_with_10_critics_lowers_its_target_by_beta_std():
    """Critics answer 0, 1, ..., 9: unbiased std sqrt(82.5 / 9); the subset min is the same draw in both."""
    values = [float(i) for i in range(10)]
    beta = 0.05
    plain, penalized = pair(REDQ, REDQConfig(hidden=[8]), REDQ, REDQConfig(hidden=[8], pessimism_beta=beta))
    for agent in (plain, penalized):
        agent.critic_target, agent.actor = FixedCritics(values), FixedActor(2)
    batch = batch_of(6)
    state = plain.subset_rng.get_state()
    assert torch.equal(state, penalized.subset_rng.get_state())
    lowered = plain.target_value(batch, batch.next_obs) - penalized.target_value(batch, batch.next_obs)
    assert torch.allclose(lowered, torch.full((6,), beta * math.sqrt(82.5 / 9)))
    # by hand: the same subset's min, + 2 (alpha 1, log pi -2), - beta std
    penalized.subset_rng.set_state(state)
    g = torch.Generator()
    g.set_state(state)
    expected = torch.tensor(values)[random_subset(10, 2, g)].min() + 2.0 - beta * math.sqrt(82.5 / 9)
    assert torch.allclose(penalized.target_value(batch, batch.next_obs), expected)


def test_pessimism_config_errors():
    with pytest.raises(ConfigError, match="pessimism_beta"):
        SAC(SACConfig(hidden=[8], num_critics=1, pessimism_beta=0.1), SPEC, CPU)
    with pytest.raises(ConfigError, match="pessimism_beta"):
        SAC(SACConfig(hidden=[8], pessimism_beta=-0.1), SPEC, CPU)
    with pytest.raises(ConfigError, match="pessimism_beta"):  # CQL's target would ignore it
        CQL(CQLConfig(hidden=[8], pessimism_beta=0.1), SPEC, CPU)
    with pytest.raises(ConfigError, match="agents.upq"):  # Off2On's too: UPQ is Off2On with it
        Off2On(Off2OnConfig(hidden=[8], pessimism_beta=0.1), SPEC, CPU)
    with pytest.raises(ConfigError, match="pessimism_beta"):
        UPQ(UPQConfig(hidden=[8], pessimism_beta=-1.0), SPEC, CPU)
