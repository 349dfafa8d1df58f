"""The robot's clock as seen from the policy host: round trips on clock_ping and clock_pong.

Observation stamps come from the robot's cameras, on the robot's clock; the policy host judges
how old a frame is against its own clock. `ClockOffsetClient` (in policy_node) either assumes
the clocks are synchronised (chrony/PTP: `chronyc tracking` shows the offset) or estimates the
robot's clock minus its own from round trips answered by `ClockResponder` (in robot_link on the
robot), and says which on /diagnostics (`policy_node: clock`).

Both topics are relative, as every dysta topic: `/dysta/clock_ping` by default, `/arm2/clock_ping`
for nodes in `/arm2`, so two arms' round trips never cross.
Messages are std_msgs/Float64MultiArray: [t0] out, [t0, t1, t2] back, seconds on each clock
(a float64 keeps 0.2 us at today's epoch seconds). Best effort: a lost ping only costs a sample,
and a reliable retransmission would be a slow round trip the estimator ignores anyway.
"""

from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float64MultiArray

from dysta_ros.clock_sync import CLOCK_SYNC_MODES, ClockOffsetEstimator, RoundTrip
from dysta_ros.errors import ConfigError
from dysta_ros.nodes import topics as dysta_topics
from dysta_ros.nodes.diagnostics import OK, WARN, StatusBoard, to_message

PING_TOPIC, PONG_TOPIC = dysta_topics.CLOCK_PING, dysta_topics.CLOCK_PONG
PING_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.VOLATILE)
PING_PERIOD_S = 0.5
OUTSTANDING = 32  # pings remembered: an answer to any other t0 is someone else's


def _seconds(node) -> float:
    return node.get_clock().now().nanoseconds * 1e-9


class ClockResponder:
    """Answer clock pings with this node's receive and send times (on the robot)."""

    def __init__(self, node):
        self.node = node
        self.answered = 0
        self.pub = node.create_publisher(Float64MultiArray, PONG_TOPIC, PING_QOS)
        node.create_subscription(Float64MultiArray, PING_TOPIC, self.on_ping, PING_QOS)

    def on_ping(self, msg):
        received = _seconds(self.node)
        if len(msg.data) != 1:
            return  # not a ping of ours
        self.pub.publish(Float64MultiArray(data=[float(msg.data[0]), received, _seconds(self.node)]))
        self.answered += 1


class ClockOffsetClient:
    """The robot's clock minus ours: 0 when assumed synchronised, else estimated from round trips."""

    def __init__(self, node, mode: str, diagnostic_period_s: float = 1.0):
        if mode not in CLOCK_SYNC_MODES:
            raise ConfigError(f"clock_sync {mode!r} is not one of {', '.join(CLOCK_SYNC_MODES)}")
        self.node, self.mode = node, mode
        self.estimator = ClockOffsetEstimator()
        self.board = StatusBoard(node.get_name(), "clock", ["clock"])
        self.sent: list[float] = []
        self.diagnostics_pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        node.create_timer(diagnostic_period_s, self.publish_diagnostics)
        if mode == "assume":
            self.board.set("clock", OK, "clocks assumed synchronised (chrony/PTP; check with "
                           "`chronyc tracking`): no offset applied", mode=mode, offset_s=0.0)
            return
        self.board.set("clock", WARN, "estimating the robot's clock: no round trip answered yet "
                       "(is robot_link running?); no offset applied", mode=mode)
        self.ping_pub = node.create_publisher(Float64MultiArray, PING_TOPIC, PING_QOS)
        node.create_subscription(Float64MultiArray, PONG_TOPIC, self.on_pong, PING_QOS)
        node.create_timer(PING_PERIOD_S, self.ping)

    @property
    def offset_s(self) -> float:
        """Seconds to add to this node's clock to read the robot's (0 until estimated)."""
        if self.mode == "assume" or self.estimator.offset_s is None:
            return 0.0
        return self.estimator.offset_s

    def ping(self):
        t0 = _seconds(self.node)
        self.sent = (self.sent + [t0])[-OUTSTANDING:]
        self.ping_pub.publish(Float64MultiArray(data=[t0]))

    def on_pong(self, msg):
        t3 = _seconds(self.node)
        if len(msg.data) != 3 or msg.data[0] not in self.sent:
            return
        self.sent.remove(msg.data[0])
        self.estimator.add(RoundTrip(*(float(t) for t in msg.data), t3))
        best = self.estimator.best
        if best is None:
            return
        self.board.set("clock", OK, f"estimated from round trips: robot clock = ours "
                       f"{best.offset:+.4f} s (+- {best.delay / 2:.4f} s)", mode=self.mode,
                       offset_s=f"{best.offset:.6f}", uncertainty_s=f"{best.delay / 2:.6f}",
                       round_trips=len(self.estimator.trips), refused=self.estimator.refused,
                       steps=self.estimator.steps)

    def publish_diagnostics(self):
        self.diagnostics_pub.publish(to_message(self.board, self.node.get_clock().now().to_msg()))
