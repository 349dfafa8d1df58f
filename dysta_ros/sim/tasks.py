"""Tasks on the tabletop: seeded cube placements, colours over time, instruction, success check.

`reach`: touch the red cube among cubes of other colours.
`memory`: one cube flashes during the first moments, then all cubes look alike; touch the one
that flashed. Only a policy that remembers earlier frames can solve it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dysta_ros.errors import ConfigError

RED = (0.85, 0.1, 0.1, 1.0)
DISTRACTOR_COLOURS = ((0.1, 0.65, 0.2, 1.0), (0.15, 0.3, 0.85, 1.0), (0.9, 0.8, 0.1, 1.0))
GREY = (0.55, 0.55, 0.6, 1.0)
FLASH = (1.0, 0.95, 0.3, 1.0)

# Where cubes may be placed (m, in the base frame) and how far apart their centres stay.
WORKSPACE_X = (0.25, 0.45)
WORKSPACE_Y = (-0.22, 0.22)
MIN_SPACING = 0.11
TOUCH_TOLERANCE = 0.012  # m between the fingertip and a cube's surface that counts as touching


@dataclass(frozen=True)
class Placement:
    """One episode's layout: cube centres (N, 2) on the table, which one is the target."""

    positions: np.ndarray  # (N, 2) x, y
    target: int
    distractor_colours: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class Task:
    """A task: its instruction, and the cube colours it shows at each moment of an episode."""

    name: str
    instruction: str
    episode_seconds: float = 6.0  # an episode that has not touched a cube by then fails
    flash_seconds: float = 0.0  # memory: the target is marked only during this first span

    def place(self, seed: int, n_cubes: int) -> Placement:
        """Return seeded random cube positions (spread apart) and the target's index."""
        rng = np.random.default_rng(check_seed(seed))
        positions: list[np.ndarray] = []
        while len(positions) < n_cubes:  # rejection sampling; the workspace fits 3 easily
            candidate = rng.uniform((WORKSPACE_X[0], WORKSPACE_Y[0]), (WORKSPACE_X[1], WORKSPACE_Y[1]))
            if all(np.linalg.norm(candidate - p) >= MIN_SPACING for p in positions):
                positions.append(candidate)
        target = int(rng.integers(n_cubes))
        order = rng.permutation(len(DISTRACTOR_COLOURS))
        return Placement(np.array(positions), target,
                         tuple(DISTRACTOR_COLOURS[i] for i in order[: n_cubes - 1]))

    def colours(self, placement: Placement, seconds: float) -> list[tuple[float, ...]]:
        """Return each cube's RGBA at `seconds` into the episode."""
        n = len(placement.positions)
        if self.name == "reach":
            others = iter(placement.distractor_colours)
            return [RED if i == placement.target else next(others) for i in range(n)]
        flashing = seconds < self.flash_seconds
        return [FLASH if flashing and i == placement.target else GREY for i in range(n)]


TASKS: dict[str, Task] = {
    "reach": Task("reach", "touch the red cube"),
    "memory": Task("memory", "touch the cube that flashed", episode_seconds=7.0, flash_seconds=0.6),
}


def get_task(name: str) -> Task:
    """Return the task called `name`; an unknown name lists the valid ones."""
    if name not in TASKS:
        raise ConfigError(f"task: unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]


def check_seed(seed: int) -> int:
    """Return `seed` as an int; a negative one is a ConfigError (numpy's generators refuse it)."""
    if int(seed) != seed or seed < 0:
        raise ConfigError(f"seed: must be an integer >= 0, got {seed}")
    return int(seed)


def box_distance(point: np.ndarray, centre: np.ndarray, half: float) -> float:
    """Return the distance from `point` to an axis-aligned cube's surface (0 inside)."""
    outside = np.maximum(np.abs(point - centre) - half, 0.0)
    return float(np.linalg.norm(outside))
