"""policy_node over real rclpy: frames in -> chunks out, stale and bad inputs hold and are reported.

`dysta-ros run` (policy_node + chunk_executor, tiny preset) runs in its own process; this test
process publishes cameras and joint states on the wire and reads what comes back.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.srv import GetState  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image, JointState  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from dysta_ros.execution import TimedChunk, limit_path  # noqa: E402
from dysta_ros.msg import ActionChunk, TokenStats  # noqa: E402
from dysta_ros.nodes import conversions as conv  # noqa: E402
from dysta_ros.nodes.image_conversion import rgb_to_image  # noqa: E402
from dysta_ros.robot import load_robot_config  # noqa: E402
from ros_helpers import spin_until  # noqa: E402

JOINTS = [f"joint{i}" for i in range(1, 7)]
RNG = np.random.default_rng(0)


class Probe:
    """A test node: publishes inputs, records chunks, stats, commands and diagnostics."""

    def __init__(self, camera_topic="/camera/image_raw", camera_type=Image):
        self.node = rclpy.create_node("policy_probe")
        self.spin = SingleThreadedExecutor()
        self.spin.add_node(self.node)
        self.camera_pub = self.node.create_publisher(camera_type, camera_topic, conv.CAMERA_QOS)
        self.state_pub = self.node.create_publisher(JointState, "/joint_states", conv.STATE_QOS)
        self.chunks, self.stats, self.commands, self.diagnostics = [], [], [], []
        self.node.create_subscription(ActionChunk, "/dysta/action_chunk", self.chunks.append, 10)
        self.node.create_subscription(TokenStats, "/dysta/token_stats", self.stats.append, 10)
        self.node.create_subscription(JointTrajectory, "/joint_trajectory_controller/joint_trajectory",
                                      self.commands.append, 10)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 50)
        self.positions = [0.1 * i for i in range(6)]  # of the joints in reversed order, as sent

    def now_msg(self):
        return self.node.get_clock().now().to_msg()

    def publish(self, msg, age_s=0.0):
        """Publish a camera message stamped `age_s` in the past, with a fresh joint state."""
        now = self.node.get_clock().now()
        stamp = (now - rclpy.duration.Duration(seconds=age_s)).to_msg()
        msg.header.stamp = stamp
        self.camera_pub.publish(msg)
        state = JointState(name=list(reversed(JOINTS)), position=list(self.positions))
        state.header.stamp = now.to_msg()
        self.state_pub.publish(state)
        return conv.to_seconds(stamp)

    def status(self, name):
        for array in reversed(self.diagnostics):
            for status in array.status:
                if status.name == f"policy_node: {name}":
                    return status.level[0], status.message
        return None

    def publishing_until(self, make_msg, condition, age_s=0.0, timeout_s=30.0, rate_hz=30.0):
        """Publish fresh messages at a camera's rate until `condition()`; return the stamps sent."""
        sent, last = [], [float("-inf")]

        def tick():
            if condition():
                return True
            # Paced like a camera: spin_once returns as soon as any callback ran, and an unpaced
            # loop floods the node and starves its inference thread of the GIL.
            if time.monotonic() - last[0] >= 1.0 / rate_hz:
                last[0] = time.monotonic()
                sent.append(self.publish(make_msg(), age_s))
            return False

        assert spin_until(self.spin, tick, timeout_s=timeout_s), (self.status("inputs"),
                                                                  self.status("inference"))
        return sent

    def state(self):
        """Return the joint state it sends, in the robot's joint order."""
        return np.array(self.positions[::-1])

    def call(self, srv_type, name, request):
        client = self.node.create_client(srv_type, name)
        # generous: once, on a machine loaded by benchmarks, discovery of a service took over 30 s
        assert client.wait_for_service(timeout_sec=90.0), name
        future = client.call_async(request)
        assert spin_until(self.spin, future.done, timeout_s=60.0), name
        return future.result()

    def close(self):
        self.spin.shutdown()
        self.node.destroy_node()


def good_frame():
    return rgb_to_image(RNG.integers(0, 255, (48, 64, 3), dtype=np.uint8), Image, "bgr8")


def chunk_stamps(probe):
    return {conv.to_seconds(c.header.stamp) for c in probe.chunks}


def executor_node(**values):
    """chunk_executor composed into the test's process, as `dysta-ros run` composes it."""
    from dysta_ros.nodes.chunk_executor import ChunkExecutorNode

    values = {"diagnostic_period_s": 0.1, "blending": "latest", "max_state_age_s": 5.0, **values}
    return ChunkExecutorNode(parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])


def planned_points(trajectory, chunk, start, robot, period):
    """The points chunk_executor sends from `start` on `chunk` alone (blending latest).

    Point j is the chunk's plan at the trajectory's stamp + (j + 1) periods (action k is for
    the observation stamp + k dt), then held to the limits: the first from `start`, each from
    the one before. Returns (the limited points, the plan they were limited from).
    """
    actions = np.array(conv.msg_to_chunk(chunk).actions, dtype=np.float64)  # chunk.names == JOINTS
    timed = TimedChunk(conv.to_seconds(chunk.header.stamp), chunk.dt, actions, 0.0)
    now = conv.to_seconds(trajectory.header.stamp)
    plan = np.array([timed.sample(now + (j + 1) * period) for j in range(len(trajectory.points))])
    return limit_path(plan, start, period, robot)[0], plan


def explaining_chunk(probe, trajectory, start, robot, period):
    """Return the chunk whose plan, from `start`, gives exactly this trajectory (None if none does)."""
    points = np.array([p.positions for p in trajectory.points])
    for chunk in probe.chunks:
        expected, plan = planned_points(trajectory, chunk, start, robot, period)
        if np.allclose(points, expected, rtol=0, atol=1e-9):
            return chunk, plan
    return None


@pytest.fixture
def ros():
    rclpy.init()
    yield
    rclpy.shutdown()


def test_run_process_steps_on_frames_holds_on_stale_or_bad_ones_and_stops_on_ctrl_c(ros, tmp_path):
    probe = Probe()
    command = [sys.executable, "-m", "dysta_ros.cli", "run", "--strategy", "dysta", "--instruction", "reach",
               "--param", "policy_node:inference_rate_hz=20.0", "--param", "policy_node:max_image_age_s=1.0",
               "--param", "policy_node:diagnostic_period_s=0.1", "--json", str(tmp_path / "run.json")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert spin_until(probe.spin, lambda: probe.camera_pub.get_subscription_count() > 0
                          and probe.state_pub.get_subscription_count() > 0, timeout_s=60.0)

        # Joint states but no camera: the node holds and names the missing camera.
        def only_states():
            probe.state_pub.publish(JointState(header=_header(probe), name=JOINTS, position=[0.0] * 6))
            status = probe.status("inputs")
            return status is not None and "/camera/image_raw (nothing received)" in status[1]

        assert spin_until(probe.spin, only_states, timeout_s=30.0), probe.status("inputs")
        assert probe.status("inputs")[0] == 1 and not probe.chunks

        # Fresh frames: chunks and stats come back, stamped with the frames' stamps.
        sent = probe.publishing_until(good_frame, lambda: len(probe.chunks) >= 2 and probe.stats)
        chunk = probe.chunks[-1]
        assert conv.to_seconds(chunk.header.stamp) in sent
        assert list(chunk.names) == JOINTS and chunk.strategy == "dysta"
        assert chunk.horizon * chunk.dim == len(chunk.actions) and chunk.dim == 6
        assert np.all(np.isfinite(chunk.actions))
        assert conv.to_seconds(chunk.inference_end) >= conv.to_seconds(chunk.inference_start)
        assert probe.stats[0].strategy == "dysta" and probe.stats[0].total_ms > 0
        # ... and the executor in the same process turns them into commands.
        probe.publishing_until(good_frame, lambda: any(c.points for c in probe.commands))

        # A stale camera (frames 5 s old): no chunk from them, and the diagnostic names it.
        stale = probe.publishing_until(
            good_frame, lambda: "stale input: /camera/image_raw" in (probe.status("inputs") or (0, ""))[1],
            age_s=5.0)
        assert probe.status("inputs")[0] == 1
        assert not chunk_stamps(probe) & set(stale)

        # Bad frames: an ERROR that says what is wrong, no chunk, and the node lives on.
        def wrong_encoding():
            msg = good_frame()
            msg.encoding = "yuv422"
            return msg

        def wrong_size():
            msg = good_frame()
            msg.height += 3
            return msg

        for make, message in [(wrong_encoding, "unsupported image encoding 'yuv422'"),
                              (wrong_size, "step*height")]:
            bad = probe.publishing_until(
                make, lambda m=message: (s := probe.status("inputs")) is not None and s[0] == 2 and m in s[1])
            assert not chunk_stamps(probe) & set(bad)
        # The next good frame works again.
        count = len(probe.chunks)
        good = probe.publishing_until(good_frame, lambda: len(probe.chunks) > count + 1)
        assert chunk_stamps(probe) & set(good)
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
        probe.close()
    assert process.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    # --json FILE: the summary at exit, one run per node with its last statuses
    document = json.loads((tmp_path / "run.json").read_text())
    policy, executor = document["runs"]
    assert policy["node"] == "policy_node" and executor["node"] == "chunk_executor"
    # a step counts once its chunk and stats are out: Ctrl-C may end the context between the two
    assert policy["steps"] >= len(probe.chunks) - 1 >= 1 and policy["step_ms_p50"] > 0
    assert "inputs" in policy["statuses"] and policy["statuses"]["lifecycle"]["level"] in ("OK", "WARN")
    assert document["meta"]["strategy"] == "dysta" and document["meta"]["namespace"] == "/dysta"


def _header(probe):
    from std_msgs.msg import Header

    return Header(stamp=probe.now_msg())


def test_compressed_camera_with_autostart_survives_a_corrupt_jpeg(ros):
    from dysta_ros.nodes.policy_node import PolicyNode

    topic = "/cam/image_raw/compressed"
    node = PolicyNode(parameter_overrides=[
        Parameter("autostart", value=True), Parameter("camera_topics", value=[topic]),
        Parameter("strategy", value="full"), Parameter("diagnostic_period_s", value=0.1),
        Parameter("max_image_age_s", value=2.0), Parameter("inference_rate_hz", value=50.0)])
    executor = executor_node()
    probe = Probe(topic, CompressedImage)
    probe.spin.add_node(node)
    probe.spin.add_node(executor)
    robot, period = load_robot_config("sim_arm"), executor.core.config.period
    ok, jpeg = cv2.imencode(".jpeg", RNG.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    assert ok

    def good():
        return CompressedImage(format="jpeg", data=jpeg.tobytes())

    def corrupt():
        return CompressedImage(format="jpeg", data=jpeg.tobytes()[: len(jpeg) // 2])

    try:
        # autostart configured and activated it: ask over the lifecycle service, as a manager would.
        get_state = probe.node.create_client(GetState, "/dysta/policy_node/get_state")
        assert get_state.wait_for_service(timeout_sec=10.0)
        future = get_state.call_async(GetState.Request())
        assert spin_until(probe.spin, future.done)
        assert future.result().current_state.label == "active"
        probe.publishing_until(good, lambda: len(probe.chunks) >= 1 and any(c.points for c in probe.commands))
        # The composed executor sends the plan of a chunk ahead as a JointTrajectory: the
        # lookahead's points, held to the joint limits from the measured state (the first
        # trajectory) (test_trajectories_... below forces clamps).
        trajectory = next(c for c in probe.commands if c.points)
        assert trajectory.joint_names == JOINTS
        assert len(trajectory.points) == round(executor.core.config.trajectory_lookahead_s / period)
        assert explaining_chunk(probe, trajectory, probe.state(), robot, period) is not None
        bad = probe.publishing_until(corrupt, lambda: (s := probe.status("inputs")) is not None
                                     and s[0] == 2 and "truncated JPEG" in s[1])
        assert not chunk_stamps(probe) & set(bad)
        count = len(probe.chunks)
        probe.publishing_until(good, lambda: len(probe.chunks) > count + 1)
        # Refused at run time, with what is allowed.
        result = node.set_parameters([Parameter("strategy", value="fastest")])[0]
        assert not result.successful and "full, dysta, gotohunt, vla_cache, dysta_gotohunt" in result.reason
        result = node.set_parameters([Parameter("inference_rate_hz", value=0.0)])[0]
        assert not result.successful
        # A live strategy switch keeps stepping, with the new strategy.
        assert node.set_parameters([Parameter("strategy", value="gotohunt")])[0].successful
        probe.publishing_until(good, lambda: probe.chunks[-1].strategy == "gotohunt")
        # The whole lifecycle again: deactivate stops stepping, cleanup frees the model,
        # configure + activate bring it back.
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert node.runtime is None and node.loop is None
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        count = len(probe.chunks)
        probe.publishing_until(good, lambda: len(probe.chunks) > count)
    finally:
        node.close()
        probe.spin.remove_node(node)
        probe.spin.remove_node(executor)
        node.destroy_node()
        executor.destroy_node()
        probe.close()


def test_a_value_refused_at_start_up_fails_configure_until_it_is_set(ros):
    """As `ros2 run dysta_ros policy_node --ros-args -p inference_rate_hz:=0.0` with autostart."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState
    from rcl_interfaces.srv import SetParameters

    probe = Probe()
    process = subprocess.Popen(
        [sys.executable, "-m", "dysta_ros.nodes.policy_node", "--ros-args", "-p", "inference_rate_hz:=0.0",
         "-p", "autostart:=true", "-p", "diagnostic_period_s:=0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    refusal = "inference_rate_hz must be in [0.1, 1000.0], got 0.0"
    configure = ChangeState.Request(transition=Transition(id=Transition.TRANSITION_CONFIGURE))

    def state():
        return probe.call(GetState, "/dysta/policy_node/get_state", GetState.Request()).current_state.label

    try:
        # autostart's configure failed: the node is up, unconfigured, ERROR naming the value.
        assert spin_until(probe.spin, lambda: "configure failed" in (probe.status("lifecycle") or (0, ""))[1],
                          timeout_s=60.0)
        level, message = probe.status("lifecycle")
        assert level == 2 and refusal in message and "set a valid value, then configure again" in message
        assert state() == "unconfigured"
        assert not probe.call(ChangeState, "/dysta/policy_node/change_state", configure).success
        # `ros2 param set /policy_node inference_rate_hz 5.0`, then configure: it goes ahead.
        fixed = Parameter("inference_rate_hz", value=5.0).to_parameter_msg()
        result = probe.call(SetParameters, "/dysta/policy_node/set_parameters",
                            SetParameters.Request(parameters=[fixed]))
        assert result.results[0].successful
        assert probe.call(ChangeState, "/dysta/policy_node/change_state", configure).success
        assert state() == "inactive"
        assert not probe.chunks and process.poll() is None
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
        probe.close()
    assert process.returncode == 0, err[-3000:]
    assert "Traceback" not in out + err, err[-3000:]
    # Each failed configure (autostart's, then the one asked for) is one line of log.
    lines = [line for line in (out + err).splitlines() if refusal in line]
    assert len(lines) == 2 and all("[ERROR]" in line and "configure failed" in line for line in lines), lines


def test_trajectories_keep_to_the_joint_limits_and_stop_on_estop(ros):
    """policy_node's chunks reach the robot through chunk_executor only, composed in one process."""
    from std_msgs.msg import Bool
    from std_srvs.srv import Trigger

    from dysta_ros.nodes.policy_node import PolicyNode

    robot = load_robot_config("sim_arm")
    node = PolicyNode(parameter_overrides=[
        Parameter("autostart", value=True), Parameter("strategy", value="full"),
        Parameter("diagnostic_period_s", value=0.1), Parameter("max_image_age_s", value=2.0),
        Parameter("inference_rate_hz", value=50.0)])
    executor = executor_node()
    period = executor.core.config.period
    probe = Probe()
    probe.positions = list((robot.lower + 0.05)[::-1])  # the arm at its lower limits: far from any plan
    probe.spin.add_node(node)
    probe.spin.add_node(executor)
    estop = probe.node.create_publisher(Bool, "/dysta/estop", conv.ESTOP_QOS)

    def moving():
        return [c for c in probe.commands if c.points]

    def executor_status(name):
        for array in reversed(probe.diagnostics):
            for status in array.status:
                if status.name == f"chunk_executor: {name}":
                    return status.level[0], status.message
        return None

    try:
        probe.publishing_until(good_frame, lambda: len(moving()) >= 2)
        # The first trajectory starts from the measured state, on one chunk's plan, exactly.
        first = moving()[0]
        chunk, plan = explaining_chunk(probe, first, probe.state(), robot, period)
        points = np.array([p.positions for p in first.points])  # (N, 6)
        clamped = int(np.sum(np.any(np.abs(points - plan) > 1e-12, axis=1)))
        for trajectory in moving():
            points = np.array([p.positions for p in trajectory.points])  # (N, 6)
            steps = np.diff(points, axis=0)
            assert np.all(np.abs(steps) <= robot.max_velocity * period + 1e-9)
            assert np.all(points >= robot.lower) and np.all(points <= robot.upper)
        first_step = np.array(first.points[0].positions) - probe.state()
        assert np.all(np.abs(first_step) <= robot.max_velocity * period + 1e-9)
        assert clamped > 0  # the test is only worth it if the limits bit
        assert spin_until(probe.spin,
                          lambda: "clipped to limits" in (executor_status("commands") or (0, ""))[1])
        assert executor_status("commands")[0] == 0  # commanding, clipped: not a fault

        # E-stop: the controller is told to stop (an empty trajectory) and nothing moves after it,
        # while chunks keep coming; only /dysta/clear_estop releases it.
        assert spin_until(probe.spin, lambda: estop.get_subscription_count() > 0)
        sent = len(probe.commands)
        estop.publish(Bool(data=True))
        assert spin_until(probe.spin, lambda: any(not c.points for c in probe.commands[sent:]))
        # one publisher, reliable: a trajectory sent before the stop arrives before it
        stop = next(i for i in range(sent, len(probe.commands)) if not probe.commands[i].points)
        stopped, chunks = len(probe.commands), len(probe.chunks)
        probe.publishing_until(good_frame, lambda: len(probe.chunks) >= chunks + 3)
        assert all(not c.points for c in probe.commands[stop:])
        assert spin_until(probe.spin, lambda: "e-stop" in (executor_status("commands") or (0, ""))[1])
        level, message = executor_status("commands")
        assert level == 2 and "e-stop engaged" in message and "/dysta/clear_estop" in message
        estop.publish(Bool(data=False))  # not a release
        probe.publishing_until(good_frame, lambda: len(probe.chunks) >= chunks + 5)
        assert all(not c.points for c in probe.commands[stop:])
        assert probe.call(Trigger, "/dysta/clear_estop", Trigger.Request()).message == "e-stop released"
        probe.publishing_until(good_frame, lambda: any(c.points for c in probe.commands[stopped:]))

        # Non-finite actions (here: corrupt de-normalisation statistics) send nothing: no chunk
        # comes of a frame sent after the corruption (a step that began before it used older frames).
        errors = node.step.report.errors
        cfg = node.runtime.model.cfg
        action_std = cfg.action_std
        cfg.action_std = [float("nan")] + [1.0] * (cfg.action_dim - 1)
        corrupted = probe.publishing_until(good_frame, lambda: node.step.report.errors >= errors + 4)
        assert not chunk_stamps(probe) & set(corrupted)
        # Deactivating stops the controller too: the executor's deadman (no chunk) stops it.
        # Moving again first (good statistics back), so the stop is deactivate's doing.
        cfg.action_std, moved = action_std, len(probe.commands)
        probe.publishing_until(good_frame, lambda: any(c.points for c in probe.commands[moved:]))
        count = len(probe.commands)
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert spin_until(probe.spin, lambda: any(not c.points for c in probe.commands[count:]))
    finally:
        node.close()
        probe.spin.remove_node(node)
        probe.spin.remove_node(executor)
        node.destroy_node()
        executor.destroy_node()
        probe.close()


def test_a_core_warning_reaches_diagnostics(ros):
    """The reference checkpoint run with a DySta layout it was not trained on: the core warns."""
    from pathlib import Path

    from dysta_ros.nodes.policy_node import PolicyNode

    reference = Path(__file__).resolve().parents[2] / "checkpoints" / "reference"
    node = PolicyNode(parameter_overrides=[
        Parameter("autostart", value=True), Parameter("model", value=str(reference)),
        Parameter("strategy", value="dysta"), Parameter("dysta.cache_language", value=True),
        Parameter("diagnostic_period_s", value=0.1), Parameter("max_image_age_s", value=2.0)])
    probe = Probe()
    probe.spin.add_node(node)
    try:
        # OK until the core says something: no frame has been sent, so no step can have warned.
        # Read from the node's own board (under its lock), not from whichever /diagnostics
        # message happened to arrive last while the node's threads may still be updating it.
        assert node.board.snapshot()["core"].level == 0
        assert spin_until(probe.spin, lambda: probe.status("core") is not None)
        probe.publishing_until(good_frame, lambda: (probe.status("core") or (0,))[0] == 1)
        level, message = probe.status("core")
        assert "cache_language" in message and "trained" in message
        # A warning, not a hold: the policy keeps stepping. The warning is raised inside the
        # step that then publishes its chunk, so wait for that chunk rather than read at once.
        probe.publishing_until(good_frame, lambda: len(probe.chunks) > 0)
    finally:
        probe.spin.remove_node(node)
        node.close()
        node.destroy_node()
        probe.close()
    assert not any(isinstance(h, type(node.core_log)) for h in logging.getLogger("dysta_ros").handlers)


def test_a_node_shut_down_while_active_no_longer_reports_active(ros):
    """`ros2 lifecycle set /dysta/policy_node shutdown` from active: finalized, never to step again."""
    from dysta_ros.nodes.policy_node import PolicyNode

    node = PolicyNode(parameter_overrides=[
        Parameter("autostart", value=True), Parameter("strategy", value="full"),
        Parameter("diagnostic_period_s", value=0.1)])
    probe = Probe()
    probe.spin.add_node(node)
    try:
        assert spin_until(probe.spin, lambda: probe.status("lifecycle") == (0, "active"), timeout_s=60.0)
        assert node.trigger_shutdown() == TransitionCallbackReturn.SUCCESS
        # It said OK "active" for as long as it lived: a monitor saw a healthy policy that was gone.
        assert spin_until(probe.spin, lambda: (probe.status("lifecycle") or (0, ""))[0] == 1
                          and "finalized" in probe.status("lifecycle")[1])
        assert node.loop is None  # the inference thread is stopped
    finally:
        probe.spin.remove_node(node)
        node.destroy_node()
        probe.close()


def test_a_clock_answer_of_nan_does_not_make_old_frames_fresh(ros):
    """clock_sync: estimate, and something on /dysta/clock_pong answers our pings with NaN times."""
    from std_msgs.msg import Float64MultiArray

    from dysta_ros.nodes.clock_offset import PING_QOS
    from dysta_ros.nodes.policy_node import PolicyNode

    node = PolicyNode(parameter_overrides=[
        Parameter("autostart", value=True), Parameter("strategy", value="full"),
        Parameter("clock_sync", value="estimate"), Parameter("diagnostic_period_s", value=0.1)])
    probe = Probe()
    pong = probe.node.create_publisher(Float64MultiArray, "/dysta/clock_pong", PING_QOS)
    probe.node.create_subscription(Float64MultiArray, "/dysta/clock_ping", lambda msg: pong.publish(
        Float64MultiArray(data=[msg.data[0], float("nan"), float("nan")])), PING_QOS)
    probe.spin.add_node(node)
    estimator = node.clock.estimator
    try:
        assert spin_until(probe.spin, lambda: estimator.trips or estimator.refused, timeout_s=60.0)
        # A NaN offset made now() NaN, every age NaN, and no comparison with the limit true:
        # frames 5 s old were stepped on as fresh.
        probe.publishing_until(good_frame, lambda: "s old" in (probe.status("inputs") or (0, ""))[1],
                               age_s=5.0)
        assert not probe.chunks
    finally:
        probe.spin.remove_node(node)
        node.close()
        node.destroy_node()
        probe.close()
