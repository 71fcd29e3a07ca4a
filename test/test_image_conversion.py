"""Raw camera frames as drivers send them: padded rows (step > width x bytes per pixel), every listed
encoding, 16-bit samples in either byte order; the node's converter and the bag readers share one decoder."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from densernet_core.images import ImageError, RAW_ENCODINGS, message_to_rgb, raw_image_array

H, W, PAD = 3, 5, 7  # 5 px wide rows padded by 7 bytes


def message(pixels: np.ndarray, encoding: str, pad: int = PAD, bigendian: bool = False) -> SimpleNamespace:
    """A sensor_msgs/Image (duck-typed) holding `pixels` (H x W [x C], uint8 or uint16) with padded rows."""
    h, w = pixels.shape[:2]
    data = pixels.astype(">u2" if bigendian else "<u2") if pixels.dtype == np.uint16 else pixels
    rows = data.reshape(h, -1).view(np.uint8).reshape(h, -1)
    padded = np.concatenate([rows, np.full((h, pad), 0xEE, np.uint8)], axis=1)  # the padding is junk
    return SimpleNamespace(encoding=encoding, width=w, height=h, step=padded.shape[1], is_bigendian=int(bigendian),
                           data=padded.tobytes())


RGB = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
GREY = np.random.default_rng(1).integers(0, 256, (H, W), dtype=np.uint8)
DEEP = np.random.default_rng(2).integers(0, 65536, (H, W), dtype=np.uint16)


@pytest.mark.parametrize("encoding,pixels,want", [
    ("rgb8", RGB, RGB), ("bgr8", RGB[:, :, ::-1], RGB), ("8UC3", RGB[:, :, ::-1], RGB),
    ("rgba8", np.dstack([RGB, np.full((H, W), 9, np.uint8)]), RGB),
    ("bgra8", np.dstack([RGB[:, :, ::-1], np.full((H, W), 9, np.uint8)]), RGB),
    ("mono8", GREY, np.dstack([GREY] * 3)), ("8UC1", GREY, np.dstack([GREY] * 3)),
    ("mono16", DEEP, np.dstack([(DEEP >> 8).astype(np.uint8)] * 3)),
    ("16UC1", DEEP, np.dstack([(DEEP >> 8).astype(np.uint8)] * 3)),
])
@pytest.mark.parametrize("bigendian", [False, True])
def test_every_encoding_with_padded_rows_and_either_byte_order(encoding, pixels, want, bigendian):
    np.testing.assert_array_equal(message_to_rgb(message(pixels, encoding, bigendian=bigendian)), want)
    np.testing.assert_array_equal(message_to_rgb(message(pixels, encoding, pad=0, bigendian=bigendian)), want)


def _yuv422(y: np.ndarray, u: np.ndarray, v: np.ndarray, order: str) -> np.ndarray:
    """H x W x 2 bytes as a driver packs 4:2:2: each pixel pair shares one U and one V (YUYV or UYVY)."""
    h, w = y.shape
    out = np.empty((h, w, 2), np.uint8)
    chroma = np.empty((h, w), np.uint8)
    chroma[:, 0::2], chroma[:, 1::2] = u, v
    if order == "YUYV":
        out[..., 0], out[..., 1] = y, chroma
    else:
        out[..., 0], out[..., 1] = chroma, y
    return out


@pytest.mark.parametrize("encoding,order", [("yuv422_yuy2", "YUYV"), ("yuv422", "UYVY")])
def test_yuv422_as_usb_cameras_send_it(encoding, order):
    """Against BT.601 limited range written out here (not OpenCV's encoder), with padded rows."""
    rng = np.random.default_rng(3)
    h, w = 4, 6
    y = rng.integers(16, 236, (h, w)).astype(np.uint8)
    u, v = (rng.integers(16, 241, (h, w // 2)).astype(np.uint8) for _ in range(2))
    got = message_to_rgb(message(_yuv422(y, u, v, order), encoding))
    yf, uf, vf = y - 16.0, np.repeat(u, 2, axis=1) - 128.0, np.repeat(v, 2, axis=1) - 128.0
    want = np.stack([1.164 * yf + 1.596 * vf, 1.164 * yf - 0.392 * uf - 0.813 * vf, 1.164 * yf + 2.017 * uf], axis=2)
    assert got.shape == (h, w, 3)
    assert np.abs(got.astype(float) - np.clip(want, 0, 255)).max() <= 2


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
@pytest.mark.parametrize("bits", [8, 16])
def test_bayer_mosaics_are_demosaiced_with_the_pattern_ros_names(pattern, bits):
    """ROS names a Bayer pattern by its first 2x2 block read row by row (bayer_rggb8: R G / G B). A smooth
    colour ramp is sampled that way; demosaiced, each pixel keeps the colour it sampled (away from the edge,
    where OpenCV extrapolates), and the others stay near the ramp: a pattern taken for another swaps R and B."""
    h, w = 10, 12
    yy, xx = np.mgrid[0:h, 0:w]
    ramp = np.stack([40 + 8 * xx, 60 + 6 * yy, 200 - 7 * xx], axis=2).astype(np.uint8)  # RGB
    channel = {"r": 0, "g": 1, "b": 2}
    site = np.empty((h, w), int)
    for k, ch in enumerate(pattern):
        site[k // 2::2, k % 2::2] = channel[ch]
    mosaic = np.take_along_axis(ramp, site[..., None], axis=2)[..., 0]
    if bits == 16:
        mosaic = mosaic.astype(np.uint16) << 8 | 0x55  # the low byte is dropped
    got = message_to_rgb(message(mosaic, f"bayer_{pattern}{bits}", bigendian=bits == 16))
    inner = (slice(2, h - 2), slice(2, w - 2))
    kept = np.take_along_axis(got, site[..., None], axis=2)[..., 0]
    np.testing.assert_array_equal(kept[inner], np.take_along_axis(ramp, site[..., None], axis=2)[..., 0][inner])
    assert np.abs(got[inner].astype(int) - ramp[inner]).max() <= 8


def test_the_issue_example_row_two_starts_where_the_step_says():
    """rgb8, 5 px wide, step 20: the second row's first pixel is its own, not the first row's padding."""
    pixels = np.zeros((2, 5, 3), np.uint8)
    pixels[1, 0] = [69, 184, 232]
    msg = message(pixels, "rgb8", pad=5)
    assert msg.step == 20
    np.testing.assert_array_equal(raw_image_array(msg)[1, 0], [69, 184, 232])


def test_node_converter_honours_step_and_byte_order():
    pytest.importorskip("rclpy", reason="rclpy not installed")
    from densernet_ros.image_conversion import FrameError, image_to_rgb

    np.testing.assert_array_equal(image_to_rgb(message(RGB, "rgb8")), RGB)
    np.testing.assert_array_equal(image_to_rgb(message(DEEP, "mono16", bigendian=True))[:, :, 0],
                                  (DEEP >> 8).astype(np.uint8))
    with pytest.raises(FrameError, match="unsupported encoding '32FC1'"):  # a depth image on the camera topic
        image_to_rgb(SimpleNamespace(encoding="32FC1", width=2, height=2, step=8, is_bigendian=0, data=b"0" * 16))
    with pytest.raises(FrameError, match="yuv422_yuy2 needs an even width"):
        image_to_rgb(message(np.zeros((2, 3, 2), np.uint8), "yuv422_yuy2"))


@pytest.mark.parametrize("field,value,match", [("encoding", "32FC1", "unsupported encoding"),
                                               ("step", 4, "step 4 too small"), ("width", 0, "empty image"),
                                               ("data", b"\0" * 10, "truncated image data")])
def test_unreadable_frames_are_refused_by_name(field, value, match):
    msg = message(RGB, "rgb8")
    setattr(msg, field, value)
    with pytest.raises(ImageError, match=match):
        message_to_rgb(msg)


def test_bag_frames_with_padded_rows_read_right(tmp_path):
    """The offline readers (densernet-localize --bag, densernet-map build --bag) share the decoder; an
    undecodable message does not end the recording."""
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    from densernet_core.localization.sequence import bag_frames

    ts = get_typestore(Stores.ROS2_HUMBLE)
    T = ts.types  # noqa: N806
    raw = message(RGB[:, :, ::-1], "bgr8")
    img = T["sensor_msgs/msg/Image"](
        header=T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=5, nanosec=0), frame_id="cam"),
        height=H, width=W, encoding="bgr8", is_bigendian=0, step=raw.step, data=np.frombuffer(raw.data, np.uint8))
    truncated = T["sensor_msgs/msg/Image"](header=img.header, height=H, width=W, encoding="bgr8", is_bigendian=0,
                                           step=raw.step, data=np.frombuffer(raw.data, np.uint8)[:10])
    with Writer(tmp_path / "bag", version=8) as w:
        c = w.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=ts)
        for k, msg in enumerate((img, truncated, img)):
            w.write(c, (5 + k) * 10 ** 9, ts.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    frames = list(bag_frames(tmp_path / "bag", "/camera/image_raw"))
    np.testing.assert_array_equal(frames[0].rgb, RGB)
    # A message that cannot be decoded comes in its place with the reason; the frames after it still come.
    assert len(frames) == 3 and frames[1].rgb is None and frames[1].name == "/camera/image_raw#000001"
    assert "image 1 on /camera/image_raw cannot be decoded" in frames[1].error and "truncated" in frames[1].error
    np.testing.assert_array_equal(frames[2].rgb, RGB)


def test_encodings_listed_once():
    assert set(RAW_ENCODINGS) >= {"rgb8", "bgr8", "mono8", "rgba8", "bgra8", "mono16"}


def test_arrays_of_every_kind_become_hxwx3_rgb():
    """What the Python API takes (numpy in any of its forms, PIL) comes out HxWx3 uint8 RGB: alpha dropped,
    grey repeated, 16 bits to their high byte, floats in [0, 1] scaled, BGR reversed on request."""
    from PIL import Image

    from densernet_core.images import to_rgb_uint8

    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 7
    rgba = np.concatenate([rgb, np.full((2, 3, 1), 255, np.uint8)], axis=2)
    assert np.array_equal(to_rgb_uint8(rgba), rgb)
    assert np.array_equal(to_rgb_uint8(rgba[:, :, [2, 1, 0, 3]], color="bgr"), rgb)
    assert np.array_equal(to_rgb_uint8(rgb[:, :, 0]), np.repeat(rgb[:, :, :1], 3, axis=2))
    assert np.array_equal(to_rgb_uint8(rgb[:, :, :1]), np.repeat(rgb[:, :, :1], 3, axis=2))
    assert np.array_equal(to_rgb_uint8(rgb.astype(np.uint16) << 8 | 0xFF), rgb)
    assert np.array_equal(to_rgb_uint8(rgb / 255.0), rgb)
    assert np.array_equal(to_rgb_uint8(Image.fromarray(rgba, "RGBA")), rgb)
    for bad, match in ((np.zeros((0, 3, 3), np.uint8), "empty"), (np.zeros((2, 3, 2), np.uint8), "shape"),
                       (np.zeros((2, 3, 3), np.int32), "dtype"), ("x", "not found|cannot")):
        with pytest.raises((ImageError, FileNotFoundError), match=match):
            to_rgb_uint8(bad)
