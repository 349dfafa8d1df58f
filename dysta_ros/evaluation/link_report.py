"""What `dysta-ros link`'s robot side recorded, turned into figures, a table and a plot.

Plain Python and numpy, no ROS: the probe (nodes/link_probe.py) records chunks, commands and
holds as seen at the robot; `analyse` derives latency, loss, command gaps, the tracking error
against an ideal link (chunk_executor's own core replayed on the same chunks) and, after a cut,
when the executor held and what moved it again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dysta_ros.errors import InputError
from dysta_ros.plots import pyplot, save_png
from dysta_ros.results import percentiles

ROBOT = "sim_arm"
MAX_CHUNK_AGE_S = 0.5  # chunk_executor's deadman here (its default)
CONTROL_RATE_HZ = 50.0


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
        "latency_ms": percentiles(latency_ms),
        "commands": len(commands), "command_rate_hz": len(commands) / (end - start),
        "command_gap_max_ms": float(gaps.max() * 1e3) if len(gaps) else None,
        "command_gaps_over_deadman": int(np.sum(gaps > MAX_CHUNK_AGE_S)),
        "tracking_rms": percentiles(np.asarray(errors)),
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
