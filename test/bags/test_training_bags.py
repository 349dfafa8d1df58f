"""Training demos from a real rosbag2 file: the labels are the recorded commands ahead of each step."""

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
