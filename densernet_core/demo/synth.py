"""A deterministic synthetic route: two traverses of one street of photographed facades.

The facade is a long strip tiled from real photographs shipped inside scikit-image (no
download). The mapping run looks at it square-on from the middle of the road; the query
run, later, drives with a lateral offset, looks at it obliquely (a perspective warp), at dusk
(darker, gamma, colour cast), with a little motion blur and sensor noise. Place i is at
x = i * spacing metres; ground truth is written as poses CSVs the map and localize tools read.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .routes import RUNS, write_run

# scikit-image sample images that ship inside the wheel (no pooch download).
SAMPLES = ("astronaut", "coffee", "chelsea", "rocket", "brick", "grass", "gravel", "camera", "colorwheel",
           "immunohistochemistry", "logo", "moon", "page", "text", "clock", "horse", "coins", "cat")


@dataclass(frozen=True)
class RouteConfig:
    places: int = 120            # places per traverse
    spacing: float = 2.0         # metres between places
    width: int = 320             # rendered image size
    height: int = 240
    px_per_metre: float = 60.0   # facade texture resolution
    view_metres: float = 6.0     # facade width seen by the camera
    lateral_offset: float = 0.4  # query run: metres closer to the facade...
    yaw_deg: float = 6.0        # ...looking this much off square
    along_offset: float = 0.3    # ...and this far along the street
    darkening: float = 0.7      # query run: brightness factor (dusk)
    gamma: float = 1.3
    noise_std: float = 4.0
    blur_px: int = 3
    seed: int = 7


def _samples() -> list[np.ndarray]:
    import skimage.data

    out = []
    for name in SAMPLES:
        img = np.asarray(getattr(skimage.data, name)())
        if img.dtype == bool:  # "horse" is a silhouette mask: 0/1 would be a black tile
            img = img.astype(np.uint8) * 255
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        out.append(np.ascontiguousarray(img[:, :, :3]).astype(np.uint8))
    return out


def facade(cfg: RouteConfig) -> np.ndarray:
    """The street's facade as one RGB strip, tiled from randomly cropped, scaled and flipped photos."""
    rng = np.random.default_rng(cfg.seed)
    photos = _samples()
    length_m = cfg.places * cfg.spacing + 2 * cfg.view_metres
    total = int(length_m * cfg.px_per_metre)
    h = int(cfg.height * 1.6)
    tiles, width = [], 0
    while width < total:
        img = photos[rng.integers(len(photos))]
        w = int(rng.integers(h // 3, h))
        scale = h / img.shape[0] * rng.uniform(1.0, 1.8)
        big = cv2.resize(img, (max(int(img.shape[1] * scale), w + 1), max(int(img.shape[0] * scale), h + 1)))
        y0 = int(rng.integers(0, big.shape[0] - h + 1))
        x0 = int(rng.integers(0, big.shape[1] - w + 1))
        tile = big[y0:y0 + h, x0:x0 + w]
        if rng.random() < 0.5:
            tile = tile[:, ::-1]
        tile = np.clip(tile.astype(np.float32) * rng.uniform(0.7, 1.2, size=3), 0, 255).astype(np.uint8)
        tile[:, :3] = 40  # a dark gap between 'buildings'
        tiles.append(tile)
        width += w
    return np.concatenate(tiles, axis=1)[:, :total]


def render(strip: np.ndarray, cfg: RouteConfig, x_m: float, lateral: float, yaw_deg: float) -> np.ndarray:
    """Perspective view of the facade from a camera at street position x_m."""
    ppm = cfg.px_per_metre
    scale = 1.0 / max(1e-3, 1.0 - lateral / 4.0)       # closer to the wall: bigger
    half_w = cfg.view_metres * ppm / 2 / scale
    cx = (x_m + cfg.view_metres) * ppm
    h = strip.shape[0]
    half_h = h / 2 / scale * 0.8
    cy = h / 2
    src = np.float32([[cx - half_w, cy - half_h], [cx + half_w, cy - half_h],
                      [cx + half_w, cy + half_h], [cx - half_w, cy + half_h]])
    # Oblique view: the far edge shrinks vertically and the near edge grows (a yawed camera).
    k = math.tan(math.radians(yaw_deg)) * 0.8
    W, H = cfg.width, cfg.height
    dst = np.float32([[0, H * (0 + k / 2)], [W, H * (0 - k / 2)], [W, H * (1 + k / 2)], [0, H * (1 - k / 2)]])
    m = cv2.getPerspectiveTransform(src, dst)
    return cv2.warpPerspective(strip, m, (W, H), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)


def dusk(img: np.ndarray, cfg: RouteConfig, rng: np.random.Generator) -> np.ndarray:
    x = img.astype(np.float32) / 255.0
    x = (x ** cfg.gamma) * cfg.darkening
    x *= np.array([1.1, 0.95, 0.8], np.float32)  # warm street light
    x = x * 255.0
    if cfg.blur_px > 1:
        kernel = np.zeros((cfg.blur_px, cfg.blur_px), np.float32)
        kernel[cfg.blur_px // 2, :] = 1.0 / cfg.blur_px  # horizontal motion blur
        x = cv2.filter2D(x, -1, kernel)
    x += rng.normal(0, cfg.noise_std, x.shape)
    return np.clip(x, 0, 255).astype(np.uint8)


def generate(out: str | Path, cfg: RouteConfig = RouteConfig()) -> dict[str, Path]:
    """Write map/ and query/ image folders with poses.csv each; same seed, same bytes."""
    out = Path(out)
    strip = facade(cfg)
    rng = np.random.default_rng(cfg.seed + 1)

    def frames(run: str):
        for i in range(cfg.places):
            x = i * cfg.spacing
            if run == "map":
                img, y, yaw = render(strip, cfg, x, 0.0, 0.0), 0.0, 0.0
            else:
                x += cfg.along_offset
                sign = 1 if i % 2 else -1
                img = dusk(render(strip, cfg, x, cfg.lateral_offset, sign * cfg.yaw_deg), cfg, rng)
                y, yaw = cfg.lateral_offset, math.radians(sign * cfg.yaw_deg)
            yield img, [f"{x:.3f}", f"{y:.3f}", "0.0", f"{yaw:.6f}"]

    return {run: write_run(out / run, frames(run), ["x", "y", "z", "yaw"]) for run in RUNS}
