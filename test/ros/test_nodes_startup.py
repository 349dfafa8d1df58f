"""Bad configuration at start-up: plain nodes and `dysta-ros run` refuse with one line and exit 2;
`dysta-ros run` refuses unknown names, a node given one logs it.

The entry points run as `ros2 run` runs them (their `main()`, in a process of their own), so the
exit code and what reaches the terminal are what a user sees. policy_node, a lifecycle node,
stays up instead: test_nodes_policy.py.
"""

import json
import signal
import subprocess
import sys

import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.parameter import Parameter  # noqa: E402

from dysta_ros.cli import main  # noqa: E402
from dysta_ros.errors import ConfigError  # noqa: E402
from ros_helpers import spin_until  # noqa: E402


def start(*argv):
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("argv, reason", [
    (["dysta_ros.nodes.chunk_executor", "--ros-args", "-p", "control_rate_hz:=0.0"],
     "[chunk_executor]: not started: control_rate_hz must be in [0.1, 1000.0], got 0.0"),
    (["dysta_ros.nodes.sim_node", "--ros-args", "-p", "task:=bogus"],
     "[sim_node]: not started: task 'bogus' is not allowed; choose one of: reach, memory"),
    (["dysta_ros.cli", "run", "--duration", "1", "--param", "policy_node:inference_rate_hz=0"],
     "dysta-ros run: policy_node: inference_rate_hz must be in [0.1, 1000.0], got 0.0"),
], ids=["chunk_executor", "sim_node", "dysta-ros run"])
def test_a_refused_value_at_start_up_is_one_line_and_exit_code_2(argv, reason):
    result = start(*argv)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and reason in lines[0], lines


def test_run_on_a_device_that_is_not_here_is_a_refused_configure_in_one_error_line(tmp_path):
    # the one device check, reached through policy_node's configure (issue 15: it exited 1 silently)
    summary = tmp_path / "run.json"
    result = start("dysta_ros.cli", "run", "--duration", "1", "--device", "gpu", "--json", str(summary))
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and "configure failed: device 'gpu' is not a torch device; available here: cpu" \
        in errors[0], errors
    assert "Traceback" not in result.stderr
    # --json still writes its document, whose policy_node status says why it did not run
    document = json.loads(summary.read_text())
    (policy,) = [run for run in document["runs"] if run["node"] == "policy_node"]
    lifecycle = policy["statuses"]["lifecycle"]
    assert lifecycle["level"] == "ERROR" and "device 'gpu' is not a torch device" in lifecycle["message"]
    assert document["meta"]["device"] == "gpu"


def test_an_unknown_name_given_to_a_node_is_logged_with_the_closest_known_one():
    process = subprocess.Popen(
        [sys.executable, "-m", "dysta_ros.nodes.chunk_executor", "--ros-args", "-p", "blend:=latest"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in process.stderr:  # up to the line that says it started
            lines.append(line)
            if "blending weighted_average" in line:
                break
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
    assert any("[WARN]" in line and "ignored: chunk_executor has no parameter 'blend' (did you mean "
               "'blending'?)" in line for line in lines), lines


@pytest.mark.parametrize("param, says", [
    ("policy_node:dysta.delta_l=0.1", "policy_node has no parameter 'dysta.delta_l' (did you mean "
                                      "'dysta.delta_l1' or 'dysta.delta_l2'"),
    ("policy_node:foo=1", "policy_node has no parameter 'foo'; known: autostart, camera_topics"),
    ("chunk_executor:blend=latest", "chunk_executor has no parameter 'blend' (did you mean 'blending'?); "
                                    "known: blending, command_output"),
    ("policy_node:strategy=fastest", "strategy 'fastest' is not allowed; choose one of: full, dysta"),
])
def test_run_refuses_unknown_names_and_bad_values_before_any_node_starts(param, says, capsys):
    assert main(["run", "--duration", "1", "--param", param]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1, err
    assert not rclpy.ok()  # refused before ROS (and so any node) started


@pytest.fixture
def ros():
    rclpy.init()
    yield
    rclpy.shutdown()


def test_a_refused_executor_is_not_built_at_all(ros):
    from dysta_ros.nodes.chunk_executor import ChunkExecutorNode

    with pytest.raises(ConfigError, match="blending 'avg' is not allowed; choose one of: latest"):
        ChunkExecutorNode(parameter_overrides=[Parameter("blending", value="avg")])
    # Integers for float parameters (as `-p control_rate_hz:=20` gives) are taken as floats.
    node = ChunkExecutorNode(parameter_overrides=[Parameter("control_rate_hz", value=20)])
    try:
        assert node.core.config.control_rate_hz == 20.0
    finally:
        node.destroy_node()


def robot_with(tmp_path, old: str, new: str) -> str:
    """sim_arm's robot config with one line changed; return its path."""
    from dysta_ros.robot import config_path

    text = config_path("robots", "sim_arm").read_text()
    assert old in text
    path = tmp_path / "robot.yaml"
    path.write_text(text.replace(old, new))
    return str(path)


@pytest.mark.parametrize("module", ["chunk_executor", "sim_node"])
def test_a_robot_config_topic_ros_refuses_is_one_line_and_exit_code_2(module, tmp_path):
    # rclpy refuses the name only when the subscription is made: it was a traceback
    robot = robot_with(tmp_path, "state_topic: /joint_states", "state_topic: /joint states")
    result = start(f"dysta_ros.nodes.{module}", "--ros-args", "-p", f"robot:={robot}")
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and f"[{module}]: not started: robot 'sim_arm': state_topic '/joint states' " \
        "is not a valid topic name: topic name must not contain characters" in lines[0], lines


@pytest.mark.parametrize("robot_line, topics, says", [
    (None, ["/cam one"], "camera topic '/cam one' is not a valid topic name"),
    (("/camera/image_raw,", "/camera/image_raw/,"), [],
     "robot 'sim_arm': cameras.main.topic '/camera/image_raw/' is not a valid topic name: topic name must "
     "not end with a forward slash"),
], ids=["camera_topics", "robot-config"])
def test_policy_node_refuses_a_topic_ros_refuses_in_configure_and_says_so(ros, tmp_path, robot_line, topics,
                                                                          says):
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn

    from dysta_ros.nodes.policy_node import PolicyNode

    robot = robot_with(tmp_path, *robot_line) if robot_line else "sim_arm"
    overrides = [Parameter("robot", value=robot), Parameter("diagnostic_period_s", value=0.1)]
    if topics:  # else the robot config's cameras
        overrides.append(Parameter("camera_topics", value=topics))
    node = PolicyNode(parameter_overrides=overrides)
    probe = rclpy.create_node("startup_probe")
    arrays = []
    probe.create_subscription(DiagnosticArray, "/diagnostics", arrays.append, 10)
    executor = SingleThreadedExecutor()
    for each in (node, probe):
        executor.add_node(each)

    def said():
        return [(s.level[0], s.message) for a in arrays for s in a.status
                if s.name == "policy_node: lifecycle"]

    try:
        # rclpy raised from create_subscription: configure ended in ERROR, unlogged, "unconfigured"
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert spin_until(executor, lambda: any(level == 2 and says in text for level, text in said()),
                          timeout_s=30.0), said()[-3:]
        assert not list(node.subscriptions), "nothing subscribed for a refused configure"
    finally:
        executor.shutdown()
        node.destroy_node()
        probe.destroy_node()


def test_robot_link_refuses_a_camera_topic_ros_refuses(ros):
    from dysta_ros.nodes.robot_link import RobotLinkNode

    with pytest.raises(ConfigError, match="camera topic '/cam one' is not a valid topic name"):
        RobotLinkNode(parameter_overrides=[Parameter("camera_topics", value=["/cam one"])])
