"""rosbag2 reading and writing with `rosbags` (no ROS needed); episodes from bags."""

from dysta_ros.bags.episodes import Episode, load_episodes
from dysta_ros.bags.rosbag import BagMessage, BagReader, BagWriter, TopicQos, find_bags
from dysta_ros.bags.topic_map import TopicMap, default_topic_map

__all__ = ["BagMessage", "BagReader", "BagWriter", "Episode", "TopicMap", "TopicQos",
           "default_topic_map", "find_bags", "load_episodes"]
