"""`dysta-ros record`: write live topics to a rosbag2 (MCAP) through a recorder node.

With `--task`, it runs expert episodes in the MuJoCo sim (sim_node with its scripted expert,
chunk_executor driving the arm) and records what `ros2 bag record` would capture on a real
robot: camera images and camera_info, joint states, the expert's chunks, the commands, the
instruction, and each episode's start and outcome. Without `--task` it records the given
topics of whatever system is running, for `--duration` seconds or until Ctrl-C.
Messages are written as the raw CDR bytes that arrived, stamped with their receive time.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions

from dysta_ros.bags.rosbag import BagWriter, TopicQos
from dysta_ros.cli_options import add_json_argument, json_to_stdout, seed_value, write_json
from dysta_ros.errors import BagError, ConfigError
from dysta_ros.nodes.conversions import SIM_TIME
from dysta_ros.nodes.bag_player import message_class
from dysta_ros.nodes import topics as dysta_topics
from dysta_ros.nodes.episode_driver import EPISODE_TOPIC, LATCHED_QOS, EpisodeDriver, record_episodes
from dysta_ros.nodes.spin import share_the_gil_finely, signals_stop, spin_what_has_arrived
from dysta_ros.results import command_line, result_document
from dysta_ros.robot import load_robot_config

OUTCOME_TOPIC = dysta_topics.absolute(dysta_topics.EPISODE_OUTCOME)
INSTRUCTION_TOPIC = dysta_topics.absolute(dysta_topics.INSTRUCTION)
LATCHED = {INSTRUCTION_TOPIC, OUTCOME_TOPIC, EPISODE_TOPIC}
SENSORS_QOS = qos_profile_sensor_data  # best effort: matches best-effort and reliable publishers
RELIABLE_QOS = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


def robot_topics(robot_name: str) -> dict[str, str]:
    """Return topic -> type of everything a run of `robot_name` publishes that is worth keeping."""
    robot = load_robot_config(robot_name)
    recorded = {}
    for camera in robot.cameras:
        compressed = camera.topic.endswith("/compressed")
        recorded[camera.topic] = f"sensor_msgs/msg/{'CompressedImage' if compressed else 'Image'}"
        base = camera.topic.rsplit("/", 2 if compressed else 1)[0]
        recorded[f"{base}/camera_info"] = "sensor_msgs/msg/CameraInfo"
    recorded[robot.state_topic] = "sensor_msgs/msg/JointState"
    command_types = {"joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
                     "forward_position": "std_msgs/msg/Float64MultiArray",
                     "ee_pose": "geometry_msgs/msg/PoseStamped",
                     "ee_twist": "geometry_msgs/msg/TwistStamped"}
    recorded[robot.command_topics[robot.command_output]] = command_types[robot.command_output]
    recorded.update({dysta_topics.absolute(dysta_topics.ACTION_CHUNK): "dysta_ros/msg/ActionChunk",
                     dysta_topics.absolute(dysta_topics.TOKEN_STATS): "dysta_ros/msg/TokenStats",
                     INSTRUCTION_TOPIC: "std_msgs/msg/String", OUTCOME_TOPIC: "std_msgs/msg/String",
                     EPISODE_TOPIC: "std_msgs/msg/String"})
    return recorded


class RecorderNode(Node):
    """Subscribe raw to topics and append every message that arrives to a bag."""

    def __init__(self, writer: BagWriter, topics: dict[str, str | None], sim_time: bool = False):
        # receive times on the clock the publishers stamp with, so both compare
        super().__init__("recorder", parameter_overrides=[SIM_TIME] if sim_time else [])
        self._writer = writer
        self._lock = threading.Lock()  # callbacks may run on several executor threads
        self._wanted = dict(topics)  # topic -> type, None: learn it from the graph
        self.counts: dict[str, int] = {}
        self.types: dict[str, str] = {}  # topic -> type, of the topics subscribed
        self._subscribe_known()
        if any(t is None for t in self._wanted.values()):
            self.create_timer(0.5, self._subscribe_known)

    def _subscribe_known(self) -> None:
        """Subscribe to every wanted topic whose type is known (given, or now on the graph)."""
        graph = dict(self.get_topic_names_and_types())
        for topic, msgtype in list(self._wanted.items()):
            msgtype = msgtype or (graph.get(topic) or [None])[0]
            if msgtype is None or self._writer.has_topic(topic):
                continue
            cls = message_class(msgtype)
            if cls is None:
                self.get_logger().warning(f"not recording {topic}: {msgtype} is not installed")
                del self._wanted[topic]
                continue
            sensor = msgtype.startswith("sensor_msgs/")
            qos = LATCHED_QOS if topic in LATCHED else SENSORS_QOS if sensor else RELIABLE_QOS
            with self._lock:
                self._writer.add_topic(topic, msgtype, TopicQos(reliable=not sensor,
                                                                transient_local=topic in LATCHED))
            self.counts[topic], self.types[topic] = 0, msgtype
            self.create_subscription(cls, topic, lambda data, t=topic: self._write(t, data), qos,
                                     raw=True)

    def unmatched(self) -> tuple[list[str], list[str]]:
        """Return (wanted topics never found on the graph, the topics the graph has)."""
        missing = sorted(t for t in self._wanted if t not in self.counts)
        try:
            graph = sorted(name for name, _ in self.get_topic_names_and_types())
        except Exception:  # the context is gone (Ctrl-C): name the missing topics all the same
            graph = []
        return missing, graph

    def _write(self, topic: str, data: bytes) -> None:
        stamp_ns = self.get_clock().now().nanoseconds
        with self._lock:
            self._writer.write(topic, stamp_ns, data)
            self.counts[topic] += 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `dysta-ros record` arguments."""
    parser.add_argument("--out", required=True, help="bag directory to create")
    parser.add_argument("--task", default=None, help="run expert episodes of this sim task (reach, memory)")
    parser.add_argument("--episodes", type=int, default=1, help="with --task: how many episodes")
    parser.add_argument("--seed", type=seed_value, default=0, help="with --task: the first episode's seed")
    parser.add_argument("--episode-timeout", type=float, default=30.0,
                        help="with --task: seconds before an episode counts as failed")
    parser.add_argument("--image-size", type=int, default=96, help="with --task: camera width = height")
    parser.add_argument("--robot", default="sim_arm", help="robot config whose topics to record")
    parser.add_argument("--topics", nargs="+", metavar="TOPIC",
                        help="record these topics (types learnt from the graph) instead of the robot's")
    parser.add_argument("--duration", type=float, default=0.0,
                        help="without --task: seconds to record (0: until Ctrl-C)")
    parser.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"))
    add_json_argument(parser)  # a kept recording: one run per topic recorded


def record_document(recorder: RecorderNode, args: argparse.Namespace, seconds: float, outcome: dict) -> dict:
    """What a kept recording holds: one run per topic (type, messages), the recording in meta."""
    runs = [{"topic": topic, "type": recorder.types[topic], "messages": recorder.counts[topic]}
            for topic in sorted(recorder.counts)]
    meta = {"out": args.out, "storage": args.storage, "robot": args.robot, "task": args.task,
            "messages": sum(recorder.counts.values()), "seconds": round(seconds, 3),
            "command": command_line()}
    if args.task is not None:
        meta.update(seed=args.seed, episodes=outcome.get("episodes", []))
    return result_document(runs, meta)


def run(args: argparse.Namespace) -> int:
    """Record; return the exit status."""
    try:
        topics = ({t: None for t in args.topics} if args.topics else robot_topics(args.robot))
        if args.task is not None and args.episodes < 1:
            raise ConfigError(f"--episodes must be >= 1, got {args.episodes}")
        writer = BagWriter(args.out, storage=args.storage)
    except (BagError, ConfigError) as exc:
        print(f"dysta-ros record: {exc}", file=sys.stderr)
        return 1
    share_the_gil_finely()  # the sim and the expert share this process
    # Ctrl-C (SIGTERM) sets `stop`: the loops below end, and what had arrived is written before
    # the nodes go (rclpy's handler destroyed them at once, losing messages received, not yet taken)
    with signals_stop() as stop:
        rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
        return _record(args, writer, topics, stop)


def _record(args: argparse.Namespace, writer: BagWriter, topics: dict, stop: threading.Event) -> int:
    # One thread spins everything: the sim's EGL context works only in the thread that made it.
    executor = SingleThreadedExecutor()
    nodes = []
    outcome = {"status": 0}
    started = time.monotonic()
    with writer:
        try:
            recorder = RecorderNode(writer, topics, sim_time=args.task is not None)
            nodes.append(recorder)
            if args.task is not None:
                nodes += _sim_nodes(args)
            for node in nodes:
                executor.add_node(node)
            if args.task is not None:
                worker = threading.Thread(target=record_episodes, args=(nodes[-1], args, outcome),
                                          daemon=True)
                worker.start()
                while worker.is_alive() and not stop.is_set():
                    executor.spin_once(timeout_sec=0.05)
                # the last end event is on its way to the recorder: let it land in the bag
                deadline = time.monotonic() + 5.0
                while recorder.counts.get(EPISODE_TOPIC, 0) < 2 * args.episodes \
                        and time.monotonic() < deadline and not stop.is_set():
                    executor.spin_once(timeout_sec=0.05)
            else:
                deadline = time.monotonic() + (args.duration if args.duration > 0 else float("inf"))
                while time.monotonic() < deadline and rclpy.ok() and not stop.is_set():
                    executor.spin_once(timeout_sec=0.05)
            # what the recorder had received by the end goes into the bag (at most a full queue
            # per topic: not what keeps arriving), spun alone: the sim's timers would never be done
            for node in nodes[1:]:
                executor.remove_node(node)
            spin_what_has_arrived(executor, sum(s.qos_profile.depth for s in recorder.subscriptions))
        except (KeyboardInterrupt, ExternalShutdownException):
            pass  # Ctrl-C ends a recording; the bag is closed below
        except (BagError, ConfigError) as exc:
            print(f"dysta-ros record: {exc}", file=sys.stderr)
            outcome["status"] = 1
        except Exception as exc:  # e.g. the sim cannot render: one line, not a traceback
            print(f"dysta-ros record: {type(exc).__name__}: {exc}", file=sys.stderr)
            outcome["status"] = 1
            # what a failure mid-way already recorded (a robot's hour) is kept, not removed below
            outcome["keep"] = bool(nodes and sum(nodes[0].counts.values()))
        finally:
            if args.topics and nodes:
                outcome["status"] = max(outcome["status"], _report_unmatched(nodes[0]))
            executor.shutdown()
            for node in nodes:
                getattr(node, "close", lambda: None)()
                node.destroy_node()
            rclpy.try_shutdown()
    if outcome.get("keep"):
        print(f"dysta-ros record: kept what was recorded before the error in {args.out} "
              f"({sum(nodes[0].counts.values())} messages)", file=sys.stderr)
    elif outcome["status"]:
        # a failed recording leaves nothing behind, so the corrected command is not refused
        # with "exists already" (the writer refuses an existing path: this run made it)
        shutil.rmtree(args.out, ignore_errors=True)
        print(f"dysta-ros record: nothing kept; {args.out} removed", file=sys.stderr)
    elif nodes:
        counts = ", ".join(f"{t}: {n}" for t, n in sorted(nodes[0].counts.items()))
        print(f"recorded {args.out} ({counts})", file=sys.stderr if json_to_stdout(args) else sys.stdout)
        write_json(args.json, record_document(nodes[0], args, time.monotonic() - started, outcome))
    return outcome["status"]


def _report_unmatched(recorder: RecorderNode) -> int:
    """Name --topics that never appeared and the topics that exist; 1 if none matched at all."""
    missing, graph = recorder.unmatched()
    if not missing:
        return 0
    line = f"no such topic {', '.join(missing)}; the graph has: {', '.join(graph) or 'no topics'}"
    if recorder.counts:
        print(f"dysta-ros record: warning: {line}", file=sys.stderr)
        return 0
    print(f"dysta-ros record: {line}", file=sys.stderr)
    return 1


def _sim_nodes(args) -> list[Node]:
    """Return sim_node (expert on), chunk_executor and the episode driver (last)."""
    from dysta_ros.nodes.chunk_executor import ChunkExecutorNode
    from dysta_ros.nodes.sim_node import SimNode

    # Sim time (/clock) for every node: a loaded machine slows the episode down instead of
    # making the executor drop the expert's chunks as stale.
    # auto_reset off: the episode driver resets each episode with its own seed
    sim = SimNode(robot=args.robot, task=args.task, seed=args.seed, expert=True, publish_clock=True,
                  auto_reset=False, image_width=args.image_size, image_height=args.image_size)
    executor_node = ChunkExecutorNode(parameter_overrides=[
        Parameter("robot", value=args.robot), SIM_TIME])
    driver = EpisodeDriver(lambda seed: sim.set_parameters([Parameter("seed", value=seed)]))
    return [sim, executor_node, driver]
