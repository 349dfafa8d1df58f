"""policy_node's plain parts, without a ROS graph: the inference loop, the step report, camera inputs,
raw frames and the parameter checks."""

import threading
from types import SimpleNamespace

import pytest

from dysta_ros.nodes.inference_loop import InferenceLoop
from dysta_ros.nodes.step_report import StepReport


def test_the_loop_steps_on_new_inputs_and_survives_a_failing_step():
    arrivals, failures, steps = threading.Semaphore(0), [], []
    done = threading.Event()

    def wait(seen, timeout):
        return seen + 1 if arrivals.acquire(timeout=timeout) else seen

    def step():
        steps.append(len(steps))
        if len(steps) == 2:
            raise RuntimeError("bad step")
        if len(steps) == 3:
            done.set()
        return True

    loop = InferenceLoop(wait, step, lambda: 1000.0, failures.append)
    loop.start()
    for _ in range(3):
        arrivals.release()
    assert done.wait(10.0)
    loop.stop()
    assert loop.thread is None
    assert [str(f) for f in failures] == ["bad step"] and len(steps) >= 3


def test_stop_waits_for_the_running_step():
    started, release, finished = threading.Event(), threading.Event(), []

    def step():
        started.set()
        release.wait(10.0)
        finished.append(True)
        return True

    loop = InferenceLoop(lambda seen, timeout: seen + 1, step, lambda: 1000.0, lambda exc: None)
    loop.start()
    assert started.wait(10.0)
    stopper = threading.Thread(target=loop.stop)
    stopper.start()
    release.set()
    stopper.join(10.0)
    assert finished and not stopper.is_alive()


def test_step_report_measures_rate_overhead_and_ages():
    report = StepReport()
    stats = SimpleNamespace(stage_ms={"total": 12.5}, context_tokens=40)
    for k in range(5):  # steps 0.1 s apart, each started 2 ms after its frames arrived
        values = report.stepped(stats, received=k * 0.1, stamp=k * 0.1 - 0.010, start=k * 0.1 + 0.002,
                                now=k * 0.1 + 0.020)
    assert report.steps == 5
    assert values["rate_hz"] == "10.00" and values["model_ms"] == "12.50"
    assert values["frame_age_at_start_ms"] == "12.00" and values["stamp_to_chunk_ms"] == "30.00"
    assert values["arrival_to_step_ms_p50"] == "2.00" and values["context_tokens"] == 40
    report.errors += 2
    assert report.stepped(stats, 1.0, 1.0, 1.0, 1.0)["errors"] == 2
    slow = SimpleNamespace(stage_ms={"total": 100.0}, context_tokens=40)
    report.stepped(slow, 1.1, 1.1, 1.1, 1.1)
    # `run --json`'s summary: every step since activation, step_ms_p50 as results.py defines it
    assert report.summary() == {"steps": 7, "errors": 2, "step_ms_p50": 12.5,
                                "step_ms_p90": pytest.approx(12.5 + 0.4 * 87.5)}
    report.reset()
    assert report.steps == report.errors == 0
    assert report.summary() == {"steps": 0, "errors": 0, "step_ms_p50": None, "step_ms_p90": None}


def test_camera_inputs_take_the_robot_configs_topics_or_the_given_ones_and_their_types():
    import pytest
    from sensor_msgs.msg import CompressedImage, Image

    from dysta_ros.errors import ConfigError
    from dysta_ros.nodes.policy_step import camera_inputs
    from dysta_ros.robot import load_robot_config

    robot = load_robot_config("sim_arm")
    assert camera_inputs(["wrist", "main"], robot, []) == {
        "/wrist_camera/image_raw": ("wrist", Image), "/camera/image_raw": ("main", Image)}
    # a policy host on robot_link's JPEG streams
    assert camera_inputs(["main"], robot, [], "compressed") == {
        "/camera/image_raw/compressed": ("main", CompressedImage)}
    assert camera_inputs(["main"], robot, ["/cam/image_raw/compressed"]) == {
        "/cam/image_raw/compressed": ("main", CompressedImage)}
    with pytest.raises(ConfigError, match="the model takes 2 cameras"):
        camera_inputs(["main", "wrist"], robot, ["/only/one"])


def test_a_raw_frames_stamp_is_read_from_its_bytes_and_it_decodes_only_when_asked():
    import numpy as np
    import pytest
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import CompressedImage, Image

    from dysta_ros.errors import InputError
    from dysta_ros.nodes.image_conversion import rgb_to_image
    from dysta_ros.nodes.raw_frames import decode, header_stamp

    image = rgb_to_image(np.arange(48 * 64 * 3, dtype=np.uint8).reshape(48, 64, 3) % 251, Image)
    for frame_id in ("", "c", "camera_optical_frame"):  # string lengths shift what follows
        image.header.stamp.sec, image.header.stamp.nanosec = 1_700_000_123, 456_789_000
        image.header.frame_id = frame_id
        data = serialize_message(image)
        assert header_stamp(data, Image) == pytest.approx(1_700_000_123.456789, abs=1e-6)
        back = decode(data, Image)
        assert (back.height, back.width, back.encoding, back.header.frame_id) == (48, 64, "rgb8", frame_id)
        assert bytes(back.data) == bytes(image.data)
    jpeg = CompressedImage(format="jpeg", data=b"\xff\xd8 not really")
    jpeg.header.stamp.sec = 42
    assert header_stamp(serialize_message(jpeg), CompressedImage) == 42.0
    # little-endian CDR as rclpy writes it; a big-endian body is read big-endian
    assert serialize_message(image)[:2] == b"\x00\x01"
    import struct

    assert header_stamp(b"\x00\x00\x00\x00" + struct.pack(">iI", 7, 500_000_000), Image) == 7.5
    with pytest.raises(InputError, match="cannot deserialize a Image of 3 bytes"):
        decode(b"\x00\x01\x00", Image)
    with pytest.raises(InputError):
        header_stamp(b"\x00\x09\x00\x00", Image)  # not plain CDR, and not decodable


def test_strategy_parameters_are_checked_when_set_and_a_fixed_refusal_clears():
    import pytest

    from dysta_ros.nodes.policy_params import PARAMS, PolicyParameters

    parameters = PolicyParameters({"inference_rate_hz": "inference_rate_hz must be in [0.1, 1000.0]"})
    values = {p.name: p.default for p in parameters.params}
    assert "refused at start-up; set a valid value" in parameters.start_refusals()
    assert not parameters.check(values, {"inference_rate_hz": 5.0})  # no rebuild for a rate
    assert parameters.start_refusals() == ""
    assert parameters.check(values, {"strategy": "gotohunt"})  # a strategy change rebuilds
    with pytest.raises(Exception, match="l1_fraction"):
        parameters.check(values, {"dysta.l1_fraction": 1.5})  # refused now, not at the next step
    assert {p.name for p in PARAMS} >= {"camera_transport", "clock_sync", "strategy"}


def test_an_image_read_in_place_has_the_fields_deserializing_gives():
    import numpy as np
    import pytest
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image

    from dysta_ros.errors import InputError
    from dysta_ros.nodes.image_conversion import image_to_rgb, rgb_to_image
    from dysta_ros.nodes.raw_frames import decode, image_view

    rng = np.random.default_rng(3)
    for encoding, frame_id, (height, width), pad in (("rgb8", "", (48, 64), 0), ("bgr8", "cam", (5, 7), 3),
                                                      ("mono8", "a_longer_frame_id", (9, 13), 1),
                                                      ("rgba8", "x" * 5, (4, 6), 0)):
        rgb = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        image = rgb_to_image(rgb, Image, encoding)
        if pad:  # row padding: step longer than a row
            rows = np.frombuffer(bytes(image.data), np.uint8).reshape(height, -1)
            image.data = np.hstack([rows, np.zeros((height, pad), np.uint8)]).tobytes()
            image.step += pad
        image.header.frame_id, image.header.stamp.sec, image.is_bigendian = frame_id, 77, 0
        view = image_view(serialize_message(image))
        for field in ("height", "width", "encoding", "is_bigendian", "step"):
            assert getattr(view, field) == getattr(image, field), (encoding, field)
        assert bytes(view.data) == bytes(image.data) and view.header.frame_id == frame_id
        assert view.header.stamp.sec == 77
        in_place = image_to_rgb(decode(serialize_message(image), Image))
        np.testing.assert_array_equal(in_place, image_to_rgb(image))
    # cut short: not read in place, and deserializing refuses it with a clear error
    data = serialize_message(image)[:-10]
    assert image_view(data) is None
    with pytest.raises(InputError, match="cannot deserialize"):
        decode(data, Image)
