"""Follow a joint trajectory the way ros2_control's JointTrajectoryController does.

A new trajectory replaces the old one; between "now" and its first point the command moves
linearly from the current target; after the last point it holds. Joints the trajectory does
not name keep their target. Plain values in, joint targets out: the sim node feeds it.
"""

from __future__ import annotations

import numpy as np

from dysta_ros.errors import InputError


class TrajectoryFollower:
    """Interpolated joint targets from the latest trajectory, on one clock (seconds)."""

    def __init__(self, joints: tuple[str, ...], start_targets: np.ndarray):
        self.joints = tuple(joints)
        self._hold = np.asarray(start_targets, dtype=np.float64).copy()
        self._times: np.ndarray | None = None  # (K + 1,) absolute seconds, first = when accepted
        self._points: np.ndarray | None = None  # (K + 1, D)

    def hold(self, targets: np.ndarray) -> None:
        """Drop any trajectory and hold `targets`."""
        self._hold = np.asarray(targets, dtype=np.float64).copy()
        self._times = self._points = None

    def set(self, names: list[str], positions: np.ndarray, times_from_start: np.ndarray,
            start: float, now: float) -> None:
        """Replace the trajectory: `positions` (K, len(names)) at `start + times_from_start`.

        An empty trajectory stops and holds the current target. Raises InputError (and keeps
        the previous trajectory) on unknown joints, non-finite values or times that do not grow.
        """
        current = self.target(now)
        positions = np.asarray(positions, dtype=np.float64).reshape(len(times_from_start), len(names))
        times = np.asarray(times_from_start, dtype=np.float64)
        unknown = [n for n in names if n not in self.joints]
        if unknown or len(set(names)) != len(names):
            raise InputError(f"trajectory joint_names {names}: unknown or repeated "
                             f"(this arm: {list(self.joints)})")
        if not (np.all(np.isfinite(positions)) and np.all(np.isfinite(times))):
            raise InputError("trajectory holds non-finite positions or times")
        if len(times) and (np.any(np.diff(times) <= 0) or times[0] < 0):
            raise InputError(f"trajectory times_from_start must grow from >= 0, got {times.tolist()}")
        if not len(times):
            self.hold(current)
            return
        full = np.tile(current, (len(times), 1))  # (K, D): unnamed joints keep their target
        full[:, [self.joints.index(n) for n in names]] = positions
        absolute = start + times
        keep = absolute > now  # points already in the past are skipped, as the JTC does
        if not keep.any():
            self.hold(full[-1])
            return
        self._times = np.concatenate([[now], absolute[keep]])
        self._points = np.vstack([current, full[keep]])

    def target(self, now: float) -> np.ndarray:
        """Return the joint targets for time `now`."""
        if self._times is None:
            return self._hold.copy()
        return np.array([np.interp(now, self._times, self._points[:, j]) for j in range(len(self.joints))])
