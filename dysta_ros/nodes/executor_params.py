"""chunk_executor's parameters: ExecutorConfig's fields (defaults and ranges from it), and its own."""

from __future__ import annotations

import dataclasses

from dysta_ros.execution import BLENDINGS, EXECUTOR_RANGES, ExecutorConfig
from dysta_ros.nodes import params as P
from dysta_ros.robot import COMMAND_OUTPUTS

DEFAULTS = ExecutorConfig()  # the parameters' defaults and ranges are the config's own


def config_param(name: str, description: str, **kwargs) -> P.Param:
    """Return the ROS parameter of ExecutorConfig field `name`: its default and range from there."""
    low, high = EXECUTOR_RANGES.get(name, (None, None))
    return P.Param(name, getattr(DEFAULTS, name), description, low=low, high=high, **kwargs)


PARAMS = [
    P.Param("robot", "sim_arm", "robot config name (config/robots/<name>.yaml) or YAML path",
            read_only=True),
    config_param("control_rate_hz", "commands per second", read_only=True),
    config_param("blending", "how overlapping chunks combine", choices=BLENDINGS),
    config_param("ensemble_decay", "temporal_ensemble: chunk i (0 = oldest) weighs exp(-decay*i)"),
    config_param("max_chunk_age_s", "deadman: hold when no valid chunk came for this long"),
    config_param("max_state_age_s", "joint states older than this cannot start motion"),
    config_param("latency_compensation", "skip actions whose time (stamp + k*dt) has passed"),
    config_param("command_output", "override the robot config's output", read_only=True,
                 choices=("",) + COMMAND_OUTPUTS),
    config_param("dry_run", "log commands instead of publishing them"),
    config_param("trajectory_lookahead_s", "joint_trajectory: seconds of the plan in each trajectory "
                 "(0: one point, one period ahead)"),
    config_param("trajectory_rate_hz", "joint_trajectory: trajectories per second (at most the "
                 "control rate)"),
    P.Param("diagnostic_period_s", 1.0, "seconds between /diagnostics messages", read_only=True,
            low=0.01, high=60.0),
]
CONFIG_FIELDS = {f.name for f in dataclasses.fields(ExecutorConfig)}
