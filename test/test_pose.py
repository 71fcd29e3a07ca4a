import math

import numpy as np
import pytest

from densernet_core.config import ConfigError
from densernet_core.geometry import yaw_to_quat
from densernet_core.localization.pose import PoseEstimatorConfig, estimate_pose

CFG = PoseEstimatorConfig(cluster_radius=5.0, ratio_threshold=1.2, min_confidence=0.2, position_floor=1.0,
                          confidence="relative")
SCALE = 0.05  # the query's spread of similarity over the map (placemap.background_statistics)


def relative(ids, scores, pos, ori, cfg, scale):
    """The relative estimator: candidates weighed by exp((s - s_best) / spread), gated by a ratio test."""
    scores = np.asarray(scores, float)
    return estimate_pose(ids, scores, np.exp((scores - scores.max()) / scale), pos, ori, cfg)


def quats(yaws):
    return np.array([yaw_to_quat(y) for y in yaws])


def test_consistent_cluster_fuses_positions_and_reports_confidence():
    pos = np.array([[10, 0, 0], [11, 0, 0], [12, 0, 0], [80, 40, 0], [-50, 3, 0]], float)
    scores = np.array([0.9, 0.85, 0.8, 0.4, 0.35])
    est = relative(np.arange(5), scores, pos, quats([0.1, 0.1, 0.1, 2.0, -2.0]), CFG, SCALE)
    assert est.fix and est.place_id == 0 and est.group == [0, 1, 2]
    w = np.exp((scores[:3] - 0.9) / SCALE)
    np.testing.assert_allclose(est.position, (w[:, None] * pos[:3]).sum(0) / w.sum())
    assert est.confidence > 0.99  # the other places lie 10 spreads below
    assert math.isclose(2 * math.atan2(est.orientation[2], est.orientation[3]), 0.1, abs_tol=1e-9)
    cov = est.covariance
    assert cov.shape == (6, 6) and np.all(np.diag(cov)[:3] >= CFG.position_floor ** 2)
    assert np.all(np.diag(cov)[3:] >= math.radians(CFG.yaw_floor_deg) ** 2)
    assert np.all(np.linalg.eigvalsh(cov) > 0)


def test_spread_grows_covariance():
    same = np.array([0.9, 0.9, 0.9])
    tight = relative(np.arange(3), same, np.array([[0, 0, 0], [0.1, 0, 0], [0.2, 0, 0]]), quats([0, 0, 0]), CFG, SCALE)
    wide = relative(np.arange(3), same, np.array([[0, 0, 0], [2.5, 0, 0], [4.9, 0, 0]]), quats([0, 0, 0]), CFG, SCALE)
    assert wide.covariance[0, 0] > tight.covariance[0, 0]


def test_aliasing_between_two_far_groups_gives_no_fix():
    pos = np.array([[0, 0, 0], [1, 0, 0], [100, 0, 0], [101, 0, 0]], float)
    est = relative(np.arange(4), np.array([0.8, 0.7, 0.79, 0.7]), pos, quats([0] * 4), CFG, SCALE)
    assert not est.fix and "ambiguous" in est.reason
    assert est.confidence < 0.2


def test_lone_best_match_wins_only_when_clearly_above_an_agreeing_group():
    pos = np.array([[0, 0, 0], [50, 0, 0], [51, 0, 0], [52, 0, 0]], float)
    clear = relative(np.arange(4), np.array([0.9, 0.6, 0.6, 0.6]), pos, quats([0] * 4), CFG, SCALE)
    assert clear.group == [0] and clear.fix  # six spreads above: the group of three cannot outweigh it
    barely = relative(np.arange(4), np.array([0.62, 0.6, 0.6, 0.6]), pos, quats([0] * 4), CFG, SCALE)
    assert barely.group == [1, 2, 3] and barely.place_id == 1  # 0.4 spreads above: the agreeing group wins


def test_weights_follow_the_query_spread_not_the_raw_similarity():
    """A raw VLAD's similarities lie within a few hundredths, a whitened descriptor's spread widely: the
    same pattern of scores in units of the query's spread gives the same estimate."""
    pos = np.array([[0, 0, 0], [1, 0, 0], [40, 0, 0], [41, 0, 0]], float)
    raw = relative(np.arange(4), np.array([0.64, 0.635, 0.62, 0.615]), pos, quats([0] * 4), CFG, 0.01)
    white = relative(np.arange(4), np.array([0.40, 0.35, 0.20, 0.15]), pos, quats([0] * 4), CFG, 0.1)
    assert raw.fix and white.fix and raw.group == white.group == [0, 1]
    assert math.isclose(raw.confidence, white.confidence, rel_tol=1e-9)
    np.testing.assert_allclose(raw.position, white.position)


def test_single_candidate():
    est = relative(np.array([7]), np.array([0.8]), np.array([[3, 4, 0]]), quats([1.0]), CFG, SCALE)
    assert est.fix and est.place_id == 7
    np.testing.assert_allclose(est.position, [3, 4, 0])
    assert est.covariance[0, 0] >= CFG.position_floor ** 2


def test_all_below_threshold():
    cfg = PoseEstimatorConfig(min_score=0.5)
    est = relative(np.arange(3), np.array([0.1, 0.2, 0.3]), np.zeros((3, 3)), quats([0] * 3), cfg, SCALE)
    assert not est.fix and "min_score" in est.reason
    assert np.all(np.diag(est.covariance) > 0)


def test_small_contrast_lowers_confidence_and_widens_covariance():
    pos = np.array([[0, 0, 0], [1, 0, 0], [60, 0, 0]], float)
    scores = np.array([0.9, 0.8, 0.7])
    sharp = relative(np.arange(3), scores, pos, quats([0] * 3), CFG, 0.05)
    blurred = relative(np.arange(3), scores, pos, quats([0] * 3), CFG, 0.5)
    assert sharp.confidence > blurred.confidence
    assert blurred.covariance[0, 0] > sharp.covariance[0, 0]


def test_invalid_config_and_weights_named():
    with pytest.raises(ConfigError, match="cluster_radius"):
        PoseEstimatorConfig(cluster_radius=0)
    with pytest.raises(ConfigError, match="confidence"):
        PoseEstimatorConfig(confidence="absolute")
    with pytest.raises(ValueError, match="weights"):
        estimate_pose(np.arange(2), np.array([0.5, 0.4]), np.array([1.0, np.nan]), np.zeros((2, 3)), quats([0, 0]), CFG)


def test_calibrated_confidence_is_the_groups_probability():
    """With the calibrated estimator each candidate carries its posterior probability, the rest (unscored
    places and "no mapped place") completing it to 1: the confidence is the winning group's probability."""
    cfg = PoseEstimatorConfig(cluster_radius=5.0, min_confidence=0.7)
    pos = np.array([[0, 0, 0], [1, 0, 0], [60, 0, 0]], float)
    w = np.exp((np.array([0.7, 0.68, 0.6]) - 0.7) / SCALE)
    est = estimate_pose(np.arange(3), np.array([0.7, 0.68, 0.6]), w, pos, quats([0] * 3), cfg,
                        np.array([0.5, 0.3, 0.01]), out_of_map=0.19)
    assert est.fix and est.group == [0, 1] and math.isclose(est.confidence, 0.8)
    # The same places, most of the probability on "no mapped place": no fix, and it says why.
    out = estimate_pose(np.arange(3), np.array([0.7, 0.68, 0.6]), w, pos, quats([0] * 3), cfg,
                        np.array([0.05, 0.03, 0.01]), out_of_map=0.9)
    assert not out.fix and math.isclose(out.confidence, 0.08) and "outside the map" in out.reason
    # Spread between two groups without any outside mass: low confidence, not "outside".
    split = estimate_pose(np.arange(3), np.array([0.7, 0.68, 0.6]), w, pos, quats([0] * 3), cfg,
                          np.array([0.4, 0.0, 0.35]), out_of_map=0.25)
    assert not split.fix and "low confidence" in split.reason


def test_fused_heading_keeps_the_maps_axis_convention():
    """Places stored as camera poses (OpenCV axes: z forward, y down) fuse to a camera pose: the
    fallback orientation and a PnP orientation are comparable, never 90 degrees apart."""
    from scipy.spatial.transform import Rotation

    optical = Rotation.from_matrix([[0, 0, 1], [-1, 0, 0], [0, -1, 0]])  # camera looking along map +x
    headings = np.radians([20.0, 24.0, 22.0])
    cams = np.array([(Rotation.from_euler("z", h) * optical).as_quat() for h in headings])
    pos = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0]], float)
    est = relative(np.arange(3), np.array([0.9, 0.9, 0.9]), pos, cams, CFG, SCALE)
    want = Rotation.from_euler("z", np.radians(22.0)) * optical
    assert np.degrees((Rotation.from_quat(est.orientation) * want.inv()).magnitude()) < 1e-6
    # Body-frame places (x forward, z up) still give a pure yaw.
    est = relative(np.arange(3), np.array([0.9, 0.9, 0.9]), pos, quats(headings), CFG, SCALE)
    np.testing.assert_allclose(est.orientation, yaw_to_quat(np.radians(22.0)), atol=1e-9)
