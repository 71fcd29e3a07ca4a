"""From retrieved places to a metric 6-DoF camera pose: match local features to the places' 3-D points,
PnP + RANSAC, refinement, and a covariance from the solution.

The pose is gated: enough RANSAC inliers, a small mean reprojection error after refinement, inliers
spread in the image (not on a line), and a well-conditioned solution. When the gate fails, the
caller publishes the retrieval (or filtered) pose instead, with its larger covariance, and says which.
Covariance: the Gauss-Newton approximation s^2 (J^T J)^-1 of the reprojection residuals over the
inliers (s^2 their variance per coordinate, at least `min_pixel_sigma`^2), carried from OpenCV's
(rvec, tvec) to the camera centre and orientation in the map frame by a numerical Jacobian.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from ..camera import Camera
from ..config import ConfigError
from ..local_features import LocalFeatures, match


@dataclass(frozen=True)
class MetricConfig:
    candidates: int = 3            # retrieved places whose points are matched
    ratio: float = 1.0             # matching ratio test (1: mutual nearest neighbours only; the map's points
                                   # of neighbouring places are near-duplicates, which a ratio test would drop)
    ransac_px: float = 2.5         # RANSAC inlier threshold (pixels of the query image)
    ransac_iterations: int = 1000
    min_inliers: int = 20
    max_reproj_px: float = 2.0     # mean reprojection error of the refined inliers
    min_spread_px: float = 20.0    # the inliers' smaller principal spread in the image (a line fails)
    max_condition: float = 1e10    # of J^T J: beyond, the geometry does not fix the pose
    min_pixel_sigma: float = 0.5
    max_jump_sigmas: float = 3.0   # a pose farther than this many place-estimate sigmas from that estimate fails

    def __post_init__(self) -> None:
        if self.candidates < 1 or self.min_inliers < 4 or not 0 < self.ratio <= 1 or self.ransac_px <= 0 \
                or self.max_reproj_px <= 0 or self.ransac_iterations < 1 \
                or self.max_jump_sigmas <= 0:
            raise ConfigError(f"metric localization: invalid {self}")


@dataclass
class MetricPose:
    ok: bool
    reason: str
    # the camera's centre and orientation (camera-to-map, xyzw) in the map frame; the Localizer turns them
    # into the robot base's when the map or the node knows the extrinsic (frames.py)
    position: np.ndarray = field(default_factory=lambda: np.zeros(3))
    orientation: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 0.0, 1.0]))
    covariance: np.ndarray = field(default_factory=lambda: np.eye(6))       # x y z, rotation vector (map frame)
    matches: int = 0
    inliers: int = 0
    reproj_px: float = float("inf")


def solve_pnp(points3d: np.ndarray, pixels: np.ndarray, camera: Camera, config: MetricConfig = MetricConfig()
              ) -> MetricPose:
    """Camera pose from 2-D/3-D correspondences (pixels of an image of `camera`'s size)."""
    n = len(points3d)
    if n < max(config.min_inliers, 4):
        return MetricPose(False, f"too few correspondences: {n} < {config.min_inliers}", matches=n)
    obj = np.ascontiguousarray(points3d, dtype=np.float64).reshape(-1, 1, 3)
    img = np.ascontiguousarray(pixels, dtype=np.float64).reshape(-1, 1, 2)
    k, dist = camera.matrix, camera.dist
    ok, rvec, tvec, inl = cv2.solvePnPRansac(obj, img, k, dist, iterationsCount=config.ransac_iterations,
                                             reprojectionError=config.ransac_px, confidence=0.999,
                                             flags=cv2.SOLVEPNP_EPNP)
    if not ok or inl is None or len(inl) < config.min_inliers:
        return MetricPose(False, f"RANSAC found {0 if inl is None else len(inl)} inliers < {config.min_inliers}",
                          matches=n, inliers=0 if inl is None else len(inl))
    inl = inl.reshape(-1)
    rvec, tvec = cv2.solvePnPRefineLM(obj[inl], img[inl], k, dist, rvec, tvec)
    proj, jac = cv2.projectPoints(obj[inl], rvec, tvec, k, dist)
    residual = (proj - img[inl]).reshape(-1, 2)
    err = np.linalg.norm(residual, axis=1)
    # inliers by the refined pose (RANSAC's may include points the refinement pushed out)
    good = err <= config.ransac_px
    count = int(good.sum())
    mean_err = float(err[good].mean()) if count else float("inf")
    position, orientation = _camera_to_map(rvec, tvec)
    spread = _spread(img[inl][good].reshape(-1, 2))
    j = jac[:, :6].reshape(-1, 2, 6)[good].reshape(-1, 6)  # d(u, v) / d(rvec, tvec)
    jtj = j.T @ j
    cond = np.linalg.cond(jtj) if count else math.inf
    pose = MetricPose(False, "", position, orientation, np.eye(6), n, count, mean_err)
    if count < config.min_inliers:
        pose.reason = f"{count} inliers after refinement < {config.min_inliers}"
    elif mean_err > config.max_reproj_px:
        pose.reason = f"mean reprojection error {mean_err:.2f} px > {config.max_reproj_px}"
    elif spread < config.min_spread_px:
        pose.reason = f"inliers on a line or a spot (spread {spread:.1f} px < {config.min_spread_px})"
    elif not cond < config.max_condition:
        pose.reason = f"degenerate geometry (condition number {cond:.2e})"
    else:
        dof = max(2 * count - 6, 1)
        s2 = max(float((residual[good] ** 2).sum()) / dof, config.min_pixel_sigma ** 2)
        cov_rt = s2 * np.linalg.inv(jtj)
        g = _pose_jacobian(rvec, tvec)
        pose.covariance = g @ cov_rt @ g.T
        pose.ok, pose.reason = True, "ok"
    return pose


def localize_metric(query: LocalFeatures, camera: Camera, points, places: list[int],
                    config: MetricConfig = MetricConfig()) -> MetricPose:
    """Match the query's features to the 3-D points seen from `places` (best first), then PnP."""
    if points.kind != query.kind:
        raise ValueError(f"the map's points carry {points.kind} features, the query {query.kind}")
    desc, xyz = points.of_places(places[:config.candidates])
    if len(desc) == 0:
        return MetricPose(False, "the retrieved places have no 3-D points")
    m = match(query.descriptors, desc, config.ratio)
    return solve_pnp(xyz[m[:, 1]], query.keypoints[m[:, 0]], camera, config)


def _camera_to_map(rvec: np.ndarray, tvec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r = Rotation.from_rotvec(np.asarray(rvec).reshape(3))  # map -> camera
    centre = -r.inv().apply(np.asarray(tvec).reshape(3))
    return centre, r.inv().as_quat()


def _pose_jacobian(rvec: np.ndarray, tvec: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d(centre, rotation vector of camera-to-map, relative to the solution) / d(rvec, tvec)."""
    x0 = np.r_[np.asarray(rvec).reshape(3), np.asarray(tvec).reshape(3)]
    c0, q0 = _camera_to_map(x0[:3], x0[3:])
    r0inv = Rotation.from_quat(q0).inv()
    g = np.zeros((6, 6))
    for i in range(6):
        x = x0.copy()
        x[i] += eps
        c, q = _camera_to_map(x[:3], x[3:])
        g[:3, i] = (c - c0) / eps
        g[3:, i] = (Rotation.from_quat(q) * r0inv).as_rotvec() / eps
    return g


def _spread(pixels: np.ndarray) -> float:
    """The smaller standard deviation of the points along their principal axes (pixels)."""
    if len(pixels) < 3:
        return 0.0
    return float(np.sqrt(max(np.linalg.eigvalsh(np.cov(pixels.T))[0], 0.0)))
