"""The policy node's inputs: the latest message per camera and joint states, never a queue.

Subscription callbacks `put_*` the newest message with its stamp; the inference thread waits
for a new frame and `take`s a snapshot, which either holds every input fresh enough to step on
or names the stale ones. Per camera it counts the frames that arrived, the ones a step used,
the ones replaced before any step used them (dropped), and the ones that never reached the
node at all (missed: read from gaps in the stamps, see `FrameGaps`).
Plain Python (messages are opaque here), so the freshness rules are testable without ROS.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# How a camera's period is read from its own stamps: recent gaps kept, gaps needed before
# counting, and the gap (in periods) past which the camera paused rather than frames were lost.
GAP_WINDOW = 64
MIN_GAPS = 16
INTERRUPTION_PERIODS = 60
# Re-estimate the period every this many gaps (a camera's rate rarely changes; it costs ~0.2 ms).
REESTIMATE_EVERY = 16


@dataclass
class Latest:
    """The newest message of one input."""

    msg: Any
    stamp: float  # header stamp (receipt time when the publisher left it zero)
    received: float = 0.0  # when the callback stored it
    used: bool = False


@dataclass
class Snapshot:
    """What the inference thread steps on: fresh frames and state, or why not."""

    frames: dict[str, Latest]
    state: Latest | None
    instruction: str
    stale: list[str] = field(default_factory=list)  # inputs too old / missing / from the future
    new_frames: bool = False  # every camera has a frame no step has used yet

    @property
    def stamp(self) -> float:
        """The observation's stamp: the oldest camera frame's."""
        return min(f.stamp for f in self.frames.values())

    @property
    def received(self) -> float:
        """When the last frame of the set arrived."""
        return max(f.received for f in self.frames.values())


def estimate_period(gaps) -> float | None:
    """Return a stream's frame period from gaps between its stamps (None until MIN_GAPS).

    Lost frames make gaps of whole periods. Each candidate (a low quantile of the gaps, where
    single periods are even when most frames are lost) is refined by dividing the gaps' sum by
    their whole numbers of periods; the candidate whose multiples fit the gaps best wins, the
    longest among equals, since half the period fits any stream as well.
    """
    if len(gaps) < MIN_GAPS:
        return None
    gaps = np.asarray(gaps, dtype=np.float64)  # (N,)
    ordered = np.sort(gaps)
    best_misfit, best = np.inf, None
    for quantile in (0.0, 0.05, 0.1, 0.2, 0.35, 0.5):
        period = ordered[int(quantile * len(ordered))]
        for _ in range(4):
            period = gaps.sum() / np.maximum(1.0, np.round(gaps / period)).sum()
        misfit = float(np.mean(np.abs(gaps / period - np.round(gaps / period))))  # in periods
        if misfit < best_misfit - 0.01 or (misfit <= best_misfit + 0.01 and period > best):
            best_misfit, best = min(misfit, best_misfit), float(period)
    return best


class FrameGaps:
    """Frames of one camera that never reached the node, counted from the gaps in its stamps.

    A depth-1 reader keeps one sample, and DDS overwrites it when the next one comes before the
    callback took it: such a frame leaves no trace but a gap of n periods, n - 1 frames missed.
    The period is estimated from the stream itself, so no rate needs configuring; a camera that
    only ever delivers every k-th frame looks like a camera at rate / k. A gap of more than
    INTERRUPTION_PERIODS periods (a camera restart, a clock jump) counts as an interruption.
    Each gap is read with the estimate of the window it is in, so the gaps that came before
    the period was known are counted too, once it is.
    """

    def __init__(self):
        self.gaps: collections.deque[float] = collections.deque()  # the last GAP_WINDOW gaps (s)
        self.last_stamp: float | None = None
        self.period: float | None = None
        self.since_estimate = 0  # gaps since the period was last estimated
        self.settled_missed = 0  # counted from gaps that have left the window
        self.settled_interruptions = 0

    def add(self, stamp: float) -> None:
        """Take the stamp of the frame stored after the previous one; record the gap between them."""
        previous, self.last_stamp = self.last_stamp, stamp
        if previous is None or stamp <= previous:
            return  # the first frame, a repeated stamp, or a new timeline: no gap to read
        if len(self.gaps) == GAP_WINDOW:
            missed, interruptions = self._read([self.gaps.popleft()])
            self.settled_missed += missed
            self.settled_interruptions += interruptions
        self.gaps.append(stamp - previous)
        self.since_estimate += 1
        if self.period is None or self.since_estimate >= REESTIMATE_EVERY:
            self.period = estimate_period(self.gaps)
            self.since_estimate = 0

    def counts(self) -> tuple[int, int]:
        """Return (frames missed, interruptions) so far."""
        missed, interruptions = self._read(self.gaps)
        return self.settled_missed + missed, self.settled_interruptions + interruptions

    def _read(self, gaps) -> tuple[int, int]:
        if self.period is None or not gaps:
            return 0, 0
        periods = np.round(np.asarray(gaps, dtype=np.float64) / self.period)  # (N,)
        paused = periods > INTERRUPTION_PERIODS
        return int(np.sum(np.maximum(periods[~paused] - 1, 0))), int(np.sum(paused))


class LatestInputs:
    """Thread-safe latest-value store of camera frames, joint states and the instruction."""

    def __init__(self, cameras: list[str], state_name: str, instruction: str = ""):
        self.cameras = list(cameras)
        self.state_name = state_name
        self._lock = threading.Condition()
        self._frames: dict[str, Latest | None] = {c: None for c in self.cameras}
        self._state: Latest | None = None
        self._instruction = instruction
        self._arrivals = 0
        self._out_of_order: dict[str, str] = {}  # camera -> why its latest arrival was refused
        self._gaps = {c: FrameGaps() for c in self.cameras}
        # received: reached the callback; used: stepped on; dropped: replaced before a step used
        # it; out_of_order: older than the frame held, refused.
        self.counts = {c: {"received": 0, "used": 0, "dropped": 0, "out_of_order": 0} for c in self.cameras}

    def put_frame(self, camera: str, msg, stamp: float, received: float | None = None) -> None:
        """Store a camera's frame unless it is older than the one held (`received`: our clock now)."""
        with self._lock:
            counts = self.counts[camera]
            counts["received"] += 1
            previous = self._frames[camera]
            older = previous is not None and stamp < previous.stamp
            if older and not _from_the_future(previous, received):
                counts["out_of_order"] += 1  # an older frame than we hold: never step backwards
                self._out_of_order[camera] = (f"{camera} (frame stamped {previous.stamp - stamp:.3f} s "
                                              f"before the one held: out of order)")
                return
            if previous is not None and not previous.used:
                counts["dropped"] += 1
            self._gaps[camera].add(stamp)
            self._out_of_order.pop(camera, None)
            self._frames[camera] = Latest(msg, stamp, received or 0.0)
            self._arrivals += 1
            # Wake the inference thread for a complete set of new views only (take() steps on
            # nothing less): woken per camera, it took the GIL while the next camera's frame was
            # still being received. Its wait's timeout still has it report a missing camera.
            if self._complete_new_set():
                self._lock.notify_all()

    def put_state(self, msg, stamp: float, received: float | None = None) -> None:
        """Store a joint state unless it is older than the one held (`received`: our clock now)."""
        with self._lock:
            previous = self._state
            if previous is None or stamp >= previous.stamp or _from_the_future(previous, received):
                self._state = Latest(msg, stamp, received or 0.0)

    def put_instruction(self, text: str) -> None:
        with self._lock:
            self._instruction = text

    def state_stamp(self) -> float | None:
        """Return the stamp of the joint state held (None before the first)."""
        with self._lock:
            return None if self._state is None else self._state.stamp

    @property
    def instruction(self) -> str:
        with self._lock:
            return self._instruction

    def wait(self, seen: int, timeout: float) -> int:
        """Block until every camera holds a new, unused frame (one arrived after count `seen`).

        Returns the arrival count, also when `timeout` passes first.
        """
        with self._lock:
            self._lock.wait_for(lambda: self._arrivals > seen and self._complete_new_set(), timeout=timeout)
            return self._arrivals

    def _complete_new_set(self) -> bool:
        return all(f is not None and not f.used for f in self._frames.values())

    def take(self, now: float, max_image_age_s: float, max_state_age_s: float) -> Snapshot:
        """Return a snapshot; when nothing is stale its frames are marked used."""
        with self._lock:
            stale = [self._staleness(name, latest, now, max_image_age_s)
                     for name, latest in self._frames.items()]
            stale.append(self._staleness(self.state_name, self._state, now, max_state_age_s))
            stale = [s for s in stale if s] + list(self._out_of_order.values())
            frames = {c: f for c, f in self._frames.items() if f is not None}
            # Step on a complete set of new views: with cameras published together, stepping on
            # the first arrival would pair it with the other camera's previous frame.
            new_frames = self._complete_new_set()
            if not stale and new_frames:
                for camera, latest in frames.items():
                    latest.used = True
                    self.counts[camera]["used"] += 1
            return Snapshot(frames, self._state, self._instruction, stale, new_frames)

    def frame_report(self) -> dict[str, int | str]:
        """Return per-camera frame counts as `<camera>.<count>`, with missed frames and the period."""
        with self._lock:
            report = {}
            for camera, counts in self.counts.items():
                gaps = self._gaps[camera]
                report.update({f"{camera}.{key}": n for key, n in counts.items()})
                report[f"{camera}.missed"], report[f"{camera}.interruptions"] = gaps.counts()
                period = "unknown" if gaps.period is None else f"{gaps.period * 1e3:.2f}"
                report[f"{camera}.period_ms"] = period
            return report

    @staticmethod
    def _staleness(name: str, latest: Latest | None, now: float, max_age: float) -> str:
        if latest is None:
            return f"{name} (nothing received)"
        age = now - latest.stamp
        if age > max_age:
            return f"{name} ({age:.2f} s old > {max_age} s)"
        if age < -max_age:
            return f"{name} (stamp {-age:.2f} s in the future)"
        return ""


def _from_the_future(held: Latest, now: float | None) -> bool:
    """Whether a held message is stamped after `now`: a future stamp, or our clock jumped back.

    Such a message can never be stepped on, so it must not block the newer-looking ones that
    follow on the current timeline (sim time reset, a bag looping, a publisher's clock fixed).
    """
    return now is not None and held.stamp > now
