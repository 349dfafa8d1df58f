"""Write bags the way rosbag2's C++ recorder lays them out, via the `mcap` package and sqlite3.

The forms follow rosbag2's storage plugins: MCAP profile "ros2", schemas in "ros2msg",
channel metadata `offered_qos_profiles` as a YAML string (plus `topic_type_hash` from Iron on);
metadata.yaml with `offered_qos_profiles` as a YAML string (version <= 8, Humble/Iron) or a
list (version 9, Jazzy on).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from mcap.writer import CompressionType, Writer

from dysta_ros.bags.typestore import package_typestore

INFINITE = {"sec": 9223372036, "nsec": 854775807}


def qos_profile(newer_fields: bool, enums_as_text: bool, depth: int | None = None) -> dict:
    """Return one offered QoS profile as rosbag2 serializes it."""
    depth = (10 if newer_fields else 0) if depth is None else depth
    profile = {"history": "keep_last" if enums_as_text else 1, "depth": depth,
               "reliability": "reliable" if enums_as_text else 1,
               "durability": "volatile" if enums_as_text else 2,
               "deadline": INFINITE, "lifespan": INFINITE,
               "liveliness": "automatic" if enums_as_text else 1,
               "liveliness_lease_duration": INFINITE, "avoid_ros_namespace_conventions": False}
    return profile


def write_rosbag2_mcap(path: Path, messages: list[tuple[str, str, int, bytes]], *,
                       distro: str = "jazzy", files: int = 1, chunk_size: int = 1 << 20,
                       metadata: bool = True, definitions: dict[str, str] | None = None,
                       channel_depth: int | None = None) -> Path:
    """Write (topic, msgtype, stamp_ns, cdr) messages as a rosbag2 MCAP bag of `files` files.

    `channel_depth` makes the storage file's QoS differ from metadata.yaml's (a recorder that
    adapted the profile after writing one of them).
    """
    typestore = package_typestore()
    path.mkdir()
    topics = {}
    for topic, msgtype, _, _ in messages:
        topics.setdefault(topic, msgtype)
    newer = distro != "humble"
    channel_qos = yaml.safe_dump([qos_profile(newer, enums_as_text=False, depth=channel_depth)])
    names = [f"{path.name}_{i}.mcap" for i in range(files)]
    per_file = [[] for _ in range(files)]
    for index, message in enumerate(sorted(messages, key=lambda m: m[2])):
        per_file[min(files - 1, index * files // len(messages))].append(message)
    for name, chunk in zip(names, per_file):
        with (path / name).open("wb") as stream:
            writer = Writer(stream, chunk_size=chunk_size, compression=CompressionType.ZSTD)
            writer.start(profile="ros2", library="rosbag2")
            channels = {}
            for topic, msgtype in topics.items():
                text = (definitions or {}).get(msgtype)
                if text is None:
                    text = typestore.generate_msgdef(msgtype)[0]
                schema = writer.register_schema(msgtype, "ros2msg", text.encode())
                meta = {"offered_qos_profiles": channel_qos}
                if newer:
                    meta["topic_type_hash"] = ""
                channels[topic] = writer.register_channel(topic, "cdr", schema, meta)
            for topic, _, stamp, data in chunk:
                writer.add_message(channels[topic], stamp, data, stamp)
            writer.finish()
    if metadata:
        write_metadata(path, names, messages, distro, "mcap")
    return path


def write_metadata(path: Path, names: list[str], messages, distro: str, storage: str) -> None:
    """Write metadata.yaml in the distribution's version (5 Humble, 8 Iron, 9 Jazzy on)."""
    version = {"humble": 5, "iron": 8}.get(distro, 9)
    stamps = [m[2] for m in messages]
    counts = {}
    for topic, msgtype, _, _ in messages:
        counts.setdefault((topic, msgtype), 0)
        counts[(topic, msgtype)] += 1
    profiles = [qos_profile(version >= 8, enums_as_text=version >= 9)]
    qos = profiles if version >= 9 else yaml.safe_dump(profiles)
    topics = []
    for (topic, msgtype), count in counts.items():
        entry = {"name": topic, "type": msgtype, "serialization_format": "cdr",
                 "offered_qos_profiles": qos}
        if version >= 8:
            entry["type_description_hash"] = package_typestore().hash_rihs01(msgtype) \
                if msgtype in package_typestore().types else ""
        topics.append({"topic_metadata": entry, "message_count": count})
    info = {"version": version, "storage_identifier": storage, "duration": {
        "nanoseconds": max(stamps) - min(stamps)},
        "starting_time": {"nanoseconds_since_epoch": min(stamps)},
        "message_count": len(messages), "topics_with_message_count": topics,
        "compression_format": "", "compression_mode": "", "relative_file_paths": names,
        "files": [{"path": n, "starting_time": {"nanoseconds_since_epoch": min(stamps)},
                   "duration": {"nanoseconds": 0}, "message_count": 0} for n in names]}
    if version >= 6:
        info["custom_data"] = {}
    if version >= 8:
        info["ros_distro"] = distro
    (path / "metadata.yaml").write_text(yaml.safe_dump({"rosbag2_bagfile_information": info}))
