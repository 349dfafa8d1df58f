"""Image conversion on real sensor_msgs messages: encodings, padding, compression, bad input."""

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

pytest.importorskip("sensor_msgs")
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from dysta_ros.errors import InputError  # noqa: E402
from dysta_ros.images import jpeg_size  # noqa: E402
from dysta_ros.nodes.image_conversion import CHANNELS, image_to_rgb, rgb_to_image  # noqa: E402

rgb_images = st.tuples(st.integers(1, 12), st.integers(1, 12)).flatmap(
    lambda hw: arrays(np.uint8, (hw[0], hw[1], 3)))


@settings(max_examples=80, deadline=None)
@given(rgb_images, st.sampled_from(["rgb8", "bgr8", "rgba8", "bgra8"]), st.integers(0, 5))
def test_colour_encodings_round_trip_exactly_with_row_padding(rgb, encoding, padding):
    msg = rgb_to_image(rgb, Image, encoding)
    rows = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)
    msg.data = np.concatenate([rows, np.full((msg.height, padding), 7, np.uint8)], axis=1).tobytes()
    msg.step += padding
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)


@settings(max_examples=40, deadline=None)
@given(arrays(np.uint8, (5, 7)))
def test_mono8_replicates_to_three_channels(gray):
    msg = Image(height=5, width=7, encoding="mono8", step=7, data=gray.tobytes())
    out = image_to_rgb(msg)
    assert out.shape == (5, 7, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(list(CHANNELS) + ["yuv422", "16UC1", "", "RGB8"]), st.integers(-2, 20),
       st.integers(-2, 20), st.integers(-5, 80), st.binary(max_size=400))
def test_any_raw_header_either_converts_consistently_or_raises_input_error(encoding, h, w, step, data):
    msg = Image()
    msg.encoding = encoding
    msg.height, msg.width, msg.step = max(h, 0), max(w, 0), max(step, 0)
    msg.data = data
    try:
        out = image_to_rgb(msg)
    except InputError as exc:
        assert str(exc)
        return
    assert out.shape == (msg.height, msg.width, 3) and out.dtype == np.uint8
    assert len(data) == msg.step * msg.height


@pytest.mark.parametrize("encoding, height, width, step, size, message", [
    ("yuv422", 2, 2, 4, 8, "unsupported image encoding 'yuv422'; supported: rgb8"),
    ("rgb8", 2, 2, 5, 10, "step 5 is below"),
    ("rgb8", 2, 2, 6, 11, "holds 11 bytes"),
    ("rgb8", 0, 2, 6, 0, "empty"),
    ("rgb8", 100000, 100000, 300000, 0, "pixel limit"),
])
def test_malformed_raw_images_say_what_is_wrong(encoding, height, width, step, size, message):
    msg = Image(encoding=encoding, height=height, width=width, step=step, data=bytes(size))
    with pytest.raises(InputError, match=message):
        image_to_rgb(msg)


def compressed(rgb, ext):
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return CompressedImage(format=ext[1:], data=buf.tobytes())


def test_png_is_lossless_and_jpeg_close():
    rng = np.random.default_rng(0)
    rgb = (rng.random((24, 32, 3)) * 40 + np.linspace(0, 200, 32)[None, :, None]).astype(np.uint8)
    np.testing.assert_array_equal(image_to_rgb(compressed(rgb, ".png")), rgb)
    jpeg = image_to_rgb(compressed(rgb, ".jpeg"))
    assert jpeg.shape == rgb.shape
    assert np.abs(jpeg.astype(int) - rgb).mean() < 12
    # image_transport's format string names the encoding too
    msg = compressed(rgb, ".jpeg")
    msg.format = "rgb8; jpeg compressed bgr8"
    np.testing.assert_array_equal(image_to_rgb(msg), jpeg)


def claiming(side: int, garbage: bytes = b"\x00\x12\x00"):
    """Return a corruption: the frame header (SOF0) says side x side, stray bytes before a segment.

    libjpeg skips the stray bytes (a warning) and decodes on: a few hundred bytes would allocate
    side^2 x 3 bytes, unless the header's size is read through them too.
    """
    def corrupt(jpeg: bytes) -> bytes:
        sof = jpeg.index(b"\xff\xc0")
        jpeg = jpeg[:sof + 5] + side.to_bytes(2, "big") * 2 + jpeg[sof + 9:]
        after_app0 = 4 + int.from_bytes(jpeg[4:6], "big")
        return jpeg[:after_app0] + garbage + jpeg[after_app0:]
    return corrupt


@pytest.mark.parametrize("corrupt, message", [
    (lambda b: b[: len(b) // 2], "truncated JPEG"),
    (lambda b: b"", "no data"),
    (lambda b: b"\xff\xd8" + bytes(200) + b"\xff\xd9", "cannot decode"),
    # over OpenCV's own limit (2^30 pixels): it said "cannot decode", the check never saw the size
    (claiming(40_000), "40000x40000 exceeds the 67108864 pixel limit"),
    (claiming(40_000, b"\xff\x00\x07"), "40000x40000 exceeds the 67108864 pixel limit"),
])
def test_corrupt_jpeg_is_refused(corrupt, message):
    msg = compressed(np.zeros((16, 16, 3), np.uint8), ".jpeg")
    msg.data = corrupt(bytes(msg.data))
    with pytest.raises(InputError, match=message):
        image_to_rgb(msg)


def test_a_jpeg_size_is_read_through_stray_bytes_before_any_decoding():
    # Under OpenCV's limit and over ours: decoded (243 MB) before being refused, unless read first.
    jpeg = bytes(compressed(np.zeros((16, 16, 3), np.uint8), ".jpeg").data)
    assert jpeg_size(claiming(9000)(jpeg)) == (9000, 9000)
    assert jpeg_size(claiming(16)(jpeg)) == (16, 16)
    assert image_to_rgb(CompressedImage(format="jpeg", data=claiming(16)(jpeg))).shape == (16, 16, 3)


def test_truncated_png_and_unknown_format_are_refused():
    msg = compressed(np.zeros((16, 16, 3), np.uint8), ".png")
    msg.data = bytes(msg.data)[:-20]
    with pytest.raises(InputError, match="truncated PNG"):
        image_to_rgb(msg)
    msg.format = "tiff"
    with pytest.raises(InputError, match="supported: jpeg, png"):
        image_to_rgb(msg)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["jpeg", "png"]))
def test_random_compressed_bytes_never_escape_as_anything_but_input_error(data, fmt):
    try:
        out = image_to_rgb(CompressedImage(format=fmt, data=data))
    except InputError:
        return
    assert out.ndim == 3 and out.shape[2] == 3
