"""sensor_msgs Image / CompressedImage <-> (H, W, 3) uint8 RGB for the nodes.

ROS 2's cv_bridge is used when it is importable; otherwise dysta_ros.images, which has the
same encoding semantics (and which the bag reader uses too).
"""

from __future__ import annotations

import numpy as np

from dysta_ros.errors import InputError
from dysta_ros.images import CHANNELS, check_raw, compressed_to_rgb, raw_to_rgb

__all__ = ["CHANNELS", "image_to_rgb", "pinhole_camera_info", "rgb_to_image"]

try:  # ROS 2's cv_bridge (not the ROS 1 port on PyPI, which lacks the ROS 2 message support)
    from cv_bridge import CvBridge

    _BRIDGE = CvBridge()
except Exception:  # noqa: BLE001 - any import failure means: use our own conversion
    _BRIDGE = None


def image_to_rgb(msg) -> np.ndarray:
    """Convert a sensor_msgs Image or CompressedImage to (H, W, 3) uint8 RGB, or raise InputError."""
    if hasattr(msg, "format"):  # CompressedImage
        return compressed_to_rgb(msg.format, msg.data)
    check_raw(msg.encoding, msg.height, msg.width, msg.step, len(msg.data))
    if msg.encoding != "mono8" and msg.is_bigendian not in (0, 1, False, True):
        raise InputError(f"is_bigendian must be 0 or 1, got {msg.is_bigendian}")
    if _BRIDGE is not None:
        try:
            return np.asarray(_BRIDGE.imgmsg_to_cv2(msg, desired_encoding="rgb8"), dtype=np.uint8)
        except Exception:  # noqa: BLE001 - a broken bridge (e.g. the ROS 1 port) must not stop us
            pass
    return raw_to_rgb(msg.encoding, msg.height, msg.width, msg.step, msg.data)


def rgb_to_image(rgb: np.ndarray, msg_type, encoding: str = "rgb8"):
    """Build an Image of `msg_type` from (H, W, 3) uint8 RGB (for publishers and tests)."""
    if encoding == "rgb8":
        pixels = rgb
    elif encoding == "bgr8":
        pixels = rgb[:, :, ::-1]
    elif encoding == "mono8":
        pixels = rgb.mean(axis=2, keepdims=True).astype(np.uint8)
    else:
        alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
        pixels = np.concatenate([rgb if encoding == "rgba8" else rgb[:, :, ::-1], alpha], axis=2)
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    msg = msg_type()
    msg.height, msg.width = pixels.shape[:2]
    msg.encoding = encoding
    msg.step = pixels.shape[1] * pixels.shape[2]
    msg.data = pixels.tobytes()
    return msg


def pinhole_camera_info(image, fx: float, fy: float, cx: float, cy: float, msg_type):
    """A `msg_type` (sensor_msgs CameraInfo) for `image`: its header and size, an undistorted pinhole."""
    info = msg_type()
    info.header = image.header
    info.height, info.width = image.height, image.width
    info.distortion_model = "plumb_bob"
    info.d = [0.0] * 5
    info.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info
