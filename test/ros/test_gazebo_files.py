"""The Gazebo files agree with the robot config, the MuJoCo scene and what policy_node subscribes."""

import ast
import importlib
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml

from dysta_ros.robot import load_robot_config
from dysta_ros.sim import scene
from dysta_ros.sim.env import CAMERAS, HOME

ROOT = Path(__file__).resolve().parents[2]
BRIDGE = yaml.safe_load((ROOT / "config" / "gz_bridge.yaml").read_text())
CONTROLLERS = yaml.safe_load((ROOT / "config" / "ros2_controllers.yaml").read_text())
URDF = ET.parse(ROOT / "description" / "sim_arm.urdf.xacro").getroot()
WORLD = ET.parse(ROOT / "description" / "tabletop.sdf").getroot()
LAUNCH = ast.parse((ROOT / "launch" / "gazebo.launch.py").read_text())
ROBOT = load_robot_config("sim_arm")
BRIDGE_KEYS = {"ros_topic_name", "gz_topic_name", "ros_type_name", "gz_type_name", "direction",
               "lazy", "publisher_queue", "subscriber_queue", "qos_profile"}


def bridged(ros_topic):
    matches = [entry for entry in BRIDGE if entry["ros_topic_name"] == ros_topic]
    assert len(matches) == 1, f"{ros_topic} is bridged {len(matches)} times"
    return matches[0]


def sensors():
    """Return every camera sensor of the arm and the world by name: (gz image topic, info topic)."""
    found = {}
    for sensor in list(URDF.iter("sensor")) + list(WORLD.iter("sensor")):
        camera = sensor.find("camera")
        found[sensor.get("name")] = (sensor.findtext("topic"), camera.findtext("camera_info_topic"),
                                     camera.findtext("optical_frame_id"))
    return found


def test_bridge_entries_follow_ros_gz_bridge_schema_and_name_real_message_types():
    assert isinstance(BRIDGE, list) and BRIDGE
    for entry in BRIDGE:
        required = {"ros_topic_name", "gz_topic_name", "ros_type_name", "gz_type_name"}
        assert required <= set(entry) <= BRIDGE_KEYS
        assert entry.get("direction", "BIDIRECTIONAL") in ("BIDIRECTIONAL", "GZ_TO_ROS", "ROS_TO_GZ")
        package, kind, name = entry["ros_type_name"].split("/")
        assert kind == "msg"
        importlib.import_module(f"{package}.msg").__dict__[name]  # a real, installed ROS message
        assert entry["gz_type_name"] == f"gz.msgs.{name}"  # Image<->Image, CameraInfo<->CameraInfo, ...


def test_every_camera_policy_node_subscribes_and_the_clock_come_from_gazebo():
    for topic in ROBOT.camera_topics(list(CAMERAS)):
        image = bridged(topic)
        assert (image["ros_type_name"], image["direction"]) == ("sensor_msgs/msg/Image", "GZ_TO_ROS")
        info = bridged(topic.rsplit("/", 1)[0] + "/camera_info")
        assert (info["ros_type_name"], info["direction"]) == ("sensor_msgs/msg/CameraInfo", "GZ_TO_ROS")
    clock = bridged("/clock")
    assert (clock["ros_type_name"], clock["direction"]) == ("rosgraph_msgs/msg/Clock", "GZ_TO_ROS")


def test_bridged_gazebo_topics_are_the_ones_the_camera_sensors_publish():
    cameras = sensors()
    assert set(cameras) == set(CAMERAS)
    for camera in ROBOT.cameras:
        gz_image, gz_info, frame = cameras[camera.name]
        assert bridged(camera.topic)["gz_topic_name"].lstrip("/") == gz_image
        info_topic = camera.topic.rsplit("/", 1)[0] + "/camera_info"
        assert bridged(info_topic)["gz_topic_name"].lstrip("/") == gz_info
        assert frame == camera.frame_id


def test_urdf_joints_limits_and_offsets_match_the_robot_config_and_mujoco_scene():
    joints = [j for j in URDF.findall("joint") if j.get("type") == "revolute"]
    assert [j.get("name") for j in joints] == list(ROBOT.joints)
    for j, lower, upper, velocity, axis in zip(joints, ROBOT.position_lower, ROBOT.position_upper,
                                               ROBOT.velocity, scene.JOINT_AXES):
        limit = j.find("limit")
        assert float(limit.get("lower")) == pytest.approx(lower)
        assert float(limit.get("upper")) == pytest.approx(upper)
        assert float(limit.get("velocity")) == pytest.approx(velocity)
        assert j.find("axis").get("xyz") == axis
    offsets = [float(j.find("origin").get("xyz").split()[2]) for j in joints]
    assert offsets == pytest.approx([0.06, scene.SHOULDER_Z - 0.06, scene.UPPER_ARM, scene.FOREARM,
                                     scene.WRIST_1, scene.WRIST_2])
    links = {link.get("name") for link in URDF.iter("link")}
    for j in URDF.findall("joint"):  # the tree is connected
        assert j.find("parent").get("link") in links and j.find("child").get("link") in links


def test_ros2_control_tags_command_every_joint_by_position_from_the_sim_start_pose():
    (control,) = URDF.iter("ros2_control")
    assert control.findtext("hardware/plugin") == "gz_ros2_control/GazeboSimSystem"
    joints = control.findall("joint")
    assert [j.get("name") for j in joints] == list(ROBOT.joints)
    for j in joints:
        assert [c.get("name") for c in j.findall("command_interface")] == ["position"]
        assert {s.get("name") for s in j.findall("state_interface")} == {"position", "velocity"}
    initial = [float(j.find("state_interface/param[@name='initial_value']").text) for j in joints]
    assert np.allclose(initial, HOME)
    (parameters,) = [p.findtext("parameters") for p in URDF.findall("gazebo/plugin")]
    relative = re.sub(r"^\$\(find dysta_ros\)/", "", parameters)
    assert (ROOT / relative).is_file()


def test_controllers_drive_the_robot_configs_joints_on_its_command_topics():
    for output in ("joint_trajectory", "forward_position"):
        controller = ROBOT.command_topics[output].strip("/").split("/")[0]
        assert controller in CONTROLLERS["controller_manager"]["ros__parameters"]
        assert CONTROLLERS[controller]["ros__parameters"]["joints"] == list(ROBOT.joints)
    assert "joint_state_broadcaster" in CONTROLLERS["controller_manager"]["ros__parameters"]


def test_world_cubes_and_table_match_the_mujoco_scene():
    cubes = [m for m in WORLD.iter("model") if m.get("name").startswith("cube")]
    assert len(cubes) == scene.N_CUBES
    for cube in cubes:
        size = [float(v) for v in cube.find(".//box/size").text.split()]
        assert size == pytest.approx([2 * scene.CUBE_HALF] * 3)


def calls(name):
    return [node for node in ast.walk(LAUNCH) if isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", None)) == name]


def keyword(call, key):
    return next((k.value for k in call.keywords if k.arg == key), None)


def test_launch_file_declares_its_arguments_and_starts_real_executables_and_files():
    from dysta_ros.tokens import available_strategies

    declared = {c.args[0].value: keyword(c, "default_value") for c in calls("DeclareLaunchArgument")}
    assert {"strategy", "model", "robot", "use_sim_time", "world"} <= set(declared)
    assert declared["strategy"].value in available_strategies()
    assert declared["robot"].value == ROBOT.name
    # policy_node and chunk_executor come from dysta.launch.xml, with every argument it declares
    # that Gazebo needs: on sim time, the policy autostarted.
    includes = [c for c in calls("IncludeLaunchDescription")
                if "dysta.launch.xml" in ast.unparse(c.args[0])]
    assert len(includes) == 1
    passed = {k.value for k in keyword(includes[0], "launch_arguments").func.value.keys}
    included = ET.parse(ROOT / "launch" / "dysta.launch.xml").getroot()
    assert passed == {"strategy", "model", "vlm", "robot", "use_sim_time"}
    assert passed <= {arg.get("name") for arg in included.iter("arg")}
    for node in included.iter("node"):
        params = {p.get("name"): p.get("value") for p in node.iter("param")}
        assert params["use_sim_time"] == "$(var use_sim_time)", node.get("exec")
    policy = next(n for n in included.iter("node") if n.get("exec") == "policy_node")
    assert {p.get("name"): p.get("value") for p in policy.iter("param")}["autostart"] == "true"
    started_last = [c for c in calls("OnProcessExit")
                    if ast.unparse(keyword(c, "on_exit")) == "[policy_and_executor]"]
    assert [keyword(c, "target_action").id for c in started_last] == ["trajectory_controller"]
    for join in calls("PathJoinSubstitution"):
        parts = [e.value for e in join.args[0].elts if isinstance(e, ast.Constant)]
        if len(parts) == 2 and parts[0] in ("description", "config"):
            assert (ROOT / parts[0] / parts[1]).is_file(), parts
