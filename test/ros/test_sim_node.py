"""sim_node over real rclpy: sensors published, commands followed, episodes reset and reported."""

import json

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.srv import SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from ros_helpers import spin_until
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger

from dysta_ros.msg import ActionChunk
from dysta_ros.nodes.conversions import (
    CAMERA_QOS, LATCHED_QOS, RELIABLE_QOS, STATE_QOS, msg_to_chunk, to_seconds, trajectory_msg,
)
from dysta_ros.nodes.sim_node import SimNode
from dysta_ros.sim.expert import ScriptedExpert
from dysta_ros.sim.tasks import get_task

JOINTS = [f"joint{i}" for i in range(1, 7)]


class Probe:
    """A test node that keeps the latest message of every topic it listens to."""

    def __init__(self, node):
        self.node = node
        self.latest = {}
        self.counts = {}

    def listen(self, msg_type, topic, qos):
        def store(msg):
            self.latest[topic] = msg
            self.counts[topic] = self.counts.get(topic, 0) + 1
        return self.node.create_subscription(msg_type, topic, store, qos)


@pytest.fixture(scope="module")
def ros():
    rclpy.init()
    sim = SimNode(image_width=64, image_height=48, expert=True, expert_rate_hz=5.0)
    node = rclpy.create_node("sim_node_probe")
    probe = Probe(node)
    for msg_type, topic, qos in [(Image, "/camera/image_raw", CAMERA_QOS),
                                 (Image, "/wrist_camera/image_raw", CAMERA_QOS),
                                 (CameraInfo, "/camera/camera_info", CAMERA_QOS),
                                 (JointState, "/joint_states", STATE_QOS),
                                 (String, "/dysta/instruction", LATCHED_QOS),
                                 (String, "/dysta/episode_outcome", LATCHED_QOS),
                                 (ActionChunk, "/dysta/action_chunk", RELIABLE_QOS),
                                 (DiagnosticArray, "/diagnostics", 10)]:
        probe.listen(msg_type, topic, qos)
    executor = SingleThreadedExecutor()
    executor.add_node(sim)
    executor.add_node(node)
    yield sim, probe, executor
    executor.shutdown()
    sim.close()
    sim.destroy_node()
    node.destroy_node()
    rclpy.try_shutdown()


def call(executor, client, request):
    assert client.wait_for_service(timeout_sec=10)
    future = client.call_async(request)
    assert spin_until(executor, future.done)
    return future.result()


def reset(ros, task, seed):
    """Set task and seed through the parameter service, then call ~/reset; return the reply."""
    sim, probe, executor = ros
    setter = probe.node.create_client(SetParameters, "/dysta/sim_node/set_parameters")
    request = SetParameters.Request(parameters=[Parameter("task", value=task).to_parameter_msg(),
                                                Parameter("seed", value=seed).to_parameter_msg()])
    assert all(r.successful for r in call(executor, setter, request).results)
    reply = call(executor, probe.node.create_client(Trigger, "/dysta/sim_node/reset"), Trigger.Request())
    assert reply.success, reply.message
    probe.latest.pop("/dysta/episode_outcome", None)
    started = sim.now_seconds()
    assert spin_until(executor, lambda: "/joint_states" in probe.latest
                      and to_seconds(probe.latest["/joint_states"].header.stamp) >= started)
    return json.loads(reply.message)


def joint_positions(probe):
    msg = probe.latest["/joint_states"]
    return np.array([msg.position[list(msg.name).index(j)] for j in JOINTS])


def test_publishes_cameras_camera_info_and_joint_states(ros):
    sim, probe, executor = ros
    topics = ["/camera/image_raw", "/wrist_camera/image_raw", "/camera/camera_info", "/joint_states"]
    assert spin_until(executor, lambda: all(t in probe.latest for t in topics))
    image = probe.latest["/camera/image_raw"]
    assert (image.height, image.width, image.encoding) == (48, 64, "rgb8")
    assert np.frombuffer(bytes(image.data), np.uint8).std() > 5
    assert probe.latest["/wrist_camera/image_raw"].header.frame_id == "wrist_camera_optical_frame"
    info = probe.latest["/camera/camera_info"]
    assert (info.height, info.width) == (48, 64) and info.k[0] > 0 and info.k[8] == 1.0
    assert list(probe.latest["/joint_states"].name) == JOINTS


def test_joint_states_are_offered_reliable_as_ros2_control_publishes_them(ros):
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    sim, probe, executor = ros
    # what robot_state_publisher and RViz ask for: a best-effort publisher would never match it
    received = []
    probe.node.create_subscription(JointState, "/joint_states", received.append,
                                   QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    assert spin_until(executor, lambda: len(received) >= 3)
    (offered,) = [i for i in probe.node.get_publishers_info_by_topic("/joint_states")
                  if i.node_name == "sim_node"]
    assert offered.qos_profile.reliability == ReliabilityPolicy.RELIABLE
    assert offered.node_namespace == "/dysta"  # its own topics sit under the namespace


def test_a_trajectory_moves_the_arm_to_its_last_point(ros):
    sim, probe, executor = ros
    reset(ros, "reach", 1)
    publisher = probe.node.create_publisher(type(trajectory_msg(JOINTS, np.zeros((0, 6)), [])),
                                            "/joint_trajectory_controller/joint_trajectory", RELIABLE_QOS)
    assert spin_until(executor, lambda: publisher.get_subscription_count() > 0)
    start = joint_positions(probe)
    goal = start + np.array([0.3, 0.0, 0.0, 0.2, 0.0, -0.2])  # swings above the cubes
    publisher.publish(trajectory_msg(JOINTS, np.stack([(start + goal) / 2, goal]), [0.3, 0.6]))
    assert spin_until(executor, lambda: np.allclose(joint_positions(probe), goal, atol=0.02))


def test_a_multi_point_trajectory_is_followed_through_its_points_not_jumped_to_the_last(ros):
    """JTC semantics: out to +0.4 rad and back to the start; a follower that jumped to the last
    point would never leave the start, one that interpolates passes near +0.4 on the way."""
    sim, probe, executor = ros
    reset(ros, "reach", 3)
    publisher = probe.node.create_publisher(type(trajectory_msg(JOINTS, np.zeros((0, 6)), [])),
                                            "/joint_trajectory_controller/joint_trajectory", RELIABLE_QOS)
    assert spin_until(executor, lambda: publisher.get_subscription_count() > 0)
    start = joint_positions(probe)
    out = start + np.array([0.4, 0.0, 0.0, 0.0, 0.0, 0.0])
    points = np.stack([start + (out - start) * f for f in (0.5, 1.0, 0.5, 0.0)])  # (4, 6)
    publisher.publish(trajectory_msg(JOINTS, points, [0.4, 0.8, 1.2, 1.6]))
    seen = []

    def back_after_going_out():
        seen.append(joint_positions(probe)[0] - start[0])
        return max(seen) > 0.2 and abs(seen[-1]) < 0.02  # samples may miss the +0.4 peak itself

    assert spin_until(executor, back_after_going_out), (max(seen), seen[-1])


def test_bad_commands_are_refused_and_the_arm_holds(ros):
    sim, probe, executor = ros
    reset(ros, "reach", 2)
    trajectories = probe.node.create_publisher(type(trajectory_msg(JOINTS, np.zeros((0, 6)), [])),
                                               "/joint_trajectory_controller/joint_trajectory", RELIABLE_QOS)
    forward = probe.node.create_publisher(Float64MultiArray, "/forward_position_controller/commands",
                                          RELIABLE_QOS)
    assert spin_until(executor, lambda: trajectories.get_subscription_count() > 0
                      and forward.get_subscription_count() > 0)
    held = joint_positions(probe)
    bad = np.tile(held, (2, 1))
    bad[1, 2] = np.nan

    def refusals():
        msg = probe.latest.get("/diagnostics")
        return [s.message for s in msg.status if s.message.startswith("refused")] if msg else []

    trajectories.publish(trajectory_msg(JOINTS, bad, [0.2, 0.4]))
    assert spin_until(executor, lambda: any("non-finite" in m for m in refusals()))
    trajectories.publish(trajectory_msg(["joint1", "elbow"], np.ones((1, 2)), [0.2]))
    assert spin_until(executor, lambda: any("unknown" in m for m in refusals()))
    forward.publish(Float64MultiArray(data=[0.1, 0.2]))
    assert spin_until(executor, lambda: any("forward command" in m for m in refusals()))
    seen = probe.counts["/joint_states"]
    assert spin_until(executor, lambda: probe.counts["/joint_states"] > seen + 10)
    assert joint_positions(probe) == pytest.approx(held, abs=1e-3)


def test_reset_applies_task_and_seed_and_latches_the_instruction(ros):
    sim, probe, executor = ros
    reply = reset(ros, "memory", 5)
    assert reply["task"] == "memory" and reply["seed"] == 5
    memory = get_task("memory").instruction
    assert spin_until(executor, lambda: probe.latest["/dysta/instruction"].data == memory)
    assert sim.env.task.name == "memory" and sim.env.seed == 5
    setter = probe.node.create_client(SetParameters, "/dysta/sim_node/set_parameters")
    refused = call(executor, setter, SetParameters.Request(
        parameters=[Parameter("task", value="juggle").to_parameter_msg()])).results[0]
    assert not refused.successful and "reach" in refused.reason


def test_following_the_expert_plan_ends_the_episode_with_success(ros):
    sim, probe, executor = ros
    reset(ros, "reach", 3)
    publisher = probe.node.create_publisher(type(trajectory_msg(JOINTS, np.zeros((0, 6)), [])),
                                            "/joint_trajectory_controller/joint_trajectory", RELIABLE_QOS)
    assert spin_until(executor, lambda: publisher.get_subscription_count() > 0)
    plan = ScriptedExpert(sim.env).plan(sim.env.joint_positions, horizon=40)  # privileged, from the test
    publisher.publish(trajectory_msg(JOINTS, plan, 0.1 * np.arange(1, 41)))
    assert spin_until(executor, lambda: "/dysta/episode_outcome" in probe.latest)
    outcome = json.loads(probe.latest["/dysta/episode_outcome"].data)
    assert outcome["success"] and outcome["reason"] == "touched_target" and outcome["seed"] == 3


def test_expert_mode_publishes_action_chunks_for_the_arm(ros):
    sim, probe, executor = ros
    reset(ros, "reach", 4)
    probe.latest.pop("/dysta/action_chunk", None)
    assert spin_until(executor, lambda: "/dysta/action_chunk" in probe.latest)
    chunk = msg_to_chunk(probe.latest["/dysta/action_chunk"])
    assert chunk.names == JOINTS and chunk.actions.shape == (10, 6) and chunk.strategy == "expert"
    assert np.all(np.isfinite(chunk.actions))
    assert not np.allclose(chunk.actions[-1], chunk.actions[0])  # it plans motion toward the cube
