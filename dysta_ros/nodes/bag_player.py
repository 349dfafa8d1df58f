"""bag_player: publish a rosbag2's messages on their topics, with their original timing.

Messages go out as the raw CDR bytes the bag holds, never decoded, so any type whose Python
message package is installed can be played, for machines without `ros2 bag play`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

import rclpy
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from rclpy.utilities import remove_ros_args
from rosgraph_msgs.msg import Clock

from dysta_ros.bags.playback import COMMAND_TYPES, play, played_topics
from dysta_ros.bags.rosbag import BagMessage, BagReader, TopicQos
from dysta_ros.cli_options import add_json_argument, write_json
from dysta_ros.errors import BagError, ConfigError, exit_status
from dysta_ros.nodes.spin import interrupts_end_ros
from dysta_ros.results import command_line, result_document

CLOCK_PERIOD_NS = 10_000_000  # /clock at most every 10 ms of bag time, as ros2 bag play does
DISCOVERY_S = 2.0  # how long a listening controller is given to show up before commands play


def message_class(msgtype: str):
    """Return the rclpy class of 'pkg/msg/Type', or None when its package is not installed."""
    package, _, name = msgtype.rpartition("/")
    try:
        return getattr(importlib.import_module(package.replace("/", ".")), name)
    except (ImportError, AttributeError):
        return None


def ros_qos(qos: TopicQos) -> QoSProfile:
    """Return the QoS a topic was recorded with, so latched topics stay latched."""
    return QoSProfile(
        depth=10,
        reliability=ReliabilityPolicy.RELIABLE if qos.reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=(DurabilityPolicy.TRANSIENT_LOCAL if qos.transient_local
                    else DurabilityPolicy.VOLATILE))


class BagPlayer(Node):
    """Own one publisher per played topic and publish raw messages on them."""

    def __init__(self, bag: str, topics: list[str] | None = None, clock: bool = False,
                 include_commands: bool = False, force: bool = False):
        super().__init__("bag_player")
        with BagReader(bag) as reader:
            recorded = reader.topics
            chosen, left_out = played_topics(bag, recorded, topics, include_commands)
            qos = {topic: reader.qos(topic) for topic in chosen}
        # --force: play command topics even to a listening controller (the operator's call)
        self.force = force
        self.command_topics = {t for t in chosen if recorded[t] in COMMAND_TYPES}
        if left_out:
            self.get_logger().info(f"not replaying command topics {left_out} "
                                   "(--include-commands plays them)")
        self._publishers_by_topic = {}
        for topic in chosen:
            cls = message_class(recorded[topic])
            if cls is None:
                self.get_logger().warning(f"skipping {topic}: {recorded[topic]} is not installed")
                continue
            self._publishers_by_topic[topic] = self.create_publisher(cls, topic, ros_qos(qos[topic]))
        self.topics = sorted(self._publishers_by_topic)
        self.types = {topic: recorded[topic] for topic in self.topics}
        self.left_out = left_out
        self._clock = self.create_publisher(Clock, "/clock", 10) if clock else None
        self._last_clock_ns = None
        self.published = 0
        self.counts = {topic: 0 for topic in self.topics}  # messages published per topic

    def wait_for_subscribers(self, timeout_s: float) -> bool:
        """Wait until every played topic has a subscriber, so the first messages are not lost."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(p.get_subscription_count() > 0 for p in self._publishers_by_topic.values()):
                return True
            time.sleep(0.05)
        waiting = [t for t, p in self._publishers_by_topic.items() if p.get_subscription_count() == 0]
        self.get_logger().warning(f"playing although nobody subscribes to {waiting}")
        return False

    def listening_controllers(self) -> dict[str, list[str]]:
        """Command topics with a subscriber on the graph now -> the subscribing nodes.

        Any subscriber counts, whatever its QoS: one that does not match the recorded QoS
        today may after a restart, and the operator should know it is there.
        """
        listening = {}
        for topic in sorted(self.command_topics & set(self._publishers_by_topic)):
            if subscribers := self.get_subscriptions_info_by_topic(topic):
                # a node seen before its name is discovered is listed as unnamed
                listening[topic] = sorted(
                    "an unnamed node" if "_UNKNOWN_" in i.node_name else
                    f"{i.node_namespace.rstrip('/')}/{i.node_name}" for i in subscribers)
        return listening

    def refuse_listened_commands(self, discovery_s: float = DISCOVERY_S) -> None:
        """Raise ConfigError when a command topic has a subscriber (a controller may obey), unless forced.

        Discovery takes a moment: a controller already running is given `discovery_s` to show.
        """
        if self.force or not self.command_topics:
            return
        deadline = time.monotonic() + discovery_s
        while time.monotonic() < deadline and not self.listening_controllers():
            time.sleep(0.05)
        self._refuse_if_listened("")

    def _refuse_if_listened(self, when: str) -> None:
        if listening := self.listening_controllers():
            named = "; ".join(f"{topic} (subscribed by {', '.join(nodes)})"
                              for topic, nodes in listening.items())
            raise ConfigError(f"not replaying commands{when}: {named} has a subscriber, which may move "
                              "a robot; stop it, or pass --force to replay to it anyway")

    def publish(self, message: BagMessage) -> None:
        """Publish one recorded message as it is; advance /clock to its recording time.

        A command message is checked again first: a controller that starts mid-replay stops it.
        """
        if message.topic in self.command_topics and not self.force:
            self._refuse_if_listened(" any more")
        # --loop starts the bag's time over: /clock goes back with it (it stayed at the end)
        if self._clock is not None and (self._last_clock_ns is None or message.stamp_ns < self._last_clock_ns
                                        or message.stamp_ns - self._last_clock_ns >= CLOCK_PERIOD_NS):
            self._clock.publish(Clock(clock=Time(nanoseconds=message.stamp_ns).to_msg()))
            self._last_clock_ns = message.stamp_ns
        self._publishers_by_topic[message.topic].publish(message.data)
        self.published += 1
        self.counts[message.topic] += 1

    def drain(self, timeout_s: float = 2.0) -> None:
        """Give reliable subscribers the last messages before the process exits."""
        for publisher in self._publishers_by_topic.values():
            if publisher.qos_profile.reliability == ReliabilityPolicy.RELIABLE:
                publisher.wait_for_all_acked(Duration(seconds=timeout_s))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `dysta-ros replay` arguments."""
    parser.add_argument("bag", help="rosbag2 directory, or a .mcap / .db3 file")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed (1.0 = as recorded)")
    parser.add_argument("--loop", action="store_true", help="start over at the end, until Ctrl-C")
    parser.add_argument("--topics", nargs="+", metavar="TOPIC", help="play only these topics")
    parser.add_argument("--include-commands", action="store_true",
                        help="also replay command topics (JointTrajectory, ActionChunk, "
                             "Float64MultiArray, Pose, Twist); refused while anything subscribes to them")
    parser.add_argument("--force", action="store_true",
                        help="with --include-commands: replay command topics even while a subscriber "
                             "(a controller) is matched on them")
    parser.add_argument("--clock", action="store_true",
                        help="publish /clock from the recording time (for nodes with use_sim_time)")
    parser.add_argument("--wait-for-subscribers", type=float, default=0.0, metavar="SECONDS",
                        help="first wait up to this long until every topic has a subscriber")
    add_json_argument(parser)  # at exit (the end, or Ctrl-C with --loop): one run per topic played


def replay_document(node: BagPlayer, args: argparse.Namespace, seconds: float, interrupted: bool) -> dict:
    """What was played: one run per topic (its type and messages published), the replay in meta."""
    runs = [{"topic": topic, "type": node.types[topic], "messages": node.counts[topic]}
            for topic in node.topics]
    return result_document(runs, {
        "bag": args.bag, "rate": args.rate, "loop": args.loop, "clock": args.clock,
        "include_commands": args.include_commands, "commands_left_out": node.left_out,
        "messages": node.published, "seconds": round(seconds, 3), "interrupted": interrupted,
        "command": command_line()})


def sleep_while_ok(seconds: float) -> None:
    """Sleep between messages, ending early once ROS is down (Ctrl-C raises nothing to end it)."""
    end = time.monotonic() + seconds
    while rclpy.ok() and (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 0.05))


def run(args: argparse.Namespace) -> int:
    """Play the bag; return the exit status."""
    if not args.rate > 0:
        print(f"dysta-ros replay: --rate must be > 0, got {args.rate}", file=sys.stderr)
        return 2
    # Ctrl-C, as SIGTERM: rclpy's handler shuts the context down, and the publish (or wait) under
    # way fails; no KeyboardInterrupt. One raised at the next bytecode landed inside a finalizer
    # once ("Exception ignored in: <function _get_module_lock.<locals>.cb>", a traceback, under
    # load in test_shutdown), where Python can only print it and drop it.
    with interrupts_end_ros():
        return _play(args)


def _play(args: argparse.Namespace) -> int:
    rclpy.init()
    node, started, interrupted = None, time.monotonic(), False
    # A second Ctrl-C raises KeyboardInterrupt: when it lands inside a publish that fails first
    # ("context is invalid"), it surfaces in the handler of that failure, out of reach of a
    # sibling `except KeyboardInterrupt`: the outer one takes it wherever it surfaces.
    try:
        try:
            if args.force and not args.include_commands:
                raise ConfigError("--force applies to command topics: give it with --include-commands")
            node = BagPlayer(args.bag, args.topics, clock=args.clock,
                             include_commands=args.include_commands, force=args.force)
            node.refuse_listened_commands()
            if args.wait_for_subscribers > 0:
                node.wait_for_subscribers(args.wait_for_subscribers)
            started = time.monotonic()
            for message in play(args.bag, node.topics, rate=args.rate, loop=args.loop, sleep=sleep_while_ok):
                node.publish(message)
            node.drain()
            node.get_logger().info(f"played {node.published} messages from {args.bag}")
        except (BagError, ConfigError) as exc:
            print(f"dysta-ros replay: {exc}", file=sys.stderr)
            return exit_status(exc)
        except KeyboardInterrupt:
            interrupted = True
        except Exception:
            # SIGTERM: rclpy's handler shut the context down under a publish (or the node's
            # creation), whose rcl call then fails. That is the requested end, not an error.
            if rclpy.ok():
                raise
            interrupted = True
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    if node is not None:  # an interrupted replay reports what it played until then
        write_json(getattr(args, "json", None), replay_document(node, args, time.monotonic() - started,
                                                                interrupted))
    return 0


def main() -> None:
    """Run as the `bag_player` executable (`ros2 run dysta_ros bag_player BAG ...`)."""
    parser = argparse.ArgumentParser(prog="bag_player", description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(run(parser.parse_args(remove_ros_args(sys.argv)[1:])))


if __name__ == "__main__":
    main()
