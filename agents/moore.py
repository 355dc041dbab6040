"""MOORe: Mao, Wang, Wang & Zhang, "MOORe: Model-based Offline-to-Online Reinforcement
Learning", arXiv 2201.10070 (Algorithm 1).

MOORe is MOPO with a different data path, so its agent is MOPO's and its difference is config
(configs/moore.yaml):

- `sampler=moore_decay`: in online epoch t (phi env steps each, phi = world_model.refit_every)
  every offline transition has priority Pr(d, t) = 1/(alpha t) and every online one 1.0. Batches,
  rollout start states and the model's refit data are all drawn by these priorities
  (worldmodels/data/samplers.py). Priorities are constant within each source, so drawing
  proportionally to them is a two-source mixture whose shares are the sources' priority masses,
  N_off/(alpha t) against N_on (exact counts per batch instead of multinomial ones).
- `world_model.refit_every=phi` and `rollout.schedule=refit`: every phi env steps the ensemble is
  refitted on offline + online data with bootstrap draws proportional to the priorities, and a
  rollout round follows right after the refit.

    python -m agents.moore
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.mopo import MOPO, MOPOConfig


@dataclass
class MOOReConfig(MOPOConfig):
    name: str = "moore"


class MOORe(MOPO):
    """MOPO's losses; MOORe's priorities, refits and rollout schedule live in its config."""


def main() -> None:
    from agents.core.entry import run

    run(MOORe, MOOReConfig, "moore")


if __name__ == "__main__":
    main()
