"""Training demos from a real rosbag2 file: the labels are the recorded commands ahead of each step."""

import json

import numpy as np

from bag_helpers import BagSpec, expert_action, write_episode_bag
from dysta_ros.bags.episodes import load_episodes
from dysta_ros.training.data import bag_demos


def test_bag_episodes_become_demos_with_recorded_action_chunks(tmp_path):
    path = write_episode_bag(tmp_path / "bag", BagSpec(episodes=2, seconds=1.0))
    demos = bag_demos([str(path)], ["main"], image_size=16, horizon=3)
    assert len(demos) == 2
    for demo in demos:
        assert demo.pixels.shape[1:] == (1, 3, 16, 16) and demo.pixels.dtype == np.uint8
        assert demo.chunks.shape == (len(demo), 3, 6) and np.isfinite(demo.chunks).all()
        assert demo.instruction.startswith("touch the red cube")
    # Label k of step s is the command recorded for time t_s + k * dt (held between chunks).
    times = load_episodes(path)[0].times
    for step in (2, 5):
        for k in (0, 1):
            np.testing.assert_allclose(demos[0].chunks[step, k], expert_action(times[step] + 0.1 * k),
                                       atol=5e-3)


def _renamed(bag, renames: dict[str, str], out):
    """A copy of `bag` with topics renamed (another robot's names); the wrist camera left out."""
    from dysta_ros.bags.rosbag import BagReader, BagWriter

    with BagReader(bag) as reader, BagWriter(out) as writer:
        kept = [t for t in reader.topics if t != "/wrist_camera/image_raw"]
        for topic in kept:
            writer.add_topic(renames.get(topic, topic), reader.topics[topic], reader.qos(topic))
        for message in reader.messages(kept):
            writer.write(renames.get(message.topic, message.topic), message.stamp_ns, message.data)
    return out


def test_train_reads_another_robots_bags_through_a_topic_map(tmp_path, capsys):
    from dysta_ros.cli import main

    source = write_episode_bag(tmp_path / "bag", BagSpec(episodes=1, seconds=1.0))
    bag = _renamed(source, {"/camera/image_raw": "/front/image_raw", "/joint_states": "/arm/joint_states"},
                   tmp_path / "other_robot")
    topic_map = tmp_path / "other_robot.yaml"
    topic_map.write_text("cameras: {main: /front/image_raw}\nstate_topic: /arm/joint_states\n"
                         "joints: [joint1, joint2, joint3, joint4, joint5, joint6]\n")
    demos = bag_demos([str(bag)], ["main"], image_size=16, horizon=3, topic_map=str(topic_map))
    reference = bag_demos([str(source)], ["main"], image_size=16, horizon=3)
    np.testing.assert_array_equal(demos[0].chunks, reference[0].chunks)  # the same episode, other names
    # without the map: one line naming the topic the default map wants, before any model is built
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", "--bags", str(bag), "--out", str(out), "--steps", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "/camera/image_raw" in err and "--topic-map" in err
    assert main(["train", "--bags", str(bag), "--topic-map", str(topic_map), "--out", str(out),
                 "--steps", "1", "--batch", "2", "--threads", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"][0]["out"] == str(out)
    # --json has its one meaning here too: without it, one line of the last losses, no JSON
    assert main(["train", "--bags", str(bag), "--topic-map", str(topic_map), "--out", str(out),
                 "--steps", "1", "--batch", "2", "--threads", "1", "--force"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith(f"trained {out}: step 1, total ") and "\n" not in printed
