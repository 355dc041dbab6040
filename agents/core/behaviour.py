"""The behaviour learner of the D4RL-style recipes (worldmodels/data/recipes.py): SAC.

D4RL (Fu et al. 2020, section 5) collects its medium and expert data with SAC policies. The
recipe code in the data layer decides what to collect; this learner only trains the run and
turns its snapshots back into policies. `agents.core.entry.load_dataset` and the tools in
agents/tools pass it to `recipes.build`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from agents.core.agent import EnvSpec
from agents.core.checkpoint import load_checkpoint
from agents.core.config import TrainerConfig
from agents.core.networks import TanhGaussianActor
from agents.core.trainer import EvalResult, Trainer
from agents.sac import SAC, SACConfig
from worldmodels.data.recipes import BehaviourInterrupted, BehaviourRun, Policy
from worldmodels.envs import box_bounds, make_env


class SACBehaviour:
    """One SAC run (Haarnoja et al. 2018) with an actor snapshot at every evaluation."""

    name = "SAC"
    evaluations = 10  # snapshots along the run: the medium policy is chosen among them

    def train(self, env_id: str, steps: int, seed: int, run_dir: Path, device: torch.device,
              progress: bool) -> BehaviourRun:
        env = make_env(env_id)
        low, high = box_bounds(env)
        spec = EnvSpec(env.observation_space.shape[0], env.action_space.shape[0], low, high)
        env.close()
        torch.manual_seed(seed)
        agent = SAC(SACConfig(), spec, device)
        every = max(steps // self.evaluations, 1)
        cfg = TrainerConfig(
            offline_updates=0, online_steps=steps,
            warmup_steps=min(10_000, steps // 10),  # SAC's uniform-random start (Haarnoja et al. 2018)
            eval_every=every, eval_episodes=3, log_every=1000, checkpoint_every=every, progress=progress,
        )
        snapshot_dir = run_dir / "snapshots"
        snapshot_dir.mkdir(parents=True, exist_ok=True)

        def snapshot(trainer: Trainer, result: EvalResult) -> None:
            # the trainer evaluates at its last step too, so the last snapshot is the final policy
            path = snapshot_dir / f"{trainer.state.env_steps:09d}.pt"
            torch.save({"env_steps": trainer.state.env_steps, "return": result.mean_return,
                        "actor": {k: v.cpu() for k, v in agent.actor.state_dict().items()}}, path)

        trainer = Trainer(agent, cfg, lambda: make_env(env_id), None, run_dir, seed=seed, tensorboard=False)
        trainer.on_evaluate.append(snapshot)
        trainer.run()  # resumes from run_dir/checkpoint.pt; a finished run returns at once
        if trainer.interrupted:
            raise BehaviourInterrupted(trainer.interrupted, trainer.state.env_steps, steps, run_dir)
        snapshots = [load_checkpoint(p, "cpu") for p in sorted(snapshot_dir.glob("*.pt"))]  # plain data only
        return BehaviourRun(snapshots, trainer.online.valid(), warmup_steps=cfg.warmup_steps)

    def policy(self, env_id: str, snapshot: dict | None, device: torch.device, deterministic: bool = False) -> Policy:
        env = make_env(env_id)
        low, high = box_bounds(env)
        obs_dim = env.observation_space.shape[0]
        env.close()
        if snapshot is None:  # uniform over the action box (SAC's random start, D4RL's "random")
            low, span = low.to(device), (high - low).to(device)
            return lambda obs: low + torch.rand(obs.shape[0], low.numel(), device=device) * span
        state = snapshot["actor"]
        depth = sum(1 for k in state if k.startswith("trunk.") and k.endswith(".weight")) - 1
        actor = TanhGaussianActor(obs_dim, low.numel(), (high - low) / 2, (high + low) / 2,
                                  hidden=[state["trunk.0.weight"].shape[0]] * depth)
        actor.load_state_dict(state)
        actor.to(device)
        return lambda obs: actor(obs, deterministic)[0]
