"""From retrieved places to a metric 6-DoF camera pose: match local features to the places' 3-D points,
PnP + RANSAC, refinement, and a covariance from the solution.

The pose is gated: enough RANSAC inliers, a small mean reprojection error after refinement, inliers
spread in the image (not on a line), a well-conditioned solution, and intrinsics the image agrees with:
the inliers are fitted once more with the focal length free (a scale on fx and fy), and when they
call for a focal length more than `focal_tolerance` away from the given one, beyond three of its
standard deviations, the pose is refused ("camera intrinsics disagree with the image"). A wrong
camera_info is the commonest deployment mistake, and PnP absorbs a wrong focal length into a wrong
distance with a small reprojection error (the street scene: 20 % too long, 1.8 m off at 1.1 px). When the gate fails, the
caller publishes the retrieval (or filtered) pose instead, with its larger covariance, and says which.
Covariance: the Gauss-Newton approximation s^2 (J^T J)^-1 of the reprojection residuals over the
inliers (s^2 their variance per coordinate, at least `min_pixel_sigma`^2) with the focal length free
(a prior of `focal_prior` on its log scale), carried from OpenCV's (rvec, tvec) to the camera centre and
orientation in the map frame by a numerical Jacobian, plus the shift the fitted focal length would make
(a focal length within the tolerance still moves the pose; the covariance says by how much).
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
    focal_tolerance: float = 0.05  # the inliers may call for a focal length this far (relative) from the given one
    focal_prior: float = 0.1       # the given focal length's relative uncertainty (where the image cannot tell)

    def __post_init__(self) -> None:
        checks = {"candidates": self.candidates >= 1, "ratio": 0 < self.ratio <= 1, "ransac_px": self.ransac_px > 0,
                  "ransac_iterations": self.ransac_iterations >= 1,
                  "min_inliers": self.min_inliers >= 4,  # PnP needs four points
                  "max_reproj_px": self.max_reproj_px > 0, "min_spread_px": self.min_spread_px >= 0,
                  "max_condition": self.max_condition > 1, "min_pixel_sigma": self.min_pixel_sigma > 0,
                  "max_jump_sigmas": self.max_jump_sigmas > 0, "focal_tolerance": 0 < self.focal_tolerance < 1,
                  "focal_prior": self.focal_prior > 0}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"metric localization: invalid {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")


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
    focal_scale: float = float("nan")  # the focal length the inliers call for, relative to the given one
    focal_sigma: float = float("nan")  # its standard deviation (relative)


def solve_pnp(points3d: np.ndarray, pixels: np.ndarray, camera: Camera, config: MetricConfig = MetricConfig()
              ) -> MetricPose:
    """Camera pose from 2-D/3-D correspondences (pixels of an image of `camera`'s size).

    Solved about the points' centre and moved back after, so that the answer and its gate do not depend on
    where the map's origin is: the rotation's Jacobian about a far origin is nearly a translation's, and
    the condition gate refused every pose of the synthetic street moved 470 m from its origin (0 of 60
    metric poses against 49 of 60, bench_metric.py), and of any map in UTM metres, where the finite
    differences lost every digit below the metre too."""
    n = len(points3d)
    if n < max(config.min_inliers, 4):
        return MetricPose(False, f"too few correspondences: {n} < {config.min_inliers}", matches=n)
    world = np.asarray(points3d, dtype=np.float64).reshape(-1, 3)
    origin = world.mean(axis=0)
    obj = np.ascontiguousarray(world - origin).reshape(-1, 1, 3)
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
    pose = MetricPose(False, "", position + origin, orientation, np.eye(6), n, count, mean_err)
    if count < config.min_inliers:
        pose.reason = f"{count} inliers after refinement < {config.min_inliers}"
    elif mean_err > config.max_reproj_px:
        pose.reason = f"mean reprojection error {mean_err:.2f} px > {config.max_reproj_px}"
    elif spread < config.min_spread_px:
        pose.reason = f"inliers on a line or a spot (spread {spread:.1f} px < {config.min_spread_px})"
    elif not cond < config.max_condition:
        pose.reason = f"degenerate geometry (condition number {cond:.2e})"
    else:
        scale, sigma, x, cov7 = _fit_focal(obj[inl][good], img[inl][good], k, dist, rvec, tvec, config)
        pose.focal_scale, pose.focal_sigma = scale, sigma
        if focal_disagrees(scale, sigma, config):
            pose.reason = (f"camera intrinsics disagree with the image: the inliers fit a focal length {scale:.3f} "
                           f"(+- {sigma:.3f}) times the given fx {k[0, 0]:.1f}")
        else:
            g = _pose_jacobian(rvec, tvec)
            refit_position, refit_orientation = _camera_to_map(x[:3], x[3:6])
            shift = np.r_[refit_position - position,
                          (Rotation.from_quat(refit_orientation) * Rotation.from_quat(orientation).inv()).as_rotvec()]
            pose.covariance = g @ cov7[:6, :6] @ g.T + np.outer(shift, shift)
            pose.ok, pose.reason = True, "ok"
    return pose


FOCAL_STEPS = 10
FOCAL_MIN_CHECKS = 5  # frames needed before the camera's intrinsics are judged from their fits


def focal_disagrees(scale: float, sigma: float, config: MetricConfig) -> bool:
    """One frame's verdict on the camera: its inliers call for a focal length beyond the tolerance and
    beyond three standard deviations of their own fit."""
    return abs(scale - 1.0) > config.focal_tolerance and abs(math.log(scale)) > 3 * sigma


def intrinsics_unproven(focal_scales: list[float], refused: list[bool], config: MetricConfig) -> float | None:
    """The median of recent frames' fitted focal scales while a frame among them was refused by its own fit
    (`focal_disagrees`) and they have not cleared the camera together: fewer than FOCAL_MIN_CHECKS frames, or
    their median beyond `focal_tolerance`; None otherwise. Without it the frames between a refused one and
    the camera-level judgement (`judge_intrinsics`) are judged one by one, and the wrong camera's fits
    that are pulled toward the given focal length pass: on the robot street (test_robot) a focal length 25 %
    too long published metric poses from frames 2-3 on one CPU kind, 2-5 on another. A right camera's
    outlier (1 frame in 27 there) is cleared by the next frames' median."""
    if not any(refused) or not focal_scales:
        return None
    median = float(np.median(np.asarray(focal_scales, dtype=np.float64)))
    if len(focal_scales) >= FOCAL_MIN_CHECKS and abs(median - 1.0) <= config.focal_tolerance:
        return None
    return median


def judge_intrinsics(focal_scales: list[float], config: MetricConfig) -> float | None:
    """The median of recent frames' fitted focal scales when it says the camera's intrinsics are wrong:
    beyond `focal_tolerance` and beyond three standard errors of that median, over at least
    FOCAL_MIN_CHECKS frames; None otherwise. One frame's fit is noisy (a street at 320x240 pulls a 25 %
    error halfway back to 1, and a right camera gets an occasional 10 % outlier), but the camera is the
    same in every frame, so the recent frames judge it together."""
    scales = np.asarray(focal_scales, dtype=np.float64)
    if len(scales) < FOCAL_MIN_CHECKS:
        return None
    median = float(np.median(scales))
    spread = 1.4826 * float(np.median(np.abs(scales - median)))  # a robust standard deviation
    standard_error = 1.2533 * spread / math.sqrt(len(scales))     # of a median
    off = abs(median - 1.0)
    return median if off > config.focal_tolerance and off > 3 * standard_error else None


def _fit_focal(obj: np.ndarray, img: np.ndarray, k: np.ndarray, dist: np.ndarray, rvec: np.ndarray, tvec: np.ndarray,
               config: MetricConfig) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Gauss-Newton over (rvec, tvec, log focal scale) from the PnP solution, with a prior of
    `focal_prior` on the log scale: (focal scale, its sigma, the 7 parameters, their covariance)."""
    x = np.r_[np.asarray(rvec, float).reshape(3), np.asarray(tvec, float).reshape(3), 0.0]
    prior = np.diag([0.0] * 6 + [1.0 / config.focal_prior ** 2])
    for _ in range(FOCAL_STEPS):
        ks = k.copy()
        ks[0, 0] *= math.exp(x[6])
        ks[1, 1] *= math.exp(x[6])
        proj, jac = cv2.projectPoints(obj, x[:3], x[3:6], ks, dist)
        r = (proj - img).reshape(-1)
        j = np.c_[jac[:, :6], ks[0, 0] * jac[:, 6] + ks[1, 1] * jac[:, 7]]  # d(u, v) / d log scale
        step = np.linalg.solve(j.T @ j + prior, -(j.T @ r + prior @ x))
        x = x + step
        if np.abs(step).max() < 1e-9:
            break
    s2 = max(float(r @ r) / max(len(r) - 7, 1), config.min_pixel_sigma ** 2)
    cov = np.linalg.inv(j.T @ j / s2 + prior)
    return math.exp(x[6]), math.sqrt(cov[6, 6]), x, cov


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
