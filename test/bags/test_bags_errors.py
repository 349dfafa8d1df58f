"""Bag errors say what to do: topic maps that don't match, joint states as labels, clocks."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from bag_helpers import JOINTS, BagSpec, expert_action, joint_positions, write_episode_bag

from dysta_ros.bags import BagReader, BagWriter, TopicMap, load_episodes
from dysta_ros.errors import BagError

CAMERAS = {"main": "/camera/image_raw", "wrist": "/wrist_camera/image_raw"}


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    return write_episode_bag(tmp_path_factory.mktemp("bags") / "bag",
                             BagSpec(episodes=1, seconds=0.6))


def test_a_topic_map_that_does_not_match_lists_the_bags_topics_and_names_the_flag(bag):
    with BagReader(bag) as reader:
        states = reader.message_counts["/joint_states"]
    with pytest.raises(BagError) as caught:
        load_episodes(bag, TopicMap(cameras={"main": "/front/image"}))
    text = str(caught.value)
    assert "camera 'main' topic /front/image (missing" in text
    assert f"/joint_states (sensor_msgs/msg/JointState, {states} messages)" in text
    assert "--topic-map" in text


def test_joint_states_as_their_own_labels_take_the_next_state_as_the_action(bag):
    topic_map = TopicMap(cameras=CAMERAS, joints=tuple(JOINTS), action_topic="/joint_states",
                         action_type="sensor_msgs/msg/JointState")
    [episode] = load_episodes(bag, topic_map, rate_hz=10.0)
    # the action recorded at each state's stamp is the state one sample (1/50 s) later
    expected = np.stack([joint_positions(t + 1 / 50) for t in episode.action_times])
    np.testing.assert_allclose(episode.action_values, expected, atol=1e-5)


def test_joint_states_as_labels_with_another_action_type_is_refused_saying_why(bag):
    topic_map = TopicMap(cameras=CAMERAS, action_topic="/joint_states",
                         action_type="std_msgs/msg/Float64MultiArray")
    with pytest.raises(BagError, match="the next state is the action"):
        load_episodes(bag, topic_map)


def test_stamps_on_another_clock_say_which_was_used_and_offer_the_other(bag, tmp_path, caplog):
    shifted = tmp_path / "shifted"
    with BagReader(bag) as source, BagWriter(shifted) as target:
        for topic, msgtype in source.topics.items():
            target.add_topic(topic, msgtype, source.qos(topic))
        for message in source.messages():  # received 100 s after their stamps: another clock
            target.write(message.topic, message.stamp_ns + 100 * 10**9, message.data)
    with caplog.at_level(logging.WARNING):
        [by_header] = load_episodes(shifted, rate_hz=10.0)
    assert "using header times; pass --time receive" in caplog.text
    [by_receive] = load_episodes(shifted, rate_hz=10.0, clock="receive")
    assert by_receive.times[0] - by_header.times[0] == pytest.approx(100.0, abs=0.1)
    with pytest.raises(BagError, match="clock 'wall'"):
        load_episodes(shifted, clock="wall")


def test_eval_checks_the_bag_against_the_topic_map_before_it_builds_any_model(bag, tmp_path):
    from dysta_ros.evaluation.open_loop import EvalConfig, run_open_loop

    topic_map = tmp_path / "front.yaml"
    topic_map.write_text("cameras: {front: /front/image}\n")
    config = EvalConfig(bags=[str(bag)], model=str(tmp_path / "no_such_checkpoint"),
                        topic_map=str(topic_map))
    # the bag error comes first: the (missing) checkpoint is never opened
    with pytest.raises(BagError, match="camera 'front' topic /front/image .*--topic-map"):
        run_open_loop(config, progress=False)


def _with_joint_state(bag, out, position: list[float]):
    """`bag` plus one JointState on /joint_states naming every joint, with `position` only."""
    from bag_helpers import ros_time
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Header

    with BagReader(bag) as source, BagWriter(out) as target:
        for topic, msgtype in source.topics.items():
            target.add_topic(topic, msgtype, source.qos(topic))
        messages = list(source.messages())
        for message in messages:
            target.write(message.topic, message.stamp_ns, message.data)
        middle = messages[len(messages) // 2].stamp_ns
        target.write("/joint_states", middle + 1, serialize_message(JointState(
            header=Header(stamp=ros_time(middle * 1e-9 - 0.002)), name=JOINTS, position=position,
            effort=[1.0] * len(JOINTS))))
    return out


def test_joint_states_without_positions_are_left_out_and_short_ones_named(bag, tmp_path, caplog):
    [expected] = load_episodes(bag, rate_hz=10.0)
    # an effort-only message (JointState's arrays may be empty) is not a position sample
    with caplog.at_level(logging.WARNING):
        [episode] = load_episodes(_with_joint_state(bag, tmp_path / "effort", []), rate_hz=10.0)
    assert "1 messages on /joint_states have no positions" in caplog.text
    np.testing.assert_array_equal(episode.states, expected.states)
    # fewer positions than names is a broken message: one line naming the bag (was an IndexError)
    with pytest.raises(BagError, match=r"short.*JointState names 6 joints but has 5 values"):
        load_episodes(_with_joint_state(bag, tmp_path / "short", [0.0] * 5), rate_hz=10.0)


def test_joint_states_as_labels_never_take_a_state_of_the_next_episode(tmp_path):
    bag = write_episode_bag(tmp_path / "two", BagSpec(episodes=2, seconds=0.6))
    topic_map = TopicMap(cameras=CAMERAS, joints=tuple(JOINTS), action_topic="/joint_states",
                         action_type="sensor_msgs/msg/JointState")
    first, second = load_episodes(bag, topic_map, rate_hz=10.0)
    # an episode's last state has no next state within it: it has no label, rather than the
    # first state of the next episode (after a reset: a jump no policy should be scored on)
    for episode in (first, second):
        expected = np.stack([joint_positions(t + 1 / 50) for t in episode.action_times])
        np.testing.assert_allclose(episode.action_values, expected, atol=1e-5)
    assert first.action_times[-1] < second.action_times[0] - 0.5


def test_actions_before_the_first_joint_state_are_put_in_joint_order_too(bag, tmp_path):
    # no joints in the map: the first JointState's order (the bag's states name the joints in
    # reverse) is the order; here the first chunks come before any state, as when a recorder
    # subscribes to the command topic first
    late = tmp_path / "late_states"
    with BagReader(bag) as source, BagWriter(late) as target:
        for topic, msgtype in source.topics.items():
            target.add_topic(topic, msgtype, source.qos(topic))
        messages = list(source.messages())
        first_chunk = min(m.stamp_ns for m in messages if m.topic == "/dysta/action_chunk")
        for message in messages:
            if message.topic != "/joint_states" or message.stamp_ns > first_chunk + 150_000_000:
                target.write(message.topic, message.stamp_ns, message.data)
    [episode] = load_episodes(late, TopicMap(cameras=CAMERAS), rate_hz=10.0)
    assert episode.joints == tuple(JOINTS[::-1])
    expected = np.stack([expert_action(t)[::-1] for t in episode.action_times])
    np.testing.assert_allclose(episode.action_values, expected, atol=1e-5)
