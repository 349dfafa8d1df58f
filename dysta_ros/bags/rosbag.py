"""Read and write rosbag2 files (MCAP or sqlite3) with `rosbags`, no ROS install needed.

Messages stay raw CDR bytes until someone asks for a decoded one: the bag and live topics
share that wire format, so a player publishes them and a recorder writes them untouched.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml
from rosbags.interfaces import (
    Connection,
    ConnectionExtRosbag2,
    MessageDefinition,
    MessageDefinitionFormat,
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.rosbag2 import Reader, StoragePlugin, Writer

from dysta_ros.bags.typestore import package_typestore, typestore_for_bag
from dysta_ros.errors import BagError

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd  # rosbags depends on it

log = logging.getLogger(__name__)

STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}


@dataclass(frozen=True)
class TopicQos:
    """The two QoS settings that decide whether a subscriber sees a topic at all."""

    reliable: bool = True
    transient_local: bool = False  # latched: late subscribers get the last message


@dataclass(frozen=True)
class BagMessage:
    """One message of a bag, still serialized."""

    topic: str
    msgtype: str
    stamp_ns: int  # when it was recorded (receive time), not its header stamp
    data: bytes


def _to_rosbags_qos(qos: TopicQos) -> Qos:
    zero = QosTime(0, 0)
    return Qos(QosHistory.KEEP_LAST, 10,
               QosReliability.RELIABLE if qos.reliable else QosReliability.BEST_EFFORT,
               QosDurability.TRANSIENT_LOCAL if qos.transient_local else QosDurability.VOLATILE,
               zero, zero, QosLiveliness.AUTOMATIC, zero, False)


class BagWriter:
    """Write a rosbag2 directory; use as a context manager so metadata.yaml gets written."""

    def __init__(self, path: str | Path, storage: str = "mcap"):
        if storage not in STORAGES:
            raise BagError(f"{path}: storage {storage!r} is not one of {sorted(STORAGES)}")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"{self.path}: exists already; rosbag2 writers never overwrite")
        self.typestore = package_typestore()
        self._writer = Writer(self.path, version=Writer.VERSION_LATEST,
                              storage_plugin=STORAGES[storage])
        self._connections = {}

    def __enter__(self) -> BagWriter:
        self._writer.open()
        return self

    def __exit__(self, *exc_info) -> None:
        self._writer.close()

    def add_topic(self, topic: str, msgtype: str, qos: TopicQos = TopicQos()) -> None:
        """Declare a topic before writing to it; `msgtype` is like 'sensor_msgs/msg/Image'."""
        if msgtype not in self.typestore.types:
            raise BagError(f"{self.path}: unknown message type {msgtype!r} for {topic}")
        self._connections[topic] = self._writer.add_connection(
            topic, msgtype, typestore=self.typestore, offered_qos_profiles=[_to_rosbags_qos(qos)])

    def has_topic(self, topic: str) -> bool:
        """Return whether `topic` was declared."""
        return topic in self._connections

    def write(self, topic: str, stamp_ns: int, data: bytes) -> None:
        """Append one serialized (CDR) message."""
        self._writer.write(self._connections[topic], int(stamp_ns), data)

    def write_message(self, topic: str, stamp_ns: int, message) -> None:
        """Serialize a rosbags message object and append it."""
        connection = self._connections[topic]
        self.write(topic, stamp_ns, self.typestore.serialize_cdr(message, connection.msgtype))


class _RecoveredMcap:
    """The complete messages of an MCAP file that ends early (its recorder was killed)."""

    def __init__(self, path: Path):
        from mcap.exceptions import McapError
        from mcap.records import Channel, Message, Schema
        from mcap.stream_reader import StreamReader

        schemas, self.connections, self._messages = {}, [], []
        by_channel = {}
        self.complete = True
        with path.open("rb") as stream:
            try:
                for record in StreamReader(stream).records:
                    if isinstance(record, Schema):
                        schemas[record.id] = record
                    elif isinstance(record, Channel):
                        schema = schemas.get(record.schema_id)
                        by_channel[record.id] = Connection(
                            id=record.id, topic=record.topic,
                            msgtype=schema.name if schema else "",
                            msgdef=MessageDefinition(
                                MessageDefinitionFormat.MSG if schema and schema.encoding
                                == "ros2msg" else MessageDefinitionFormat.NONE,
                                schema.data.decode() if schema else ""),
                            digest="", msgcount=0,
                            ext=ConnectionExtRosbag2("cdr", []), owner=None)
                    elif isinstance(record, Message) and record.channel_id in by_channel:
                        self._messages.append((record.channel_id, record.log_time, record.data))
            except (McapError, EOFError, ValueError, OSError):
                self.complete = False  # the stream stops at the first incomplete record
        counts = collections.Counter(channel for channel, _, _ in self._messages)
        self.connections = [c._replace(msgcount=counts[c.id]) for c in by_channel.values()]
        self._messages.sort(key=lambda m: m[1])

    def messages(self, connections, start=None, stop=None):
        by_id = {c.id: c for c in connections}
        for channel, stamp, data in self._messages:
            if channel in by_id:
                yield by_id[channel], stamp, data

    def close(self) -> None:
        """Nothing stays open."""


MCAP_MAGIC = b"\x89MCAP0\r\n"


def _ends_early(path: Path) -> bool:
    """Return whether an MCAP file lacks its closing magic (the writer never finished)."""
    with path.open("rb") as stream:
        stream.seek(max(0, path.stat().st_size - len(MCAP_MAGIC)))
        return stream.read() != MCAP_MAGIC


def _split_order(path: Path) -> list:
    """Sort key of a split bag's files in recording order: bag_2 before bag_10 (numbers by value)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _starts_like_ros1(path: Path) -> bool:
    """Return whether a file opens with ROS 1's bag magic."""
    with path.open("rb") as stream:
        return stream.read(13) == b"#ROSBAG V2.0\n"


def _ros1_error(path: Path) -> BagError:
    destination = path.with_suffix("") if path.suffix == ".bag" else Path(f"{path}_ros2")
    return BagError(f"{path}: a ROS 1 bag; this package reads rosbag2. Convert it first: "
                    f"rosbags-convert --src {path} --dst {destination}")


class BagReader:
    """Read a rosbag2 directory, or a single .mcap / .db3 file.

    Every failure to read (missing, truncated, corrupt, unsupported) raises BagError naming
    the file, whatever the storage library raised underneath. A topic that cannot be decoded
    (no or unparsable definition, unknown type) is listed in `unreadable` and warned about
    once; the other topics read as usual. After reading, `shortfalls` lists every topic that
    yielded fewer messages than the bag's index states, and `notes` what the reader repaired.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._reader = None
        self._storages: list = []  # one per storage file, in recording order
        self._index: list[Connection] = []  # per topic: type and the count the bag states
        self._decompress = False
        self.typestore = None
        self.unreadable: dict[str, str] = {}
        self.shortfalls: dict[str, tuple[int, int]] = {}  # topic -> (index count, read)
        self.notes: list[str] = []

    def __enter__(self) -> BagReader:
        if not self.path.exists():
            raise BagError(f"{self.path}: no such bag")
        if self.path.is_file() and (self.path.suffix == ".bag" or _starts_like_ros1(self.path)):
            raise _ros1_error(self.path)
        try:
            self._open()
            self.typestore, self.unreadable = typestore_for_bag(self._index)
        except BagError:
            self.__exit__()
            raise
        except Exception as exc:  # the storage layers raise many kinds on damaged files
            self.__exit__()
            raise BagError(f"{self.path}: cannot open rosbag2 (corrupt, truncated or "
                           f"unsupported): {type(exc).__name__}: {exc}") from exc
        for topic, reason in self.unreadable.items():
            log.warning("%s: topic %s cannot be decoded and is skipped: %s", self.path, topic,
                        reason)
        for note in self.notes:
            log.warning("%s: %s", self.path, note)
        return self

    def _open(self) -> None:
        files = self._storage_files()
        if files is None:  # a complete rosbag2 directory: rosbags reads metadata.yaml
            self._reader = Reader(self.path)
            self._reader.open()
            self._storages = list(self._reader.storage.storages)
            self._index = list(self._reader.connections)
            self._decompress = self._reader.compression_mode == "message"
            return
        for file in files:
            if file.suffix == ".mcap" and _ends_early(file):
                storage = _RecoveredMcap(file)
                repair = f"mcap recover {file} -o {file.with_name(file.stem + '-recovered.mcap')}"
                if not any(c.msgcount for c in storage.connections):
                    raise BagError(f"{file}: ends before its first complete message (truncated "
                                   f"or not MCAP); nothing to read. Try: {repair}")
                self.notes.append(
                    f"{file.name} ends early (its recorder was killed?): read its "
                    f"{sum(c.msgcount for c in storage.connections)} complete messages; "
                    f"messages after the last complete record are lost. Repair: {repair}")
            else:
                reader = Reader(file)
                reader.open()
                storage = reader.storage
            self._storages.append(storage)
        self._index = self._metadata_index() or [c for s in self._storages
                                                 for c in s.connections]

    def _storage_files(self) -> list[Path] | None:
        """Return the storage files to open one by one, or None where metadata.yaml serves."""
        if self.path.is_file():
            return [self.path]
        files = (sorted(self.path.glob("*.mcap"), key=_split_order)
                 + sorted(self.path.glob("*.db3"), key=_split_order))
        if not (self.path / "metadata.yaml").exists():
            if not files:
                if any(self.path.glob("*.bag")):
                    raise _ros1_error(next(self.path.glob("*.bag")))
                raise BagError(f"{self.path}: no metadata.yaml and no .mcap/.db3 file")
            self.notes.append(f"no metadata.yaml: read {len(files)} storage file(s) by their "
                              f"own index; `ros2 bag reindex {self.path}` rewrites it")
            return files
        if any(f.suffix == ".mcap" and _ends_early(f) for f in files):
            return files
        return None

    def _metadata_index(self) -> list[Connection]:
        """Return the counts metadata.yaml states, where it exists beside recovered files."""
        path = self.path / "metadata.yaml" if self.path.is_dir() else None
        if path is None or not path.exists():
            return []
        try:
            info = yaml.safe_load(path.read_text())["rosbag2_bagfile_information"]
            entries = info["topics_with_message_count"]
            recorded = {c.topic: c for s in self._storages for c in s.connections}
            return [(recorded.get(e["topic_metadata"]["name"]) or Connection(
                0, e["topic_metadata"]["name"], e["topic_metadata"]["type"],
                MessageDefinition(MessageDefinitionFormat.NONE, ""), "", 0,
                ConnectionExtRosbag2("cdr", []), None))._replace(msgcount=int(e["message_count"]))
                for e in entries]
        except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
            raise BagError(f"{path}: not rosbag2 metadata: {exc}") from exc

    def __exit__(self, *exc_info) -> None:
        if self._reader is not None and self._reader.is_open:
            self._reader.close()
        elif self._reader is None:
            for storage in self._storages:
                with contextlib.suppress(Exception):
                    storage.close()
        self._storages = []

    @property
    def topics(self) -> dict[str, str]:
        """Return topic -> message type."""
        return {c.topic: c.msgtype for c in self._index}

    @property
    def message_counts(self) -> dict[str, int]:
        """Return topic -> number of messages, from the bag's index."""
        counts: dict[str, int] = {}
        for connection in self._index:
            counts[connection.topic] = counts.get(connection.topic, 0) + connection.msgcount
        return counts

    def qos(self, topic: str) -> TopicQos:
        """Return the QoS the topic was offered with when recorded (defaults if unrecorded)."""
        for connection in self._index:
            if connection.topic == topic and isinstance(connection.ext, ConnectionExtRosbag2):
                for profile in connection.ext.offered_qos_profiles:
                    return TopicQos(
                        reliable=profile.reliability != QosReliability.BEST_EFFORT,
                        transient_local=profile.durability == QosDurability.TRANSIENT_LOCAL)
        return TopicQos()

    def messages(self, topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
        """Yield messages in recording order, optionally only those of `topics`.

        Storage connections are matched to topics by name and type only: rosbag2 writes
        the QoS of metadata.yaml and of the storage file in different forms, and matching
        on them (as rosbags does) silently drops every message.
        """
        wanted = set(self.topics) if topics is None else set(topics) & set(self.topics)
        read = collections.Counter()
        try:
            for storage in self._storages:
                connections = [c for c in storage.connections if c.topic in wanted]
                if not connections:
                    continue
                for connection, stamp_ns, data in storage.messages(connections):
                    if self._decompress:
                        data = zstd.decompress(data)
                    read[connection.topic] += 1
                    yield BagMessage(connection.topic, connection.msgtype, stamp_ns, bytes(data))
        except Exception as exc:  # a damaged chunk shows up only when it is read
            raise BagError(f"{self.path}: cannot read messages (corrupt or truncated): "
                           f"{type(exc).__name__}: {exc}") from exc
        counts = self.message_counts
        for topic in sorted(wanted):
            if read[topic] != counts[topic] and topic not in self.shortfalls:
                self.shortfalls[topic] = (counts[topic], read[topic])
                log.warning("%s: topic %s: the bag's index lists %d messages, %d could be "
                            "read (%d lost)", self.path, topic, counts[topic], read[topic],
                            counts[topic] - read[topic])

    def decode(self, message: BagMessage):
        """Deserialize a message into a rosbags message object."""
        if message.topic in self.unreadable:
            raise BagError(f"{self.path}: topic {message.topic} cannot be decoded: "
                           f"{self.unreadable[message.topic]}")
        data = message.data
        try:
            if len(data) < 4 or data[:2] not in (b"\x00\x00", b"\x00\x01"):
                raise ValueError(f"not CDR (encapsulation header {data[:4].hex()})")
            # Not typestore.deserialize_cdr: it rejects trailing bytes, and rclpy's Fast-CDR
            # serializer reports a few bytes more than the message occupies.
            msgdef = self.typestore.get_msgdef(message.msgtype)
            read = msgdef.deserialize_cdr_le if data[1] else msgdef.deserialize_cdr_be
            return read(memoryview(data)[4:], 0, msgdef.cls, self.typestore)[0]
        except Exception as exc:
            raise BagError(f"{self.path}: cannot decode a {message.msgtype} message on "
                           f"{message.topic} at {message.stamp_ns} ns: {exc}") from exc


def _is_bag(path: Path) -> bool:
    if path.is_file():
        return path.suffix in (".mcap", ".db3")
    return (path / "metadata.yaml").exists() or any(path.glob("*.mcap")) or any(path.glob("*.db3"))


def find_bags(paths: Iterable[str]) -> list[str]:
    """Expand bag arguments: a bag stays itself, a directory of bags or a glob gives each bag in it.

    A rosbag2 bag is itself a directory, so a directory counts as a bag when it holds
    metadata.yaml or storage files, and otherwise as a folder of bags (sorted, one level deep).
    """
    found: list[str] = []
    for argument in paths:
        if any(c in argument for c in "*?["):
            matches = [Path(m) for m in sorted(glob.glob(argument))]
            bags = [m for m in matches if _is_bag(m)]
            if not bags:
                raise BagError(f"{argument}: no bag matches this pattern")
        else:
            path = Path(argument)
            if not path.is_dir() or _is_bag(path):
                found.append(argument)  # BagReader names what is wrong with it, if anything
                continue
            bags = [child for child in sorted(path.iterdir()) if _is_bag(child)]
            if not bags:
                raise BagError(f"{path}: neither a bag nor a directory of bags (no metadata.yaml "
                               "or .mcap/.db3 in it or in its subdirectories)")
        found += [str(bag) for bag in bags]
    return list(dict.fromkeys(found))
