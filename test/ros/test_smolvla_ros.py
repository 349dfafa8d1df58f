"""A LeRobot SmolVLA checkpoint on ROS: SO-101 joint names and units out of real image topics.

Needs test/data/smolvla_tiny (the tiny LeRobot-saved SmolVLA, from the smolvla branch).
"""

import json
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402

from dysta_ros.cli import main  # noqa: E402
from dysta_ros.nodes import conversions as conv  # noqa: E402
from dysta_ros.nodes.image_conversion import rgb_to_image  # noqa: E402
from dysta_ros.policy.runtime import build_runtime  # noqa: E402
from dysta_ros.robot import load_robot_config  # noqa: E402
from dysta_ros.types import Observation  # noqa: E402
from test_nodes_policy import Probe  # noqa: E402

DATA = Path("test/data/smolvla_tiny")
CHECKPOINT, VLM = str(DATA / "checkpoint"), str(DATA / "vlm")
pytestmark = pytest.mark.skipif(not DATA.is_dir(),
                                reason="test/data/smolvla_tiny comes with the smolvla branch")
RNG = np.random.default_rng(5)
FRAMES = {"front": RNG.integers(0, 255, (120, 160, 3), dtype=np.uint8),
          "wrist": RNG.integers(0, 255, (150, 124, 3), dtype=np.uint8)}
ROS_STATE = np.array([0.1, -0.4, 0.6, 0.2, -0.3, 0.8])  # rad, in so101.yaml's joint order


class SO101Probe(Probe):
    """The shared probe, with SO-101's cameras (front via Probe, wrist beside it) and joint names."""

    def __init__(self, robot):
        super().__init__(camera_topic=robot.camera_topics(["front"])[0])
        self.wrist_pub = self.node.create_publisher(Image, robot.camera_topics(["wrist"])[0], conv.CAMERA_QOS)
        self.joints = list(robot.joints)

    def publish(self, msg, age_s=0.0):
        stamp = self.node.get_clock().now().to_msg()
        wrist = rgb_to_image(FRAMES["wrist"], Image, "rgb8")
        msg.header.stamp = wrist.header.stamp = stamp
        self.wrist_pub.publish(wrist)
        self.camera_pub.publish(msg)
        state = JointState(name=self.joints, position=list(ROS_STATE))
        state.header.stamp = stamp
        self.state_pub.publish(state)
        return conv.to_seconds(stamp)


@pytest.fixture
def ros():
    rclpy.init()
    yield
    rclpy.shutdown()


def test_policy_node_runs_a_lerobot_checkpoint_on_so101_topics(ros):
    from dysta_ros.nodes.policy_node import PolicyNode

    robot = load_robot_config("so101")
    node = PolicyNode(parameter_overrides=[
        Parameter("autostart", value=True), Parameter("strategy", value="full"),
        Parameter("model", value=CHECKPOINT), Parameter("vlm", value=VLM), Parameter("robot", value="so101"),
        Parameter("max_image_age_s", value=2.0), Parameter("inference_rate_hz", value=20.0)])
    probe = SO101Probe(robot)
    probe.spin.add_node(node)
    joints = list(robot.joints)

    def frame():
        return rgb_to_image(FRAMES["front"], Image, "rgb8")

    try:
        probe.publishing_until(frame, lambda: len(probe.chunks) >= 1, timeout_s=60.0)
        assert node.runtime.spec.preset == "smolvla"
        chunk = conv.msg_to_chunk(probe.chunks[0])
        assert list(probe.chunks[0].names) == joints and chunk.actions.shape == (10, 6)
        # The same step outside ROS: state in LeRobot degrees in, actions mapped back to rad.
        runtime = build_runtime(CHECKPOINT, "full", seed=node.values["seed"], vlm=VLM)
        state = robot.state_to_model(ROS_STATE).astype(np.float32)
        expected = runtime.step(Observation(0.0, FRAMES, state, node.values["instruction"]))[0].actions
        np.testing.assert_allclose(chunk.actions, robot.actions_to_ros(expected), atol=1e-5)
        # A live switch to a strategy SmolVLA cannot run is refused, saying why; full keeps running.
        result = node.set_parameters([Parameter("strategy", value="gotohunt")])[0]
        assert not result.successful and "gotohunt needs history frames" in result.reason
        assert node.values["strategy"] == "full"
        # So is a dysta parameter its bidirectional form lacks: when set, not at every later step.
        result = node.set_parameters([Parameter("dysta.cache_language", value=True)])[0]
        assert not result.successful and "cache_language false" in result.reason
        assert node.values["dysta.cache_language"] is False and not node.rebuild
    finally:
        node.close()
        probe.spin.remove_node(node)
        node.destroy_node()
        probe.close()


def test_bench_runs_full_on_the_checkpoint_and_refuses_history_strategies(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--checkpoint", CHECKPOINT, "--vlm", VLM, "--strategies", "full", "--history", "1",
                 "--steps", "2", "--warmup", "0", "--quiet", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["runs"]
    assert [r["strategy"] for r in rows] == ["full"]
    assert main(["bench", "--checkpoint", CHECKPOINT, "--vlm", VLM, "--strategies", "gotohunt",
                 "--history", "1", "--steps", "1", "--warmup", "0", "--quiet"]) == 2  # a refused config
    assert "gotohunt needs history frames; SmolVLA is single-frame" in capsys.readouterr().err
