"""Branched model rollouts with uncertainty-penalized rewards (MBPO, Janner et al. 2019; MOPO,
Yu et al. 2020).

From R start states, the current policy acts and the dynamics ensemble imagines h steps, all
R branches at once (the only Python loop is over the horizon). Each imagined reward becomes
the penalized reward r - lambda * u(s, a). A branch stops at its first imagined terminal; a
branch that reaches the horizon is marked truncated (its bootstrap is kept).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class RolloutConfig:
    horizon: int = 5  # h: MOPO's most common choice (Yu et al. 2020, table 6); per-dataset values in configs/rollout/
    penalty_coef: float = 1.0  # lambda in r - lambda u(s, a) (MOPO); per-dataset values in configs/rollout/
    real_ratio: float = 0.05  # share of real transitions per batch (MOPO / MBPO: 0.05)
    num_starts: int = 50_000  # R start states per rollout round (MOPO: 50k)
    every: int = 1_000  # gradient updates between rollout rounds (MOPO: 1000)
    # online rollout rounds: "updates" = every `every` updates (MOPO); "refit" = right after each online refit of
    # the model, every world_model.refit_every env steps (MOORe, Mao et al. 2022, Algorithm 1)
    schedule: str = "updates"
    keep_rounds: int = 5  # the model store holds the last k rounds (MOPO: ~5 rounds of model data)
    chunk: int = 50_000  # start states per batched forward, bounds peak memory
    # share of each round's start states drawn from the logged episodes' first states instead of as the sampler
    # draws real rows. 0 = MOPO (starts uniform over the data). An evaluation starts every episode from a
    # standstill, which the data holds once per logged episode (20 rows in 20,000 on the default dataset); MOReL
    # (Kidambi et al. 2020) starts its model rollouts from the initial-state distribution. Our option, off by
    # default (README, "Why MOPO/MOORe fell", step 12)
    initial_state_share: float = 0.0
    # steps of the rollouts from those first states (0 = rollout.horizon): MOReL rolls from the initial states for
    # whole episodes, and a gait forms over more steps than MOPO's h = 5 (README, "Why MOPO/MOORe fell", step 12)
    initial_state_horizon: int = 0


def penalized_reward(rew: Tensor, uncertainty: Tensor, penalty_coef: float) -> Tensor:
    """MOPO's r~(s, a) = r(s, a) - lambda u(s, a)."""
    return rew - penalty_coef * uncertainty


@dataclass
class RolloutResult:
    transitions: dict[str, Tensor]  # obs, act, rew (penalized), next_obs, terminal, truncated; [M, ...]
    mean_penalty: float  # mean of lambda * u over imagined steps
    mean_raw_reward: float
    mean_length: float  # mean number of steps a branch survived


@torch.no_grad()
def rollout(
    model,
    policy: Callable[[Tensor], Tensor],
    starts: Tensor,
    horizon: int,
    uncertainty,
    penalty_coef: float,
    generator: torch.Generator | None = None,
    propagation: str = "random_elite",
) -> RolloutResult:
    """Imagine `horizon` steps from each row of starts [R, obs_dim].

    model: a DynamicsEnsemble (anything with `step(obs, act, generator, propagation, uncertainty)`).
    uncertainty: an estimator with `from_prediction(mean, var)` (worldmodels.uncertainty), evaluated
    on the same forward pass as the step.
    """
    obs = starts
    alive = torch.ones(starts.shape[0], dtype=torch.bool, device=starts.device)  # [R]
    steps: list[dict[str, Tensor]] = []
    penalties, raw_rewards = [], []
    length = torch.zeros(starts.shape[0], device=starts.device)
    for t in range(horizon):
        act = policy(obs)  # [R_alive, act_dim]
        step = model.step(obs, act, generator=generator, propagation=propagation, uncertainty=uncertainty)
        penalty = penalty_coef * step.info["uncertainty"]  # [R_alive]
        terminal = step.terminal.float()
        last = torch.full_like(terminal, float(t == horizon - 1))
        steps.append({
            "obs": obs, "act": act, "rew": step.rew - penalty, "next_obs": step.next_obs,
            "terminal": terminal, "truncated": last * (1.0 - terminal),
        })
        penalties.append(penalty)
        raw_rewards.append(step.rew)
        length[alive] += 1
        keep = ~step.terminal  # terminated branches stop here
        alive_idx = alive.nonzero().squeeze(-1)
        alive[alive_idx[~keep]] = False
        obs = step.next_obs[keep]
        if obs.shape[0] == 0:
            break
    transitions = {k: torch.cat([s[k] for s in steps]) for k in steps[0]} if steps else {}
    return RolloutResult(
        transitions,
        float(torch.cat(penalties).mean()) if penalties else 0.0,
        float(torch.cat(raw_rewards).mean()) if raw_rewards else 0.0,
        float(length.mean()),
    )
