"""The ROS side of `dysta-ros demo`: sim_node, chunk_executor and policy_node in one process.

A small `dysta_demo` node plays the operator: between episodes it latches the e-stop and
deactivates the policy, sets sim_node's task and seed through its parameter service, calls
~/reset, waits for the first fresh camera frame, releases the e-stop and activates the policy
(lifecycle service), then waits for /dysta/episode_outcome. It records /dysta/token_stats,
/dysta/action_chunk and the main camera for the report.

This is the `dysta-ros demo` subcommand module (`add_arguments`, `run`); the records and the
report are ROS-free, in dysta_ros.evaluation.demo.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

import rclpy
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from rcl_interfaces.srv import SetParameters
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger
from tqdm import tqdm

from dysta_ros.cli_options import json_to_stdout, write_json
from dysta_ros.results import command_line
from dysta_ros.errors import EXIT_CONFIG, EXIT_FAILURE, ConfigError, DystaError
from dysta_ros.evaluation.demo import (EXPERT, EpisodeRecord, StepRecord, add_arguments, check_arguments,
                                      format_table, plan, summary_document, summary_rows, write_report)
from dysta_ros.msg import ActionChunk, TokenStats
from dysta_ros.nodes import chunk_executor, policy_node
from dysta_ros.nodes import topics as dysta_topics
from dysta_ros.nodes.conversions import CAMERA_QOS, ESTOP_QOS, LATCHED_QOS, RELIABLE_QOS, SIM_TIME, to_seconds
from dysta_ros.nodes.image_conversion import image_to_rgb
from dysta_ros.nodes.run import node_values, to_parameters
from dysta_ros.nodes.service_calls import call_service, set_remote_parameters, wait_for, wait_until
from dysta_ros.nodes.sim_node import OUTCOME_TOPIC, SimNode
from dysta_ros.nodes.spin import share_the_gil_finely, signals_interrupt

STALL_TIMEOUT_S = 30.0  # an episode fails the demo when no camera frame came for this long
CAMERA_TOPIC = "/camera/image_raw"


class DemoSession:
    """Own the nodes and run episodes one after another."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        # Sim time (/clock) for every node, as `dysta-ros record` does: a loaded machine slows the
        # episode down instead of the clock running on while the arm waits for stale chunks.
        # auto_reset off: the session resets each episode itself, with the seed it chose
        self.sim = SimNode(image_width=args.image_size, image_height=args.image_size, publish_clock=True,
                           auto_reset=False)
        self.values = node_values(argparse.Namespace(
            strategy=args.strategies[0], model="tiny", vlm=getattr(args, "vlm", None) or "",
            threads=args.threads, robot="sim_arm", device=args.device, dtype=args.dtype,
            instruction=None, dry_run=False, params_file=None,
            param=[]))
        overrides = [*to_parameters(self.values["chunk_executor"], chunk_executor.PARAMS), SIM_TIME]
        self.executor_node = chunk_executor.ChunkExecutorNode(parameter_overrides=overrides)
        self.node = rclpy.create_node("dysta_demo", parameter_overrides=[SIM_TIME])
        self.lock = threading.Lock()
        self.record: EpisodeRecord | None = None
        self.started = 0.0  # time.monotonic() of the current episode's start
        self.reset_stamp = 0.0  # frames stamped before the reset belong to the previous episode
        self.outcome: dict | None = None
        self.episode_number = -1
        node = self.node
        node.create_subscription(String, dysta_topics.absolute(OUTCOME_TOPIC), self.on_outcome, LATCHED_QOS)
        node.create_subscription(TokenStats, dysta_topics.absolute(dysta_topics.TOKEN_STATS), self.on_stats,
                                 RELIABLE_QOS)
        node.create_subscription(ActionChunk, dysta_topics.absolute(dysta_topics.ACTION_CHUNK), self.on_chunk,
                                 RELIABLE_QOS)
        node.create_subscription(Image, CAMERA_TOPIC, self.on_frame, CAMERA_QOS)
        self.estop = node.create_publisher(Bool, dysta_topics.absolute(dysta_topics.ESTOP), ESTOP_QOS)
        self.sim_parameters = node.create_client(SetParameters,
                                                 dysta_topics.node_service("sim_node", "set_parameters"))
        self.sim_reset = node.create_client(Trigger, dysta_topics.node_service("sim_node", "reset"))
        self.clear_estop = node.create_client(Trigger, dysta_topics.absolute(dysta_topics.CLEAR_ESTOP))
        self.policy_parameters = node.create_client(
            SetParameters, dysta_topics.node_service("policy_node", "set_parameters"))
        self.policy_state = node.create_client(ChangeState,
                                               dysta_topics.node_service("policy_node", "change_state"))
        self.policy: policy_node.PolicyNode | None = None
        self.policy_model = ""
        self.executor = MultiThreadedExecutor(num_threads=4)
        for each in (self.sim, self.executor_node, self.node):
            self.executor.add_node(each)
        self.spinner = threading.Thread(target=self.executor.spin, name="demo-spin", daemon=True)
        self.spinner.start()

    # --- callbacks: store only ----------------------------------------------------------------
    def on_outcome(self, msg: String) -> None:
        outcome = json.loads(msg.data)
        with self.lock:
            if outcome.get("episode") == self.episode_number:
                self.outcome = outcome

    def on_stats(self, msg) -> None:
        with self.lock:
            if self.record is not None and self.record.policy != EXPERT:
                self.record.steps.append(StepRecord(
                    time.monotonic() - self.started, msg.total_ms, msg.context_tokens, msg.recomputed_tokens,
                    msg.recached_l1, msg.recached_l2))

    def on_chunk(self, msg) -> None:
        with self.lock:
            if self.record is not None:
                self.record.chunks += 1

    def on_frame(self, msg: Image) -> None:
        if to_seconds(msg.header.stamp) < self.reset_stamp:
            return
        frame = image_to_rgb(msg)
        with self.lock:
            if self.record is not None and self.outcome is None:
                self.record.frames.append(frame)

    # --- services ---------------------------------------------------------------------------------
    def transition(self, transition_id: int) -> None:
        request = ChangeState.Request()
        request.transition.id = transition_id
        if not call_service(self.policy_state, request, "policy_node lifecycle").success:
            raise DystaError(f"policy_node refused lifecycle transition {transition_id}")

    def hold(self) -> None:
        """Latch chunk_executor's e-stop: no command reaches the arm until it is released."""
        self.estop.publish(Bool(data=True))

    # --- episodes ---------------------------------------------------------------------------------
    def use_policy(self, model: str, strategy: str) -> None:
        """Have a configured, inactive policy_node for `model`, with `strategy` set."""
        if self.policy is not None and self.policy_model != model:
            self.executor.remove_node(self.policy)
            self.policy.destroy_node()
            self.policy = None
        if self.policy is None:
            values = dict(self.values["policy_node"], model=model, strategy=strategy)
            declared = policy_node.PARAMS + policy_node.strategy_params_from_yaml()
            overrides = [*to_parameters(values, declared), SIM_TIME]
            self.policy = policy_node.PolicyNode(parameter_overrides=overrides)
            if self.policy.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                raise ConfigError(f"policy_node could not load {model!r} (see the log above)")
            self.policy_model = model
            self.executor.add_node(self.policy)
        set_remote_parameters(self.policy_parameters, "policy_node", strategy=strategy)

    def run_episode(self, policy: str, strategy: str, seed: int, progress: tqdm) -> EpisodeRecord:
        args, learned = self.args, policy != EXPERT
        record = EpisodeRecord(policy, strategy, args.task, seed)
        self.hold()
        if learned:
            self.use_policy(policy, strategy)
        set_remote_parameters(self.sim_parameters, "sim_node", expert=not learned, task=args.task, seed=seed,
                              episode_seconds=float(args.episode_seconds))
        with self.lock:
            self.outcome, self.record = None, None
        reply = call_service(self.sim_reset, Trigger.Request(), "sim_node reset")
        if not reply.success:
            raise ConfigError(f"sim_node reset: {reply.message}")
        with self.lock:
            self.episode_number = json.loads(reply.message)["episode"]
            self.reset_stamp = self.node.get_clock().now().nanoseconds * 1e-9
            self.record, self.started = record, time.monotonic()
        wait_for(lambda: bool(record.frames), "a camera frame after the reset", 10.0)
        call_service(self.clear_estop, Trigger.Request(), "chunk_executor clear_estop")
        if learned:
            self.transition(Transition.TRANSITION_ACTIVATE)
        try:
            # On a busy machine the sim runs slower than the wall clock: wait as long as frames come.
            wait_for(lambda: self.outcome is not None, "the episode outcome", STALL_TIMEOUT_S,
                          lambda: progress.set_postfix_str(self.progress_line(record), refresh=True),
                          alive=lambda: len(record.frames))
        finally:
            self.hold()
            if learned:
                self.transition(Transition.TRANSITION_DEACTIVATE)
        with self.lock:
            self.record = None
            record.success, record.reason = bool(self.outcome["success"]), self.outcome["reason"]
            record.seconds = float(self.outcome["seconds"])
        return record

    def progress_line(self, record: EpisodeRecord) -> str:
        line = f"{record.label} seed {record.seed} | frames {len(record.frames)} | chunks {record.chunks}"
        if record.steps:
            last = record.steps[-1]
            line += f" | step {last.total_ms:.0f} ms | tokens {last.context_tokens}"
        return line

    def close(self) -> None:
        self.hold()
        # held once chunk_executor has taken the e-stop, not once it is published: shutting the
        # executor down at once could drop it unread
        if self.executor_node is not None:
            wait_until(lambda: self.executor_node.core.estop.engaged, 2.0)
        self.executor.shutdown()
        self.spinner.join(timeout=10.0)  # no callback may still run when its node is destroyed
        for each in (self.policy, self.executor_node, self.sim, self.node):
            if each is not None:
                getattr(each, "close", lambda: None)()
                each.destroy_node()


def run_episodes(args: argparse.Namespace, runs: list[tuple[str, str, int]]) -> list[EpisodeRecord]:
    """Run `runs` = [(policy, strategy, seed)] as closed-loop episodes; return their records.

    Ctrl-C or SIGTERM raises KeyboardInterrupt(signal number) here, not rclpy's context shutdown:
    that left the waits below polling for 30 s, then close() failed to latch the e-stop
    ("publisher's context is invalid") with a traceback. Now close() holds the arm first.
    """
    share_the_gil_finely()  # sim, policy and executor share this process
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    session = None
    try:
        with signals_interrupt():
            session = DemoSession(args)
            wait_for(lambda: session.estop.get_subscription_count() > 0, "chunk_executor", 30.0)
            episodes = []
            with tqdm(total=len(runs), desc="demo", unit="episode") as progress:
                for policy, strategy, seed in runs:
                    episodes.append(session.run_episode(policy, strategy, seed, progress))
                    progress.update(1)
            return episodes
    finally:
        if session is not None:
            session.close()
        rclpy.try_shutdown()


def run(args: argparse.Namespace) -> int:
    """Run the demo's episodes over ROS, print the table, write the report; return the exit status."""
    try:
        check_arguments(args)
    except ConfigError as exc:
        print(f"dysta-ros demo: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        episodes = run_episodes(args, plan(args))
    except (DystaError, TimeoutError) as exc:
        print(f"dysta-ros demo: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt as interrupt:  # no report: the episodes it compares did not all run
        print("dysta-ros demo: interrupted; no report written", file=sys.stderr)
        return 128 + (interrupt.args[0] if interrupt.args else signal.SIGINT)
    out = sys.stderr if json_to_stdout(args) else sys.stdout  # stdout is the JSON's then
    print(format_table(summary_rows(episodes)), file=out)
    paths = write_report(episodes, Path(args.report))
    print("report: " + ", ".join(str(p) for p in paths.values() if p.exists()), file=out)
    write_json(args.json, summary_document(episodes, {
        "task": args.task, "seed": args.seed, "device": args.device, "dtype": args.dtype,
        "threads": args.threads, "command": command_line()}))
    return 0


__all__ = ["add_arguments", "run", "run_episodes", "DemoSession"]
