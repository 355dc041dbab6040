"""benchmarks/throughput.py: the online phase runs the agent's own sampler after the switch, and
--flops counts the update's arithmetic."""

from __future__ import annotations

import torch

from benchmarks.throughput import count_update_flops, measure

CPU = torch.device("cpu")


def test_online_phase_uses_the_agents_sampler_and_counts_flops():
    upq = measure("upq", 0.01, CPU, batch_size=32, hidden=[8], flops=True, phase="online")
    assert (upq["phase"], upq["sampler"]) == ("online", "balanced")  # configs/upq.yaml: Off2On's balanced replay
    assert upq["updates"] >= 50 and upq["gflop_per_update"] > 0
    offline = measure("upq", 0.01, CPU, batch_size=32, hidden=[8], flops=True)
    assert (offline["phase"], offline["sampler"]) == ("offline", "uniform")
    # offline UPQ is Off2On's CQL; online it is SAC on the mixture plus the density-ratio step of the
    # balanced sampler (its own 256-wide net, so here the larger part): another amount of arithmetic
    assert offline["gflop_per_update"] > 0 and offline["gflop_per_update"] != upq["gflop_per_update"]


def test_flop_count_grows_with_the_batch():
    class Linear:  # an "agent" whose update is one [B, 4] @ [4, 3] matmul: 2 * B * 4 * 3 FLOPs
        w = torch.randn(4, 3)

        def update(self, batch, progress):
            batch @ self.w
            return {}

    class Sampler:
        def __init__(self, rows):
            self.rows = rows

        def sample(self, n, progress):
            return torch.randn(self.rows, 4)

        def after_update(self, batch, info):
            pass

    assert count_update_flops(Linear(), Sampler(10), None, 10, updates=3) == 2 * 10 * 4 * 3
    assert count_update_flops(Linear(), Sampler(20), None, 20, updates=3) == 2 * 20 * 4 * 3


def test_set_changes_the_timed_agents_config_and_refuses_unknown_fields():
    """--set FIELD=VALUE sets the timed agent's config field (YAML-parsed) and says so in the figure's line; a
    field the config lacks is one error naming the fields there are."""
    import pytest

    from benchmarks.throughput import AGENTS, set_fields

    plain = measure("sac", 0.01, CPU, batch_size=32, hidden=[8])
    normed = measure("sac", 0.01, CPU, batch_size=32, hidden=[8], settings=["critic_layer_norm=true"])
    assert normed["set"] == {"critic_layer_norm": True} and "set" not in plain
    cfg = AGENTS["sac"][1]()
    assert set_fields(cfg, ["hidden=[64, 64]", "pessimism_beta=0.01"]) == {"hidden": [64, 64], "pessimism_beta": 0.01}
    assert cfg.hidden == [64, 64] and cfg.pessimism_beta == 0.01
    with pytest.raises(ValueError, match="critic_layer_norm"):
        set_fields(cfg, ["critic_layer_norms=true"])
