"""An e-stop an operator asked for is logged as a warning on /rosout, not as an error."""

import pytest

rclpy = pytest.importorskip("rclpy")
from rcl_interfaces.msg import Log  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from ros_helpers import spin_until  # noqa: E402
from std_msgs.msg import Bool  # noqa: E402

from dysta_ros.nodes import conversions as conv  # noqa: E402
from dysta_ros.nodes.chunk_executor import ChunkExecutorNode  # noqa: E402


def test_estop_latch_logs_warn():
    rclpy.init()
    try:
        executor_node = ChunkExecutorNode()
        probe = rclpy.create_node("estop_log_probe")
        spin = SingleThreadedExecutor()
        spin.add_node(executor_node)
        spin.add_node(probe)
        logs = []
        probe.create_subscription(Log, "/rosout", logs.append,
                                  QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        estop = probe.create_publisher(Bool, "/dysta/estop", conv.ESTOP_QOS)
        assert spin_until(spin, lambda: estop.get_subscription_count() > 0
                          and probe.count_publishers("/rosout") >= 2)
        estop.publish(Bool(data=True))
        latched = lambda: [m for m in logs if "e-stop latched" in m.msg]  # noqa: E731
        assert spin_until(spin, lambda: latched())
        assert {m.level for m in latched()} == {Log.WARN}
        executor_node.destroy_node()
        probe.destroy_node()
    finally:
        rclpy.try_shutdown()
