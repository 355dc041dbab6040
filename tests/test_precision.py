"""`trainer.precision=bfloat16` (bf16 matmuls in the hidden layers of every update, float32 outputs) and
`keep_freed_memory` (glibc keeps freed blocks, worldmodels/memory.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from torch import nn

from agents.core.agent import EnvSpec, update_autocast
from agents.core.config import ConfigError, RunConfig, TrainerConfig, check_run_config
from agents.core.entry import offline_store
from agents.core.networks import (
    CriticEnsemble,
    DeterministicActor,
    EnsembleTanhGaussianActor,
    GaussianActor,
    TanhGaussianActor,
    ValueEnsemble,
    mlp,
)
from agents.core.trainer import Trainer, seed_everything
from agents.cql import CQL, CQLConfig
from worldmodels.data.minari_load import load_offline_dataset
from worldmodels.ensemble import Float32EnsembleLinear, Float32Output
from worldmodels.envs import box_bounds
from worldmodels.memory import keep_freed_memory

CPU = torch.device("cpu")
OBS, ACT = 5, 3


def bf16(fn):
    with update_autocast(CPU, "bfloat16"):
        return fn()


def networks() -> dict[str, tuple[nn.Module, callable]]:
    """Every network family an agent builds, with a call that returns its outputs (one tuple)."""
    torch.manual_seed(0)
    scale, bias = torch.ones(ACT), torch.zeros(ACT)
    obs, act = torch.randn(64, OBS), torch.rand(64, ACT) * 2 - 1
    critic, value = CriticEnsemble(OBS, ACT, 4, [32, 32]), ValueEnsemble(OBS, 3, [32, 32])
    squashed, gaussian = TanhGaussianActor(OBS, ACT, scale, bias, [32, 32]), GaussianActor(OBS, ACT, scale, bias, [32])
    deterministic, ensemble = DeterministicActor(OBS, ACT, scale, bias, [32]), EnsembleTanhGaussianActor(
        OBS, ACT, scale, bias, [32, 32], ensemble_size=3)
    return {
        "critic": (critic, lambda: (critic(obs, act),)),
        "critic_subset": (critic, lambda: (critic(obs, act, members=torch.tensor([2, 0])),)),
        "value": (value, lambda: (value(obs),)),
        "tanh_gaussian": (squashed, lambda: (squashed.distribution(obs).loc, squashed.distribution(obs).scale)),
        "gaussian": (gaussian, lambda: (gaussian.distribution(obs).loc,)),
        "deterministic": (deterministic, lambda: (deterministic(obs),)),
        "ensemble_actor": (ensemble, lambda: ensemble.moments(obs)),
    }


@pytest.mark.parametrize("name", list(networks()))
def test_outputs_stay_float32_and_close_under_bf16(name):
    """Under the bf16 autocast every network's output is float32 (a bf16 Q of 100 would be a multiple of 0.5)
    and within bf16 rounding of the float32 result, while the hidden matmuls really ran in bf16 (the outputs
    are not bitwise the float32 ones)."""
    net, call = networks()[name]
    exact = call()
    mixed = bf16(call)
    for e, m in zip(exact, mixed, strict=True):
        assert m.dtype == torch.float32
        assert not torch.equal(e, m), "the autocast changed nothing: the hidden layers did not run in bf16"
        torch.testing.assert_close(m, e, rtol=3e-2, atol=3e-2)


def test_gradients_reach_every_parameter_in_float32_under_bf16():
    critic = CriticEnsemble(OBS, ACT, 2, [32, 32])
    q = bf16(lambda: critic(torch.randn(16, OBS), torch.randn(16, ACT)))
    q.square().mean().backward()
    for name, p in critic.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("members", [None, torch.tensor([2, 0])])
def test_scalar_head_matches_autograd_of_the_float32_matvec(members):
    """A one-output ensemble head on bf16 activations (_ScalarHead) computes what autograd computes through the
    generic Float32Output path in a training step, bitwise, and is within bf16 rounding of a float32 backward
    (in norm: a single weight-gradient entry can lose more where its terms cancel, as any bf16 layer's can)."""
    torch.manual_seed(0)
    head = Float32EnsembleLinear(32, 1, 3)
    x = torch.randn(3 if members is None else 2, 50, 32).relu().bfloat16()
    grad_q = torch.randn(x.shape[0], 50, 1)

    def run(generic: bool, backward_in_autocast: bool):
        head.zero_grad()
        xi = x.clone().requires_grad_()
        with update_autocast(CPU, "bfloat16"):
            q = Float32Output.forward(head, xi, members) if generic else head(xi, members)
            if backward_in_autocast:  # as in an update: Agent.step runs backward inside the trainer's autocast
                q.backward(grad_q)
        if not backward_in_autocast:
            q.backward(grad_q)
        return q, xi.grad, head.weight.grad.clone(), head.bias.grad.clone()

    # inside the autocast (training), autograd's backward of the generic path runs its matmuls in bf16 too:
    # the same numbers, bitwise, only without the slow K = 1 outer-product matmul
    fast, generic = run(False, True), run(True, True)
    assert fast[0].dtype == torch.float32 and fast[1].dtype == torch.bfloat16
    for f, g in zip(fast, generic, strict=True):
        assert torch.equal(f, g)
    # against a float32 backward: within bf16 rounding of the gradient, ~2^-8 of its size
    exact = run(True, False)
    for f, g in zip(fast[1:], exact[1:], strict=True):
        assert (f.float() - g.float()).norm() < 1e-2 * g.float().norm()
    if members is not None:  # the member left out gets no gradient
        assert head.weight.grad[1].abs().sum() == 0


def test_float32_outside_autocast_is_exactly_the_plain_layers():
    """Float32Linear/Float32EnsembleLinear are the plain layers when no autocast is on: same state-dict keys
    (old checkpoints load), bitwise the same outputs."""
    torch.manual_seed(0)
    net = mlp(OBS, 2, [8])
    plain = nn.Sequential(nn.Linear(OBS, 8), nn.ReLU(), nn.Linear(8, 2))
    plain.load_state_dict(net.state_dict())
    assert list(plain.state_dict()) == list(net.state_dict())
    x = torch.randn(10, OBS)
    assert torch.equal(net(x), plain(x))
    critic = CriticEnsemble(OBS, ACT, 2, [8])
    obs, act = torch.randn(10, OBS), torch.randn(10, ACT)
    h = torch.relu(torch.baddbmm(critic.hidden[0].bias, torch.cat([obs, act], -1).expand(2, 10, -1),
                                 critic.hidden[0].weight))
    by_hand = torch.baddbmm(critic.head.bias, h, critic.head.weight).squeeze(-1)
    assert torch.equal(critic(obs, act), by_hand)


def test_bad_precision_is_one_config_error():
    cfg = RunConfig(trainer=TrainerConfig(precision="float16"))
    with pytest.raises(ConfigError, match=r"trainer\.precision='float16': choose float32 or bfloat16"):
        check_run_config(cfg)


class RecordingCQL(CQL):
    """CQL that notes whether each update ran under a bf16 autocast."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.autocast_seen: list[bool] = []

    def update(self, batch, progress):
        self.autocast_seen.append(torch.is_autocast_enabled("cpu") and
                                  torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return super().update(batch, progress)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_trainer_runs_every_update_in_the_configured_precision(tmp_path, tiny_dataset_id, precision):
    dataset = load_offline_dataset(tiny_dataset_id)
    env = gym.make("HalfCheetah-v5", max_episode_steps=20)
    low, high = box_bounds(env)
    spec = EnvSpec(env.observation_space.shape[0], env.action_space.shape[0], low, high)
    env.close()
    seed_everything(0)
    agent = RecordingCQL(CQLConfig(hidden=[32, 32], n_actions=4), spec, CPU)
    cfg = TrainerConfig(offline_updates=6, online_steps=6, eval_every=6, eval_episodes=1, log_every=3,
                        checkpoint_every=6, batch_size=32, progress=False, precision=precision)
    trainer = Trainer(agent, cfg, lambda: gym.make("HalfCheetah-v5", max_episode_steps=20),
                      offline_store(dataset, CPU), tmp_path, tensorboard=False)
    summary = trainer.run()
    assert agent.autocast_seen == [precision == "bfloat16"] * 12  # 6 offline + 6 online updates
    assert not torch.is_autocast_enabled("cpu")  # acting and evaluation after the run: float32
    assert all(torch.isfinite(p).all() for p in agent.parameters())
    assert summary["updates"] == 12


PAGE_FAULTS = textwrap.dedent("""
    import resource, sys, torch
    from worldmodels.memory import keep_freed_memory
    took = keep_freed_memory() if sys.argv[1] == "keep" else False
    w = torch.randn(256, 256)

    def forward():  # a critic's activations over many rows: 32 MiB each, made and freed every update
        h = torch.ones(2, 16384, 256)
        for _ in range(3):
            h = torch.relu(h @ w)
        return h.sum()

    for _ in range(3):
        forward()  # the heap grows to the working set once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        forward()
    print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_keep_freed_memory_stops_big_activations_page_faulting_every_update():
    """With glibc's defaults every 32 MiB activation is a fresh mmap (8k page faults each, every update);
    kept, the freed blocks are reused once the heap has grown to the working set."""
    def faults(mode: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", PAGE_FAULTS, mode], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parents[1]).stdout.split()
        return out[0], int(out[1])

    took, kept = faults("keep")
    _, default = faults("default")
    assert took == "True"
    assert default > 10 * 8000, f"the default allocator faulted only {default} times: the test sees nothing"
    assert kept < default / 100, (kept, default)


def test_keep_freed_memory_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("O2O_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory() is False


def test_a_bad_keep_freed_memory_setting_is_refused(monkeypatch):
    monkeypatch.setenv("O2O_KEEP_FREED_MEMORY", "off")
    with pytest.raises(ValueError, match="O2O_KEEP_FREED_MEMORY='off': set it to 0"):
        keep_freed_memory()
