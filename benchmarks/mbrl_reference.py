# ruff: noqa: E702, E731, E401
"""The reference figures for benchmarks/model.py: mbrl-lib 0.2.0's GaussianMLP at the same
setting (7 members, 4 x 200 SiLU, in 23 / out 18, batch 256 per member; one forward of 50k
states with a random-member sample). mbrl-lib is in the dev environment:

    uv run python benchmarks/mbrl_reference.py [threads]

Prints one JSON line.
"""

import json
import sys
import time

import torch
from mbrl.models import GaussianMLP

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
secs = 5.0
m = GaussianMLP(
    in_size=23,
    out_size=18,
    device="cpu",
    num_layers=4,
    ensemble_size=7,
    hid_size=200,
    deterministic=False,
    propagation_method="random_model",
    activation_fn_cfg={"_target_": "torch.nn.SiLU"},
)
opt = torch.optim.Adam(m.parameters(), lr=1e-3, weight_decay=5e-5)
x = torch.randn(7, 256, 23)
y = torch.randn(7, 256, 18)


def rate(f, per=1):
    for _ in range(3):
        f()
    n, s = 0, time.perf_counter()
    while time.perf_counter() - s < secs:
        f()
        n += 1
    return n * per / (time.perf_counter() - s)


tr = rate(lambda: m.update(x, opt, y))
obs = torch.randn(50000, 23)


def roll():
    with torch.no_grad():
        mean, logvar = m.forward(obs, use_propagation=False)
        idx = torch.randint(7, (50000,))
        mu = mean[idx, torch.arange(50000)]
        sd = logvar[idx, torch.arange(50000)].exp().sqrt()
        return mu + sd * torch.randn_like(mu)


ro = rate(roll, 50000)
print(json.dumps({"mbrl_train_steps_per_second": round(tr, 1), "mbrl_rollout_states_per_second": round(ro)}))
