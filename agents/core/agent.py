"""The agent contract the trainer relies on.

An agent owns its networks, optimizers and losses. The trainer owns data, environments,
phases, logging and checkpoints, and calls these methods:

    act(obs, deterministic)      -> actions [B, act_dim] in env units
    update(batch)                -> dict of scalar tensors (read by the trainer every N steps)
    on_offline_start(offline)    -> once, with the offline store (e.g. observation statistics)
    on_online_start(trainer)     -> once, before the first env step
    on_episode_end(ret, length)  -> after every online episode (AdaptiveBC's controller, ...)
    make_online_sampler(...)     -> how online-phase batches are drawn (default: fixed mixture)

`state_dict()` includes optimizer states and counters (through nn.Module extra state), so
one dict restores the agent exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from worldmodels.data.samplers import MixtureSampler, Sampler, UniformSampler
from worldmodels.data.store import Batch, TransitionStore


@dataclass(frozen=True)
class EnvSpec:
    obs_dim: int
    act_dim: int
    act_low: Tensor  # [act_dim]
    act_high: Tensor  # [act_dim]

    @property
    def act_scale(self) -> Tensor:
        return (self.act_high - self.act_low) / 2

    @property
    def act_bias(self) -> Tensor:
        return (self.act_high + self.act_low) / 2


class Agent(nn.Module):
    #: False for purely online agents (TD3, SAC): the trainer skips the offline phase and
    #: never mixes offline data into their batches.
    uses_offline_data: bool = True

    def __init__(self, cfg, spec: EnvSpec, device: torch.device):
        super().__init__()
        self.cfg, self.spec, self.device = cfg, spec, device
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.num_updates = 0

    # --- the contract -------------------------------------------------------------
    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        raise NotImplementedError

    def update(self, batch: Batch) -> dict[str, Tensor]:
        raise NotImplementedError

    def on_offline_start(self, offline: TransitionStore) -> None:
        pass

    def on_online_start(self, trainer) -> None:
        pass

    def on_episode_end(self, episode_return: float, episode_length: int) -> None:
        pass

    def make_online_sampler(
        self, offline: TransitionStore | None, online: TransitionStore, offline_share: float
    ) -> Sampler:
        """Online-phase batches: a fixed offline/online mixture (offline_share 0 drops offline)."""
        if offline is None or offline_share <= 0 or not self.uses_offline_data:
            return UniformSampler(online)
        return MixtureSampler(
            {"offline": UniformSampler(offline), "online": UniformSampler(online)},
            {"offline": offline_share, "online": 1.0 - offline_share},
        )

    def model_fit_weights(self, num_offline: int, num_online: int) -> Tensor | None:
        """Per-transition weights (offline rows first) for refitting the world model online;
        None = uniform. MOORe weights offline data by its decaying priority."""
        return None

    # --- helpers for subclasses --------------------------------------------------
    def random_action(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand((n, self.spec.act_dim), device=self.device, generator=generator)
        return self.spec.act_low.to(self.device) + u * (self.spec.act_high - self.spec.act_low).to(self.device)

    # --- checkpointing: optimizers and counters ride along in the module's state dict
    def get_extra_state(self) -> dict:
        return {
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
            "num_updates": self.num_updates,
            "agent": self.extra_state(),
        }

    def set_extra_state(self, state: dict) -> None:
        for k, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][k])
        self.num_updates = state["num_updates"]
        self.load_extra_state(state["agent"])

    def extra_state(self) -> dict:
        """Plain-python state beyond parameters (schedules, controllers); override as needed."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass
