"""From retrieved places to a pose with an honest covariance, or an explicit "no fix".

The model is documented in docs/POSE_MODEL.md. In short: each candidate weighs exp((s_i - s_best) /
spread), the spread being that of the query's similarities over the map. Candidates that agree
spatially are grouped, the heaviest group wins and its positions are fused by weighted mean. The fix
is gated on the group's probability (`confidence: calibrated`: the posterior the map's observation
model gives the group's places against every other place and against "no mapped place"), or, for the
earlier estimator kept as a baseline (`confidence: relative`), on a ratio test against the runner-up
group. The covariance grows with the group's spread and with lack of confidence, and never drops
below a floor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..geometry import fuse_heading
from .belief import OUTSIDE_REASON

CONFIDENCES = ("calibrated", "relative")


@dataclass(frozen=True)
class PoseEstimatorConfig:
    min_score: float = 0.0          # candidates below this similarity are ignored
    cluster_radius: float = 5.0     # candidates closer than this (map units) agree
    ratio_threshold: float = 1.05   # best group weight / runner-up group weight needed for a fix
    min_confidence: float = 0.7     # below this confidence, no fix
    position_floor: float = 1.0     # smallest position standard deviation (map units)
    yaw_floor_deg: float = 10.0     # smallest yaw standard deviation
    planar: bool = True             # fuse heading by weighted circular mean (else take the best candidate's)
    confidence: str = "calibrated"  # calibrated: P(the frame shows the group's places); relative: 1 - 1/ratio
    out_prior: float = 0.5          # calibrated: probability of "no mapped place" before looking at the frame

    def __post_init__(self) -> None:
        from ..config import ConfigError

        checks = {"cluster_radius": self.cluster_radius > 0, "ratio_threshold": self.ratio_threshold >= 1.0,
                  "min_confidence": 0.0 <= self.min_confidence <= 1.0, "position_floor": self.position_floor > 0,
                  "yaw_floor_deg": self.yaw_floor_deg > 0, "min_score": -1.0 <= self.min_score <= 1.0,
                  "confidence": self.confidence in CONFIDENCES, "out_prior": 0.0 < self.out_prior < 1.0}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"pose estimator: invalid {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)} "
                              "(cluster_radius, floors > 0; ratio_threshold >= 1; min_confidence, min_score, out_prior "
                              f"in range; confidence one of {CONFIDENCES})")


@dataclass
class PoseEstimate:
    fix: bool
    reason: str                     # why there is (or is not) a fix
    place_id: int = -1              # best candidate of the winning group
    score: float = 0.0
    position: np.ndarray = field(default_factory=lambda: np.zeros(3))
    orientation: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 0.0, 1.0]))  # x, y, z, w
    covariance: np.ndarray = field(default_factory=lambda: np.eye(6))  # x y z roll pitch yaw, row-major
    confidence: float = 0.0
    group: list[int] = field(default_factory=list)  # ids in the winning group
    ratio: float = 0.0
    out_of_map: float = 0.0         # calibrated: P(the frame shows no mapped place)


def _groups(order: np.ndarray, positions: np.ndarray, radius: float) -> list[list[int]]:
    """Greedy grouping by score: each candidate joins the first group whose seed is within radius."""
    groups: list[list[int]] = []
    for i in order:
        for g in groups:
            if np.linalg.norm(positions[i] - positions[g[0]]) <= radius:
                g.append(int(i))
                break
        else:
            groups.append([int(i)])
    return groups


def estimate_pose(ids: np.ndarray, scores: np.ndarray, weights: np.ndarray, positions: np.ndarray,
                  orientations: np.ndarray, config: PoseEstimatorConfig, probabilities: np.ndarray | None = None,
                  out_of_map: float = 0.0) -> PoseEstimate:
    """`ids`/`scores`: top-k retrieval (ids < 0 are padding); `weights`: how each candidate pulls the fused
    pose, exp((s - s_best) / spread); `positions`/`orientations`: of those places. `probabilities`: the
    calibrated estimator's posterior of each candidate (against every place and "no mapped place"), so a
    group's confidence is its probability; None: the relative estimator's ratio test on the weights.
    `out_of_map`: P("no mapped place")."""
    ids = np.asarray(ids).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    weights = np.asarray(weights, dtype=np.float64).reshape(-1)
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    orientations = np.asarray(orientations, dtype=np.float64).reshape(-1, 4)
    for name, w in (("weights", weights), ("probabilities", probabilities)):
        if w is not None and (np.shape(w) != ids.shape or not np.all(np.isfinite(w)) or np.any(np.asarray(w) < 0)):
            raise ValueError(f"{name} must be one finite value >= 0 per candidate, got {w!r}")
    valid = (ids >= 0) & (scores >= config.min_score) & np.isfinite(scores) & (weights > 0)
    if not valid.any():
        return PoseEstimate(False, "no candidate above min_score")
    ids, scores, weights = ids[valid], scores[valid], weights[valid]
    probabilities = None if probabilities is None else np.asarray(probabilities, np.float64)[valid]
    positions, orientations = positions[valid], orientations[valid]
    groups = _groups(np.argsort(-scores, kind="stable"), positions, config.cluster_radius)
    totals = np.array([weights[g].sum() for g in groups])
    rank = np.argsort(-totals, kind="stable")
    best = groups[rank[0]]
    runner_up = totals[rank[1]] if len(groups) > 1 else 0.0
    ratio = float(totals[rank[0]] / runner_up) if runner_up > 0 else math.inf
    top = best[0]  # groups keep score order, so the first is the group's best candidate
    if probabilities is not None:  # the group's probability
        confidence = float(np.clip(probabilities[best].sum(), 0.0, 1.0))
    else:  # how much the winner dominates the runner-up
        confidence = float(np.clip(1.0 - 1.0 / ratio, 0.0, 1.0)) if math.isfinite(ratio) else 1.0

    w = weights[best] / weights[best].sum()
    position = (w[:, None] * positions[best]).sum(0)
    spread = (w[:, None] * (positions[best] - position) ** 2).sum(0)
    uncertain = (config.cluster_radius / 2) ** 2 * (1.0 - confidence)
    pos_var = config.position_floor ** 2 + spread + uncertain

    if config.planar:
        orientation, circ_var = fuse_heading(orientations[best], w, 0)  # best[0] is top
    else:
        orientation = orientations[top] / np.linalg.norm(orientations[top])
        circ_var = 0.0
    yaw_floor = math.radians(config.yaw_floor_deg)
    yaw_var = yaw_floor ** 2 + circ_var + (math.pi / 4) ** 2 * (1.0 - confidence)
    cov = np.diag([*pos_var, yaw_var, yaw_var, yaw_var])

    est = PoseEstimate(True, "ok", int(ids[top]), float(scores[top]), position, orientation, cov, confidence,
                       [int(ids[i]) for i in best], ratio, out_of_map)
    if ratio < config.ratio_threshold:
        est.fix, est.reason = False, f"ambiguous: best/runner-up group ratio {ratio:.3f} < {config.ratio_threshold}"
    elif confidence < config.min_confidence:
        est.fix = False
        est.reason = (f"{OUTSIDE_REASON} (P = {out_of_map:.2f})" if out_of_map >= 0.5
                      else f"low confidence {confidence:.3f} < {config.min_confidence}")
    return est
