"""Measure the ROS layer's own cost: camera stamp -> ActionChunk published, minus model time.

Starts policy_node in its own process (as deployed), publishes N cameras of WxH rgb8 at a
rate from this process (stamped at publish time) with joint states, and for every chunk that
comes back splits its way into: before the model (transport of the frames, wake-up,
conversion), the model (`inference_end - inference_start`), publishing (model end -> the chunk's
DDS source timestamp), transport (source timestamp -> the DDS reader's receipt) and this
process's own callback delay. `ros` = stamp -> chunk published minus the model, minus the time a
frame set waited because the previous step was still running (the model's queueing, not ROS's);
`overhead` = stamp -> chunk in this probe's callback, minus the model. Writes JSON and a PNG.

    python -m dysta_ros.nodes.latency --cameras 2 --width 640 --height 480 --rate 30 --seconds 20
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from dysta_ros.cli_options import write_json
from dysta_ros.nodes.camera_probe import (add_load_arguments, camera_publisher, report_document,
                                         start_policy_node, write_report)
from dysta_ros.plots import pyplot, save_png
from dysta_ros.results import percentiles


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_load_arguments(parser, cameras=2, seconds=20.0, strategy="dysta")
    parser.add_argument("--out", default="latency_report", help="directory for latency.json and latency.png")


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

    def on_chunk(msg, info):
        received = node.get_clock().now().nanoseconds * 1e-9
        # DDS's own timestamps (system clock, as the stamps): when policy_node wrote the chunk
        # and when this process's reader got it, before its executor ran this callback.
        published = info["source_timestamp"] * 1e-9 or received
        arrived = info["received_timestamp"] * 1e-9 or received
        stamp = conv.to_seconds(msg.header.stamp)
        start, end = conv.to_seconds(msg.inference_start), conv.to_seconds(msg.inference_end)
        # A frame set that arrived while the previous step still ran waited for the model, not
        # for ROS: that wait is the policy's own queueing and is reported apart.
        busy = max(0.0, samples[-1]["end"] - stamp) if samples else 0.0
        samples.append({"total": received - stamp, "model": end - start, "before": start - stamp,
                        "publish": published - end, "transport": arrived - published,
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
          for key in ("total", "model", "before", "publish", "transport", "after", "model_busy_wait")}
    ms["overhead"] = [t - m for t, m in zip(ms["total"], ms["model"])]
    ms["ros"] = [b + p - w for b, p, w in zip(ms["before"], ms["publish"], ms["model_busy_wait"])]
    return {"config": vars(args), "chunks": len(samples), "load_average": os.getloadavg(),
            "cpu_count": os.cpu_count(), "ms": {k: percentiles(v) for k, v in ms.items()},
            "node_arrival_to_step_ms": node_cost, "frames": frames, "frame_sets_published": published["sets"],
            "samples_ms": ms}


def plot(report: dict, path: Path):
    plt = pyplot()

    ms = report["samples_ms"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("ros", "overhead", "model_busy_wait", "transport"):
        values = np.sort(ms[key])
        label = f"{key} (p99 {report['ms'][key]['p99']:.2f} ms)"
        axes[0].plot(values, np.linspace(0, 1, len(values)), label=label)
    axes[0].set(xlabel="ms", ylabel="fraction of chunks",
                title="ROS layer cost: stamp -> chunk published, minus model")
    axes[0].legend()
    axes[1].plot(ms["total"], label="stamp -> chunk received")
    axes[1].plot(ms["model"], label="model (runtime.step)")
    axes[1].set(xlabel="chunk", ylabel="ms", title="per chunk")
    axes[1].legend()
    c = report["config"]
    fig.suptitle(f"{c['cameras']} cameras {c['width']}x{c['height']} at {c['rate']} Hz, "
                 f"{c['model']}/{c['strategy']}, {report['chunks']} chunks")
    save_png(fig, path, dpi=100)


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
