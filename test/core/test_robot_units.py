"""Robot configs for LeRobot checkpoints: SO-101's units, and features checked against the checkpoint."""

import numpy as np
import pytest

from dysta_ros.errors import ConfigError
from dysta_ros.robot import RobotConfig, load_robot_config, load_yaml, config_path

SO101_JOINTS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
FEATURES = [f"{j}.pos" for j in SO101_JOINTS]


def test_so101_maps_lerobot_degrees_and_gripper_range_to_radians():
    robot = load_robot_config("so101")
    assert robot.joints == SO101_JOINTS and [c.name for c in robot.cameras] == ["front", "wrist"]
    lerobot = np.array([[90.0, -45.0, 0.0, 30.0, 180.0, 100.0]])
    ros = robot.actions_to_ros(lerobot)
    np.testing.assert_allclose(ros[0, :5], np.radians(lerobot[0, :5]), rtol=1e-6)
    assert ros[0, 5] == pytest.approx(1.75)  # gripper fully open
    np.testing.assert_allclose(robot.state_to_model(ros[0]), lerobot[0], rtol=1e-5)


def test_robot_without_model_units_passes_values_through():
    robot = load_robot_config("sim_arm")
    values = np.array([[0.1, -0.2, 0.3, 0.0, 1.0, -1.0]], dtype=np.float32)
    np.testing.assert_array_equal(robot.actions_to_ros(values), values)
    np.testing.assert_array_equal(robot.state_to_model(values[0]), values[0])


def test_mismatched_checkpoint_features_are_refused_with_both_lists():
    robot = load_robot_config("so101")
    robot.check_features(["front", "wrist"], FEATURES, FEATURES)
    robot.check_features(["front"], [], [])  # names the checkpoint lacks are not checked
    with pytest.raises(ConfigError, match=r"cameras \['top', 'wrist'\].*\['front', 'wrist'\]"):
        robot.check_features(["top", "wrist"], FEATURES, FEATURES)
    renamed = FEATURES[:5] + ["gripper.width"]
    with pytest.raises(ConfigError, match=r"action features .*gripper.width.*model_units.features.*pos"):
        robot.check_features(["front"], FEATURES, renamed)


@pytest.mark.parametrize("units, message", [
    ({"scale": [1.0] * 5}, "model_units.scale: needs one value per joint"),
    ({"scale": [1.0] * 5 + [0.0]}, "non-zero"),
    ({"offset": [0.0] * 5 + [float("nan")]}, "model_units.offset"),
    ({"gain": [1.0] * 6}, "model_units takes the keys features, scale, offset"),
])
def test_bad_model_units_are_refused(units, message):
    data = load_yaml(config_path("robots", "so101"))
    data["model_units"] = units
    with pytest.raises(ConfigError, match=message):
        RobotConfig.from_dict(data)
