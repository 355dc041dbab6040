"""Learning is real: online SAC through the Trainer solves most of Pendulum-v1 in a CI budget.

Budget tuned on seeds 0 and 1 (final returns about -170 and -100; a uniform random policy
scores about -1200): 3000 env steps, 500 of them random warmup, two updates per step on
128x128 networks with lr 1e-3 and a small initial alpha, so the swing-up is learned well
within the budget. Roughly 20-30 s on one core.
"""

from __future__ import annotations

import torch

from agents.core.agent import EnvSpec
from agents.core.config import TrainerConfig
from agents.core.trainer import Trainer, seed_everything
from agents.sac import SAC, SACConfig
from worldmodels.envs import box_bounds, make_env, run_episodes

ENV_ID = "Pendulum-v1"
SEED = 0
EPISODES = 5


def test_sac_learns_pendulum(tmp_path):
    env = make_env(ENV_ID)
    low, high = box_bounds(env)
    spec = EnvSpec(env.observation_space.shape[0], env.action_space.shape[0], low, high)
    env.close()
    seed_everything(SEED)
    agent = SAC(SACConfig(hidden=[128, 128], actor_lr=1e-3, critic_lr=1e-3, alpha_lr=1e-3, init_alpha=0.1),
                spec, torch.device("cpu"))
    steps = 3000
    cfg = TrainerConfig(offline_updates=0, online_steps=steps, warmup_steps=500, updates_per_step=2,
                        batch_size=128, eval_every=steps, eval_episodes=EPISODES, log_every=500,
                        checkpoint_every=steps, progress=False)
    trainer = Trainer(agent, cfg, lambda: make_env(ENV_ID), None, tmp_path, seed=SEED, tensorboard=False)
    summary = trainer.run()
    assert summary["env_steps"] == steps and summary["updates"] == 2 * (steps - 500)
    assert summary["offline_return"] is None

    # the same evaluation episodes (same start seeds) under a uniform random policy
    eval_seed = 10_000_000 + 1_000 * SEED
    gen = torch.Generator().manual_seed(1)
    random = run_episodes(lambda: make_env(ENV_ID), lambda o: agent.random_action(o.shape[0], gen), EPISODES,
                          eval_seed, torch.device("cpu")).returns.mean()
    learned = summary["online_return"]
    assert random < -900, random  # sanity: the baseline really is the random policy
    assert learned > -700 and learned > random + 400, (learned, random)
