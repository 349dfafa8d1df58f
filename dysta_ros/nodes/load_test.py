"""Hold policy_node under camera load: memory flat, frame age bounded, no queue growth.

Starts policy_node in its own process with a slow policy (slower than the cameras), publishes
N cameras of WxH rgb8 at a rate for a while from this process, and records: the node's resident
memory (RSS) every second, the age of the frames each step started on (`inference_start -
stamp`, both on the node's clock), and the node's per-camera received / dropped counts from
/diagnostics. With latest-value inputs, frames the policy cannot use are dropped, not queued:
the frame age stays bounded and memory stays flat however long it runs. Prints the figures,
writes load.json and load.png.

    python -m dysta_ros.nodes.load_test --cameras 3 --width 640 --height 480 --rate 30 --seconds 300
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from dysta_ros.cli_options import write_json
from dysta_ros.nodes.camera_probe import (
    add_load_arguments, camera_publisher, report_document, start_policy_node, write_report,
)
from dysta_ros.plots import pyplot, save_png
from dysta_ros.results import percentiles


# policy_node's per-camera counters (see nodes/inputs.py) this report takes from /diagnostics
COUNTS = ("received", "used", "dropped", "missed", "out_of_order")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_load_arguments(parser, cameras=3, seconds=300.0, strategy="full")
    # 128 px frames, 8 history frames: the tiny model takes longer per step than a camera period.
    parser.add_argument("--preset-overrides", default="{vision.image_size: 128, history: 8}",
                        help="YAML mapping of preset fields (the cameras are added)")
    parser.add_argument("--max-image-age", type=float, default=0.5, help="policy_node max_image_age_s")
    parser.add_argument("--out", default="load_report", help="directory for load.json and load.png")


def rss_mb(pid: int) -> float:
    """Return a process's resident memory in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for process {pid}")


def slope_per_minute(times_s, values) -> float:
    """Least-squares slope of values over time, per minute (0 with fewer than 3 points)."""
    if len(times_s) < 3:
        return 0.0
    return float(np.polyfit(np.asarray(times_s) / 60.0, np.asarray(values), 1)[0])


def measure(args) -> dict:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from tqdm import tqdm

    from dysta_ros.msg import ActionChunk
    from dysta_ros.nodes import conversions as conv
    from dysta_ros.nodes.spin import share_the_gil_finely
    from dysta_ros.nodes.transport import use_large_frame_transport

    topics = [f"/load/cam{i}/image_raw" for i in range(args.cameras)]
    share_the_gil_finely()  # the probe and policy_node share this process
    use_large_frame_transport()  # the probe's camera frames, and policy_node (a child) inherits it
    rclpy.init()
    node = rclpy.create_node("load_probe")
    publish = camera_publisher(node, topics, args.width, args.height)
    t0 = time.monotonic()
    chunks, memory, counts = [], [], {}
    sent = {"base": 0, "frames": 0}

    def on_chunk(msg):
        start, end = conv.to_seconds(msg.inference_start), conv.to_seconds(msg.inference_end)
        chunks.append({"t": time.monotonic() - t0, "age_at_start": start - conv.to_seconds(msg.header.stamp),
                       "model": end - start})

    def on_diagnostics(msg):
        for status in msg.status:
            if status.name == "policy_node: inputs":
                values = {kv.key: kv.value for kv in status.values}
                for topic in topics:
                    if f"{topic}.received" in values:
                        counts[topic] = {k: int(values[f"{topic}.{k}"]) for k in COUNTS}

    def on_timer():
        sent["frames"] = publish() - sent["base"]

    node.create_subscription(ActionChunk, "/dysta/action_chunk", on_chunk, conv.RELIABLE_QOS)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    node.create_timer(1.0 / args.rate, on_timer)
    node.create_timer(1.0, lambda: memory.append((time.monotonic() - t0, rss_mb(process.pid))))
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    process = start_policy_node(args, topics, yaml.safe_load(args.preset_overrides) or {}, args.max_image_age)
    try:
        deadline = time.monotonic() + 120.0
        while not chunks and time.monotonic() < deadline and process.poll() is None:
            executor.spin_once(timeout_sec=0.05)
        if not chunks:
            raise RuntimeError("policy_node produced no chunk within 120 s")
        # Warm-up done (model built, first steps): measure from here.
        chunks.clear()
        memory.clear()
        start_counts = dict(counts)
        t0, sent["base"] = time.monotonic(), sent["base"] + sent["frames"]
        with tqdm(total=int(args.seconds), desc="holding load", unit="s") as bar:
            while time.monotonic() - t0 < args.seconds and process.poll() is None:
                executor.spin_once(timeout_sec=0.05)
                bar.update(int(time.monotonic() - t0) - bar.n)
        alive = process.poll() is None
    finally:
        process.terminate()
        process.wait(timeout=30)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return summarise(args, chunks, memory, counts, start_counts, sent["frames"], alive)


def summarise(args, chunks, memory, counts, start_counts, frames_sent, alive) -> dict:
    ages = [c["age_at_start"] * 1e3 for c in chunks]
    times = [c["t"] for c in chunks]
    late = [a for t, a in zip(times, ages) if t >= args.seconds / 2]
    mem_t, mem_mb = [m[0] for m in memory], [m[1] for m in memory]
    second_half = [i for i, t in enumerate(mem_t) if t >= args.seconds / 2]
    cameras = {}
    for topic, c in counts.items():
        base = start_counts.get(topic, {k: 0 for k in c})
        cameras[topic] = {k: c[k] - base[k] for k in c}
        # Each camera served: the share of its frames that reached the node's callback.
        cameras[topic]["delivered"] = cameras[topic]["received"] / frames_sent if frames_sent else 0.0
    return {
        "config": vars(args), "alive": alive, "seconds": args.seconds, "frames_sent_per_camera": frames_sent,
        "chunks": len(chunks), "steps_per_s": len(chunks) / args.seconds,
        "model_ms": percentiles([c["model"] * 1e3 for c in chunks]) if chunks else {},
        "frame_age_at_start_ms": percentiles(ages) if ages else {},
        # A queue would make the age grow with time; latest-value inputs keep it flat.
        "frame_age_slope_ms_per_min": slope_per_minute(times, ages),
        "frame_age_second_half_ms": percentiles(late) if late else {},
        "rss_mb": {"start": mem_mb[0], "end": mem_mb[-1], "min": min(mem_mb), "max": max(mem_mb),
                   # medians of the first and last minute (or sixth): robust to frames in flight
                   "first_median": float(np.median(mem_mb[: max(1, min(60, len(mem_mb) // 6))])),
                   "last_median": float(np.median(mem_mb[-max(1, min(60, len(mem_mb) // 6)):]))}
        if mem_mb else {},
        "rss_slope_mb_per_min_second_half": slope_per_minute([mem_t[i] for i in second_half],
                                                             [mem_mb[i] for i in second_half]),
        "cameras": cameras, "load_average": os.getloadavg(), "cpu_count": os.cpu_count(),
        "series": {"chunk_t": times, "frame_age_ms": ages, "memory_t": mem_t, "rss_mb": mem_mb},
    }


def plot(report: dict, path: Path):
    plt = pyplot()

    series = report["series"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(series["memory_t"], series["rss_mb"])
    axes[0].set(xlabel="s", ylabel="MB", title=f"policy_node RSS (second half: "
                f"{report['rss_slope_mb_per_min_second_half']:+.2f} MB/min)")
    axes[1].plot(series["chunk_t"], series["frame_age_ms"], ".", markersize=2)
    axes[1].axhline(report["config"]["max_image_age"] * 1e3, color="red", linestyle="--",
                    label="max_image_age_s")
    axes[1].set(xlabel="s", ylabel="ms", title=f"frame age at inference start "
                f"({report['frame_age_slope_ms_per_min']:+.2f} ms/min)")
    axes[1].legend()
    c = report["config"]
    dropped = sum(v["dropped"] for v in report["cameras"].values())
    received = sum(v["received"] for v in report["cameras"].values())
    fig.suptitle(f"{c['cameras']} cameras {c['width']}x{c['height']} at {c['rate']} Hz, "
                 f"{c['seconds']:.0f} s, {report['chunks']} steps, "
                 f"{dropped}/{received} frames dropped (not queued)")
    save_png(fig, path, dpi=100)


def camera_table(report: dict) -> str:
    """Return the per-camera delivery table (markdown), as README shows it."""
    # (`missed`, read from stamp gaps, stays in load.json: a publisher's timer jitter blurs it;
    # received / sent is exact)
    lines = ["| camera | sent | received | delivered | used | dropped |", "|---|---|---|---|---|---|"]
    for topic, c in sorted(report["cameras"].items()):
        lines.append(f"| `{topic}` | {report['frames_sent_per_camera']} | {c['received']} | "
                     f"{100 * c['delivered']:.1f} % | {c['used']} | {c['dropped']} |")
    return "\n".join(lines)


def run(args) -> int:
    """Measure, write the report, print the figures."""
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    report = measure(args)
    write_report(report, args.out, "load", plot)
    if args.json:
        write_json(args.json, report_document(report))
    else:
        for key, value in report.items():  # the figures, one per line (the full data: load.json)
            if key not in ("series", "config"):
                print(f"{key}: {value}")
        print(camera_table(report))
    return 0 if report["alive"] else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
