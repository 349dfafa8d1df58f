"""Closed-loop episodes in MuJoCo without ROS: observe, policy step, execute part of the chunk.

Any policy with the runtime's boundary works: `step(observation) -> (chunk, stats)` and
`reset()` (the policy runtime, the scripted expert). The ROS demo runs the same episodes over
topics; this loop is the fast path for training data and success rates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from dysta_ros.errors import ConfigError
from dysta_ros.sim.env import Outcome, SimEnv
from dysta_ros.types import ActionChunk, Observation, StepStats


class Policy(Protocol):
    def step(self, observation: Observation) -> tuple[ActionChunk, StepStats]: ...

    def reset(self) -> None: ...


@dataclass
class Episode:
    """One episode's result with what happened at every control step."""

    task: str
    seed: int
    outcome: Outcome
    observations: list[Observation] = field(default_factory=list)  # one per control step
    actions: list[np.ndarray] = field(default_factory=list)  # (6,) joint targets, one per step
    stats: list[StepStats] = field(default_factory=list)  # one per policy step


def run_episode(env: SimEnv, policy: Policy, task: str, seed: int,
                execute_steps: int = 5, keep_observations: bool = True) -> Episode:
    """Run one episode: every `execute_steps` control steps the policy plans a new chunk."""
    if execute_steps < 1:
        raise ConfigError(f"execute_steps: {execute_steps} must be >= 1")
    observation = env.reset(task, seed)
    policy.reset()
    episode = Episode(task, seed, env.outcome)
    while not env.outcome.done:
        chunk, stats = policy.step(observation)
        episode.stats.append(stats)
        for action in chunk.actions[:execute_steps]:
            if keep_observations:
                episode.observations.append(observation)
            episode.actions.append(np.asarray(action, dtype=np.float32))
            observation, outcome = env.step(action)
            if outcome.done:
                break
    episode.outcome = env.outcome
    return episode
