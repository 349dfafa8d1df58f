"""Robot configuration: joints by name, limits, workspace, cameras and command outputs, from YAML.

A robot config (`config/robots/<name>.yaml`) is all it takes to drive another arm. The policy
node reads joints and camera topics from it, the chunk executor its limits, workspace and
outputs, and the simulation its joint names; all of them load it through `load_robot_config`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import yaml

from dysta_ros.errors import ConfigError, InputError

ACTION_SPACES = ("joint_position", "ee_pose", "ee_twist")
COMMAND_OUTPUTS = ("joint_trajectory", "forward_position", "ee_pose", "ee_twist")
# Which action space each command output can carry.
OUTPUT_ACTION_SPACE = {
    "joint_trajectory": "joint_position",
    "forward_position": "joint_position",
    "ee_pose": "ee_pose",
    "ee_twist": "ee_twist",
}
PACKAGE = "dysta_ros"


def config_dirs() -> list[Path]:
    """Return the directories that may hold this package's config/, source tree first."""
    dirs = [Path(__file__).resolve().parents[1] / "config"]
    # A sourced ROS 2 workspace lists its install prefixes here (what ament_index reads).
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            dirs.append(Path(prefix) / "share" / PACKAGE / "config")
    return [d for d in dirs if d.is_dir()]


def config_path(kind: str, name: str) -> Path:
    """Resolve `name` (a YAML path, or a name under config/<kind>/) to an existing file."""
    candidate = Path(name).expanduser()
    if candidate.suffix in (".yaml", ".yml") or os.sep in name:
        if candidate.is_file():
            return candidate
        raise ConfigError(f"{kind} config file {name!r} does not exist")
    searched = []
    for directory in config_dirs():
        path = directory / kind / f"{name}.yaml"
        if path.is_file():
            return path
        searched.append(directory / kind)
    available = sorted({p.stem for d in searched for p in d.glob("*.yaml")})
    raise ConfigError(f"no {kind} config named {name!r}; available: {', '.join(available) or 'none'} "
                      f"(searched {', '.join(str(d) for d in searched) or 'no config directory'})")


def load_yaml(path: Path) -> dict:
    """Read a YAML mapping; raise ConfigError naming the file on any problem."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values, not {type(data).__name__}")
    return data


@dataclass(frozen=True)
class CameraConfig:
    """One camera: the model's name for it and the topic it publishes on."""

    name: str  # matches one of the model's camera names
    topic: str  # sensor_msgs/Image, or sensor_msgs/CompressedImage when it ends in /compressed
    frame_id: str = ""


@dataclass(frozen=True)
class Workspace:
    """Where end-effector commands may go: a box in the base frame, and twist speed limits."""

    min_xyz: tuple[float, float, float]  # m, the box's lower corner in base_frame
    max_xyz: tuple[float, float, float]  # m, its upper corner
    max_linear_speed: float  # m/s, the most |(vx, vy, vz)| of a twist
    max_angular_speed: float  # rad/s, the most |(wx, wy, wz)| of a twist

    def __post_init__(self):
        def fail(field_name: str, message: str):
            raise ConfigError(f"workspace.{field_name}: {message}")

        for key in ("min_xyz", "max_xyz"):
            values = getattr(self, key)
            if len(values) != 3:
                fail(key, f"needs 3 values (x, y, z in m), got {len(values)}")
            if not np.all(np.isfinite(values)):
                fail(key, f"values must be finite, got {list(values)}")
        if np.any(np.asarray(self.min_xyz) >= np.asarray(self.max_xyz)):
            fail("min_xyz", f"must be below max_xyz on every axis, got {list(self.min_xyz)} and "
                            f"{list(self.max_xyz)}")
        for key in ("max_linear_speed", "max_angular_speed"):
            value = getattr(self, key)
            if not (np.isfinite(value) and value > 0):
                fail(key, f"must be a positive finite number, got {value}")

    @property
    def lower(self) -> np.ndarray:
        return np.asarray(self.min_xyz, dtype=np.float64)

    @property
    def upper(self) -> np.ndarray:
        return np.asarray(self.max_xyz, dtype=np.float64)

    @classmethod
    def from_dict(cls, data, source: str = "robot config") -> Workspace:
        """Build from the `workspace` mapping of a robot config; every key is required."""
        keys = [f.name for f in fields(cls)]
        if not isinstance(data, dict) or set(data) != set(keys):
            given = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ConfigError(f"{source}: workspace needs exactly the keys {', '.join(keys)}; got {given}")
        try:
            return cls(min_xyz=tuple(float(v) for v in data["min_xyz"]),
                       max_xyz=tuple(float(v) for v in data["max_xyz"]),
                       max_linear_speed=float(data["max_linear_speed"]),
                       max_angular_speed=float(data["max_angular_speed"]))
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise ConfigError(f"{source}: {exc}") from exc
            raise ConfigError(f"{source}: workspace: {exc} (min_xyz and max_xyz are lists of 3 numbers, "
                              "the speeds are numbers)") from exc


@dataclass(frozen=True)
class RobotConfig:
    """A robot as the nodes see it; every field is validated on construction."""

    name: str
    joints: tuple[str, ...]  # order of the model's state and action vectors
    position_lower: tuple[float, ...]  # rad (or m for prismatic joints), one per joint
    position_upper: tuple[float, ...]
    velocity: tuple[float, ...]  # max |velocity| per joint, units per second
    cameras: tuple[CameraConfig, ...]
    state_topic: str = "/joint_states"
    base_frame: str = "base_link"
    action_space: str = "joint_position"  # one of ACTION_SPACES
    command_output: str = "joint_trajectory"  # one of COMMAND_OUTPUTS
    command_topics: dict[str, str] = field(default_factory=dict)  # output -> topic
    workspace: Workspace | None = None  # bounds of ee_pose / ee_twist commands; None: unbounded
    # The checkpoint's units: its names for the joints' state/action dimensions, and
    # ROS value = model value * scale + offset, per joint. Empty: names unchecked, units equal.
    model_features: tuple[str, ...] = ()
    model_scale: tuple[float, ...] = ()
    model_offset: tuple[float, ...] = ()

    def __post_init__(self):
        def fail(field_name: str, message: str):
            raise ConfigError(f"robot {self.name!r}: {field_name}: {message}")

        if not self.joints:
            fail("joints", "at least one joint name is required")
        if len(set(self.joints)) != len(self.joints):
            fail("joints", f"names must be unique, got {list(self.joints)}")
        for key in ("position_lower", "position_upper", "velocity"):
            values = getattr(self, key)
            if len(values) != len(self.joints):
                fail(f"limits.{key}", f"needs one value per joint ({len(self.joints)}), got {len(values)}")
            if not np.all(np.isfinite(values)):
                fail(f"limits.{key}", f"values must be finite, got {list(values)}")
        if np.any(np.asarray(self.position_lower) >= np.asarray(self.position_upper)):
            fail("limits", "position_lower must be below position_upper for every joint")
        if np.any(np.asarray(self.velocity) <= 0):
            fail("limits.velocity", f"values must be positive, got {list(self.velocity)}")
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            fail("cameras", f"camera names must be unique, got {names}")
        if self.action_space not in ACTION_SPACES:
            fail("action_space", f"{self.action_space!r} is not one of {', '.join(ACTION_SPACES)}")
        if self.command_output not in COMMAND_OUTPUTS:
            fail("command_output", f"{self.command_output!r} is not one of {', '.join(COMMAND_OUTPUTS)}")
        if self.command_output not in self.command_topics:
            fail("command_topics", f"no topic for the command output {self.command_output!r}")
        unknown = set(self.command_topics) - set(COMMAND_OUTPUTS)
        if unknown:
            fail("command_topics",
                 f"unknown outputs {sorted(unknown)}; allowed: {', '.join(COMMAND_OUTPUTS)}")
        if self.workspace is not None and not isinstance(self.workspace, Workspace):
            fail("workspace", f"must be a Workspace or None, got {type(self.workspace).__name__}")
        for key in ("features", "scale", "offset"):
            values = getattr(self, f"model_{key}")
            if values and len(values) != len(self.joints):
                fail(f"model_units.{key}",
                     f"needs one value per joint ({len(self.joints)}), got {len(values)}")
        if self.model_scale and not all(np.isfinite(v) and v != 0 for v in self.model_scale):
            fail("model_units.scale", f"values must be finite and non-zero, got {list(self.model_scale)}")
        if self.model_offset and not np.all(np.isfinite(self.model_offset)):
            fail("model_units.offset", f"values must be finite, got {list(self.model_offset)}")

    @property
    def lower(self) -> np.ndarray:
        return np.asarray(self.position_lower, dtype=np.float64)

    @property
    def upper(self) -> np.ndarray:
        return np.asarray(self.position_upper, dtype=np.float64)

    @property
    def max_velocity(self) -> np.ndarray:
        return np.asarray(self.velocity, dtype=np.float64)

    def pick_joints(self, names, positions) -> np.ndarray:
        """Return this robot's joint positions (in `joints` order) from a JointState's name/position lists."""
        names, positions = list(names), list(positions)
        if len(names) != len(positions):
            raise InputError(f"joint state has {len(names)} names but {len(positions)} positions")
        if len(set(names)) != len(names):
            duplicated = sorted({n for n in names if names.count(n) > 1})
            raise InputError(f"joint state names are duplicated: {duplicated}")
        index = {n: i for i, n in enumerate(names)}
        missing = [j for j in self.joints if j not in index]
        if missing:
            raise InputError(f"joint state lacks joints {missing} of robot {self.name!r}")
        picked = np.array([positions[index[j]] for j in self.joints], dtype=np.float64)
        if not np.all(np.isfinite(picked)):
            bad = [j for j, v in zip(self.joints, picked) if not np.isfinite(v)]
            raise InputError(f"joint state has non-finite positions for {bad}")
        return picked

    def _units(self) -> tuple[np.ndarray, np.ndarray]:
        joints = len(self.joints)
        scale = np.asarray(self.model_scale or [1.0] * joints, dtype=np.float64)
        return scale, np.asarray(self.model_offset or [0.0] * joints, dtype=np.float64)

    def state_to_model(self, positions: np.ndarray) -> np.ndarray:
        """Return joint positions in ROS units (rad) as the checkpoint's state (e.g. degrees)."""
        scale, offset = self._units()
        return (np.asarray(positions, dtype=np.float64) - offset) / scale

    def actions_to_ros(self, actions: np.ndarray) -> np.ndarray:
        """Return (H, joints) actions in the checkpoint's units as ROS joint positions (rad)."""
        scale, offset = self._units()
        return (np.asarray(actions, dtype=np.float64) * scale + offset).astype(np.float32)

    def check_features(self, camera_names, state_names, action_names) -> None:
        """Raise ConfigError, with both lists, if a checkpoint's features don't match this robot.

        Names the checkpoint does not carry (empty lists) are not checked; dimensions always are.
        """
        cameras = sorted(c.name for c in self.cameras)
        if set(camera_names) - set(cameras):
            raise ConfigError(f"robot {self.name!r}: the checkpoint's cameras {list(camera_names)} do not "
                              f"match the robot config's cameras {cameras}")
        expected = list(self.model_features) or None
        for kind, names in (("state", state_names), ("action", action_names)):
            names = list(names or [])
            if expected and names and names != expected:
                raise ConfigError(f"robot {self.name!r}: the checkpoint's {kind} features {names} do not "
                                  f"match the robot config's model_units.features {expected}")
            if names and len(names) != len(self.joints):
                raise ConfigError(f"robot {self.name!r}: the checkpoint's {kind} features {names} do not "
                                  f"match the robot config's joints {list(self.joints)}")

    def camera_topics(self, camera_names: list[str]) -> list[str]:
        """Return the topics of the model's cameras, matched by name; raise if one is missing."""
        by_name = {c.name: c.topic for c in self.cameras}
        missing = [n for n in camera_names if n not in by_name]
        if missing:
            raise ConfigError(f"robot {self.name!r}: cameras: the model needs {missing}, the robot "
                              f"config has {sorted(by_name)}; add them or set camera_topics")
        return [by_name[n] for n in camera_names]

    @classmethod
    def from_dict(cls, data: dict, source: str = "robot config") -> RobotConfig:
        """Build from a parsed YAML mapping; unknown or missing keys raise ConfigError."""
        allowed = {"name", "joints", "limits", "cameras", "state_topic", "base_frame",
                   "action_space", "command_output", "command_topics", "workspace", "model_units"}
        unknown = set(data) - allowed
        if unknown:
            raise ConfigError(f"{source}: unknown keys {sorted(unknown)}; "
                              f"allowed: {', '.join(sorted(allowed))}")
        missing = {"name", "joints", "limits"} - set(data)
        if missing:
            raise ConfigError(f"{source}: missing keys {sorted(missing)}")
        limits = data["limits"] or {}
        limit_keys = {"position_lower", "position_upper", "velocity"}
        if not isinstance(limits, dict) or set(limits) != limit_keys:
            raise ConfigError(f"{source}: limits needs exactly the keys {sorted(limit_keys)}")
        units = data.get("model_units") or {}
        if not isinstance(units, dict) or set(units) - {"features", "scale", "offset"}:
            given = sorted(units) if isinstance(units, dict) else repr(units)
            raise ConfigError(f"{source}: model_units takes the keys features, scale, offset (lists, "
                              f"one entry per joint); got {given}")
        workspace = None
        if data.get("workspace") is not None:
            workspace = Workspace.from_dict(data["workspace"], source)
        try:
            cameras = tuple(CameraConfig(**camera) for camera in data.get("cameras") or [])
            return cls(
                name=str(data["name"]),
                joints=tuple(str(j) for j in data["joints"]),
                position_lower=tuple(float(v) for v in limits["position_lower"]),
                position_upper=tuple(float(v) for v in limits["position_upper"]),
                velocity=tuple(float(v) for v in limits["velocity"]),
                cameras=cameras,
                **{k: data[k] for k in ("state_topic", "base_frame", "action_space", "command_output")
                   if k in data},
                command_topics=dict(data.get("command_topics") or {}),
                workspace=workspace,
                model_features=tuple(str(f) for f in units.get("features") or ()),
                model_scale=tuple(float(v) for v in units.get("scale") or ()),
                model_offset=tuple(float(v) for v in units.get("offset") or ()),
            )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{source}: {exc} (cameras need name and topic, optionally frame_id; "
                              "limits and joints are lists)") from exc


def load_robot_config(name_or_path: str) -> RobotConfig:
    """Load config/robots/<name>.yaml (or a YAML path) into a validated RobotConfig."""
    path = config_path("robots", name_or_path)
    return RobotConfig.from_dict(load_yaml(path), source=str(path))
