"""Where the camera sits on the robot: the extrinsic base_frame -> camera frame (REP-103/105).

A localizer publishes the pose of the robot's base in the map frame, never the camera's: nav2 and
robot_localization read `/place_recognition/pose` as `base_link`. Maps therefore hold base poses
(what odometry and GPS give) plus this extrinsic, the 3-D points are triangulated from the camera
poses (base * extrinsic), and a PnP camera pose is turned back into the base pose (camera *
extrinsic^-1). The extrinsic comes from, in this order: a bag's /tf_static (and /tf) when the map is
built from a bag; tf2 at run time (the node, when tf2_ros imports); a `camera_extrinsic` parameter or
YAML file; the one recorded in the map (the same robot). Maps made before extrinsics existed carry
none: their poses are taken as the camera's (the convention they were built under) and published as such.

YAML (`--extrinsic FILE`, node parameter `camera_extrinsic`):
    base_frame: base_link
    camera_frame: camera_optical_frame
    translation: [0.25, 0.0, 0.9]        # camera origin in the base frame, metres
    rotation: [qx, qy, qz, qw]           # or rpy_deg: [roll, pitch, yaw] of the camera frame in the base frame
"""
from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from scipy.spatial.transform import Rotation

from .config import ConfigError, load_yaml
from .geometry import Transform, compose, inverse
from .listing import first_few

LOG = logging.getLogger("densernet")

TF_TOPICS = ("/tf_static", "/tf")
TF_TYPE = "tf2_msgs/msg/TFMessage"


@dataclass(frozen=True)
class Extrinsic:
    """The camera frame's pose in the base frame (base -> camera), and where it came from."""

    base_frame: str
    camera_frame: str
    translation: tuple[float, float, float]
    rotation: tuple[float, float, float, float]  # x, y, z, w
    source: str = ""

    def __post_init__(self) -> None:
        t = np.asarray(self.translation, float)
        q = np.asarray(self.rotation, float)
        if t.shape != (3,) or not np.all(np.isfinite(t)):
            raise ConfigError(f"extrinsic {self.base_frame} -> {self.camera_frame}: translation must be 3 finite "
                              f"numbers, got {self.translation!r}")
        if q.shape != (4,) or not np.all(np.isfinite(q)) or abs(float(np.linalg.norm(q)) - 1.0) > 1e-3:
            raise ConfigError(f"extrinsic {self.base_frame} -> {self.camera_frame}: rotation must be a unit quaternion "
                              f"[x, y, z, w], got {self.rotation!r}")
        if not self.base_frame or not self.camera_frame:
            raise ConfigError("extrinsic: base_frame and camera_frame must be named")

    @property
    def transform(self) -> Transform:
        return np.asarray(self.translation, float), np.asarray(self.rotation, float)

    def to_dict(self) -> dict[str, Any]:
        return {"base_frame": self.base_frame, "camera_frame": self.camera_frame,
                "translation": [float(v) for v in self.translation], "rotation": [float(v) for v in self.rotation],
                "source": self.source}

    def describe(self) -> str:
        t = ", ".join(f"{v:.3f}" for v in self.translation)
        rpy = Rotation.from_quat(self.rotation).as_euler("xyz", degrees=True)
        return (f"{self.base_frame} -> {self.camera_frame}: translation ({t}) m, roll/pitch/yaw "
                f"({rpy[0]:.1f}, {rpy[1]:.1f}, {rpy[2]:.1f}) deg [{self.source}]")


def extrinsic_from_mapping(data: Mapping[str, Any], where: str) -> Extrinsic:
    """From a YAML/JSON mapping (see the module docstring); errors name `where` and the field."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: an extrinsic must be a mapping with base_frame, camera_frame, translation, rotation")
    unknown = set(data) - {"base_frame", "camera_frame", "translation", "rotation", "rpy_deg", "source"}
    if unknown:
        raise ConfigError(f"{where}: unknown extrinsic field(s) {sorted(unknown)}")
    if ("rotation" in data) == ("rpy_deg" in data):
        raise ConfigError(f"{where}: give the rotation as exactly one of rotation [x, y, z, w] or rpy_deg [r, p, y]")
    try:
        rotation = (tuple(float(v) for v in data["rotation"]) if "rotation" in data else
                    tuple(Rotation.from_euler("xyz", [float(v) for v in data["rpy_deg"]], degrees=True).as_quat()))
        if len(rotation) == 4:
            n = math.sqrt(sum(v * v for v in rotation))
            rotation = tuple(v / n for v in rotation) if n > 0 else rotation
        return Extrinsic(str(data.get("base_frame", "")), str(data.get("camera_frame", "")),
                         tuple(float(v) for v in data.get("translation", ())), rotation,
                         str(data.get("source", where)))
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise ConfigError(f"{where}: {exc}") from exc
        raise ConfigError(f"{where}: bad extrinsic ({exc})") from exc


def load_extrinsic(path: str | Path) -> Extrinsic:
    return extrinsic_from_mapping(load_yaml(path, "extrinsic file"), str(path))


def extrinsic_from_bag(bag: str | Path, base_frame: str, camera_frame: str) -> Extrinsic | None:
    """base_frame -> camera_frame from a bag's /tf_static (and the first /tf message of each link), or None
    when the bag does not connect the two frames."""
    from .bags import open_bag, topic_messages

    edges: dict[tuple[str, str], Transform] = {}
    with open_bag(bag) as reader:
        conns = [c for c in reader.connections if c.topic in TF_TOPICS and c.msgtype == TF_TYPE]
        if not conns:
            return None
        static_first = sorted(conns, key=lambda c: TF_TOPICS.index(c.topic))
        damaged = []
        for conn in static_first:
            for m in topic_messages(reader, [conn], bag, warn=False):
                if m.msg is None:  # a damaged message: the links are sent again (static: by every publisher)
                    damaged.append(f"{conn.topic} {m.index} ({m.error})")
                    continue
                for tf in m.msg.transforms:
                    key = (tf.header.frame_id.lstrip("/"), tf.child_frame_id.lstrip("/"))
                    if key not in edges:  # static first; a moving link keeps its first sample
                        tr, q = tf.transform.translation, tf.transform.rotation
                        edges[key] = (np.array([tr.x, tr.y, tr.z]), np.array([q.x, q.y, q.z, q.w]))
    if damaged:
        LOG.warning("%s: %d transform message(s) cannot be read and were left out: %s", bag, len(damaged),
                    first_few(damaged))
    chain = _chain(edges, base_frame.lstrip("/"), camera_frame.lstrip("/"))
    if chain is None:
        return None
    t, q = chain
    return Extrinsic(base_frame, camera_frame, tuple(float(v) for v in t), tuple(float(v) for v in q / np.linalg.norm(q)),
                     f"{bag} /tf_static")


def _chain(edges: dict[tuple[str, str], Transform], start: str, goal: str) -> Transform | None:
    """start -> goal through the transform tree (edges parent -> child, walked either way)."""
    graph: dict[str, list[tuple[str, Transform]]] = {}
    for (parent, child), t in edges.items():
        graph.setdefault(parent, []).append((child, t))
        graph.setdefault(child, []).append((parent, inverse(t)))
    seen = {start: (np.zeros(3), np.array([0.0, 0.0, 0.0, 1.0]))}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            return seen[node]
        for nxt, t in graph.get(node, ()):
            if nxt not in seen:
                seen[nxt] = compose(seen[node], t)
                queue.append(nxt)
    return None
