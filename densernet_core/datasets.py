"""Geo-tagged image sets: image paths with metric positions, optional orientation and time.

One interface (`GeoImages`) for every source: a folder plus a CSV, index-aligned traverses
(Gardens Point style, frame index as position), KITTI pose files and rosbag2 recordings.
Bad rows and missing images raise an error naming the file and line unless the caller asks
to skip them, and then each skip is logged; nothing is dropped silently.
"""
from __future__ import annotations

import csv
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .bags import open_bag, topic_messages
from .geometry import quat_to_yaw, rotation_to_quat, yaw_to_quat
from .listing import first_few

LOG = logging.getLogger("densernet")
IDENTITY_QUAT = (0.0, 0.0, 0.0, 1.0)  # x, y, z, w


class DatasetError(ValueError):
    """A dataset file is missing, malformed or refers to missing images."""


class StringColumn(Sequence[str]):
    """Strings held in one numpy string array, not as a Python object each: a map's 10^6 image paths as
    Path objects held ~900 MB in every process that loaded the map (a node among them)."""

    def __init__(self, values: Sequence[str] | np.ndarray) -> None:
        self._values = np.asarray(values, dtype=np.dtypes.StringDType())

    def _item(self, value: str):
        return value

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, i):
        if isinstance(i, slice) or np.ndim(i) > 0:  # a slice or an index array: a column again
            return type(self)(self._values[i])
        return self._item(str(self._values[i]))

    def __iter__(self):
        return (self._item(str(v)) for v in self._values)

    def strings(self) -> Iterator[str]:
        """The values as plain strings (no Path made per value)."""
        return (str(v) for v in self._values)

    def __add__(self, other: Sequence) -> list:
        return [*self, *other]

    def __radd__(self, other: Sequence) -> list:
        return [*other, *self]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and len(self) == len(other) and all(a == b for a, b in zip(self, other))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} items)"

    @property
    def basenames(self) -> "StringColumn":
        """Each path's last component (Path.name), without making the paths."""
        return StringColumn(np.strings.rpartition(self._values, np.array("/", dtype=self._values.dtype))[2])


class PathColumn(StringColumn):
    """Image paths held as one string array; a Path is made on access."""

    def _item(self, value: str) -> Path:
        return Path(value)


@dataclass
class GeoImages:
    """Images with positions in metres (N x 3), quaternions xyzw (N x 4) and timestamps (s)."""

    images: Sequence[Path]  # a list, or a PathColumn (a map's places: one string array)
    positions: np.ndarray
    orientations: np.ndarray
    timestamps: np.ndarray
    source: str = ""
    has_orientation: bool = False
    frame_id: str = "map"
    names: Sequence[str] = field(default_factory=list)
    place_sources: list[str] = field(default_factory=list)  # per image: the traverse it came from
    utm_zone: str = ""  # positions are UTM in this zone ('32N') where they came as lat/lon; "" otherwise

    def __post_init__(self) -> None:
        n = len(self.images)
        self.positions = np.asarray(self.positions, dtype=np.float64).reshape(n, 3)
        self.orientations = np.asarray(self.orientations, dtype=np.float64).reshape(n, 4)
        self.timestamps = np.asarray(self.timestamps, dtype=np.float64).reshape(n)
        if not self.names:
            self.names = (self.images.basenames if isinstance(self.images, StringColumn)
                          else [p.name for p in self.images])
        if not self.place_sources:
            self.place_sources = [self.source] * n

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: Sequence[int]) -> "GeoImages":
        idx = list(idx)
        return GeoImages([self.images[i] for i in idx], self.positions[idx], self.orientations[idx],
                         self.timestamps[idx], self.source, self.has_orientation, self.frame_id,
                         [self.names[i] for i in idx], [self.place_sources[i] for i in idx], self.utm_zone)


UTM_ZONE = re.compile(r"([1-9]|[1-5][0-9]|60)([NS])")
UTM_EASTING_M = (100_000.0, 900_000.0)  # every UTM zone's eastings lie in here (166-834 km at the equator)
UTM_NORTHING_M = (0.0, 10_000_000.0)


def utm_zone_of(lat: float, lon: float) -> str:
    """The UTM zone of a point, with its hemisphere: '32N', '55S'."""
    return f"{int((lon + 180) // 6) % 60 + 1}{'S' if lat < 0 else 'N'}"


def latlon_to_utm(lat: np.ndarray, lon: np.ndarray, zone: str | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """WGS84 to UTM easting/northing (m) in one `zone` ('32N'; by default the first point's), Snyder's series.

    One zone and one hemisphere for every point and every file of a map (the map records it): a route across
    a zone's edge or the equator stays continuous, and a traverse added later, or ground truth, lands where
    the map's places are. (Each file's own first point chose before: a traverse starting over a zone's
    edge was put hundreds of km from the map, and each point's hemisphere 10,000 km at the equator.)"""
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    if np.any(np.abs(lat) > 84) or np.any(np.abs(lon) > 180):
        raise DatasetError("latitude must be within +-84 and longitude within +-180 degrees for UTM")
    zone = zone or utm_zone_of(float(lat[0]), float(lon[0]))
    parsed = UTM_ZONE.fullmatch(zone)
    if parsed is None:
        raise DatasetError(f"UTM zone {zone!r} is not a zone number 1-60 and N or S, like '32N'")
    number, south = int(parsed.group(1)), parsed.group(2) == "S"
    a, f, k0 = 6378137.0, 1 / 298.257223563, 0.9996
    e2 = f * (2 - f)
    ep2 = e2 / (1 - e2)
    phi = np.radians(lat)
    lam = np.radians((lon - ((number - 1) * 6 - 180 + 3) + 180) % 360 - 180)  # from the zone's meridian
    n = a / np.sqrt(1 - e2 * np.sin(phi) ** 2)
    t = np.tan(phi) ** 2
    c = ep2 * np.cos(phi) ** 2
    aa = np.cos(phi) * lam
    m = a * ((1 - e2 / 4 - 3 * e2 ** 2 / 64 - 5 * e2 ** 3 / 256) * phi
             - (3 * e2 / 8 + 3 * e2 ** 2 / 32 + 45 * e2 ** 3 / 1024) * np.sin(2 * phi)
             + (15 * e2 ** 2 / 256 + 45 * e2 ** 3 / 1024) * np.sin(4 * phi)
             - (35 * e2 ** 3 / 3072) * np.sin(6 * phi))
    east = k0 * n * (aa + (1 - t + c) * aa ** 3 / 6 + (5 - 18 * t + t ** 2 + 72 * c - 58 * ep2) * aa ** 5 / 120) + 500000.0
    north = k0 * (m + n * np.tan(phi) * (aa ** 2 / 2 + (5 - t + 9 * c + 4 * c ** 2) * aa ** 4 / 24
                                         + (61 - 58 * t + t ** 2 + 600 * c - 330 * ep2) * aa ** 6 / 720))
    return east, north + (10000000.0 if south else 0.0), zone


def looks_utm(positions: np.ndarray) -> bool:
    """Whether x/y could be UTM metres: eastings of a zone, northings of a hemisphere (a local frame's
    places lie near its origin, 100 km and more from any easting)."""
    xy = np.asarray(positions, float)[:, :2]
    return bool(len(xy) and np.all((xy[:, 0] > UTM_EASTING_M[0]) & (xy[:, 0] < UTM_EASTING_M[1])
                                   & (xy[:, 1] >= UTM_NORTHING_M[0]) & (xy[:, 1] <= UTM_NORTHING_M[1])))


def local_origin(positions: np.ndarray, utm_zone: str = "") -> np.ndarray | None:
    """Where a map frame relative to the places should have its origin, for places in UTM metres (from lat/lon,
    or UTM x/y): the first place's easting and northing in whole metres, height 0; None for places already in a
    local frame. Published poses at UTM northings (5.6e6 m) lose 0.5 m to float32 in RViz and other consumers
    (nav2's GPS set-up keeps `map` local, under a `utm` frame); the first place never changes as traverses are
    added, so neither does the origin."""
    xy = np.asarray(positions, float)
    if not len(xy) or not (utm_zone or looks_utm(xy)):
        return None
    return np.array([round(float(xy[0, 0])), round(float(xy[0, 1])), 0.0])


def frame_mismatch(ref_zone: str, ref_positions: np.ndarray, zone: str, positions: np.ndarray, what: str,
                   ref: str = "the map's places") -> str | None:
    """Why `what`'s positions cannot be in the frame of `ref` (a map's places, a split's first source), or
    None: lat/lon (projected into UTM `zone`) against local x/y, local x/y against lat/lon, or another UTM
    zone. Any of them would land hundreds of km from the other's positions, silently."""
    def extent(xy: np.ndarray) -> str:
        return f"x {xy[:, 0].min():.0f} to {xy[:, 0].max():.0f} m, y {xy[:, 1].min():.0f} to {xy[:, 1].max():.0f} m"

    if zone and ref_zone and zone != ref_zone:
        return f"{what} is UTM zone {zone}, {ref} zone {ref_zone}: project its lat/lon in zone {ref_zone}"
    if zone and not ref_zone and not looks_utm(ref_positions):
        return (f"{what} came as lat/lon (UTM zone {zone}), but {ref} are x/y in a local frame "
                f"({extent(np.asarray(ref_positions, float))}): give its positions as x/y in that frame")
    if ref_zone and not zone and not looks_utm(positions):
        return (f"{what} is x/y in a local frame ({extent(np.asarray(positions, float))}), but {ref} came as "
                f"lat/lon (UTM zone {ref_zone}): give its lat/lon, or UTM x/y in zone {ref_zone}")
    return None


# ---- loaders ----------------------------------------------------------------------------------
def _float(row: dict, key: str, where: str) -> float:
    try:
        value = float(row[key])
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: column {key!r} is {row.get(key)!r}, not a number") from None
    if not math.isfinite(value):
        raise DatasetError(f"{where}: column {key!r} is not finite ({value})")
    return value


def load_csv(csv_path: str | Path, image_root: str | Path | None = None, skip_bad: bool = False,
             frame_id: str = "map", require_images: bool = True, utm_zone: str | None = None) -> GeoImages:
    """`image,x,y[,z][,yaw | qx,qy,qz,qw][,timestamp]` or `image,lat,lon[,alt]...` (converted to UTM, in
    `utm_zone` where given: the map's, for a traverse added to it or its ground truth).

    `require_images=False` reads positions only (ground truth for images that live elsewhere)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DatasetError(f"poses CSV not found: {csv_path}")
    root = Path(image_root) if image_root else csv_path.parent
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or [])
        geo = {"lat", "lon"} <= cols
        if "image" not in cols or not (geo or {"x", "y"} <= cols):
            raise DatasetError(f"{csv_path}: header must have 'image' and 'x,y' or 'lat,lon'; got {reader.fieldnames}")
        quat = {"qx", "qy", "qz", "qw"} <= cols
        images, pos, ori, stamps = [], [], [], []
        for line, row in enumerate(reader, start=2):
            where = f"{csv_path}:{line}"
            try:
                img = root / row["image"]
                if require_images and not img.is_file():
                    raise DatasetError(f"{where}: image {img} not found")
                a, b = (_float(row, "lat", where), _float(row, "lon", where)) if geo else \
                    (_float(row, "x", where), _float(row, "y", where))
                z = _float(row, "alt" if geo else "z", where) if (("alt" if geo else "z") in cols and row.get("alt" if geo else "z")) else 0.0
                if quat:
                    q = tuple(_float(row, k, where) for k in ("qx", "qy", "qz", "qw"))
                    norm = math.sqrt(sum(v * v for v in q))
                    if norm < 1e-9:
                        raise DatasetError(f"{where}: zero quaternion")
                    q = tuple(v / norm for v in q)
                elif "yaw" in cols and row.get("yaw"):
                    q = yaw_to_quat(_float(row, "yaw", where))
                else:
                    q = IDENTITY_QUAT
                t = _float(row, "timestamp", where) if ("timestamp" in cols and row.get("timestamp")) else float(line - 2)
            except DatasetError as exc:
                if not skip_bad:
                    raise
                LOG.warning("skipping row: %s", exc)
                continue
            images.append(img)
            pos.append((a, b, z))
            ori.append(q)
            stamps.append(t)
    if not images:
        raise DatasetError(f"{csv_path}: no usable rows")
    pos = np.array(pos)
    zone = ""
    if geo:
        east, north, zone = latlon_to_utm(pos[:, 0], pos[:, 1], utm_zone)
        LOG.info("%s: lat/lon converted to UTM zone %s", csv_path, zone)
        pos = np.stack([east, north, pos[:, 2]], axis=1)
    return GeoImages(images, pos, np.array(ori), np.array(stamps), str(csv_path),
                     has_orientation=quat or "yaw" in cols, frame_id=frame_id, utm_zone=zone)


def load_traverse(folder: str | Path, frames: Sequence[int] | None = None, spacing: float = 1.0,
                  pattern: str = "Image{:03d}.jpg") -> GeoImages:
    """Index-aligned traverse (Gardens Point, Nordland): same index = same place; x = index * spacing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"traverse folder not found: {folder}")
    if frames is None:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png", ".jpeg"))
        frames = list(range(len(files)))
        images = files
    else:
        images = [folder / pattern.format(i) for i in frames]
        missing = [str(p) for p in images if not p.is_file()]
        if missing:
            raise DatasetError(f"{folder}: missing frames {missing[:3]}{'...' if len(missing) > 3 else ''}")
    n = len(images)
    pos = np.zeros((n, 3))
    pos[:, 0] = np.asarray(frames, float) * spacing
    return GeoImages(list(images), pos, np.tile(IDENTITY_QUAT, (n, 1)), np.asarray(frames, float), str(folder))


def load_kitti(folder: str | Path, frames: Sequence[int] | None = None) -> GeoImages:
    """KITTI odometry: image_l/NNNNNN.png and poses.txt (camera-to-world 3x4 per line)."""
    folder = Path(folder)
    poses_file = folder / "poses.txt"
    if not poses_file.is_file():
        raise DatasetError(f"KITTI poses not found: {poses_file}")
    poses = []
    for line, text in enumerate(poses_file.read_text().splitlines(), start=1):
        values = text.split()
        if len(values) != 12:
            raise DatasetError(f"{poses_file}:{line}: expected 12 numbers, got {len(values)}")
        poses.append(np.array(values, float).reshape(3, 4))
    frames = list(range(len(poses))) if frames is None else list(frames)
    images = [folder / "image_l" / f"{i:06d}.png" for i in frames]
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise DatasetError(f"{folder}: missing images {missing[:3]}")
    pos = np.array([poses[i][:, 3] for i in frames])
    ori = np.array([rotation_to_quat(poses[i][:, :3]) for i in frames])
    return GeoImages(images, pos, ori, np.asarray(frames, float) * 0.1, str(folder), has_orientation=True)


# ---- NetVLAD .mat (Pittsburgh 30k/250k, Tokyo 24/7, TokyoTM) ---------------------------------
MAT_SPLITS = ("database", "queries")
_MAT_FIELDS = {"database": ("dbImageFns", "utmDb", "dbTimeStamp"), "queries": ("qImageFns", "utmQ", "qTimeStamp")}


def _mat_strings(cell: np.ndarray) -> list[str]:
    """A MATLAB cell array of strings as read by scipy (object array of 1-element str arrays)."""
    out = []
    for item in np.asarray(cell, dtype=object).ravel():
        while isinstance(item, np.ndarray):
            item = item.ravel()[0] if item.size else ""
        out.append(str(item))
    return out


def load_netvlad_mat(mat_path: str | Path, image_root: str | Path, split: str,
                     skip_missing: bool = False) -> GeoImages:
    """One split of a NetVLAD `dbStruct` file (`pitts30k_train.mat`, `tokyoTM_val.mat`, ...).

    Positions are the file's UTM easting/northing; images are resolved under `image_root`
    (the dataset's image folder, or its `queries_real` folder for Tokyo 24/7 queries).
    """
    from scipy.io import loadmat

    mat_path, root = Path(mat_path), Path(image_root)
    if split not in MAT_SPLITS:
        raise DatasetError(f"split must be one of {MAT_SPLITS}, got {split!r}")
    if not mat_path.is_file():
        raise DatasetError(f".mat file not found: {mat_path}")
    try:
        mat = loadmat(str(mat_path))
    except Exception as exc:  # scipy raises ValueError/TypeError/OSError on foreign or truncated files
        raise DatasetError(f"{mat_path}: not a readable MATLAB file: {exc}") from exc
    if "dbStruct" not in mat:
        raise DatasetError(f"{mat_path}: no 'dbStruct' variable (not a NetVLAD dataset file); "
                           f"variables are {sorted(k for k in mat if not k.startswith('__'))}")
    struct = mat["dbStruct"]
    names = struct.dtype.names or ()
    files_key, utm_key, time_key = _MAT_FIELDS[split]
    for key in (files_key, utm_key):
        if key not in names:
            raise DatasetError(f"{mat_path}: dbStruct has no field {key!r}; fields are {list(names)}")
    record = struct.ravel()[0]
    files = _mat_strings(record[files_key])
    utm = np.asarray(record[utm_key], dtype=np.float64)
    if utm.ndim != 2 or 2 not in utm.shape:
        raise DatasetError(f"{mat_path}: {utm_key} has shape {utm.shape}, expected 2 x N")
    utm = utm if utm.shape[0] == 2 and utm.shape[1] == len(files) else utm.T
    if utm.shape != (2, len(files)):
        raise DatasetError(f"{mat_path}: {utm_key} has {utm.shape[1]} positions for {len(files)} images")
    stamps = np.arange(len(files), dtype=np.float64)
    if time_key in names and np.asarray(record[time_key]).size == len(files):
        stamps = np.asarray(record[time_key], dtype=np.float64).ravel()
    images, keep = [], []
    for i, name in enumerate(files):
        path = root / name
        if not path.is_file():
            if not skip_missing:
                raise DatasetError(f"{mat_path}: {split} image {i} ({name}) not found under {root}")
            LOG.warning("%s: skipping missing %s image %s", mat_path, split, path)
            continue
        images.append(path)
        keep.append(i)
    if not images:
        raise DatasetError(f"{mat_path}: no {split} image found under {root}")
    pos = np.zeros((len(keep), 3))
    pos[:, :2] = utm[:, keep].T
    return GeoImages(images, pos, np.tile(IDENTITY_QUAT, (len(keep), 1)), stamps[keep], f"{mat_path}:{split}",
                     names=[files[i] for i in keep])


# ---- rosbag2 ------------------------------------------------------------------------------------
POSE_TYPES = ("nav_msgs/msg/Odometry", "geometry_msgs/msg/PoseStamped",
              "geometry_msgs/msg/PoseWithCovarianceStamped", "sensor_msgs/msg/NavSatFix")
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


def _check_topics(bag: Path, types: dict[str, str], image_topic: str, pose_topic: str) -> None:
    for topic, kinds, what in ((image_topic, IMAGE_TYPES, "image"), (pose_topic, POSE_TYPES, "pose")):
        if topic not in types:
            raise DatasetError(f"{bag}: no topic {topic!r}; topics are {sorted(types)}")
        if types[topic] not in kinds:
            raise DatasetError(f"{bag}: {what} topic {topic!r} has type {types[topic]}, expected one of {kinds}")


def _pose_of(msg, msgtype: str) -> tuple[tuple[float, float, float], tuple[float, float, float, float] | None, str]:
    if msgtype == "sensor_msgs/msg/NavSatFix":
        return (msg.latitude, msg.longitude, msg.altitude), None, msg.header.frame_id
    pose = msg.pose.pose if msgtype in ("nav_msgs/msg/Odometry", "geometry_msgs/msg/PoseWithCovarianceStamped") else msg.pose
    p, q = pose.position, pose.orientation
    return (p.x, p.y, p.z), (q.x, q.y, q.z, q.w), msg.header.frame_id


def load_rosbag(bag: str | Path, image_topic: str, pose_topic: str, out_dir: str | Path,
                max_dt: float = 0.1, every: int = 1, utm_zone: str | None = None) -> GeoImages:
    """Images from a rosbag2 recording with the pose nearest in time (within `max_dt` s); NavSatFix
    positions in UTM (`utm_zone` where given, as load_csv).

    Frames are written to `out_dir` as JPEG/PNG so the map keeps what it was built from.
    """
    import cv2
    bag, out_dir = Path(bag), Path(out_dir)
    with open_bag(bag) as reader:
        by_topic = {c.topic: c for c in reader.connections}
        _check_topics(bag, {t: c.msgtype for t, c in by_topic.items()}, image_topic, pose_topic)
        out_dir.mkdir(parents=True, exist_ok=True)
        pose_conn, img_conn = by_topic[pose_topic], by_topic[image_topic]
        pose_t, pose_p, pose_q, frame = [], [], [], "map"
        damaged: dict[str, list[str]] = {pose_topic: [], image_topic: []}  # left out, with why
        for m in topic_messages(reader, [pose_conn], bag):
            if m.msg is None:
                damaged[pose_topic].append(f"{m.index} ({m.error})")
                continue
            p, q, frame = _pose_of(m.msg, pose_conn.msgtype)
            pose_t.append(m.stamp)
            pose_p.append(p)
            pose_q.append(q if q is not None else IDENTITY_QUAT)
        if not pose_t:
            raise DatasetError(f"{bag}: pose topic {pose_topic!r} has no messages")
        pose_t = np.array(pose_t)
        order = np.argsort(pose_t)
        pose_t, pose_p, pose_q = pose_t[order], np.array(pose_p)[order], np.array(pose_q)[order]
        zone = ""
        if pose_conn.msgtype == "sensor_msgs/msg/NavSatFix":
            east, north, zone = latlon_to_utm(pose_p[:, 0], pose_p[:, 1], utm_zone)
            pose_p = np.stack([east, north, pose_p[:, 2]], axis=1)
        images, pos, ori, stamps, unmatched = [], [], [], [], 0
        from rosbags.image import compressed_image_to_cvimage

        from .images import message_to_rgb

        for m in topic_messages(reader, [img_conn], bag, every=every):
            k, msg, t = m.index, m.msg, m.stamp
            if msg is None:
                damaged[image_topic].append(f"{k} ({m.error})")
                continue
            j = int(np.clip(np.searchsorted(pose_t, t), 1, len(pose_t) - 1)) if len(pose_t) > 1 else 0
            if len(pose_t) > 1 and abs(pose_t[j - 1] - t) < abs(pose_t[j] - t):
                j -= 1
            if abs(pose_t[j] - t) > max_dt:
                unmatched += 1
                continue
            try:
                img = compressed_image_to_cvimage(msg, "bgr8") if img_conn.msgtype.endswith("CompressedImage") \
                    else cv2.cvtColor(message_to_rgb(msg), cv2.COLOR_RGB2BGR)
            except Exception as exc:
                damaged[image_topic].append(f"{k} ({exc})")
                continue
            path = out_dir / f"{k:06d}.png"
            cv2.imwrite(str(path), img)
            images.append(path)
            pos.append(pose_p[j])
            ori.append(pose_q[j])
            stamps.append(t)
    if unmatched:
        LOG.warning("%s: %d image(s) had no pose within %.3f s and were not used", bag, unmatched, max_dt)
    for topic, bad in damaged.items():  # a recording cannot be mended as a folder of images can: go on without
        if bad:
            LOG.warning("%s: %d message(s) on %s cannot be read or decoded and were left out: %s", bag, len(bad),
                        topic, first_few(bad))
    if not images:
        raise DatasetError(f"{bag}: no image on {image_topic!r} has a pose within {max_dt} s")
    return GeoImages(images, np.array(pos), np.array(ori), np.array(stamps), str(bag),
                     has_orientation=pose_conn.msgtype != "sensor_msgs/msg/NavSatFix", frame_id=frame or "map",
                     utm_zone=zone)


def thin(data: GeoImages, min_distance: float, min_angle_deg: float) -> GeoImages:
    """Keep a frame when it moved at least `min_distance` or turned `min_angle_deg` since the last kept one."""
    if min_distance <= 0 and min_angle_deg <= 0:
        return data
    yaws = quat_to_yaw(data.orientations)
    keep = [0]
    for i in range(1, len(data)):
        j = keep[-1]
        moved = np.linalg.norm(data.positions[i] - data.positions[j])
        turned = abs(math.degrees(math.atan2(math.sin(yaws[i] - yaws[j]), math.cos(yaws[i] - yaws[j]))))
        if moved >= min_distance or (min_angle_deg > 0 and turned >= min_angle_deg):
            keep.append(i)
    LOG.info("thinning kept %d of %d frames", len(keep), len(data))
    return data.subset(keep)


CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"


@dataclass(frozen=True)
class BagRoute:
    """What a recording offers for a map: its image, pose and camera-info topics, and the frames they are in."""

    image_topic: str
    pose_topic: str
    camera_info_topic: str | None   # None: the bag holds no CameraInfo for the image topic
    base_frame: str                 # the pose topic's child frame (odometry) or "" (a pose or fix)
    camera_frame: str               # the images' header.frame_id


def bag_route(bag: str | Path, image_topic: str | None = None, pose_topic: str | None = None) -> BagRoute:
    """Pick the topics a map is built from, each given or the one of its kind the bag holds (images: Image or
    CompressedImage; poses: Odometry first, else a pose or fix topic), with the frames of their first messages."""
    bag = Path(bag)
    with open_bag(bag) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        image_topic = image_topic or _only(bag, types, IMAGE_TYPES, "image", "--image-topic")
        if pose_topic is None:
            odometry = [t for t, k in types.items() if k == "nav_msgs/msg/Odometry"]
            pose_topic = odometry[0] if len(odometry) == 1 else _only(bag, types, POSE_TYPES, "pose", "--pose-topic")
        _check_topics(bag, types, image_topic, pose_topic)
        infos = [t for t, k in types.items() if k == CAMERA_INFO_TYPE]
        namespace = image_topic.rsplit("/", 1)[0]
        same = [t for t in infos if t.rsplit("/", 1)[0] == namespace]
        info = same[0] if len(same) == 1 else (infos[0] if len(infos) == 1 else None)
        first = {}
        for topic in (image_topic, pose_topic):
            conns = [c for c in reader.connections if c.topic == topic]
            for m in topic_messages(reader, conns, bag, warn=False):
                if m.msg is not None:  # a damaged message: the frames are read from the next one
                    first[topic] = m.msg
                    break
    pose_msg = first.get(pose_topic)
    base = getattr(pose_msg, "child_frame_id", "") if pose_msg is not None else ""
    camera = first[image_topic].header.frame_id if image_topic in first else ""
    return BagRoute(image_topic, pose_topic, info, base, camera)


def _only(bag: Path, types: dict[str, str], kinds: tuple[str, ...], what: str, flag: str) -> str:
    found = sorted(t for t, k in types.items() if k in kinds)
    if len(found) != 1:
        raise DatasetError(f"{bag}: {'no' if not found else len(found)} {what} topic(s) ({', '.join(found) or 'none'}); "
                           f"name one with {flag}")
    return found[0]
