"""Test session setup: ROS discovery stays on this machine, on a domain of this session's own."""

import os
import random
import sys
from pathlib import Path

import pytest

# Set before anything imports rclpy; the processes tests start inherit both.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = str(random.SystemRandom().randint(1, 101))
os.environ.setdefault("MUJOCO_GL", "egl")

from hypothesis import settings  # noqa: E402

# Property tests draw the same examples every run, so a red CI run is reproducible and a green
# one stays green; `HYPOTHESIS_PROFILE=explore make test` draws new ones to hunt for bugs.
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

# The tests run nodes in this process, as a node's main() does: share the GIL as finely.
sys.setswitchinterval(0.0005)

# The shared helpers (ros_helpers, bag_helpers, rosbag2_format) live here, beside the layers.
TEST_ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(TEST_ROOT))

# Fast DDS shared-memory files that exist before the session: never this session's to remove.
SHM_BEFORE = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def pytest_sessionfinish(session, exitstatus):
    """Remove the Fast DDS shared-memory files this session's killed processes left in /dev/shm.

    A process the tests SIGKILL (a hung try, a timed-out child) leaves its segments (up to 32 MB
    each with config/fastdds_large_frames.xml) and ports behind; over many runs they fill
    /dev/shm. Only files created during the session and held by no live process are removed.
    """
    from dysta_ros.nodes.transport import remove_stale_shared_memory

    if os.path.isdir("/dev/shm"):
        remove_stale_shared_memory("/dev/shm", among=set(os.listdir("/dev/shm")) - SHM_BEFORE)


# Each layer folder is a marker (`pytest -m core`), registered in setup.cfg.
LAYERS = ("core", "ros", "sim", "bags")


def pytest_collection_modifyitems(config, items):
    for item in items:
        layer = Path(str(item.fspath)).resolve().relative_to(TEST_ROOT).parts[0]
        if layer in LAYERS:
            item.add_marker(getattr(pytest.mark, layer))
