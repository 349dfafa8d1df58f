"""policy_node: cameras + joint states + instruction in, ActionChunk + TokenStats out.

A lifecycle node: the model is built in configure, inference runs on its own thread while
active, and cleanup frees it. Subscription callbacks only store the latest message; the
inference thread steps at most `inference_rate_hz`, on fresh inputs only, through the core's one
boundary `runtime.step(observation)`. `autostart: true` configures and activates at startup, so
a plain launch file (or `dysta-ros run`) needs no lifecycle manager.
"""

from __future__ import annotations

import gc
import sys
import threading

import numpy as np
from rclpy.executors import SingleThreadedExecutor
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from dysta_ros.clock_sync import CLOCK_SYNC_MODES
from dysta_ros.errors import ConfigError, DystaError, InferenceError, InputError
from dysta_ros.execution import EStopLatch, limit_trajectory
from dysta_ros.msg import ActionChunk, TokenStats
from dysta_ros.nodes import conversions as conv
from dysta_ros.nodes import params as P
from dysta_ros.nodes.clock_offset import ClockOffsetClient
from dysta_ros.nodes.diagnostics import ERROR, OK, WARN, CoreLogBridge, StatusBoard, to_message
from dysta_ros.nodes.image_conversion import image_to_rgb
from dysta_ros.nodes.inference_loop import InferenceLoop
from dysta_ros.nodes.inputs import LatestInputs
from dysta_ros.nodes.robot_link import compressed_topic
from dysta_ros.nodes.spin import run_node
from dysta_ros.nodes.step_report import StepReport
from dysta_ros.robot import config_path, load_robot_config, load_yaml
from dysta_ros.tokens import DEFAULT_STRATEGY, available_strategies, strategy_class
from dysta_ros.types import Observation

MAX_INSTRUCTION_CHARS = 4096
EE_AXES = {6: ["x", "y", "z", "roll", "pitch", "yaw"], 7: ["x", "y", "z", "qx", "qy", "qz", "qw"]}
PARAMS = [
    P.Param("model", "tiny", "model preset name or checkpoint directory", read_only=True),
    P.Param("vlm", "", "a SmolVLA checkpoint's backbone config + tokenizer directory (\"\": the "
            "offline Hugging Face cache)", read_only=True),
    P.Param("device", "cpu", "torch device: cpu, cuda, cuda:1, ...", read_only=True),
    P.Param("dtype", "float32", "model dtype", read_only=True, choices=("float32", "bfloat16", "float16")),
    P.Param("cpu_threads", 0, "torch CPU threads (0: torch's default); keep it at the cores that are "
            "free, or every step slows down many times", read_only=True, low=0, high=1024),
    P.Param("preset_overrides", "", "YAML mapping of preset config fields to change, e.g. "
            "'{camera_names: [main, wrist]}' (presets only; state/action dims follow the robot)",
            read_only=True),
    P.Param("seed", 0, "seed of a preset's random weights and of the action noise", read_only=True,
            low=0, high=2**31 - 1),
    P.Param("strategy", DEFAULT_STRATEGY, "token strategy; a change applies from the next step (model kept)",
            choices=available_strategies),
    P.Param("robot", "sim_arm", "robot config name (config/robots/<name>.yaml) or YAML path",
            read_only=True),
    P.Param("camera_topics", [], "topics of the model's cameras, in its order (empty: robot config)",
            read_only=True),
    P.Param("camera_transport", "raw", "compressed: subscribe to each camera topic's /compressed "
            "stream (robot_link's, from a policy host)", read_only=True, choices=("raw", "compressed")),
    P.Param("clock_sync", "assume", "assume: clocks synchronised (chrony/PTP); estimate: the robot's "
            "clock from round trips to robot_link (a policy host)", read_only=True, choices=CLOCK_SYNC_MODES),
    P.Param("inference_rate_hz", 10.0, "most policy steps per second", low=0.1, high=1000.0),
    P.Param("max_image_age_s", 0.5, "hold when a camera's latest frame is older", low=0.001, high=60.0),
    P.Param("max_state_age_s", 0.5, "hold when the latest joint state is older", low=0.001, high=60.0),
    P.Param("instruction", "", "instruction until /dysta/instruction sets one"),
    P.Param("publish_trajectory", False, "also publish each joint chunk, held to the joint limits, as a "
            "JointTrajectory to the robot's joint_trajectory topic (honours /dysta/estop)", read_only=True),
    P.Param("autostart", False, "configure and activate at startup (no lifecycle manager needed)",
            read_only=True),
    P.Param("diagnostic_period_s", 1.0, "seconds between /diagnostics messages", read_only=True,
            low=0.01, high=60.0),
]


def strategy_params_from_yaml() -> list[P.Param]:
    """Return `<strategy>.<key>` parameters, defaults from config/strategies/<strategy>.yaml."""
    declared = []
    for name in available_strategies():
        try:
            values = load_yaml(config_path("strategies", name))
        except ConfigError:
            values = {}  # no YAML: the strategy's own defaults
        for key, value in values.items():
            declared.append(P.Param(f"{name}.{key}", value, f"{name} strategy parameter {key}"))
    return declared


def preset_overrides(text: str) -> dict:
    """Parse the preset_overrides parameter (a YAML mapping); raise ConfigError if it is not one."""
    try:
        overrides = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"preset_overrides is not YAML: {exc}") from exc
    if not isinstance(overrides, dict):
        raise ConfigError(f"preset_overrides must be a mapping such as '{{camera_names: [main]}}', "
                          f"got {text!r}")
    return overrides


class PolicyNode(LifecycleNode):
    """Run the VLA policy on the latest camera frames; publish action chunks and token stats."""

    def __init__(self, **kwargs):
        super().__init__("policy_node", **kwargs)
        self.strategy_params = strategy_params_from_yaml()
        self.params = PARAMS + self.strategy_params
        # A value refused at start-up leaves its default in place and fails configure until a
        # valid one is set: the node stays up, unconfigured, and says why (never exits on it).
        self.refused_at_start = P.declare(self, self.params)
        self.add_on_set_parameters_callback(
            P.validator(self.params, self.get_logger().warning, apply=self.apply_parameters))
        self.values = P.read(self, self.params)
        entries = ["lifecycle", "inputs", "inference", "instruction"]
        self.board = StatusBoard(self.get_name(), self.values["device"],
                                 entries + ["trajectory"] * self.values["publish_trajectory"])
        if self.refused_at_start:
            self.board.set("lifecycle", ERROR, f"unconfigured: {self.start_refusals()}")
        else:
            self.board.set("lifecycle", WARN, "unconfigured", strategy=self.values["strategy"])
        self.core_log = CoreLogBridge(self.get_logger(), self.board, "core")
        # Its own entry: a refused instruction stays visible after the next step reports inputs.
        self.board.set("instruction", OK, "from the instruction parameter",
                       characters=len(self.values["instruction"]))
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(self.values["diagnostic_period_s"], self.publish_diagnostics)
        self.clock = ClockOffsetClient(self, self.values["clock_sync"], self.values["diagnostic_period_s"])
        self.runtime = None
        self.report = StepReport()
        self.loop: InferenceLoop | None = None
        self.rebuild = False
        self.ros_entities = []
        self.trajectory_pub = None
        if self.values["publish_trajectory"]:
            self.listen_for_estop()
        if self.values["autostart"]:
            self.autostart_timer = self.create_timer(0.0, self.autostart)

    # Parameters -------------------------------------------------------------------------

    def strategy_values(self, values: dict, strategy: str) -> dict:
        prefix = strategy + "."
        return {p.name[len(prefix):]: values[p.name]
                for p in self.strategy_params if p.name.startswith(prefix)}

    def apply_parameters(self, changes: dict):
        values = {**P.read(self, self.params), **changes}
        # Validated here, so a bad strategy parameter is refused now, not at the next step or
        # when its strategy is switched to later: the active strategy and every one changed.
        touched = {values["strategy"]} | {k.split(".", 1)[0] for k in changes
                                          if k.split(".", 1)[0] in available_strategies()}
        for strategy in sorted(touched):
            strategy_class(strategy).Params.from_dict(self.strategy_values(values, strategy), strategy)
        family = getattr(self.runtime, "family", None)  # e.g. SmolVLA refuses history strategies
        if family is not None and "strategy" in changes:
            family.check_strategy(changes["strategy"])
        self.values = values
        fixed = [name for name in changes if self.refused_at_start.pop(name, None) is not None]
        if fixed:  # valid values now: configure may go ahead once none is refused
            self.board.set("lifecycle", ERROR if self.refused_at_start else WARN,
                           f"unconfigured: {self.start_refusals()}" if self.refused_at_start
                           else "unconfigured")
        if any(k == "strategy" or "." in k for k in changes):
            self.rebuild = True

    def start_refusals(self) -> str:
        """Say which start-up values were refused, why, and how to get past it."""
        read_only = {p.name for p in self.params if p.read_only}
        return "; ".join(
            f"{reason} (refused at start-up; " + ("read-only: restart the node with a valid value)"
                                                   if name in read_only else
                                                   "set a valid value, then configure again)")
            for name, reason in self.refused_at_start.items())

    # Lifecycle --------------------------------------------------------------------------

    def autostart(self):
        self.destroy_timer(self.autostart_timer)
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        from dysta_ros.policy.config import PRESETS
        from dysta_ros.policy.runtime import build_runtime

        v = self.values = P.read(self, self.params)
        try:
            if self.refused_at_start:
                raise ConfigError(self.start_refusals())
            self.robot = load_robot_config(v["robot"])
            joints = len(self.robot.joints)
            overrides = None
            if v["model"] in PRESETS:
                overrides = {"state_dim": joints, "action_dim": joints,
                             **preset_overrides(v["preset_overrides"])}
            self.runtime = build_runtime(
                v["model"], v["strategy"], self.strategy_values(v, v["strategy"]), device=v["device"],
                dtype=v["dtype"], seed=v["seed"], overrides=overrides, threads=v["cpu_threads"],
                vlm=v["vlm"] or None)
            self.check_model_fits_robot()
            topics = v["camera_topics"] or self.robot.camera_topics(self.runtime.spec.camera_names)
            if v["camera_transport"] == "compressed":
                topics = [compressed_topic(t) for t in topics]
            if len(topics) != len(self.runtime.spec.camera_names):
                raise ConfigError(f"camera_topics: the model takes {len(self.runtime.spec.camera_names)} "
                                  f"cameras {self.runtime.spec.camera_names}, got {len(topics)} topics")
        except (DystaError, ValueError) as exc:
            self.runtime = None
            self.get_logger().error(f"configure failed: {exc}")
            self.board.set("lifecycle", ERROR, f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        # The model and its library state live for the node's life: move them out of the
        # collector's view, so a full collection in the control loop no longer walks them.
        gc.freeze()
        self.topics = list(topics)
        self.inputs = LatestInputs(self.topics, self.robot.state_topic, v["instruction"])
        self.rebuild = False
        self.subscribe()
        publish = self.create_lifecycle_publisher
        self.chunk_pub = publish(ActionChunk, "/dysta/action_chunk", conv.RELIABLE_QOS)
        self.stats_pub = publish(TokenStats, "/dysta/token_stats", conv.RELIABLE_QOS)
        if v["publish_trajectory"]:
            self.trajectory_pub = self.create_lifecycle_publisher(
                JointTrajectory, self.robot.command_topics["joint_trajectory"], conv.RELIABLE_QOS)
            self.board.set("trajectory", OK if not self.estop.engaged else ERROR,
                           self.estop_message() or "no trajectory yet")
        spec = self.runtime.spec
        cameras = dict(zip(spec.camera_names, self.topics))
        self.get_logger().info(f"configured: {v['model']} ({spec.preset}) on {v['device']}/{v['dtype']}, "
                               f"strategy {spec.strategy}, cameras {cameras}")
        self.board.set("lifecycle", WARN, "inactive (configured)", strategy=spec.strategy, model=v["model"])
        return TransitionCallbackReturn.SUCCESS

    def check_model_fits_robot(self):
        spec = self.runtime.spec
        self.robot.check_features([] if self.values["camera_topics"] else spec.camera_names,
                                  spec.state_names, spec.action_names)
        if spec.state_dim != len(self.robot.joints):
            raise ConfigError(f"model state_dim {spec.state_dim} != robot {self.robot.name!r}'s "
                              f"{len(self.robot.joints)} joints")
        if spec.action_space == "joint_position":
            if spec.action_dim != len(self.robot.joints):
                raise ConfigError(f"model action_dim {spec.action_dim} != robot {self.robot.name!r}'s "
                                  f"{len(self.robot.joints)} joints")
            self.action_names = list(self.robot.joints)
        elif spec.action_dim in EE_AXES:
            self.action_names = EE_AXES[spec.action_dim]
        else:
            raise ConfigError(f"model action space {spec.action_space} with dim {spec.action_dim}: "
                              f"end-effector actions need 6 (xyz+rpy) or 7 (xyz+quaternion)")

    def subscribe(self):
        for topic in self.topics:
            msg_type = CompressedImage if topic.rstrip("/").endswith("/compressed") else Image
            self.ros_entities.append(self.create_subscription(
                msg_type, topic, lambda msg, t=topic: self.on_frame(t, msg), conv.CAMERA_QOS))
        self.ros_entities.append(self.create_subscription(
            JointState, self.robot.state_topic,
            lambda msg: self.inputs.put_state(msg, self.stamp_of(msg), received=self.now()), conv.STATE_QOS))
        self.ros_entities.append(self.create_subscription(
            String, "/dysta/instruction", self.on_instruction, conv.LATCHED_QOS))

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        self.episode_instruction = None
        self.report.reset()
        self.loop = InferenceLoop(self.inputs.wait, self.step_once, lambda: self.values["inference_rate_hz"],
                                  self.on_step_failure)
        self.loop.start()
        self.board.set("lifecycle", OK, "active", strategy=self.runtime.spec.strategy,
                       model=self.values["model"])
        self.get_logger().info("active")
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self.stop_inference()
        self.stop_controller()  # the controller would otherwise play the last chunk to its end
        self.board.set("lifecycle", WARN, "inactive (deactivated)")
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self.release()
        self.board.set("lifecycle", WARN, "unconfigured (cleaned up)")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self.close()
        return TransitionCallbackReturn.SUCCESS

    def stop_inference(self):
        if self.loop is not None:
            self.loop.stop()
            self.loop = None

    @property
    def thread(self):
        """The inference thread, while active."""
        return self.loop.thread if self.loop is not None else None

    @property
    def errors(self) -> int:
        return self.report.errors

    def release(self):
        """Free the model and the subscriptions and publishers made in configure."""
        self.stop_inference()
        for entity in self.ros_entities:
            self.destroy_subscription(entity)
        self.ros_entities = []
        for name in ("chunk_pub", "stats_pub", "trajectory_pub"):
            publisher = getattr(self, name, None)
            if publisher is not None:
                self.destroy_lifecycle_publisher(publisher)
                setattr(self, name, None)
        device = self.values["device"]
        self.runtime = None
        if device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def close(self):
        """Stop the inference thread (on shutdown or Ctrl-C)."""
        self.stop_inference()

    def destroy_node(self):
        self.core_log.close()  # a later policy_node in this process (the demo) installs its own
        super().destroy_node()

    # The trajectory path (publish_trajectory): limits and e-stop ------------------------------

    def listen_for_estop(self):
        """Latch /dysta/estop for the trajectory path; ~/clear_estop releases it.

        Its own release service: /dysta/clear_estop belongs to chunk_executor, and two servers
        of one service would each answer a call (or not) depending on the middleware.
        """
        self.estop = EStopLatch()
        self.estop_lock = threading.Lock()  # no trajectory goes out between a trip and its stop
        self.trajectory_counts = {"sent": 0, "clamped_points": 0, "held": 0}
        self.clamp_unreported = False  # a clamp stays WARN until a report has carried it
        self.create_subscription(Bool, "/dysta/estop", self.on_estop, conv.ESTOP_QOS)
        self.create_service(Trigger, "~/clear_estop", self.on_clear_estop)
        self.board.set("trajectory", WARN, "no trajectory: unconfigured")

    def estop_message(self) -> str:
        if not self.estop.engaged:
            return ""
        return (f"holding: e-stop engaged ({self.estop.reason}); call "
                f"{self.get_fully_qualified_name()}/clear_estop to release")

    def on_estop(self, msg):
        if not msg.data:
            self.get_logger().warning("/dysta/estop false is ignored; only ~/clear_estop releases")
            return
        with self.estop_lock:
            self.estop.trip("/dysta/estop")
            self.stop_controller()
        self.board.set("trajectory", ERROR, self.estop_message(), **self.trajectory_counts)
        self.get_logger().error(self.estop_message())

    def on_clear_estop(self, request, response):
        with self.estop_lock:
            was_engaged = self.estop.clear()
        response.success = True
        response.message = "e-stop released" if was_engaged else "e-stop was not engaged"
        self.board.set("trajectory", OK, response.message + "; trajectories resume with the next chunk",
                       **self.trajectory_counts)
        self.get_logger().warning(response.message)
        return response

    def stop_controller(self):
        """Make the trajectory controller stop where it is (an empty trajectory), if it is ours."""
        if self.trajectory_pub is not None and self.trajectory_pub.is_activated:
            self.trajectory_pub.publish(conv.trajectory_msg(self.robot.joints, np.zeros((0, 0)), []))

    def send_trajectory(self, chunk, state: np.ndarray):
        """Send a joint chunk to the trajectory controller within the joint limits, or hold."""
        counts = self.trajectory_counts
        try:
            actions, clamped = limit_trajectory(chunk, state, self.robot)
        except InputError as exc:
            counts["held"] += 1
            self.board.set("trajectory", ERROR, f"holding: {exc}", **counts)
            return
        with self.estop_lock:
            if self.estop.engaged:
                counts["held"] += 1
                self.board.set("trajectory", ERROR, self.estop_message(), **counts)
                return
            times = [k * chunk.dt for k in range(len(actions))]
            self.trajectory_pub.publish(conv.trajectory_msg(self.robot.joints, actions, times, chunk.stamp))
        counts["sent"] += 1
        counts["clamped_points"] += clamped
        if clamped:
            self.board.set("trajectory", WARN, f"clamped {clamped} of {len(actions)} points to the "
                           f"joint limits", **counts)
            self.clamp_unreported = True
        elif not self.clamp_unreported:
            self.board.set("trajectory", OK, "sent within the joint limits", **counts)
        else:
            self.board.update("trajectory", **counts)

    # Callbacks: store only ----------------------------------------------------------------

    def on_frame(self, topic: str, msg):
        now = self.now()
        stamp = conv.to_seconds(msg.header.stamp)
        self.inputs.put_frame(topic, msg, stamp if stamp > 0 else now, received=now)

    def stamp_of(self, msg) -> float:
        stamp = conv.to_seconds(msg.header.stamp)
        return stamp if stamp > 0 else self.now()  # an unstamped message is as old as its arrival

    def now(self) -> float:
        """Seconds on the robot's clock, the one observation stamps are on (clock_sync)."""
        return self.get_clock().now().nanoseconds * 1e-9 + self.clock.offset_s

    def on_instruction(self, msg):
        if len(msg.data) > MAX_INSTRUCTION_CHARS:
            self.board.set("instruction", ERROR, f"instruction of {len(msg.data)} characters refused "
                           f"(at most {MAX_INSTRUCTION_CHARS}); keeping the previous one")
            return
        self.inputs.put_instruction(msg.data)
        self.board.set("instruction", OK, "from /dysta/instruction", characters=len(msg.data))

    # Inference thread -----------------------------------------------------------------------

    def on_step_failure(self, exc: Exception):
        self.report.errors += 1
        self.board.set("inference", ERROR, f"step failed: {type(exc).__name__}: {exc}")
        self.get_logger().error(f"step failed: {exc!r}", throttle_duration_sec=1.0)

    def step_once(self) -> bool:
        """Step on the latest inputs if they are fresh and new; return whether it stepped."""
        v = self.values
        snapshot = self.inputs.take(self.now(), v["max_image_age_s"], v["max_state_age_s"])
        if not snapshot.stale and not snapshot.new_frames:
            return False  # the common wake-up (one camera of a set arrived): nothing to report
        counts = self.inputs.frame_report()
        if snapshot.stale:
            self.board.set("inputs", WARN, "holding, stale input: " + ", ".join(snapshot.stale), **counts)
            return False
        images = {}
        for name, topic in zip(self.runtime.spec.camera_names, self.topics):
            try:
                images[name] = image_to_rgb(snapshot.frames[topic].msg)
            except InputError as exc:
                self.board.set("inputs", ERROR, f"holding, bad frame on {topic}: {exc}", **counts)
                return False
        try:
            state = self.robot.pick_joints(snapshot.state.msg.name, snapshot.state.msg.position)
        except InputError as exc:
            self.board.set("inputs", ERROR, f"holding, bad joint state on {self.robot.state_topic}: {exc}",
                           **counts)
            return False
        self.board.set("inputs", OK, "fresh", **counts)
        if self.rebuild:
            self.rebuild_runtime()
        if snapshot.instruction != self.episode_instruction:
            self.runtime.reset()  # a new instruction starts a new episode
            self.episode_instruction = snapshot.instruction
        model_state = self.robot.state_to_model(state).astype(np.float32)  # e.g. rad -> LeRobot degrees
        observation = Observation(snapshot.stamp, images, model_state, snapshot.instruction)
        start = self.now()
        try:
            chunk, stats = self.runtime.step(observation)
        except (InputError, InferenceError, ConfigError) as exc:
            self.report.errors += 1
            self.board.set("inference", ERROR, f"holding, step refused: {exc}", errors=self.report.errors)
            self.get_logger().error(f"step refused: {exc}", throttle_duration_sec=1.0)
            return True
        end = self.now()
        if chunk.action_space == "joint_position":
            chunk.actions = self.robot.actions_to_ros(chunk.actions)  # the checkpoint's units -> rad
        chunk.names, chunk.inference_start, chunk.inference_end = self.action_names, start, end
        self.chunk_pub.publish(conv.chunk_to_msg(chunk, self.robot.base_frame))
        self.stats_pub.publish(conv.stats_to_msg(stats, chunk.stamp))
        if self.trajectory_pub is not None and chunk.action_space == "joint_position":
            self.send_trajectory(chunk, state)
        self.report_step(snapshot, stats, start, end)
        return True

    def rebuild_runtime(self):
        """Switch strategy live: a new runtime around the same model (history restarts)."""
        from dysta_ros.policy.runtime import build_runtime

        v, old = self.values, self.runtime
        self.rebuild = False
        self.runtime = build_runtime(old.model, v["strategy"], self.strategy_values(v, v["strategy"]),
                                     seed=v["seed"])
        self.episode_instruction = None
        self.get_logger().info(f"strategy now {v['strategy']}")
        self.board.update("lifecycle", strategy=v["strategy"])

    def report_step(self, snapshot, stats, start: float, end: float):
        values = self.report.stepped(stats, snapshot.received, snapshot.stamp, start, self.now())
        self.board.set("inference", OK, f"step {self.report.steps}", strategy=self.runtime.spec.strategy,
                       device=self.values["device"], **values)

    def publish_diagnostics(self):
        inputs = getattr(self, "inputs", None)  # made in configure
        if inputs is not None:
            # Frames keep coming while the node holds or steps slower than they arrive.
            self.board.update("inputs", **inputs.frame_report())
        self.diagnostics_pub.publish(to_message(self.board, self.get_clock().now().to_msg()))
        self.clamp_unreported = False


def main(args=None) -> int:
    # Callbacks only store messages (inference has its own thread): one executor thread is
    # enough, and rclpy's single-threaded executor dispatches with less overhead.
    return run_node("policy_node", PolicyNode, SingleThreadedExecutor, args)


if __name__ == "__main__":
    sys.exit(main())
