"""robot_link: the robot's end of the link to an offboard policy host.

Runs on the robot beside chunk_executor. It republishes each camera as a JPEG
sensor_msgs/CompressedImage on `<topic>/compressed` (header, stamp included, kept: the stamp
is what the executor compensates latency with), optionally downscaled first, and reports the
bytes per second each camera costs on the link; and it answers the policy host's clock pings
(nodes/clock_offset.py). Raw frames never leave the robot: a 640x480 rgb8 camera at 30 Hz is
27.6 MB/s raw.

QoS across the link, on purpose: images best effort, depth 1 (a lost or late frame is replaced
by the next, never retransmitted into a queue); chunks reliable depth 1 (chunk_executor;
a retransmitted chunk is still useful, and a newer one supersedes it); the instruction
reliable + transient local (a policy host that starts later still gets it).
"""

from __future__ import annotations

import sys
import time

import cv2
import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image

from dysta_ros.errors import InputError
from dysta_ros.nodes import conversions as conv
from dysta_ros.nodes import params as P
from dysta_ros.nodes import topics as dysta_topics
from dysta_ros.nodes.clock_offset import ClockResponder
from dysta_ros.nodes.diagnostics import ERROR, OK, WARN, StatusBoard, to_message
from dysta_ros.nodes.image_conversion import image_to_rgb
from dysta_ros.nodes.spin import run_node
from dysta_ros.robot import load_robot_config

PARAMS = [
    P.Param("robot", "sim_arm", "robot config name (config/robots/<name>.yaml) or YAML path",
            read_only=True),
    P.Param("camera_topics", [], "raw camera topics to compress (empty: every camera of the robot config)",
            read_only=True),
    P.Param("jpeg_quality", 80, "JPEG quality, 1 (smallest) to 100 (best)", low=1, high=100),
    P.Param("scale", 1.0, "downscale factor before encoding (1: full size)", low=0.05, high=1.0),
    P.Param("diagnostic_period_s", 1.0, "seconds between /diagnostics messages", read_only=True,
            low=0.01, high=60.0),
]


def compressed_topic(topic: str) -> str:
    """The image_transport name of a raw topic's compressed stream."""
    topic = topic.rstrip("/")
    return topic if topic.endswith("/compressed") else topic + "/compressed"


def encode_jpeg(rgb: np.ndarray, quality: int, scale: float = 1.0) -> bytes:
    """Return (H, W, 3) uint8 RGB as JPEG bytes, downscaled by `scale` first."""
    if scale < 1.0:
        height, width = rgb.shape[:2]
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise InputError("JPEG encoding failed")
    return data.tobytes()


class CameraLink:
    """What one camera costs on the link, counted since the last report."""

    def __init__(self, topic: str):
        self.topic = topic
        self.frames = self.bytes_in = self.bytes_out = 0
        self.total_frames = self.total_bytes_out = 0
        self.encode_s = 0.0
        self.since = time.monotonic()
        self.error = ""

    def report(self) -> dict:
        elapsed = max(time.monotonic() - self.since, 1e-9)
        values = {"frames_per_s": f"{self.frames / elapsed:.2f}",
                  "raw_bytes_per_s": round(self.bytes_in / elapsed),
                  "sent_bytes_per_s": round(self.bytes_out / elapsed),
                  "ratio": f"{self.bytes_in / self.bytes_out:.1f}" if self.bytes_out else "n/a",
                  "encode_ms_mean": f"{1e3 * self.encode_s / self.frames:.2f}" if self.frames else "n/a",
                  "frames": self.total_frames, "sent_bytes": self.total_bytes_out}
        self.frames = self.bytes_in = self.bytes_out = 0
        self.encode_s, self.since = 0.0, time.monotonic()
        return values


class RobotLinkNode(Node):
    """Compress the robot's cameras for the link; answer clock pings; report bytes per second."""

    def __init__(self, **kwargs):
        kwargs.setdefault("namespace", dysta_topics.NAMESPACE)  # beside the other dysta nodes
        super().__init__("robot_link", **kwargs)
        P.declare_or_refuse(self, PARAMS)
        self.add_on_set_parameters_callback(P.validator(PARAMS, self.get_logger().warning))
        values = P.read(self, PARAMS)
        robot = load_robot_config(values["robot"])
        dysta_topics.check_names(self, robot, values["camera_topics"])
        topics = list(values["camera_topics"]) or [c.topic for c in robot.cameras]
        self.cameras = [CameraLink(topic) for topic in topics]
        self.board = StatusBoard(self.get_name(), values["robot"], [c.topic for c in self.cameras])
        for camera in self.cameras:
            self.board.set(camera.topic, WARN, "no frame yet")
            pub = self.create_publisher(CompressedImage, compressed_topic(camera.topic), conv.CAMERA_QOS)
            self.create_subscription(Image, camera.topic,
                                     lambda msg, c=camera, p=pub: self.on_frame(c, p, msg), conv.CAMERA_QOS)
        self.clock = ClockResponder(self)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(values["diagnostic_period_s"], self.publish_diagnostics)
        self.get_logger().info(f"compressing {topics} -> {[compressed_topic(t) for t in topics]} "
                               f"(JPEG quality {values['jpeg_quality']}, scale {values['scale']})")

    def on_frame(self, camera: CameraLink, pub, msg):
        started = time.perf_counter()
        try:
            rgb = image_to_rgb(msg)
            data = encode_jpeg(rgb, self.get_parameter("jpeg_quality").value,
                               self.get_parameter("scale").value)
        except InputError as exc:  # a bad frame is not forwarded; the next good one is
            camera.error = str(exc)
            self.get_logger().error(f"{camera.topic}: frame not forwarded: {exc}", throttle_duration_sec=1.0)
            return
        out = CompressedImage(header=msg.header, format="rgb8; jpeg compressed bgr8", data=data)
        pub.publish(out)
        camera.encode_s += time.perf_counter() - started
        camera.frames += 1
        camera.total_frames += 1
        camera.bytes_in += len(msg.data)
        camera.bytes_out += len(data)
        camera.total_bytes_out += len(data)
        camera.error = ""

    def publish_diagnostics(self):
        for camera in self.cameras:
            values = camera.report()
            if camera.error:
                self.board.set(camera.topic, ERROR, f"frame not forwarded: {camera.error}", **values)
            elif camera.total_frames:
                self.board.set(camera.topic, OK, f"{int(values['sent_bytes_per_s']) / 1e6:.3f} MB/s to "
                               f"{compressed_topic(camera.topic)}", **values)
        self.diagnostics_pub.publish(to_message(self.board, self.get_clock().now().to_msg()))


def main(args=None) -> int:
    return run_node("robot_link", RobotLinkNode, args=args)


if __name__ == "__main__":
    sys.exit(main())
