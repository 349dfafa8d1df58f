"""The robot side of `dysta-ros link`: chunk_executor, robot_link, cameras and a robot that follows.

A process of its own (in the robot's network namespace when the link is impaired), started by
nodes/link_bench.py as `python -m dysta_ros.nodes.link_probe SETTINGS_JSON`: it publishes sim
renders as the cameras and joint states of an arm that reaches each command, records every chunk,
command and hold it sees, prints "measured" when the measuring time is over (the orchestrator
may cut the link then), and writes what it recorded as JSON to `settings["out"]`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from dysta_ros.evaluation.link_report import CONTROL_RATE_HZ, MAX_CHUNK_AGE_S, ROBOT


def scene_frames(width: int, height: int, count: int = 4) -> list[np.ndarray]:
    """Sim renders of the tabletop (cubes placed by seed): frames that compress like a scene."""
    from dysta_ros.sim.env import SimConfig, SimEnv

    env = SimEnv(SimConfig(image_width=width, image_height=height))
    try:
        return [env.reset(seed=seed).images["main"] for seed in range(count)]
    finally:
        env.close()


def run_probe(settings: dict) -> int:
    """The robot: executor + robot_link + cameras, joint states and recorders; JSON to stdout's file."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Header
    from trajectory_msgs.msg import JointTrajectory

    from dysta_ros.msg import ActionChunk
    from dysta_ros.nodes import conversions as conv
    from dysta_ros.nodes.chunk_executor import ChunkExecutorNode
    from dysta_ros.nodes.image_conversion import rgb_to_image
    from dysta_ros.nodes.robot_link import RobotLinkNode
    from dysta_ros.nodes.spin import share_the_gil_finely
    from dysta_ros.robot import load_robot_config

    robot = load_robot_config(ROBOT)
    frames = [rgb_to_image(f, Image) for f in scene_frames(settings["width"], settings["height"])]
    share_the_gil_finely()
    rclpy.init()
    executor_node = ChunkExecutorNode(parameter_overrides=[
        Parameter("robot", value=ROBOT), Parameter("control_rate_hz", value=CONTROL_RATE_HZ),
        Parameter("max_chunk_age_s", value=MAX_CHUNK_AGE_S)])
    link_node = RobotLinkNode(parameter_overrides=[
        Parameter("robot", value=ROBOT), Parameter("jpeg_quality", value=settings["jpeg_quality"])])
    node = rclpy.create_node("link_probe")
    camera_pubs = [node.create_publisher(Image, c.topic, conv.CAMERA_QOS) for c in robot.cameras]
    state_pub = node.create_publisher(JointState, robot.state_topic, conv.STATE_QOS)
    joints = list(robot.joints)
    record = {"chunks": [], "commands": [], "holds": [], "frames_published": 0}
    position = {"q": [0.0] * len(joints)}

    def now() -> float:
        return node.get_clock().now().nanoseconds * 1e-9

    def publish_frames():
        frame = frames[record["frames_published"] % len(frames)]
        frame.header.stamp = node.get_clock().now().to_msg()
        for pub in camera_pubs:
            pub.publish(frame)
        record["frames_published"] += 1

    def publish_state():  # a robot that reaches each command: its state is the last command
        state_pub.publish(JointState(header=Header(stamp=conv.to_stamp(now())), name=joints,
                                     position=position["q"]))

    def on_chunk(msg):
        received, chunk = now(), conv.msg_to_chunk(msg)
        record["chunks"].append({"received": received, "stamp": chunk.stamp, "sequence": msg.sequence,
                                 "dt": chunk.dt, "inference_end": chunk.inference_end, "names": chunk.names,
                                 "actions": np.asarray(chunk.actions, np.float64).tolist()})

    def on_command(msg):
        if msg.points:
            position["q"] = list(msg.points[0].positions)
            record["commands"].append([now(), list(msg.points[0].positions)])

    def on_diagnostics(msg):  # the policy host's word on the clock it judges frame ages by
        for status in msg.status:
            if status.name == "policy_node: clock":
                record["clock"] = {"message": status.message, **{kv.key: kv.value for kv in status.values}}

    def watch_hold():
        record["holds"].append([now(), executor_node.holding or ""])

    node.create_timer(1.0 / settings["camera_rate"], publish_frames)
    node.create_timer(0.01, publish_state)
    node.create_timer(0.02, watch_hold)
    node.create_subscription(ActionChunk, "/dysta/action_chunk", on_chunk, conv.RELIABLE_QOS)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 20)
    node.create_subscription(JointTrajectory, robot.command_topics["joint_trajectory"], on_command, 50)
    spin = SingleThreadedExecutor()
    for n in (executor_node, link_node, node):
        spin.add_node(n)

    def spin_for(seconds: float, until=None):
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (until and until()):
            spin.spin_once(timeout_sec=0.01)

    try:
        spin_for(settings["startup_s"], until=lambda: bool(record["chunks"]))
        if not record["chunks"]:
            print("no-chunk", flush=True)
            return 1
        record["measure_start"] = now()
        link_start = {c.topic: (c.total_frames, c.total_bytes_out) for c in link_node.cameras}
        spin_for(settings["seconds"])
        record["measure_end"] = now()
        sent = {c.topic: (c.total_frames - link_start[c.topic][0], c.total_bytes_out - link_start[c.topic][1])
                for c in link_node.cameras}
        record["camera_bytes_per_s"] = {topic: n_bytes / settings["seconds"]
                                        for topic, (_, n_bytes) in sent.items()}
        record["camera_frame_bytes"] = {topic: n_bytes / max(1, n) for topic, (n, n_bytes) in sent.items()}
        record["raw_frame_bytes"] = len(frames[0].data)
        print("measured", flush=True)  # the orchestrator may cut the link now
        spin_for(settings["after_s"])
        record["executor_counts"] = dict(executor_node.core.counts)
    finally:
        spin.shutdown()
        for n in (node, link_node, executor_node):
            n.destroy_node()
        rclpy.try_shutdown()
        Path(settings["out"]).write_text(json.dumps(record))
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return run_probe(json.loads(argv[0]))


if __name__ == "__main__":
    sys.exit(main())
