"""Camera frames kept as they came off the wire (serialized CDR), decoded only when a step uses one.

Deserializing a 640x480 rgb8 Image costs the subscription callback a copy into a Python
message; with three cameras at 30 Hz on one executor thread, that cost starved the third
camera (frames overwritten in the reader before the callback took them). A raw subscription
hands over the bytes; the callback reads only the header stamp from them (`header_stamp`), and
the inference thread deserializes the frames of the set it steps on (`decode`).
"""

from __future__ import annotations

import struct
from types import SimpleNamespace

from rclpy.serialization import deserialize_message
from sensor_msgs.msg import Image

from dysta_ros.errors import InputError

# CDR encapsulation identifiers whose body starts with the first field, no delimiter header:
# (PLAIN_)CDR and PLAIN_CDR2, big- or little-endian (the low bit says little-endian).
PLAIN_ENCAPSULATIONS = (0x00, 0x01, 0x06, 0x07)
STAMP = struct.Struct("iI")  # builtin_interfaces/Time: int32 sec, uint32 nanosec


def header_stamp(data: bytes, msg_type) -> float:
    """Return the header stamp (s) of a serialized message whose first field is a std_msgs/Header.

    The stamp sits right after the 4-byte encapsulation header; any other encapsulation is
    deserialized in full (correct, only slower).
    """
    if len(data) >= 4 + STAMP.size and data[0] == 0 and data[1] in PLAIN_ENCAPSULATIONS:
        order = "<" if data[1] & 1 else ">"
        sec, nanosec = struct.unpack_from(order + STAMP.format, data, 4)
        return sec + nanosec * 1e-9
    stamp = decode(data, msg_type).header.stamp
    return stamp.sec + stamp.nanosec * 1e-9


def decode(data: bytes, msg_type):
    """Return the message of `msg_type` serialized in `data`, or raise InputError.

    An Image in plain CDR is read in place (`image_view`): its pixels are not copied.
    """
    if msg_type is Image:
        view = image_view(data)
        if view is not None:
            return view
    try:
        return deserialize_message(data, msg_type)
    except Exception as exc:  # noqa: BLE001 - rclpy raises plain exceptions for bad CDR
        raise InputError(f"cannot deserialize a {msg_type.__name__} of {len(data)} bytes: {exc}") from exc


def image_view(data: bytes) -> SimpleNamespace | None:
    """Return a serialized sensor_msgs/Image's fields, `data` a view of the bytes (no copy).

    Plain CDR only, whose fields here all align to at most 4 bytes (from the body's start):
    header (stamp, frame_id), height, width, encoding, is_bigendian, step, data. None when
    the bytes are not that (another encapsulation, or lengths that do not fit): the caller
    deserializes them in full, which refuses a broken message with its own error.
    """
    if len(data) < 4 or data[0] != 0 or data[1] not in PLAIN_ENCAPSULATIONS:
        return None
    order = "<" if data[1] & 1 else ">"
    body = memoryview(data)[4:]
    uint32 = struct.Struct(order + "I")
    position = 8  # after the stamp

    def align() -> None:
        nonlocal position
        position += -position % 4

    def number() -> int:
        nonlocal position
        align()
        if position + 4 > len(body):
            raise ValueError("truncated")
        (value,) = uint32.unpack_from(body, position)
        position += 4
        return value

    def chunk(size: int) -> memoryview:
        nonlocal position
        if position + size > len(body):
            raise ValueError("truncated")
        position += size
        return body[position - size:position]

    try:
        frame_id = bytes(chunk(number())).rstrip(b"\0").decode()
        height, width = number(), number()
        encoding = bytes(chunk(number())).rstrip(b"\0").decode()
        is_bigendian = chunk(1)[0]
        step = number()
        pixels = chunk(number())
    except (ValueError, UnicodeDecodeError):
        return None
    sec, nanosec = struct.unpack_from(order + STAMP.format, body, 0)
    header = SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec), frame_id=frame_id)
    return SimpleNamespace(header=header, height=height, width=width, encoding=encoding,
                           is_bigendian=is_bigendian, step=step, data=pixels)
