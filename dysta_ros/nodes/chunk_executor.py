"""chunk_executor: action chunks + joint states in, safe commands streamed at the control rate out.

All decisions (latency compensation, blending, limits, workspace, e-stop, deadman) are made by
`dysta_ros.execution.ChunkExecutor`; this node converts messages, keeps the clock, publishes.
"""

from __future__ import annotations

import sys

import numpy as np
from rclpy.executors import SingleThreadedExecutor
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from dysta_ros.errors import ConfigError, InputError
from dysta_ros.execution import ChunkExecutor, ExecutorConfig, StaleChunkError, describe_excess
from dysta_ros.msg import ActionChunk
from dysta_ros.nodes import conversions as conv
from dysta_ros.nodes import params as P
from dysta_ros.nodes import topics as dysta_topics
from dysta_ros.nodes.diagnostics import ERROR, OK, WARN, StatusBoard, to_message
from dysta_ros.nodes.executor_params import CONFIG_FIELDS, PARAMS
from dysta_ros.nodes.spin import run_node
from dysta_ros.robot import load_robot_config

OUTPUT_TYPES = {"joint_trajectory": JointTrajectory, "forward_position": Float64MultiArray,
                "ee_pose": PoseStamped, "ee_twist": TwistStamped}


class ChunkExecutorNode(Node):
    """Stream blended, clipped chunk actions to a controller; hold on e-stop, deadman or bad data."""

    def __init__(self, **kwargs):
        kwargs.setdefault("namespace", dysta_topics.NAMESPACE)  # `-r __ns:=/arm1` moves it
        super().__init__("chunk_executor", **kwargs)
        try:
            self.start()
        except ConfigError:
            # A plain node has no unconfigured state to wait in, as policy_node has: the
            # parameters that shape its timer, output and limits are read-only, so a refused
            # configuration could not be fixed while it runs, and an executor that stayed up
            # unable to command would look alive to launch and `ros2 node list`. It refuses to
            # start instead (main: one line, exit 2), having published nothing: nothing moves.
            self.destroy_node()
            raise

    def start(self):
        """Declare and check the parameters, then create the core, topics and timers."""
        P.declare_or_refuse(self, PARAMS)
        values = P.read(self, PARAMS)
        self.robot = load_robot_config(values["robot"])
        dysta_topics.check_names(self, self.robot)
        self.core = ChunkExecutor(self.config_from(values), self.robot)
        self.board = StatusBoard(self.get_name(), values["robot"],
                                 ["commands", "chunks", "joint_states", "workspace"])
        self.holding = "starting"  # why it holds; None while commanding
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(values["diagnostic_period_s"], self.publish_diagnostics)
        self.add_on_set_parameters_callback(
            P.validator(PARAMS, self.get_logger().warning, apply=self.apply_parameters))
        self.output = self.core.output
        self.command_pub = self.create_publisher(
            OUTPUT_TYPES[self.output], self.robot.command_topics[self.output], conv.RELIABLE_QOS)
        self.create_subscription(ActionChunk, dysta_topics.ACTION_CHUNK, self.on_chunk, conv.RELIABLE_QOS)
        self.create_subscription(JointState, self.robot.state_topic, self.on_joint_state, conv.STATE_QOS)
        self.create_subscription(Bool, dysta_topics.ESTOP, self.on_estop, conv.ESTOP_QOS)
        self.create_service(Trigger, dysta_topics.CLEAR_ESTOP, self.on_clear_estop)
        self.create_timer(self.core.config.period, self.on_tick)
        self.board.set("chunks", WARN, "no chunk yet")
        self.clamps_reported = 0  # clamps already on /diagnostics: a WARN outlives its tick
        self.ticks_to_trajectory = 0  # joint_trajectory: control ticks until the next one is due
        self.report_workspace()
        self.get_logger().info(f"{self.output} -> {self.robot.command_topics[self.output]} at "
                               f"{values['control_rate_hz']} Hz, blending {values['blending']}"
                               + (" (dry run)" if values["dry_run"] else ""))
        if not self.core.bounded:
            self.get_logger().warning(self.board.get("workspace").message)

    @staticmethod
    def config_from(values: dict) -> ExecutorConfig:
        return ExecutorConfig(**{k: v for k, v in values.items() if k in CONFIG_FIELDS})

    def now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def apply_parameters(self, changes: dict):
        values = {**P.read(self, PARAMS), **changes}
        if values["dry_run"] != self.core.config.dry_run:
            if values["dry_run"] and self.holding is None:
                self.publish_hold(self.now())  # nothing is sent from now on: stop the controller where it is
            self.ticks_to_trajectory = 0  # the first command of a run goes out at once
        self.core.reconfigure(self.config_from(values))

    def on_chunk(self, msg):
        try:
            chunk = conv.msg_to_chunk(msg)
        except InputError as exc:
            self.core.reject(str(exc))
            return self.report_rejection(msg, exc)
        try:
            self.core.on_chunk(chunk, self.now())
        except StaleChunkError as exc:  # late, not wrong: a WARN, and the deadman is not fed
            self.board.set("chunks", WARN, f"dropped chunk {msg.sequence}: {exc}", **self.core.counts)
            self.get_logger().warning(f"dropped chunk {msg.sequence}: {exc}", throttle_duration_sec=1.0)
            return
        except InputError as exc:
            return self.report_rejection(msg, exc)
        self.board.set("chunks", OK, f"chunk {msg.sequence} accepted ({msg.strategy})", **self.core.counts)

    def report_rejection(self, msg, exc: InputError):
        self.board.set("chunks", ERROR, f"rejected chunk {msg.sequence}: {exc}", **self.core.counts)
        self.get_logger().error(f"rejected chunk {msg.sequence}: {exc}", throttle_duration_sec=1.0)

    def on_joint_state(self, msg):
        try:
            self.core.on_joint_state(msg.name, msg.position, self.now())
        except InputError as exc:
            self.board.set("joint_states", ERROR, str(exc))
            self.get_logger().error(f"joint state refused: {exc}", throttle_duration_sec=1.0)
            return
        self.board.set("joint_states", OK, "fresh")

    def on_estop(self, msg):
        if msg.data:
            self.core.trip_estop(self.resolve_topic_name(dysta_topics.ESTOP))
            # an operator (or the demo between episodes) asked for it: a warning, not a fault
            self.get_logger().warning(
                f"e-stop latched; call {self.resolve_service_name(dysta_topics.CLEAR_ESTOP)} to release")
            self.publish_hold(self.now())  # stop at once, not at the next period
            self.on_tick()
        else:
            self.get_logger().warning(f"{self.resolve_topic_name(dysta_topics.ESTOP)} false is ignored; only "
                                      f"{self.resolve_service_name(dysta_topics.CLEAR_ESTOP)} releases")

    def on_clear_estop(self, request, response):
        was_engaged = self.core.clear_estop()
        response.success = True
        response.message = "e-stop released" if was_engaged else "e-stop was not engaged"
        self.get_logger().warning(response.message + "; motion resumes on the next chunk")
        return response

    def on_tick(self):
        now = self.now()
        tick = self.core.tick(now)
        if tick.command is None:
            level = ERROR if self.core.estop.engaged else WARN
            self.board.set("commands", level, f"holding: {tick.hold_reason}", **self.core.counts)
            if self.holding is None:  # was commanding: stop the controller where it is
                self.publish_hold(now)
            self.ticks_to_trajectory = 0  # resuming sends a trajectory at once
            self.holding = tick.hold_reason
            return
        self.holding = None
        dry_run = self.core.config.dry_run
        message = "dry run (not sent)" if dry_run else "commanding"
        message += ", clipped to limits" if tick.clipped else ""
        self.board.set("commands", OK, message, **self.core.counts)
        if tick.excess:
            self.board.set("workspace", WARN, f"clamped: {describe_excess(tick.excess)}",
                           **self.workspace_values())
        if dry_run:
            self.get_logger().info(f"dry run: {self.output} {np.round(tick.command, 4).tolist()}",
                                   throttle_duration_sec=1.0)
            return
        if self.output == "joint_trajectory":
            self.publish_trajectory(tick.command, now)
        else:
            self.command_pub.publish(self.command_msg(tick.command, now))

    def publish_trajectory(self, command: np.ndarray, now: float):
        """Send the plan ahead (`ChunkExecutor.lookahead`) at trajectory_rate_hz, from this tick's command.

        Counted in control ticks (every round(control_rate / trajectory_rate)-th, at least every
        one), so each trajectory starts at most that many ticks of velocity from the last one's
        start, however the clock runs. Stamped `now`: point j is for `now + (j + 1) * period`, so a
        controller that starts it later (transport) skips what has passed, as for any trajectory.
        """
        self.ticks_to_trajectory -= 1
        if self.ticks_to_trajectory > 0:
            return
        config = self.core.config
        self.ticks_to_trajectory = max(1, round(config.control_rate_hz / config.trajectory_rate_hz))
        points = self.core.lookahead(now, command)
        times = [(j + 1) * config.period for j in range(len(points))]
        self.command_pub.publish(conv.trajectory_msg(self.robot.joints, points, times, now))

    def command_msg(self, command: np.ndarray, now: float):
        if self.output == "forward_position":
            return Float64MultiArray(data=command.tolist())
        if self.output == "ee_pose":
            return conv.pose_msg(command, self.robot.base_frame, now)
        return conv.twist_msg(command, self.robot.base_frame, now)

    def publish_hold(self, now: float):
        """Stop the controller where it is: an empty trajectory, or a zero twist."""
        if self.core.config.dry_run:
            return
        if self.output == "joint_trajectory":
            self.command_pub.publish(conv.trajectory_msg(self.robot.joints, np.zeros((0, 0)), []))
        elif self.output == "ee_twist":
            self.command_pub.publish(conv.twist_msg(np.zeros(6), self.robot.base_frame, now))

    def workspace_values(self) -> dict:
        workspace = self.core.workspace
        return {"clamped": self.core.counts["clipped"], "min_xyz": list(workspace.min_xyz),
                "max_xyz": list(workspace.max_xyz), "max_linear_speed": workspace.max_linear_speed,
                "max_angular_speed": workspace.max_angular_speed,
                **{f"worst_{key}": f"{value:.4f}" for key, value in self.core.worst_excess.items()}}

    def report_workspace(self):
        """Say what bounds the commands; a clamp stays WARN until one report has carried it."""
        if self.core.action_space == "joint_position":
            self.board.set("workspace", OK, f"not used: {self.output} commands are clipped to joint limits")
        elif self.core.workspace is None:
            self.board.set("workspace", WARN, f"{self.output} outputs are unbounded: robot "
                           f"{self.robot.name!r} has no workspace in its config")
        elif self.core.counts["clipped"] == self.clamps_reported:
            self.board.set("workspace", OK, "inside the workspace", **self.workspace_values())
        self.clamps_reported = self.core.counts["clipped"]

    def publish_diagnostics(self):
        self.report_workspace()
        self.diagnostics_pub.publish(to_message(self.board, self.get_clock().now().to_msg()))


def main(args=None) -> int:
    return run_node("chunk_executor", ChunkExecutorNode, SingleThreadedExecutor, args)


if __name__ == "__main__":
    sys.exit(main())
