"""UPQ: Off2On's pessimistic Q-ensemble (agents/off2on.py) with an uncertainty penalty inside the online
Bellman target (../shared/REFERENCES-O2O.md section 10: no public code or paper text was found; the
seed table gives SAC with N critics, the std over the critics subtracted in the target, and beta in
{0.1, 0.01, 0.001}).

Online, member i's target is

    r + gamma (1 - d) [min_j Q'_ij(s', a') - alpha log pi(a'|s') - beta U(s', a')],   a' from the mixture,

with U the std over all 2E target critics at (s', a') (worldmodels/uncertainty.py's `QEnsembleStd`, the
estimator `self.q_uncertainty` that analysis code reads as any `u(obs, act) -> [B]`), computed from the
target critics' one forward pass. The offline phase is Off2On's (E CQL agents, no penalty): the seed's
formula is the SAC target (it has the entropy term, which the offline CQL target lacks), and the CQL
term already makes that phase conservative. With beta 0 UPQ is Off2On, bitwise.

The same penalty is a config on every SAC-family critic ensemble (`agent.pessimism_beta`, agents/sac.py),
e.g. `python -m agents.redq agent.pessimism_beta=0.01`.

    python -m agents.upq                          # beta 0.01
    python -m agents.upq agent.pessimism_beta=0.1  # the seed's presets: 0.1 | 0.01 | 0.001
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from agents.core.agent import EnvSpec
from agents.core.config import ConfigError
from agents.off2on import Off2On, Off2OnConfig
from worldmodels.data.store import Batch
from worldmodels.progress import Progress
from worldmodels.uncertainty import QEnsembleStd


@dataclass
class UPQConfig(Off2OnConfig):
    name: str = "upq"
    # beta of the online target's - beta U(s', a'); the seed table's presets are 0.1, 0.01 and 0.001
    # (REFERENCES-O2O.md section 10, unverified against a paper); 0.01, the middle one, by default
    pessimism_beta: float = 0.01


class UPQ(Off2On):
    def __init__(self, cfg: UPQConfig, spec: EnvSpec, device: torch.device):
        if cfg.pessimism_beta < 0:
            raise ConfigError(f"agent.pessimism_beta={cfg.pessimism_beta} must be >= 0 (0 = Off2On).")
        super().__init__(cfg, spec, device)
        self.q_uncertainty = QEnsembleStd(self.critic_target)  # U(s, a): std over the 2E target critics

    def target_value(self, batch: Batch, next_obs: Tensor, progress: Progress) -> Tensor:
        """Online: min_j Q'_ij(s', a') - alpha log pi(a'|s') - beta U(s', a') [E, B]; offline: Off2On's."""
        if not progress.online:
            return super().target_value(batch, next_obs, progress)
        next_act, next_log_prob = self.actor.mixture(next_obs)  # [B, A], [B]
        next_q = self.critic_target(next_obs, next_act)  # [2E, B], critic 2i + j = member i's twin j
        member_q = next_q.view(self.cfg.ensemble_size, 2, -1).min(1).values  # [E, B]
        u = self.q_uncertainty.from_prediction(next_q)  # [B]
        return member_q - self.alpha(progress) * next_log_prob - self.cfg.pessimism_beta * u


def main() -> None:
    from agents.core.entry import run

    run(UPQ, UPQConfig, "upq")


if __name__ == "__main__":
    main()
