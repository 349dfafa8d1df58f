"""One policy step on the latest inputs: check them, decode the frames it uses, run the model.

No node here: policy_node hands in its input tracker, a clock, the runtime and where the chunk
goes; this reports the `inputs` and `inference` entries on the node's status board. Every
reason to hold (stale or bad input, a refused step) is reported and sends nothing.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from sensor_msgs.msg import CompressedImage, Image

from dysta_ros.errors import ConfigError, InferenceError, InputError
from dysta_ros.nodes.diagnostics import ERROR, OK, WARN, StatusBoard
from dysta_ros.nodes.image_conversion import image_to_rgb
from dysta_ros.nodes.inputs import LatestInputs
from dysta_ros.nodes.raw_frames import decode
from dysta_ros.nodes.robot_link import compressed_topic
from dysta_ros.nodes.step_report import StepReport
from dysta_ros.robot import RobotConfig
from dysta_ros.types import Observation

EE_AXES = {6: ["x", "y", "z", "roll", "pitch", "yaw"], 7: ["x", "y", "z", "qx", "qy", "qz", "qw"]}


def action_names_for(spec, robot: RobotConfig, topics_given: bool) -> list[str]:
    """Check that a model fits the robot; return the names of its action vector's entries.

    `topics_given`: the camera topics were set explicitly, so the robot config's camera names
    need not match the model's.
    """
    robot.check_features([] if topics_given else spec.camera_names, spec.state_names, spec.action_names)
    if spec.state_dim != len(robot.joints):
        raise ConfigError(f"model state_dim {spec.state_dim} != robot {robot.name!r}'s "
                          f"{len(robot.joints)} joints")
    if spec.action_space == "joint_position":
        if spec.action_dim != len(robot.joints):
            raise ConfigError(f"model action_dim {spec.action_dim} != robot {robot.name!r}'s "
                              f"{len(robot.joints)} joints")
        return list(robot.joints)
    if spec.action_dim in EE_AXES:
        return EE_AXES[spec.action_dim]
    raise ConfigError(f"model action space {spec.action_space} with dim {spec.action_dim}: "
                      f"end-effector actions need 6 (xyz+rpy) or 7 (xyz+quaternion)")


def camera_inputs(camera_names: list[str], robot: RobotConfig, topics: list[str],
                  transport: str = "raw") -> dict[str, tuple[str, type]]:
    """Return topic -> (model camera name, message type), in the model's camera order.

    `topics` given explicitly, or the robot config's cameras of those names; with `transport`
    "compressed", each topic's `/compressed` stream (robot_link's). A topic ending in
    `/compressed` carries CompressedImage, any other Image.
    """
    topics = list(topics) or robot.camera_topics(camera_names)
    if transport == "compressed":
        topics = [compressed_topic(t) for t in topics]
    if len(topics) != len(camera_names):
        raise ConfigError(f"camera_topics: the model takes {len(camera_names)} cameras {camera_names}, "
                          f"got {len(topics)} topics")
    return {topic: (name, CompressedImage if topic.rstrip("/").endswith("/compressed") else Image)
            for name, topic in zip(camera_names, topics)}


class PolicyStep:
    """Step the policy on fresh, new inputs; publish the chunk and stats, or hold and say why."""

    def __init__(self, inputs: LatestInputs, cameras: dict[str, tuple[str, type]], robot: RobotConfig,
                 action_names: list[str], board: StatusBoard, now: Callable[[], float],
                 settings: Callable[[], dict], runtime: Callable[[], object],
                 publish: Callable[[object, object], None], log):
        """Step with the given parts.

        `cameras`: topic -> (model camera name, message type), in the model's order;
        `runtime()` returns the runtime to step with (the node rebuilds it on a strategy
        change); `settings()` the node's parameter values.
        """
        self.inputs, self.cameras, self.robot = inputs, cameras, robot
        self.action_names, self.board, self.now, self.settings = action_names, board, now, settings
        self.runtime, self.publish, self.log = runtime, publish, log
        self.report = StepReport()
        self.episode_instruction: str | None = None
        self.stepped_with = None  # the runtime of the last step: a new one starts a new episode

    def reset(self) -> None:
        """Start afresh (each activation): counts, and the next step starts an episode."""
        self.report.reset()
        self.episode_instruction = self.stepped_with = None

    def on_failure(self, exc: Exception) -> None:
        """A step raised something unexpected: count it, report it, keep going."""
        self.report.errors += 1
        self.board.set("inference", ERROR, f"step failed: {type(exc).__name__}: {exc}")
        self.log.error(f"step failed: {exc!r}", throttle_duration_sec=1.0)

    def __call__(self) -> bool:
        """Step on the latest inputs if they are fresh and new; return whether it stepped."""
        v = self.settings()
        snapshot = self.inputs.take(self.now(), v["max_image_age_s"], v["max_state_age_s"])
        if not snapshot.stale and not snapshot.new_frames:
            return False  # woken by the wait's timeout with nothing new: nothing to report
        counts = self.inputs.frame_report  # called only where a status is set
        if snapshot.stale:
            self.board.set("inputs", WARN, "holding, stale input: " + ", ".join(snapshot.stale), **counts())
            return False
        images = {}
        for topic, (name, msg_type) in self.cameras.items():
            try:
                images[name] = image_to_rgb(decode(snapshot.frames[topic].msg, msg_type))
            except InputError as exc:
                self.board.set("inputs", ERROR, f"holding, bad frame on {topic}: {exc}", **counts())
                return False
        try:
            state = self.robot.pick_joints(snapshot.state.msg.name, snapshot.state.msg.position)
        except InputError as exc:
            self.board.set("inputs", ERROR, f"holding, bad joint state on {self.robot.state_topic}: {exc}",
                           **counts())
            return False
        runtime = self.runtime()
        if runtime is not self.stepped_with or snapshot.instruction != self.episode_instruction:
            runtime.reset()  # a new instruction (or strategy) starts a new episode
            self.stepped_with, self.episode_instruction = runtime, snapshot.instruction
        model_state = self.robot.state_to_model(state).astype(np.float32)  # e.g. rad -> LeRobot degrees
        observation = Observation(snapshot.stamp, images, model_state, snapshot.instruction)
        start = self.now()
        try:
            chunk, stats = runtime.step(observation)
        except (InputError, InferenceError, ConfigError) as exc:
            self.board.set("inputs", OK, "fresh", **counts())
            self.report.errors += 1
            self.board.set("inference", ERROR, f"holding, step refused: {exc}", errors=self.report.errors)
            self.log.error(f"step refused: {exc}", throttle_duration_sec=1.0)
            return True
        end = self.now()
        if chunk.action_space == "joint_position":
            chunk.actions = self.robot.actions_to_ros(chunk.actions)  # the checkpoint's units -> rad
        chunk.names, chunk.inference_start, chunk.inference_end = self.action_names, start, end
        self.publish(chunk, stats)
        # reported once the chunk is out: the counts are bookkeeping, not on the way to the robot
        self.board.set("inputs", OK, "fresh", **counts())
        values = self.report.stepped(stats, snapshot.received, snapshot.stamp, start, self.now())
        self.board.set("inference", OK, f"step {self.report.steps}", strategy=runtime.spec.strategy,
                       device=v["device"], **values)
        return True
