"""What a bag holds, as a user's first look at it: topics, counts, rates, episodes, matches."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from dysta_ros.bags.episodes import load_episodes
from dysta_ros.bags.rosbag import BagReader
from dysta_ros.bags.topic_map import TopicMap, default_topic_map
from dysta_ros.cli_options import add_json_argument, json_to_stdout, write_json
from dysta_ros.errors import BagError, ConfigError
from dysta_ros.results import result_document


def bag_info(path: str | Path, topic_map: TopicMap | None = None) -> dict:
    """Describe a bag: per topic type, counts (index and read), rate; episodes; map matches.

    Reads every message (undecoded) so the counts are what a reader gets, not only what the
    index claims.
    """
    topic_map = topic_map or default_topic_map()
    stamps: dict[str, list[int]] = {}
    with BagReader(path) as bag:
        for message in bag.messages():
            stamps.setdefault(message.topic, []).append(message.stamp_ns)
        counts, types = bag.message_counts, bag.topics
        state_names = _state_joint_names(bag, topic_map.state_topic)
        unreadable, shortfalls, notes = dict(bag.unreadable), dict(bag.shortfalls), list(bag.notes)
    topics = {}
    for topic, msgtype in sorted(types.items()):
        times = np.sort(np.asarray(stamps.get(topic, []), dtype=np.int64))
        # the median interval: pauses between episodes don't lower a sensor's rate
        interval_s = float(np.median(np.diff(times))) * 1e-9 if len(times) > 1 else 0.0
        topics[topic] = {"type": msgtype, "count": counts.get(topic, 0), "read": len(times),
                         "rate_hz": round(1.0 / interval_s, 3) if interval_s > 0 else None}
        if topic in unreadable:
            topics[topic]["unreadable"] = unreadable[topic]
    everything = [t for times in stamps.values() for t in times]
    duration_s = (max(everything) - min(everything)) * 1e-9 if everything else 0.0
    info = {"path": str(path), "duration_s": round(duration_s, 6), "topics": topics,
            "shortfalls": {t: {"index": a, "read": b} for t, (a, b) in shortfalls.items()},
            "notes": notes, "topic_map": topic_map.source,
            "cameras": {camera: {"topic": topic, "found": types.get(topic) is not None}
                        for camera, topic in topic_map.cameras.items()},
            "joints": {"state_topic": topic_map.state_topic, "in_bag": state_names,
                       "wanted": list(topic_map.joints),
                       "missing": [j for j in topic_map.joints if j not in state_names]}}
    try:
        episodes = load_episodes(path, topic_map)
        info["episodes"] = [{"index": e.index, "steps": len(e), "duration_s": round(e.duration, 3),
                             "instruction": e.instruction} for e in episodes]
    except BagError as exc:
        info["episodes"] = []
        info["episodes_error"] = str(exc)
    return info


def _state_joint_names(bag: BagReader, topic: str) -> list[str]:
    """Return the joint names of the first decodable JointState on `topic`."""
    if bag.topics.get(topic) != "sensor_msgs/msg/JointState" or topic in bag.unreadable:
        return []
    for message in bag.messages([topic]):
        try:
            return list(bag.decode(message).name)
        except BagError:
            return []
    return []


def format_bag_info(info: dict) -> str:
    """Return `bag_info`'s description as text for a terminal."""
    lines = [f"bag {info['path']}: {info['duration_s']:.3f} s, {len(info['topics'])} topics"]
    width = max((len(t) for t in info["topics"]), default=5)
    for topic, entry in info["topics"].items():
        rate = f"{entry['rate_hz']:.2f} Hz" if entry["rate_hz"] else "-"
        count = str(entry["count"]) if entry["read"] == entry["count"] else \
            f"{entry['read']} of {entry['count']}"
        flag = f"  UNREADABLE: {entry['unreadable']}" if "unreadable" in entry else ""
        lines.append(f"  {topic:<{width}}  {entry['type']:<36} {count:>8} msgs  {rate}{flag}")
    for topic, short in info["shortfalls"].items():
        lines.append(f"  lost: {topic}: index lists {short['index']}, read {short['read']}")
    lines += [f"  note: {note}" for note in info["notes"]]
    lines.append(f"topic map {info['topic_map']}:")
    for camera, entry in info["cameras"].items():
        lines.append(f"  camera {camera}: {entry['topic']} "
                     f"{'found' if entry['found'] else 'MISSING'}")
    joints = info["joints"]
    lines.append(f"  joints on {joints['state_topic']}: {joints['in_bag'] or 'none'}"
                 + (f"; missing {joints['missing']}" if joints["missing"] else ""))
    if info["episodes"]:
        lines.append(f"episodes: {len(info['episodes'])}")
        lines += [f"  {e['index']}: {e['steps']} steps, {e['duration_s']:.2f} s, "
                  f"{e['instruction']!r}" for e in info["episodes"]]
    else:
        lines.append(f"episodes: none ({info.get('episodes_error', 'no episode found')})")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare `dysta-ros bag-info`'s arguments."""
    parser.add_argument("bag", metavar="BAG", help="rosbag2 directory or .mcap/.db3 file")
    parser.add_argument("--topic-map", default="sim_arm",
                        help="bag topic mapping: a name in config/bag_topics/ or a YAML path")
    add_json_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Print what the bag holds; return the exit status."""
    try:
        info = bag_info(args.bag, TopicMap.load(args.topic_map))
    except (BagError, ConfigError) as exc:
        print(f"dysta-ros bag-info: {exc}", file=sys.stderr)
        return 1
    if not json_to_stdout(args):
        print(format_bag_info(info))
    write_json(args.json, result_document([info], {"path": args.bag, "kind": "bag",
                                                   "topic_map": args.topic_map}))
    return 0
