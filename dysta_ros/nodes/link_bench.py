"""`dysta-ros link`: the robot / policy-host split over a real network path, measured.

Two processes, as deployed: the policy host (`dysta-ros run --role policy-host`) and the robot
(chunk_executor and robot_link, with a probe standing in for the cameras, the joint states and
a robot that follows its commands). `--link impaired` puts each in its own network namespace,
joined by an impaired userspace link (evaluation/impaired_link.py: delay, jitter, loss, rate),
with DDS discovering across it (ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET inside the namespaces
only); `--link loopback` runs the same on this machine's loopback. Measured at the robot:
camera -> chunk latency, chunks lost, gaps in the command stream, stale chunks dropped, and the
executor's tracking error against an ideal link; then the link is cut (`--cut-s`): the executor
must hold within the deadman, report it, and move again only on a fresh chunk.

    dysta-ros link --link both --seconds 20 --cut-s 2 --out link_report
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from dysta_ros.errors import InputError
from dysta_ros.plots import pyplot, save_png

ROBOT = "sim_arm"
MAX_CHUNK_AGE_S = 0.5  # chunk_executor's deadman here (its default)
CONTROL_RATE_HZ = 50.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--link", choices=("impaired", "loopback", "both"), default="both")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="one-way delay of the impaired link")
    parser.add_argument("--jitter-ms", type=float, default=5.0, help="+- uniform jitter on the delay")
    parser.add_argument("--loss", type=float, default=0.01, help="fraction of frames lost")
    parser.add_argument("--rate-mbit", type=float, default=50.0, help="rate limit, Mbit/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring time after the first chunk")
    parser.add_argument("--cut-s", type=float, default=2.0,
                        help="link cut after measuring (impaired; 0: none)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--camera-rate", type=float, default=15.0, help="frames per second per camera")
    parser.add_argument("--jpeg-quality", type=int, default=80)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--strategy", default="dysta")
    parser.add_argument("--threads", type=int, default=1, help="policy_node cpu_threads")
    parser.add_argument("--out", default="link_report", help="directory for link.json and link.png")
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)  # internal: the robot side


# The robot side (a process of its own, in the robot's namespace) -------------------------


def scene_frames(width: int, height: int, count: int = 4) -> list[np.ndarray]:
    """Sim renders of the tabletop (cubes placed by seed): frames that compress like a scene."""
    from dysta_ros.sim.env import SimConfig, SimEnv

    env = SimEnv(SimConfig(image_width=width, image_height=height))
    try:
        return [env.reset(seed=seed).images["main"] for seed in range(count)]
    finally:
        env.close()


def run_probe(settings: dict) -> int:
    """The robot: executor + robot_link + cameras, joint states and recorders; JSON to stdout's file."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Header
    from trajectory_msgs.msg import JointTrajectory

    from dysta_ros.msg import ActionChunk
    from dysta_ros.nodes import conversions as conv
    from dysta_ros.nodes.chunk_executor import ChunkExecutorNode
    from dysta_ros.nodes.image_conversion import rgb_to_image
    from dysta_ros.nodes.robot_link import RobotLinkNode
    from dysta_ros.nodes.spin import share_the_gil_finely
    from dysta_ros.robot import load_robot_config

    robot = load_robot_config(ROBOT)
    frames = [rgb_to_image(f, Image) for f in scene_frames(settings["width"], settings["height"])]
    share_the_gil_finely()
    rclpy.init()
    executor_node = ChunkExecutorNode(parameter_overrides=[
        Parameter("robot", value=ROBOT), Parameter("control_rate_hz", value=CONTROL_RATE_HZ),
        Parameter("max_chunk_age_s", value=MAX_CHUNK_AGE_S)])
    link_node = RobotLinkNode(parameter_overrides=[
        Parameter("robot", value=ROBOT), Parameter("jpeg_quality", value=settings["jpeg_quality"])])
    node = rclpy.create_node("link_probe")
    camera_pubs = [node.create_publisher(Image, c.topic, conv.CAMERA_QOS) for c in robot.cameras]
    state_pub = node.create_publisher(JointState, robot.state_topic, conv.STATE_QOS)
    joints = list(robot.joints)
    record = {"chunks": [], "commands": [], "holds": [], "frames_published": 0}
    position = {"q": [0.0] * len(joints)}

    def now() -> float:
        return node.get_clock().now().nanoseconds * 1e-9

    def publish_frames():
        frame = frames[record["frames_published"] % len(frames)]
        frame.header.stamp = node.get_clock().now().to_msg()
        for pub in camera_pubs:
            pub.publish(frame)
        record["frames_published"] += 1

    def publish_state():  # a robot that reaches each command: its state is the last command
        state_pub.publish(JointState(header=Header(stamp=conv.to_stamp(now())), name=joints,
                                     position=position["q"]))

    def on_chunk(msg):
        received, chunk = now(), conv.msg_to_chunk(msg)
        record["chunks"].append({"received": received, "stamp": chunk.stamp, "sequence": msg.sequence,
                                 "dt": chunk.dt, "inference_end": chunk.inference_end, "names": chunk.names,
                                 "actions": np.asarray(chunk.actions, np.float64).tolist()})

    def on_command(msg):
        if msg.points:
            position["q"] = list(msg.points[0].positions)
            record["commands"].append([now(), list(msg.points[0].positions)])

    def on_diagnostics(msg):  # the policy host's word on the clock it judges frame ages by
        for status in msg.status:
            if status.name == "policy_node: clock":
                record["clock"] = {"message": status.message, **{kv.key: kv.value for kv in status.values}}

    def watch_hold():
        record["holds"].append([now(), executor_node.holding or ""])

    node.create_timer(1.0 / settings["camera_rate"], publish_frames)
    node.create_timer(0.01, publish_state)
    node.create_timer(0.02, watch_hold)
    node.create_subscription(ActionChunk, "/dysta/action_chunk", on_chunk, conv.RELIABLE_QOS)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 20)
    node.create_subscription(JointTrajectory, robot.command_topics["joint_trajectory"], on_command, 50)
    spin = SingleThreadedExecutor()
    for n in (executor_node, link_node, node):
        spin.add_node(n)

    def spin_for(seconds: float, until=None):
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (until and until()):
            spin.spin_once(timeout_sec=0.01)

    try:
        spin_for(settings["startup_s"], until=lambda: bool(record["chunks"]))
        if not record["chunks"]:
            print("no-chunk", flush=True)
            return 1
        record["measure_start"] = now()
        link_start = {c.topic: (c.total_frames, c.total_bytes_out) for c in link_node.cameras}
        spin_for(settings["seconds"])
        record["measure_end"] = now()
        sent = {c.topic: (c.total_frames - link_start[c.topic][0], c.total_bytes_out - link_start[c.topic][1])
                for c in link_node.cameras}
        record["camera_bytes_per_s"] = {topic: n_bytes / settings["seconds"]
                                        for topic, (_, n_bytes) in sent.items()}
        record["camera_frame_bytes"] = {topic: n_bytes / max(1, n) for topic, (n, n_bytes) in sent.items()}
        record["raw_frame_bytes"] = len(frames[0].data)
        print("measured", flush=True)  # the orchestrator may cut the link now
        spin_for(settings["after_s"])
        record["executor_counts"] = dict(executor_node.core.counts)
    finally:
        spin.shutdown()
        for n in (node, link_node, executor_node):
            n.destroy_node()
        rclpy.try_shutdown()
        Path(settings["out"]).write_text(json.dumps(record))
    return 0


# The orchestrator ----------------------------------------------------------------------


def _env(discovery: str) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "ROS_AUTOMATIC_DISCOVERY_RANGE": discovery,
           # UDP only: shared memory would carry the data past the network path between namespaces
           "FASTDDS_BUILTIN_TRANSPORTS": "UDPv4", "OMP_NUM_THREADS": "1"}
    env.pop("ROS_STATIC_PEERS", None)
    return env


def run_variant(args, impaired: bool) -> dict:
    """Run both roles once, over the impaired link or loopback; return the raw and derived figures."""
    import tempfile

    from dysta_ros.evaluation.impaired_link import Impairment, ImpairedLink

    link = None
    if impaired:
        link = ImpairedLink(Impairment(args.delay_ms / 1e3, args.jitter_ms / 1e3, args.loss,
                                       args.rate_mbit * 1e6)).__enter__()
    robot_prefix, host_prefix = (link.exec_prefix(0), link.exec_prefix(1)) if link else ([], [])
    env = _env("SUBNET" if link else "LOCALHOST")
    cut_s = args.cut_s if link else 0.0
    out = Path(tempfile.mkdtemp(prefix="dysta_link_")) / "probe.json"
    settings = {"width": args.width, "height": args.height, "camera_rate": args.camera_rate,
                "jpeg_quality": args.jpeg_quality, "seconds": args.seconds, "startup_s": 120.0,
                "after_s": (cut_s + 6.0) if cut_s else 0.5, "out": str(out)}
    host_command = [sys.executable, "-m", "dysta_ros.cli", "run", "--role", "policy-host", "--robot", ROBOT,
                    "--model", args.model, "--strategy", args.strategy, "--threads", str(args.threads),
                    "--instruction", "pick up the cube"]
    if not link:
        host_command += ["--param", "policy_node:clock_sync=assume"]
    probe_command = [sys.executable, "-m", "dysta_ros.nodes.link_bench", "--probe", json.dumps(settings)]
    processes = []
    cut = {}
    try:
        processes.append(subprocess.Popen(host_prefix + host_command, env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True))
        probe = subprocess.Popen(robot_prefix + probe_command, env=env, stdout=subprocess.PIPE, text=True)
        processes.append(probe)
        for line in probe.stdout:
            if line.strip() == "measured" and link and cut_s:
                time.sleep(0.5)
                link.cut()
                cut["cut"] = time.time()
                time.sleep(cut_s)
                link.restore()
                cut["restore"] = time.time()
        probe.wait(timeout=60)
        if probe.returncode != 0 or not out.exists():
            host_error = ""
            if processes[0].poll() is not None:
                host_error = processes[0].stderr.read()[-2000:]
            where = "impaired link" if link else "loopback"
            raise RuntimeError(f"the robot side got no chunk from the policy host ({where})"
                               + (f"; policy host: {host_error}" if host_error else ""))
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        link_counts = None
        if link:
            link_counts = vars(link.counts)
            link.close()
    record = json.loads(out.read_text())
    out.unlink()
    out.parent.rmdir()
    result = analyse(record, cut)
    result["link"] = ("impaired" if link else "loopback")
    result["link_counts"] = link_counts
    return result


def ideal_link_commands(record: dict, times: list[float]) -> list[np.ndarray | None]:
    """What the same executor commands at `times` had every chunk arrived the moment it was published.

    chunk_executor's own core, fed each recorded chunk at its inference_end and ticked at the
    recorded command times, on a robot that reaches each command (as the probe's does): the
    difference from the real commands is what the link's delay, jitter and loss cost.
    """
    from dysta_ros.execution import ChunkExecutor, ExecutorConfig
    from dysta_ros.robot import load_robot_config
    from dysta_ros.types import ActionChunk

    robot = load_robot_config(ROBOT)
    config = ExecutorConfig(control_rate_hz=CONTROL_RATE_HZ, max_chunk_age_s=MAX_CHUNK_AGE_S)
    core = ChunkExecutor(config, robot)
    pending = sorted(record["chunks"], key=lambda c: c["inference_end"])
    position = np.zeros(len(robot.joints))
    commands, fed = [], 0
    for t in times:
        while fed < len(pending) and pending[fed]["inference_end"] <= t:
            c = pending[fed]
            fed += 1
            chunk = ActionChunk(stamp=c["stamp"], actions=np.asarray(c["actions"], np.float32), dt=c["dt"],
                                names=c["names"])
            try:
                core.on_chunk(chunk, now=c["inference_end"])
            except InputError:
                pass  # refused here as it would be there (counted in the real run's executor_counts)
        core.on_joint_state(list(robot.joints), position.tolist(), now=t)
        tick = core.tick(t)
        commands.append(tick.command)
        if tick.command is not None:
            position = tick.command
    return commands


def analyse(record: dict, cut: dict) -> dict:
    """Derive the figures from what the robot side recorded."""
    start, end = record["measure_start"], record["measure_end"]
    chunks = [c for c in record["chunks"] if start <= c["received"] <= end]
    commands = [(t, np.asarray(q)) for t, q in record["commands"] if start <= t <= end]
    latency_ms = np.asarray([(c["received"] - c["stamp"]) * 1e3 for c in chunks])
    sequences = sorted({c["sequence"] for c in chunks})
    lost = sum(b - a - 1 for a, b in zip(sequences, sequences[1:]) if b > a + 1)
    times = np.asarray([t for t, _ in commands])
    gaps = np.diff(times) if len(times) > 1 else np.zeros(0)
    ideal = ideal_link_commands(record, [t for t, _ in commands])
    errors = [float(np.sqrt(np.mean((command - target) ** 2)))
              for (_, command), target in zip(commands, ideal) if target is not None]
    result = {
        "chunks": len(chunks), "chunks_lost": int(lost),
        "latency_ms": _percentiles(latency_ms),
        "commands": len(commands), "command_rate_hz": len(commands) / (end - start),
        "command_gap_max_ms": float(gaps.max() * 1e3) if len(gaps) else None,
        "command_gaps_over_deadman": int(np.sum(gaps > MAX_CHUNK_AGE_S)),
        "tracking_rms": _percentiles(np.asarray(errors)),
        "camera_bytes_per_s": record["camera_bytes_per_s"],
        "camera_frame_bytes": record["camera_frame_bytes"], "raw_frame_bytes": record["raw_frame_bytes"],
        "executor_counts": record.get("executor_counts"), "clock": record.get("clock"),
        "latency_series_ms": latency_ms.round(3).tolist(),
    }
    if cut:
        result["cut"] = _analyse_cut(record, cut)
    return result


def _analyse_cut(record: dict, cut: dict) -> dict:
    """When the executor held after the cut, what it said, and what moved it again."""
    t_cut, t_restore = cut["cut"], cut["restore"]
    commands = [t for t, _ in record["commands"]]
    before = [t for t in commands if t <= t_restore]
    last_command = max(before) if before else None
    holds = [(t, reason) for t, reason in record["holds"] if t_cut <= t <= t_restore]
    reasons = sorted({reason.split(":")[0] for _, reason in holds if reason})
    held_at = min((t for t, reason in holds if reason.startswith("deadman")), default=None)
    resumed = min((t for t in commands if t > t_restore), default=None)
    # the chunk that moved it again: the first one the executor could take after the restore
    fresh = [c for c in record["chunks"] if c["received"] > t_restore
             and c["received"] - c["stamp"] <= MAX_CHUNK_AGE_S]
    first_fresh = min(fresh, key=lambda c: c["received"]) if fresh else None
    stale_after = [c for c in record["chunks"] if c["received"] > t_restore
                   and c["received"] - c["stamp"] > MAX_CHUNK_AGE_S]
    return {"cut_s": t_restore - t_cut,
            "held_after_cut_s": None if last_command is None else last_command - t_cut,
            # commands sent after the executor had started holding on the deadman, before the restore
            "commands_after_deadman_hold": sum(1 for t in commands if held_at is not None
                                               and held_at < t <= t_restore),
            "hold_reasons": reasons,
            "resumed_after_restore_s": None if resumed is None else resumed - t_restore,
            "first_fresh_chunk_after_restore_s": first_fresh and first_fresh["received"] - t_restore,
            "first_fresh_chunk_stamp_after_cut_s": first_fresh and first_fresh["stamp"] - t_cut,
            "stale_chunks_after_restore": len(stale_after)}


def _percentiles(values: np.ndarray) -> dict:
    if not len(values):
        return {"p50": None, "p99": None, "max": None}
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99)),
            "max": float(values.max())}


def table(results: list[dict]) -> str:
    """The loopback vs impaired table in Markdown."""
    def fmt(value, digits=1):
        return "–" if value is None else f"{value:.{digits}f}"

    lines = ["| link | chunks | lost | camera->chunk p50 ms | p99 ms | command gaps > deadman | "
             "max command gap ms | tracking RMS p50 rad | p99 rad | camera KB/s (each) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        kbs = ", ".join(f"{v / 1e3:.0f}" for v in r["camera_bytes_per_s"].values())
        lines.append(f"| {r['link']} | {r['chunks']} | {r['chunks_lost']} | {fmt(r['latency_ms']['p50'])} | "
                     f"{fmt(r['latency_ms']['p99'])} | {r['command_gaps_over_deadman']} | "
                     f"{fmt(r['command_gap_max_ms'])} | {fmt(r['tracking_rms']['p50'], 4)} | "
                     f"{fmt(r['tracking_rms']['p99'], 4)} | {kbs} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for r in results:
        values = np.sort(r["latency_series_ms"])
        ax.plot(values, np.linspace(0, 1, len(values)),
                label=f"{r['link']} (p50 {r['latency_ms']['p50']:.1f} ms, "
                      f"p99 {r['latency_ms']['p99']:.1f} ms)")
    ax.set(xlabel="camera stamp -> chunk at the robot (ms)", ylabel="fraction of chunks",
           title="camera -> chunk latency at the robot, policy on the other side of the link")
    ax.legend()
    save_png(fig, path, dpi=100)


def run(args) -> int:
    if args.probe is not None:
        return run_probe(json.loads(args.probe))
    from dysta_ros.evaluation.impaired_link import namespaces_available

    variants = {"both": [False, True], "loopback": [False], "impaired": [True]}[args.link]
    reason = namespaces_available()
    if True in variants and reason:
        print(f"dysta-ros link: impaired link skipped: {reason}", file=sys.stderr)
        variants = [v for v in variants if not v]
        if not variants:
            return 1
    results = [run_variant(args, impaired) for impaired in variants]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "link.json").write_text(json.dumps({"config": vars(args), "results": results}, indent=1))
    plot(results, out / "link.png")
    print(table(results))
    for r in results:
        if "cut" in r:
            print(f"link cut ({r['link']}): {json.dumps(r['cut'])}")
    print(f"wrote {out / 'link.json'} and {out / 'link.png'}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
