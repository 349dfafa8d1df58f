"""`dysta-ros bag-info`: a bag's topics, counts, rates, episodes and topic-map matches."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from bag_helpers import BagSpec, write_episode_bag

from dysta_ros.bags import TopicMap
from dysta_ros.bags.inspect import bag_info, format_bag_info


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    return write_episode_bag(tmp_path_factory.mktemp("bags") / "bag",
                             BagSpec(episodes=2, seconds=0.6, camera_hz=20.0, state_hz=50.0))


def test_bag_info_counts_rates_episodes_and_matches(bag):
    info = bag_info(bag)
    joints = info["topics"]["/joint_states"]
    assert joints["type"] == "sensor_msgs/msg/JointState"
    assert joints["count"] == joints["read"] == 2 * int(0.6 * 50)
    assert joints["rate_hz"] == pytest.approx(50.0, rel=1e-3)
    assert info["topics"]["/camera/image_raw"]["rate_hz"] == pytest.approx(20.0, rel=1e-3)
    assert len(info["episodes"]) == 2 and info["episodes"][1]["instruction"].endswith("1")
    assert info["cameras"]["wrist"] == {"topic": "/wrist_camera/image_raw", "found": True}
    assert info["joints"]["missing"] == [] and len(info["joints"]["in_bag"]) == 6
    assert info["duration_s"] > 1.2
    text = format_bag_info(info)
    assert "/joint_states" in text and "episodes: 2" in text and "50.00 Hz" in text


def test_bag_info_says_what_a_foreign_topic_map_misses(bag):
    other = TopicMap(cameras={"front": "/front/image"}, joints=("shoulder",))
    info = bag_info(bag, other)
    assert info["cameras"]["front"]["found"] is False
    assert info["joints"]["missing"] == ["shoulder"]
    assert info["episodes"] == [] and "--topic-map" in info["episodes_error"]
    assert "camera front: /front/image MISSING" in format_bag_info(info)


def test_bag_info_command_prints_json(bag):
    result = subprocess.run([sys.executable, "-m", "dysta_ros.cli", "bag-info", str(bag),
                             "--json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["topics"]["/dysta/action_chunk"]["count"] == 12


def test_info_on_a_bag_describes_the_bag(bag):
    result = subprocess.run([sys.executable, "-m", "dysta_ros.cli", "info", str(bag), "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["topics"]["/dysta/action_chunk"]["count"] == 12
