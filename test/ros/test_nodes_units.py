"""policy_node maps a robot config's model_units at its edge: ROS state in, checkpoint actions out."""

import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip("rclpy")
from rclpy.parameter import Parameter  # noqa: E402

from dysta_ros.nodes import conversions as conv  # noqa: E402
from dysta_ros.policy.runtime import build_runtime  # noqa: E402
from dysta_ros.robot import config_path, load_robot_config, load_yaml  # noqa: E402
from dysta_ros.types import Observation  # noqa: E402
from test_nodes_policy import Probe  # noqa: E402

FRAME = np.random.default_rng(3).integers(0, 255, (48, 64, 3), dtype=np.uint8)


@pytest.fixture
def ros():
    rclpy.init()
    yield
    rclpy.shutdown()


def test_state_is_mapped_in_and_actions_out_through_the_robot_units(ros, tmp_path):
    from dysta_ros.nodes.image_conversion import rgb_to_image
    from dysta_ros.nodes.policy_node import PolicyNode
    from sensor_msgs.msg import Image

    data = load_yaml(config_path("robots", "sim_arm"))
    data["model_units"] = {"scale": [2.0, 0.5, 1.0, 3.0, 1.0, 0.25],
                           "offset": [0.1, 0.0, -0.2, 0.0, 0.3, 0.0]}
    robot_file = tmp_path / "scaled_arm.yaml"
    robot_file.write_text(yaml.safe_dump(data))
    robot = load_robot_config(str(robot_file))
    node = PolicyNode(parameter_overrides=[
        Parameter("autostart", value=True), Parameter("strategy", value="full"),
        Parameter("robot", value=str(robot_file)), Parameter("max_image_age_s", value=2.0),
        Parameter("inference_rate_hz", value=50.0)])
    probe = Probe()
    probe.spin.add_node(node)
    try:
        probe.publishing_until(lambda: rgb_to_image(FRAME, Image, "bgr8"), lambda: len(probe.chunks) >= 1)
        chunk = conv.msg_to_chunk(probe.chunks[0])
        # The same step outside ROS: the model sees the state in its units, the chunk is in ROS's.
        runtime = build_runtime("tiny", "full", seed=node.values["seed"],
                                overrides={"state_dim": 6, "action_dim": 6})
        state = robot.state_to_model(probe.state()).astype(np.float32)
        model_actions = runtime.step(Observation(0.0, {"main": FRAME}, state, node.values["instruction"]))[0]
        np.testing.assert_allclose(chunk.actions, robot.actions_to_ros(model_actions.actions), atol=1e-5)
        # and the mapping did something: the unmapped actions differ
        assert np.abs(chunk.actions - model_actions.actions).max() > 1e-2
    finally:
        node.close()
        probe.spin.remove_node(node)
        node.destroy_node()
        probe.close()
