"""`dysta-ros replay`: a bag's raw messages on live topics, in order, with the recorded pacing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import rclpy
from bag_helpers import BagSpec, write_episode_bag
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.serialization import deserialize_message
from ros_helpers import spin_until
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from dysta_ros.bags import BagMessage, BagReader
from dysta_ros.bags.playback import paced
from dysta_ros.errors import ConfigError

PLAYED = ["/camera/image_raw", "/joint_states", "/dysta/instruction"]


def test_pacing_follows_recorded_offsets_divided_by_rate():
    clock = {"t": 100.0}
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        clock["t"] += seconds

    messages = [BagMessage("/a", "std_msgs/msg/String", ns, b"") for ns in
                (5_000_000_000, 5_000_000_000, 5_400_000_000, 6_000_000_000)]
    out = list(paced(messages, rate=2.0, now=lambda: clock["t"], sleep=sleep))
    assert out == messages
    assert sleeps == pytest.approx([0.2, 0.3])  # offsets 0, 0, 0.4, 1.0 s at twice the speed
    with pytest.raises(ConfigError, match="rate must be > 0"):
        list(paced(messages, rate=0.0))


def test_a_loop_over_nothing_to_play_ends(tmp_path):
    from dysta_ros.bags.playback import play

    bag = write_episode_bag(tmp_path / "bag", BagSpec(episodes=1, seconds=0.3))
    # no topic chosen (a bag of command topics only, left out): it ended at once, not spinning
    assert list(play(bag, [], loop=True)) == []
    looped = play(bag, ["/dysta/instruction"], rate=1000.0, loop=True)
    assert [next(looped).topic for _ in range(3)] == ["/dysta/instruction"] * 3  # a real loop goes on


def _start_replay(bag, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "dysta_ros.cli", "replay", str(bag), "--topics", *PLAYED,
         "--wait-for-subscribers", "30", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())


@pytest.fixture
def listener():
    rclpy.init()
    node = rclpy.create_node("replay_listener")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    received = {topic: [] for topic in PLAYED + ["/clock"]}

    def keep(topic):
        return lambda data: received[topic].append(data)

    node.create_subscription(Image, "/camera/image_raw", keep("/camera/image_raw"),
                             qos_profile_sensor_data, raw=True)
    node.create_subscription(JointState, "/joint_states", keep("/joint_states"), 50, raw=True)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    node.create_subscription(String, "/dysta/instruction", keep("/dysta/instruction"), latched,
                             raw=True)
    node.create_subscription(Clock, "/clock", keep("/clock"), 50, raw=True)
    yield executor, received
    executor.shutdown()
    node.destroy_node()
    rclpy.try_shutdown()


def test_replay_publishes_the_bags_raw_messages_in_order(tmp_path, listener):
    executor, received = listener
    bag = write_episode_bag(tmp_path / "bag", BagSpec(episodes=1, seconds=0.6))
    with BagReader(bag) as reader:
        recorded = {t: [m.data for m in reader.messages([t])] for t in PLAYED}
    process = _start_replay(bag, "--rate", "2", "--clock", "--json")
    try:
        assert spin_until(executor, lambda: len(received["/joint_states"]) == len(
            recorded["/joint_states"]) and process.poll() is not None, timeout_s=60)
    finally:
        process.kill()
    stdout, stderr = process.communicate()
    assert process.returncode == 0, stderr
    # reliable topics arrive complete and in order; the wire may pad to 4 bytes, nothing more
    for topic, cls in (("/joint_states", JointState), ("/dysta/instruction", String)):
        assert [deserialize_message(m, cls) for m in received[topic]] == [
            deserialize_message(m, cls) for m in recorded[topic]]
        assert all(r.startswith(b.rstrip(b"\0")) for r, b in zip(received[topic], recorded[topic]))
    # camera frames go out best effort, as a camera driver sends them: whatever arrives is intact
    frames = [deserialize_message(m, Image) for m in recorded["/camera/image_raw"]]
    assert received["/camera/image_raw"]
    for data in received["/camera/image_raw"]:
        assert deserialize_message(data, Image) in frames
    clock = [deserialize_message(c, Clock).clock for c in received["/clock"]]
    seconds = [c.sec + c.nanosec * 1e-9 for c in clock]
    assert seconds == sorted(seconds) and 999.9 < seconds[0] < seconds[-1] < 1001.0
    # --json: stdout is the {runs, meta} document, one run per topic with what it published
    document = json.loads(stdout)
    assert {r["topic"]: r["messages"] for r in document["runs"]} == {t: len(m) for t, m in recorded.items()}
    assert document["meta"]["messages"] == sum(map(len, recorded.values()))
    assert not document["meta"]["interrupted"]


def test_replay_loops_until_interrupted(tmp_path, listener):
    executor, received = listener
    bag = write_episode_bag(tmp_path / "bag", BagSpec(episodes=1, seconds=0.3))
    with BagReader(bag) as reader:
        once = reader.message_counts["/joint_states"]
    process = _start_replay(bag, "--rate", "3", "--loop", "--clock", "--json", str(tmp_path / "replay.json"))
    try:
        assert spin_until(executor, lambda: len(received["/joint_states"]) > 2 * once, timeout_s=60)
        # /clock goes back to the bag's start with each pass, as the messages' stamps do (it
        # stayed at the first pass's end: nothing newer than that ever came)
        def went_back() -> bool:
            seconds = [_seconds(c) for c in received["/clock"]]
            return any(later < earlier for earlier, later in zip(seconds, seconds[1:]))

        assert spin_until(executor, went_back, timeout_s=60)
        assert process.poll() is None  # still playing
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0
    # Ctrl-C ends a loop: the result says so and counts what went out until then
    document = json.loads((tmp_path / "replay.json").read_text())
    played = {r["topic"]: r["messages"] for r in document["runs"]}
    # (more than 2 passes arrived; the one published as the signal landed may go uncounted)
    assert document["meta"]["interrupted"] and document["meta"]["loop"]
    assert played["/joint_states"] >= 2 * once


def _seconds(clock_data: bytes) -> float:
    clock = deserialize_message(clock_data, Clock).clock
    return clock.sec + clock.nanosec * 1e-9


def test_replay_of_a_damaged_bag_names_the_file_without_a_traceback(tmp_path):
    bag = write_episode_bag(tmp_path / "bag", BagSpec(episodes=1, seconds=0.3))
    missing = subprocess.run([sys.executable, "-m", "dysta_ros.cli", "replay", str(bag),
                              "--topics", "/nope"], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "has no topics ['/nope']" in missing.stderr
    (mcap,) = bag.glob("*.mcap")
    mcap.write_bytes(mcap.read_bytes()[:200])
    result = subprocess.run([sys.executable, "-m", "dysta_ros.cli", "replay", str(bag)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert str(bag) in result.stderr and "Traceback" not in result.stderr


def test_replay_leaves_command_topics_out_unless_asked(tmp_path):
    from dysta_ros.bags.playback import played_topics
    from dysta_ros.nodes.bag_player import BagPlayer

    bag = write_episode_bag(tmp_path / "bag", BagSpec(episodes=1, seconds=0.3))
    with BagReader(bag) as reader:
        recorded = reader.topics
    assert recorded["/dysta/action_chunk"] == "dysta_ros/msg/ActionChunk"
    chosen, left_out = played_topics(str(bag), recorded, None, include_commands=False)
    assert left_out == ["/dysta/action_chunk"] and "/dysta/action_chunk" not in chosen
    assert set(PLAYED) <= set(chosen)
    everything, _ = played_topics(str(bag), recorded, None, include_commands=True)
    assert "/dysta/action_chunk" in everything
    rclpy.init()
    try:
        player = BagPlayer(str(bag))
        assert "/dysta/action_chunk" not in player.topics and "/joint_states" in player.topics
        player.destroy_node()
    finally:
        rclpy.try_shutdown()
    asked = subprocess.run([sys.executable, "-m", "dysta_ros.cli", "replay", str(bag), "--topics",
                            "/dysta/action_chunk"], capture_output=True, text=True, timeout=120)
    assert asked.returncode == 2 and "--include-commands" in asked.stderr, asked.stderr
    assert "Traceback" not in asked.stderr


def test_replay_never_sends_commands_to_a_listening_controller_unless_forced(tmp_path):
    from dysta_ros.msg import ActionChunk

    bag = write_episode_bag(tmp_path / "bag", BagSpec(episodes=1, seconds=0.3))
    with BagReader(bag) as reader:
        chunks = reader.message_counts["/dysta/action_chunk"]
    rclpy.init()
    node = rclpy.create_node("controller_stand_in")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    received = []
    node.create_subscription(ActionChunk, "/dysta/action_chunk", received.append, 50, raw=True)
    command = [sys.executable, "-m", "dysta_ros.cli", "replay", str(bag), "--include-commands"]
    try:
        refused = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        spin_until(executor, lambda: refused.poll() is not None, timeout_s=120)
        _, err = refused.communicate(timeout=30)
        assert refused.returncode == 2, err
        assert "/dysta/action_chunk (subscribed by " in err and ") has a subscriber" in err
        assert "--force" in err and "Traceback" not in err and err.strip().count("\n") == 0
        assert received == []
        # the chunks only, once the controller is matched: published before, they would be lost
        forced = subprocess.Popen(command + ["--force", "--topics", "/dysta/action_chunk",
                                             "--wait-for-subscribers", "60"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert spin_until(executor, lambda: forced.poll() is not None and len(received) == chunks,
                          timeout_s=120)
        assert forced.returncode == 0
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    lone = subprocess.run([*command[:-1], "--force"], capture_output=True, text=True, timeout=120)
    assert lone.returncode == 2 and "--force applies to command topics" in lone.stderr


def test_ctrl_c_ends_a_replay_with_status_0_wherever_it_lands(tmp_path):
    """Ctrl-C ends run() with 0 wherever the signal lands, its KeyboardInterrupt never escaping.

    The replay runs in this process at full speed (no pacing sleeps), so most signals land while
    it publishes. The race that made `replay` die of SIGINT (exit -2) under load needs the
    context to go down inside that publish (see bag_player.run); too narrow to hit on demand, so
    this checks the outcome, ten times.
    """
    import argparse
    import threading
    import time

    from dysta_ros.nodes import bag_player

    bag = write_episode_bag(tmp_path / "bag", BagSpec(episodes=1, seconds=0.3))
    parser = argparse.ArgumentParser()
    bag_player.add_arguments(parser)
    args = parser.parse_args([str(bag), "--rate", "1000", "--loop", "--topics", *PLAYED])

    returned = threading.Event()

    def interrupt_once_playing():
        deadline = time.monotonic() + 60
        while not rclpy.ok() and time.monotonic() < deadline:  # run() has started ROS
            time.sleep(0.005)
        time.sleep(0.3)  # into the loop
        if not returned.is_set():  # never interrupt pytest itself
            os.kill(os.getpid(), signal.SIGINT)

    for _ in range(10):
        returned.clear()
        interrupter = threading.Thread(target=interrupt_once_playing)
        interrupter.start()
        try:
            status = bag_player.run(args)
        finally:
            returned.set()
            interrupter.join()
        assert status == 0
