"""Cal-QL: Nakamoto et al., "Cal-QL: Calibrated Offline RL Pre-Training for Efficient Online
Fine-Tuning", NeurIPS 2023.

CQL whose policy-action Q values (the pi(s) and pi(s') sets, every critic) are floored by the
Monte-Carlo return-to-go of the row before the logsumexp: max(Q, G). Uniform actions and the
dataset action's Q are not floored (nakamotoo/Cal-QL `conservative_sac.py`, CORL `cal_ql.py`;
../shared/REFERENCES-O2O.md §2). G is the per-transition field `rtg` (worldmodels/data/fields.py):
per dataset episode offline, per finished episode online, and "no value" (the lowest float, so
the floor is a no-op) for rows whose episode has not ended. Batches are 50/50 offline/online
(`sampler: symmetric` in configs/calql.yaml, Cal-QL's mixing_ratio 0.5).

    python -m agents.calql
    python -m agents.calql agent.online_calibration=off   # CORL: no floor after the switch
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from agents.core.agent import EnvSpec
from agents.core.config import ConfigError
from agents.cql import CQL, CQLConfig
from worldmodels.data.fields import ReturnToGo, TransitionField
from worldmodels.data.store import Batch
from worldmodels.progress import Progress


@dataclass
class CalQLConfig(CQLConfig):
    name: str = "calql"
    max_target_backup: bool = True  # Cal-QL: cql_max_target_backup=True
    calibration: bool = True  # the floor max(Q_pi, G); False = plain CQL (the variant test)
    online_calibration: str = "keep"  # keep: Cal-QL's original (floor stays on online) | off: CORL (off at the switch)
    rtg_sparse_negative: float | None = None  # Cal-QL's sparse-reward case (antmaze after scaling: -5); None = off


def calibrate(q_pi: Tensor, rtg: Tensor) -> tuple[Tensor, dict]:
    """max(Q, G) with q_pi [N, B, M] and rtg [B]; rows with "no value" (lowest float) are left alone."""
    g = rtg.view(1, -1, 1)  # [1, B, 1]
    return torch.maximum(q_pi, g), {"calql/bound_rate": (q_pi < g).float().mean().detach()}


class CalQL(CQL):
    def __init__(self, cfg: CalQLConfig, spec: EnvSpec, device: torch.device):
        if cfg.online_calibration not in ("keep", "off"):
            raise ConfigError(f"agent.online_calibration={cfg.online_calibration!r}: use keep (Cal-QL) or off (CORL).")
        super().__init__(cfg, spec, device)

    def transition_fields(self) -> list[TransitionField]:
        return [ReturnToGo(self.cfg.gamma, self.cfg.rtg_sparse_negative)]

    def calibrated(self, progress: Progress) -> bool:
        """Whether the floor acts now: a function of the phase, so resume needs no stored switch."""
        return self.cfg.calibration and not (progress.online and self.cfg.online_calibration == "off")

    def floor_policy_q(self, q_pi: Tensor, batch: Batch, progress: Progress) -> tuple[Tensor, dict]:
        if not self.calibrated(progress):
            return q_pi, {}
        return calibrate(q_pi, batch.extras["rtg"])


def main() -> None:
    from agents.core.entry import run

    run(CalQL, CalQLConfig, "calql")


if __name__ == "__main__":
    main()
