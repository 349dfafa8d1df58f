"""The message layer over real rclpy: two processes exchange our messages and sensor images."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

rclpy = pytest.importorskip("rclpy")
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from builtin_interfaces.msg import Time  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from dysta_ros.msg import ActionChunk, TokenStats  # noqa: E402
from ros_helpers import spin_until  # noqa: E402

# The publisher runs in its own process: it waits until our subscriptions match, publishes
# one message of each type with known contents, and repeats until we close its stdin.
PUBLISHER = textwrap.dedent(
    """
    import sys, threading, rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy, DurabilityPolicy
    from sensor_msgs.msg import Image
    from dysta_ros.msg import ActionChunk, TokenStats

    rclpy.init()
    node = rclpy.create_node("test_message_publisher")
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
    pubs = {name: node.create_publisher(t, "/test/" + name, qos)
            for name, t in [("chunk", ActionChunk), ("stats", TokenStats), ("image", Image)]}
    chunk = ActionChunk()
    chunk.header.stamp.sec, chunk.header.stamp.nanosec = 12, 345
    chunk.header.frame_id = "base_link"
    chunk.action_space = "joint_position"
    chunk.names = ["joint%d" % i for i in range(1, 7)]
    chunk.horizon, chunk.dim, chunk.dt = 4, 6, 0.1
    chunk.actions = [0.25 * k for k in range(24)]
    chunk.inference_start.sec, chunk.inference_end.sec = 100, 101
    chunk.strategy, chunk.sequence = "dysta", 7
    stats = TokenStats()
    stats.header.stamp.sec = 12
    stats.strategy, stats.sequence = "gotohunt", 7
    stats.context_tokens, stats.recomputed_tokens = 300, 40
    stats.static_l1_tokens, stats.static_l2_tokens, stats.dynamic_tokens = 133, 107, 16
    stats.history_frames, stats.frames_attended = 32, 4
    stats.recached_l1, stats.recached_l2 = False, True
    stats.preprocess_ms, stats.vision_ms, stats.gate_ms = 1.5, 20.0, 0.5
    stats.backbone_ms, stats.action_head_ms, stats.total_ms = 80.0, 30.0, 132.0
    stats.flops_ratio = 0.25
    stats.stat_keys, stats.stat_values = ["static_l1_tokens", "reused_tokens"], [133.0, 12.5]
    image = Image()
    image.header.stamp.sec = 12
    image.height, image.width, image.encoding, image.step = 2, 3, "rgb8", 9
    image.data = bytes(range(18))
    while not all(p.get_subscription_count() for p in pubs.values()):
        rclpy.spin_once(node, timeout_sec=0.05)
    print("matched", flush=True)
    for name, msg in [("chunk", chunk), ("stats", stats), ("image", image)]:
        pubs[name].publish(msg)
    threading.Thread(target=lambda: rclpy.spin(node), daemon=True).start()
    sys.stdin.read()
    """
)


@pytest.fixture
def ros_node():
    rclpy.init()
    node = rclpy.create_node("test_message_subscriber")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    yield node, executor
    executor.shutdown()
    node.destroy_node()
    rclpy.shutdown()


def test_messages_cross_process_boundary_field_by_field(ros_node):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    node, executor = ros_node
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
    received = {}
    for name, msg_type in [("chunk", ActionChunk), ("stats", TokenStats), ("image", Image)]:
        node.create_subscription(msg_type, "/test/" + name,
                                 lambda m, n=name: received.setdefault(n, m), qos)
    publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
    try:
        assert spin_until(executor, lambda: len(received) == 3, timeout_s=30.0), received.keys()
    finally:
        publisher.stdin.close()
        publisher.wait(timeout=10)

    chunk = received["chunk"]
    assert (chunk.header.stamp.sec, chunk.header.stamp.nanosec) == (12, 345)
    assert chunk.header.frame_id == "base_link"
    assert chunk.action_space == "joint_position"
    assert list(chunk.names) == [f"joint{i}" for i in range(1, 7)]
    assert (chunk.horizon, chunk.dim) == (4, 6)
    assert chunk.dt == pytest.approx(0.1)
    actions = np.asarray(chunk.actions, dtype=np.float32).reshape(chunk.horizon, chunk.dim)
    np.testing.assert_array_equal(actions, 0.25 * np.arange(24, dtype=np.float32).reshape(4, 6))
    assert (chunk.inference_start.sec, chunk.inference_end.sec) == (100, 101)
    assert (chunk.strategy, chunk.sequence) == ("dysta", 7)

    stats = received["stats"]
    assert (stats.strategy, stats.sequence) == ("gotohunt", 7)
    assert (stats.context_tokens, stats.recomputed_tokens) == (300, 40)
    assert (stats.static_l1_tokens, stats.static_l2_tokens, stats.dynamic_tokens) == (133, 107, 16)
    assert (stats.history_frames, stats.frames_attended) == (32, 4)
    assert (stats.recached_l1, stats.recached_l2) == (False, True)
    stages = (stats.preprocess_ms, stats.vision_ms, stats.gate_ms, stats.backbone_ms, stats.action_head_ms,
              stats.total_ms)
    assert stages == pytest.approx((1.5, 20.0, 0.5, 80.0, 30.0, 132.0))
    assert stats.flops_ratio == pytest.approx(0.25)
    assert dict(zip(stats.stat_keys, stats.stat_values)) == {"static_l1_tokens": 133.0, "reused_tokens": 12.5}

    image = received["image"]
    assert (image.height, image.width, image.encoding, image.step) == (2, 3, "rgb8", 9)
    assert bytes(image.data) == bytes(range(18))


@settings(max_examples=300, deadline=None)
@given(st.integers(1_600_000_000, 2_100_000_000), st.integers(0, 999_999_999))
def test_stamps_round_trip_through_float_seconds(sec, nanosec):
    # a chunk is stamped with its frame's stamp, read as float seconds: it must come back the
    # same float (it came back up to ~240 ns off, and a stamp lookup then missed the frame)
    from dysta_ros.nodes import conversions as conv

    seconds = conv.to_seconds(Time(sec=sec, nanosec=nanosec))
    stamp = conv.to_stamp(seconds)
    assert conv.to_seconds(stamp) == seconds
    assert 0 <= stamp.nanosec < 1_000_000_000
    assert abs((stamp.sec - sec) * 10**9 + stamp.nanosec - nanosec) < 250  # float seconds' own spacing
