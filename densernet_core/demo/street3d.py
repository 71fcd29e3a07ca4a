"""A synthetic street with exact geometry, for metric localization: a pinhole camera renders planar
textured facades at known depth (each facade strip through its exact homography, nearest last), from
known camera poses. Not a 2-D warp: moving the camera sideways, up or turning it changes the image as
a real camera would, so PnP against triangulated points has an exact answer.

World frame: x along the street, y to the left (towards the facades), z up. Buildings stand at
setbacks of `setback` metres (varying per building, so the scene is not one plane), textured with the
photographs that ship inside scikit-image. Cameras look at the facades (+y); camera frame is OpenCV's
(x right, y down, z forward). Poses are written camera-to-world (position, quaternion xyzw) into
poses CSVs that `densernet-map build --poses` and `densernet-localize --gt/--odometry` read, with the
intrinsics in camera.yaml.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from ..camera import Camera, world_to_camera
from .routes import RUNS, write_run
from .synth import _samples

# Camera looking at +y (the facades): x_cam = +x_world, y_cam = -z_world, z_cam = +y_world.
LOOK_AT_FACADES = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
STRIP_M = 0.5  # facades are drawn in strips this wide, each through its own homography
WINDOW_M = (1.0, 1.4)  # width, height
WINDOW_STEP_M = (2.2, 3.0)


@dataclass(frozen=True)
class StreetConfig:
    places: int = 60               # mapped places (1 m apart along x)
    spacing: float = 1.0
    width: int = 320
    height: int = 240
    focal: float = 260.0           # pixels
    camera_height: float = 1.6
    setback: tuple[float, float] = (6.0, 10.0)  # metres from the camera path to each building's facade
    building_width: tuple[float, float] = (3.0, 8.0)
    building_height: tuple[float, float] = (6.0, 14.0)
    px_per_metre: float = 80.0     # texture resolution on the facades
    # the query run, relative to the mapping run
    lateral: float = 0.6           # metres towards the facades
    up: float = 0.25               # metres higher
    along: float = 0.5             # metres along the street
    yaw_deg: float = 6.0           # alternating +-
    pitch_deg: float = 3.0
    darkening: float = 0.75
    noise_std: float = 3.0
    seed: int = 11

    @property
    def camera(self) -> Camera:
        return Camera(self.width, self.height, self.focal, self.focal, self.width / 2 - 0.5, self.height / 2 - 0.5)


@dataclass
class Facade:
    x0: float
    x1: float
    y: float          # setback (the plane y = const)
    top: float        # height
    texture: np.ndarray  # RGB, px_per_metre


def street(cfg: StreetConfig) -> list[Facade]:
    rng = np.random.default_rng(cfg.seed)
    photos = _samples()
    facades, x = [], -15.0
    end = cfg.places * cfg.spacing + 15.0
    while x < end:
        w = float(rng.uniform(*cfg.building_width))
        h = float(rng.uniform(*cfg.building_height))
        photo = photos[rng.integers(len(photos))]
        tex = cv2.resize(photo, (int(w * cfg.px_per_metre), int(h * cfg.px_per_metre)), interpolation=cv2.INTER_AREA)
        tex = np.clip(tex.astype(np.float32) * rng.uniform(0.7, 1.2, size=3), 0, 255).astype(np.uint8)
        _windows(tex, cfg.px_per_metre, rng)
        tex[:, :4] = 30  # a dark seam between buildings
        facades.append(Facade(x, x + w, float(rng.uniform(*cfg.setback)), h, tex))
        x += w
    return facades


def _windows(tex: np.ndarray, ppm: float, rng: np.random.Generator) -> None:
    """Rows of windows with frames and random glazing (real facades' corners), drawn onto the texture."""
    h, w = tex.shape[:2]
    size = (np.array(WINDOW_M) * ppm).astype(int)
    step = (np.array(WINDOW_STEP_M) * ppm).astype(int)
    for top in range(int(0.8 * ppm), h - size[1] - int(1.5 * ppm), step[1]):
        for left in range(int(0.6 * ppm), w - size[0] - int(0.3 * ppm), step[0]):
            if rng.random() < 0.15:  # a wall where a window might be
                continue
            frame = int(rng.integers(20, 70))
            tex[top:top + size[1], left:left + size[0]] = frame
            glass = rng.integers(40, 220, size=3)
            m = max(2, int(0.08 * ppm))
            tex[top + m:top + size[1] - m, left + m:left + size[0] - m] = glass
            tex[top + size[1] // 2 - 1:top + size[1] // 2 + 1, left:left + size[0]] = frame  # transom


def camera_pose(x: float, lateral: float, up: float, yaw_deg: float, pitch_deg: float, cfg: StreetConfig
                ) -> tuple[np.ndarray, np.ndarray]:
    """Camera-to-world (position, quaternion xyzw): on the path at x, turned by yaw (about world z) and pitch."""
    r = Rotation.from_euler("z", yaw_deg, degrees=True) * Rotation.from_matrix(LOOK_AT_FACADES) \
        * Rotation.from_euler("x", -pitch_deg, degrees=True)
    return np.array([x, lateral, cfg.camera_height + up]), r.as_quat()


def render(facades: list[Facade], pose: tuple[np.ndarray, np.ndarray], cfg: StreetConfig) -> np.ndarray:
    cam = cfg.camera
    r, t = world_to_camera(*pose)
    k = cam.matrix
    img = np.zeros((cfg.height, cfg.width, 3), np.float32)
    img[:] = np.linspace(200, 120, cfg.height)[:, None, None]  # sky-to-road background
    ppm = cfg.px_per_metre
    strips = []
    for f in facades:
        for s0 in np.arange(f.x0, f.x1, STRIP_M):
            s1 = min(s0 + STRIP_M, f.x1)
            corners = np.array([[s0, f.y, 0.0], [s1, f.y, 0.0], [s1, f.y, f.top], [s0, f.y, f.top]])
            depth = (corners @ r.T + t)[:, 2]
            if (depth > 0.2).all():
                strips.append((float(depth.mean()), f, s0, s1))
    for _, f, s0, s1 in sorted(strips, key=lambda s: -s[0]):  # far to near: nearer facades cover farther ones
        u0, u1 = int(round((s0 - f.x0) * ppm)), int(round((s1 - f.x0) * ppm))
        tex = f.texture[:, u0:max(u1, u0 + 1) + 2]  # 2 texels of overlap: no seam between strips
        # texture pixel (u, v) -> world (s0 + u / ppm, y, top - v / ppm) -> image
        m = np.array([[1 / ppm, 0, s0], [0, 0, f.y], [0, -1 / ppm, f.top], [0, 0, 1]])
        h = k @ np.c_[r, t] @ m
        warped = cv2.warpPerspective(tex, h, (cfg.width, cfg.height), flags=cv2.INTER_LINEAR)
        mask = cv2.warpPerspective(np.ones(tex.shape[:2], np.float32), h, (cfg.width, cfg.height),
                                   flags=cv2.INTER_LINEAR)
        img = img * (1 - mask[..., None]) + warped.astype(np.float32) * mask[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def generate(out: str | Path, cfg: StreetConfig = StreetConfig()) -> dict[str, Path]:
    """map/ and query/ folders with poses.csv (camera-to-world, quaternions) and camera.yaml; same bytes every time."""
    import yaml

    out = Path(out)
    facades = street(cfg)
    rng = np.random.default_rng(cfg.seed + 1)

    def frames(run: str):
        for i in range(cfg.places):
            x = i * cfg.spacing
            if run == "map":
                pose = camera_pose(x, 0.0, 0.0, 0.0, 0.0, cfg)
            else:
                sign = 1 if i % 2 else -1
                pose = camera_pose(x + cfg.along, cfg.lateral, cfg.up, sign * cfg.yaw_deg, cfg.pitch_deg, cfg)
            img = render(facades, pose, cfg)
            if run == "query":
                img = np.clip(img.astype(np.float32) * cfg.darkening + rng.normal(0, cfg.noise_std, img.shape), 0, 255
                              ).astype(np.uint8)
            yield img, [f"{v:.6f}" for v in (*pose[0], *pose[1])]

    paths = {}
    for run in RUNS:
        paths[run] = write_run(out / run, frames(run), ["x", "y", "z", "qx", "qy", "qz", "qw"])
        (out / run / "camera.yaml").write_text(yaml.safe_dump(cfg.camera.to_dict(), sort_keys=False))
    return paths


def yaw_pitch_deg(quaternion: np.ndarray) -> tuple[float, float]:
    """For reports: the camera's heading and tilt relative to looking straight at the facades."""
    r = Rotation.from_quat(quaternion) * Rotation.from_matrix(LOOK_AT_FACADES).inv()
    z, _, x = r.as_euler("zyx", degrees=True)
    return float(z), float(-x) if math.isfinite(x) else 0.0
