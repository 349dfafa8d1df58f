"""dysta's own topics are relative: nodes started in /arm2 talk on /arm2/..., never on /dysta/...."""

import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from ros_helpers import spin_until

from dysta_ros.nodes.clock_offset import ClockOffsetClient, ClockResponder


@pytest.fixture()
def arm2():
    rclpy.init()
    robot, host = (rclpy.create_node(name, namespace="/arm2") for name in ("robot_link", "policy_node"))
    executor = SingleThreadedExecutor()
    executor.add_node(robot)
    executor.add_node(host)
    yield robot, host, executor
    executor.shutdown()
    robot.destroy_node()
    host.destroy_node()
    rclpy.try_shutdown()


def test_clock_round_trips_stay_in_the_nodes_namespace(arm2):
    robot, host, executor = arm2
    responder, client = ClockResponder(robot), ClockOffsetClient(host, "estimate")
    published = {name for name, _ in host.get_publisher_names_and_types_by_node("policy_node", "/arm2")}
    answered = {name for name, _ in robot.get_publisher_names_and_types_by_node("robot_link", "/arm2")}
    assert "/arm2/clock_ping" in published and "/arm2/clock_pong" in answered
    assert not {"/dysta/clock_ping", "/dysta/clock_pong"} & (published | answered)
    # and the two still find each other there: an estimate from answered round trips
    assert spin_until(executor, lambda: responder.answered and client.estimator.best is not None, 15.0)
