"""sensor_msgs Image/CompressedImage -> RGB numpy, with errors that name the problem (and back,
for the tools and tests that play the camera).

The real cv_bridge is used when it imports (a ROS 2 install); otherwise rosbags-image, which
reads rclpy messages too. Sizes and encodings are checked first, so a truncated or oddly
encoded frame is rejected by name instead of crashing the converter.
"""
from __future__ import annotations

import cv2
import numpy as np

try:  # a system ROS 2 install
    from cv_bridge import CvBridge

    _BRIDGE = CvBridge()
except Exception:  # noqa: BLE001 - PyPI's cv-bridge fails at import with numpy 2; fall back
    _BRIDGE = None

# encoding -> (channels, bytes per channel)
ENCODINGS = {"rgb8": (3, 1), "bgr8": (3, 1), "mono8": (1, 1), "rgba8": (4, 1), "bgra8": (4, 1),
             "mono16": (1, 2), "16UC1": (1, 2), "8UC1": (1, 1), "8UC3": (3, 1)}


class FrameError(ValueError):
    """A frame cannot be used (unsupported encoding, truncated data, undecodable JPEG, empty)."""


def _check_raw(msg) -> None:
    if msg.encoding not in ENCODINGS:
        raise FrameError(f"unsupported encoding {msg.encoding!r}; supported: {sorted(ENCODINGS)}")
    if msg.width == 0 or msg.height == 0:
        raise FrameError(f"empty image ({msg.width}x{msg.height})")
    channels, size = ENCODINGS[msg.encoding]
    if msg.step < msg.width * channels * size:
        raise FrameError(f"step {msg.step} too small for {msg.width} px of {msg.encoding}")
    if len(msg.data) < msg.step * msg.height:
        raise FrameError(f"truncated image data: {len(msg.data)} bytes, {msg.step * msg.height} expected "
                         f"for {msg.width}x{msg.height} {msg.encoding}")


def image_to_rgb(msg) -> np.ndarray:
    _check_raw(msg)
    if _BRIDGE is not None:
        img = _BRIDGE.imgmsg_to_cv2(msg, desired_encoding="passthrough")
    else:
        from rosbags.image import message_to_cvimage

        img = message_to_cvimage(msg)
    return _to_rgb(np.asarray(img), msg.encoding)


def compressed_to_rgb(msg) -> np.ndarray:
    data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if data.size == 0:
        raise FrameError("empty compressed image")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise FrameError(f"cannot decode compressed image (format {msg.format!r}, {data.size} bytes)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def rgb_to_image(rgb: np.ndarray, stamp_ns: int = 0, encoding: str = "rgb8", frame_id: str = "camera"):
    """An RGB array as the sensor_msgs/Image a camera driver would publish (rgb8 or bgr8)."""
    from sensor_msgs.msg import Image

    if encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"rgb_to_image writes rgb8 or bgr8, not {encoding!r}")
    msg = Image()
    msg.height, msg.width = rgb.shape[:2]
    msg.encoding, msg.step = encoding, rgb.shape[1] * 3
    msg.data = (rgb if encoding == "rgb8" else rgb[:, :, ::-1]).tobytes()
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 10 ** 9)
    return msg


def _to_rgb(img: np.ndarray, encoding: str) -> np.ndarray:
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        return cv2.cvtColor(img.reshape(img.shape[0], img.shape[1]), cv2.COLOR_GRAY2RGB)
    if encoding in ("bgr8", "8UC3"):
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if encoding == "bgra8":
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if encoding == "rgba8":
        return cv2.cvtColor(img, cv2.COLOR_RGBA2RGB)
    return np.ascontiguousarray(img)
