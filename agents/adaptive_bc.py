"""AdaptiveBC: Zhao, Boney, Ilin, Kannala & Pajarinen, "Adaptive Behavior Cloning Regularization for
Stable Offline-to-Online Policy Learning", 2022 (reference code: zhaoyi11/adaptive_bc `main.py`,
`redq_bc.py`, `utils.py`; facts in /work/shared/REFERENCES-O2O.md section 6).

TD3+BC's actor on a 10-critic ensemble: the Bellman target takes the min over a random 2 of the 10
target critics (REDQ-style, one subset per update), the actor maximizes the mean of all 10
normalized by its mean magnitude, -Qbar / mean|Qbar| + alpha (pi(s) - a)^2. Online, with UTD 10
(configs/adaptive_bc.yaml), a PD controller moves the BC weight once per episode:

    alpha <- clip(alpha + T_ep (-K_P (R_target - R_avg) + K_D max(0, R_avg - R)), 0, alpha_max)
    R_avg <- (1 - w) R_avg + w R

with R the episode's D4RL-normalized return (0..1), T_ep its length in env steps, and R_avg started
from the last evaluation of the offline policy. The online buffer starts with offline rows
(`sampler=online_seeded`).

Differences from the reference: the critics start from this package's ensemble initialization (the
reference uses a truncated normal, std 1/(2 sqrt(fan_in))); the critic loss sums the critics' MSEs
(the reference averages them: a constant factor); R_avg starts from the trainer's last offline
evaluation (trainer.eval_episodes episodes; the reference runs one).

    python -m agents.adaptive_bc
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from agents.core.config import ConfigError
from agents.core.networks import CriticEnsemble, adam, mean_over_critics, subset_min_target
from agents.td3 import TD3, TD3Config
from worldmodels.data.store import Batch
from worldmodels.progress import EpisodeEnd, Progress


@dataclass
class AdaptiveBCConfig(TD3Config):
    name: str = "adaptive_bc"
    actor_lr: float = 3e-4  # redq_bc.py: Adam 3e-4 for actor and critics
    critic_lr: float = 3e-4  # redq_bc.py
    hidden: list[int] = field(default_factory=lambda: [256, 256])  # redq_bc.py: 2x256 actor and critics
    num_critics: int = 10  # redq_bc.py num_nets=10
    num_min: int = 2  # redq_bc.py: min over the first 2 of a random permutation of the 10 target critics
    gamma: float = 0.99  # main.py discount
    tau: float = 0.005  # main.py tau; targets soft-updated on actor steps only (redq_bc.py), as TD3 here
    policy_noise: float = 0.2  # main.py
    noise_clip: float = 0.5  # main.py
    policy_delay: int = 2  # main.py policy_freq
    exploration_noise: float = 0.1  # main.py expl_noise
    normalize_obs: bool = False  # main.py feeds raw states (no state normalization)
    # offline BC weight: main.py alpha 0.4 for locomotion (walker2d-random 100, adroit-expert 8)
    alpha: float = 0.4
    # alpha_finetune: the online weight at the switch and the controller's upper clip (main.py: 0.4; adroit 8)
    alpha_max: float = 0.4
    kp: float = 3e-5  # main.py Kp (adroit: x alpha/0.4)
    kd: float = 1e-4  # main.py Kd (adroit: x alpha/0.4)
    target_return: float = 1.05  # main.py target_R, in normalized-return units (1 = expert)
    return_ema: float = 0.05  # main.py: last_R = 0.05 current_R + 0.95 last_R


def pd_alpha(alpha: float, r_avg: float, r_current: float, steps: int, cfg: AdaptiveBCConfig) -> tuple[float, float]:
    """One controller step at an episode's end: the new BC weight (clipped to [0, alpha_max]) and the
    new return average. `steps` is the episode's length T_ep (main.py `episode_timesteps`)."""
    alpha += steps * (-cfg.kp * (cfg.target_return - r_avg) + cfg.kd * max(0.0, r_avg - r_current))
    alpha = max(0.0, min(alpha, cfg.alpha_max))
    return alpha, cfg.return_ema * r_current + (1.0 - cfg.return_ema) * r_avg


def adaptive_bc_actor_loss(q: Tensor, policy_act: Tensor, data_act: Tensor, alpha: float) -> tuple[Tensor, dict]:
    """-Qbar / mean|Qbar| + alpha (pi(s) - a)^2 with Qbar [B] the critics' mean (scale not back-propagated)."""
    bc = F.mse_loss(policy_act, data_act)
    loss = -q.mean() / q.abs().mean().detach() + alpha * bc
    return loss, {"loss/actor": loss.detach(), "loss/bc": bc.detach(),
                  "actor/bc_weight": torch.full((), alpha, device=bc.device)}


class AdaptiveBC(TD3):
    def __init__(self, cfg: AdaptiveBCConfig, spec, device: torch.device):
        if not 1 <= cfg.num_min <= cfg.num_critics:
            raise ConfigError(f"agent.num_min={cfg.num_min} must lie in [1, agent.num_critics={cfg.num_critics}].")
        if cfg.alpha < 0 or cfg.alpha_max < 0 or not 0.0 < cfg.return_ema <= 1.0:
            raise ConfigError(f"agent.alpha={cfg.alpha} and agent.alpha_max={cfg.alpha_max} must be >= 0 and "
                              f"agent.return_ema={cfg.return_ema} lie in (0, 1].")
        super().__init__(cfg, spec, device)
        # the ensemble replaces TD3's twin critics (same layout, N members)
        self.critic = CriticEnsemble(spec.obs_dim, spec.act_dim, cfg.num_critics, cfg.hidden).to(device)
        self.critic_target = CriticEnsemble(spec.obs_dim, spec.act_dim, cfg.num_critics, cfg.hidden).to(device)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.optimizers["critic"] = adam(self.critic.parameters(), cfg.critic_lr)
        self.subset_rng = self.new_generator("subset")  # the subset draws' own checkpointed stream (as REDQ)
        # the controller: plain python state, checkpointed through extra_state
        self.bc_alpha = cfg.alpha  # the actor's BC weight now
        self.r_avg: float | None = None  # EMA of normalized returns (None until the switch / a first episode)
        self.controller_started = False

    def extra_state(self) -> dict:
        return {"bc_alpha": self.bc_alpha, "r_avg": self.r_avg,
                "controller_started": self.controller_started}

    def load_extra_state(self, state: dict) -> None:
        self.bc_alpha, self.r_avg = state["bc_alpha"], state["r_avg"]
        self.controller_started = state["controller_started"]

    # --- phase hooks: the controller -------------------------------------------------
    def on_phase(self, progress: Progress) -> None:
        """At the switch (once; a resume finds it done): alpha = alpha_max, R_avg = the offline policy's
        last normalized evaluation (0..1)."""
        if progress.online and not self.controller_started:
            self.controller_started = True
            self.bc_alpha = self.cfg.alpha_max
            self.r_avg = None if progress.last_score is None else progress.last_score / 100.0

    def on_episode_end(self, episode: EpisodeEnd, progress: Progress) -> None:
        if episode.normalized_return is None:
            return  # no reference scores: the weight stays where it is
        r = episode.normalized_return / 100.0
        if self.r_avg is None:
            self.r_avg = r  # no evaluation before the switch (no offline phase): start from the first episode
        self.bc_alpha, self.r_avg = pd_alpha(self.bc_alpha, self.r_avg, r, episode.length, self.cfg)

    # --- losses ------------------------------------------------------------------
    def target_q(self, next_obs: Tensor, next_act: Tensor) -> Tensor:
        """min over a random 2 of the 10 target critics, [B]; only the 2 drawn run."""
        return subset_min_target(self.critic_target, next_obs, next_act, self.cfg.num_min, self.subset_rng)[0]

    def actor_loss(self, batch: Batch, obs: Tensor) -> tuple[Tensor, dict]:
        policy_act = self.actor(obs)
        q = mean_over_critics(self.critic(obs, policy_act))  # [N, B] -> [B]
        return adaptive_bc_actor_loss(q, policy_act, batch.act, self.bc_alpha)


def main() -> None:
    from agents.core.entry import run

    run(AdaptiveBC, AdaptiveBCConfig, "adaptive_bc")


if __name__ == "__main__":
    main()
