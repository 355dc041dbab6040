"""A density-ratio estimator w(s, a) ~ d_online(s, a) / d_offline(s, a) and the balanced-replay priority
built on it: Lee, Seo, Lee, Abbeel & Shin, "Offline-to-Online Reinforcement Learning via Balanced
Replay and Pessimistic Q-Ensemble", CoRL 2021 (shlee94/Off2OnRL `rlkit/rlkit/torch/sac/ours.py`,
`core/batch_rl_algorithm.py`; ../shared/REFERENCES-O2O.md §9).

w is an MLP with a ReLU output trained by the Jensen-Shannon form of the f-divergence bound:

    L(w) = E_offline[-log(2 / (w + 1))] - E_online[log(2 w / (w + 1))]

whose pointwise minimiser is w = d_online / d_offline. A row's priority is
w^(1/T) / mean_offline(w^(1/T)), clamped. The estimator knows nothing of agents or samplers: the
balanced sampler (worldmodels/data/samplers.py, `sampler=balanced`) feeds it uniform draws from the
offline and online stores and writes the priorities into its sum tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from worldmodels.ensemble import make_adam

EPS = 1e-10  # Off2OnRL: inside both logs and in the priority's denominator


@dataclass
class DensityRatioConfig:
    hidden: list[int] = field(default_factory=lambda: [256, 256])  # Off2OnRL weight_net: ConcatMlp 2 x 256
    lr: float = 3e-4  # Off2OnRL --weight_net_lr 3e-4 (Adam)
    batch_size: int = 256  # Off2OnRL --weight_net_batch_size: 256 offline + 256 online rows per update
    temperature: float = 5.0  # Off2OnRL --temperature T = 5: priority w^(1/T)
    priority_min: float = 1e-3  # Off2OnRL: new_priority = normalized_weight.clamp(0.001, 1000)
    priority_max: float = 1e3  # Off2OnRL
    # Off2OnRL --init_online_fraction 0.5 (its README's example: 0.75): the online share of the sampling
    # mass once `initial_online_rows` online rows sit at the initial maximum priority
    initial_online_share: float = 0.5
    # Off2OnRL: N = 1000, the env steps of its first online epoch, collected before the first update
    initial_online_rows: int = 1000


def check_density_ratio_config(cfg: DensityRatioConfig) -> str | None:
    """The first problem with the config as one line, or None."""
    if cfg.lr <= 0 or cfg.batch_size <= 0 or cfg.temperature <= 0:
        return "sampler.ratio.lr, batch_size and temperature must be positive."
    if not 0 < cfg.priority_min <= cfg.priority_max:
        return f"sampler.ratio.priority_min={cfg.priority_min} must lie in (0, priority_max={cfg.priority_max}]."
    if not 0.0 < cfg.initial_online_share < 1.0:
        return f"sampler.ratio.initial_online_share={cfg.initial_online_share} must lie in (0, 1)."
    if cfg.initial_online_rows <= 0:
        return f"sampler.ratio.initial_online_rows={cfg.initial_online_rows} must be a positive number of rows."
    return None


def js_ratio_loss(w_offline: Tensor, w_online: Tensor) -> tuple[Tensor, dict]:
    """Jensen-Shannon density-ratio loss; w_offline [B_off], w_online [B_on] (both >= 0)."""
    f_star = -torch.log(2.0 / (w_offline + 1.0) + EPS)  # [B_off]
    f_prime = torch.log(2.0 * w_online / (w_online + 1.0) + EPS)  # [B_on]
    loss = f_star.mean() - f_prime.mean()
    return loss, {"loss/density_ratio": loss.detach(), "replay/w_offline": w_offline.detach().mean(),
                  "replay/w_online": w_online.detach().mean()}


def balanced_priority(w: Tensor, w_offline: Tensor, temperature: float, lo: float = 1e-3,
                      hi: float = 1e3) -> Tensor:
    """w^(1/T) / mean(w_offline^(1/T)), clamped to [lo, hi]: w [B] of the batch, w_offline [B_off] of
    uniformly drawn offline rows (the normaliser). Returns [B]."""
    return (w.pow(1.0 / temperature) / (w_offline.pow(1.0 / temperature).mean() + EPS)).clamp(lo, hi)


def initial_max_priority(num_offline: int, share: float, rows: int) -> float:
    """The running maximum's start value M f / ((1 - f) N): with M offline rows at priority 1 and N
    online rows at this priority, the online rows hold the share f of the sampling mass."""
    return num_offline * share / ((1.0 - share) * rows)


class DensityRatio(nn.Module):
    """w(s, a) >= 0: an MLP on [s, a] with a ReLU output, the last layer's weights ~ U(-3e-3, 3e-3) and
    bias 1, so w starts near 1 everywhere (rlkit `Mlp` init_w=3e-3; Off2OnRL fills the last bias with 1).
    Owns its Adam optimizer; both travel in `state_dict()`."""

    def __init__(self, obs_dim: int, act_dim: int, hidden=(256, 256), lr: float = 3e-4,
                 device: torch.device | str = "cpu"):
        super().__init__()
        layers: list[nn.Module] = []
        width = obs_dim + act_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        last = nn.Linear(width, 1)
        with torch.no_grad():
            last.weight.uniform_(-3e-3, 3e-3)
            last.bias.fill_(1.0)
        self.net = nn.Sequential(*layers, last).to(device)
        self.optimizer = make_adam(self.parameters(), lr)

    def forward(self, obs: Tensor, act: Tensor) -> Tensor:
        return torch.relu(self.net(torch.cat([obs, act], -1))).squeeze(-1)  # [B]

    def fit_step(self, off_obs: Tensor, off_act: Tensor, on_obs: Tensor, on_act: Tensor) -> tuple[Tensor, dict]:
        """One Adam step of the JS loss on uniform offline and online draws. Returns the offline rows' w
        before the step ([B_off], detached: the priority's normaliser, from the same forward pass as in
        Off2OnRL, where every loss and the priorities are computed before any step) and the metrics."""
        w_off, w_on = self(off_obs, off_act), self(on_obs, on_act)
        loss, info = js_ratio_loss(w_off, w_on)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return w_off.detach(), info

    # the optimizer's state rides along in the module's state dict
    def get_extra_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
