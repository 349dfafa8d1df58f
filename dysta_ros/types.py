"""The values that cross the core's one boundary: `step(observation) -> (chunk, stats)`.

Plain dataclasses of numpy arrays and floats: the ROS nodes, the MuJoCo loop, the bag
evaluator and the benchmark all build an `Observation` and read an `ActionChunk` and
`StepStats`, and none of them needs ROS to do it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

STAGES = ("preprocess", "vision", "gate", "backbone", "action_head", "total")


@dataclass
class Observation:
    """What the robot saw and felt at one instant."""

    stamp: float  # seconds; the camera frames' header stamp (the oldest of the cameras)
    images: dict[str, np.ndarray]  # camera name -> (H, W, 3) uint8 RGB
    state: np.ndarray  # (S,) float32 proprioception, in the robot config's joint order
    instruction: str = ""


@dataclass
class ActionChunk:
    """Actions predicted from one observation; action k is meant for stamp + k * dt."""

    stamp: float  # the observation's stamp
    actions: np.ndarray  # (H, D) float32, in robot units
    dt: float
    strategy: str = ""
    sequence: int = 0
    action_space: str = "joint_position"
    names: list[str] = field(default_factory=list)
    inference_start: float = 0.0  # time.time() when the step began
    inference_end: float = 0.0

    @property
    def horizon(self) -> int:
        return int(self.actions.shape[0])

    @property
    def dim(self) -> int:
        return int(self.actions.shape[1])


@dataclass
class StepStats:
    """What one policy step cost and which tokens it used (the TokenStats message)."""

    strategy: str = ""
    sequence: int = 0
    context_tokens: int = 0  # tokens the backbone attends to (cached ones included)
    recomputed_tokens: int = 0  # tokens the backbone computed this step
    static_l1_tokens: int = 0
    static_l2_tokens: int = 0
    dynamic_tokens: int = 0
    history_frames: int = 0
    frames_attended: int = 0
    recached_l1: bool = False
    recached_l2: bool = False
    stage_ms: dict[str, float] = field(default_factory=lambda: {s: 0.0 for s in STAGES})
    flops_ratio: float = 1.0  # backbone FLOPs relative to `full` on the same history
    vision_recomputed: float = 1.0  # share of the vision encoder's token work done this step
    # parts of stages worth their own column: connector (of vision), postprocess (of action_head)
    part_ms: dict[str, float] = field(default_factory=dict)
    # The strategy's own statistics, key -> number (TokenStats stat_keys / stat_values): what a
    # strategy reports travels here, not as fields of every layer.
    strategy_stats: dict[str, float] = field(default_factory=dict)

    # TokenStats fields older than strategy_stats (DySta's), kept for subscribers and filled from it.
    MESSAGE_FIELDS: ClassVar[dict[str, type]] = {
        "static_l1_tokens": int, "static_l2_tokens": int, "recached_l1": bool, "recached_l2": bool,
    }

    def fill_message_fields(self) -> None:
        """Set the older TokenStats fields from strategy_stats where the strategy reported them."""
        for name, kind in self.MESSAGE_FIELDS.items():
            if name in self.strategy_stats:
                setattr(self, name, kind(self.strategy_stats[name]))


@dataclass
class RuntimeSpec:
    """What a caller needs to know to feed the runtime and use its output."""

    camera_names: list[str]
    image_size: int
    state_dim: int
    action_dim: int
    horizon: int
    dt: float
    action_space: str
    preset: str
    strategy: str
    history: int
    tokens_per_frame: int
    # The checkpoint's names for the state/action dimensions, where it carries them.
    state_names: list[str] = field(default_factory=list)
    action_names: list[str] = field(default_factory=list)
