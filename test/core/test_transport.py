"""nodes/transport: the large-frame Fast DDS profile is used unless the user chose otherwise."""

import xml.etree.ElementTree as ET

from dysta_ros.nodes import transport


def test_the_profile_is_set_only_where_nothing_else_was_chosen(monkeypatch):
    for name in transport.PROFILE_VARIABLES + transport.CHOSEN_TRANSPORT_VARIABLES + ("RMW_IMPLEMENTATION",):
        monkeypatch.delenv(name, raising=False)
    path = transport.use_large_frame_transport()
    assert path is not None and path.endswith(transport.PROFILE)
    import os

    assert os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] == path
    # the file is a Fast DDS profile whose shared-memory segment holds several 640x480 rgb8 frames
    segment = ET.parse(path).getroot().find(".//{http://www.eprosima.com}segment_size")
    assert int(segment.text) >= 3 * 640 * 480 * 3
    # a profile the user set is kept; another middleware is left alone
    monkeypatch.setenv("FASTDDS_DEFAULT_PROFILES_FILE", "/their/profile.xml")
    assert transport.use_large_frame_transport() is None
    assert os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] == "/their/profile.xml"
    monkeypatch.delenv("FASTDDS_DEFAULT_PROFILES_FILE")
    monkeypatch.setenv("FASTDDS_BUILTIN_TRANSPORTS", "UDPv4")  # e.g. a network under test
    assert transport.use_large_frame_transport() is None
    assert "FASTDDS_DEFAULT_PROFILES_FILE" not in os.environ
    monkeypatch.delenv("FASTDDS_BUILTIN_TRANSPORTS")
    monkeypatch.setenv("RMW_IMPLEMENTATION", "rmw_cyclonedds_cpp")
    assert transport.use_large_frame_transport() is None
    assert "FASTDDS_DEFAULT_PROFILES_FILE" not in os.environ


_MAPPED_BY_A_FRAME = """
import ctypes, sys
from dysta_ros.nodes import transport
if sys.argv[1] == "tuned":
    assert transport.keep_frame_buffers_on_the_heap()
class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                 "fordblks", "keepcost")]
mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = Mallinfo2
before = mallinfo2().hblkhd
frame = bytearray(640 * 480 * 3)  # what a frame's buffers are
print(mallinfo2().hblkhd - before)
"""


def test_frame_buffers_stay_on_the_heap_once_asked(tmp_path):
    """A 921 KB buffer is mmapped (page-faulted in anew per frame) by default, on the heap once tuned.

    In child processes: the allocator's thresholds are process-wide.
    """
    import subprocess
    import sys

    mapped = {how: int(subprocess.run([sys.executable, "-c", _MAPPED_BY_A_FRAME, how], check=True,
                                      capture_output=True, text=True).stdout)
              for how in ("default", "tuned")}
    assert mapped["default"] >= 640 * 480 * 3
    assert mapped["tuned"] == 0
