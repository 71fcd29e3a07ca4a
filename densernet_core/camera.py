"""Pinhole camera intrinsics with OpenCV distortion, from a YAML file, a KITTI calib.txt or a ROS CameraInfo.

Poses in this package are camera-to-world: a map place's position is the camera centre and its
orientation rotates camera coordinates (OpenCV convention: x right, y down, z forward) into the map
frame. `world_to_camera` gives the (R, t) that OpenCV's projection functions take.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .config import ConfigError
from .listing import first_few

DISTORTION_LENGTHS = (0, 4, 5, 8, 12, 14)  # the coefficient counts OpenCV accepts


@dataclass(frozen=True)
class Camera:
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion: tuple[float, ...] = field(default=())  # k1 k2 p1 p2 [k3 [k4 k5 k6 ...]] (OpenCV order)

    def __post_init__(self) -> None:
        object.__setattr__(self, "distortion", tuple(float(v) for v in self.distortion))
        ok = (self.width > 0 and self.height > 0 and self.fx > 0 and self.fy > 0
              and all(math.isfinite(v) for v in (self.fx, self.fy, self.cx, self.cy, *self.distortion))
              and len(self.distortion) in DISTORTION_LENGTHS)
        if not ok:
            raise ConfigError(f"camera: invalid intrinsics {self}: need width, height, fx, fy > 0, finite values, "
                              f"and 0, 4, 5, 8, 12 or 14 distortion coefficients")

    @property
    def matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def dist(self) -> np.ndarray:
        return np.array(self.distortion, dtype=np.float64)

    def scaled(self, width: int, height: int) -> "Camera":
        """The same camera for an image resized to width x height (distortion is resolution-free)."""
        sx, sy = width / self.width, height / self.height
        return Camera(width, height, self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5,
                      self.distortion)

    def undistort(self, pixels: np.ndarray) -> np.ndarray:
        """Pixel coordinates of the same rays in the ideal (distortion-free) camera."""
        import cv2

        pts = np.asarray(pixels, dtype=np.float64).reshape(-1, 1, 2)
        if not any(self.distortion):
            return pts.reshape(-1, 2)
        return cv2.undistortPoints(pts, self.matrix, self.dist, P=self.matrix).reshape(-1, 2)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["distortion"] = list(self.distortion)
        return d


def camera_from_mapping(data: Mapping[str, Any], where: str) -> Camera:
    """Our YAML ({width, height, fx, fy, cx, cy, distortion}) or ROS camera_calibration's
    ({image_width, image_height, camera_matrix: {data}, distortion_coefficients: {data}})."""
    try:
        if "camera_matrix" in data:
            k = np.asarray(data["camera_matrix"]["data"], float).reshape(3, 3)
            dist = data.get("distortion_coefficients", {}).get("data", [])
            return Camera(int(data["image_width"]), int(data["image_height"]), k[0, 0], k[1, 1], k[0, 2], k[1, 2],
                          tuple(dist))
        unknown = set(data) - {"width", "height", "fx", "fy", "cx", "cy", "distortion"}
        if unknown:
            raise ConfigError(f"{where}: unknown camera key(s) {sorted(unknown)}")
        return Camera(int(data["width"]), int(data["height"]), float(data["fx"]), float(data["fy"]), float(data["cx"]),
                      float(data["cy"]), tuple(data.get("distortion", ())))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{where}: not a camera description ({type(exc).__name__}: {exc}); expected width, height, "
                          "fx, fy, cx, cy[, distortion] or a ROS camera_info YAML") from exc


def load_camera(path: str | Path, image_size: tuple[int, int] | None = None) -> Camera:
    """A camera from YAML, or from a KITTI calib.txt (its first 3x4 projection matrix; the image size,
    which calib.txt lacks, is `image_size` (width, height))."""
    from .config import load_yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"camera file not found: {path}")
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        return camera_from_mapping(load_yaml(path), str(path))
    first = path.read_text().splitlines()[0].split()
    values = first[1:] if first and first[0].endswith(":") else first
    if len(values) != 12:
        raise ConfigError(f"{path}: a KITTI calib.txt line has 12 numbers (optionally after 'P0:'), got {len(values)}")
    if image_size is None:
        raise ConfigError(f"{path}: a KITTI calib.txt gives no image size; pass it (width, height)")
    p = np.asarray(values, float).reshape(3, 4)
    return Camera(int(image_size[0]), int(image_size[1]), p[0, 0], p[1, 1], p[0, 2], p[1, 2])


def camera_from_bag(bag: str | Path, topic: str) -> Camera:
    """The intrinsics of the first sensor_msgs/CameraInfo on `topic` of a rosbag2 recording."""
    from .bags import open_bag, topic_messages

    bag = Path(bag)
    damaged = []
    with open_bag(bag) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns:
            raise ConfigError(f"{bag}: no topic {topic!r}; topics are {sorted({c.topic for c in reader.connections})}")
        if conns[0].msgtype != "sensor_msgs/msg/CameraInfo":
            raise ConfigError(f"{bag}: camera topic {topic!r} has type {conns[0].msgtype}, expected sensor_msgs/msg/CameraInfo")
        for message in topic_messages(reader, conns, bag, warn=False):
            m = message.msg
            if m is None:  # a damaged message: the intrinsics are in the next one as well
                damaged.append(f"{message.index} ({message.error})")
                continue
            return Camera(int(m.width), int(m.height), float(m.k[0]), float(m.k[4]), float(m.k[2]), float(m.k[5]),
                          tuple(float(v) for v in m.d))
    raise ConfigError(f"{bag}: camera topic {topic!r} has no messages" +
                      (f" that can be read: {first_few(damaged)}" if damaged else ""))


def world_to_camera(position: np.ndarray, quaternion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R, t) with x_cam = R x_world + t, from a camera-to-world pose (position, quaternion xyzw)."""
    from scipy.spatial.transform import Rotation

    r_wc = Rotation.from_quat(quaternion).as_matrix()
    r = r_wc.T
    return r, -r @ np.asarray(position, float)
