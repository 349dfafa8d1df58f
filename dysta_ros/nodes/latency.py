"""Measure the ROS layer's own cost: camera stamp -> ActionChunk received, minus model time.

Starts policy_node in its own process (as deployed), publishes N cameras of WxH rgb8 at a
rate from this process (stamped at publish time) with joint states, and for every chunk that
comes back splits stamp -> receipt into: before the model (transport of the frames, wake-up,
conversion), the model (`inference_end - inference_start`), and after it (publishing and
transport of the chunk). `overhead` = total - model; `ros` = overhead minus the time a frame set
waited because the previous step was still running (the model's queueing, not ROS's).
Writes JSON and a PNG.

    python -m dysta_ros.nodes.latency --cameras 2 --width 640 --height 480 --rate 30 --seconds 20
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

from dysta_ros.cli_options import (add_json_argument, add_model_argument, add_runtime_arguments,
                                   add_strategy_argument, write_json)
from dysta_ros.plots import pyplot, save_png
from dysta_ros.results import result_document


def add_load_arguments(parser: argparse.ArgumentParser, cameras: int, seconds: float, strategy: str) -> None:
    """Add the camera load and policy_node flags this command and load_test share."""
    parser.add_argument("--cameras", type=int, default=cameras)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--rate", type=float, default=30.0, help="camera frames per second")
    parser.add_argument("--seconds", type=float, default=seconds, help="measuring time after the first chunk")
    add_model_argument(parser, default="tiny")
    add_strategy_argument(parser, default=strategy, extra_help=" (policy_node's)")
    # High by default: the step starts when a frame set arrives, so no deliberate rate-limit
    # wait is counted as ROS cost.
    parser.add_argument("--inference-rate", type=float, default=1000.0, help="policy_node inference_rate_hz")
    add_runtime_arguments(parser)  # policy_node's device, dtype and cpu_threads
    add_json_argument(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_load_arguments(parser, cameras=2, seconds=20.0, strategy="dysta")
    parser.add_argument("--out", default="latency_report", help="directory for latency.json and latency.png")


def percentiles(values_ms) -> dict:
    values = np.asarray(values_ms, dtype=np.float64)
    return {"p50": float(np.percentile(values, 50)), "p90": float(np.percentile(values, 90)),
            "p99": float(np.percentile(values, 99)), "max": float(values.max()), "mean": float(values.mean())}


def start_policy_node(args, topics: list[str], preset_overrides: dict | None = None,
                      max_image_age_s: float = 1.0) -> subprocess.Popen:
    """Start policy_node in its own process on `topics`, one model camera per topic."""
    command = policy_node_command(args, topics, preset_overrides, max_image_age_s)
    return subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def policy_node_command(args, topics: list[str], preset_overrides: dict | None,
                        max_image_age_s: float) -> list[str]:
    """Return the command line that runs policy_node on `topics` with the flags' settings."""
    overrides = {**(preset_overrides or {}), "camera_names": [f"cam{i}" for i in range(len(topics))]}
    command = [sys.executable, "-m", "dysta_ros.nodes.policy_node", "--ros-args",
               "-p", "autostart:=true", "-p", f"model:={args.model}", "-p", f"strategy:={args.strategy}",
               "-p", f"camera_topics:=[{','.join(topics)}]",
               # quoted: ROS parses -p values as YAML, and this one is a string holding YAML (JSON)
               "-p", f"preset_overrides:='{json.dumps(overrides)}'",
               "-p", f"inference_rate_hz:={args.inference_rate}", "-p", f"max_image_age_s:={max_image_age_s}",
               "-p", "diagnostic_period_s:=0.5", "-p", f"cpu_threads:={args.threads}",
               "-p", f"device:={args.device}", "-p", f"dtype:={args.dtype}"]
    return command


def camera_publisher(node, topics: list[str], width: int, height: int):
    """Return publish(): one rgb8 frame on every topic and a joint state, stamped now.

    A few frames are built once and cycled: publishing cost is the camera driver's, not ours.
    """
    from sensor_msgs.msg import Image, JointState

    from dysta_ros.nodes import conversions as conv
    from dysta_ros.nodes.image_conversion import rgb_to_image
    from dysta_ros.robot import load_robot_config

    camera_pubs = [node.create_publisher(Image, t, conv.CAMERA_QOS) for t in topics]
    state_pub = node.create_publisher(JointState, "/joint_states", conv.STATE_QOS)
    joints = list(load_robot_config("sim_arm").joints)
    rng = np.random.default_rng(0)
    frames = [rgb_to_image(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), Image) for _ in range(4)]
    tick = {"n": 0}

    def publish() -> int:
        """Publish the next frame set; return how many were published so far."""
        frame = frames[tick["n"] % len(frames)]
        tick["n"] += 1
        frame.header.stamp = node.get_clock().now().to_msg()
        for pub in camera_pubs:
            pub.publish(frame)
        state_pub.publish(JointState(header=frame.header, name=joints, position=[0.0] * len(joints)))
        return tick["n"]

    return publish


def measure(args) -> dict:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from tqdm import tqdm

    from dysta_ros.msg import ActionChunk
    from dysta_ros.nodes import conversions as conv
    from dysta_ros.nodes.spin import share_the_gil_finely
    from dysta_ros.nodes.transport import use_large_frame_transport

    topics = [f"/latency/cam{i}/image_raw" for i in range(args.cameras)]
    share_the_gil_finely()  # the probe and policy_node share this process
    use_large_frame_transport()  # the probe's camera frames, and policy_node (a child) inherits it
    rclpy.init()
    node = rclpy.create_node("latency_probe")
    publish = camera_publisher(node, topics, args.width, args.height)
    samples = []

    def on_chunk(msg):
        received = node.get_clock().now().nanoseconds * 1e-9
        stamp = conv.to_seconds(msg.header.stamp)
        start, end = conv.to_seconds(msg.inference_start), conv.to_seconds(msg.inference_end)
        # A frame set that arrived while the previous step still ran waited for the model, not
        # for ROS: that wait is the policy's own queueing and is reported apart.
        busy = max(0.0, samples[-1]["end"] - stamp) if samples else 0.0
        samples.append({"total": received - stamp, "model": end - start, "before": start - stamp,
                        "after": received - end, "model_busy_wait": busy, "end": end})

    node_cost = {}  # policy_node's own report: last frame's arrival -> step start, last 200 steps

    frames = {}  # policy_node's per-camera counts: received, missed (lost before its callback), ...

    def on_diagnostics(msg):
        for status in msg.status:
            if status.name == "policy_node: inputs":
                for kv in status.values:
                    topic, _, count = kv.key.rpartition(".")
                    if topic in topics and count in ("received", "missed", "dropped"):
                        frames.setdefault(topic, {})[count] = int(kv.value)
            if status.name == "policy_node: inference":
                values = {kv.key: kv.value for kv in status.values}
                if "arrival_to_step_ms_p50" in values:
                    node_cost.update(p50=float(values["arrival_to_step_ms_p50"]),
                                     p99=float(values["arrival_to_step_ms_p99"]))

    node.create_subscription(ActionChunk, "/dysta/action_chunk", on_chunk, conv.RELIABLE_QOS)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    published = {"sets": 0}
    node.create_timer(1.0 / args.rate, lambda: published.update(sets=publish()))
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    process = start_policy_node(args, topics)
    try:
        deadline = time.monotonic() + 120.0
        while not samples and time.monotonic() < deadline and process.poll() is None:
            executor.spin_once(timeout_sec=0.05)
        if not samples:
            raise RuntimeError("policy_node produced no chunk within 120 s")
        samples.clear()  # warm-up done: measure from here
        end = time.monotonic() + args.seconds
        with tqdm(total=int(args.seconds), desc="measuring", unit="s") as bar:
            while time.monotonic() < end:
                executor.spin_once(timeout_sec=0.05)
                elapsed = int(args.seconds - (end - time.monotonic()))
                if elapsed > bar.n:
                    bar.update(elapsed - bar.n)
    finally:
        process.terminate()
        process.wait(timeout=30)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    samples = samples[1:]  # the first has no predecessor to tell a model-busy wait
    ms = {key: [s[key] * 1e3 for s in samples]
          for key in ("total", "model", "before", "after", "model_busy_wait")}
    ms["overhead"] = [t - m for t, m in zip(ms["total"], ms["model"])]
    ms["ros"] = [o - w for o, w in zip(ms["overhead"], ms["model_busy_wait"])]
    return {"config": vars(args), "chunks": len(samples), "load_average": os.getloadavg(),
            "cpu_count": os.cpu_count(), "ms": {k: percentiles(v) for k, v in ms.items()},
            "node_arrival_to_step_ms": node_cost, "frames": frames, "frame_sets_published": published["sets"],
            "samples_ms": ms}


def plot(report: dict, path: Path):
    plt = pyplot()

    ms = report["samples_ms"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("ros", "overhead", "model_busy_wait", "after"):
        values = np.sort(ms[key])
        label = f"{key} (p99 {report['ms'][key]['p99']:.2f} ms)"
        axes[0].plot(values, np.linspace(0, 1, len(values)), label=label)
    axes[0].set(xlabel="ms", ylabel="fraction of chunks", title="ROS layer cost: stamp -> chunk minus model")
    axes[0].legend()
    axes[1].plot(ms["total"], label="stamp -> chunk received")
    axes[1].plot(ms["model"], label="model (runtime.step)")
    axes[1].set(xlabel="chunk", ylabel="ms", title="per chunk")
    axes[1].legend()
    c = report["config"]
    fig.suptitle(f"{c['cameras']} cameras {c['width']}x{c['height']} at {c['rate']} Hz, "
                 f"{c['model']}/{c['strategy']}, {report['chunks']} chunks")
    save_png(fig, path, dpi=100)


def report_document(report: dict) -> dict:
    """The measurement as every result is shaped: one run, the command's settings as meta."""
    return result_document([{k: v for k, v in report.items() if k != "config"}], report["config"])


def write_report(report: dict, out, name: str, plot_report) -> None:
    """Write `<name>.json` and the `plot_report` PNG `<name>.png` into `out`, and say so."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(str(out / f"{name}.json"), report_document(report))
    plot_report(report, out / f"{name}.png")
    print(f"wrote {out / f'{name}.png'}", file=sys.stderr)


def run(args) -> int:
    """Measure, write the report, print the summary."""
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    report = measure(args)
    write_report(report, args.out, "latency", plot)
    if args.json:
        write_json(args.json, report_document(report))
    else:
        summary = {k: {q: round(v, 2) for q, v in report["ms"][k].items()} for k in report["ms"]}
        print(f"{report['chunks']} chunks; ms (p50 / p99): "
              + ", ".join(f"{k} {v['p50']} / {v['p99']}" for k, v in summary.items()))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
