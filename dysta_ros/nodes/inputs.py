"""The policy node's inputs: the latest message per camera and joint states, never a queue.

Subscription callbacks `put_*` the newest message with its stamp; the inference thread waits
for a new frame and `take`s a snapshot, which either holds every input fresh enough to step on
or names the stale ones. A frame replaced before any step used it is dropped and counted.
Plain Python (messages are opaque here), so the freshness rules are testable without ROS.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any


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
        self.counts = {c: {"received": 0, "dropped": 0, "out_of_order": 0} for c in self.cameras}

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
            self._out_of_order.pop(camera, None)
            self._frames[camera] = Latest(msg, stamp, received or 0.0)
            self._arrivals += 1
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

    @property
    def instruction(self) -> str:
        with self._lock:
            return self._instruction

    def wait(self, seen: int, timeout: float) -> int:
        """Block until a frame arrives after arrival count `seen` (or timeout); return the count."""
        with self._lock:
            self._lock.wait_for(lambda: self._arrivals > seen, timeout=timeout)
            return self._arrivals

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
            new_frames = bool(frames) and all(not f.used for f in frames.values())
            if not stale and new_frames:
                for latest in frames.values():
                    latest.used = True
            return Snapshot(frames, self._state, self._instruction, stale, new_frames)

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
