"""The tabletop scene as MJCF, built from primitives: a six-joint arm, cubes, two cameras.

No meshes and no downloads: capsules, cylinders and boxes. Joint names and ranges come from
the robot config (config/robots/sim_arm.yaml), so the policy, the executor and the sim agree.
"""

from __future__ import annotations

from dysta_ros.errors import ConfigError
from dysta_ros.robot import RobotConfig

ROBOT = "sim_arm"  # config/robots/sim_arm.yaml

CUBE_HALF = 0.025  # m; cubes are 5 cm, small enough for three on the workspace
N_CUBES = 3
# Where the arm's links attach, from the base up (m). The arm reaches about 0.6 m.
SHOULDER_Z = 0.12
UPPER_ARM = 0.30
FOREARM = 0.28
WRIST_1 = 0.05
WRIST_2 = 0.06
TOOL = 0.07
# Joint axes in each link's frame: yaw, pitch, pitch, roll, pitch, roll.
JOINT_AXES = ("0 0 1", "0 1 0", "0 1 0", "0 0 1", "0 1 0", "0 0 1")


def check_arm(robot: RobotConfig) -> RobotConfig:
    """Return `robot` if its joints fit this arm's six joints; raise ConfigError otherwise."""
    if len(robot.joints) != len(JOINT_AXES):
        raise ConfigError(f"robot {robot.name!r}: joints: the sim arm has {len(JOINT_AXES)} joints, "
                          f"the config names {len(robot.joints)}")
    return robot


def _joint(robot: RobotConfig, i: int) -> str:
    return (f'<joint name="{robot.joints[i]}" axis="{JOINT_AXES[i]}" '
            f'range="{robot.position_lower[i]} {robot.position_upper[i]}" limited="true"/>')


def build_mjcf(robot: RobotConfig, image_width: int = 128, image_height: int = 128) -> str:
    """Return the scene's MJCF: table, arm (position actuators), cubes as mocap bodies, cameras."""
    cubes = "\n".join(
        f'<body name="cube{i}" mocap="true" pos="{0.3 + 0.1 * i} 0 {CUBE_HALF}">'
        f'<geom name="cube{i}" type="box" size="{CUBE_HALF} {CUBE_HALF} {CUBE_HALF}" '
        f'contype="0" conaffinity="0" rgba="0.5 0.5 0.5 1"/></body>'
        for i in range(N_CUBES))
    actuators = "\n".join(
        f'<position name="{j}" joint="{j}" ctrlrange="{lo} {hi}" ctrllimited="true"/>'
        for j, lo, hi in zip(robot.joints, robot.position_lower, robot.position_upper))
    # Cubes do not collide (contype 0): touching is a geometric check, so the arm never
    # pushes a cube away or gets stuck on one. Links carry gravity compensation, as a
    # real arm's controller would, so position targets are tracked without sag.
    return f"""
<mujoco model="dysta_sim_arm">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="0.002" integrator="implicitfast"/>
  <visual><global offwidth="{max(image_width, 640)}" offheight="{max(image_height, 480)}"/>
    <quality shadowsize="512"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.5 0.5 0.5"/></visual>
  <asset>
    <texture name="grid" type="2d" builtin="checker" width="256" height="256"
             rgb1="0.82 0.78 0.70" rgb2="0.74 0.70 0.62"/>
    <material name="table" texture="grid" texrepeat="6 6"/>
    <material name="link" rgba="0.85 0.85 0.88 1"/>
    <material name="joint" rgba="0.25 0.28 0.32 1"/>
  </asset>
  <default>
    <joint damping="2" armature="0.05"/>
    <position kp="400" kv="25"/>
    <geom contype="1" conaffinity="1" density="800"/>
  </default>
  <worldbody>
    <light pos="0.3 -0.3 1.5" dir="0 0.2 -1" diffuse="0.6 0.6 0.6"/>
    <geom name="table" type="box" pos="0.3 0 -0.02" size="0.6 0.6 0.02" material="table"/>
    <body name="workspace" pos="0.25 0 0.12"/>
    <camera name="main" pos="0.95 -0.6 0.7" mode="targetbody" target="workspace" fovy="50"/>
    <body name="base_link" pos="0 0 0">
      <geom type="cylinder" size="0.07 0.03" pos="0 0 0.03" material="joint"/>
      <body name="link1" pos="0 0 0.06" gravcomp="1">
        {_joint(robot, 0)}
        <geom type="cylinder" size="0.05 0.03" pos="0 0 0.03" material="link"/>
        <body name="link2" pos="0 0 {SHOULDER_Z - 0.06}" gravcomp="1">
          {_joint(robot, 1)}
          <geom type="cylinder" size="0.045 0.045" euler="1.5708 0 0" material="joint"/>
          <geom type="capsule" fromto="0 0 0 0 0 {UPPER_ARM}" size="0.035" material="link"/>
          <body name="link3" pos="0 0 {UPPER_ARM}" gravcomp="1">
            {_joint(robot, 2)}
            <geom type="cylinder" size="0.04 0.04" euler="1.5708 0 0" material="joint"/>
            <geom type="capsule" fromto="0 0 0 0 0 {FOREARM}" size="0.03" material="link"/>
            <body name="link4" pos="0 0 {FOREARM}" gravcomp="1">
              {_joint(robot, 3)}
              <geom type="cylinder" size="0.03 {WRIST_1 / 2}" pos="0 0 {WRIST_1 / 2}" material="joint"/>
              <body name="link5" pos="0 0 {WRIST_1}" gravcomp="1">
                {_joint(robot, 4)}
                <geom type="cylinder" size="0.03 0.03" euler="1.5708 0 0" material="joint"/>
                <geom type="capsule" fromto="0 0 0 0 0 {WRIST_2}" size="0.025" material="link"/>
                <body name="link6" pos="0 0 {WRIST_2}" gravcomp="1">
                  {_joint(robot, 5)}
                  <geom type="cylinder" size="0.03 0.01" pos="0 0 0.01" material="joint"/>
                  <geom name="finger" type="capsule" fromto="0 0 0.01 0 0 {TOOL - 0.01}" size="0.012"
                        rgba="0.2 0.2 0.2 1"/>
                  <site name="tcp" pos="0 0 {TOOL}" size="0.01" rgba="1 1 0 0"/>
                  <!-- Beside the finger, tilted to see its tip and the table beyond. -->
                  <camera name="wrist" pos="0.07 0 0.0" xyaxes="0 1 0 0.91 0 0.42" fovy="80"/>
                </body>
              </body>
            </body>
          </body>
        </body>
      </body>
    </body>
    {cubes}
  </worldbody>
  <actuator>
    {actuators}
  </actuator>
</mujoco>
"""
