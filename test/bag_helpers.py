"""Write tiny rosbag2 files from real rclpy messages, as a robot's recorder would see them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from builtin_interfaces.msg import Time
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from dysta_ros.bags import BagWriter, TopicQos
from dysta_ros.msg import ActionChunk

JOINTS = [f"joint{i}" for i in range(1, 7)]
LATENCY_S = 0.03  # receive time trails the header stamp, as on a network
SIZE = 24  # tiny images keep the tests quick


def ros_time(seconds: float) -> Time:
    return Time(sec=int(seconds), nanosec=int(round((seconds - int(seconds)) * 1e9)))


def frame_pixels(camera_index: int, t: float) -> np.ndarray:
    """Return a (SIZE, SIZE, 3) RGB frame whose content says which camera and when."""
    pixels = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    pixels[..., 0] = int(t * 20) % 256
    pixels[..., 1] = 40 + camera_index * 100
    column = int(t * 10) % SIZE  # a bar that moves, so frames differ
    pixels[:, column, 2] = 255
    return pixels


def joint_positions(t: float) -> np.ndarray:
    return np.array([np.sin(t + j) for j in range(6)], dtype=np.float64)


def expert_action(t: float) -> np.ndarray:
    """Return the commanded joint positions for time t: the state a little ahead."""
    return joint_positions(t + 0.2).astype(np.float32)


@dataclass(frozen=True)
class BagSpec:
    episodes: int = 2
    seconds: float = 1.2
    gap_s: float = 0.5
    camera_hz: float = 20.0
    state_hz: float = 50.0
    chunk_hz: float = 10.0
    horizon: int = 4
    dt: float = 0.1
    start_s: float = 1000.0


def image_message(camera_index: int, t: float, encoding: str) -> Image:
    rgb = frame_pixels(camera_index, t)
    pixels = rgb[..., ::-1] if encoding == "bgr8" else rgb
    return Image(header=_header(t, f"camera{camera_index}"), height=SIZE, width=SIZE,
                 encoding=encoding, is_bigendian=0, step=SIZE * 3,
                 data=np.ascontiguousarray(pixels).tobytes())


def _header(t: float, frame_id: str):
    from std_msgs.msg import Header
    return Header(stamp=ros_time(t), frame_id=frame_id)


def write_episode_bag(path: Path, spec: BagSpec = BagSpec(), storage: str = "mcap") -> Path:
    """Write `spec.episodes` episodes of two cameras, joint states and expert chunks."""
    messages = []  # (receive time, topic, serialized)
    t = spec.start_s
    for episode in range(spec.episodes):
        instruction = f"touch the red cube {episode}"
        messages.append((t - 0.01, "/dysta/instruction", String(data=instruction)))
        messages.append((t, "/dysta/episode", String(data=json.dumps(
            {"event": "start", "episode": episode, "task": "reach", "instruction": instruction}))))
        for k in range(int(spec.seconds * spec.camera_hz)):
            stamp = t + 0.001 + k / spec.camera_hz
            messages.append((stamp + LATENCY_S, "/camera/image_raw", image_message(0, stamp, "rgb8")))
            messages.append((stamp + LATENCY_S, "/wrist_camera/image_raw",
                             image_message(1, stamp, "bgr8")))
        for k in range(int(spec.seconds * spec.state_hz)):
            stamp = t + k / spec.state_hz
            messages.append((stamp + 0.002, "/joint_states", JointState(
                header=_header(stamp, "base_link"), name=JOINTS[::-1],  # order by name, not index
                position=list(joint_positions(stamp)[::-1]))))
        for k in range(int(spec.seconds * spec.chunk_hz)):
            stamp = t + k / spec.chunk_hz
            actions = np.stack([expert_action(stamp + i * spec.dt) for i in range(spec.horizon)])
            messages.append((stamp + 0.005, "/dysta/action_chunk", ActionChunk(
                header=_header(stamp, "base_link"), action_space="joint_position", names=JOINTS,
                horizon=spec.horizon, dim=6, dt=spec.dt, actions=actions.ravel().tolist(),
                strategy="expert", sequence=k)))
        t += spec.seconds
        messages.append((t, "/dysta/episode", String(data=json.dumps(
            {"event": "end", "episode": episode, "success": episode % 2 == 0, "steps": 12}))))
        t += spec.gap_s
    types = {"/camera/image_raw": "sensor_msgs/msg/Image",
             "/wrist_camera/image_raw": "sensor_msgs/msg/Image",
             "/joint_states": "sensor_msgs/msg/JointState",
             "/dysta/action_chunk": "dysta_ros/msg/ActionChunk",
             "/dysta/instruction": "std_msgs/msg/String",
             "/dysta/episode": "std_msgs/msg/String"}
    latched = {"/dysta/instruction", "/dysta/episode"}
    with BagWriter(path, storage=storage) as bag:
        for topic, msgtype in types.items():
            bag.add_topic(topic, msgtype, TopicQos(transient_local=topic in latched))
        for receive_s, topic, message in sorted(messages, key=lambda m: m[0]):
            bag.write(topic, int(round(receive_s * 1e9)), serialize_message(message))
    return path
