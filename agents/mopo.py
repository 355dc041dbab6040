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

from agents.sac import SAC, SACConfig


@dataclass
class MOPOConfig(SACConfig):
    name: str = "mopo"
    # SAC as in the common MOPO reference (OfflineRL-Kit's run_mopo): 256x2, critic lr 3e-4, auto-alpha from 1,
    # but a slower actor and temperature. (Its cosine decay of the actor lr over 3M updates is left out.)
    actor_lr: float = 1e-4
    alpha_lr: float = 1e-4


class MOPO(SAC):
    uses_offline_data = True


def main() -> None:
    from agents.core.entry import run

    run(MOPO, MOPOConfig, "mopo")


if __name__ == "__main__":
    main()
