"""Known termination rules of gymnasium MuJoCo v5 tasks, as batched torch functions.

Every rule maps ``(obs [B, obs_dim], act [B, act_dim], next_obs [B, obs_dim]) -> bool [B]`` and reads the
*next* observation, as gymnasium checks health after the simulation step. Ranges and observation layouts are
the gymnasium 1.x ``*_v5.py`` defaults (``exclude_current_positions_from_observation=True``, so the leading x
(and y) coordinates are not in the observation). Non-default constructor arguments (other healthy ranges,
``exclude_current_positions_from_observation=False``) are not covered: use the learned termination head.

``termination_fn_for(env_id)`` returns the rule for a known task and ``None`` for an unknown one, so that
callers fall back to the learned termination head of ``DynamicsEnsemble``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

TerminationFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def never_terminates(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """HalfCheetah, Swimmer, Reacher, Pusher and HumanoidStandup never terminate."""
    return torch.zeros(next_obs.shape[0], dtype=torch.bool, device=next_obs.device)


def hopper_v5(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """Hopper-v5: healthy iff 0.7 < z, -0.2 < angle < 0.2 and every entry of obs[1:] in (-100, 100).

    obs = (qpos[1:] = z, angle, 3 joint angles; clip(qvel, -10, 10)); gymnasium checks the state range on
    (qpos[2:], unclipped qvel), so a velocity beyond 100 is not visible here (it is clipped in the
    observation). Open intervals as in ``Hopper.is_healthy``; NaN counts as unhealthy.
    """
    z, angle, state = next_obs[:, 0], next_obs[:, 1], next_obs[:, 1:]
    healthy = ((state > -100.0) & (state < 100.0)).all(dim=-1)
    healthy &= z > 0.7  # upper bound of healthy_z_range is +inf
    healthy &= (angle > -0.2) & (angle < 0.2)
    return ~healthy


def walker2d_v5(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """Walker2d-v5: healthy iff 0.8 < z < 2.0 and -1 < angle < 1 (obs[0] = z, obs[1] = torso angle)."""
    z, angle = next_obs[:, 0], next_obs[:, 1]
    healthy = (z > 0.8) & (z < 2.0) & (angle > -1.0) & (angle < 1.0)
    return ~healthy


def ant_v5(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """Ant-v5: healthy iff the state is finite and 0.2 <= z <= 1.0 (closed interval; obs[0] = torso z).

    Finiteness is checked on the whole observation (qpos[2:], qvel and, by default, contact forces).
    """
    z = next_obs[:, 0]
    healthy = torch.isfinite(next_obs).all(dim=-1) & (z >= 0.2) & (z <= 1.0)
    return ~healthy


def humanoid_v5(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """Humanoid-v5: healthy iff 1.0 < z < 2.0 (obs[0] = torso z)."""
    z = next_obs[:, 0]
    return ~((z > 1.0) & (z < 2.0))


def inverted_pendulum_v5(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """InvertedPendulum-v5: terminates when the observation is not finite or |pole angle| = |obs[1]| > 0.2."""
    return ~torch.isfinite(next_obs).all(dim=-1) | (next_obs[:, 1].abs() > 0.2)


def inverted_double_pendulum_v5(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """InvertedDoublePendulum-v5: terminates when the tip height y <= 1.

    obs = (cart x, sin t1, sin t2, cos t1, cos t2, ...) and both poles are 0.6 long with the tip at the end
    of the second pole (inverted_double_pendulum.xml), so y = 0.6 cos t1 + 0.6 cos(t1 + t2). Gymnasium reads
    the tip from ``site_xpos``, which MuJoCo computes before the last integration sub-step; this rule uses
    the observed angles, so it can disagree with the environment on steps that cross y = 1 within that last
    sub-step.
    """
    s1, s2, c1, c2 = next_obs[:, 1], next_obs[:, 2], next_obs[:, 3], next_obs[:, 4]
    y = 0.6 * c1 + 0.6 * (c1 * c2 - s1 * s2)
    return y <= 1.0


_RULES: dict[str, TerminationFn] = {
    "hopper": hopper_v5,
    "walker2d": walker2d_v5,
    "ant": ant_v5,
    "humanoid": humanoid_v5,
    "invertedpendulum": inverted_pendulum_v5,
    "inverteddoublependulum": inverted_double_pendulum_v5,
    "halfcheetah": never_terminates,
    "swimmer": never_terminates,
    "reacher": never_terminates,
    "pusher": never_terminates,
    "humanoidstandup": never_terminates,
}


def _task_key(env_id: str) -> str | None:
    """'Hopper-v5' -> 'hopper'; Minari ids 'mujoco/hopper/medium-v0' -> 'hopper' (those datasets use v5)."""
    parts = env_id.strip().split("/")
    if len(parts) >= 2 and parts[0].lower() == "mujoco":
        return parts[1].lower().replace("_", "").replace("-", "")
    if len(parts) != 1:
        return None
    name, sep, version = parts[0].rpartition("-")
    if not sep or version.lower() != "v5":
        return None  # other versions may differ in ranges or layout: let the caller learn termination
    return name.lower().replace("_", "")


_BY_NAME: dict[str, TerminationFn] = {fn.__name__: fn for fn in _RULES.values()}


def rule_name(fn: TerminationFn) -> str | None:
    """The function name of a rule defined here (e.g. 'hopper_v5'), which termination_fn_for resolves."""
    name = getattr(fn, "__name__", None)
    return name if name is not None and _BY_NAME.get(name) is fn else None


def termination_fn_for(env_id: str) -> TerminationFn | None:
    """The known termination rule for a gymnasium v5 id (e.g. 'Hopper-v5'), a Minari 'mujoco/<task>/...' id
    or a rule name from this module ('hopper_v5', 'never_terminates').

    Returns None for anything else, so the caller can fall back to a learned termination head.
    """
    if env_id in _BY_NAME:
        return _BY_NAME[env_id]
    key = _task_key(env_id)
    return None if key is None else _RULES.get(key)
