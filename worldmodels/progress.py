"""Where a run stands, as a value: the trainer hands it to agents and samplers, which never hold
a reference to the trainer (so nothing they compute depends on state a checkpoint misses)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    phase: str  # "offline" | "online"
    offline_updates: int  # gradient updates done in the offline phase
    env_steps: int  # online env steps taken
    updates: int  # gradient updates done in total (both phases)
    offline_budget: int  # trainer.offline_updates: the offline phase's length
    online_budget: int  # trainer.online_steps: the online phase's length
    last_score: float | None = None  # normalized score of the latest evaluation (None before any)

    @property
    def online(self) -> bool:
        return self.phase == "online"


@dataclass(frozen=True)
class EpisodeEnd:
    """An online episode that just ended (the agent's `on_episode_end` receives it)."""

    episode_return: float
    normalized_return: float | None  # D4RL-normalized, when the dataset has reference scores
    length: int
    rows: object  # LongTensor [length]: the episode's rows in the online store, in time order
    terminated: bool  # a true termination (else a time-limit truncation)
