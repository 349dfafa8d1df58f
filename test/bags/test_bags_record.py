"""`dysta-ros record`: sim expert episodes and live topics into MCAP, read back as episodes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from ros_helpers import spin_until
from rclpy.executors import SingleThreadedExecutor
from std_msgs.msg import String

from dysta_ros.bags import BagReader, load_episodes
from dysta_ros.evaluation.open_loop import EvalConfig, evaluate


def record(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "dysta_ros.cli", "record", *args],
                          capture_output=True, text=True, timeout=timeout, env=os.environ.copy())


@pytest.fixture(scope="module")
def sim_bag(tmp_path_factory):
    out = tmp_path_factory.mktemp("record") / "reach"
    result = record("--task", "reach", "--episodes", "2", "--seed", "3", "--image-size", "64",
                    "--out", str(out), "--json", str(out.parent / "record.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout


def test_sim_episodes_are_recorded_with_everything_a_robot_bag_has(sim_bag):
    out, stdout = sim_bag
    # The scripted expert solves reach; the recorder holds the executor between episodes, so
    # one episode's plan never drives the next (that sent seed 4 into the wrong cube).
    assert "2/2 episodes succeeded" in stdout, stdout
    with BagReader(out) as bag:
        counts, topics = bag.message_counts, bag.topics
        assert bag.qos("/dysta/instruction").transient_local
        assert not bag.qos("/camera/image_raw").reliable  # recorded as a camera offers it
    for topic in ("/camera/image_raw", "/wrist_camera/image_raw", "/camera/camera_info",
                  "/joint_states", "/dysta/action_chunk",
                  "/joint_trajectory_controller/joint_trajectory", "/dysta/instruction"):
        assert counts[topic] > 0, topic
    assert topics["/dysta/action_chunk"] == "dysta_ros/msg/ActionChunk"
    assert counts["/dysta/episode"] == 4 and counts["/dysta/episode_outcome"] == 2


def test_record_json_counts_what_the_bag_holds(sim_bag):
    out, _ = sim_bag
    document = json.loads((out.parent / "record.json").read_text())
    with BagReader(out) as bag:
        counts, topics = bag.message_counts, bag.topics
    assert {r["topic"]: (r["type"], r["messages"]) for r in document["runs"]} == {
        t: (topics[t], counts[t]) for t in topics}
    meta = document["meta"]
    assert meta["out"] == str(out) and meta["task"] == "reach" and meta["messages"] == sum(counts.values())
    assert [(e["seed"], e["success"]) for e in meta["episodes"]] == [(3, True), (4, True)]


def test_recorded_episodes_read_back_at_the_policy_rate(sim_bag):
    out, _ = sim_bag
    episodes = load_episodes(out, rate_hz=10.0)
    assert len(episodes) == 2
    for episode, seed in zip(episodes, (3, 4)):
        assert episode.outcome["success"] and episode.outcome["seed"] == seed
        assert episode.instruction == "touch the red cube"
        assert len(episode) >= 3
        observation = episode.observation(len(episode) - 1)
        assert observation.images["main"].shape == (64, 64, 3)
        assert observation.images["main"].std() > 0  # a rendered scene, not a blank frame
        # the expert's chunks were recorded: an action is in force at every step
        assert np.isfinite(episode.recorded_actions(episode.times)).all()
        # the arm moved toward the cube during the episode
        assert not np.allclose(episode.states[0], episode.states[-1], atol=1e-3)


def test_eval_on_a_recorded_sim_bag(sim_bag, tmp_path):
    out, _ = sim_bag
    results = evaluate(EvalConfig(bags=[str(out)], strategies=["dysta"], max_steps=3,
                                  report=str(tmp_path / "report")), progress=False)
    assert results["summary"]["dysta"]["steps"] == 6 and results["summary"]["dysta"]["failed_steps"] == 0
    assert (tmp_path / "report" / "report.md").exists()


def test_live_topics_are_recorded_until_interrupted(tmp_path):
    rclpy.init()
    node = rclpy.create_node("chatter_source")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    publisher = node.create_publisher(String, "/chatter", QoSProfile(
        depth=20, reliability=ReliabilityPolicy.RELIABLE))
    process = subprocess.Popen([sys.executable, "-m", "dysta_ros.cli", "record", "--topics", "/chatter",
                                "--out", str(tmp_path / "live"), "--json"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert spin_until(executor, lambda: publisher.get_subscription_count() > 0, timeout_s=60)
        for i in range(5):
            publisher.publish(String(data=f"hello {i}"))
        # acked: the recorder's reader holds them, not necessarily its bag yet; messages that had
        # arrived when Ctrl-C came are written (rclpy's handler used to destroy the node under
        # them: 0 or 3 of 5 recorded, 2 of 40 tries on a loaded machine)
        assert publisher.wait_for_all_acked(rclpy.duration.Duration(seconds=10))
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    assert process.returncode == 0, stderr
    with BagReader(tmp_path / "live") as bag:
        texts = [deserialize_message(m.data, String).data for m in bag.messages(["/chatter"])]
    assert texts == [f"hello {i}" for i in range(5)]
    # --json: stdout holds only the document; Ctrl-C ended the recording, which is kept
    assert json.loads(stdout)["runs"] == [{"topic": "/chatter", "type": "std_msgs/msg/String", "messages": 5}]


def test_record_refuses_to_overwrite_a_bag(tmp_path):
    (tmp_path / "exists").mkdir()
    result = record("--out", str(tmp_path / "exists"), "--duration", "1", timeout=120)
    assert result.returncode == 1 and "exists already" in result.stderr


def test_a_recording_that_matched_nothing_fails_naming_what_exists_and_leaves_no_bag(tmp_path):
    out = tmp_path / "typo"
    result = record("--topics", "/camera/image_rwa", "--duration", "1", "--out", str(out), timeout=120)
    assert result.returncode == 1, result.stderr
    assert "no such topic /camera/image_rwa; the graph has: " in result.stderr
    assert "/rosout" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()
    failed = record("--task", "pick", "--episodes", "1", "--out", str(out), timeout=120)
    assert failed.returncode == 1 and "pick" in failed.stderr and not out.exists(), failed.stderr


def test_a_recording_whose_sim_cannot_start_is_one_line_and_leaves_no_bag(tmp_path):
    # MuJoCo refuses an unknown MUJOCO_GL when the sim is built, after the bag was opened
    out = tmp_path / "reach"
    result = subprocess.run([sys.executable, "-m", "dysta_ros.cli", "record", "--task", "reach",
                             "--out", str(out)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "MUJOCO_GL": "no-such-backend"})
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "MUJOCO_GL" in result.stderr
    assert not out.exists()
