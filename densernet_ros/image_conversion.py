"""sensor_msgs Image/CompressedImage -> RGB numpy, with errors that name the problem (and back,
for the tools and tests that play the camera).

The real cv_bridge is used when it imports (a ROS 2 install); otherwise the raw bytes are read by
densernet_core.images.raw_image_array: rows `step` bytes apart (drivers pad rows for alignment),
16-bit samples in the message's byte order (`is_bigendian`). (rosbags-image, the fallback before,
ignored both: padded rows came out sheared.) Sizes and encodings are checked first, so a truncated
or oddly encoded frame is rejected by name instead of crashing the converter.
"""
from __future__ import annotations

import cv2
import numpy as np

from densernet_core.images import ImageError, check_raw_image, raw_image_array, raw_to_rgb

try:  # a system ROS 2 install
    from cv_bridge import CvBridge

    _BRIDGE = CvBridge()
except Exception:  # noqa: BLE001 - PyPI's cv-bridge fails at import with numpy 2; fall back
    _BRIDGE = None

class FrameError(ValueError):
    """A frame cannot be used (unsupported encoding, truncated data, undecodable JPEG, empty)."""


def image_to_rgb(msg) -> np.ndarray:
    try:
        check_raw_image(msg)
        img = _BRIDGE.imgmsg_to_cv2(msg, desired_encoding="passthrough") if _BRIDGE is not None \
            else raw_image_array(msg)
        return raw_to_rgb(np.asarray(img), msg.encoding)
    except ImageError as exc:
        raise FrameError(str(exc)) from exc


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
