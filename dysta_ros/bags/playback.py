"""Pace a bag's messages in wall time as they were recorded, faster or slower by `rate`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from dysta_ros.bags.rosbag import BagMessage, BagReader
from dysta_ros.errors import ConfigError


def paced(messages: Iterable[BagMessage], rate: float = 1.0,
          now: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> Iterator[BagMessage]:
    """Yield each message when its recorded offset from the first one, divided by rate, has passed.

    The schedule is anchored once, so a slow consumer catches up instead of drifting late.
    """
    if not rate > 0:
        raise ConfigError(f"rate must be > 0 (1.0 = recorded speed), got {rate}")
    first_ns = start = None
    for message in messages:
        if first_ns is None:
            first_ns, start = message.stamp_ns, now()
        due = start + (message.stamp_ns - first_ns) * 1e-9 / rate
        if (wait := due - now()) > 0:
            sleep(wait)
        yield message


def play(path: str | Path, topics: Iterable[str] | None = None, rate: float = 1.0,
         loop: bool = False, **pacing) -> Iterator[BagMessage]:
    """Yield a bag's messages (of `topics`, or all) in recorded time; forever when `loop`."""
    while True:
        with BagReader(path) as bag:
            yield from paced(bag.messages(topics), rate, **pacing)
        if not loop:
            return
