"""Fast DDS's transport for camera frames larger than its shared-memory segment.

Fast DDS (ROS 2's default middleware) gives each participant a 512 KB shared-memory segment;
frames larger than that (640x480 rgb8 is 921 KB), published by several cameras at once, are
mostly lost in transport before any callback could take them. config/fastdds_large_frames.xml
enlarges the segment. A node's main() (and the commands that start nodes) call
`use_large_frame_transport()` before ROS starts; a profile the user chose, or another
middleware, is left alone.
"""

from __future__ import annotations

import os

from dysta_ros.robot import config_dirs

PROFILE = "fastdds_large_frames.xml"
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
# Transports chosen another way (e.g. UDPv4 only, so nothing bypasses a network under test).
CHOSEN_TRANSPORT_VARIABLES = ("FASTDDS_BUILTIN_TRANSPORTS",)
FAST_DDS = ("rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp")


def use_large_frame_transport() -> str | None:
    """Point Fast DDS at the large-frame profile for this process and its children; return its path.

    Must run before rclpy.init (a participant reads its profile when created). Returns None
    and changes nothing when a profile or Fast DDS's builtin transports are already chosen,
    another middleware is, or the file is not installed.
    """
    if any(os.environ.get(name) for name in PROFILE_VARIABLES + CHOSEN_TRANSPORT_VARIABLES):
        return None
    if os.environ.get("RMW_IMPLEMENTATION", FAST_DDS[0]) not in FAST_DDS:
        return None
    for directory in config_dirs():
        if (directory / PROFILE).is_file():
            os.environ[PROFILE_VARIABLES[0]] = str(directory / PROFILE)
            return os.environ[PROFILE_VARIABLES[0]]
    return None
