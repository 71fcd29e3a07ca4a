"""map -> odom algebra and odometry lookup at image stamps, checked against homogeneous matrices."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from densernet_core.geometry import compose, inverse, map_to_odom
from densernet_core.localization.odometry import OdometryBuffer


def _matrix(t, q) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = Rotation.from_quat(q).as_matrix()
    m[:3, 3] = t
    return m


def _random(rng) -> tuple[np.ndarray, np.ndarray]:
    return rng.normal(size=3) * 10, Rotation.random(random_state=int(rng.integers(1 << 30))).as_quat()


def test_compose_inverse_and_map_to_odom_match_matrices():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = _random(rng), _random(rng)
        np.testing.assert_allclose(_matrix(*compose(a, b)), _matrix(*a) @ _matrix(*b), atol=1e-9)
        np.testing.assert_allclose(_matrix(*inverse(a)), np.linalg.inv(_matrix(*a)), atol=1e-9)
        # the defining property: map->odom composed with odom->base gives the fixed map->base
        map_base, odom_base = a, b
        corr = map_to_odom(map_base, odom_base)
        np.testing.assert_allclose(_matrix(*corr) @ _matrix(*odom_base), _matrix(*map_base), atol=1e-9)


def test_drifted_odometry_gives_the_drift_back():
    """Odometry = truth seen from a frame shifted by (3, -1) and turned 10 deg: map->odom is that offset."""
    drift = (np.array([3.0, -1.0, 0.0]), Rotation.from_euler("z", 10, degrees=True).as_quat())
    truth = (np.array([12.0, 4.0, 0.0]), Rotation.from_euler("z", 35, degrees=True).as_quat())
    odom = compose(inverse(drift), truth)
    t, q = map_to_odom(truth, odom)
    np.testing.assert_allclose(t, drift[0], atol=1e-9)
    assert Rotation.from_quat(q).as_euler("xyz", degrees=True)[2] == pytest.approx(10.0)


def _linear_buffer(max_gap=0.2):
    """A robot driving +x at 2 m/s while turning 0.5 rad/s; odometry at 20 Hz from t=100 s."""
    buf = OdometryBuffer(max_gap_s=max_gap, history_s=5.0)
    for k in range(21):
        t = 100.0 + 0.05 * k
        buf.add(t, (2.0 * (t - 100), 0.0, 0.0), Rotation.from_euler("z", 0.5 * (t - 100)).as_quat())
    return buf


def test_lookup_interpolates_between_samples():
    buf = _linear_buffer()
    found = buf.at(100.5125)  # between the samples at 100.50 and 100.55
    assert found.reason == "ok"
    t, q = found.transform
    np.testing.assert_allclose(t, [1.025, 0, 0], atol=1e-9)
    assert Rotation.from_quat(q).as_euler("xyz")[2] == pytest.approx(0.25625)
    exact = buf.at(100.5)
    np.testing.assert_allclose(exact.transform[0], [1.0, 0, 0], atol=1e-9)


def test_lookup_refuses_gaps_and_stamps_outside_the_buffer():
    buf = _linear_buffer()
    assert "before" in buf.at(99.0).reason and buf.at(99.0).transform is None
    assert "after" in buf.at(102.0).reason
    assert buf.at(101.1).reason == "ok"  # within max_gap of the newest sample: held
    sparse = OdometryBuffer(max_gap_s=0.2, history_s=5.0)
    sparse.add(1.0, (0, 0, 0), (0, 0, 0, 1))
    sparse.add(2.0, (1, 0, 0), (0, 0, 0, 1))
    found = sparse.at(1.5)
    assert found.transform is None and "gap of 1.000 s" in found.reason
    assert OdometryBuffer(0.2, 5.0).at(1.0).reason == "no odometry received"


def test_out_of_order_samples_history_and_bad_quaternions():
    buf = OdometryBuffer(max_gap_s=1.0, history_s=2.0)
    buf.add(2.0, (2, 0, 0), (0, 0, 0, 1))
    buf.add(1.0, (1, 0, 0), (0, 0, 0, 2))  # unnormalised: accepted and normalised
    np.testing.assert_allclose(buf.at(1.5).transform[0], [1.5, 0, 0])
    np.testing.assert_allclose(buf.at(1.0).transform[1], [0, 0, 0, 1])
    buf.add(4.0, (4, 0, 0), (0, 0, 0, 1))  # 1.0 is now more than 2 s old
    assert len(buf) == 2 and buf.at(0.9).transform is None  # 1.1 s before the oldest kept sample
    with pytest.raises(ValueError, match="invalid quaternion"):
        buf.add(5.0, (0, 0, 0), (0, 0, 0, 0))
    with pytest.raises(ValueError, match="must be > 0"):
        OdometryBuffer(0.0, 1.0)


def test_time_going_back_starts_a_live_buffer_again_and_a_recording_keeps_both_runs():
    """A bag played again (or looped, or a simulator reset) sends odometry from its start once more, in an
    odom frame that started again. Kept in the buffer, those samples were pruned at once as older than the
    history (the newest was the first run's end): every lookup in the replay failed, so map -> odom was
    never corrected again."""
    live = OdometryBuffer(max_gap_s=0.2, history_s=10.0)
    for i in range(1001):  # the first run: 100 s at 10 Hz, x = 1 m/s
        assert live.add(i * 0.1, (i * 0.1, 0, 0), (0, 0, 0, 1)) == 0.0
    assert live.add(99.95, (99.95, 0, 0), (0, 0, 0, 1)) == 0.0  # 50 ms out of order: in place, not a restart
    jumps = [live.add(i * 0.1, (-i * 0.1, 0, 0), (0, 0, 0, 1)) for i in range(50)]  # the replay: x = -1 m/s
    assert jumps[0] == pytest.approx(100.0) and not any(jumps[1:])
    assert len(live) == 50
    found = live.at(2.05)
    assert found.reason == "ok"
    np.testing.assert_allclose(found.transform[0], [-2.05, 0, 0], atol=1e-9)  # the replay's pose, not the first run's
    assert "after" in live.at(99.0).reason  # the first run's samples are gone

    whole = OdometryBuffer(max_gap_s=0.2, history_s=1e9, restart_on_jump_back=False)  # a recording read whole
    for i in range(101):
        whole.add(100 + i * 0.1, (i * 0.1, 0, 0), (0, 0, 0, 1))
    assert whole.add(0.0, (5.0, 0, 0), (0, 0, 0, 1)) == pytest.approx(110.0)  # reported, kept with the first run
    whole.add(0.1, (5.1, 0, 0), (0, 0, 0, 1))
    assert len(whole) == 103
    np.testing.assert_allclose(whole.at(105.0).transform[0], [5.0, 0, 0], atol=1e-9)
    np.testing.assert_allclose(whole.at(0.05).transform[0], [5.05, 0, 0], atol=1e-9)
