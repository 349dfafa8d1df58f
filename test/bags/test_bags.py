"""rosbag2 files: write, read back, episodes at the policy rate, other robots, damaged bags."""

from __future__ import annotations

import collections
import shutil

import cv2
import numpy as np
import pytest
from bag_helpers import (
    JOINTS,
    SIZE,
    BagSpec,
    _header,
    expert_action,
    frame_pixels,
    joint_positions,

    write_episode_bag,
)
from builtin_interfaces.msg import Duration
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CompressedImage, JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from dysta_ros.bags import BagReader, BagWriter, TopicMap, TopicQos, load_episodes
from dysta_ros.errors import BagError, ConfigError
from dysta_ros.msg import ActionChunk


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_round_trip_keeps_every_message_byte_for_byte(tmp_path, storage):
    chunk = ActionChunk(header=_header(12.5, "base_link"), names=JOINTS, horizon=2, dim=6,
                        dt=0.05, actions=list(np.arange(12, dtype=np.float32)), strategy="full")
    written = [("/dysta/action_chunk", 1_000, serialize_message(chunk)),
               ("/dysta/instruction", 2_000, serialize_message(String(data="pick the cube"))),
               ("/dysta/action_chunk", 3_000, serialize_message(chunk))]
    with BagWriter(tmp_path / "bag", storage=storage) as bag:
        bag.add_topic("/dysta/action_chunk", "dysta_ros/msg/ActionChunk")
        bag.add_topic("/dysta/instruction", "std_msgs/msg/String", TopicQos(transient_local=True))
        for topic, stamp, data in written:
            bag.write(topic, stamp, data)

    with BagReader(tmp_path / "bag") as bag:
        read = [(m.topic, m.stamp_ns, m.data) for m in bag.messages()]
        assert bag.topics == {"/dysta/action_chunk": "dysta_ros/msg/ActionChunk",
                              "/dysta/instruction": "std_msgs/msg/String"}
        assert bag.qos("/dysta/instruction").transient_local
        assert not bag.qos("/dysta/action_chunk").transient_local
        decoded = bag.decode(next(bag.messages(["/dysta/action_chunk"])))
    assert read == written
    assert deserialize_message(read[0][2], ActionChunk) == chunk
    # the custom type decodes without ROS through the typestore built from msg/
    assert decoded.strategy == "full" and decoded.dt == pytest.approx(0.05)
    np.testing.assert_array_equal(decoded.actions, np.arange(12, dtype=np.float32))


def test_writer_refuses_to_overwrite_and_unknown_types(tmp_path):
    (tmp_path / "bag").mkdir()
    with pytest.raises(BagError, match="exists already"):
        BagWriter(tmp_path / "bag")
    with BagWriter(tmp_path / "other") as bag, pytest.raises(BagError, match="no_pkg/msg/Nope"):
        bag.add_topic("/x", "no_pkg/msg/Nope")


@pytest.fixture(scope="module")
def episode_bag(tmp_path_factory):
    return write_episode_bag(tmp_path_factory.mktemp("bags") / "episodes")


def test_episodes_are_split_and_resampled_at_the_policy_rate(episode_bag):
    episodes = load_episodes(episode_bag, rate_hz=10.0)
    assert len(episodes) == 2
    for episode in episodes:
        assert 10 <= len(episode) <= 12  # 1.2 s at 10 Hz
        np.testing.assert_allclose(np.diff(episode.times), 0.1, atol=1e-6)
        assert episode.joints == tuple(JOINTS)
    assert episodes[0].instruction == "touch the red cube 0"
    assert episodes[1].instruction == "touch the red cube 1"
    assert episodes[0].outcome["success"] is True and episodes[1].outcome["success"] is False
    assert episodes[1].times[0] > episodes[0].times[-1] + 0.4  # the gap between them is not used


def test_observations_hold_the_newest_frame_by_header_stamp(episode_bag):
    episode = load_episodes(episode_bag, rate_hz=15.0)[0]
    for step in range(len(episode)):
        t = episode.times[step]
        observation = episode.observation(step)
        main = episode.frames["main"][episode.frame_indices["main"][step]]
        following = episode.frames["main"][episode.frame_indices["main"][step] + 1:]
        # newest by header stamp, although it arrived 30 ms later than that
        assert main.stamp <= t and (not following or following[0].stamp > t)
        assert observation.stamp <= t
        np.testing.assert_array_equal(observation.images["main"], frame_pixels(0, main.stamp))
        wrist = episode.frames["wrist"][episode.frame_indices["wrist"][step]]
        np.testing.assert_array_equal(observation.images["wrist"], frame_pixels(1, wrist.stamp))
        assert observation.images["wrist"].shape == (SIZE, SIZE, 3)
        # joint states were recorded in reverse order: they are picked by name
        state_stamp = np.floor(round((t - 1000.0) * 50, 6)) / 50 + 1000.0
        np.testing.assert_allclose(observation.state, joint_positions(state_stamp), atol=1e-5)


def test_recorded_actions_follow_the_chunks(episode_bag):
    episode = load_episodes(episode_bag, rate_hz=10.0)[0]
    chunk_stamps = 1000.0 + np.arange(5) * 0.1  # a chunk every 0.1 s from the episode start
    expected = np.stack([expert_action(t) for t in chunk_stamps])
    # held between samples: 50 ms after each one the same action is in force
    np.testing.assert_allclose(episode.recorded_actions(chunk_stamps + 0.05), expected, atol=1e-6)
    beyond = episode.recorded_actions(np.array([episode.times[-1] + 5.0, episode.times[0] - 5.0]))
    assert np.isnan(beyond).all()


def test_sqlite3_bags_give_the_same_episodes(tmp_path, episode_bag):
    spec = BagSpec(episodes=1)
    mcap = load_episodes(write_episode_bag(tmp_path / "a", spec, "mcap"))[0]
    sqlite = load_episodes(write_episode_bag(tmp_path / "b", spec, "sqlite3"))[0]
    np.testing.assert_array_equal(mcap.times, sqlite.times)
    np.testing.assert_array_equal(mcap.states, sqlite.states)
    np.testing.assert_array_equal(mcap.observation(3).images["wrist"],
                                  sqlite.observation(3).images["wrist"])


def test_another_robots_bag_reads_through_a_topic_map(tmp_path):
    """Compressed images, a trajectory controller's commands, no episode or instruction topic."""
    joints = ["shoulder", "elbow"]
    ok, jpeg = cv2.imencode(".png", np.full((16, 20, 3), (10, 20, 30), np.uint8))  # BGR
    assert ok
    with BagWriter(tmp_path / "ur") as bag:
        bag.add_topic("/cam/compressed", "sensor_msgs/msg/CompressedImage")
        bag.add_topic("/robot/joint_states", "sensor_msgs/msg/JointState")
        bag.add_topic("/arm/joint_trajectory", "trajectory_msgs/msg/JointTrajectory")
        for k in range(20):
            t = 50.0 + k * 0.05
            ns = int(t * 1e9)
            bag.write("/cam/compressed", ns, serialize_message(CompressedImage(
                header=_header(t, "cam"), format="png", data=jpeg.tobytes())))
            bag.write("/robot/joint_states", ns, serialize_message(JointState(
                header=_header(t, "base"), name=["elbow", "shoulder", "wrist"],
                position=[2.0 * t, t, -1.0])))
            if k % 4 == 0:
                bag.write("/arm/joint_trajectory", ns, serialize_message(JointTrajectory(
                    header=_header(t, "base"), joint_names=["elbow", "shoulder"],
                    points=[JointTrajectoryPoint(positions=[k + 0.5, float(k)],
                                                 time_from_start=Duration(sec=0, nanosec=0))])))
    topic_map = TopicMap.from_dict({
        "cameras": {"front": "/cam/compressed"}, "state_topic": "/robot/joint_states",
        "joints": joints, "action_topic": "/arm/joint_trajectory",
        "action_type": "trajectory_msgs/msg/JointTrajectory", "instruction": "stack blocks"})
    (episode,) = load_episodes(tmp_path / "ur", topic_map, rate_hz=5.0)
    observation = episode.observation(1)
    assert observation.images["front"][0, 0].tolist() == [30, 20, 10]  # RGB
    assert observation.instruction == "stack blocks"
    np.testing.assert_allclose(observation.state, [episode.times[1], 2 * episode.times[1]],
                               rtol=1e-6)
    np.testing.assert_allclose(episode.recorded_actions(np.array([50.25])), [[4.0, 4.5]])


def test_topic_map_errors_name_the_field_and_the_choices(tmp_path):
    with pytest.raises(ConfigError, match="action_type .*JointTrajectory"):
        TopicMap.from_dict({"cameras": {"a": "/a"}, "action_type": "geometry_msgs/msg/Twist"})
    with pytest.raises(ConfigError, match="unknown keys \\['camera'\\]"):
        TopicMap.from_dict({"camera": "/a"})
    with pytest.raises(ConfigError, match="sim_arm"):
        TopicMap.load("no_such_robot")
    assert TopicMap.load("sim_arm").cameras == {"main": "/camera/image_raw",
                                                "wrist": "/wrist_camera/image_raw"}


def test_a_bag_without_the_mapped_topics_says_what_is_missing(tmp_path):
    with BagWriter(tmp_path / "bag") as bag:
        bag.add_topic("/chatter", "std_msgs/msg/String")
        bag.write("/chatter", 1, serialize_message(String(data="hi")))
    with pytest.raises(BagError, match=r"camera 'main' topic /camera/image_raw "
                                       r".*/chatter \(std_msgs/msg/String, 1 messages\)"):
        load_episodes(tmp_path / "bag")


def _only_file(bag_dir, suffix):
    (path,) = bag_dir.glob(f"*{suffix}")
    return path


@pytest.mark.parametrize("storage,suffix", [("mcap", ".mcap"), ("sqlite3", ".db3")])
def test_truncated_bag_gives_an_error_naming_the_file(tmp_path, storage, suffix):
    bag_dir = write_episode_bag(tmp_path / "bag", BagSpec(episodes=1), storage)
    data_file = _only_file(bag_dir, suffix)
    data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])
    with pytest.raises(BagError, match=str(bag_dir)):
        load_episodes(bag_dir)


def test_corrupt_bag_gives_an_error_naming_the_file(tmp_path):
    bag_dir = write_episode_bag(tmp_path / "bag", BagSpec(episodes=1))
    data_file = _only_file(bag_dir, ".mcap")
    data = bytearray(data_file.read_bytes())
    data[: len(data) // 2] = b"\xff" * (len(data) // 2)
    data_file.write_bytes(bytes(data))
    with pytest.raises(BagError, match=str(bag_dir)):
        load_episodes(bag_dir)
    (bag_dir / "metadata.yaml").write_text("rosbag2_bagfile_information: [not, a, mapping")
    with pytest.raises(BagError, match="metadata.yaml"):
        load_episodes(bag_dir)
    with pytest.raises(BagError, match="no such bag"):
        load_episodes(tmp_path / "missing")


def test_a_bag_whose_recorder_died_still_reads_without_metadata(tmp_path):
    bag_dir = write_episode_bag(tmp_path / "bag", BagSpec(episodes=1))
    (bag_dir / "metadata.yaml").unlink()
    assert len(load_episodes(bag_dir)) == 1
    copy = tmp_path / "copy"
    shutil.copytree(bag_dir, copy)
    shutil.copy(_only_file(bag_dir, ".mcap"), copy / "second.mcap")
    # several storage files without metadata: a split bag, every file read by its own index
    with BagReader(copy) as bag:
        read = collections.Counter(m.topic for m in bag.messages())
        assert dict(read) == bag.message_counts and not bag.shortfalls
    with BagReader(bag_dir) as single:
        assert {t: 2 * n for t, n in single.message_counts.items()} == dict(read)



