"""From retrieved places to a pose with an honest covariance, or an explicit "no fix".

The model is documented in docs/POSE_MODEL.md. In short: each candidate weighs
exp((s_i - s_best) / scale), where scale is the spread of this query's similarities over the
map (so the weights mean the same for a raw 12k-D VLAD, whose similarities all lie within a few
hundredths, and for a whitened descriptor, whose similarities spread widely); candidates that
agree spatially are grouped, the heaviest group wins, its positions are fused by weighted mean,
and a ratio test against the runner-up group gates the fix. The covariance grows with the
group's spread and with lack of confidence, and never drops below a floor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..datasets import fuse_heading


@dataclass(frozen=True)
class PoseEstimatorConfig:
    min_score: float = 0.0          # candidates below this similarity are ignored
    cluster_radius: float = 5.0     # candidates closer than this (map units) agree
    ratio_threshold: float = 1.05   # best group weight / runner-up group weight needed for a fix
    min_confidence: float = 0.5     # below this confidence (1 - 1/ratio), no fix
    position_floor: float = 1.0     # smallest position standard deviation (map units)
    yaw_floor_deg: float = 10.0     # smallest yaw standard deviation
    planar: bool = True             # fuse heading by weighted circular mean (else take the best candidate's)

    def __post_init__(self) -> None:
        from ..config import ConfigError

        checks = {"cluster_radius": self.cluster_radius > 0, "ratio_threshold": self.ratio_threshold >= 1.0,
                  "min_confidence": 0.0 <= self.min_confidence <= 1.0, "position_floor": self.position_floor > 0,
                  "yaw_floor_deg": self.yaw_floor_deg > 0, "min_score": -1.0 <= self.min_score <= 1.0}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"pose estimator: invalid {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)} "
                              "(cluster_radius, floors > 0; ratio_threshold >= 1; min_confidence, min_score in range)")


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


def estimate_pose(ids: np.ndarray, scores: np.ndarray, positions: np.ndarray, orientations: np.ndarray,
                  config: PoseEstimatorConfig, score_scale: float) -> PoseEstimate:
    """`ids`/`scores`: top-k retrieval (ids < 0 are padding); `positions`/`orientations`: of those places;
    `score_scale`: the spread of this query's similarities over the map (`PlaceMap.score_background`)."""
    if not score_scale > 0:
        raise ValueError(f"score_scale must be > 0, got {score_scale}")
    ids = np.asarray(ids).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    orientations = np.asarray(orientations, dtype=np.float64).reshape(-1, 4)
    valid = (ids >= 0) & (scores >= config.min_score) & np.isfinite(scores)
    if not valid.any():
        return PoseEstimate(False, "no candidate above min_score")
    ids, scores, positions, orientations = ids[valid], scores[valid], positions[valid], orientations[valid]
    weights = np.exp((scores - scores.max()) / score_scale)
    groups = _groups(np.argsort(-scores, kind="stable"), positions, config.cluster_radius)
    totals = np.array([weights[g].sum() for g in groups])
    rank = np.argsort(-totals, kind="stable")
    best = groups[rank[0]]
    runner_up = totals[rank[1]] if len(groups) > 1 else 0.0
    ratio = float(totals[rank[0]] / runner_up) if runner_up > 0 else math.inf
    top = best[0]  # groups keep score order, so the first is the group's best candidate
    # Confidence: how much the winner dominates the runner-up.
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
                       [int(ids[i]) for i in best], ratio)
    if ratio < config.ratio_threshold:
        est.fix, est.reason = False, f"ambiguous: best/runner-up group ratio {ratio:.3f} < {config.ratio_threshold}"
    elif confidence < config.min_confidence:
        est.fix, est.reason = False, f"low confidence {confidence:.3f} < {config.min_confidence}"
    return est
