"""sim_node on sim time: /clock drives every stamp and never goes back, across episodes.

Started as `.venv/bin/sim_node` would be (auto_reset left at its default): episodes follow one
another and the cameras go on after the first, so a policy never holds on a stale frame.
"""

import json

import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rosgraph_msgs.msg import Clock
from ros_helpers import spin_until
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from dysta_ros.errors import ConfigError
from dysta_ros.nodes.conversions import CAMERA_QOS, LATCHED_QOS, STATE_QOS, to_seconds
from dysta_ros.nodes.sim_node import SimNode


@pytest.fixture()
def ros():
    rclpy.init()
    sim = SimNode(image_width=32, image_height=32, publish_clock=True, episode_seconds=0.3)
    node = rclpy.create_node("sim_clock_probe")
    executor = SingleThreadedExecutor()
    executor.add_node(sim)
    executor.add_node(node)
    yield sim, node, executor
    executor.shutdown()
    sim.close()
    sim.destroy_node()
    node.destroy_node()
    rclpy.try_shutdown()


def test_clock_is_monotonic_across_auto_reset_episodes_and_stamps_follow_it(ros):
    sim, node, executor = ros
    assert sim.get_parameter("auto_reset").value is True  # the default, not the launch file's
    clocks, outcomes, state_stamps, image_stamps = [], [], [], []
    node.create_subscription(Clock, "/clock", lambda m: clocks.append(to_seconds(m.clock)), 100)
    node.create_subscription(String, "/dysta/episode_outcome", lambda m: outcomes.append(json.loads(m.data)),
                             LATCHED_QOS)
    node.create_subscription(JointState, "/joint_states",
                             lambda m: state_stamps.append(to_seconds(m.header.stamp)), STATE_QOS)
    node.create_subscription(Image, "/camera/image_raw",
                             lambda m: image_stamps.append(to_seconds(m.header.stamp)), CAMERA_QOS)
    assert spin_until(executor, lambda: len({o["episode"] for o in outcomes}) >= 2 and state_stamps
                      and image_stamps and image_stamps[-1] > 0.3, 60.0)
    assert len(clocks) > 10 and all(b >= a for a, b in zip(clocks, clocks[1:]))
    assert clocks[-1] >= 0.6 - 1e-6  # two episodes of 0.3 s of sim time, one after the other
    assert all(o["reason"] == "timeout" and o["seconds"] == pytest.approx(0.3, abs=0.03) for o in outcomes)
    assert outcomes[1]["seed"] == outcomes[0]["seed"] + 1  # auto_reset moves on to the next seed
    assert 0 < state_stamps[-1] <= clocks[-1] + 1e-6  # stamped on sim time, not the wall clock
    assert image_stamps[-1] > 0.3  # frames of the second episode: the cameras did not stop


def test_a_refused_reset_leaves_the_clock_where_it_was(ros):
    # No parameter value reaches this through ~/reset today (the validator refuses it first), but
    # ~/reset answers a refusal as "episode left as it was": the clock must not move either.
    sim, node, executor = ros
    assert spin_until(executor, lambda: sim.env.time > 0.1)
    before, episode = sim.now_seconds(), sim.episode
    with pytest.raises(ConfigError):
        sim._start_episode("juggle", 0)
    assert sim.now_seconds() == before and sim.episode == episode
    sim._start_episode("reach", 1)  # the next reset starts where the refused one found the clock
    assert sim.now_seconds() == pytest.approx(before)
