"""Episodes from a bag: observations resampled at the policy rate, with the recorded actions.

Resampling is a zero-order hold: at each step time the policy sees the newest camera frame
and joint state whose *header stamp* is not later than that time (receive times jitter with
the network; header stamps say when the camera saw it). Recorded actions form a timeline
(time -> action vector) that can be looked up at any time the same way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dysta_ros.bags.rosbag import BagReader
from dysta_ros.bags.topic_map import IMAGE_TYPES, TopicMap, default_topic_map
from dysta_ros.errors import BagError, InputError
# The package's one image conversion; it imports no ROS (cv_bridge only when installed).
from dysta_ros.images import compressed_to_rgb, raw_to_rgb
from dysta_ros.types import Observation

log = logging.getLogger(__name__)


def stamp_seconds(stamp) -> float:
    """Return a builtin_interfaces/Time as float seconds."""
    return stamp.sec + stamp.nanosec * 1e-9


def header_or_receive_time(header, receive_s: float) -> float:
    """Return the header stamp, or the receive time where the publisher left the stamp zero."""
    stamp = stamp_seconds(header.stamp)
    return stamp if stamp > 0.0 else receive_s


CLOCKS = ("header", "receive")
CLOCK_TOLERANCE_S = 0.5  # header stamps this far from receive times: another clock


def _stamp(header, receive_s: float, clock: str) -> float:
    """Return when a message happened by the chosen clock."""
    return receive_s if clock == "receive" else header_or_receive_time(header, receive_s)


def _check_clocks(source: str, states: list, clock: str, topic: str) -> None:
    """Warn, naming the clock used, where header stamps and receive times disagree."""
    if not states:
        return
    gap = float(np.median([abs(receive_s - stamp) for receive_s, stamp, _ in states]))
    if gap > CLOCK_TOLERANCE_S:
        other = "receive" if clock == "header" else "header"
        log.warning("%s: on %s header stamps and receive times differ by %.3g s (median; sim "
                    "time or unsynchronised clocks); using %s times; pass --time %s to use %s "
                    "times instead", source, topic, gap, clock, other, other)


HOLD_TOLERANCE_S = 1e-6  # a sample stamped this close after a step counts as there


def hold_indices(sample_times: np.ndarray, query_times: np.ndarray) -> np.ndarray:
    """Return, per query time, the index of the newest sample not later than it (-1: none).

    Samples on the step grid itself (a dataset's frames at k / fps) land a nanosecond either
    side of the steps after rounding to ns: within HOLD_TOLERANCE_S they count as on time.
    """
    return np.searchsorted(sample_times, np.asarray(query_times) + HOLD_TOLERANCE_S,
                           side="right") - 1


@dataclass
class Frame:
    """One recorded camera image, decoded only when an observation needs it."""

    stamp: float  # header stamp, seconds
    msgtype: str
    message: object

    def rgb(self) -> np.ndarray:
        """Return the image as (H, W, 3) uint8 RGB."""
        m = self.message
        if self.msgtype == "sensor_msgs/msg/CompressedImage":
            return compressed_to_rgb(m.format, m.data)
        return raw_to_rgb(m.encoding, m.height, m.width, m.step, m.data)


@dataclass
class Episode:
    """One episode of a bag as the policy sees it, step by step."""

    source: str  # the bag it came from
    index: int  # its position in the bag
    times: np.ndarray  # (N,) step instants, seconds, spaced 1/rate
    states: np.ndarray  # (N, S) float32 joint positions in the topic map's joint order
    frames: dict[str, list[Frame]]  # camera -> its frames in stamp order
    frame_indices: dict[str, np.ndarray]  # camera -> (N,) frame held at each step
    action_times: np.ndarray  # (M,) when each recorded action was meant to apply
    action_values: np.ndarray  # (M, D) float32
    joints: tuple[str, ...] = ()
    instruction: str = ""
    outcome: dict = field(default_factory=dict)  # the episode's end event, if recorded

    def __len__(self) -> int:
        return len(self.times)

    @property
    def duration(self) -> float:
        return float(self.times[-1] - self.times[0]) if len(self.times) else 0.0

    def observation(self, step: int) -> Observation:
        """Return the observation at a step; its stamp is the oldest camera frame it holds."""
        held = {camera: self.frames[camera][int(self.frame_indices[camera][step])]
                for camera in self.frames}
        try:
            images = {camera: frame.rgb() for camera, frame in held.items()}
        except InputError as exc:
            raise BagError(f"{self.source}: episode {self.index} step {step}: {exc}") from exc
        return Observation(stamp=min(frame.stamp for frame in held.values()), images=images,
                           state=self.states[step].copy(), instruction=self.instruction)

    def observations(self) -> Iterator[Observation]:
        """Yield the observations in step order."""
        for step in range(len(self)):
            yield self.observation(step)

    def recorded_actions(self, times: np.ndarray) -> np.ndarray:
        """Return the recorded action in force at each time, (len(times), D); NaN outside it."""
        times = np.asarray(times, dtype=np.float64)
        result = np.full((len(times), self.action_values.shape[1]), np.nan, dtype=np.float32)
        indices = hold_indices(self.action_times, times)
        inside = (indices >= 0) & (times <= self.action_times[-1] + _hold_margin(self.action_times))
        result[inside] = self.action_values[indices[inside]]
        return result


def _hold_margin(times: np.ndarray) -> float:
    """Return how long the last recorded action stays in force: one typical action period."""
    return float(np.median(np.diff(times))) if len(times) > 1 else 0.0


def _ordered(names, values, joints: tuple[str, ...], what: str, source: str) -> np.ndarray:
    """Return `values` in `joints` order, picked by name; unnamed values are taken as given."""
    values = np.asarray(values, dtype=np.float32)
    if not joints or not len(names):
        return values
    if len(values) != len(names):  # indexing by name raised an IndexError traceback
        raise BagError(f"{source}: a {what} names {len(names)} joints but has {len(values)} values")
    index = {name: i for i, name in enumerate(names)}
    if missing := [j for j in joints if j not in index]:
        raise BagError(f"{source}: {what} lacks joints {missing} (it has {list(names)})")
    return values[[index[j] for j in joints]]


def _action_samples(msgtype: str, message, receive_s: float, joints, source: str,
                    clock: str = "header"):
    """Return (start time, [(time, action vector), ...]) for one recorded action message."""
    def header_or_receive_time(header, receive_s):
        return _stamp(header, receive_s, clock)
    if msgtype == "dysta_ros/msg/ActionChunk":
        start = header_or_receive_time(message.header, receive_s)
        rows = np.asarray(message.actions, dtype=np.float32).reshape(message.horizon, message.dim)
        return start, [(start + k * message.dt, _ordered(message.names, row, joints,
                                                         "ActionChunk", source))
                       for k, row in enumerate(rows)]
    if msgtype == "trajectory_msgs/msg/JointTrajectory":
        start = header_or_receive_time(message.header, receive_s)
        return start, [(start + p.time_from_start.sec + p.time_from_start.nanosec * 1e-9,
                        _ordered(message.joint_names, p.positions, joints, "JointTrajectory",
                                 source)) for p in message.points]
    if msgtype == "sensor_msgs/msg/JointState":
        start = header_or_receive_time(message.header, receive_s)
        return start, [(start, _ordered(message.name, message.position, joints, "JointState",
                                        source))]
    return receive_s, [(receive_s, np.asarray(message.data, dtype=np.float32))]


def _action_timeline(entries: list) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-message samples; a newer command replaces an older one from its start on."""
    entries = sorted(entries, key=lambda entry: entry[0])
    times, values = [], []
    for i, (_, samples) in enumerate(entries):
        next_start = entries[i + 1][0] if i + 1 < len(entries) else np.inf
        for t, vector in samples:
            if t < next_start:
                times.append(t)
                values.append(vector)
    if not times:
        return np.zeros(0), np.zeros((0, 0), dtype=np.float32)
    return np.asarray(times), np.stack(values).astype(np.float32)


@dataclass
class _Window:
    """Receive-time bounds of one episode, and what its events said."""

    start: float
    end: float = np.inf
    start_event: dict = field(default_factory=dict)
    end_event: dict = field(default_factory=dict)


def _episode_windows(events: list[tuple[float, dict]]) -> list[_Window]:
    """Return episodes from start/end events; a bag without events is one episode."""
    windows: list[_Window] = []
    for receive_s, event in events:
        if event.get("event") == "start":
            if windows and windows[-1].end == np.inf:
                windows[-1].end = receive_s
            windows.append(_Window(receive_s, start_event=event))
        elif event.get("event") == "end" and windows and windows[-1].end == np.inf:
            windows[-1].end = receive_s
            windows[-1].end_event = event
    return windows or [_Window(-np.inf)]


def load_episodes(path: str | Path, topic_map: TopicMap | None = None,
                  rate_hz: float = 10.0, clock: str = "header") -> list[Episode]:
    """Read a bag's episodes, resampled at `rate_hz` with a zero-order hold.

    `clock` says which time places a message: its header stamp ("header", receive time
    where the stamp is zero) or when the recorder received it ("receive").
    """
    if rate_hz <= 0:
        raise BagError(f"{path}: rate_hz must be positive, got {rate_hz}")
    if clock not in CLOCKS:
        raise BagError(f"{path}: clock {clock!r} is not one of {list(CLOCKS)}")
    topic_map = topic_map or default_topic_map()
    source = str(path)
    with BagReader(path) as bag:
        _check_topics(bag, topic_map)
        images: dict[str, list[tuple[float, Frame]]] = {c: [] for c in topic_map.cameras}
        camera_of = {topic: camera for camera, topic in topic_map.cameras.items()}
        states, actions, instructions, events = [], [], [], []
        no_position = 0
        joints = topic_map.joints
        for raw in bag.messages(topic_map.topics()):
            receive_s = raw.stamp_ns * 1e-9
            message = bag.decode(raw)
            if raw.topic in camera_of:
                images[camera_of[raw.topic]].append(
                    (receive_s, Frame(_stamp(message.header, receive_s, clock),
                                      raw.msgtype, message)))
            elif raw.topic == topic_map.state_topic:
                if len(message.name) and not len(message.position):
                    no_position += 1  # velocity or effort only (JointState's empty array)
                    continue
                joints = joints or tuple(message.name)
                states.append((receive_s, header_or_receive_time(message.header, receive_s),
                               _ordered(message.name, message.position, joints, "JointState",
                                        source)))
            elif raw.topic == topic_map.action_topic:  # ordered below, once joints are known
                actions.append((receive_s, raw.msgtype, message))
            elif raw.topic == topic_map.instruction_topic:
                instructions.append((receive_s, message.data))
            elif raw.topic == topic_map.episode_topic:
                events.append((receive_s, _parse_event(message.data, source)))
        if lost := [t for t in topic_map.topics() if bag.message_counts.get(t, 0)
                    and t in bag.shortfalls and not bag.shortfalls[t][1]]:
            raise BagError(f"{source}: the index lists messages on {lost} but none could be read")
    # by name in the joints' order: also the actions recorded before the first joint state
    # named the joints (a map without joints takes their order from it)
    actions = [(receive_s, *_action_samples(msgtype, message, receive_s, joints, source, clock))
               for receive_s, msgtype, message in actions]
    if no_position:
        log.warning("%s: %d messages on %s have no positions (velocity or effort only); left out",
                    source, no_position, topic_map.state_topic)
    _check_clocks(source, states, clock, topic_map.state_topic)
    if clock == "receive":
        states = [(receive_s, receive_s, vector) for receive_s, _, vector in states]
    windows = _episode_windows(events)
    if topic_map.action_topic == topic_map.state_topic:
        actions = _next_state_actions(states, windows)

    episodes = []
    for window in windows:
        episode = _build_episode(source, len(episodes), window, images, states, actions,
                                 instructions, joints, rate_hz, topic_map)
        if episode is not None:
            episodes.append(episode)
    if not episodes:
        raise BagError(f"{source}: no episode has every camera "
                       f"({', '.join(topic_map.cameras.values())}), joint states and actions")
    return episodes


def _next_state_actions(states: list, windows: list[_Window]) -> list:
    """Return joint states as their own labels: the action at each state is the next state.

    Only a next state of the same episode: an episode's last state would otherwise be labelled
    with the next episode's first (after a reset, a jump the policy never commanded).
    """
    starts = np.asarray([w.start for w in windows])
    ends = np.asarray([w.end for w in windows])
    receive = np.asarray([receive_s for receive_s, _, _ in states])
    window = np.searchsorted(starts, receive, side="right") - 1
    window[(window < 0) | (receive >= ends[np.maximum(window, 0)])] = -1  # between episodes
    return [(receive_s, stamp, [(stamp, following[2])])
            for (receive_s, stamp, _), following, mine, theirs
            in zip(states, states[1:], window, window[1:]) if mine == theirs >= 0]


def _parse_event(text: str, source: str) -> dict:
    try:
        event = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BagError(f"{source}: episode event {text!r} is not JSON: {exc}") from exc
    return event if isinstance(event, dict) else {}


def check_bag(path: str | Path, topic_map: TopicMap) -> None:
    """Raise BagError unless the bag opens and has every topic the map needs, readable."""
    with BagReader(path) as bag:
        _check_topics(bag, topic_map)


def _check_topics(bag: BagReader, topic_map: TopicMap) -> None:
    """Raise BagError naming what the topic map needs and the bag lacks."""
    have = bag.topics
    problems = []
    for camera, topic in topic_map.cameras.items():
        if have.get(topic) not in IMAGE_TYPES:
            problems.append(f"camera {camera!r} topic {topic} "
                            f"({have.get(topic, 'missing')}; needs one of {list(IMAGE_TYPES)})")
    if have.get(topic_map.state_topic) != "sensor_msgs/msg/JointState":
        problems.append(f"state topic {topic_map.state_topic} ({have.get(topic_map.state_topic, 'missing')})")
    if topic_map.action_topic == topic_map.state_topic:
        if topic_map.action_type != "sensor_msgs/msg/JointState":
            problems.append(f"action topic {topic_map.action_topic} is the state topic, so "
                            f"action_type must be sensor_msgs/msg/JointState (the next state "
                            f"is the action), not {topic_map.action_type}")
    elif have.get(topic_map.action_topic) != topic_map.action_type:
        problems.append(f"action topic {topic_map.action_topic} of type {topic_map.action_type} "
                        f"({have.get(topic_map.action_topic, 'missing')})")
    if problems:
        counts = bag.message_counts
        listing = ", ".join(f"{topic} ({msgtype}, {counts.get(topic, 0)} messages)"
                            for topic, msgtype in sorted(have.items()))
        raise BagError(f"{bag.path}: does not match topic map {topic_map.source}: "
                       + "; ".join(problems) + f". The bag has: {listing}. Write a topic map "
                       f"for this bag (config/bag_topics/*.yaml) and pass it with --topic-map")
    needed = [*topic_map.cameras.values(), topic_map.state_topic, topic_map.action_topic]
    if unreadable := {t: bag.unreadable[t] for t in needed if t in bag.unreadable}:
        raise BagError(f"{bag.path}: topics the topic map needs cannot be decoded: "
                       + "; ".join(f"{t}: {why}" for t, why in unreadable.items()))


def _build_episode(source, index, window, images, states, actions, instructions, joints,
                   rate_hz, topic_map) -> Episode | None:
    def inside(receive_s: float) -> bool:
        return window.start <= receive_s < window.end

    frames = {camera: sorted((f for r, f in items if inside(r)), key=lambda f: f.stamp)
              for camera, items in images.items()}
    held_states = sorted(((stamp, vector) for r, stamp, vector in states if inside(r)),
                         key=lambda item: item[0])
    times, values = _action_timeline([(start, samples) for r, start, samples in actions
                                      if inside(r)])
    if not held_states or not len(times) or not all(frames.values()):
        return None
    state_times = np.asarray([stamp for stamp, _ in held_states])
    # steps start once every input is there and the robot has been commanded (there is a
    # recorded action to compare with); they end with the last frame or joint state
    first = max([frames_[0].stamp for frames_ in frames.values()] + [state_times[0], times[0]])
    last = min([frames_[-1].stamp for frames_ in frames.values()] + [state_times[-1]])
    steps = np.arange(first, last + HOLD_TOLERANCE_S, 1.0 / rate_hz)
    if not len(steps):
        return None
    frame_indices = {camera: hold_indices(np.asarray([f.stamp for f in frames_]), steps)
                     for camera, frames_ in frames.items()}
    state_values = np.stack([vector for _, vector in held_states])
    return Episode(
        source=source, index=index, times=steps,
        states=state_values[hold_indices(state_times, steps)].astype(np.float32),
        frames=frames, frame_indices=frame_indices, action_times=times, action_values=values,
        joints=tuple(joints), instruction=_instruction(instructions, window, topic_map),
        outcome=window.end_event)


def _instruction(instructions, window: _Window, topic_map: TopicMap) -> str:
    """Return the instruction in force when the episode started (latched ones arrive early)."""
    if text := window.start_event.get("instruction"):
        return str(text)
    before = [text for receive_s, text in instructions if receive_s <= window.start]
    during = [text for receive_s, text in instructions if window.start < receive_s < window.end]
    if before:
        return before[-1]
    return during[0] if during else topic_map.instruction
