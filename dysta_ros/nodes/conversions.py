"""Messages <-> core values at the edge: stamps, ActionChunk, TokenStats, commands; QoS profiles."""

from __future__ import annotations

import math

import numpy as np
from builtin_interfaces.msg import Duration, Time
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from dysta_ros import types
from dysta_ros.errors import InputError

# Cameras: the latest frame only, best effort (what camera drivers publish).
CAMERA_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                        reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE)
# Joint states arrive at hundreds of Hz; best effort keeps up with any publisher.
STATE_QOS = CAMERA_QOS
# What a joint-state *publisher* offers: reliable, as ros2_control's joint_state_broadcaster does,
# so reliable subscribers (robot_state_publisher, RViz) match; best-effort ones match it too.
JOINT_STATES_PUBLISHER_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                                        reliability=ReliabilityPolicy.RELIABLE,
                                        durability=DurabilityPolicy.VOLATILE)
# The instruction is set once and must reach nodes that start later.
LATCHED_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                         reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
# Chunks, stats, commands, e-stop: reliable; a late chunk is superseded by the next.
RELIABLE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                          reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
ESTOP_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                       reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
# Nodes that run against sim_node's /clock (publish_clock: true) take this override.
SIM_TIME = Parameter("use_sim_time", value=True)


def to_seconds(stamp) -> float:
    """Return a builtin_interfaces/Time as float seconds."""
    return stamp.sec + stamp.nanosec * 1e-9


def to_stamp(seconds: float) -> Time:
    """Return float seconds as builtin_interfaces/Time; to_seconds() gives back the same float.

    Whole seconds and the fraction apart: `seconds * 1e9` at today's epoch (~1.8e18) is a float
    spaced 256 ns apart, so a chunk stamped from its frame's stamp came out up to ~240 ns off it.
    """
    whole = math.floor(seconds)
    nanosec = int(round((seconds - whole) * 1e9))  # the difference is exact: both are near
    if nanosec == 1_000_000_000:
        whole, nanosec = whole + 1, 0
    return Time(sec=int(whole), nanosec=nanosec)


def to_duration(seconds: float) -> Duration:
    nanoseconds = int(round(seconds * 1e9))
    return Duration(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)


def chunk_to_msg(chunk: types.ActionChunk, frame_id: str = ""):
    """Return the dysta_ros/ActionChunk message of a core chunk."""
    from dysta_ros.msg import ActionChunk

    msg = ActionChunk()
    msg.header.stamp = to_stamp(chunk.stamp)
    msg.header.frame_id = frame_id
    msg.action_space = chunk.action_space
    msg.names = list(chunk.names)
    msg.horizon, msg.dim = chunk.horizon, chunk.dim
    msg.dt = float(chunk.dt)
    msg.actions = np.ascontiguousarray(chunk.actions, dtype=np.float32).ravel()
    msg.inference_start = to_stamp(chunk.inference_start)
    msg.inference_end = to_stamp(chunk.inference_end)
    msg.strategy = chunk.strategy
    msg.sequence = int(chunk.sequence)
    return msg


def msg_to_chunk(msg) -> types.ActionChunk:
    """Return the core chunk of an ActionChunk message; raise InputError if its sizes disagree."""
    actions = np.asarray(msg.actions, dtype=np.float32)
    if msg.horizon * msg.dim != actions.size:
        raise InputError(f"chunk says horizon {msg.horizon} x dim {msg.dim} = {msg.horizon * msg.dim} "
                         f"values but holds {actions.size}")
    if not math.isfinite(msg.dt):
        raise InputError(f"chunk dt is not finite: {msg.dt}")
    return types.ActionChunk(
        stamp=to_seconds(msg.header.stamp), actions=actions.reshape(msg.horizon, msg.dim), dt=msg.dt,
        strategy=msg.strategy, sequence=msg.sequence, action_space=msg.action_space,
        names=list(msg.names), inference_start=to_seconds(msg.inference_start),
        inference_end=to_seconds(msg.inference_end))


def stats_to_msg(stats: types.StepStats, stamp: float):
    """Return the dysta_ros/TokenStats message of a step's stats."""
    from dysta_ros.msg import TokenStats

    msg = TokenStats()
    msg.header.stamp = to_stamp(stamp)
    msg.strategy, msg.sequence = stats.strategy, int(stats.sequence)
    for name in ("context_tokens", "recomputed_tokens", "static_l1_tokens", "static_l2_tokens",
                 "dynamic_tokens", "history_frames", "frames_attended"):
        setattr(msg, name, int(getattr(stats, name)))
    msg.recached_l1, msg.recached_l2 = bool(stats.recached_l1), bool(stats.recached_l2)
    for stage, ms in stats.stage_ms.items():
        setattr(msg, f"{stage}_ms", float(ms))
    msg.flops_ratio = float(stats.flops_ratio)
    msg.stat_keys = list(stats.strategy_stats)
    msg.stat_values = [float(v) for v in stats.strategy_stats.values()]
    return msg


def trajectory_msg(joints, positions: np.ndarray, times_from_start, stamp: float | None = None):
    """Return a trajectory_msgs/JointTrajectory of positions (K, D) at times_from_start (K,).

    A zero stamp means "start now" to ros2_control's JointTrajectoryController; an empty
    trajectory (K = 0) makes it stop and hold the current position.
    """
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    msg = JointTrajectory()
    if stamp is not None:
        msg.header.stamp = to_stamp(stamp)
    msg.joint_names = list(joints)
    for row, t in zip(np.asarray(positions, dtype=np.float64), times_from_start):
        msg.points.append(JointTrajectoryPoint(positions=row.tolist(), time_from_start=to_duration(t)))
    return msg


def rpy_to_quaternion(roll: float, pitch: float, yaw: float) -> tuple[float, float, float, float]:
    """Return (x, y, z, w) of the rotation roll about x, then pitch about y, then yaw about z."""
    cr, sr = math.cos(roll / 2), math.sin(roll / 2)
    cp, sp = math.cos(pitch / 2), math.sin(pitch / 2)
    cy, sy = math.cos(yaw / 2), math.sin(yaw / 2)
    return (sr * cp * cy - cr * sp * sy, cr * sp * cy + sr * cp * sy,
            cr * cp * sy - sr * sp * cy, cr * cp * cy + sr * sp * sy)


def pose_msg(values: np.ndarray, frame_id: str, stamp: float):
    """Return geometry_msgs/PoseStamped of xyz + rpy (6) or xyz + quaternion xyzw (7)."""
    from geometry_msgs.msg import PoseStamped

    msg = PoseStamped()
    msg.header.stamp, msg.header.frame_id = to_stamp(stamp), frame_id
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in values[:3])
    if len(values) == 7:
        quaternion = np.asarray(values[3:], dtype=np.float64)
        quaternion = quaternion / max(np.linalg.norm(quaternion), 1e-12)
    else:
        quaternion = rpy_to_quaternion(*(float(v) for v in values[3:6]))
    o = msg.pose.orientation
    o.x, o.y, o.z, o.w = (float(v) for v in quaternion)
    return msg


def twist_msg(values: np.ndarray, frame_id: str, stamp: float):
    """Return geometry_msgs/TwistStamped of (vx, vy, vz, wx, wy, wz)."""
    from geometry_msgs.msg import TwistStamped

    msg = TwistStamped()
    msg.header.stamp, msg.header.frame_id = to_stamp(stamp), frame_id
    lin, ang = msg.twist.linear, msg.twist.angular
    lin.x, lin.y, lin.z, ang.x, ang.y, ang.z = (float(v) for v in values[:6])
    return msg
