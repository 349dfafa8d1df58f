"""Which topics of a bag are the policy's cameras, state, instruction and actions.

A bag from another robot works given one YAML file in this shape (config/bag_topics/).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from dysta_ros.errors import ConfigError
from dysta_ros.robot import config_path

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
ACTION_TYPES = (
    "dysta_ros/msg/ActionChunk",  # action k at header.stamp + k * dt
    "trajectory_msgs/msg/JointTrajectory",  # positions at header.stamp + time_from_start
    "std_msgs/msg/Float64MultiArray",  # a forward controller's command, at receive time
    "sensor_msgs/msg/JointState",  # commanded positions, at header.stamp
)


@dataclass(frozen=True)
class TopicMap:
    """Where a bag keeps what the policy reads and what the robot was commanded."""

    cameras: dict[str, str]  # model camera name -> image topic (Image or CompressedImage)
    state_topic: str = "/joint_states"  # sensor_msgs/JointState
    joints: tuple[str, ...] = ()  # state/action order by name; empty: the first message's order
    action_topic: str = "/dysta/action_chunk"
    action_type: str = "dysta_ros/msg/ActionChunk"  # one of ACTION_TYPES
    instruction_topic: str = "/dysta/instruction"  # std_msgs/String; absent topics are fine
    instruction: str = ""  # used when the bag holds no instruction
    episode_topic: str = "/dysta/episode"  # std_msgs/String JSON events; absent: one episode
    source: str = "<dict>"  # the file it came from, for error messages

    def __post_init__(self):
        if not self.cameras:
            raise ConfigError(f"{self.source}: cameras: give at least one camera name -> topic")
        if self.action_type not in ACTION_TYPES:
            raise ConfigError(f"{self.source}: action_type {self.action_type!r} is not one of "
                              f"{list(ACTION_TYPES)}")
        if len(set(self.joints)) != len(self.joints):
            raise ConfigError(f"{self.source}: joints has duplicate names: {list(self.joints)}")

    @classmethod
    def from_dict(cls, values: dict, source: str = "<dict>") -> TopicMap:
        """Build from a mapping; unknown keys are an error that lists the known ones."""
        known = {f for f in cls.__dataclass_fields__ if f != "source"}
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: expected a mapping with keys {sorted(known)}")
        if unknown := set(values) - known:
            raise ConfigError(f"{source}: unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
        cameras = values.get("cameras")
        if not isinstance(cameras, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in cameras.items()):
            raise ConfigError(f"{source}: cameras must map camera names to topic strings, "
                              f"got {cameras!r}")
        return cls(**{**values, "cameras": dict(cameras),
                      "joints": tuple(values.get("joints", ()))}, source=source)

    @classmethod
    def load(cls, name_or_path: str | Path) -> TopicMap:
        """Load a YAML file, or a bundled mapping by name (config/bag_topics/<name>.yaml)."""
        path = config_path("bag_topics", str(name_or_path))
        try:
            values = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        return cls.from_dict(values, source=str(path))

    def for_cameras(self, names: Iterable[str] | None) -> TopicMap:
        """This map with only the cameras a model reads: a camera it does not use is not required.

        None (the model's cameras are not known yet), or names the map lacks entirely: the map
        as it is (the model's compatibility check then names the missing cameras).
        """
        wanted = set(names or ())
        used = {camera: topic for camera, topic in self.cameras.items() if camera in wanted}
        return replace(self, cameras=used) if used else self

    def topics(self) -> list[str]:
        """Return every topic this map reads."""
        return [*self.cameras.values(), self.state_topic, self.action_topic,
                self.instruction_topic, self.episode_topic]


def default_topic_map() -> TopicMap:
    """Return the mapping of bags recorded from the bundled sim arm."""
    return TopicMap.load("sim_arm")

