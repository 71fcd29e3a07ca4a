"""Local features for metric localization: keypoints with descriptors, and matching between two sets.

`densernet`: DenserNet's own fused dense map (the paper's point: one network for retrieval and pixel
matching), sampled bilinearly at Shi-Tomasi corners; it comes from the same forward pass as the
global descriptor (`describe(..., return_dense=True)`), so it costs a corner detector and a lookup.
`sift`: OpenCV SIFT keypoints and RootSIFT descriptors, for comparison.
Keypoints are pixel coordinates of the image as given (not of the network's input size).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

FEATURE_TYPES = ("densernet", "sift")
# The default for maps with 3-D points: in benchmarks/bench_metric.py SIFT localized several times more
# precisely than the stride-4 dense map (docs/BENCHMARKS.md).
DEFAULT_FEATURES = "sift"
MAX_KEYPOINTS = 1000
CORNER_QUALITY = 0.005       # Shi-Tomasi: weakest corner kept, relative to the strongest
CORNER_MIN_DISTANCE_PX = 6   # at the network's input size (the dense map's stride is 4)
RATIO = 0.9                  # Lowe's ratio test for matching
SIFT_CONTRAST = 0.02


@dataclass
class LocalFeatures:
    keypoints: np.ndarray    # N x 2 float32, pixels of the image as given
    descriptors: np.ndarray  # N x D float32, unit norm
    kind: str

    def __len__(self) -> int:
        return len(self.keypoints)


def detect_corners(rgb: np.ndarray, size: tuple[int, int], max_keypoints: int = MAX_KEYPOINTS) -> np.ndarray:
    """Shi-Tomasi corners found at the network's input size (h, w), returned in the image's pixels."""
    h, w = size
    grey = cv2.cvtColor(cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
    pts = cv2.goodFeaturesToTrack(grey, max_keypoints, CORNER_QUALITY, CORNER_MIN_DISTANCE_PX)
    if pts is None:
        return np.zeros((0, 2), np.float32)
    scale = np.array([rgb.shape[1] / w, rgb.shape[0] / h], np.float32)
    return ((pts.reshape(-1, 2) + 0.5) * scale - 0.5).astype(np.float32)


def sample_dense(dense: np.ndarray, keypoints: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
    """Bilinear samples of a C x h x w dense map at keypoints given in pixels of an image (H, W)."""
    c, h, w = dense.shape
    img_h, img_w = image_shape
    # map pixel centres onto the dense grid's cell centres
    x = (keypoints[:, 0] + 0.5) * (w / img_w) - 0.5
    y = (keypoints[:, 1] + 0.5) * (h / img_h) - 0.5
    x = np.clip(x, 0, w - 1)
    y = np.clip(y, 0, h - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    ax, ay = (x - x0)[None], (y - y0)[None]
    d = (dense[:, y0, x0] * (1 - ax) * (1 - ay) + dense[:, y0, x1] * ax * (1 - ay)
         + dense[:, y1, x0] * (1 - ax) * ay + dense[:, y1, x1] * ax * ay).T
    return (d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def densernet_features(rgb: np.ndarray, dense: np.ndarray, input_size: tuple[int, int],
                       max_keypoints: int = MAX_KEYPOINTS) -> LocalFeatures:
    kp = detect_corners(rgb, input_size, max_keypoints)
    return LocalFeatures(kp, sample_dense(dense, kp, rgb.shape[:2]) if len(kp) else np.zeros((0, dense.shape[0]),
                                                                                              np.float32), "densernet")


def sift_features(rgb: np.ndarray, max_keypoints: int = MAX_KEYPOINTS) -> LocalFeatures:
    sift = cv2.SIFT_create(nfeatures=max_keypoints, contrastThreshold=SIFT_CONTRAST)
    kps, desc = sift.detectAndCompute(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), None)
    if desc is None or not kps:
        return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32), "sift")
    desc = np.sqrt(desc / np.maximum(desc.sum(axis=1, keepdims=True), 1e-12))  # RootSIFT: unit L2 norm
    return LocalFeatures(np.array([k.pt for k in kps], np.float32), desc.astype(np.float32), "sift")


def match(a: np.ndarray, b: np.ndarray, ratio: float = RATIO) -> np.ndarray:
    """Mutual nearest neighbours passing the ratio test (cosine on unit descriptors): K x 2 (i in a, j in b)."""
    if len(a) == 0 or len(b) < 2:
        return np.zeros((0, 2), np.int64)
    sim = a @ b.T
    best2 = np.argpartition(-sim, 1, axis=1)[:, :2]
    s2 = np.take_along_axis(sim, best2, axis=1)
    order = np.argsort(-s2, axis=1)
    j = np.take_along_axis(best2, order[:, :1], axis=1)[:, 0]
    s_best, s_second = np.take_along_axis(s2, order, axis=1).T
    # ratio test on distances: |a - b|^2 = 2 - 2 s for unit vectors
    d_best, d_second = np.sqrt(np.maximum(2 - 2 * s_best, 0)), np.sqrt(np.maximum(2 - 2 * s_second, 0))
    back = np.argmax(sim, axis=0)
    i = np.arange(len(a))
    keep = (back[j] == i) & (d_best < ratio * d_second)
    return np.stack([i[keep], j[keep]], axis=1)


def extract_features(model, images: list[np.ndarray], kind: str, max_keypoints: int = MAX_KEYPOINTS
                     ) -> list[LocalFeatures]:
    """Local features alone: SIFT needs no network pass, DenserNet's come from its dense map."""
    if kind == "sift":
        return [sift_features(img, max_keypoints) for img in images]
    return describe_with_features(model, images, kind, max_keypoints)[1]


def describe_with_features(model, images: list[np.ndarray], kind: str, max_keypoints: int = MAX_KEYPOINTS,
                           batch_size: int | None = None, return_dense: bool = False
                           ) -> tuple[np.ndarray, list[LocalFeatures]] | tuple[np.ndarray, list[LocalFeatures], list]:
    """Global descriptors and local features of RGB images in one forward pass (DenserNet's dense map
    is what the global descriptor is pooled from); with `return_dense`, the dense maps of that pass too
    (the re-rank's grids, localization/rerank.py)."""
    if kind not in FEATURE_TYPES:
        raise ValueError(f"local feature kind {kind!r} unknown; choose one of {FEATURE_TYPES}")
    batching = {} if batch_size is None else {"batch_size": batch_size}
    if kind == "densernet" or return_dense:
        desc, dense = model.describe(images, return_dense=True, **batching)
    else:
        desc, dense = model.describe(images, **batching), None
    feats = ([densernet_features(img, d, model.config.image_size, max_keypoints) for img, d in zip(images, dense)]
             if kind == "densernet" else [sift_features(img, max_keypoints) for img in images])
    return (desc, feats, dense) if return_dense else (desc, feats)
