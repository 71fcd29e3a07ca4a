"""3-D map points: local features of neighbouring mapped frames, triangulated from their known poses.

A map built with a camera (`densernet-map build --camera ...`) keeps, besides the global
descriptors, the 3-D points its frames see, so a query can be located metrically by PnP. For each
place and its nearest mapped neighbours (by position, `PAIRS_PER_PLACE` of them, at least
`min_baseline` apart), local features are matched (mutual nearest neighbours + ratio test) and
triangulated with the two mapped camera poses.

Mapped poses come from GPS or odometry and are noisy, and a wrong pose puts a point in the wrong
place. Every point must therefore agree with both views: in front of both cameras, within
`max_depth`, seen under at least `min_parallax_deg`, and reprojecting within `max_reproj_px` in both
images; points that do not are dropped, not kept with a flag. A pose error that moves the epipolar
geometry (a height error, a tilt) drops the pair's points; one along the baseline or in yaw changes
their depths consistently, which two views cannot see: every other neighbouring view then checks
each point (a keypoint within `confirm_px` of its projection, with a similar descriptor) and adds an
observation where it agrees; `min_views` > 2 keeps only points so confirmed. `densernet-map info`
reports points per place: few points on a stretch of the route is the fingerprint of pose noise.

Stored in the map folder, no pickle:
    points.json        intrinsics, feature kind, parameters, counts
    points_xyz.npy     M x 3 float64, map frame (float32 before 2026-12-07, still read: it steps by 0.5 m
                       at UTM northings)
    points_obs.npy     O x 2 int32: (place id, point id), one row per observation of a point
    points_kp.npy      O x 2 float32: the keypoint in that place's image (pixels of the mapped image)
    points_desc.npy    O x D float16: the local descriptor there
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from ..camera import Camera, camera_from_mapping, world_to_camera
from ..local_features import LocalFeatures, match

POINTS_META = "points.json"
FILES = {"xyz": "points_xyz.npy", "obs": "points_obs.npy", "kp": "points_kp.npy", "desc": "points_desc.npy"}
PAIRS_PER_PLACE = 2


@dataclass(frozen=True)
class TriangulationConfig:
    min_baseline: float = 0.2       # map units between the two camera centres
    max_pair_distance: float = 10.0  # map units: farther places are not paired
    max_reproj_px: float = 2.0      # at the mapped image's resolution
    min_parallax_deg: float = 1.0
    max_depth: float = 80.0         # map units in front of the camera
    max_points_per_place: int = 2000
    min_views: int = 2              # views a point must be seen in (2 that triangulate it + confirmations)
    confirm_px: float = 2.0         # a confirming view's keypoint lies this close to the point's projection
    confirm_similarity: float = 0.8  # ...and its descriptor at least this similar (cosine) to the pair's


@dataclass
class MapPoints:
    camera: Camera              # the mapped images' intrinsics
    kind: str                   # local feature kind
    xyz: np.ndarray             # M x 3
    obs: np.ndarray             # O x 2 (place, point)
    kp: np.ndarray              # O x 2
    desc: np.ndarray            # O x D (float16 on disk)
    config: TriangulationConfig = TriangulationConfig()

    def __post_init__(self) -> None:
        self._by_place: dict[int, np.ndarray] | None = None

    def of_places(self, places: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(descriptors float32, 3-D points) of the points seen from these places, each point once (with
        its descriptor in the first of the places that sees it: near-duplicates would fail the ratio test)."""
        if self._by_place is None:
            order = np.argsort(self.obs[:, 0], kind="stable")
            ids, starts = np.unique(self.obs[order, 0], return_index=True)
            ends = np.append(starts[1:], len(order))
            self._by_place = {int(p): order[s:e] for p, s, e in zip(ids, starts, ends)}
        rows = np.concatenate([self._by_place.get(int(p), np.zeros(0, np.int64)) for p in places]) if len(places) else \
            np.zeros(0, np.int64)
        _, first = np.unique(self.obs[rows, 1], return_index=True)
        rows = rows[np.sort(first)]
        return self.desc[rows].astype(np.float32), self.xyz[self.obs[rows, 1]]

    def per_place(self, num_places: int) -> np.ndarray:
        return np.bincount(self.obs[:, 0], minlength=num_places)

    # ---- io -------------------------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        np.save(folder / FILES["xyz"], self.xyz.astype(np.float64), allow_pickle=False)
        np.save(folder / FILES["obs"], self.obs.astype(np.int32), allow_pickle=False)
        np.save(folder / FILES["kp"], self.kp.astype(np.float32), allow_pickle=False)
        np.save(folder / FILES["desc"], self.desc.astype(np.float16), allow_pickle=False)
        meta = {"camera": self.camera.to_dict(), "local_features": self.kind, "triangulation": asdict(self.config),
                "points": int(len(self.xyz)), "observations": int(len(self.obs))}
        (folder / POINTS_META).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: Path) -> "MapPoints | None":
        """The map's points, or None for a retrieval-only map (no points.json)."""
        if not (folder / POINTS_META).is_file():
            return None
        try:
            meta = json.loads((folder / POINTS_META).read_text())
            arrays = {k: np.load(folder / f, allow_pickle=False) for k, f in FILES.items()}
            camera = camera_from_mapping(meta["camera"], str(folder / POINTS_META))
            config = TriangulationConfig(**meta.get("triangulation", {}))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"map {folder}: corrupt 3-D points ({exc})") from exc
        o = len(arrays["obs"])
        if arrays["xyz"].ndim != 2 or arrays["xyz"].shape[1] != 3 or arrays["kp"].shape != (o, 2) or len(arrays["desc"]) != o \
                or (o and arrays["obs"][:, 1].max() >= len(arrays["xyz"])):
            raise ValueError(f"map {folder}: 3-D point files disagree in size")
        return cls(camera, meta["local_features"], arrays["xyz"], arrays["obs"], arrays["kp"], arrays["desc"], config)


def place_pairs(positions: np.ndarray, config: TriangulationConfig) -> list[tuple[int, int]]:
    """Each place with its nearest neighbours (by camera centre) within reach and beyond the baseline."""
    from scipy.spatial import cKDTree

    tree = cKDTree(positions)
    pairs = set()
    for i, p in enumerate(positions):
        near = [j for j in tree.query_ball_point(p, config.max_pair_distance) if j != i
                and np.linalg.norm(positions[j] - p) >= config.min_baseline]
        near.sort(key=lambda j: np.linalg.norm(positions[j] - p))
        for j in near[:PAIRS_PER_PLACE]:
            pairs.add((min(i, j), max(i, j)))
    return sorted(pairs)


def triangulate_pair(camera: Camera, pose_a: tuple[np.ndarray, np.ndarray], pose_b: tuple[np.ndarray, np.ndarray],
                     fa: LocalFeatures, fb: LocalFeatures, config: TriangulationConfig
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points seen by both frames: (xyz M x 3, index into fa, index into fb), after every check.

    Triangulated about frame a's centre, in float64, and moved back after: linear triangulation minimises an
    algebraic error that depends on where the frame's origin is, so the points are now the same wherever
    the map's origin lies, and poses in UTM metres (a map made from GPS) keep their millimetres (in the map
    frame they lost every digit below the metre)."""
    m = match(fa.descriptors, fb.descriptors)
    if len(m) == 0:
        return np.zeros((0, 3)), np.zeros(0, np.int64), np.zeros(0, np.int64)
    k = camera.matrix
    origin = np.asarray(pose_a[0], np.float64)
    pose_a, pose_b = ((np.asarray(p, np.float64) - origin, q) for p, q in (pose_a, pose_b))
    (ra, ta), (rb, tb) = world_to_camera(*pose_a), world_to_camera(*pose_b)
    xa, xb = (camera.undistort(f.keypoints[i]).astype(np.float64) for f, i in ((fa, m[:, 0]), (fb, m[:, 1])))
    hom = cv2.triangulatePoints(k @ np.c_[ra, ta], k @ np.c_[rb, tb], xa.T, xb.T)  # float64 in, float64 out
    with np.errstate(divide="ignore", invalid="ignore"):
        xyz = (hom[:3] / hom[3]).T
    ok = np.isfinite(xyz).all(axis=1)
    for r, t, x in ((ra, ta, xa), (rb, tb, xb)):
        cam = xyz @ r.T + t
        z = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            proj = (cam[:, :2] / z[:, None]) * [k[0, 0], k[1, 1]] + [k[0, 2], k[1, 2]]
        ok &= (z > 0) & (z < config.max_depth) & (np.linalg.norm(proj - x, axis=1) <= config.max_reproj_px)
    ca, cb = pose_a[0], pose_b[0]
    ray_a, ray_b = xyz - ca, xyz - cb
    with np.errstate(invalid="ignore"):
        cos = (ray_a * ray_b).sum(1) / (np.linalg.norm(ray_a, axis=1) * np.linalg.norm(ray_b, axis=1))
    ok &= np.degrees(np.arccos(np.clip(cos, -1, 1))) >= config.min_parallax_deg
    return xyz[ok] + origin, m[ok, 0], m[ok, 1]


def build_points(camera: Camera, positions: np.ndarray, orientations: np.ndarray,
                 features: Sequence[LocalFeatures] | dict[int, LocalFeatures],
                 config: TriangulationConfig = TriangulationConfig(), progress: bool = False,
                 only_with: set[int] | None = None, first_id: int = 0) -> MapPoints:
    """Triangulate every neighbouring pair of mapped frames (images of `camera`'s size). With
    `only_with`, just the pairs that include one of those places (a traverse appended to a map), and
    `features` needs only the places of those pairs."""
    from tqdm import tqdm

    if not isinstance(features, dict):
        features = dict(enumerate(features))
    some = next(iter(features.values()), None)
    kind = some.kind if some is not None else "densernet"
    all_pairs = place_pairs(positions, config)
    pairs = [(a, b) for a, b in all_pairs if only_with is None or a in only_with or b in only_with]
    neighbours: dict[int, set[int]] = {}
    for a, b in all_pairs:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    trees: dict[int, object] = {}
    xyz_all, obs, kps, descs = [], [], [], []
    count = first_id
    for a, b in tqdm(pairs, desc="map points", unit="pair", disable=not progress):
        xyz, ia, ib = triangulate_pair(camera, (positions[a], orientations[a]), (positions[b], orientations[b]),
                                       features[a], features[b], config)
        if len(xyz) == 0:
            continue
        seen = [(a, ia), (b, ib)]
        for c in sorted((neighbours.get(a, set()) | neighbours.get(b, set())) - {a, b}):
            if c in features:
                seen.append((c, _confirm(camera, (positions[c], orientations[c]), features[c], xyz,
                                         features[a].descriptors[ia] + features[b].descriptors[ib], config, trees, c)))
        views = sum((idx >= 0).astype(int) for _, idx in seen)
        keep = views >= config.min_views  # a wrong match (a neighbouring corner) seldom agrees with a third view
        n = int(keep.sum())
        if n == 0:
            continue
        ids = np.full(len(xyz), -1)
        ids[keep] = np.arange(count, count + n)
        count += n
        xyz_all.append(xyz[keep])
        for place, idx in seen:
            ok = keep & (idx >= 0)
            f = features[place]
            obs.append(np.c_[np.full(int(ok.sum()), place), ids[ok]])
            kps.append(f.keypoints[idx[ok]])
            descs.append(f.descriptors[idx[ok]])
    dim = some.descriptors.shape[1] if some is not None else 0
    points = MapPoints(camera, kind, np.concatenate(xyz_all) if xyz_all else np.zeros((0, 3)),
                       np.concatenate(obs) if obs else np.zeros((0, 2), np.int64),
                       np.concatenate(kps) if kps else np.zeros((0, 2)),
                       np.concatenate(descs) if descs else np.zeros((0, dim)), config)
    return _cap_per_place(points, config.max_points_per_place)


def _confirm(camera: Camera, pose: tuple[np.ndarray, np.ndarray], features: LocalFeatures, xyz: np.ndarray,
             desc: np.ndarray, config: TriangulationConfig, trees: dict, place: int) -> np.ndarray:
    """Per point, the index of a feature of another view that confirms it (near its projection, similar
    descriptor), or -1."""
    from scipy.spatial import cKDTree

    out = np.full(len(xyz), -1)
    if len(features) == 0:
        return out
    if place not in trees:
        trees[place] = cKDTree(features.keypoints)
    r, t = world_to_camera(*pose)
    cam = xyz @ r.T + t
    front = cam[:, 2] > 0
    if not front.any():
        return out
    proj, _ = cv2.projectPoints(np.ascontiguousarray(xyz[front]), cv2.Rodrigues(r)[0], t, camera.matrix, camera.dist)
    dist, idx = trees[place].query(proj.reshape(-1, 2), distance_upper_bound=config.confirm_px)
    rows = np.flatnonzero(front)
    found = np.isfinite(dist)
    rows, idx = rows[found], idx[found]
    d = desc[rows] / np.linalg.norm(desc[rows], axis=1, keepdims=True)
    similar = (d * features.descriptors[idx]).sum(1) >= config.confirm_similarity
    out[rows[similar]] = idx[similar]
    return out


def merged(a: MapPoints, b: MapPoints) -> MapPoints:
    """Points of a map and those an appended traverse added (b's point ids follow a's)."""
    return MapPoints(a.camera, a.kind, np.concatenate([a.xyz, b.xyz]), np.concatenate([a.obs, b.obs]),
                     np.concatenate([a.kp, b.kp]), np.concatenate([a.desc, b.desc]), a.config)


def _cap_per_place(points: MapPoints, cap: int) -> MapPoints:
    """At most `cap` observations per place (the first found: pairs are processed nearest first)."""
    if not len(points.obs):
        return points
    order = np.argsort(points.obs[:, 0], kind="stable")  # by place, found order kept within a place
    places = points.obs[order, 0]
    starts = np.flatnonzero(np.r_[True, places[1:] != places[:-1]])
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    keep = np.zeros(len(points.obs), bool)
    keep[order[rank < cap]] = True
    return MapPoints(points.camera, points.kind, points.xyz, points.obs[keep], points.kp[keep], points.desc[keep],
                     points.config)

