"""Bags in the forms rosbag2 writes on Humble..Kilted read completely, or say what they could not read."""

from __future__ import annotations

import collections
import logging
import sqlite3

import pytest
from rclpy.serialization import serialize_message
from rosbag2_format import write_metadata, write_rosbag2_mcap
from rosbags.rosbag2 import Reader
from sensor_msgs.msg import JointState
from std_msgs.msg import String

from dysta_ros.bags import BagReader
from dysta_ros.errors import BagError


def _messages(count: int = 30):
    out = []
    for i in range(count):
        out.append(("/joint_states", "sensor_msgs/msg/JointState", 1_000_000 + i * 1000,
                    serialize_message(JointState(name=["a"], position=[float(i)]))))
        if i % 3 == 0:
            out.append(("/dysta/instruction", "std_msgs/msg/String", 1_000_000 + i * 1000 + 1,
                        serialize_message(String(data=f"text {i}"))))
    return out


def _read_all(path):
    with BagReader(path) as bag:
        read = collections.Counter(m.topic for m in bag.messages())
        return dict(read), bag.message_counts, bag


def _expected(messages):
    return dict(collections.Counter(m[0] for m in messages))


@pytest.mark.parametrize("distro", ["humble", "iron", "jazzy", "kilted"])
@pytest.mark.parametrize("files", [1, 3])
def test_every_distributions_mcap_reads_every_message(tmp_path, distro, files):
    messages = _messages()
    path = write_rosbag2_mcap(tmp_path / "bag", messages, distro=distro, files=files,
                              chunk_size=200)
    read, counts, bag = _read_all(path)
    assert read == counts == _expected(messages)
    assert not bag.shortfalls and not bag.unreadable


def test_qos_that_differs_between_metadata_and_storage_still_reads(tmp_path):
    messages = _messages()
    path = write_rosbag2_mcap(tmp_path / "bag", messages, distro="jazzy", channel_depth=1)
    with Reader(path) as plain:  # matching on QoS (rosbags alone) yields nothing, silently
        assert sum(1 for _ in plain.messages()) == 0
    read, counts, _ = _read_all(path)
    assert read == counts == _expected(messages)


def test_sqlite3_bag_in_rosbag2_schema_reads_every_message(tmp_path):
    messages = _messages()
    path = tmp_path / "bag"
    path.mkdir()
    db = sqlite3.connect(path / "bag_0.db3")
    # rosbag2_storage_default_plugins' schema (Humble): topics, messages; no definitions
    db.executescript("CREATE TABLE topics(id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                     "type TEXT NOT NULL, serialization_format TEXT NOT NULL, "
                     "offered_qos_profiles TEXT NOT NULL);"
                     "CREATE TABLE messages(id INTEGER PRIMARY KEY, topic_id INTEGER NOT NULL, "
                     "timestamp INTEGER NOT NULL, data BLOB NOT NULL);"
                     "CREATE INDEX timestamp_idx ON messages (timestamp ASC);")
    ids = {}
    for topic, msgtype, _, _ in messages:
        if topic not in ids:
            ids[topic] = len(ids) + 1
            db.execute("INSERT INTO topics VALUES (?, ?, ?, 'cdr', '')",
                       (ids[topic], topic, msgtype))
    db.executemany("INSERT INTO messages(topic_id, timestamp, data) VALUES (?, ?, ?)",
                   [(ids[t], s, d) for t, _, s, d in messages])
    db.commit()
    db.close()
    write_metadata(path, ["bag_0.db3"], messages, "humble", "sqlite3")
    read, counts, _ = _read_all(path)
    assert read == counts == _expected(messages)


def test_missing_metadata_reads_every_storage_file_and_names_the_repair(tmp_path, caplog):
    messages = _messages()
    path = write_rosbag2_mcap(tmp_path / "bag", messages, files=2, metadata=False)
    with caplog.at_level(logging.WARNING):
        read, counts, bag = _read_all(path)
    assert read == counts == _expected(messages)
    assert "ros2 bag reindex" in caplog.text and "no metadata.yaml" in caplog.text


@pytest.mark.parametrize("metadata", [False, True])
def test_a_split_bag_of_many_files_read_by_its_own_files_yields_recording_order(tmp_path, metadata):
    # a killed recorder leaves bag_0 .. bag_11 without metadata.yaml (or with a truncated file):
    # sorted as text, bag_10 and bag_11 would come before bag_2
    messages = _messages(36)
    path = write_rosbag2_mcap(tmp_path / "bag", messages, files=12, metadata=metadata)
    if metadata:  # the last file ends early, so each file is opened on its own
        last = path / "bag_11.mcap"
        last.write_bytes(last.read_bytes()[:-20])
    with BagReader(path) as bag:
        stamps = [m.stamp_ns for m in bag.messages()]
    assert len(stamps) == len(messages)
    assert stamps == sorted(stamps)


def test_truncated_mcap_reads_every_complete_message_and_says_how_many_were_lost(tmp_path,
                                                                                  caplog):
    messages = _messages(60)
    path = write_rosbag2_mcap(tmp_path / "bag", messages, chunk_size=300)
    mcap = next(path.glob("*.mcap"))
    data = mcap.read_bytes()
    mcap.write_bytes(data[: len(data) // 3])  # the recorder was killed mid-file
    with caplog.at_level(logging.WARNING):
        read, counts, bag = _read_all(path)
    assert counts == _expected(messages)  # metadata.yaml still states what was recorded
    assert 0 < sum(read.values()) < len(messages) and bag.shortfalls
    for topic, (stated, got) in bag.shortfalls.items():
        assert (stated, got) == (counts[topic], read[topic])
        assert f"{stated - got} lost" in caplog.text
    assert "mcap recover" in caplog.text


def test_a_service_event_topic_with_a_bad_definition_never_blocks_the_others(tmp_path, caplog):
    messages = _messages() + [("/add/_service_event", "example_interfaces/srv/AddTwoInts_Event",
                               2_000_000, b"\x00\x01\x00\x00")]
    bad = {"example_interfaces/srv/AddTwoInts_Event": "service_msgs/ServiceEventInfo info\n"
           "AddTwoInts_Request[<=1] request\nthis is not a field !!\n"}
    path = write_rosbag2_mcap(tmp_path / "bag", messages, definitions=bad)
    with caplog.at_level(logging.WARNING):
        read, counts, bag = _read_all(path)
    assert read == counts == _expected(messages)  # raw messages of every topic still come
    assert set(bag.unreadable) == {"/add/_service_event"}
    assert caplog.text.count("/add/_service_event") == 1
    with BagReader(path) as bag:
        state = next(bag.messages(["/joint_states"]))
        assert list(bag.decode(state).position) == [0.0]
        event = next(bag.messages(["/add/_service_event"]))
        with pytest.raises(BagError, match="/add/_service_event"):
            bag.decode(event)


def test_an_unknown_type_without_definition_is_unreadable_and_named(tmp_path):
    messages = _messages() + [("/odd", "no_pkg/msg/Nope", 2_000_000, b"\x00\x01\x00\x00")]
    path = write_rosbag2_mcap(tmp_path / "bag", messages, definitions={"no_pkg/msg/Nope": ""})
    read, counts, bag = _read_all(path)
    assert read == counts == _expected(messages)
    assert "no_pkg/msg/Nope" in bag.unreadable["/odd"]


def test_a_ros1_bag_is_refused_with_the_conversion_command(tmp_path):
    ros1 = tmp_path / "old.bag"
    ros1.write_bytes(b"#ROSBAG V2.0\n" + b"\x00" * 64)
    with pytest.raises(BagError, match=r"ROS 1 bag.*rosbags-convert --src .*old\.bag --dst"):
        BagReader(ros1).__enter__()


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("mode", ["file", "message"])
def test_zstd_compressed_bags_read_every_message_decompressed(tmp_path, storage, mode):
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer

    from dysta_ros.bags.typestore import package_typestore

    messages = _messages()
    writer = Writer(tmp_path / "bag", version=Writer.VERSION_LATEST,
                    storage_plugin={"mcap": StoragePlugin.MCAP,
                                    "sqlite3": StoragePlugin.SQLITE3}[storage])
    writer.set_compression(CompressionMode[mode.upper()], CompressionFormat.ZSTD)
    with writer:
        connections = {}
        for topic, msgtype, stamp, data in messages:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype,
                                                           typestore=package_typestore())
            writer.write(connections[topic], stamp, data)
    with BagReader(tmp_path / "bag") as bag:
        got = [(m.topic, m.msgtype, m.stamp_ns, m.data) for m in bag.messages()]
        assert not bag.shortfalls
    assert sorted(got, key=lambda m: m[2]) == sorted(messages, key=lambda m: m[2])


def test_a_ros1_bag_under_another_name_or_in_a_directory_is_recognised(tmp_path):
    (tmp_path / "renamed.mcap").write_bytes(b"#ROSBAG V2.0\n" + b"\x00" * 64)
    with pytest.raises(BagError, match="ROS 1 bag.*rosbags-convert"):
        BagReader(tmp_path / "renamed.mcap").__enter__()
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "run.bag").write_bytes(b"#ROSBAG V2.0\n")
    with pytest.raises(BagError, match=r"ROS 1 bag.*--src .*run\.bag"):
        BagReader(folder).__enter__()
