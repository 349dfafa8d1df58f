"""The names of dysta's own topics and services, relative to the nodes' namespace.

Every dysta node (policy_node, chunk_executor, sim_node) starts in the namespace `/dysta` unless
told otherwise (`--ros-args -r __ns:=/arm1`, a launch file's `namespace:=arm1`), and names its
topics relative to it: `action_chunk` is `/dysta/action_chunk` by default and
`/arm1/action_chunk` for a second arm, so two arms share one graph. The robot's own topics
(cameras, joint states, controller commands) come from its robot config: absolute there
(`/joint_states`, as ros2_control publishes it) or relative (`joint_states`) to follow the
namespace. /diagnostics, /clock and /rosout stay absolute, as ROS 2 tools expect them.
"""

from __future__ import annotations

from dysta_ros.errors import ConfigError

NAMESPACE = "/dysta"

ACTION_CHUNK = "action_chunk"
TOKEN_STATS = "token_stats"
INSTRUCTION = "instruction"
ESTOP = "estop"
CLEAR_ESTOP = "clear_estop"  # chunk_executor's service (std_srvs/Trigger): the one release
EPISODE_OUTCOME = "episode_outcome"
CLOCK_PING = "clock_ping"  # policy_node -> robot_link (clock_sync: estimate)
CLOCK_PONG = "clock_pong"  # robot_link -> policy_node
DIAGNOSTICS = "/diagnostics"


def absolute(name: str, namespace: str = NAMESPACE) -> str:
    """`name` as a node in `namespace` resolves it (absolute names stay as they are)."""
    if name.startswith("/"):
        return name
    namespace = "/" + namespace.strip("/") if namespace.strip("/") else ""
    return f"{namespace}/{name}"


def node_service(node: str, service: str, namespace: str = NAMESPACE) -> str:
    """A node's private service (`~/reset`, `change_state`) by its full name."""
    return absolute(f"{node}/{service}", namespace)


def check_names(node, robot, topics=()) -> None:
    """Raise ConfigError naming the first of the robot config's topics, or `topics`, ROS refuses.

    rclpy refuses a bad name ('/joint states', '/cam/') only when a publisher or subscription is
    made, and not as a ConfigError: a plain node died with a traceback, policy_node's configure
    failed with no word on the log or /diagnostics.
    """
    fields = {**{f"cameras.{c.name}.topic": c.topic for c in robot.cameras}, "state_topic": robot.state_topic,
              **{f"command_topics.{output}": topic for output, topic in robot.command_topics.items()}}
    named = [(f"robot {robot.name!r}: {field}", topic) for field, topic in fields.items()]
    for where, topic in named + [("camera topic", topic) for topic in topics]:
        try:
            node.resolve_topic_name(topic)
        except (RuntimeError, ValueError) as exc:  # rclpy's RCLError is a RuntimeError
            reason = str(exc).removeprefix("failed to resolve name: ").split(", at ")[0]
            raise ConfigError(f"{where} {topic!r} is not a valid topic name: {reason}") from None
