"""What `dysta-ros latency` and `dysta-ros load` share.

Their flags, policy_node in its own process, the camera publisher standing in for the drivers,
and the report files.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from dysta_ros.cli_options import (add_json_argument, add_model_argument, add_runtime_arguments,
                                   add_strategy_argument, free_cores, write_json)
from dysta_ros.results import result_document


def add_load_arguments(parser: argparse.ArgumentParser, cameras: int, seconds: float, strategy: str) -> None:
    """Add the camera load and policy_node flags `latency` and `load` share."""
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
    # policy_node's device, dtype and cpu_threads. Threads: the free cores minus the one this
    # probe's camera publishing takes (a camera driver's core on a robot); measured on 2 cores,
    # two model threads against the probe made OpenMP wait at every barrier (tiny's step 60 ms
    # instead of 12) and the frames' publishing wait for a core.
    add_runtime_arguments(parser, threads=str(max(1, free_cores() - 1)))
    add_json_argument(parser)


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
