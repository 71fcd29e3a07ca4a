"""The place-belief filter on synthetic score streams with known answers (no images, no model).

A stream imitates retrieval at night: the true place scores highest most of the time, but some
frames prefer a random look-alike, and some carry no information at all. Frames from outside the
map score no place above the map's background. The calibrated filter weighs each place by the
absolute likelihood ratio of a synthetic observation model fitted to these streams' units.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from densernet_core.config import ConfigError
from densernet_core.geometry import yaw_to_quat
from densernet_core.localization.belief import EARLIER_FILTER, BeliefConfig, Evidence, Motion, PlaceBelief
from densernet_core.localization.observation import ObservationModel

N = 100
BASE = 0.55  # a frame's typical similarity to the map
SCALE = 0.02  # the query's similarity spread over the map
K = 10
LINE = np.c_[np.arange(N, dtype=float), np.zeros((N, 2))]  # place i at x = i (a walked route, 1 unit apart)
# What the map's own neighbours score above the background here is the 0.06 bump: the margin is a quarter of it.
OBS = ObservationModel(slope=150.0, margin_gap=0.015, positive_gap_median=0.06, recognition_margin=0.25, neighbour_similarity=0.8,
                       miss_rate=0.05)


def belief(config: BeliefConfig = BeliefConfig(), positions=LINE, orientations=None) -> PlaceBelief:
    return PlaceBelief(positions, orientations, config, OBS)


def frame_scores(truth: int | None, rng: np.random.Generator, wrong: bool = False,
                 alias: dict[int, int] | None = None, blank: bool = False, k: int = N) -> Evidence:
    """A bump at the truth (and at its look-alike), noise, or a wrong peak; `truth` None: a frame from
    outside the map (noise only). `k` places are scored, best first (the filter's evidence)."""
    s = BASE + 0.004 * rng.standard_normal(N)
    if not blank and truth is not None:
        for centre in [truth] + ([alias[truth]] if alias and truth in alias else []):
            s += 0.06 * np.exp(-0.5 * ((np.arange(N) - centre) / 1.2) ** 2)
        if wrong:  # a look-alike elsewhere beats the truth
            s[rng.integers(N)] += 0.09
    ids = np.argsort(-s)[:k]
    return Evidence(ids, s[ids], float(np.median(s)), SCALE)


def run(b: PlaceBelief, truths, rng, wrong_every: int = 0, motions=None, **kw):
    out = []
    for t, truth in enumerate(truths):
        ev = frame_scores(truth, rng, wrong=bool(wrong_every) and t % wrong_every == wrong_every - 1, **kw)
        out.append(b.step(ev, motions[t] if motions else Motion(moved=True)))
    return out


def within(est, truth, tol=2.0) -> bool:
    return est.fix and abs(est.position[0] - truth) <= tol + 1e-9


def covered(est, truth) -> bool:
    """The truth lies inside the published 2-sigma interval (along the route)."""
    return abs(est.position[0] - truth) <= 2 * np.sqrt(est.covariance[0, 0])


def single_frame_right(truths, seed, wrong_every) -> list[bool]:
    """The best-scoring place of the very same frames (same generator, same draws)."""
    rng = np.random.default_rng(seed)
    return [abs(frame_scores(t, rng, wrong=(k % wrong_every == wrong_every - 1)).ids[0] - t) <= 2
            for k, t in enumerate(truths)]


def test_converges_and_beats_single_frame_with_one_wrong_frame_in_three():
    truths = list(range(10, 70))
    out = run(belief(), truths, np.random.default_rng(0), wrong_every=3)
    good = [within(e, t) for e, t in zip(out[5:], truths[5:])]
    single = single_frame_right(truths, 0, 3)
    assert np.mean(single[5:]) < 0.75  # the same frames alone: one in three is wrong
    assert np.mean(good) >= 0.95 and np.mean(good) > np.mean(single[5:]) + 0.2
    assert all(covered(e, t) for e, t in zip(out[5:], truths[5:]) if e.fix)


def test_the_relative_baseline_is_kept():
    """The earlier filter (relative likelihoods, no outside state, bounded speed) stays selectable as the
    benchmarks' baseline, and still converges on the same stream."""
    truths = list(range(10, 70))
    out = run(PlaceBelief(LINE, None, EARLIER_FILTER), truths, np.random.default_rng(0), wrong_every=3)
    assert np.mean([within(e, t) for e, t in zip(out[5:], truths[5:])]) >= 0.9
    assert all(e.out_of_map == 0.0 for e in out)


def test_stopping_keeps_the_place():
    """A robot that stops sees the same view again: the frames are not `moved`, standing still is allowed."""
    rng = np.random.default_rng(1)
    b = belief()
    run(b, list(range(20, 30)), rng, wrong_every=4)
    still = [b.step(frame_scores(30, rng, wrong=(t % 4 == 3)), Motion(moved=False)) for t in range(20)]
    assert all(within(e, 30, 1.0) for e in still[2:])


def test_reversing_is_followed():
    rng = np.random.default_rng(2)
    truths = list(range(30, 60)) + list(range(59, 30, -1))
    out = run(belief(), truths, rng, wrong_every=5)
    after = [within(e, t) for e, t in zip(out[33:], truths[33:])]  # 3 frames after the turn
    assert np.mean(after) >= 0.9
    assert all(covered(e, t) for e, t in zip(out[33:], truths[33:]) if e.fix)


def test_faster_than_mapped_within_the_speed_bound():
    rng = np.random.default_rng(3)
    truths = list(range(0, 99, 2))  # every second place: twice the mapping speed
    out = run(belief(BeliefConfig(max_step=3.0)), truths, rng, wrong_every=4)
    assert np.mean([within(e, t) for e, t in zip(out[3:], truths[3:])]) >= 0.85
    assert np.mean([covered(e, t) for e, t in zip(out[3:], truths[3:]) if e.fix]) >= 0.9


def test_look_alike_halves_resolved_by_the_route_so_far():
    """Places 40-59 look exactly like places 70-89 (a revisit): a single frame cannot tell them apart,
    a robot that came from place 20 can."""
    rng = np.random.default_rng(4)
    alias = {**{j: j + 30 for j in range(40, 60)}, **{j + 30: j for j in range(40, 60)}}
    truths = list(range(20, 60))
    out = run(belief(), truths, rng, alias=alias)
    assert all(within(e, t) for e, t in zip(out, truths) if t >= 42)


def test_look_alike_places_alone_give_no_fix():
    """Switched on inside the aliased stretch, the belief is split in two: "no fix", not a guess."""
    rng = np.random.default_rng(5)
    alias = {**{j: j + 30 for j in range(40, 60)}, **{j + 30: j for j in range(40, 60)}}
    est = run(belief(), [45], rng, alias=alias)[0]
    assert not est.fix and est.mass < 0.6 and "spread" in est.reason


def test_kidnapped_robot_relocalizes_with_no_wrong_fix_meanwhile():
    """Carried from place 39 to 75 without warning: every frame until the first right fix again is "no
    fix" (a wrong fix would send the robot off), and the first right fix comes within 5 frames."""
    rng = np.random.default_rng(6)
    truths = list(range(10, 40)) + list(range(75, 95))
    out = run(belief(), truths, rng)
    assert all(within(e, t) for e, t in zip(out[5:30], truths[5:30]))  # localized before the jump
    first_right = next(k for k in range(30, len(out)) if within(out[k], truths[k]))
    assert first_right - 30 < 5
    assert not any(e.fix for e in out[30:first_right])
    assert all(within(e, t) for e, t in zip(out[first_right:], truths[first_right:]))


def test_contradicting_frames_restart_the_belief_once_and_it_is_counted():
    """The same kidnap with the calibrated filter's outside state doing the work (no restart needed), with
    `relocalize_after` 1 (the jump frame itself restarts it) and with the relative observation, which has
    no outside state: its third contradicting frame in a row restarts the belief. Each restart is reported
    on its frame and counted once, and the place is right from the restart on."""
    truths = list(range(10, 40)) + list(range(75, 95))
    for cfg, restarts in ((BeliefConfig(), []), (BeliefConfig(relocalize_after=1), [30]),
                          (BeliefConfig(observation="relative", out_of_map=False), [32])):
        b = belief(cfg)
        out = run(b, truths, np.random.default_rng(6))
        assert [k for k, e in enumerate(out) if e.relocalized] == restarts, cfg
        assert b.relocalizations == len(restarts)
        assert all(within(e, t) for e, t in zip(out[36:], truths[36:]))


def test_frames_without_information_are_unrecognisable_then_the_place_returns():
    """Six frames of pure noise (a covered lens): "not localized: ... unrecognisable", never a wrong fix;
    standing still or driving on, the place is found again within three frames of the signal's return."""
    rng = np.random.default_rng(7)
    b = belief(BeliefConfig(max_step=1.5))
    run(b, list(range(10, 30)), rng)
    still = [b.step(frame_scores(30, rng, blank=True), Motion(moved=False)) for _ in range(6)]
    assert not any(e.fix and not within(e, 30) for e in still)
    assert "unrecognisable" in still[-1].reason
    again = run(b, [30] * 3 + list(range(30, 40)), rng)
    assert all(within(e, t) for e, t in zip(again[2:], [30] + list(range(30, 40))))
    blind = [b.step(frame_scores(t, rng, blank=True), Motion(moved=True)) for t in range(40, 46)]
    assert not any(e.fix and not within(e, t) for e, t in zip(blind, range(40, 46))) and not blind[-1].fix
    back = run(b, list(range(46, 56)), rng)
    assert all(within(e, t) for e, t in zip(back[3:], range(49, 56)))
    assert not any(e.fix and not within(e, t) for e, t in zip(back, range(46, 56)))


def test_route_not_in_the_map_gives_no_fix():
    """Frames from elsewhere score no place above the map's background: "not localized", never a place,
    and the diagnostics say it is outside the map."""
    rng = np.random.default_rng(11)
    out = run(belief(), [None] * 60, rng)
    assert not any(e.fix for e in out)
    assert out[-1].out_of_map > 0.9 and "outside the map" in out[-1].reason


def test_leaving_the_map_drops_the_fix_and_coming_back_restores_it():
    """Places 40-59 deleted from the map (here: the drive shows places no map holds for 20 frames):
    no fix more than 2 places off in the gap, and fixed again within 5 frames after it."""
    rng = np.random.default_rng(12)
    truths = list(range(10, 40)) + [None] * 20 + list(range(60, 90))
    out = run(belief(), truths, rng)
    gap = out[30:50]
    assert not any(e.fix and abs(e.position[0] - 39) > 2 for e in gap)  # at most the last mapped place, then none
    assert gap[-1].out_of_map > 0.5
    first_back = next(k for k in range(50, len(out)) if within(out[k], truths[k]))
    assert first_back - 50 < 5
    assert all(within(e, t) for e, t in zip(out[first_back:], truths[first_back:]))


def test_a_map_edge_lets_the_mass_leave():
    """Driving past the last mapped place: the belief follows the route off its end, out of the map on the
    first frame past it (measured 0.96; without the route's exit the unmatched frame alone gives 0.13)."""
    rng = np.random.default_rng(13)
    out = run(belief(), list(range(80, 100)) + [None] * 8, rng)
    assert out[19].fix and out[20].out_of_map > 0.9 and not out[-1].fix


def test_odometry_moves_the_belief_along_the_mapped_heading():
    """A curved route with orientations; odometry (forward 1 unit per frame, robot frame) carries the
    belief along the mapped heading, through frames whose retrieval is weak, and through blind ones
    without a wrong fix; when the signal returns the place is right at once."""
    heading = np.linspace(0, np.pi, N)
    pos = np.c_[np.cumsum(np.cos(heading)), np.cumsum(np.sin(heading)), np.zeros(N)]
    ori = np.array([yaw_to_quat(h) for h in heading])
    rng = np.random.default_rng(8)
    b = belief(positions=pos, orientations=ori)
    forward = Motion(dt=1.0, translation=np.array([1.0, 0.0, 0.0]))
    for t in range(10, 25):
        b.step(frame_scores(t, rng), forward)
    # Weak frames (the truth barely above the noise) are carried by the odometry alone.
    for t in range(25, 31):
        ev = frame_scores(t, rng)
        ev.scores = BASE + (ev.scores - BASE) * 0.35
        est = b.step(ev, forward)
        assert est.fix and np.linalg.norm(est.position - pos[t]) <= 2 * np.sqrt(est.covariance[0, 0] + est.covariance[1, 1])
    blind = [b.step(frame_scores(t, rng, blank=True), forward) for t in range(31, 37)]
    assert not any(e.fix and np.linalg.norm(e.position - pos[t]) > 2 for e, t in zip(blind, range(31, 37)))
    back = [b.step(frame_scores(t, rng), forward) for t in range(37, 40)]
    assert not any(e.fix and np.linalg.norm(e.position - pos[t]) > 2 for e, t in zip(back, range(37, 40)))
    assert back[1].fix and back[2].fix  # the second frame after the blind stretch is fixed again


def test_reset_returns_to_the_prior_and_covariance_is_honest():
    rng = np.random.default_rng(9)
    b = belief()
    out = run(b, list(range(10, 40)), rng, wrong_every=3)
    errors = np.array([abs(e.position[0] - t) for e, t in zip(out, range(10, 40)) if e.fix])
    sigma = np.array([np.sqrt(e.covariance[0, 0]) for e in out if e.fix])
    assert np.mean(errors <= 2 * sigma) >= 0.9
    assert all(np.all(np.linalg.eigvalsh(e.covariance) > 0) for e in out)
    b.reset()
    np.testing.assert_allclose(b.belief, (1 - b.config.out_prior) / N)
    assert b.outside == pytest.approx(b.config.out_prior)
    assert not b.estimate().fix and b.resets == 2


def test_cost_per_frame_at_ten_thousand_places():
    """The node budget is 2 ms per frame at 10k places; the test allows 20 ms (a shared CI machine)."""
    import time

    n = 10000
    heading = np.cumsum(np.random.default_rng(10).normal(0, 0.05, n))
    pos = np.c_[np.cumsum(np.cos(heading)), np.cumsum(np.sin(heading)), np.zeros(n)]
    b = belief(positions=pos, orientations=np.array([yaw_to_quat(h) for h in heading]))
    times = []
    for k in range(40):
        i = 5000 + k
        ids = np.r_[[i, i + 1, i - 1, 300, 9000], b.active_places()]
        ev = Evidence(ids, np.r_[[0.62, 0.6, 0.6, 0.59, 0.55], np.full(len(ids) - 5, 0.56)], 0.55, SCALE)
        t0 = time.perf_counter()
        b.step(ev, Motion(dt=0.2, translation=np.array([1.0, 0, 0]) if k % 2 else None, moved=True))
        times.append(time.perf_counter() - t0)
    assert np.median(times[5:]) < 0.02


def test_invalid_config_named():
    with pytest.raises(ConfigError, match="fix_mass"):
        BeliefConfig(fix_mass=0.0)
    with pytest.raises(ConfigError, match="out_of_map"):
        BeliefConfig(observation="relative", out_of_map=True)
    with pytest.raises(ValueError, match="at least one place"):
        PlaceBelief(np.zeros((0, 3)), None, BeliefConfig(), OBS)
    with pytest.raises(ConfigError, match="observation model"):
        PlaceBelief(LINE, None, BeliefConfig())


def test_a_given_pose_seeds_the_belief_and_resolves_a_look_alike():
    """/initialpose (as AMCL takes it): seeded at place 75 with a 2-unit sigma, a frame that shows places 45
    and 75 alike (a revisit) is fixed at 75 at once; unseeded, the same frame is split and gives no fix."""
    rng = np.random.default_rng(14)
    alias = {**{j: j + 30 for j in range(40, 60)}, **{j + 30: j for j in range(40, 60)}}
    seeded = belief()
    assert seeded.seed(np.array([75.0, 0, 0]), np.eye(3) * 4.0) > 0
    c = seeded.config  # all the mass is given out: the map's share around the pose, leave_rate outside it
    assert abs(seeded.state.sum() + seeded.away.sum() - 1) < 1e-12 and abs(seeded.away.sum() - c.leave_rate) < 1e-12
    assert np.argmax(seeded.state.sum(axis=0)) == 75
    est = seeded.step(frame_scores(75, rng, alias=alias), Motion(moved=True))
    assert within(est, 75)
    fresh = belief().step(frame_scores(75, np.random.default_rng(14), alias=alias), Motion(moved=True))
    assert not fresh.fix
    with pytest.raises(ValueError, match="positive definite"):
        seeded.seed(np.zeros(3), np.full((3, 3), np.nan))
    # A pose off the route by 20 units at a 2-unit sigma (6.7 sigma with the 1-unit floor and the 2-unit fix
    # radius), or in another frame (UTM metres against a local map): refused by name, the belief as it was.
    # The code before seeded the place nearest to it, however far.
    before = seeded.state.copy(), seeded.away.copy()
    assert seeded.fix_radius == pytest.approx(2.0)
    for far in ([75.0, 20.0, 0.0], [700075.0, 5600000.0, 0.0]):
        with pytest.raises(ValueError, match=r"from the nearest mapped place .* off the map, or in another frame"):
            seeded.seed(np.array(far), np.eye(3) * 4.0)
        np.testing.assert_array_equal(seeded.state, before[0])
        np.testing.assert_array_equal(seeded.away, before[1])
    assert seeded.seed(np.array([75.0, 8.0, 0.0]), np.eye(3) * 4.0) > 0  # 2.7 sigma: beside the route, taken
    assert np.argmax(seeded.state.sum(axis=0)) == 75
    # Places 15 units apart: a click midway (7.5 from both) with RViz's 0.5-unit sigma is on the map (the gate
    # widens by the 30-unit fix radius); 200 units off it is not.
    sparse = belief(positions=LINE * 15.0)
    assert sparse.seed(np.array([15.0 * 40 + 7.5, 0.0, 0.0]), np.eye(3) * 0.25) > 0
    with pytest.raises(ValueError, match="off the map"):
        sparse.seed(np.array([600.0, 200.0, 0.0]), np.eye(3) * 0.25)


def test_route_runs_break_where_places_are_far_apart_in_map_units():
    """Places 2 m apart, then a 24 m jump, then another source: three runs, in metres as in frames."""
    from densernet_core.localization.belief import Route

    pos = np.array([[0, 0, 0], [2, 0, 0], [4, 0, 0], [6, 0, 0], [30, 0, 0], [32, 0, 0], [34, 0, 0], [36, 0, 0]], float)
    route = Route.from_positions(pos, 2.0)
    assert route.run.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    np.testing.assert_allclose(route.coord[:4], [0, 2, 4, 6])
    np.testing.assert_allclose(np.diff(route.coord[4:]), [2, 2, 2])
    split = Route.from_positions(pos, 2.0, sources=["a"] * 6 + ["b"] * 2)
    assert split.run.tolist() == [0, 0, 0, 0, 1, 1, 2, 2]
    assert Route.from_positions(pos[::4] * 10, 2.0) is None  # no two places close enough to make a run


@pytest.mark.parametrize("motion", ["route", "speed", "odometry"])
def test_a_step_costs_what_the_belief_covers_not_the_map(monkeypatch, motion):
    """200k places, the robot's belief on a few of them and "outside" spread evenly over the map (the prior's
    half): each step looks up neighbours for the places holding mass only, never for the whole map (which
    cost gigabytes and a second per frame at 10^6 places)."""
    n = 200_000
    cfg = BeliefConfig(route_velocity=motion == "route")
    b = belief(cfg, positions=np.c_[np.arange(n, dtype=float), np.zeros((n, 2))])
    looked_up = []
    lookup = PlaceBelief._neighbours
    monkeypatch.setattr(PlaceBelief, "_neighbours", lambda self, sources, radius: (
        looked_up.append(len(sources)), lookup(self, sources, radius))[1])
    rng = np.random.default_rng(14)
    for t in range(50_000, 50_012):
        ids = np.r_[t - 2:t + 3, rng.integers(n, size=5), b.active_places()]
        bump = 0.06 * np.exp(-0.5 * ((ids - t) / 1.2) ** 2)
        ev = Evidence(ids, BASE + bump + 0.004 * rng.standard_normal(len(ids)), BASE, SCALE)
        step = np.array([1.0, 0.0, 0.0]) if motion == "odometry" else None
        est = b.step(ev, Motion(dt=1.0, translation=step, moved=True))
    assert est.fix and abs(est.position[0] - t) <= 2
    assert looked_up and max(looked_up) < 1000, looked_up
    # The state itself is held for the places the belief and the frames touched, the rest as one even
    # background: a step costs no pass over the map's 200k places (at 10^6 they took 100+ ms a frame).
    assert b.listed < 2000, b.listed
    state, away = b.state, b.away
    assert abs(state.sum() + away.sum() - 1) < 1e-9
    np.testing.assert_allclose(b.belief, state.sum(axis=0), rtol=1e-12)
    assert b.outside == pytest.approx(away.sum(), rel=1e-9)


def test_unlisted_places_keep_the_background_and_can_be_the_mode():
    """A frame that scores places 0 and 1 far below the rest of the map: they fall under the even background,
    and the mode is the first place of that background (place 2), as over a dense array."""
    b = belief()
    ev = Evidence(np.array([0, 1]), np.array([BASE - 0.05, BASE - 0.05]), BASE, SCALE)
    est = b.update(ev)
    assert b.listed == 2 and est.place_id == 2
    dense = b.belief
    assert dense[0] < dense[2] and np.all(dense[2:] == dense[2])
    assert b.active_places().size == 0


def test_one_frame_is_bayes_rule_over_the_whole_map():
    """A fresh belief and one frame: every place's posterior is prior x likelihood ratio / evidence, the
    places the frame did not score at the unscored ratio, "outside" at 1; a fresh start agrees with itself."""
    b = belief()
    ids, scores = np.array([10, 11, 50]), np.array([BASE + 0.05, BASE + 0.03, BASE + 0.01])
    est = b.update(Evidence(ids, scores, BASE, SCALE, rest=0.05))
    lik = np.full(N, 0.05)
    lik[ids] = OBS.ratio(scores - BASE, b.config.likelihood_floor)
    inside, out = (1 - b.config.out_prior) / N * lik, b.config.out_prior
    total = inside.sum() + out
    np.testing.assert_allclose(b.belief, inside / total, rtol=1e-12)
    assert b.outside == pytest.approx(out / total, rel=1e-12)
    assert est.contradiction == pytest.approx(1.0, rel=1e-12) and est.place_id == 10


@pytest.mark.parametrize("config", [BeliefConfig(), BeliefConfig(route_velocity=False), EARLIER_FILTER],
                         ids=["route", "speed", "relative"])
def test_listing_a_place_changes_nothing(config):
    """The sparse state holds the places off its list as one background value per speed: a belief with every
    place listed from the start (the dense array) must give the same state, frame after frame."""
    n = 2000
    line = np.c_[np.arange(n, dtype=float), np.zeros((n, 2))]
    sparse, dense = belief(config, positions=line), belief(config, positions=line)
    dense._list_all()
    dense._compact = lambda: None  # the reference keeps every place listed
    rng = np.random.default_rng(3)
    truths = list(range(500, 530)) + [None] * 6 + list(range(540, 560))
    for t, truth in enumerate(truths):
        ids = rng.integers(n, size=6) if truth is None else np.r_[truth - 1:truth + 2, rng.integers(n, size=3)]
        ids = np.unique(np.r_[ids, sparse.active_places()])
        bump = 0.0 if truth is None else 0.06 * np.exp(-0.5 * ((ids - truth) / 1.2) ** 2)
        scores = BASE + bump + 0.004 * rng.standard_normal(len(ids))
        motion = Motion(dt=1.0, moved=t % 4 != 0, moved_far=t % 3 == 1)
        a, b = (x.step(Evidence(ids, scores, BASE, SCALE), motion) for x in (sparse, dense))
        assert (a.fix, a.place_id) == (b.fix, b.place_id)
        np.testing.assert_allclose(sparse.state, dense.state, rtol=1e-9, atol=1e-300)
        np.testing.assert_allclose(sparse.away, dense.away, rtol=1e-9, atol=1e-300)
    assert sparse.listed < n // 4 and dense.listed == n


def test_the_list_does_not_grow_with_the_frames_look_alikes():
    """Each frame scores a few random look-alikes; a place scored once drifts back to the background and
    leaves the list, so after 1,500 frames the list holds about what one frame touches, not thousands."""
    n = 200_000
    b = belief(positions=np.c_[np.arange(n, dtype=float), np.zeros((n, 2))])
    rng = np.random.default_rng(1)
    sizes = []
    for k in range(1500):
        t = 1000 + k // 2
        ids = np.unique(np.r_[t - 2:t + 3, rng.integers(n, size=5), b.active_places()])
        bump = 0.06 * np.exp(-0.5 * ((ids - t) / 1.2) ** 2)
        est = b.step(Evidence(ids, BASE + bump + 0.004 * rng.standard_normal(len(ids)), BASE, SCALE),
                     Motion(dt=0.5, moved=True))
        sizes.append(b.listed)
    assert est.fix and abs(est.position[0] - t) <= 2
    assert max(sizes[-500:]) < 200, max(sizes[-500:])  # without unlisting: 8,000 and growing by 5 a frame


def views(n: int, rng: np.random.Generator, alike: float = 0.0) -> list[np.ndarray]:
    """Unit descriptors of `n` frames: a camera that moves (independent views) or, with `alike` near 1,
    one that sees nearly the same view each frame."""
    base = rng.standard_normal(64)
    out = [alike * base / np.linalg.norm(base) + (1 - alike) * v / np.linalg.norm(v)
           for v in rng.standard_normal((n, 64))]
    return [v / np.linalg.norm(v) for v in out]


def hub_evidence(rng: np.random.Generator, hub: int, lift: float) -> Evidence:
    """A frame from outside the map in which `hub` scores `lift` above the background."""
    ev = frame_scores(None, rng, k=K)
    rest = ev.ids != hub
    ev.ids, ev.scores = np.r_[hub, ev.ids[rest]][:K], np.r_[BASE + lift, ev.scores[rest]][:K]
    return ev


def hub_frames(b: PlaceBelief, rng: np.random.Generator, frames: list[np.ndarray], moved: bool, hub: int = 70):
    """Frames from outside the map in which one place scores high every time (a look-alike of them all)."""
    out = []
    for view in frames:
        est = b.step(hub_evidence(rng, hub, 0.04), Motion(moved=moved))
        b.dwell(est, Motion(moved=moved), view, OBS.neighbour_similarity)
        out.append(est)
    return out


def test_a_mode_that_stays_on_one_place_while_the_view_changes_is_not_published():
    """A look-alike scored high in every frame holds the belief's mode while the camera moves: after
    `dwell_frames` changed frames on it, and once the view differs from the first of them as neighbouring
    places do, its fix is withheld. A camera that stopped (the view the same), or a belief that follows the
    camera from place to place, keeps its fixes."""
    rng = np.random.default_rng(12)
    moving = hub_frames(belief(), rng, views(30, rng), moved=True)
    assert [e.place_id for e in moving[5:]] == [70] * 25  # the look-alike holds the mode...
    assert not any(e.fix for e in moving[4:]) and "look-alike" in moving[-1].reason  # ...and is not published
    ungated = hub_frames(belief(BeliefConfig(dwell_frames=0)), rng, views(30, rng), moved=True)
    assert sum(e.fix for e in ungated) >= 25  # what it would publish: the check is what withholds it
    still = hub_frames(belief(), rng, views(30, rng, alike=0.95), moved=True)
    assert sum(e.fix for e in still) >= 25  # the view did not change: staying there is no contradiction
    stopped = hub_frames(belief(), rng, views(30, rng), moved=False)
    assert sum(e.fix for e in stopped) >= 25  # frames not `moved`: the camera may stand
    b, truths = belief(), list(range(10, 40))
    tracked = []
    for t, view in zip(truths, views(len(truths), rng)):
        est = b.step(frame_scores(t, rng, k=K), Motion(moved=True))
        b.dwell(est, Motion(moved=True), view, OBS.neighbour_similarity)
        tracked.append(est)
    assert np.mean([within(e, t) for e, t in zip(tracked[3:], truths[3:])]) >= 0.9


def test_with_odometry_a_mode_held_is_judged_by_the_distance_driven_not_by_the_view():
    """With odometry the view's change says nothing about where the robot went: a robot that stops and turns
    on the spot (nav2's spin) sees new views at one place, and keeps its fix; a look-alike that holds the mode
    while odometry carries the robot further than a published fix allows (two fix radii plus odometry's own
    error) is withheld, however little the view changed."""
    rng = np.random.default_rng(13)
    yaw = Rotation.from_euler("z", 30, degrees=True).as_quat()
    b, ahead = belief(), Motion(dt=1.0, translation=np.array([1.0, 0.0, 0.0]))
    for t, view in zip(range(10, 30), views(20, rng)):
        est = b.step(frame_scores(t, rng, k=K), ahead)
        b.dwell(est, ahead, view, OBS.neighbour_similarity)
    assert within(est, 29)
    spin, turning = Motion(dt=1.0, translation=np.zeros(3), rotation=yaw, moved=True), []
    for view in views(12, rng):  # twelve 30-degree turns at place 29: every view new
        est = b.step(frame_scores(29, rng, k=K), spin)
        b.dwell(est, spin, view, OBS.neighbour_similarity)
        turning.append(est)
    assert all(within(e, 29) for e in turning), [e.reason for e in turning]
    # the same views without odometry: the view's change is all there is, and the mode is withheld
    b = belief()
    for t, view in zip(range(10, 30), views(20, rng)):
        b.dwell(b.step(frame_scores(t, rng, k=K), Motion(moved=True)), Motion(moved=True), view, OBS.neighbour_similarity)
    blind = []
    for view in views(12, rng):
        est = b.step(frame_scores(29, rng, k=K), Motion(moved=True))
        b.dwell(est, Motion(moved=True), view, OBS.neighbour_similarity)
        blind.append(est)
    # (the count began when the mode settled on 29, while the robot still drove: 3 turns are published)
    assert [e.fix for e in blind] == [True] * 3 + [False] * 9 and "look-alike" in blind[-1].reason
    # a look-alike that holds the mode while odometry drives on, with a view that hardly changes
    b = belief()
    for t, view in zip(range(10, 30), views(20, rng)):
        b.dwell(b.step(frame_scores(t, rng, k=K), ahead), ahead, view, OBS.neighbour_similarity)
    held = []
    for view in views(30, rng, alike=0.95):
        est = b.step(hub_evidence(rng, 29, 0.08), ahead)
        b.dwell(est, ahead, view, OBS.neighbour_similarity)
        held.append(est)
    c = b.config  # the dwell began when place 29 became the mode, one unit before `held` starts
    allowed = [d > 2 * b.fix_radius + c.odom_noise_floor + c.odom_noise * d for d in range(1, len(held) + 1)]
    assert [e.place_id for e in held] == [29] * len(held)  # the look-alike holds the mode all along...
    assert [e.fix for e in held] == [not far for far in allowed] and 0 < sum(allowed) < len(held)  # ...published until too far
    assert "odometry carried the robot" in held[-1].reason
    # out four units and back again (a turn of 180 degrees between): the displacement is what counts, not the path
    b = belief()
    for t, view in zip(range(10, 30), views(20, rng)):
        b.dwell(b.step(frame_scores(t, rng, k=K), ahead), ahead, view, OBS.neighbour_similarity)
    about = Motion(dt=1.0, translation=np.zeros(3), rotation=Rotation.from_euler("z", 180, degrees=True).as_quat())
    there_and_back = []
    for motion, view in zip([ahead] * 4 + [about] + [ahead] * 4, views(9, rng)):
        est = b.step(hub_evidence(rng, 29, 0.08), motion)
        b.dwell(est, motion, view, OBS.neighbour_similarity)
        there_and_back.append(est)
    assert [e.place_id for e in there_and_back] == [29] * 9 and all(e.fix for e in there_and_back)


def test_time_going_back_restarts_the_belief_offline_as_live(caplog):
    """A recording played twice (or two runs in one bag): stamps going back more than TIME_JUMP_BACK_S
    restart the belief (Localizer.localize_descriptor resets on `restart`; the node's replay test shows what
    keeping it cost); a smaller step back is no time passed; unstamped frames stay unknown."""
    from densernet_core.localization.belief import TIME_JUMP_BACK_S, motion_between
    from densernet_core.localization.sequence import Frame, MotionSource

    assert motion_between(10.0, 10.5).dt == pytest.approx(0.5) and not motion_between(10.0, 10.5).restart
    assert motion_between(10.0, 10.0 - TIME_JUMP_BACK_S / 2).dt == 0.0
    back = motion_between(10.0, 10.0 - 2 * TIME_JUMP_BACK_S)
    assert back.restart and back.dt is None
    assert motion_between(None, 3.0).dt is None and not motion_between(3.0, None).restart

    source = MotionSource()
    stamps = [100.0, 101.0, 102.0, 50.0, 50.5]
    with caplog.at_level("WARNING", logger="densernet"):
        motions = [source(Frame(f"f{k}", None, t)) for k, t in enumerate(stamps)]
    assert [m.restart for m in motions] == [False, False, False, True, False]
    assert [m.dt for m in motions] == [None, 1.0, 1.0, None, 0.5]
    assert source.used == {"odometry": 0, "stamps": 3, "frame count": 0, "restarts (time went back)": 1}
    assert "f3 is stamped 52.000 s before f2: time went back" in caplog.text
