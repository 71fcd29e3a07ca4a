import math

import numpy as np
import pytest

from densernet_core.config import ConfigError
from densernet_core.datasets import yaw_to_quat
from densernet_core.localization.pose import PoseEstimatorConfig, estimate_pose

CFG = PoseEstimatorConfig(cluster_radius=5.0, ratio_threshold=1.2, min_confidence=0.2, position_floor=1.0)


def quats(yaws):
    return np.array([yaw_to_quat(y) for y in yaws])


def test_consistent_cluster_fuses_positions_and_reports_confidence():
    pos = np.array([[10, 0, 0], [11, 0, 0], [12, 0, 0], [80, 40, 0], [-50, 3, 0]], float)
    scores = np.array([0.9, 0.85, 0.8, 0.4, 0.35])
    est = estimate_pose(np.arange(5), scores, pos, quats([0.1, 0.1, 0.1, 2.0, -2.0]), CFG)
    assert est.fix and est.place_id == 0 and est.group == [0, 1, 2]
    expected = (scores[:3, None] * pos[:3]).sum(0) / scores[:3].sum()
    np.testing.assert_allclose(est.position, expected)
    assert est.confidence > 0.5
    assert math.isclose(2 * math.atan2(est.orientation[2], est.orientation[3]), 0.1, abs_tol=1e-9)
    cov = est.covariance
    assert cov.shape == (6, 6) and np.all(np.diag(cov)[:3] >= CFG.position_floor ** 2)
    assert np.all(np.diag(cov)[3:] >= math.radians(CFG.yaw_floor_deg) ** 2)
    assert np.all(np.linalg.eigvalsh(cov) > 0)


def test_spread_grows_covariance():
    tight = estimate_pose(np.arange(3), np.array([0.9, 0.9, 0.9]), np.array([[0, 0, 0], [0.1, 0, 0], [0.2, 0, 0]]),
                          quats([0, 0, 0]), CFG)
    wide = estimate_pose(np.arange(3), np.array([0.9, 0.9, 0.9]), np.array([[0, 0, 0], [2.5, 0, 0], [4.9, 0, 0]]),
                         quats([0, 0, 0]), CFG)
    assert wide.covariance[0, 0] > tight.covariance[0, 0]


def test_aliasing_between_two_far_groups_gives_no_fix():
    pos = np.array([[0, 0, 0], [1, 0, 0], [100, 0, 0], [101, 0, 0]], float)
    est = estimate_pose(np.arange(4), np.array([0.8, 0.7, 0.79, 0.7]), pos, quats([0] * 4), CFG)
    assert not est.fix and "ambiguous" in est.reason
    assert est.confidence < 0.1


def test_isolated_top1_among_disagreeing_candidates_is_not_trusted():
    pos = np.array([[0, 0, 0], [50, 0, 0], [51, 0, 0], [52, 0, 0]], float)
    est = estimate_pose(np.arange(4), np.array([0.9, 0.6, 0.6, 0.6]), pos, quats([0] * 4), CFG)
    # The agreeing group outweighs the lone best match.
    assert est.group == [1, 2, 3] and est.place_id == 1


def test_single_candidate():
    est = estimate_pose(np.array([7]), np.array([0.8]), np.array([[3, 4, 0]]), quats([1.0]), CFG)
    assert est.fix and est.place_id == 7
    np.testing.assert_allclose(est.position, [3, 4, 0])
    assert est.covariance[0, 0] >= CFG.position_floor ** 2


def test_all_below_threshold():
    cfg = PoseEstimatorConfig(min_score=0.5)
    est = estimate_pose(np.arange(3), np.array([0.1, 0.2, 0.3]), np.zeros((3, 3)), quats([0] * 3), cfg)
    assert not est.fix and "min_score" in est.reason
    assert np.all(np.diag(est.covariance) > 0)


def test_low_similarity_lowers_confidence():
    pos = np.array([[0, 0, 0], [1, 0, 0], [60, 0, 0]], float)
    high = estimate_pose(np.arange(3), np.array([0.9, 0.8, 0.3]), pos, quats([0] * 3), CFG)
    low = estimate_pose(np.arange(3), np.array([0.15, 0.14, 0.05]), pos, quats([0] * 3), CFG)
    assert high.confidence > low.confidence
    assert low.covariance[0, 0] > high.covariance[0, 0]


def test_invalid_config_named():
    with pytest.raises(ConfigError, match="cluster_radius"):
        PoseEstimatorConfig(cluster_radius=0)
