"""Open-loop metrics beyond the mean error: task-critical windows and chunk-boundary jumps.

Mean open-loop MSE ranks checkpoints poorly against real success: most steps are easy
transit, and what fails a task is the few moments around a grasp or a contact, or a jerk
where the executor switches from one chunk to the next. So the evaluation also reports:

- **critical windows**: the error of steps within `window_s` of a gripper change (the
  recorded gripper action crossing the middle of its range) or of a large acceleration
  (the recorded arm action's acceleration above the episode's `accel_quantile`: where
  contact and fast turns show in joint commands), beside the error elsewhere;
- **chunk-boundary discontinuity**: between consecutive chunks of an episode, how far the
  new chunk's first action lies from the old chunk's action for the same instant (the
  jump an executor makes when it switches), and the RMS difference over all the actions
  both chunks plan for the same instants.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dysta_ros.errors import ConfigError

EVENT_KINDS = ("gripper", "acceleration")


@dataclass(frozen=True)
class CriticalWindows:
    """Which moments of an episode count as task-critical."""

    window_s: float = 0.3  # seconds either side of an event
    gripper_joint: str = "auto"  # a joint name; auto: the first named *gripper*; none: off
    accel_quantile: float = 0.95  # accelerations above this quantile of the episode's

    def __post_init__(self):
        if self.window_s < 0:
            raise ConfigError(f"window_s must be >= 0, got {self.window_s}")
        if not 0.0 < self.accel_quantile <= 1.0:
            raise ConfigError(f"accel_quantile must be in (0, 1] (1: off), got {self.accel_quantile}")


def gripper_index(joints, choice: str) -> int | None:
    """Return the gripper's dimension: the named joint, the first *gripper* one, or None."""
    joints = list(joints)
    if choice == "none":
        return None
    if choice == "auto":
        return next((i for i, name in enumerate(joints) if "gripper" in name.lower()), None)
    if choice not in joints:
        raise ConfigError(f"gripper_joint {choice!r} is not one of the joints {joints} "
                          f"(or auto, none)")
    return joints.index(choice)


def critical_events(times: np.ndarray, values: np.ndarray, joints,
                    config: CriticalWindows) -> list[tuple[str, float]]:
    """Return (kind, time) of each gripper change and large acceleration of recorded actions."""
    times, values = np.asarray(times, dtype=np.float64), np.asarray(values, dtype=np.float64)
    events = []
    gripper = gripper_index(joints, config.gripper_joint) if len(joints) == values.shape[1] else None
    if gripper is not None and len(values) > 1:
        track = values[:, gripper]
        low, high = track.min(), track.max()
        if high - low > 1e-9:
            closed = track > (low + high) / 2
            events += [("gripper", float(times[i]))
                       for i in np.flatnonzero(closed[1:] != closed[:-1]) + 1]
    arm = np.delete(values, gripper, axis=1) if gripper is not None else values
    if len(arm) > 2 and arm.shape[1] and config.accel_quantile < 1.0:
        dt = np.diff(times)
        velocity = np.diff(arm, axis=0) / dt[:, None]  # (M-1, D) at the interval midpoints
        acceleration = np.linalg.norm(np.diff(velocity, axis=0), axis=1) / (
            (dt[1:] + dt[:-1]) / 2)  # (M-2,) at times[1:-1]
        threshold = np.quantile(acceleration, config.accel_quantile)
        events += [("acceleration", float(times[i + 1]))
                   for i in np.flatnonzero(acceleration > max(threshold, 1e-9))]
    return sorted(events, key=lambda event: event[1])


def window_tags(step_times: np.ndarray, events: list[tuple[str, float]],
                window_s: float) -> list[tuple[str, ...]]:
    """Return, per step time, the kinds of event within `window_s` of it."""
    return [tuple(sorted({kind for kind, t in events if abs(step - t) <= window_s + 1e-9}))
            for step in np.asarray(step_times, dtype=np.float64)]


def window_errors(per_step_mse: np.ndarray, tags: list[tuple[str, ...]], window_s: float,
                  compared: np.ndarray | None = None) -> dict:
    """Return the action MSE of critical steps (any kind, each kind) and of the others.

    `compared`: the values each step's MSE is over; a group's MSE is then over all its values,
    as the overall action MSE is (a step near an episode's end, with fewer recorded actions
    to compare, weighs less). None: every step weighs the same.
    """
    per_step_mse = np.asarray(per_step_mse, dtype=np.float64)
    weights = (np.ones(len(per_step_mse)) if compared is None
               else np.asarray(compared, dtype=np.float64))
    valid = np.isfinite(per_step_mse) & (weights > 0)
    groups = {"critical": np.asarray([bool(t) for t in tags]),
              **{kind: np.asarray([kind in t for t in tags]) for kind in EVENT_KINDS}}
    groups["elsewhere"] = ~groups["critical"]

    def mean(mask):
        chosen = mask & valid
        return (float(np.sum(per_step_mse[chosen] * weights[chosen]) / np.sum(weights[chosen]))
                if chosen.any() else None)

    mse = {name: mean(mask) for name, mask in groups.items()}
    ratio = (mse["critical"] / mse["elsewhere"]
             if mse["critical"] is not None and mse["elsewhere"] else None)
    return {"window_s": window_s, "steps": {k: int((m & valid).sum()) for k, m in groups.items()},
            "mse": mse, "critical_over_elsewhere": ratio}


def chunk_boundaries(runs: list[list[tuple[float, float, np.ndarray]]]) -> dict:
    """Return the discontinuity between consecutive chunks.

    Each run holds (stamp, dt, actions (H, D)) of consecutive steps of one episode (a failed
    step starts a new run). Chunk i+1 starts s = (stamp_{i+1} - stamp_i) / dt actions into
    chunk i; its action m is meant for the instant of chunk i's action s + m.
    """
    jumps, per_dim, overlaps, beyond = [], [], [], 0
    pairs = [pair for run in runs for pair in zip(run, run[1:])]
    for (stamp, dt, old), (next_stamp, _, new) in pairs:
        if dt <= 0 or next_stamp <= stamp:
            continue
        shift = int(round((next_stamp - stamp) / dt))
        if shift >= len(old):
            beyond += 1  # the old chunk ran out before the new one came: nothing to compare
            continue
        if shift < 1:
            continue
        both = min(len(old) - shift, len(new))
        difference = new[:both] - old[shift:shift + both]  # (both, D)
        jumps.append(float(np.linalg.norm(difference[0])))
        per_dim.append(np.abs(difference[0]))
        overlaps.append(float(np.sqrt(np.mean(difference ** 2))))
    if not jumps:
        return {"boundaries": 0, "without_overlap": beyond, "jump_mean": None, "jump_p90": None,
                "jump_max": None, "jump_per_dim": [], "overlap_rmse_mean": None}
    jumps = np.asarray(jumps)
    return {"boundaries": len(jumps), "without_overlap": beyond, "jump_mean": float(jumps.mean()),
            "jump_p90": float(np.percentile(jumps, 90)), "jump_max": float(jumps.max()),
            "jump_per_dim": np.mean(per_dim, axis=0).tolist(),
            "overlap_rmse_mean": float(np.mean(overlaps))}
