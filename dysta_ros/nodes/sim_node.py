"""sim_node: the MuJoCo arm behind the topics a real arm under ros2_control has.

Publishes camera images + CameraInfo (topics from the robot config), /joint_states, /clock
(parameter publish_clock), the task's instruction (latched) and each episode's outcome; accepts
JointTrajectory on the joint_trajectory_controller topic and Float64MultiArray on the forward
position controller topic. ~/reset (std_srvs/Trigger) starts an episode of the `task` and `seed`
parameters (set them live with `ros2 param set`). With `expert: true` it also publishes the
scripted expert's chunks on /dysta/action_chunk, exactly as policy_node would.
"""

from __future__ import annotations

import json
import sys
import time

import rclpy
import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from dysta_ros.errors import ConfigError, InputError
from dysta_ros.nodes import params
from dysta_ros.nodes import topics as dysta_topics
from dysta_ros.nodes.conversions import (
    CAMERA_QOS, JOINT_STATES_PUBLISHER_QOS, LATCHED_QOS, RELIABLE_QOS, chunk_to_msg, to_seconds, to_stamp,
)
from dysta_ros.nodes.diagnostics import ERROR, OK, WARN, StatusBoard, to_message
from dysta_ros.nodes.image_conversion import pinhole_camera_info, rgb_to_image
from dysta_ros.nodes.spin import run_node
from dysta_ros.sim.controller import TrajectoryFollower
from dysta_ros.sim.env import CAMERAS, SimConfig, SimEnv
from dysta_ros.sim.expert import ExpertConfig, ScriptedExpert
from dysta_ros.types import Observation

from dysta_ros.nodes.sim_params import (  # noqa: F401 - the topics are this node's API
    CHUNK_TOPIC, DEFAULT_COMMAND_TOPICS, INSTRUCTION_TOPIC, MAX_WALL_STEP_S, OUTCOME_TOPIC, PARAMS,
)


class SimNode(Node):
    """Step the MuJoCo arm, publish what its sensors see, follow the commands it gets."""

    def __init__(self, **overrides):
        super().__init__("sim_node", namespace=dysta_topics.NAMESPACE, parameter_overrides=[
            rclpy.parameter.Parameter(k, value=v) for k, v in overrides.items()])
        try:
            self._start()
        except BaseException:
            # Refused like chunk_executor's (see there why a plain node does not start): one
            # line, exit 2 from main, nothing published. Ctrl-C/SIGTERM while starting ends it
            # the same way: the renderer is closed here, not by the collector after EGL is gone.
            if getattr(self, "env", None) is not None:
                self.env.close()
            self.destroy_node()
            raise

    def _start(self) -> None:
        params.declare_or_refuse(self, PARAMS)
        p = params.read(self, PARAMS)
        self.add_on_set_parameters_callback(params.validator(PARAMS, self.get_logger().warning))
        self.env = SimEnv(SimConfig(image_width=p["image_width"], image_height=p["image_height"],
                                    robot=p["robot"]))
        robot = self.env.arm
        dysta_topics.check_names(self, robot)
        self._sim_clock = p["publish_clock"]
        self._period = 1.0 / p["physics_rate_hz"]
        self._board = StatusBoard("sim_node", "mujoco", ["episode", "commands"])

        self._joint_pub = self.create_publisher(JointState, robot.state_topic, JOINT_STATES_PUBLISHER_QOS)
        cameras = {c.name: c for c in robot.cameras}
        self._image_pubs, self._info_pubs = {}, {}
        for name in CAMERAS:
            topic = cameras[name].topic if name in cameras else f"/{name}/image_raw"
            self._image_pubs[name] = self.create_publisher(Image, topic, CAMERA_QOS)
            self._info_pubs[name] = self.create_publisher(
                CameraInfo, topic.rsplit("/", 1)[0] + "/camera_info", CAMERA_QOS)
        self._frames = {name: cameras[name].frame_id if name in cameras else name for name in CAMERAS}
        self._clock_pub = self.create_publisher(Clock, "/clock", 10) if self._sim_clock else None
        self._instruction_pub = self.create_publisher(String, INSTRUCTION_TOPIC, LATCHED_QOS)
        self._outcome_pub = self.create_publisher(String, OUTCOME_TOPIC, LATCHED_QOS)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        topics = {**DEFAULT_COMMAND_TOPICS, **robot.command_topics}
        self.create_subscription(JointTrajectory, topics["joint_trajectory"], self._on_trajectory,
                                 RELIABLE_QOS)
        self.create_subscription(Float64MultiArray, topics["forward_position"], self._on_forward,
                                 RELIABLE_QOS)
        self.create_service(Trigger, "~/reset", self._on_reset)

        # The expert may be switched on and off live (parameter `expert`); its publisher only
        # exists once it is first wanted, so policy_node stays the only chunk publisher otherwise.
        self._expert = ScriptedExpert(self.env, ExpertConfig(horizon=p["expert_horizon"]))
        self._chunk_pub = None
        self.create_timer(1.0 / p["expert_rate_hz"], self._publish_expert_chunk)

        self.episode = 0
        self._sim_offset = 0.0  # sim time of earlier episodes: /clock never goes backwards
        self._start_episode(p["task"], p["seed"])
        self._last_wall = time.monotonic()
        self._next_frame = 0.0
        self.create_timer(self._period, self._tick)
        self.create_timer(1.0, lambda: self._diagnostics_pub.publish(to_message(self._board, self._stamp())))

    # --- time ------------------------------------------------------------------------------
    def now_seconds(self) -> float:
        """Return the time everything is stamped with: sim time, or the node's clock."""
        if self._sim_clock:
            return self._sim_offset + self.env.time
        return self.get_clock().now().nanoseconds * 1e-9

    def _stamp(self):
        return to_stamp(self.now_seconds())

    # --- episodes --------------------------------------------------------------------------
    def _start_episode(self, task: str, seed: int) -> None:
        elapsed = self.env.time  # added once the reset is accepted: a refused one keeps the clock
        self.env.reset(task, seed, self.get_parameter("episode_seconds").value or None)
        self._sim_offset += elapsed
        self.follower = TrajectoryFollower(self.env.arm.joints, self.env.joint_targets)
        self._outcome_sent = False
        self.episode += 1
        self._expert.reset()
        self._instruction_pub.publish(String(data=self.env.task.instruction))
        self._board.set("episode", OK, f"running {task} seed {seed}",
                        episode=self.episode, task=task, seed=seed)
        self._next_frame = 0.0
        self.get_logger().info(f"episode {self.episode}: {task} seed {seed}: {self.env.task.instruction!r}")

    def _on_reset(self, request, response):
        p = params.read(self, PARAMS)
        try:
            self._start_episode(p["task"], p["seed"])
        except ConfigError as exc:
            response.success, response.message = False, str(exc)
            return response
        response.success = True
        response.message = json.dumps({"episode": self.episode, "task": p["task"], "seed": p["seed"],
                                       "instruction": self.env.task.instruction})
        return response

    def _finish_episode(self) -> None:
        outcome = self.env.outcome
        report = {"episode": self.episode, "task": self.env.task.name, "seed": self.env.seed,
                  "success": outcome.success, "reason": outcome.reason, "steps": outcome.steps,
                  "seconds": round(outcome.seconds, 3)}
        self._outcome_pub.publish(String(data=json.dumps(report)))
        self._outcome_sent = True
        self._board.set("episode", OK if outcome.success else WARN, f"ended: {outcome.reason}", **report)
        self.get_logger().info(f"episode {self.episode} ended: {outcome.reason}")
        if self.get_parameter("auto_reset").value:
            self.set_parameters([rclpy.parameter.Parameter("seed", value=self.env.seed + 1)])
            self._start_episode(self.env.task.name, self.env.seed + 1)

    # --- the physics loop ------------------------------------------------------------------
    def _tick(self) -> None:
        wall = time.monotonic()
        step = self._period if self._sim_clock else min(max(wall - self._last_wall, 0.0), MAX_WALL_STEP_S)
        self._last_wall = wall
        if not self.env.outcome.done:
            self.env.command(self.follower.target(self.now_seconds() + step))
            self.env.advance(step)
        if self._clock_pub is not None:
            self._clock_pub.publish(Clock(clock=self._stamp()))
        self._publish_joint_state()
        if self.env.time + 1e-9 >= self._next_frame:
            self._next_frame = self.env.time + 1.0 / self.get_parameter("camera_rate_hz").value
            self._publish_images()
        if self.env.outcome.done and not self._outcome_sent:
            self._finish_episode()

    def _publish_joint_state(self) -> None:
        msg = JointState()
        msg.header.stamp = self._stamp()
        msg.name = list(self.env.arm.joints)
        msg.position = self.env.joint_positions.tolist()
        msg.velocity = self.env.joint_velocities.tolist()
        self._joint_pub.publish(msg)

    def _publish_images(self) -> None:
        stamp = self._stamp()
        for name in CAMERAS:
            image = rgb_to_image(self.env.render(name), Image)
            image.header.stamp, image.header.frame_id = stamp, self._frames[name]
            self._image_pubs[name].publish(image)
            self._info_pubs[name].publish(pinhole_camera_info(image, *self.env.intrinsics(name), CameraInfo))

    # --- commands ----------------------------------------------------------------------------
    def _on_trajectory(self, msg: JointTrajectory) -> None:
        now = self.now_seconds()
        start = to_seconds(msg.header.stamp) or now  # a zero stamp means "start now"
        try:
            positions = [list(point.positions) for point in msg.points]
            if any(len(row) != len(msg.joint_names) for row in positions):
                raise InputError(f"trajectory points need {len(msg.joint_names)} positions each")
            times = [to_seconds(point.time_from_start) for point in msg.points]
            self.follower.set(list(msg.joint_names), positions, times, start, now)
        except InputError as exc:
            self._refuse(f"refused trajectory: {exc}")
            return
        self._board.set("commands", OK, "following a trajectory", points=len(msg.points))

    def _on_forward(self, msg: Float64MultiArray) -> None:
        try:
            targets = np.asarray(msg.data, dtype=np.float64)
            if targets.shape != (len(self.env.arm.joints),) or not np.all(np.isfinite(targets)):
                raise InputError(f"forward command needs {len(self.env.arm.joints)} finite values, "
                                 f"got {targets.tolist()}")
            self.follower.hold(targets)
        except InputError as exc:
            self._refuse(f"refused forward command: {exc}")
            return
        self._board.set("commands", OK, "forward position command")

    def _refuse(self, reason: str) -> None:
        """Keep the previous command (the arm holds) and say why."""
        self._board.set("commands", ERROR, reason)
        self._diagnostics_pub.publish(to_message(self._board, self._stamp()))
        self.get_logger().warning(reason)

    # --- expert ------------------------------------------------------------------------------
    def _publish_expert_chunk(self) -> None:
        if self.env.outcome.done or not self.get_parameter("expert").value:
            return
        if self._chunk_pub is None:
            from dysta_ros.msg import ActionChunk

            self._chunk_pub = self.create_publisher(ActionChunk, CHUNK_TOPIC, RELIABLE_QOS)
        observation = Observation(stamp=self.now_seconds(), images={},
                                  state=self.env.joint_positions.astype(np.float32))
        chunk, _ = self._expert.step(observation)
        self._chunk_pub.publish(chunk_to_msg(chunk))

    def close(self) -> None:
        """Free the renderer."""
        self.env.close()


def main(args=None) -> int:
    """Run sim_node (`ros2 run dysta_ros sim_node --ros-args -p task:=memory`)."""
    return run_node("sim_node", SimNode, args=args)


if __name__ == "__main__":
    sys.exit(main())
