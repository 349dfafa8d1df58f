"""Pace a bag's messages in wall time as they were recorded, faster or slower by `rate`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from dysta_ros.bags.rosbag import BagMessage, BagReader
from dysta_ros.errors import BagError, ConfigError


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
    """Yield a bag's messages (of `topics`, or all) in recorded time; forever when `loop`.

    A pass that yields nothing ends a loop: every later one would too, and looping on it
    spun a core until Ctrl-C (a bag of command topics only, none played).
    """
    while True:
        played = 0
        with BagReader(path) as bag:
            for message in paced(bag.messages(topics), rate, **pacing):
                played += 1
                yield message
        if not loop or not played:
            return


# What a robot obeys: replayed, these reach a controller that is listening. Played only when
# asked for (--include-commands); observations (cameras, joint states, instruction) always.
COMMAND_TYPES = frozenset({
    "trajectory_msgs/msg/JointTrajectory", "dysta_ros/msg/ActionChunk", "std_msgs/msg/Float64MultiArray",
    "geometry_msgs/msg/Pose", "geometry_msgs/msg/PoseStamped", "geometry_msgs/msg/Twist",
    "geometry_msgs/msg/TwistStamped", "control_msgs/msg/JointJog",
})


def played_topics(bag: str, recorded: dict[str, str], topics: list[str] | None,
                  include_commands: bool) -> tuple[list[str], list[str]]:
    """Return (topics to play, command topics left out); refuse unknown or unasked-for command topics."""
    if unknown := sorted(set(topics or ()) - set(recorded)):
        raise BagError(f"{bag}: has no topics {unknown}; it has {sorted(recorded)}")
    commands = sorted(t for t in (topics or recorded) if recorded[t] in COMMAND_TYPES)
    if topics and commands and not include_commands:
        raise ConfigError(f"--topics {', '.join(commands)}: command topics (a robot may move); "
                          "pass --include-commands to replay them")
    if include_commands:
        return sorted(topics or recorded), []
    return sorted(t for t in (topics or recorded) if t not in commands), commands
