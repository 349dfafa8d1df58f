"""sim_node's parameters and topics (see sim_node.py), declared from this one list."""

from __future__ import annotations

from dysta_ros.nodes import params
from dysta_ros.nodes import topics as dysta_topics
from dysta_ros.sim.tasks import TASKS

INSTRUCTION_TOPIC = dysta_topics.INSTRUCTION  # relative: under the node's namespace (/dysta by default)
OUTCOME_TOPIC = dysta_topics.EPISODE_OUTCOME
CHUNK_TOPIC = dysta_topics.ACTION_CHUNK
DEFAULT_COMMAND_TOPICS = {"joint_trajectory": "/joint_trajectory_controller/joint_trajectory",
                          "forward_position": "/forward_position_controller/commands"}
MAX_WALL_STEP_S = 0.1  # a stalled process must not make the physics jump further than this

PARAMS = [
    params.Param("robot", "sim_arm", "robot config: a name under config/robots/ or a YAML path",
                 read_only=True),
    params.Param("task", "reach", "task of the next episode", choices=tuple(TASKS)),
    params.Param("seed", 0, "seed of the next episode (cube layout, start pose)", low=0, high=2**31 - 1),
    params.Param("image_width", 128, "camera image width (px)", read_only=True, low=16, high=2048),
    params.Param("image_height", 128, "camera image height (px)", read_only=True, low=16, high=2048),
    params.Param("physics_rate_hz", 50.0, "physics steps and /joint_states per second", read_only=True,
                 low=1.0, high=500.0),
    params.Param("camera_rate_hz", 10.0, "camera frames per second", low=0.5, high=60.0),
    params.Param("publish_clock", False, "publish /clock with sim time and stamp everything with it; "
                 "otherwise the physics follows the wall clock", read_only=True),
    # true: started on its own (`.venv/bin/sim_node`), the cameras go on after the first episode
    # instead of the policy holding on stale frames forever; demo and record drive ~/reset themselves
    params.Param("auto_reset", True, "start the next episode (seed + 1) when one ends; false: wait "
                 "for ~/reset"),
    params.Param("episode_seconds", 0.0, "time limit of the next episode (0: the task's own)",
                 low=0.0, high=3600.0),
    params.Param("expert", False, "publish the scripted expert's chunks on /dysta/action_chunk"),
    params.Param("expert_rate_hz", 3.0, "expert chunks per second", read_only=True, low=0.1, high=50.0),
    params.Param("expert_horizon", 10, "actions per expert chunk", read_only=True, low=1, high=200),
]
