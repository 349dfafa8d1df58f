"""policy_node: cameras + joint states + instruction in, ActionChunk + TokenStats out.

A lifecycle node: the model is built in configure, inference runs on its own thread while
active, and cleanup frees it. Subscription callbacks only store the latest message (camera
frames raw, as serialized bytes); the inference thread steps at most `inference_rate_hz`, on
fresh inputs only, through the core's one boundary `runtime.step(observation)`. `autostart:
true` configures and activates at startup, so a plain launch file needs no lifecycle manager.

Its parts are plain classes in their own modules: parameters (policy_params), input tracker
(inputs), inference thread (inference_loop), one step and its report (policy_step,
step_report), status board (diagnostics). Chunks become robot commands in chunk_executor only.
"""

from __future__ import annotations

import gc
import sys

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from sensor_msgs.msg import JointState
from std_msgs.msg import String

from dysta_ros.errors import ConfigError, DystaError
from dysta_ros.msg import ActionChunk, TokenStats
from dysta_ros.nodes import conversions as conv
from dysta_ros.nodes import params as P
from dysta_ros.nodes import topics as dysta_topics
from dysta_ros.nodes.clock_offset import ClockOffsetClient
from dysta_ros.nodes.diagnostics import ERROR, OK, WARN, CoreLogBridge, StatusBoard, to_message
from dysta_ros.nodes.inference_loop import InferenceLoop
from dysta_ros.nodes.inputs import LatestInputs
from dysta_ros.nodes.policy_params import (  # noqa: F401 - PARAMS and co. are this node's API
    MAX_INSTRUCTION_CHARS, PARAMS, PolicyParameters, preset_overrides, strategy_params_from_yaml,
)
from dysta_ros.nodes.policy_step import PolicyStep, action_names_for, camera_inputs
from dysta_ros.nodes.raw_frames import header_stamp
from dysta_ros.nodes.spin import events_executor, run_node
from dysta_ros.robot import load_robot_config


class PolicyNode(LifecycleNode):
    """Run the VLA policy on the latest camera frames; publish action chunks and token stats."""

    def __init__(self, **kwargs):
        kwargs.setdefault("namespace", dysta_topics.NAMESPACE)  # `-r __ns:=/arm1` moves it
        super().__init__("policy_node", **kwargs)
        self.parameters = PolicyParameters()
        self.params = self.parameters.params
        self.parameters.refused_at_start = P.declare(self, self.params)
        self.add_on_set_parameters_callback(
            P.validator(self.params, self.get_logger().warning, apply=self.apply_parameters))
        self.values = P.read(self, self.params)
        self.board = StatusBoard(self.get_name(), self.values["device"],
                                 ["lifecycle", "inputs", "inference", "instruction"])
        self.report_unconfigured()
        self.core_log = CoreLogBridge(self.get_logger(), self.board, "core")
        # Its own entry: a refused instruction stays visible after the next step reports inputs.
        self.board.set("instruction", OK, "from the instruction parameter",
                       characters=len(self.values["instruction"]))
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(self.values["diagnostic_period_s"], self.publish_diagnostics)
        self.clock = ClockOffsetClient(self, self.values["clock_sync"], self.values["diagnostic_period_s"])
        self.runtime = self.inputs = self.step = self.loop = self.chunk_pub = self.stats_pub = None
        self.rebuild = False
        self.ros_entities = []
        self.autostart_timer = self.create_timer(0.0, self.autostart) if self.values["autostart"] else None

    # Parameters -------------------------------------------------------------------------

    def apply_parameters(self, changes: dict):
        refused = len(self.parameters.refused_at_start)
        values = {**P.read(self, self.params), **changes}
        family = getattr(self.runtime, "family", None)  # e.g. SmolVLA refuses history strategies
        self.rebuild |= self.parameters.check(values, changes, family)
        self.values = values
        if len(self.parameters.refused_at_start) < refused:  # configure may go ahead once none is
            self.report_unconfigured()

    def report_unconfigured(self):
        refusals = self.parameters.start_refusals()
        if refusals:
            self.board.set("lifecycle", ERROR, f"unconfigured: {refusals}")
        else:
            self.board.set("lifecycle", WARN, "unconfigured", strategy=self.values["strategy"])

    # Lifecycle --------------------------------------------------------------------------

    def autostart(self):
        if self.autostart_timer is None:  # the events executor may still deliver a queued tick
            return
        self.destroy_timer(self.autostart_timer)
        self.autostart_timer = None
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        v = self.values = P.read(self, self.params)
        try:
            if self.parameters.refused_at_start:
                raise ConfigError(self.parameters.start_refusals())
            self.robot = load_robot_config(v["robot"])
            self.runtime = self.parameters.build_runtime(v, self.robot)
            self.runtime.warm_up(v["instruction"])  # the first chunk as fast as the rest
            spec = self.runtime.spec
            action_names = action_names_for(spec, self.robot, bool(v["camera_topics"]))
            cameras = camera_inputs(spec.camera_names, self.robot, v["camera_topics"], v["camera_transport"])
            dysta_topics.check_names(self, self.robot, cameras)
        except (DystaError, ValueError) as exc:
            self.runtime = None
            self.get_logger().error(f"configure failed: {exc}")
            self.board.set("lifecycle", ERROR, f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        # The model lives as long as the node: out of the collector's view, no full pass walks it.
        gc.freeze()
        self.inputs = LatestInputs(list(cameras), self.robot.state_topic, v["instruction"])
        self.step = PolicyStep(self.inputs, cameras, self.robot, action_names, self.board, self.now,
                               lambda: self.values, self.current_runtime, self.publish_step,
                               self.get_logger())
        self.rebuild = False
        self.subscribe(cameras)
        publisher = self.create_lifecycle_publisher
        self.chunk_pub = publisher(ActionChunk, dysta_topics.ACTION_CHUNK, conv.RELIABLE_QOS)
        self.stats_pub = publisher(TokenStats, dysta_topics.TOKEN_STATS, conv.RELIABLE_QOS)
        self.get_logger().info(f"configured: {v['model']} ({spec.preset}) on {v['device']}/{v['dtype']}, "
                               f"strategy {spec.strategy}, cameras "
                               f"{ {name: topic for topic, (name, _) in cameras.items()} }")
        self.board.set("lifecycle", WARN, "inactive (configured)", strategy=spec.strategy, model=v["model"])
        return TransitionCallbackReturn.SUCCESS

    def subscribe(self, cameras: dict[str, tuple[str, type]]):
        # Frames raw: a step decodes only the frames it uses (see raw_frames).
        for topic, (_, msg_type) in cameras.items():
            self.ros_entities.append(self.create_subscription(
                msg_type, topic, lambda data, t=topic, m=msg_type: self.on_frame(t, m, data),
                conv.CAMERA_QOS, raw=True))
        self.ros_entities.append(self.create_subscription(
            JointState, self.robot.state_topic,
            lambda msg: self.inputs.put_state(msg, self.stamp_or_now(conv.to_seconds(msg.header.stamp)),
                                              received=self.now()), conv.STATE_QOS))
        self.ros_entities.append(self.create_subscription(
            String, dysta_topics.INSTRUCTION, self.on_instruction, conv.LATCHED_QOS))

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        self.step.reset()
        self.loop = InferenceLoop(self.inputs.wait, self.step, lambda: self.values["inference_rate_hz"],
                                  self.on_step_failure)
        self.loop.start()
        self.board.set("lifecycle", OK, "active", strategy=self.runtime.spec.strategy,
                       model=self.values["model"])
        self.get_logger().info("active")
        return super().on_activate(state)

    def on_step_failure(self, exc: Exception) -> None:
        if not self.context.ok():
            # Ctrl-C or SIGTERM shut the context down while a step was publishing: the end of
            # the run, not a failure (the thread stops next; logging now would fail too).
            return
        self.step.on_failure(exc)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self.close()
        self.board.set("lifecycle", WARN, "inactive (deactivated)")
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self.release()
        self.board.set("lifecycle", WARN, "unconfigured (cleaned up)")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self.close()
        self.board.set("lifecycle", WARN, "finalized (shut down; restart the node to run again)")
        return TransitionCallbackReturn.SUCCESS

    def release(self):
        """Free the model and the subscriptions and publishers made in configure."""
        self.close()
        for entity in self.ros_entities:
            self.destroy_subscription(entity)
        self.ros_entities = []
        for publisher in (self.chunk_pub, self.stats_pub):
            self.destroy_lifecycle_publisher(publisher)
        self.chunk_pub = self.stats_pub = self.runtime = None
        from dysta_ros.policy.devices import release_cached_memory  # torch only here: help stays instant

        release_cached_memory(self.values["device"])

    def close(self):
        """Stop the inference thread and wait for its step (deactivate, shutdown, Ctrl-C)."""
        if self.loop is not None:
            self.loop.stop()
            self.loop = None

    def destroy_node(self):
        self.core_log.close()  # a later policy_node in this process (the demo) installs its own
        super().destroy_node()
        # rclpy leaves the lifecycle state machine, which holds the rcl node: Fast DDS then never
        # deletes the participant, whose /dev/shm segments outlive the process
        self._state_machine.destroy_when_not_in_use()

    # Callbacks: store only ----------------------------------------------------------------

    def on_frame(self, topic: str, msg_type, data: bytes):
        now = self.now()
        try:
            stamp = header_stamp(data, msg_type)
        except DystaError:
            stamp = 0.0  # undecodable: stored as of its arrival, so the step names the bad frame
        self.inputs.put_frame(topic, data, self.stamp_or_now(stamp, now), received=now)

    def stamp_or_now(self, stamp: float, now: float | None = None) -> float:
        """An unstamped message (stamp 0) is as old as its arrival."""
        return stamp if stamp > 0 else (self.now() if now is None else now)

    def now(self) -> float:
        """Seconds on the robot's clock, the one observation stamps are on (clock_sync)."""
        return self.get_clock().now().nanoseconds * 1e-9 + self.clock.offset_s

    def on_instruction(self, msg):
        if len(msg.data) > MAX_INSTRUCTION_CHARS:
            self.board.set("instruction", ERROR, f"instruction of {len(msg.data)} characters refused "
                           f"(at most {MAX_INSTRUCTION_CHARS}); keeping the previous one")
            return
        self.inputs.put_instruction(msg.data)
        self.board.set("instruction", OK, f"from {self.resolve_topic_name(dysta_topics.INSTRUCTION)}",
                       characters=len(msg.data))

    # Inference thread -----------------------------------------------------------------------

    def current_runtime(self):
        """The runtime to step with: after a strategy change, a new one around the same model."""
        if self.rebuild:
            self.rebuild, strategy = False, self.values["strategy"]
            self.runtime = self.parameters.rebuild_runtime(self.runtime, self.values)
            self.get_logger().info(f"strategy now {strategy}")
            self.board.update("lifecycle", strategy=strategy)
        return self.runtime

    def publish_step(self, chunk, stats):
        self.chunk_pub.publish(conv.chunk_to_msg(chunk, self.robot.base_frame))
        self.stats_pub.publish(conv.stats_to_msg(stats, chunk.stamp))

    def publish_diagnostics(self):
        if self.inputs is not None:  # made in configure
            # Frames keep coming while the node holds or steps slower than they arrive.
            self.board.update("inputs", **self.inputs.frame_report())
        self.diagnostics_pub.publish(to_message(self.board, self.get_clock().now().to_msg()))


def main(args=None) -> int:
    # Callbacks only store messages (inference has its own thread): one executor thread is enough.
    return run_node("policy_node", PolicyNode, events_executor(), args)


if __name__ == "__main__":
    sys.exit(main())
