"""What an operator does without `ros2` (ros2cli is not on PyPI, so the venv has no `ros2`).

`dysta-ros instruct TEXT`, `dysta-ros estop [--clear]`, `dysta-ros diag`, `dysta-ros topics`:
each starts a short-lived node, does its one thing against the running graph and exits, with
a one-line error and exit 1 when there is nobody to talk to.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import contextmanager

from dysta_ros.errors import EXIT_FAILURE
from dysta_ros.nodes import topics

DISCOVERY_S = 2.0  # how long the graph is given to show itself


def add_namespace_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", default=topics.NAMESPACE,
                        help="the dysta nodes' namespace (launch: namespace:=...; run: -r __ns:=...)")
    parser.add_argument("--wait", type=float, default=5.0, metavar="SECONDS",
                        help="how long to wait for the nodes to show up")


@contextmanager
def operator_node():
    """A node for one command; rclpy is started and shut down around it."""
    import rclpy

    rclpy.init()
    node = rclpy.create_node(f"dysta_operator_{os.getpid()}")
    try:
        yield node
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def spin_until(node, condition, timeout_s: float) -> bool:
    """Spin `node` until `condition()` or `timeout_s`; return whether the condition held."""
    import rclpy

    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        rclpy.spin_once(node, timeout_sec=0.05)
    return True


def fail(command: str, message: str) -> int:
    print(f"dysta-ros {command}: {message}", file=sys.stderr)
    return EXIT_FAILURE


def publish_when_heard(command: str, node, msg_type, topic: str, qos, message, wait_s: float) -> int:
    """Publish `message` once a subscriber is matched, and give it time to arrive."""
    from rclpy.duration import Duration

    publisher = node.create_publisher(msg_type, topic, qos)
    if not spin_until(node, lambda: publisher.get_subscription_count() > 0, wait_s):
        return fail(command, f"nobody subscribes to {topic} within {wait_s:g} s (are the dysta nodes "
                             "running, in that namespace? see `dysta-ros topics`)")
    publisher.publish(message)
    publisher.wait_for_all_acked(Duration(seconds=2.0))  # reliable: every subscriber has it
    return 0


class Instruct:
    """`dysta-ros instruct TEXT`: set the policy's instruction (the latched instruction topic)."""

    help = "send the policy an instruction (what `ros2 topic pub .../instruction` would)"

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("text", help="the instruction, e.g. 'touch the red cube'")
        add_namespace_argument(parser)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from std_msgs.msg import String

        from dysta_ros.nodes.conversions import LATCHED_QOS

        topic = topics.absolute(topics.INSTRUCTION, args.namespace)
        with operator_node() as node:
            code = publish_when_heard("instruct", node, String, topic, LATCHED_QOS, String(data=args.text),
                                      args.wait)
        if code == 0:
            print(f"sent to {topic}: {args.text!r}")
        return code


class EStop:
    """`dysta-ros estop`: latch the e-stop; `--clear`: release it (every node that holds one)."""

    help = "latch the e-stop (every dysta node holds), or release it with --clear"

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--clear", action="store_true",
                            help="release the e-stop (chunk_executor's clear_estop service)")
        add_namespace_argument(parser)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from std_msgs.msg import Bool

        from dysta_ros.nodes.conversions import ESTOP_QOS

        with operator_node() as node:
            if not args.clear:
                topic = topics.absolute(topics.ESTOP, args.namespace)
                code = publish_when_heard("estop", node, Bool, topic, ESTOP_QOS, Bool(data=True), args.wait)
                if code == 0:
                    print(f"e-stop latched on {topic}; release it with `dysta-ros estop --clear`")
                return code
            return EStop.clear(node, args)

    @staticmethod
    def clear(node, args) -> int:
        from std_srvs.srv import Trigger

        # chunk_executor's service is the one release: policy_node sends no commands of its own
        service = topics.absolute(topics.CLEAR_ESTOP, args.namespace)
        client = node.create_client(Trigger, service)
        if not client.wait_for_service(timeout_sec=args.wait):
            return fail("estop", f"no {service} service (is chunk_executor running?)")
        future = client.call_async(Trigger.Request())
        if not spin_until(node, future.done, args.wait) or future.result() is None:
            return fail("estop", f"{service} did not answer within {args.wait:g} s")
        print(f"{service}: {future.result().message}")
        return 0


class Diag:
    """`dysta-ros diag`: what the nodes report on /diagnostics, or (--follow) as it changes."""

    help = "show /diagnostics: each node's statuses (--follow: changes as they happen)"

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--seconds", type=float, default=3.0,
                            help="listen this long, then print the latest of each status")
        parser.add_argument("--follow", action="store_true", help="print changes until Ctrl-C")
        parser.add_argument("--values", action="store_true", help="with each status, its key/values")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from diagnostic_msgs.msg import DiagnosticArray

        from dysta_ros.nodes.status_line import ChangeLog, format_status, message_statuses, status_line

        latest = {}
        log = ChangeLog()

        def on_message(array):
            statuses = message_statuses(array)
            latest.update(statuses)
            if args.follow:
                for line in log.changes(statuses):
                    print(line, flush=True)

        with operator_node() as node:
            node.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, on_message, 50)
            try:
                spin_until(node, lambda: False, float("inf") if args.follow else args.seconds)
            except KeyboardInterrupt:
                return 0
        if not latest:
            return fail("diag", f"nothing on {topics.DIAGNOSTICS} within {args.seconds:g} s "
                                "(is a dysta node running?)")
        for name in sorted(latest):
            print(format_status(name, latest[name]))
            if args.values:
                for key, value in latest[name].values.items():
                    print(f"    {key}: {value}")
        if "policy_node: lifecycle" in latest:
            print("status: " + status_line(latest))
        return 0


class Topics:
    """`dysta-ros topics`: the graph's topics with their types and publisher/subscriber counts."""

    help = "list the graph's topics: type, publishers, subscribers (what `ros2 topic list -v` shows)"

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--seconds", type=float, default=DISCOVERY_S,
                            help="how long discovery is given before listing")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        with operator_node() as node:
            spin_until(node, lambda: False, args.seconds)
            own = node.get_fully_qualified_name()
            rows = []
            for name, types in sorted(node.get_topic_names_and_types()):
                publishers = [i for i in node.get_publishers_info_by_topic(name)
                              if f"{i.node_namespace.rstrip('/')}/{i.node_name}" != own]
                subscribers = [i for i in node.get_subscriptions_info_by_topic(name)
                               if f"{i.node_namespace.rstrip('/')}/{i.node_name}" != own]
                if publishers or subscribers:
                    rows.append((name, ", ".join(types), len(publishers), len(subscribers)))
        if not rows:
            return fail("topics", f"no topics found within {args.seconds:g} s (is anything running, "
                                  "with this ROS_DOMAIN_ID?)")
        width = max(len(r[0]) for r in rows)
        print(f"{'topic':<{width}}  pubs  subs  type")
        for name, types, pubs, subs in rows:
            print(f"{name:<{width}}  {pubs:>4}  {subs:>4}  {types}")
        return 0
