"""Fast DDS's transport for camera frames larger than its shared-memory segment.

Fast DDS (ROS 2's default middleware) gives each participant a 512 KB shared-memory segment;
frames larger than that (640x480 rgb8 is 921 KB), published by several cameras at once, are
mostly lost in transport before any callback could take them. config/fastdds_large_frames.xml
enlarges the segment. A node's main() (and the commands that start nodes) call
`use_large_frame_transport()` before ROS starts; a profile the user chose, or another
middleware, is left alone; either way it keeps frame-sized buffers on the heap
(`keep_frame_buffers_on_the_heap`). `remove_stale_shared_memory()` removes what killed
processes left.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import re

from dysta_ros.robot import config_dirs

PROFILE = "fastdds_large_frames.xml"
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
# Transports chosen another way (e.g. UDPv4 only, so nothing bypasses a network under test).
CHOSEN_TRANSPORT_VARIABLES = ("FASTDDS_BUILTIN_TRANSPORTS",)
FAST_DDS = ("rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp")
# glibc's mallopt parameters, and the sizes below which allocations stay on the heap
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HEAP_ALLOCATIONS_UP_TO = 32 << 20  # several 640x480 (921 KB) and 1080p (6 MB) frames
HEAP_KEPT_FREE = 128 << 20


def keep_frame_buffers_on_the_heap() -> bool:
    """Serve frame-sized allocations from the heap, not fresh mmaps; return whether glibc took it.

    A frame passes through a few buffers of its size on its way in (the middleware's sample, the
    serialized message, Python's bytes). glibc maps each allocation over its threshold (128 KB
    at first) afresh and unmaps it on free, so every frame page-faulted its buffers in again:
    a 921 KB frame took 2.0 ms from publish to a raw subscriber's callback in one process, 1.0 ms
    (p99 2.6 -> 1.5 ms) with these thresholds. Process-wide: a main() calls it, never an import.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc-like: its allocator is left as it is
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, HEAP_ALLOCATIONS_UP_TO)) and bool(
        mallopt(M_TRIM_THRESHOLD, HEAP_KEPT_FREE))


def use_large_frame_transport() -> str | None:
    """Point Fast DDS at the large-frame profile for this process and its children; return its path.

    Must run before rclpy.init (a participant reads its profile when created). Returns None
    and sets no profile when a profile or Fast DDS's builtin transports are already chosen,
    another middleware is, or the file is not installed. Frame buffers go on the heap either way.
    """
    keep_frame_buffers_on_the_heap()
    if any(os.environ.get(name) for name in PROFILE_VARIABLES + CHOSEN_TRANSPORT_VARIABLES):
        return None
    if os.environ.get("RMW_IMPLEMENTATION", FAST_DDS[0]) not in FAST_DDS:
        return None
    for directory in config_dirs():
        if (directory / PROFILE).is_file():
            os.environ[PROFILE_VARIABLES[0]] = str(directory / PROFILE)
            return os.environ[PROFILE_VARIABLES[0]]
    return None


# Fast DDS's shared-memory files (Linux: /dev/shm). Each segment (`fastdds_<16 hex>`) and port
# (`fastdds_port<N>`) has a lock file beside it (`_el`, and `_sl` for ports) that its processes
# hold while they live; `sem.fastdds_port<N>_mutex` goes with a port. A process that ends
# cleanly removes its own; one that is killed (SIGKILL, a crash) leaves them, up to the 32 MB
# segment of the large-frame profile each. The same test as Fast DDS's `fastdds shm clean`:
# a lock file nobody holds belongs to nobody alive.
SHM_DIR = "/dev/shm"
SHM_LOCK = re.compile(r"^(?P<base>(?:fastdds|fastrtps)_(?:port\d+|[0-9a-f]{16}))_(?:el|sl)$")


def stale_shared_memory(directory: str = SHM_DIR, among: set[str] | None = None) -> list[str]:
    """Return the names of Fast DDS shared-memory files in `directory` whose owners are gone.

    `among`: consider only these names (e.g. those created since a test session began).
    """
    try:
        names = set(os.listdir(directory))
    except OSError:
        return []
    stale = []
    for name in sorted(names):
        match = SHM_LOCK.match(name)
        if match is None or (among is not None and name not in among) or _held(os.path.join(directory, name)):
            continue
        base = match["base"]
        stale += [n for n in (name, base, f"sem.{base}_mutex") if n in names and n not in stale]
    return stale


def remove_stale_shared_memory(directory: str = SHM_DIR, among: set[str] | None = None) -> list[str]:
    """Remove the files `stale_shared_memory` names; return the names removed."""
    removed = []
    for name in stale_shared_memory(directory, among):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(directory, name))
            removed.append(name)
    return removed


def _held(path: str) -> bool:
    """Whether a process holds a lock on `path` (an exclusive lock cannot be taken now)."""
    try:
        with open(path, "rb") as file:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return True  # unreadable: not ours to judge
    return False
