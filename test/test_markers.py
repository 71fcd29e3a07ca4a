"""RViz markers stay cheap on a big map: the most probable places, in order, without sorting them all."""
import numpy as np
import pytest

pytest.importorskip("visualization_msgs")

from densernet_ros import markers  # noqa: E402


def test_belief_markers_draw_the_most_probable_places_in_order(monkeypatch):
    monkeypatch.setattr(markers, "MAX_BELIEF_MARKERS", 5)
    rng = np.random.default_rng(0)
    belief = rng.random(1000) * 1e-3
    peaks = [17, 400, 999, 3, 250, 600]
    belief[peaks] = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]  # the sixth is one too many
    positions = np.c_[np.arange(1000.0), np.zeros((1000, 2))]
    cloud, _ = markers.belief_markers(positions, belief, 0.1, "map", 1.0, None).markers
    assert [p.x for p in cloud.points] == [17.0, 400.0, 999.0, 3.0, 250.0]
    few, _ = markers.belief_markers(positions[:3], np.array([0.0, 0.2, 0.5]), 0.0, "map", 1.0, None).markers
    assert [p.x for p in few.points] == [2.0, 1.0]  # a place without belief is not drawn
