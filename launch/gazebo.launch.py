"""Gazebo (gz sim) with the sim arm, its controllers and cameras, then the policy on top.

ros2 launch dysta_ros gazebo.launch.py strategy:=dysta model:=tiny

Starts gz sim with description/tabletop.sdf, publishes the arm's description and spawns it,
starts joint_state_broadcaster and joint_trajectory_controller (gz_ros2_control), bridges the
cameras and /clock (config/gz_bridge.yaml), and once the controllers run, includes
dysta.launch.xml (policy_node, autostarted, and chunk_executor with config/dysta_nodes.yaml), all
on sim time. Needs ros_gz_sim, ros_gz_bridge,
gz_ros2_control, ros2_controllers and xacro (apt: ros-$ROS_DISTRO-ros-gz, -gz-ros2-control,
-ros2-controllers, -xacro).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.launch_description_sources import (
    AnyLaunchDescriptionSource, PythonLaunchDescriptionSource,
)
from launch.substitutions import Command, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

PACKAGE = "dysta_ros"


def generate_launch_description():
    share = FindPackageShare(PACKAGE)
    strategy = LaunchConfiguration("strategy")
    model = LaunchConfiguration("model")
    vlm = LaunchConfiguration("vlm")
    robot = LaunchConfiguration("robot")
    use_sim_time = LaunchConfiguration("use_sim_time")
    arguments = [
        DeclareLaunchArgument("strategy", default_value="dysta",
                              description="token strategy: full, dysta, gotohunt, vla_cache, dysta_gotohunt"),
        DeclareLaunchArgument("model", default_value="tiny",
                              description="model preset or checkpoint directory"),
        DeclareLaunchArgument("vlm", default_value="",
                              description="a SmolVLA checkpoint's backbone config + tokenizer directory"),
        DeclareLaunchArgument("robot", default_value="sim_arm", description="config/robots/<name>.yaml"),
        DeclareLaunchArgument("world", description="Gazebo world (SDF)",
                              default_value=PathJoinSubstitution([share, "description", "tabletop.sdf"])),
        DeclareLaunchArgument("gz_args", default_value="-r -s",
                              description="gz sim flags: -r runs at once, -s without the GUI"),
        DeclareLaunchArgument("use_sim_time", default_value="true", description="follow Gazebo's /clock"),
        DeclareLaunchArgument("namespace", default_value="dysta",
                              description="namespace of the policy and executor and their topics"),
        DeclareLaunchArgument("params_file", description="ROS 2 parameters file of the policy and executor",
                              default_value=PathJoinSubstitution([share, "config", "dysta_nodes.yaml"])),
    ]

    gazebo = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([FindPackageShare("ros_gz_sim"), "launch",
                                                            "gz_sim.launch.py"])),
        launch_arguments={"gz_args": [LaunchConfiguration("gz_args"), " ",
                                      LaunchConfiguration("world")]}.items())
    urdf = PathJoinSubstitution([share, "description", "sim_arm.urdf.xacro"])
    description = ParameterValue(Command(["xacro ", urdf]), value_type=str)
    robot_state_publisher = Node(
        package="robot_state_publisher", executable="robot_state_publisher",
        parameters=[{"robot_description": description, "use_sim_time": use_sim_time}])
    spawn = Node(package="ros_gz_sim", executable="create", output="screen",
                 arguments=["-topic", "robot_description", "-name", "sim_arm"])
    bridge = Node(package="ros_gz_bridge", executable="parameter_bridge", output="screen",
                  parameters=[{"config_file": PathJoinSubstitution([share, "config", "gz_bridge.yaml"]),
                               "use_sim_time": use_sim_time}])
    broadcaster = Node(package="controller_manager", executable="spawner",
                       arguments=["joint_state_broadcaster", "--controller-manager", "/controller_manager"])
    trajectory_controller = Node(package="controller_manager", executable="spawner",
                                 arguments=["joint_trajectory_controller", "--controller-manager",
                                            "/controller_manager"])
    # The same nodes and parameters as on a real arm: one launch file defines them.
    policy_and_executor = IncludeLaunchDescription(
        AnyLaunchDescriptionSource(PathJoinSubstitution([share, "launch", "dysta.launch.xml"])),
        launch_arguments={"strategy": strategy, "model": model, "vlm": vlm, "robot": robot,
                          "use_sim_time": use_sim_time, "namespace": LaunchConfiguration("namespace"),
                          "params_file": LaunchConfiguration("params_file")}.items())

    return LaunchDescription(arguments + [
        gazebo, robot_state_publisher, spawn, bridge,
        # Controllers once the arm exists; the policy once the arm can be commanded.
        RegisterEventHandler(OnProcessExit(target_action=spawn, on_exit=[broadcaster])),
        RegisterEventHandler(OnProcessExit(target_action=broadcaster, on_exit=[trajectory_controller])),
        RegisterEventHandler(OnProcessExit(target_action=trajectory_controller,
                                           on_exit=[policy_and_executor])),
    ])
