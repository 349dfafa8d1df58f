"""A bag replayed into a live policy_node (on the bag's /clock) yields action chunks."""

from __future__ import annotations

import os
import subprocess
import sys

import rclpy
from bag_helpers import BagSpec, write_episode_bag
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.serialization import deserialize_message
from ros_helpers import spin_until
from sensor_msgs.msg import Image

from dysta_ros.bags import BagReader
from dysta_ros.msg import ActionChunk


def test_replay_into_a_live_policy_node_yields_chunks(tmp_path):
    from dysta_ros.nodes.policy_node import PolicyNode

    bag = write_episode_bag(tmp_path / "bag", BagSpec(episodes=1, seconds=3.0))
    with BagReader(bag) as reader:
        frame_stamps = {(m.header.stamp.sec, m.header.stamp.nanosec) for m in (
            deserialize_message(raw.data, Image) for raw in reader.messages(["/camera/image_raw"]))}
    rclpy.init()
    # The bag's stamps are from the past: the node runs on the player's /clock, as with
    # `ros2 bag play --clock` and use_sim_time.
    policy = PolicyNode(parameter_overrides=[
        Parameter("use_sim_time", value=True), Parameter("autostart", value=True),
        Parameter("camera_topics", value=["/camera/image_raw"]), Parameter("strategy", value="dysta"),
        Parameter("max_image_age_s", value=2.0), Parameter("max_state_age_s", value=2.0)])
    probe = rclpy.create_node("chunk_probe")
    chunks = []
    probe.create_subscription(ActionChunk, "/dysta/action_chunk", chunks.append, 50)
    executor = SingleThreadedExecutor()
    executor.add_node(policy)
    executor.add_node(probe)
    player = subprocess.Popen(
        [sys.executable, "-m", "dysta_ros.cli", "replay", str(bag), "--clock", "--topics",
         "/camera/image_raw", "/joint_states", "/dysta/instruction", "--wait-for-subscribers", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert spin_until(executor, lambda: len(chunks) >= 3, timeout_s=120), player.poll()
    finally:
        player.kill()
        player.communicate()
        executor.shutdown()
        policy.close()
        policy.destroy_node()
        probe.destroy_node()
        rclpy.try_shutdown()
    for chunk in chunks:
        # each chunk answers one of the replayed frames, stamped with that frame's header stamp
        assert (chunk.header.stamp.sec, chunk.header.stamp.nanosec) in frame_stamps
        assert chunk.strategy == "dysta" and chunk.horizon > 0 and chunk.dim == 6
    assert len({c.sequence for c in chunks}) == len(chunks)
