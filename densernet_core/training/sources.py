"""Dataset sources named in YAML (one loader per `type`), and database/query splits built from them.

A split concatenates sources and remembers which source each image came from (its group), so
mining can demand positives from another traversal. Relative paths resolve against the
current directory.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..config import ConfigError, dataclass_from_mapping
from ..datasets import GeoImages, frame_mismatch, load_csv, load_kitti, load_netvlad_mat, load_rosbag, load_traverse

SOURCE_TYPES = ("csv", "traverse", "kitti", "mat", "rosbag")


@dataclass(frozen=True)
class SourceSpec:
    type: str
    path: str
    frames: tuple[int, ...] = ()  # [start, stop) for traverse/kitti; empty = all
    step: int = 1  # keep every step-th frame of the range
    image_root: str = ""  # csv/mat: folder the image names are relative to
    split: str = "database"  # mat: database | queries
    spacing: float = 1.0  # traverse: metres (or frames) between consecutive indices
    image_topic: str = ""  # rosbag
    pose_topic: str = ""  # rosbag
    max_dt: float = 0.1  # rosbag: seconds between an image and its pose
    extract_dir: str = ""  # rosbag: where frames are written
    skip_bad: bool = False  # log and skip bad rows / missing images instead of failing
    name: str = ""  # group name (default: path)

    def __post_init__(self) -> None:
        if self.type not in SOURCE_TYPES:
            raise ConfigError(f"source type {self.type!r} unknown; choose one of {list(SOURCE_TYPES)}")
        if not self.path:
            raise ConfigError(f"{self.type} source needs a path")
        if self.frames and (len(self.frames) != 2 or self.frames[0] < 0 or self.frames[1] <= self.frames[0]):
            raise ConfigError(f"{self.path}: frames must be [start, stop) with 0 <= start < stop, got {list(self.frames)}")
        if self.step < 1:
            raise ConfigError(f"{self.path}: step must be >= 1, got {self.step}")
        if self.type == "rosbag" and not (self.image_topic and self.pose_topic and self.extract_dir):
            raise ConfigError(f"{self.path}: a rosbag source needs image_topic, pose_topic and extract_dir")
        if self.type == "mat" and not self.image_root:
            raise ConfigError(f"{self.path}: a mat source needs image_root (the dataset's image folder)")

    @property
    def group(self) -> str:
        if self.name:
            return self.name
        return f"{self.path}:{self.split}" if self.type == "mat" else self.path


def load_source(spec: SourceSpec, utm_zone: str | None = None) -> GeoImages:
    """One source; lat/lon (a CSV's, a bag's NavSatFix) in `utm_zone` where given (load_split: the first's)."""
    frames = list(range(spec.frames[0], spec.frames[1], spec.step)) if spec.frames else None
    if spec.type == "csv":
        data = load_csv(spec.path, spec.image_root or None, skip_bad=spec.skip_bad, utm_zone=utm_zone)
    elif spec.type == "traverse":
        data = load_traverse(spec.path, frames, spacing=spec.spacing)
    elif spec.type == "kitti":
        data = load_kitti(spec.path, frames)
    elif spec.type == "mat":
        data = load_netvlad_mat(spec.path, spec.image_root, spec.split, skip_missing=spec.skip_bad)
    else:
        data = load_rosbag(spec.path, spec.image_topic, spec.pose_topic, spec.extract_dir, max_dt=spec.max_dt,
                           utm_zone=utm_zone)
    if spec.type in ("csv", "mat", "rosbag") and (spec.frames or spec.step > 1):
        start, stop = spec.frames if spec.frames else (0, len(data))
        data = data.subset(range(start, min(stop, len(data)), spec.step))
        if not len(data):
            raise ConfigError(f"{spec.path}: frames {list(spec.frames)} select no image")
    return data


@dataclass
class Split:
    """Concatenated sources with the group (source index) of every image."""

    data: GeoImages
    groups: np.ndarray
    group_names: list[str] = field(default_factory=list)


def load_split(specs: tuple[SourceSpec, ...], utm_zone: str | None = None) -> Split:
    """The sources concatenated; every lat/lon in one UTM zone (`utm_zone`, else the first such source's),
    so positives across traverses are measured in one frame (`data.utm_zone` says which)."""
    if not specs:
        raise ConfigError("a split needs at least one source")
    parts = []
    for spec in specs:
        parts.append(load_source(spec, utm_zone))
        problem = frame_mismatch(parts[0].utm_zone, parts[0].positions, parts[-1].utm_zone, parts[-1].positions,
                                 f"source {spec.group}", f"the first source's ({specs[0].group}) positions")
        if problem:  # positives and negatives are found by distance across sources
            raise ConfigError(problem)
        utm_zone = utm_zone or parts[-1].utm_zone or None
    images = [p for part in parts for p in part.images]
    data = GeoImages(images, np.concatenate([p.positions for p in parts]),
                     np.concatenate([p.orientations for p in parts]), np.concatenate([p.timestamps for p in parts]),
                     ";".join(s.group for s in specs), all(p.has_orientation for p in parts), parts[0].frame_id,
                     [n for part in parts for n in part.names], utm_zone=utm_zone or "")
    groups = np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)])
    return Split(data, groups, [s.group for s in specs])


def specs_from(items: Any, where: str) -> tuple[SourceSpec, ...]:
    if isinstance(items, Mapping):
        items = [items]
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{where}: expected a list of sources, got {items!r}")
    return tuple(dataclass_from_mapping(SourceSpec, item, f"{where}[{i}]") for i, item in enumerate(items))


def load_database_and_queries(database: tuple[SourceSpec, ...], queries: tuple[SourceSpec, ...],
                              name: str) -> tuple[Split, Split]:
    """A database and its queries in one metric frame: lat/lon in the database's UTM zone, and neither local
    x/y against the other's lat/lon (their positives are found by distance)."""
    db = load_split(database)
    q = load_split(queries, db.data.utm_zone or None)
    problem = frame_mismatch(db.data.utm_zone, db.data.positions, q.data.utm_zone, q.data.positions,
                             f"{name} queries", f"{name} database's positions")
    if problem:
        raise ConfigError(problem)
    return db, q
