"""MOPO: Yu et al., "MOPO: Model-based Offline Policy Optimization", NeurIPS 2020.

SAC on batches that are `rollout.real_ratio` real and the rest imagined: a probabilistic
dynamics ensemble (7 members, 5 elites) is fitted on the offline data, and every
`rollout.every` updates the policy rolls it out for h steps from `rollout.num_starts` dataset
states with the penalized reward r - lambda u(s, a), u = max over members of ||std|| (MOPO's
aleatoric penalty). All of that is the world model's job (worldmodels/world.py); MOPO itself
is SAC that learns from offline data. Per-dataset (h, lambda) from the paper: configs/rollout/.

    python -m agents.mopo                                  # HalfCheetah medium-replay: h 5, lambda 0.5
    python -m agents.mopo dataset=hopper-medium rollout=hopper-medium
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from agents.core.agent import EnvSpec
from agents.core.config import ConfigError
from agents.core.networks import cosine_lr, set_lr
from agents.sac import SAC, SACConfig
from worldmodels.data.store import SOURCE_IDS, Batch
from worldmodels.progress import Progress


@dataclass
class MOPOConfig(SACConfig):
    name: str = "mopo"
    # SAC as in the common MOPO reference (OfflineRL-Kit's run_mopo): 256x2, critic lr 3e-4, auto-alpha from 1,
    # but a slower actor and temperature.
    actor_lr: float = 1e-4
    alpha_lr: float = 1e-4
    # constant | cosine: OfflineRL-Kit's run_mopo anneals the actor lr to 0 over the offline phase (CosineAnnealingLR
    # stepped per 1000-update epoch; here per update). That reference has no online phase: online the actor trains
    # at actor_lr again (mopo_actor_lr), as under constant, so a cosine run does not fine-tune with a frozen actor.
    actor_lr_schedule: str = "constant"


ACTOR_LR_SCHEDULES = ("constant", "cosine")


def mopo_actor_lr(cfg: MOPOConfig, progress: Progress) -> float:
    """The actor's learning rate for the update about to run: cosine from actor_lr to 0 over the offline updates
    (actor_lr_schedule=cosine), actor_lr online and under constant. A function of progress, not a stateful
    scheduler, so a resumed run gets the same rates by construction."""
    if cfg.actor_lr_schedule == "constant" or progress.online:
        return cfg.actor_lr
    return cosine_lr(cfg.actor_lr, progress.offline_updates / max(progress.offline_budget, 1))


class MOPO(SAC):
    def __init__(self, cfg: MOPOConfig, spec: EnvSpec, device: torch.device):
        if cfg.actor_lr_schedule not in ACTOR_LR_SCHEDULES:
            raise ConfigError(f"agent.actor_lr_schedule={cfg.actor_lr_schedule!r}: choose one of "
                              f"{', '.join(ACTOR_LR_SCHEDULES)}.")
        super().__init__(cfg, spec, device)

    def update(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        if self.cfg.actor_lr_schedule == "cosine":
            set_lr(self.optimizers["actor"], mopo_actor_lr(self.cfg, progress))
        return super().update(batch, progress)

    def critic_loss(self, batch: Batch, obs: Tensor, next_obs: Tensor,
                    progress: Progress | None = None) -> tuple[Tensor, dict]:
        loss, info = super().critic_loss(batch, obs, next_obs, progress)
        return loss, info | real_imagined_split(batch, info["_q"].mean(0), info["_target"])


def real_imagined_split(batch: Batch, q: Tensor, target: Tensor) -> dict[str, Tensor]:
    """Q, Bellman target and reward means over the batch's real rows and its imagined rows, separately: where Q
    runs away on imagined rows while staying put on real ones, the policy is exploiting model error (MOPO's
    failure mode). Masked means, no host sync; a part with no rows reads 0."""
    if batch.source is None:
        return {}
    imagined = (batch.source == SOURCE_IDS["model"]).float()  # [B]
    out = {}
    for part, mask in (("real", 1.0 - imagined), ("imagined", imagined)):
        count = mask.sum().clamp_min(1.0)
        out |= {f"q/{part}": (q * mask).sum() / count, f"target/{part}": (target * mask).sum() / count,
                f"reward/{part}": (batch.rew * mask).sum() / count}
    return out

def main() -> None:
    from agents.core.entry import run

    run(MOPO, MOPOConfig, "mopo")


if __name__ == "__main__":
    main()
