"""Read and write rosbag2 files (MCAP or sqlite3) with `rosbags`, no ROS install needed.

Messages stay raw CDR bytes until someone asks for a decoded one: the bag and live topics
share that wire format, so a player publishes them and a recorder writes them untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rosbags.interfaces import (
    ConnectionExtRosbag2,
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


class BagReader:
    """Read a rosbag2 directory, or a single .mcap / .db3 file.

    Every failure to read (missing, truncated, corrupt, unsupported) raises BagError naming
    the file, whatever the storage library raised underneath.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._reader = None
        self.typestore = None

    def __enter__(self) -> BagReader:
        if not self.path.exists():
            raise BagError(f"{self.path}: no such bag")
        try:
            self._reader = Reader(self._storage_path())
            self._reader.open()
            self.typestore = typestore_for_bag(self._reader.connections)
        except BagError:
            raise
        except Exception as exc:  # the storage layers raise many kinds on damaged files
            raise BagError(f"{self.path}: cannot open rosbag2 (corrupt, truncated or "
                           f"unsupported): {type(exc).__name__}: {exc}") from exc
        return self

    def _storage_path(self) -> Path:
        """Return what to open: a recorder killed mid-bag leaves its .mcap without metadata.yaml."""
        if self.path.is_dir() and not (self.path / "metadata.yaml").exists():
            files = sorted(self.path.glob("*.mcap")) + sorted(self.path.glob("*.db3"))
            if len(files) == 1:
                return files[0]
            raise BagError(f"{self.path}: no metadata.yaml and not exactly one .mcap/.db3 file")
        return self.path

    def __exit__(self, *exc_info) -> None:
        if self._reader is not None and self._reader.is_open:
            self._reader.close()

    @property
    def topics(self) -> dict[str, str]:
        """Return topic -> message type."""
        return {c.topic: c.msgtype for c in self._reader.connections}

    @property
    def message_counts(self) -> dict[str, int]:
        """Return topic -> number of messages, from the bag's index."""
        counts: dict[str, int] = {}
        for connection in self._reader.connections:
            counts[connection.topic] = counts.get(connection.topic, 0) + connection.msgcount
        return counts

    def qos(self, topic: str) -> TopicQos:
        """Return the QoS the topic was offered with when recorded (defaults if unrecorded)."""
        for connection in self._reader.connections:
            if connection.topic == topic and isinstance(connection.ext, ConnectionExtRosbag2):
                for profile in connection.ext.offered_qos_profiles:
                    return TopicQos(
                        reliable=profile.reliability != QosReliability.BEST_EFFORT,
                        transient_local=profile.durability == QosDurability.TRANSIENT_LOCAL)
        return TopicQos()

    def messages(self, topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
        """Yield messages in recording order, optionally only those of `topics`."""
        wanted = None if topics is None else set(topics)
        connections = [c for c in self._reader.connections
                       if wanted is None or c.topic in wanted]
        if not connections:
            return
        try:
            for connection, stamp_ns, data in self._reader.messages(connections=connections):
                yield BagMessage(connection.topic, connection.msgtype, stamp_ns, bytes(data))
        except Exception as exc:  # a damaged chunk shows up only when it is read
            raise BagError(f"{self.path}: cannot read messages (corrupt or truncated): "
                           f"{type(exc).__name__}: {exc}") from exc

    def decode(self, message: BagMessage):
        """Deserialize a message into a rosbags message object."""
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
