"""The agent contract the trainer relies on.

An agent owns its networks, optimizers, schedulers and losses. The trainer owns data,
environments, phases, batch composition (worldmodels/data/samplers.py), logging and
checkpoints, and calls these methods, always handing progress over as a value:

    act(obs, deterministic)          -> actions [B, act_dim] in env units
    update(batch, progress)          -> dict of scalar tensors (read by the trainer every N steps);
                                        an optional "priority" [B] is written back by a priority sampler
    transition_fields()              -> per-transition fields every store must fill (Cal-QL's return-to-go)
    on_offline_start(offline)        -> once, on a fresh start, with the offline store (observation statistics)
    on_phase(progress)               -> at the start of each phase, on a fresh start AND on resume: idempotent
    on_episode_end(episode, progress)-> after every online episode (return, normalized return, length, rows)
    use_dynamics(model)              -> once, when the run is built: the world model's dynamics ensemble, or
                                        None without one, for agents that read its uncertainty (PEX's LCB)

Every module, optimizer and scheduler an agent will ever use exists from `__init__`, so
`load_state_dict` restores any phase exactly; `state_dict()` includes optimizer and scheduler
states and counters (through nn.Module extra state).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from worldmodels.data.fields import TransitionField
from worldmodels.data.store import Batch, TransitionStore
from worldmodels.progress import EpisodeEnd, Progress

if TYPE_CHECKING:
    from worldmodels.dynamics import DynamicsEnsemble


@dataclass(frozen=True)
class EnvSpec:
    obs_dim: int
    act_dim: int
    act_low: Tensor  # [act_dim]
    act_high: Tensor  # [act_dim]
    env_id: str = ""  # the task, for per-task defaults (REDQ's target entropy); "" when there is none

    @property
    def act_scale(self) -> Tensor:
        return (self.act_high - self.act_low) / 2

    @property
    def act_bias(self) -> Tensor:
        return (self.act_high + self.act_low) / 2


def update_autocast(device: torch.device, precision: str) -> torch.autocast:
    """The context an agent update runs in (`trainer.precision`): a bf16 autocast for "bfloat16", so the hidden
    layers' matmuls run in bf16 while parameters, optimizer steps and network outputs stay float32
    (worldmodels.ensemble.Float32Output); disabled, and so exactly float32, for "float32"."""
    return torch.autocast(device.type, torch.bfloat16, enabled=precision == "bfloat16")


class Agent(nn.Module):
    def __init__(self, cfg, spec: EnvSpec, device: torch.device):
        super().__init__()
        self.cfg, self.spec, self.device = cfg, spec, device
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
        self.generators: dict[str, torch.Generator] = {}  # named random streams (new_generator)
        self.num_updates = 0

    # --- the contract -------------------------------------------------------------
    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        raise NotImplementedError

    def update(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        raise NotImplementedError

    def transition_fields(self) -> list[TransitionField]:
        return []

    def on_offline_start(self, offline: TransitionStore) -> None:
        """Fit the observation normalizer to the dataset when the agent has one and its config
        asks for it (TD3+BC's state normalization, Fujimoto & Gu 2021)."""
        normalizer = getattr(self, "normalizer", None)
        if normalizer is not None and getattr(self.cfg, "normalize_obs", False):
            normalizer.fit(offline.data["obs"][: len(offline)])

    def on_phase(self, progress: Progress) -> None:
        pass

    def on_episode_end(self, episode: EpisodeEnd, progress: Progress) -> None:
        pass

    def use_dynamics(self, model: DynamicsEnsemble | None) -> None:
        """The run's dynamics ensemble (None when no world model is on). The trainer fits, refits and
        checkpoints it in place; an agent may only read it (u(obs, act) through worldmodels/uncertainty.py)."""

    # --- helpers for subclasses --------------------------------------------------
    def step(self, name: str, loss: Tensor) -> None:
        """One optimizer step of `self.optimizers[name]` on `loss`."""
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def step_together(self, losses: dict[str, Tensor]) -> None:
        """One step of each named optimizer on its loss, from a single backward pass over the losses' sum.

        The same update, bit for bit, as `step` on each loss in turn, provided that no loss reaches another
        optimizer's parameters and every loss was computed before any step (none reads a network a step has
        changed): each parameter then gets its own loss's gradient alone, seeded with 1 as `loss.backward()`
        seeds it. One autograd traversal instead of one per loss (IQL's three: about 7% more updates per
        second on 2 CPU threads). An agent whose losses do not meet both conditions keeps `step`."""
        optimizers = [self.optimizers[name] for name in losses]
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        total, *rest = losses.values()
        for loss in rest:
            total = total + loss
        total.backward()
        for opt in optimizers:
            opt.step()

    def new_generator(self, name: str) -> torch.Generator:
        """A random stream of the agent's own on its device (REDQ's subset draws), so that its draws never
        shift the global stream the actor's noise comes from. Seeded from the run's seed (the k-th stream
        with initial_seed + k), checkpointed with the agent; create it in __init__."""
        if name in self.generators:
            raise ValueError(f"the agent already has a generator named {name!r}")
        generator = torch.Generator(device=self.device)
        generator.manual_seed(torch.initial_seed() + 1 + len(self.generators))
        self.generators[name] = generator
        return generator

    def random_action(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand((n, self.spec.act_dim), device=self.device, generator=generator)
        return self.spec.act_low.to(self.device) + u * (self.spec.act_high - self.spec.act_low).to(self.device)

    # --- checkpointing: optimizers and counters ride along in the module's state dict
    def get_extra_state(self) -> dict:
        return {
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
            "schedulers": {k: sched.state_dict() for k, sched in self.schedulers.items()},
            "generators": {k: g.get_state() for k, g in self.generators.items()},
            "num_updates": self.num_updates,
            "agent": self.extra_state(),
        }

    def set_extra_state(self, state: dict) -> None:
        for k, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][k])
        for k, sched in self.schedulers.items():
            sched.load_state_dict(state["schedulers"][k])
        for k, g in self.generators.items():
            g.set_state(state["generators"][k].cpu())  # get_state is a CPU byte tensor on every device
        self.num_updates = state["num_updates"]
        self.load_extra_state(state["agent"])

    def extra_state(self) -> dict:
        """Plain-python state beyond parameters (schedules, controllers); override as needed."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass
