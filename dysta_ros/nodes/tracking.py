"""`dysta-ros tracking`: how closely the sim arm follows chunk_executor's plan, per trajectory scheme.

sim_node (its scripted expert publishing chunks, as `dysta-ros demo --policy expert` runs it)
and chunk_executor in one process on the wall clock, over real topics. Each /joint_states
message is compared with the executor's blended plan at the message's stamp (the plan both
schemes follow; read from the executor's core in this process). Run once per scheme:

- `lookahead`: each JointTrajectory carries the next `trajectory_lookahead_s` of the plan, sent
  at `trajectory_rate_hz` (the default, 0.3 s at 10 Hz);
- `single`: one point one period ahead at every control tick (lookahead 0 at the control
  rate): the output before the lookahead, except that its trajectories were unstamped.

Reports per scheme the tracking error (max over joints, rad: RMS, p95, max) and how often the
arm stalls while the plan moves (see STALLED); writes tracking.json as {"runs": [one per
scheme], "meta": {...}}, the document `--json [FILE]` gives too.

    dysta-ros tracking --seconds 30
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from dysta_ros.cli_options import add_json_argument, json_to_stdout, write_json
from dysta_ros.results import command_line, result_document

SETTLE_S = 0.6  # after a reset: two expert chunks (3 Hz) and the executor's cross-fade into them
PLAN_VELOCITY_DT = 0.02  # s: the plan's velocity, from the plan now and this much later
# A stall: the plan moves (faster than MOVING rad/s on some joint) while the arm moves at under
# STALLED of the plan's speed: the stutter or frozen arm a controller starved of plan shows.
MOVING, STALLED = 0.05, 0.2
SCHEMES = {"lookahead": {}, "single": {"trajectory_lookahead_s": 0.0, "trajectory_rate_hz": 50.0}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=30.0, help="measuring time per scheme")
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES))
    parser.add_argument("--task", default="reach", help="sim task; episodes restart as they end")
    parser.add_argument("--out", default="tracking_report", help="directory for tracking.json")
    add_json_argument(parser)


def measure(scheme: str, args) -> dict:
    """Run sim + expert + chunk_executor for `args.seconds` with one scheme; return its figures."""
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import JointState
    from tqdm import tqdm

    from dysta_ros.nodes.chunk_executor import ChunkExecutorNode
    from dysta_ros.nodes.conversions import STATE_QOS, to_seconds
    from dysta_ros.nodes.sim_node import SimNode

    rclpy.init()
    sim = SimNode(image_width=32, image_height=32, camera_rate_hz=1.0, expert=True, task=args.task)
    values = {"control_rate_hz": 50.0, **SCHEMES[scheme]}
    executor_node = ChunkExecutorNode(parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])
    probe = rclpy.create_node("tracking_probe")
    joints = list(executor_node.robot.joints)
    samples = []  # (stamp, positions (D,), plan target (D,), episode)
    episode_start = {"episode": sim.episode, "stamp": 0.0}

    def on_state(msg):
        stamp = to_seconds(msg.header.stamp)
        if sim.episode != episode_start["episode"]:
            episode_start.update(episode=sim.episode, stamp=stamp)
        # A reset puts the arm at a new start pose while the plan is the last episode's until
        # the expert's next chunks: not tracking, so left out.
        if stamp - episode_start["stamp"] < SETTLE_S:
            return
        blender = executor_node.core.blender
        target, ahead = blender.target(stamp), blender.target(stamp + PLAN_VELOCITY_DT)
        if target is not None and ahead is not None and executor_node.holding is None:  # commanding
            order = [list(msg.name).index(j) for j in joints]
            positions, velocities = np.array(msg.position)[order], np.array(msg.velocity)[order]
            samples.append((stamp, positions, target, sim.episode, velocities,
                            (ahead - target) / PLAN_VELOCITY_DT))

    probe.create_subscription(JointState, "/joint_states", on_state, STATE_QOS)
    executor = MultiThreadedExecutor(num_threads=3)
    for node in (sim, executor_node, probe):
        executor.add_node(node)
    try:
        warm_up = time.monotonic() + 3.0  # the first chunks, the arm starting to move
        while time.monotonic() < warm_up:
            executor.spin_once(timeout_sec=0.05)
        samples.clear()
        start = time.monotonic()
        with tqdm(total=int(args.seconds), desc=f"tracking ({scheme})", unit="s") as bar:
            while time.monotonic() - start < args.seconds:
                executor.spin_once(timeout_sec=0.05)
                bar.update(int(time.monotonic() - start) - bar.n)
    finally:
        executor.shutdown()
        for node in (probe, executor_node, sim):
            if node is sim:
                sim.close()
            node.destroy_node()
        rclpy.try_shutdown()
    return summarise(scheme, values, samples)


def summarise(scheme: str, values: dict, samples) -> dict:
    """Tracking error and stalls of the samples.

    Each sample: (stamp, positions, plan target, episode, arm velocities, plan velocities).
    """
    if len(samples) < 3:
        return {"scheme": scheme, "executor": values, "samples": len(samples)}
    positions = np.stack([s[1] for s in samples])  # (N, D)
    error = np.abs(positions - np.stack([s[2] for s in samples])).max(axis=1)  # (N,)
    arm_speed = np.abs(np.stack([s[4] for s in samples])).max(axis=1)  # (N,) rad/s, MuJoCo's
    plan_speed = np.abs(np.stack([s[5] for s in samples])).max(axis=1)  # (N,)
    moving = plan_speed > MOVING
    stalled = moving & (arm_speed < STALLED * plan_speed)
    return {"scheme": scheme, "executor": values, "samples": len(samples),
            "error_rad": {"rms": float(np.sqrt(np.mean(error ** 2))), "p95": float(np.percentile(error, 95)),
                          "max": float(error.max())},
            "plan_moving_samples": int(moving.sum()),
            "stalled_fraction": float(stalled.sum() / max(1, moving.sum()))}


def run(args) -> int:
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    from dysta_ros.nodes.spin import share_the_gil_finely

    share_the_gil_finely()  # sim, executor and probe share this process
    reports = [measure(scheme, args) for scheme in args.schemes]
    return report(reports, args)


def report(reports: list[dict], args) -> int:
    """Print the table, write tracking.json (and --json); 1 when a scheme had too few samples."""
    out = sys.stderr if json_to_stdout(args) else sys.stdout  # stdout is the JSON's then
    print("| scheme | samples | error RMS (rad) | p95 | max | stalled while the plan moves |", file=out)
    print("|---|---|---|---|---|---|", file=out)
    for r in reports:
        if "error_rad" in r:
            e = r["error_rad"]
            print(f"| {r['scheme']} | {r['samples']} | {e['rms']:.4f} | {e['p95']:.4f} | {e['max']:.4f} | "
                  f"{100 * r['stalled_fraction']:.1f} % of {r['plan_moving_samples']} |", file=out)
        else:
            print(f"| {r['scheme']} | {r['samples']} | (too few samples) | | | |", file=out)
    document = result_document(reports, {"task": args.task, "seconds": args.seconds,
                                         "load_average": list(os.getloadavg()), "command": command_line()})
    write_json(str(Path(args.out) / "tracking.json"), document)
    write_json(args.json, document)
    return 0 if all("error_rad" in r for r in reports) else 1
