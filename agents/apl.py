"""APL (GTD3BC): Zheng, Luo, Yu et al., "Adaptive Policy Learning for Offline-to-Online Reinforcement
Learning", AAAI 2023 (reference code: zhan0903/APL0 `off_on_interleave.py`, `agents/td3_bc_gc.py`;
../shared/REFERENCES-O2O.md §11).

TD3+BC whose behaviour-cloning term is switched by the batch: the actor minimizes
-lambda Q_1(s, pi(s)) + W (pi(s) - a)^2, lambda = alpha / mean|Q_1| (kept when W = 0). W comes from the
online-offline replay (`sampler: apl`, worldmodels/data/samplers.py): a batch drawn whole from the recent
online window (its rows carry source `recent`) has W = 0, pessimism off; a batch from the main buffer
(offline + all online rows) has W = 1. APL's CQL variant (GCQL) is agents/apl_cql.py: the two parents
share nothing but this W, so each variant is its parent plus one hook (a single class would have to pick
its parent at run time).

Differences from the reference: the trainer interleaves `updates_per_step` = 10 updates per env step
instead of APL0's rounds of 1000 env steps then 10000 updates (same update-to-data ratio).

    python -m agents.apl                  # GTD3BC (also: variant=td3bc)
    python -m agents.apl variant=cql      # GCQL, the same as python -m agents.apl_cql
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from agents.core.config import ConfigError
from agents.td3bc import TD3BC, TD3BCConfig
from worldmodels.data.store import SOURCE_IDS, Batch


@dataclass
class APLConfig(TD3BCConfig):
    name: str = "apl"
    alpha: float = 2.5  # td3_bc_gc.py: lambda = 2.5 / mean|Q_1| (Fujimoto & Gu 2021)
    exploration_noise: float = 0.1  # td3_bc_gc.py: N(0, 0.1 max_action) online
    normalize_obs: bool = False  # APL0 td3_bc_gc.py feeds raw states (TD3+BC normalizes)


def regulariser_weight(batch: Batch) -> Tensor:
    """W per row [B]: 0 on rows of the recent online window, 1 elsewhere (and on batches without sources)."""
    if batch.source is None:
        return torch.ones_like(batch.rew)
    return (batch.source != SOURCE_IDS["recent"]).to(batch.rew.dtype)


def gated_td3bc_actor_loss(q: Tensor, policy_act: Tensor, data_act: Tensor, alpha: float,
                           w: Tensor) -> tuple[Tensor, dict]:
    """-lambda Q(s, pi(s)) + mean over rows of W (pi(s) - a)^2, lambda = alpha / mean|Q| (not back-propagated)."""
    lmbda = alpha / q.abs().mean().detach()
    bc = (w.unsqueeze(-1) * (policy_act - data_act).square()).mean()
    loss = -lmbda * q.mean() + bc
    return loss, {"loss/actor": loss.detach(), "loss/bc": bc.detach(), "actor/lambda": lmbda,
                  "apl/w_mean": w.mean()}


class APL(TD3BC):
    def actor_loss(self, batch: Batch, obs: Tensor) -> tuple[Tensor, dict]:
        policy_act = self.actor(obs)
        q = self.critic(obs, policy_act)[0]
        return gated_td3bc_actor_loss(q, policy_act, batch.act, self.cfg.alpha, regulariser_weight(batch))


# `python -m agents.apl variant=NAME` names the two variants of Zheng et al. 2023 (APL0: td3_bc_gc.py, GCQL.py);
# each is its own module, so the argument picks which entry runs (and names its run directory)
VARIANTS = {"td3bc": "apl", "cql": "apl_cql"}


def entry_for(argv: list[str]) -> tuple[str, list[str]]:
    """(the module name, argv without variant=): `variant=cql` -> apl_cql, `variant=td3bc` or none -> apl."""
    chosen = [arg for arg in argv if arg.startswith("variant=")]
    rest = [arg for arg in argv if not arg.startswith("variant=")]
    values = [arg.partition("=")[2] for arg in chosen]
    if len(values) > 1 or any(v not in VARIANTS for v in values):
        raise ConfigError(f"{' '.join(chosen)}: give one variant=td3bc (GTD3BC, python -m agents.apl) or "
                          "variant=cql (GCQL, python -m agents.apl_cql); sweep the two as two commands")
    return VARIANTS[values[0]] if values else "apl", rest


def main() -> None:
    import sys

    from agents.core.entry import run

    try:
        name, sys.argv[1:] = entry_for(sys.argv[1:])
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if name == "apl_cql":
        from agents.apl_cql import APLCQL, APLCQLConfig

        run(APLCQL, APLCQLConfig, "apl_cql")
    else:
        run(APL, APLConfig, "apl")


if __name__ == "__main__":
    main()
