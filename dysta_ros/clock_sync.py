"""The offset of another machine's clock, estimated from message round trips (NTP's arithmetic).

A request leaves here at t0 (our clock), arrives there at t1 and its answer leaves at t2 (their
clock), and the answer arrives here at t3 (ours). With the two legs equally long,
offset = ((t1 - t0) + (t2 - t3)) / 2 is their clock minus ours, and the round trip's network
delay = (t3 - t0) - (t2 - t1). Queueing makes the legs unequal, by at most the delay, so the
offset is taken from the round trip with the smallest delay among the recent ones (NTP's clock
filter), and delay / 2 bounds its error.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

CLOCK_SYNC_MODES = ("assume", "estimate")  # clocks synchronised by chrony/PTP, or estimated here


@dataclass(frozen=True)
class RoundTrip:
    """One request and its answer: t0, t3 on our clock; t1, t2 on theirs (seconds)."""

    t0: float
    t1: float
    t2: float
    t3: float

    @property
    def offset(self) -> float:
        return ((self.t1 - self.t0) + (self.t2 - self.t3)) / 2.0

    @property
    def delay(self) -> float:
        return (self.t3 - self.t0) - (self.t2 - self.t1)


class ClockOffsetEstimator:
    """Their clock minus ours, from the fastest of the last `window` round trips."""

    def __init__(self, window: int = 16):
        self.trips: collections.deque[RoundTrip] = collections.deque(maxlen=window)
        self.refused = 0  # answers that cannot be a real round trip (negative delay: a clock stepped)
        self.steps = 0  # times their clock was seen to step: the trips before were forgotten

    def add(self, trip: RoundTrip) -> bool:
        """Take a round trip; return False (and count it) when its times cannot be right."""
        # NaN passes the comparisons below, and a NaN offset made every stamp look fresh
        if not all(math.isfinite(t) for t in (trip.t0, trip.t1, trip.t2, trip.t3)) \
                or trip.delay < 0 or trip.t3 < trip.t0 or trip.t2 < trip.t1:
            self.refused += 1
            return False
        # Each trip bounds their clock to offset +- delay / 2. A trip whose bounds exclude the
        # best one's saw another clock (it stepped: NTP fixed the robot's clock after boot); the
        # faster old trips would otherwise win until the window forgot them (8 s of frames
        # judged hours old or hours in the future).
        best = self.best
        if best is not None and abs(trip.offset - best.offset) > (trip.delay + best.delay) / 2:
            self.trips.clear()
            self.steps += 1
        self.trips.append(trip)
        return True

    @property
    def best(self) -> RoundTrip | None:
        return min(self.trips, key=lambda t: t.delay) if self.trips else None

    @property
    def offset_s(self) -> float | None:
        """Seconds to add to our clock to read theirs; None before the first round trip."""
        best = self.best
        return None if best is None else best.offset

    @property
    def uncertainty_s(self) -> float | None:
        """The most the offset can be wrong by: half the best round trip's delay."""
        best = self.best
        return None if best is None else best.delay / 2.0
