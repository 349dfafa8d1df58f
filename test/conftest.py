"""Test session setup: ROS discovery stays on this machine, on a domain of this session's own."""

import os
import random

# Set before anything imports rclpy; the processes tests start inherit both.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = str(random.SystemRandom().randint(1, 101))
os.environ.setdefault("MUJOCO_GL", "egl")
