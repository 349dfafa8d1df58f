"""Image bytes -> (H, W, 3) uint8 RGB: the one place pixel encodings are understood.

rgb8 as is, bgr8/bgra8 channel-swapped, rgba8 without alpha, mono8 replicated to three
channels; row padding (`step`) is honoured; JPEG and PNG are decoded as colour. Every check
happens before any conversion, so malformed data raises InputError with a clear message and
never a crash or a garbage array. Plain bytes and header fields in, so the ROS nodes and the
bag reader (which has no ROS) share it.
"""

from __future__ import annotations

import cv2
import numpy as np

from dysta_ros.errors import InputError

CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
# Larger frames are refused before any allocation (a corrupt header must not exhaust memory).
MAX_PIXELS = 8192 * 8192
JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"
PNG_SIGNATURE, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"

def check_raw(encoding: str, height: int, width: int, step: int, data_len: int) -> int:
    """Check a raw Image's header against its data; return the channel count."""
    if encoding not in CHANNELS:
        raise InputError(f"unsupported image encoding {encoding!r}; supported: {', '.join(CHANNELS)}")
    if height <= 0 or width <= 0:
        raise InputError(f"image is empty ({width}x{height})")
    if height * width > MAX_PIXELS:
        raise InputError(f"image of {width}x{height} exceeds the {MAX_PIXELS} pixel limit")
    channels = CHANNELS[encoding]
    if step < width * channels:
        raise InputError(f"image step {step} is below width*channels = {width * channels} for {encoding}")
    if data_len != step * height:
        raise InputError(f"image data holds {data_len} bytes; step*height = {step * height}")
    return channels


def raw_to_rgb(encoding: str, height: int, width: int, step: int, data) -> np.ndarray:
    """Convert raw image bytes (any supported encoding, with row padding) to (H, W, 3) uint8 RGB."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    channels = check_raw(encoding, height, width, step, buffer.size)
    pixels = buffer.reshape(height, step)[:, : width * channels].reshape(height, width, channels)
    if encoding == "rgb8":
        return pixels.copy()
    if encoding == "mono8":
        return np.repeat(pixels, 3, axis=2)
    if encoding == "rgba8":
        return pixels[:, :, :3].copy()
    return np.ascontiguousarray(pixels[:, :, 2::-1])  # bgr8 / bgra8 -> RGB, alpha dropped


def png_size(raw: bytes) -> tuple[int, int] | None:
    """Return (width, height) from a PNG's IHDR chunk (always the first), or None."""
    if len(raw) < 24 or raw[12:16] != b"IHDR":
        return None
    return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")


def jpeg_size(raw: bytes) -> tuple[int, int] | None:
    """Return (width, height) from a JPEG's start-of-frame marker, or None if there is none."""
    i = 2  # after SOI
    while i + 9 <= len(raw):
        marker = raw[i + 1]
        if raw[i] != 0xFF or marker == 0x00:
            # Bytes between segments: libjpeg skips them (a warning) and decodes on, so stopping
            # here let a frame header behind them past the pixel limit. So does a stuffed FF 00.
            i += 1 if raw[i] != 0xFF else 2
        elif marker == 0xFF:  # fill byte
            i += 1
        elif 0xD0 <= marker <= 0xD8 or marker == 0x01:  # markers without a length
            i += 2
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn: P, Y, X
            return int.from_bytes(raw[i + 7:i + 9], "big"), int.from_bytes(raw[i + 5:i + 7], "big")
        else:
            i += 2 + int.from_bytes(raw[i + 2:i + 4], "big")
    return None


def compressed_to_rgb(fmt: str, data) -> np.ndarray:
    """Decode a CompressedImage's JPEG or PNG bytes to (H, W, 3) uint8 RGB."""
    raw = bytes(data)
    kind = fmt.lower()
    if not raw:
        raise InputError("compressed image holds no data")
    if "jpeg" in kind or "jpg" in kind:
        # A truncated JPEG decodes to a partly grey frame without error: insist on both markers.
        if not (raw.startswith(JPEG_START) and raw.rstrip(b"\x00").endswith(JPEG_END)):
            raise InputError(f"corrupt or truncated JPEG ({len(raw)} bytes; start/end markers missing)")
    elif "png" in kind:
        if not (raw.startswith(PNG_SIGNATURE) and raw.endswith(PNG_END)):
            raise InputError(f"corrupt or truncated PNG ({len(raw)} bytes; signature/IEND missing)")
    else:
        raise InputError(f"unsupported compressed format {fmt!r}; supported: jpeg, png")
    size = png_size(raw) if "png" in kind else jpeg_size(raw)
    if size is None:  # no header we can read: nor can the decoder, or it sizes the frame otherwise
        raise InputError(f"cannot decode the {fmt!r} image ({len(raw)} bytes): no frame size in its header")
    if size[0] * size[1] > MAX_PIXELS:
        # Checked before decoding: a few kB of PNG can claim gigabytes of pixels.
        raise InputError(f"image of {size[0]}x{size[1]} exceeds the {MAX_PIXELS} pixel limit")
    try:
        bgr = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:  # it raises on some headers (its own size limit), not only returns None
        raise InputError(f"cannot decode the {fmt!r} image ({len(raw)} bytes): {exc}") from exc
    if bgr is None or bgr.ndim != 3 or bgr.size == 0:
        raise InputError(f"cannot decode the {fmt!r} image ({len(raw)} bytes)")
    if bgr.shape[0] * bgr.shape[1] > MAX_PIXELS:
        raise InputError(f"image of {bgr.shape[1]}x{bgr.shape[0]} exceeds the {MAX_PIXELS} pixel limit")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
