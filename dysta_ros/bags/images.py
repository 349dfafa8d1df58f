"""Decode sensor_msgs/Image and CompressedImage payloads into (H, W, 3) uint8 RGB arrays.

Plain values in, numpy out: works on rosbags messages and on any message with these fields.
"""

from __future__ import annotations

import cv2
import numpy as np

from dysta_ros.errors import InputError

# encoding -> (channels, OpenCV conversion to RGB or None when already RGB)
ENCODINGS = {
    "rgb8": (3, None),
    "bgr8": (3, cv2.COLOR_BGR2RGB),
    "rgba8": (4, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, cv2.COLOR_BGRA2RGB),
    "mono8": (1, cv2.COLOR_GRAY2RGB),
}


def raw_image_to_rgb(encoding: str, height: int, width: int, step: int, data) -> np.ndarray:
    """Return a raw image's pixels as (H, W, 3) uint8 RGB; honour row padding (`step`)."""
    if encoding not in ENCODINGS:
        raise InputError(f"image encoding {encoding!r} is not one of {sorted(ENCODINGS)}")
    channels, conversion = ENCODINGS[encoding]
    buffer = np.frombuffer(memoryview(data), dtype=np.uint8)
    if height <= 0 or width <= 0 or step < width * channels or buffer.size < height * step:
        raise InputError(f"{encoding} image of {width}x{height} (step {step}) has "
                         f"{buffer.size} bytes; expected {height * step}")
    rows = buffer[: height * step].reshape(height, step)[:, : width * channels]
    pixels = rows.reshape(height, width, channels)
    return np.ascontiguousarray(pixels if conversion is None else cv2.cvtColor(pixels, conversion))


def compressed_image_to_rgb(data) -> np.ndarray:
    """Return a JPEG or PNG image's pixels as (H, W, 3) uint8 RGB."""
    decoded = cv2.imdecode(np.frombuffer(memoryview(data), dtype=np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise InputError("compressed image could not be decoded (not a valid JPEG or PNG)")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
