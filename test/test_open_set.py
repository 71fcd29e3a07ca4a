"""Knowing when it does not know, on real frames (issue 24): routes the map does not hold get no fix,
the places it does hold do, and a published confidence means what it says.

A Gardens Point map (day_left 100-199, an off-the-shelf checkpoint from day_left 0-99 at 180x320);
inside it: day_right 100-199; outside it: the KITTI snippet, and the same campus's frames 0-79.
"""
from __future__ import annotations

import numpy as np
import pytest

from densernet_core.localization.belief import EARLIER_FILTER, BeliefConfig, Motion
from densernet_core.localization.localizer import Localizer
from densernet_core.localization.observation import auc
from densernet_core.localization.pose import PoseEstimatorConfig
from densernet_core.localization.report import open_set_summary, precision_recall, reliability

SIZE = (180, 320)
RELATIVE_SINGLE = PoseEstimatorConfig(cluster_radius=5.0, confidence="relative", min_confidence=0.5)


@pytest.fixture(scope="module")
def campus(tmp_path_factory, gardens_point, kitti, caffe_weights_ready):
    from densernet_core.cli import make_checkpoint
    from densernet_core.datasets import load_kitti, load_traverse
    from densernet_core.mapping.placemap import build_map
    from densernet_core.model.checkpoint import checkpoint_hash, load_model

    work = tmp_path_factory.mktemp("campus")
    ckpt = make_checkpoint(load_traverse(gardens_point / "day_left", list(range(0, 100, 2))).images,
                           work / "gp.safetensors", image_size=SIZE, progress=False)
    model = load_model(ckpt)
    frames = list(range(100, 200))
    pmap = build_map(model, ckpt, checkpoint_hash(ckpt), load_traverse(gardens_point / "day_left", frames),
                     work / "map", progress=False)
    gap = build_map(model, ckpt, checkpoint_hash(ckpt),
                    load_traverse(gardens_point / "day_left", [f for f in frames if not 140 <= f < 160]),
                    work / "gap_map", progress=False)
    desc = {"inside": model.describe(load_traverse(gardens_point / "day_right", frames).images),
            "kitti": model.describe(load_kitti(kitti).images),
            "campus 0-79": model.describe(load_traverse(gardens_point / "day_right", list(range(80))).images)}
    return model, pmap, gap, desc


def run(pmap, model, desc, belief=BeliefConfig(max_step=3.0), single=PoseEstimatorConfig(cluster_radius=5.0)):
    loc = Localizer(model, pmap, single, belief=belief, mode="filtered", metric=None)
    return [loc.localize_descriptor(d[None], Motion()) for d in desc]


def test_map_carries_a_calibration_that_separates_its_places(campus):
    model, pmap, gap, desc = campus
    obs = pmap.observation
    assert obs is not None and obs.fit["held_out"]["auc"] > 0.95
    assert 0 < obs.margin_gap < obs.positive_gap_median and obs.slope > 0
    assert "observation model" in pmap.info()


def test_routes_not_in_the_map_get_no_fix_where_the_relative_estimator_fixes_them(campus):
    """KITTI and the campus's other half: no frame fixed, single or filtered, and the reason says why;
    today's (relative) estimator, on the same frames, fixes many of them."""
    model, pmap, gap, desc = campus
    for name in ("kitti", "campus 0-79"):  # 0-79: twenty frames short of the mapped 100 (99 borders it)
        results = run(pmap, model, desc[name])
        fixes = sum(r.single.fix for r in results), sum(r.filtered.fix for r in results)
        assert fixes[0] <= 0.01 * len(results) and fixes[1] <= 0.01 * len(results) + 1, (name, fixes)
        outside = [r.filtered.out_of_map > 0.5 and "outside the map" in r.filtered.reason for r in results]
        assert np.mean(outside) >= 0.8, (name, np.mean(outside))  # the diagnostics say why
        relative = run(pmap, model, desc[name], EARLIER_FILTER, RELATIVE_SINGLE)
        assert sum(r.filtered.fix for r in relative) > 0.3 * len(relative), name  # the defect this guards against


def test_places_in_the_map_are_fixed_right(campus):
    model, pmap, gap, desc = campus
    results = run(pmap, model, desc["inside"])
    right = [r.filtered.fix and abs(r.filtered.position[0] - (100 + k)) <= 2 for k, r in enumerate(results)]
    fixes = sum(r.filtered.fix for r in results)
    assert fixes >= 80 and sum(right) >= 0.95 * fixes, (fixes, sum(right))


def test_a_drive_leaving_the_mapped_area_drops_the_fix_and_finds_it_again(campus):
    """The map without places 140-159, the whole drive replayed: inside the gap no fix more than 2 places
    off; after it, fixed again within 5 frames."""
    model, pmap, gap, desc = campus
    results = run(gap, model, desc["inside"])
    inside = results[40:60]
    assert not any(r.filtered.fix and abs(r.filtered.position[0] - (140 + k)) > 2 for k, r in enumerate(inside))
    back = next(k for k in range(60, 100) if results[k].filtered.fix and abs(results[k].filtered.position[0] - (100 + k)) <= 2)
    assert back - 60 < 5


def test_a_descriptor_without_information_gives_no_fix(campus, gardens_point):
    """A random-weight trunk's descriptors of the night frames against its own map of day frames: no
    single-frame fix, and few filtered ones where the earlier filter locked on a look-alike for most of the
    drive. The issue's target (<= 1 % fixed) is not met: a place that resembles every night frame holds
    the belief now and then (docs/BENCHMARKS.md, *Knowing when it does not know*)."""
    from densernet_core.cli import make_checkpoint
    from densernet_core.datasets import load_traverse
    from densernet_core.mapping.placemap import build_map
    from densernet_core.model.checkpoint import checkpoint_hash, load_model

    model, pmap, gap, desc = campus
    work = pmap.manifest.checkpoint and __import__("pathlib").Path(pmap.manifest.checkpoint).parent
    ckpt = make_checkpoint(load_traverse(gardens_point / "day_left", list(range(0, 100, 2))).images,
                           work / "random.safetensors", weights="none", image_size=SIZE, progress=False)
    rand = load_model(ckpt)
    frames = list(range(100, 200, 2))
    rmap = build_map(rand, ckpt, checkpoint_hash(ckpt), load_traverse(gardens_point / "day_left", frames),
                     work / "random_map", progress=False)
    night = rand.describe(load_traverse(gardens_point / "night_right", frames).images)
    results = run(rmap, rand, night, BeliefConfig(max_step=3.0), PoseEstimatorConfig(cluster_radius=2.5))
    wrong = sum(r.filtered.fix and abs(r.filtered.position[0] - f) > 2 for r, f in zip(results, frames))
    assert sum(r.single.fix for r in results) == 0
    assert wrong <= 5, wrong  # measured 4 of 50
    relative = run(rmap, rand, night, EARLIER_FILTER, PoseEstimatorConfig(cluster_radius=2.5, confidence="relative",
                                                                          min_confidence=0.5))
    assert sum(r.filtered.fix and abs(r.filtered.position[0] - f) > 2 for r, f in zip(relative, frames)) >= 20


def test_open_set_metrics_on_known_answers():
    """Precision-recall with ties, recall at 100 %/99 % precision, AUC and reliability on a hand-made case."""
    conf = np.array([0.9, 0.8, 0.8, 0.6, 0.3])
    right = np.array([True, True, False, True, False])
    p, r = precision_recall(conf, right, positives=4)
    np.testing.assert_allclose(p, [1.0, 2 / 3, 3 / 4, 3 / 5])  # the tie at 0.8 enters together
    np.testing.assert_allclose(r, [0.25, 0.5, 0.75, 0.75])
    s = open_set_summary(conf, right, positives=4)
    assert s["recall_at_100p"] == 0.25 and s["recall_at_99p"] == 0.25
    np.testing.assert_allclose(s["auc"], 0.25 * 1.0 + 0.25 * 0.75 + 0.25 * 0.75)
    bins = reliability(conf, right)
    assert [b["fixes"] for b in bins] == [0, 1, 0, 2, 1] and bins[3]["accuracy"] == 0.5
    assert auc(np.array([2.0, 3.0]), np.array([1.0, 2.0])) == pytest.approx(0.875)
