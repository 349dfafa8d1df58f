"""chunk_executor over real rclpy topics: clipping, e-stop latch and clear, deadman, bad chunks."""

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Bool  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from dysta_ros import types  # noqa: E402
from dysta_ros.errors import InputError  # noqa: E402
from dysta_ros.msg import ActionChunk  # noqa: E402
from dysta_ros.nodes import conversions as conv  # noqa: E402
from dysta_ros.nodes.chunk_executor import ChunkExecutorNode  # noqa: E402
from dysta_ros.robot import load_robot_config  # noqa: E402
from ros_helpers import spin_until  # noqa: E402

JOINTS = [f"joint{i}" for i in range(1, 7)]
RATE = 20.0


class Rig:
    """The executor node and a test node that feeds it and records what it sends."""

    def __init__(self):
        self.executor_node = ChunkExecutorNode(parameter_overrides=[
            Parameter("control_rate_hz", value=RATE), Parameter("max_chunk_age_s", value=0.4),
            Parameter("max_state_age_s", value=5.0), Parameter("diagnostic_period_s", value=0.05),
            Parameter("blending", value="latest")])
        self.node = rclpy.create_node("executor_test")
        self.spin = SingleThreadedExecutor()
        self.spin.add_node(self.executor_node)
        self.spin.add_node(self.node)
        self.chunk_pub = self.node.create_publisher(ActionChunk, "/dysta/action_chunk", conv.RELIABLE_QOS)
        self.state_pub = self.node.create_publisher(JointState, "/joint_states", 10)
        self.estop_pub = self.node.create_publisher(Bool, "/dysta/estop", 10)
        self.clear = self.node.create_client(Trigger, "/dysta/clear_estop")
        self.commands: list[JointTrajectory] = []
        self.diagnostics: list[DiagnosticArray] = []
        self.node.create_subscription(JointTrajectory, "/joint_trajectory_controller/joint_trajectory",
                                      self.commands.append, 50)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 50)
        self.sequence = 0
        assert spin_until(self.spin, lambda: all(p.get_subscription_count() for p in
                                                  (self.chunk_pub, self.state_pub, self.estop_pub)))

    def now(self):
        return self.node.get_clock().now().nanoseconds * 1e-9

    def send_state(self, positions):
        self.state_pub.publish(JointState(name=JOINTS, position=list(positions)))

    def send_chunk(self, value, horizon=40, dt=0.1, **changes):
        self.sequence += 1
        chunk = types.ActionChunk(stamp=self.now(), actions=np.full((horizon, 6), value, np.float32),
                                  dt=dt, names=list(JOINTS), sequence=self.sequence, strategy="test")
        msg = conv.chunk_to_msg(chunk)
        for key, val in changes.items():
            setattr(msg, key, val)
        self.chunk_pub.publish(msg)

    def status(self, name):
        """Return the latest (level, message, values) of one executor diagnostic entry."""
        for array in reversed(self.diagnostics):
            for status in array.status:
                if status.name == f"chunk_executor: {name}":
                    return status.level[0], status.message, {kv.key: kv.value for kv in status.values}
        return None

    def wait_status(self, name, predicate):
        return spin_until(self.spin, lambda: (s := self.status(name)) is not None and predicate(*s))

    def moving_commands(self):
        return [c for c in self.commands if c.points]

    def close(self):
        self.spin.shutdown()
        self.executor_node.destroy_node()
        self.node.destroy_node()


@pytest.fixture
def rig():
    rclpy.init()
    rig = Rig()
    yield rig
    rig.close()
    rclpy.shutdown()


def test_executor_clips_latches_estop_holds_on_deadman_and_survives_bad_chunks(rig):
    robot = load_robot_config("sim_arm")
    # Silence is visible: before any chunk the executor says it is holding.
    assert rig.wait_status("commands", lambda level, msg, v: "waiting for a chunk" in msg)
    assert rig.status("workspace")[:2] == (
        0, "not used: joint_trajectory commands are clipped to joint limits")

    # A chunk far outside the limits: commands move at most max velocity per period.
    rig.send_state(np.zeros(6))
    rig.send_chunk(100.0)
    assert spin_until(rig.spin, lambda: len(rig.moving_commands()) >= 3)
    first = np.array(rig.moving_commands()[0].points[0].positions)
    np.testing.assert_allclose(first, robot.max_velocity / RATE, rtol=1e-6)
    for command in rig.moving_commands():
        positions = np.array(command.points[0].positions)
        assert np.all(positions <= robot.upper) and np.all(positions >= robot.lower)
        assert command.joint_names == JOINTS

    # E-stop latches: an empty trajectory (hold) goes out, and later chunks do not move it.
    rig.estop_pub.publish(Bool(data=True))
    assert spin_until(rig.spin, lambda: rig.commands and not rig.commands[-1].points)
    held_at = len(rig.commands)
    moved = len(rig.moving_commands())
    rig.estop_pub.publish(Bool(data=False))  # not a release
    accepted = int(rig.status("chunks")[2]["accepted"])
    rig.send_chunk(0.5)
    assert rig.wait_status("chunks", lambda level, msg, v: int(v["accepted"]) > accepted)
    assert rig.wait_status("commands", lambda level, msg, v: level == 2 and "e-stop" in msg)
    assert len(rig.moving_commands()) == moved  # nothing moved since the trip

    # Only the service releases it; motion resumes on a chunk that arrives afterwards.
    assert rig.clear.wait_for_service(timeout_sec=10.0)
    future = rig.clear.call_async(Trigger.Request())
    assert spin_until(rig.spin, future.done)
    assert future.result().success and "released" in future.result().message
    rig.send_state(np.zeros(6))
    rig.send_chunk(0.05)
    assert spin_until(rig.spin, lambda: len(rig.commands) > held_at and rig.commands[-1].points)

    # A malformed chunk (NaN, sizes that disagree) is rejected and reported; nothing crashes.
    rig.send_chunk(float("nan"))
    assert rig.wait_status("chunks", lambda level, msg, v: level == 2 and "non-finite" in msg)
    rig.send_chunk(0.05, horizon=4, dim=7)
    assert rig.wait_status("chunks", lambda level, msg, v: level == 2 and "holds 24" in msg)
    rig.send_chunk(0.05)
    assert rig.wait_status("chunks", lambda level, msg, v: level == 0)

    # Deadman: chunks stop, the executor holds and says so, and sends no more targets.
    assert rig.wait_status("commands", lambda level, msg, v: msg.startswith("holding: deadman"))
    stopped_at = len(rig.moving_commands())
    diagnostics_seen = len(rig.diagnostics)
    assert spin_until(rig.spin, lambda: len(rig.diagnostics) >= diagnostics_seen + 3)
    assert len(rig.moving_commands()) == stopped_at
    assert rig.status("commands")[1].startswith("holding: deadman")


def test_a_dry_run_switched_on_stops_the_controller_and_switched_off_resumes_from_the_arm(rig):
    robot = load_robot_config("sim_arm")
    node = rig.executor_node
    assert node.set_parameters([Parameter("max_chunk_age_s", value=5.0)])[0].successful  # no deadman here
    rig.send_state(np.zeros(6))
    rig.send_chunk(100.0)  # out of reach: every command moves at the velocity limit
    assert spin_until(rig.spin, lambda: len(rig.moving_commands()) >= 2)
    # Nothing is sent in a dry run: the controller stops where it is (an empty trajectory),
    # rather than run out the last trajectory's plan.
    assert node.set_parameters([Parameter("dry_run", value=True)])[0].successful
    assert spin_until(rig.spin, lambda: not rig.commands[-1].points)
    moved, logged = len(rig.moving_commands()), node.core.counts["commands"]
    assert spin_until(rig.spin, lambda: node.core.counts["commands"] >= logged + 5)
    assert len(rig.moving_commands()) == moved
    # Off again: the arm is where it stopped (here: the state it reported, 0; max_state_age_s
    # 5 s), so the first trajectory starts one period of velocity from there, not from where the
    # dry run's commands went.
    assert node.set_parameters([Parameter("dry_run", value=False)])[0].successful
    assert spin_until(rig.spin, lambda: len(rig.moving_commands()) > moved)
    first = np.array(rig.moving_commands()[moved].points[0].positions)
    np.testing.assert_allclose(first, robot.max_velocity / RATE, rtol=1e-6)


def test_bad_parameter_values_are_refused_with_what_is_allowed(rig):
    node = rig.executor_node
    result = node.set_parameters([Parameter("blending", value="average")])[0]
    assert not result.successful
    assert "latest, weighted_average, temporal_ensemble" in result.reason
    result = node.set_parameters([Parameter("max_chunk_age_s", value=100.0)])[0]
    assert not result.successful
    result = node.set_parameters([Parameter("control_rate_hz", value=10.0)])[0]
    assert not result.successful  # read-only: the control timer is built once
    assert node.set_parameters([Parameter("blending", value="temporal_ensemble")])[0].successful
    assert node.core.blender.blending == "temporal_ensemble"


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 12), st.integers(0, 9), st.integers(0, 120),
       st.sampled_from([0.1, 0.0, -1.0, float("nan"), float("inf")]), st.booleans())
@example(4, 6, 24, 0.1, False)  # the one shape that must be used
def test_any_chunk_message_is_either_used_consistently_or_rejected(horizon, dim, size, dt, poison):
    robot = load_robot_config("sim_arm")
    from dysta_ros.execution import ChunkExecutor, ExecutorConfig

    executor = ChunkExecutor(ExecutorConfig(), robot)
    msg = ActionChunk(horizon=horizon, dim=dim, dt=dt, action_space="joint_position",
                      names=JOINTS[:dim], actions=[float("nan") if poison else 0.1] * size)
    msg.header.stamp = conv.to_stamp(100.0)
    try:
        executor.on_chunk(conv.msg_to_chunk(msg), now=100.0)
    except InputError:
        assert executor.counts["accepted"] == 0
        return
    assert executor.counts["accepted"] == 1
    assert (horizon, dim, size, dt, poison) == (horizon, 6, horizon * 6, 0.1, False) and horizon >= 1


def test_end_effector_messages():
    pose = conv.pose_msg(np.array([0.1, 0.2, 0.3, 0.0, 0.0, np.pi / 2]), "base_link", 1.5)
    o = pose.pose.orientation
    np.testing.assert_allclose([o.x, o.y, o.z, o.w], [0, 0, np.sin(np.pi / 4), np.cos(np.pi / 4)], atol=1e-12)
    assert (pose.pose.position.z, pose.header.frame_id) == (pytest.approx(0.3), "base_link")
    quaternion = conv.pose_msg(np.array([0, 0, 0, 0, 0, 0, 2.0]), "base_link", 0.0).pose.orientation
    assert quaternion.w == pytest.approx(1.0)  # normalised
    twist = conv.twist_msg(np.arange(6.0), "tool0", 2.0)
    assert (twist.twist.linear.y, twist.twist.angular.z) == (1.0, 5.0)
    hold = conv.trajectory_msg(JOINTS, np.zeros((0, 0)), [])
    assert hold.joint_names == JOINTS and not hold.points  # JTC: stop and hold


EE_ROBOT = """name: servo_arm
joints: [a, b]
limits: {position_lower: [-1, -1], position_upper: [1, 1], velocity: [1, 1]}
action_space: ee_pose
command_output: ee_pose
command_topics: {ee_pose: /servo_node/pose_target_cmds}
"""
EE_WORKSPACE = """workspace:
  min_xyz: [-0.3, -0.6, 0.01]
  max_xyz: [0.9, 0.6, 0.8]
  max_linear_speed: 0.25
  max_angular_speed: 1.0
"""


@pytest.fixture
def ros_session():
    rclpy.init()
    yield
    rclpy.shutdown()


def ee_rig(tmp_path, with_workspace):
    """An ee_pose executor on a robot config written to tmp_path, and a test node around it."""
    from geometry_msgs.msg import PoseStamped

    path = tmp_path / "servo_arm.yaml"
    path.write_text(EE_ROBOT + (EE_WORKSPACE if with_workspace else ""))
    executor_node = ChunkExecutorNode(parameter_overrides=[
        Parameter("robot", value=str(path)), Parameter("control_rate_hz", value=RATE),
        Parameter("max_chunk_age_s", value=5.0), Parameter("diagnostic_period_s", value=0.05),
        Parameter("blending", value="latest")])
    node = rclpy.create_node("ee_executor_test")
    spin = SingleThreadedExecutor()
    spin.add_node(executor_node)
    spin.add_node(node)
    poses, diagnostics = [], []
    node.create_subscription(PoseStamped, "/servo_node/pose_target_cmds", poses.append, 50)
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 50)
    chunk_pub = node.create_publisher(ActionChunk, "/dysta/action_chunk", conv.RELIABLE_QOS)
    assert spin_until(spin, lambda: chunk_pub.get_subscription_count() > 0)

    def send(position):
        now = node.get_clock().now().nanoseconds * 1e-9
        actions = np.tile(np.asarray([list(position) + [0.0, 0.0, 0.0]], np.float32), (40, 1))
        chunk_pub.publish(conv.chunk_to_msg(types.ActionChunk(
            stamp=now, actions=actions, dt=0.1, action_space="ee_pose",
            names=["x", "y", "z", "roll", "pitch", "yaw"])))

    def workspace_statuses():
        return [(s.level[0], s.message, {kv.key: kv.value for kv in s.values})
                for array in diagnostics for s in array.status if s.name == "chunk_executor: workspace"]

    def close():
        spin.shutdown()
        executor_node.destroy_node()
        node.destroy_node()

    return executor_node, spin, send, poses, workspace_statuses, close


def test_end_effector_poses_stay_in_the_workspace_and_clamps_are_reported(ros_session, tmp_path):
    executor_node, spin, send, poses, statuses, close = ee_rig(tmp_path, with_workspace=True)
    try:
        assert spin_until(spin, lambda: statuses() and statuses()[-1][1] == "inside the workspace")
        send([0.3, 0.0, 0.2])  # inside: passed through, reported OK
        assert spin_until(spin, lambda: len(poses) >= 2)
        p = poses[-1].pose.position
        np.testing.assert_allclose([p.x, p.y, p.z], [0.3, 0.0, 0.2], atol=1e-6)
        assert statuses()[-1][0] == 0
        # 1.5 m above the box's top and 0.4 m past its side: clamped onto it, WARN with how far.
        first = len(poses)
        send([1.3, 0.0, 2.3])
        assert spin_until(spin, lambda: any(s[0] == 1 for s in statuses()))
        level, message, values = next(s for s in statuses() if s[0] == 1)
        assert message == "clamped: position 1.552 m outside the box"
        assert int(values["clamped"]) >= 1
        assert float(values["worst_position_m"]) == pytest.approx(1.552, abs=1e-3)
        assert spin_until(spin, lambda: len(poses) >= first + 3)
        for pose in poses:
            p = pose.pose.position
            assert -0.3 <= p.x <= 0.9 and -0.6 <= p.y <= 0.6 and 0.01 <= p.z <= 0.8
            assert pose.header.frame_id == "base_link"
        p = poses[-1].pose.position
        np.testing.assert_allclose([p.x, p.y, p.z], [0.9, 0.0, 0.8], atol=1e-6)
        # Back inside: the WARN gives way to OK once it has been reported.
        send([0.3, 0.0, 0.2])
        warned = len(statuses())
        assert spin_until(spin, lambda: len(statuses()) > warned
                          and statuses()[-1][1] == "inside the workspace")
        # A NaN action is rejected: no pose comes of it (the valid plan before it goes on).
        send([0.3, float("nan"), 0.2])
        assert spin_until(spin, lambda: executor_node.core.counts["rejected"] == 1)
        after = len(poses)
        assert spin_until(spin, lambda: len(poses) >= after + 3)
        for pose in poses[after:]:
            p = pose.pose.position
            np.testing.assert_allclose([p.x, p.y, p.z], [0.3, 0.0, 0.2], atol=1e-6)
    finally:
        close()


def test_end_effector_output_without_a_workspace_says_it_is_unbounded(ros_session, tmp_path):
    _, spin, send, poses, statuses, close = ee_rig(tmp_path, with_workspace=False)
    try:
        assert spin_until(spin, lambda: bool(statuses()))
        level, message, _ = statuses()[-1]
        assert level == 1
        assert message == "ee_pose outputs are unbounded: robot 'servo_arm' has no workspace in its config"
        send([1.3, 0.0, 2.3])  # today's behaviour: passed through as it is
        assert spin_until(spin, lambda: bool(poses))
        p = poses[-1].pose.position
        np.testing.assert_allclose([p.x, p.y, p.z], [1.3, 0.0, 2.3], atol=1e-6)
    finally:
        close()
