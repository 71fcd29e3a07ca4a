"""Where the robot is over time: a discrete Bayes filter over the map's places, and "not in the map".

A frame's retrieval alone is often wrong at night (a place that merely looks alike wins), yet a
robot that was at place 120 a second ago is not at place 40 now; and a robot driving where nobody
mapped must not be told it is at the best-looking mapped place. The belief holds one probability per
mapped place and direction/speed along the mapped route, plus one for "outside the map or
unrecognisable", and is carried from frame to frame:

- predict: with odometry, each place sends its mass to where that displacement leads from its mapped
  pose; without, along the mapped route at the speed the belief carries (`route_velocity`: a
  constant-velocity model whose speed may change a little each step, up to the speed bound), or
  anywhere within the speed bound where the map has no route order. Mass leaves the map at
  `leave_rate` and at the route's ends; outside, it is kept by the mapped place it left from and
  spreads at the speed bound, and comes back at `enter_rate` where it has spread to: a robot that
  drove off the map at its end re-enters near there, not at a look-alike across town (after long
  enough outside, anywhere).
- update: each scored place is weighed by its absolute likelihood ratio against "no mapped place"
  (observation.py, fitted from the map), the outside state by 1, and a frame that differs from the
  previous one (the camera moved) makes standing still unlikely.
- contradiction: a frame the belief predicts `contradiction_level` times worse than a fresh start would
  (it shows somewhere else, strongly) publishes no fix; after `relocalize_after` such frames in a row the
  belief is rebuilt: the robot was carried, or the belief locked on a look-alike.

The pose is the belief's mean over the places within `fix_radius` of its mode; the published
confidence is that window's share of all the mass, "outside" included, and a fix needs `fix_mass` of
it, unless the mode has stayed on one place while the robot moved on (`dwell`: by odometry, else by the
view). `observation: relative`, `out_of_map: false`, `route_velocity: false`, `fix_mass: 0.5` and
`dwell_frames: 0` give the earlier filter
(likelihoods relative to the frame's best place, no outside state, no route velocity; `EARLIER_FILTER`),
kept as the baseline the benchmarks and tests compare against. Documented in docs/POSE_MODEL.md; figures in
docs/BENCHMARKS.md.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation
from scipy.special import ndtr

from ..config import ConfigError
from ..geometry import fuse_heading
from .observation import ObservationModel, median_spacing

# Places whose belief is below this multiple of the uniform share keep their (negligible) mass where
# it is during prediction, so a step costs in proportion to where the robot may be, not the map size.
ACTIVE_SHARE = 10.0
# Mass outside the map spreads from where it left down to a much smaller share: it is what a return is made of.
AWAY_ACTIVE_SHARE = 1e-2
# Transition weights below this are cut (the kernel's tail, beyond ~3.7 standard deviations).
KERNEL_CUTOFF = 1e-3
SPEED_TAIL = 0.25  # the bounded-speed kernel's soft edge, as a fraction of its reach
FIX_RADIUS_SPACINGS = 2.0  # default window around the mode, in place spacings
REACH_STEP = 1.05  # bounded-speed reach is rounded up to these ratios (kernel reuse)
VELOCITY_STEPS = 3  # route speeds: 0, +-1/3, +-2/3, +-1 of the speed bound
SLOW_SPACINGS = 0.5  # a step shorter than this (place spacings) keeps most of the mass in place
ROUTE_LINK_SPACINGS = 3.0  # consecutive places farther apart than this many spacings start a new route
TIME_JUMP_BACK_S = 1.0  # a frame stamped this much before the previous one starts another run, not a camera's jitter
ROUTE_WINDOW = 8  # places either side of a route target considered when spreading mass
UNLIST_RELATIVE = 1e-12  # a listed place this close to the background in every row rejoins it
OBSERVATIONS = ("calibrated", "relative")
OUTSIDE_REASON = "not localized: outside the map or unrecognisable"


@dataclass(frozen=True)
class BeliefConfig:
    max_speed: float = 3.0           # map units per second the robot may move (no odometry; stamps known)
    max_step: float = 3.0            # map units per frame the robot may move (no odometry; no stamps)
    odom_noise: float = 0.2          # odometry distance error, fraction of the distance travelled
    odom_noise_floor: float = 1.0    # map units: smallest odometry position error per step
    uniform_mix: float = 1e-3        # share returned to every place each step (calibrated: of the mass outside)
    likelihood_floor: float = 0.02   # smallest likelihood ratio of a scored place (one frame cannot zero it)
    likelihood_temperature: float = 0.35  # relative model: l = exp((s - s_best) / (temperature * spread))
    contradiction_level: float = 0.05  # the frame agrees with the belief less than this: a contradiction
    relocalize_after: int = 3        # contradicting frames in a row before a global relocalization
    fix_radius: float = 0.0          # map units around the mode that count as "the place"; 0: 2 place spacings
    fix_mass: float = 0.7            # probability within fix_radius needed to publish a fix
    position_floor: float = 1.0      # smallest position standard deviation (map units)
    yaw_floor_deg: float = 10.0      # smallest yaw standard deviation
    planar: bool = True              # yaw from the belief's weighted circular mean (else the mode's orientation)
    observation: str = "calibrated"  # calibrated: absolute likelihood ratios (observation.py); relative: the old
    out_of_map: bool = True          # carry a "not in the map" state (calibrated only)
    out_prior: float = 0.5           # probability of "not in the map" before any frame
    leave_rate: float = 0.02         # per second (per frame when unstamped): mass leaving the map
    enter_rate: float = 0.05         # per second (per frame when unstamped): mass entering it again
    route_velocity: bool = True      # without odometry, move along the mapped route at a carried speed
    velocity_change: float = 0.2     # per second (per frame when unstamped): the speed moves one step
    route_noise: float = 0.2         # position noise along the route, fraction of the displacement
    stop_penalty: float = 0.05       # likelihood of standing still when the frame differs from the last
    moving_similarity: float = 0.9   # consecutive frames less similar than this: the camera moved
    dwell_frames: int = 5            # no fix while the mode stays on one place this many frames in a row and the
                                     # robot went further (odometry: beyond two fix radii; without: the view
                                     # changed each frame, and as much as a place spacing does) (0: no limit)
    least_evidence: float = 0.05     # the smallest share of a frame's evidence a repeated view still adds
    seed_gate_sigma: float = 5.0     # an initial pose this many standard deviations (its covariance, the position
                                     # floor and fix_radius: a pose between sparse places is on the map) from every
                                     # place is refused: off the map, or given in another frame

    def __post_init__(self) -> None:
        checks = {"max_speed": self.max_speed > 0, "max_step": self.max_step > 0, "odom_noise": self.odom_noise >= 0,
                  "likelihood_temperature": self.likelihood_temperature > 0,
                  "odom_noise_floor": self.odom_noise_floor > 0, "uniform_mix": 0 < self.uniform_mix < 1,
                  "likelihood_floor": 0 < self.likelihood_floor <= 1,
                  "contradiction_level": 0 <= self.contradiction_level < 1, "relocalize_after": self.relocalize_after >= 1,
                  "fix_radius": self.fix_radius >= 0, "fix_mass": 0 < self.fix_mass <= 1,
                  "position_floor": self.position_floor > 0, "yaw_floor_deg": self.yaw_floor_deg > 0,
                  "observation": self.observation in OBSERVATIONS,
                  "out_of_map": not self.out_of_map or self.observation == "calibrated",
                  "out_prior": 0 < self.out_prior < 1, "leave_rate": 0 <= self.leave_rate < 1,
                  "enter_rate": 0 < self.enter_rate <= 1, "velocity_change": 0 <= self.velocity_change <= 1,
                  "route_noise": self.route_noise >= 0, "stop_penalty": 0 < self.stop_penalty <= 1,
                  "moving_similarity": -1 <= self.moving_similarity <= 1, "dwell_frames": self.dwell_frames >= 0,
                  "least_evidence": 0 < self.least_evidence <= 1, "seed_gate_sigma": self.seed_gate_sigma > 0}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"belief filter: invalid {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)} "
                              f"(observation one of {OBSERVATIONS}; out_of_map needs the calibrated observation)")


# The filter of 2026-11-27, the baseline beside every figure of this one (module docstring).
EARLIER_FILTER = BeliefConfig(observation="relative", out_of_map=False, route_velocity=False, fix_mass=0.5,
                              dwell_frames=0)


@dataclass
class Motion:
    """What happened since the previous frame: elapsed time and/or odometry (previous body frame)."""

    dt: float | None = None                       # seconds; None: unknown (an unstamped sequence)
    translation: np.ndarray | None = None         # odometry displacement in the previous body frame
    rotation: np.ndarray | None = None            # odometry rotation (quaternion xyzw), for completeness
    moved: bool | None = None                     # the view changed since the last frame (None: unknown)
    moved_far: bool | None = None                 # ...as much as one place spacing changes it (or more)
    restart: bool = False                         # time went back: another run, the belief starts again


def motion_between(previous_s: float | None, stamp_s: float | None) -> Motion:
    """The time between two frames' stamps, for the speed bound.

    Time going back by more than TIME_JUMP_BACK_S is another run (a bag played again or looped, a
    simulator reset): the robot may be anywhere, and no motion bound spans negative time, so the
    belief starts again (`restart`). Kept, with no time passed it could not move: the belief of the
    first run's end answered the replay's first frames (five confident fixes 20-30 frames wrong in
    test_node.py's replay, none after). A smaller step back counts as no time passed."""
    if previous_s is None or stamp_s is None:
        return Motion()
    if previous_s - stamp_s > TIME_JUMP_BACK_S:
        return Motion(restart=True)
    return Motion(dt=max(stamp_s - previous_s, 0.0))


@dataclass
class Evidence:
    """What one frame says: similarities to the scored places and to the map at large."""

    ids: np.ndarray       # scored places (the top-k, and wherever the belief holds mass)
    scores: np.ndarray    # their similarities
    median: float         # the frame's median similarity to the map (placemap.background_statistics)
    scale: float          # its robust spread (the relative model's unit)
    weight: float = 1.0   # how much of a full frame's evidence this one adds (a repeated view: less)
    rest: float | None = None  # likelihood ratio of a place not scored (None: the model's miss rate)


@dataclass
class BeliefEstimate:
    fix: bool
    reason: str
    place_id: int                     # the mode
    position: np.ndarray
    orientation: np.ndarray           # x, y, z, w
    covariance: np.ndarray            # 6 x 6: x y z roll pitch yaw
    mass: float                       # probability within fix_radius of the mode (the published confidence)
    effective_places: float           # 1 / sum(b^2) over the map's places: 1 = certain, N = uniform
    entropy: float                    # nats
    relocalized: bool                 # this frame rebuilt the belief
    contradiction: float              # how well the belief predicted this frame (1: as a fresh start would)
    out_of_map: float = 0.0           # probability of "outside the map or unrecognisable"
    group: list[int] = field(default_factory=list)  # places in the window
    position_source: str = "belief"   # "frame": interpolated by this frame inside the window (localizer.py)

    @property
    def confidence(self) -> float:
        """The probability that the robot is at the published place."""
        return self.mass


@dataclass(frozen=True)
class Route:
    """The order in which the places were mapped: runs of consecutive places (a drive), each laid out
    along its own arclength; runs are placed end to end, far apart, on one coordinate."""

    coord: np.ndarray   # per place: position along the route (map units), increasing with the place id
    run: np.ndarray     # per place: which run it belongs to
    start: np.ndarray   # per run: coord of its first place
    end: np.ndarray     # per run: coord of its last place

    @classmethod
    def from_positions(cls, positions: np.ndarray, spacing: float, sources: list[str] | None = None) -> "Route | None":
        """Places in id order, linked while consecutive ones are close (and of the same source); None when
        no run holds more than one place (no route order to move along)."""
        steps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
        linked = steps <= ROUTE_LINK_SPACINGS * spacing
        if sources is not None:
            linked &= np.array([a == b for a, b in zip(sources[:-1], sources[1:])], dtype=bool)
        if not linked.any():
            return None
        gap = 10.0 * (float(steps.sum()) + spacing) + 1e6 * spacing  # runs never reach one another
        coord = np.concatenate([[0.0], np.cumsum(np.where(linked, steps, gap))])
        run = np.concatenate([[0], np.cumsum(~linked)])
        first = np.flatnonzero(np.r_[True, ~linked])
        last = np.r_[first[1:] - 1, len(positions) - 1]
        return cls(coord, run, coord[first], coord[last])


class PlaceBelief:
    def __init__(self, positions: np.ndarray, orientations: np.ndarray | None, config: BeliefConfig = BeliefConfig(),
                 observation: ObservationModel | None = None, sources: list[str] | None = None) -> None:
        """`observation`: the map's model (required for the calibrated observation); `sources`: each place's
        traverse, so the route does not run from the end of one into the start of another."""
        self.positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        self.n = len(self.positions)
        if self.n == 0:
            raise ValueError("a belief needs at least one place")
        if config.observation == "calibrated" and observation is None:
            raise ConfigError("belief filter: the calibrated observation needs the map's observation model "
                              "(observation.json; `densernet-map calibrate MAP` fits one)")
        self.orientations = None if orientations is None else np.asarray(orientations, float).reshape(self.n, 4)
        self.config = config
        self.observation = observation
        self._tree = cKDTree(self.positions)
        self.spacing = median_spacing(self.positions) if self.n >= 2 else config.position_floor
        self.fix_radius = config.fix_radius or FIX_RADIUS_SPACINGS * self.spacing
        self._rot = None if self.orientations is None else Rotation.from_quat(self.orientations)
        self.route = Route.from_positions(self.positions, self.spacing, sources) if config.route_velocity else None
        self.velocities = (np.linspace(-1.0, 1.0, 2 * VELOCITY_STEPS + 1) if self.route is not None
                           else np.zeros(1))
        self.relocalizations = 0
        self.resets = 0
        self._contradictions = 0
        self.reset()

    def _neighbours(self, sources: np.ndarray, radius: float) -> "Pairs":
        """Every (i, j) with i in `sources` and |x_j - x_i| <= radius, i == j included. Found for the places
        that hold mass only, each step: a step costs in proportion to where the robot may be, and no table
        over all the map's pairs is held (at 10^6 places it took gigabytes, and a step wider than it had to
        rebuild it: a second per frame)."""
        found = self._tree.query_ball_point(self.positions[sources], radius) if len(sources) else []
        counts = np.fromiter(map(len, found), dtype=np.int64, count=len(sources))
        rows = np.repeat(sources, counts)
        cols = np.fromiter(itertools.chain.from_iterable(found), dtype=np.int64, count=int(counts.sum()))
        offsets = self.positions[cols] - self.positions[rows]
        return Pairs(radius, rows, cols, offsets, np.linalg.norm(offsets, axis=1),
                     np.repeat(np.arange(len(sources)), counts))

    # ---- state ----------------------------------------------------------------------------------
    # The belief over (speed, place) and "outside" (per place it is nearest to) is held sparsely: rows
    # 0..speeds-1 of `_vals` are the speeds, the last row is "outside"; every place not in `_ids` (sorted)
    # holds the background `_bg[row]`, and the listed places `_vals[row, k]`. A place is listed when mass
    # moves to it or a frame scores it. Every operation is the dense one's, applied to the listed places and
    # to the one background value per row, so a step costs what the belief covers and the frame scored, not
    # the map's size (at 10^6 places the dense passes over speeds x places took 100+ ms a frame).
    @property
    def _layers(self) -> int:
        return len(self.velocities)

    @property
    def state(self) -> np.ndarray:
        """Probability per speed and mapped place (dense: for inspection, it costs speeds x places)."""
        out = np.repeat(self._bg[:-1, None], self.n, axis=1)
        out[:, self._ids] = self._vals[:-1]
        return out

    @property
    def away(self) -> np.ndarray:
        """Probability of "outside", per mapped place it is nearest to (dense, for inspection)."""
        out = np.full(self.n, self._bg[-1])
        out[self._ids] = self._vals[-1]
        return out

    @property
    def belief(self) -> np.ndarray:
        """Probability of each mapped place (summed over speeds; with "outside", these sum to 1 - outside)."""
        out = np.full(self.n, self._bg[:-1].sum())
        out[self._ids] = self._vals[:-1].sum(axis=0)
        return out

    @property
    def outside(self) -> float:
        """Probability of "outside the map or unrecognisable"."""
        return float(self._bg[-1] * self._unlisted() + self._vals[-1].sum())

    @property
    def listed(self) -> int:
        """Places held one by one (the rest hold the even background): what a step costs."""
        return len(self._ids)

    def _unlisted(self) -> int:
        return self.n - len(self._ids)

    def _total(self) -> float:
        return float(self._bg.sum() * self._unlisted() + self._vals.sum())

    def _list(self, ids: np.ndarray) -> np.ndarray:
        """Lists these places (with the background's values where new); their positions in `_ids`."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        new = np.setdiff1d(ids, self._ids)
        if len(new):
            merged = np.union1d(self._ids, new)
            vals = np.repeat(self._bg[:, None], len(merged), axis=1)
            vals[:, np.searchsorted(merged, self._ids)] = self._vals
            self._ids, self._vals = merged, vals
        return np.searchsorted(self._ids, ids)

    def _list_all(self) -> None:
        """The background itself takes part in a step (an even spread above the active level, as on a small
        map): every place is listed, and the step is the dense one."""
        if self._unlisted():
            self._list(np.arange(self.n))

    def _set_prior(self) -> None:
        """Everywhere alike: (in the map: per speed and place; outside: per place it is nearest to)."""
        out = self._prior_outside()
        self._bg = np.r_[np.full(self._layers, (1.0 - out) / (self.n * self._layers)), out / self.n]
        self._vals = np.repeat(self._bg[:, None], len(self._ids), axis=1)

    def _prior_outside(self) -> float:
        return self.config.out_prior if self.config.out_of_map else 0.0

    def reset(self) -> None:
        """Everywhere equally likely (start-up, or after the robot was carried: the reset service)."""
        self._ids = np.zeros(0, np.int64)
        self._set_prior()
        self._contradictions = 0
        self._fresh = True
        self._dwell: _Dwell | None = None  # how long the mode has been one place, and how far the robot went since
        self.resets += 1

    def seed(self, position: np.ndarray, covariance: np.ndarray, orientation: np.ndarray | None = None,
             yaw_variance: float | None = None) -> int:
        """Start from a pose someone gave (RViz's "2D Pose Estimate" on /initialpose, as AMCL takes it): the
        places weighed by a Gaussian of `covariance` (3 x 3, map units^2; never tighter than the position
        floor) around `position`, and by the heading when the map and the pose have one. Returns how many
        places carry the seed."""
        c = self.config
        cov = np.asarray(covariance, float).reshape(3, 3)
        cov = cov + np.eye(3) * c.position_floor ** 2
        if not np.all(np.isfinite(cov)) or np.any(np.linalg.eigvalsh(cov) <= 0):
            raise ValueError(f"initial pose covariance is not positive definite: {cov.tolist()}")
        d = self.positions - np.asarray(position, float).reshape(3)
        if np.allclose(self.positions[:, 2], self.positions[0, 2]):  # a planar map: height says nothing
            cov[2, :] = cov[:, 2] = 0.0
            cov[2, 2] = 1.0
            d[:, 2] = 0.0
        m = np.einsum("ij,jk,ik->i", d, np.linalg.inv(cov), d)
        # Weighed relative to the nearest place, a pose however far would land there. The gate widens by
        # fix_radius (2 place spacings): a click between two places of a sparse map is still on it.
        gates = np.einsum("ij,jk,ik->i", d, np.linalg.inv(cov + np.eye(3) * self.fix_radius ** 2), d)
        closest = int(np.argmin(gates))
        gate = float(gates[closest])
        if gate > c.seed_gate_sigma ** 2:
            raise ValueError(f"initial pose ({', '.join(f'{v:.2f}' for v in np.asarray(position, float).reshape(3)[:2])}) "
                             f"is {np.linalg.norm(d[closest]):.1f} map units from the nearest mapped place "
                             f"({np.sqrt(gate):.1f} standard deviations of its covariance widened by the fix radius "
                             f"{self.fix_radius:.3g}, beyond {c.seed_gate_sigma:g}): off the map, or in another frame "
                             "than the map's; not seeded (give a larger covariance if the robot may be that far "
                             "from the route)")
        weight = np.exp(-0.5 * (m - m.min()))
        if orientation is not None and self._rot is not None and yaw_variance is not None and yaw_variance > 0:
            from ..geometry import quat_to_yaw

            dyaw = np.angle(np.exp(1j * (quat_to_yaw(self.orientations) - float(quat_to_yaw(np.asarray(orientation))))))
            weight *= np.exp(-0.5 * dyaw ** 2 / (yaw_variance + math.radians(c.yaw_floor_deg) ** 2))
        weight = np.where(weight >= KERNEL_CUTOFF * weight.max(), weight, 0.0)
        outside = c.leave_rate if c.out_of_map else 0.0
        weight = weight / weight.sum()
        self._ids = np.flatnonzero(weight > 0)
        held = weight[self._ids]
        self._vals = np.vstack([np.tile(held * (1.0 - outside) / self._layers, (self._layers, 1)), held * outside])
        self._bg = np.zeros(self._layers + 1)
        self._contradictions = 0
        self._fresh = False
        return len(self._ids)

    def active_places(self) -> np.ndarray:
        """Places holding more than their uniform share many times over: where the next frame must be scored."""
        level = ACTIVE_SHARE / self.n
        listed = self._ids[self._vals[:-1].sum(axis=0) > level]
        if self._unlisted() and self._bg[:-1].sum() > level:
            return np.union1d(listed, np.setdiff1d(np.arange(self.n), self._ids))
        return listed

    # ---- predict ----------------------------------------------------------------------------------
    def predict(self, motion: Motion) -> None:
        if self._fresh:  # nothing is known yet: motion cannot sharpen a uniform belief
            return
        c = self.config
        steps = 1.0 if motion.dt is None else max(motion.dt, 0.0)  # rates are per second, or per unstamped frame
        level = ACTIVE_SHARE / (self._layers * self.n)  # per speed: a place above it moves its mass
        if (self._bg[:-1] > level).any():
            self._list_all()
        speeds = range(self._layers)
        exited = Moves.none()
        if motion.translation is not None:
            translation = np.asarray(motion.translation, float)
            self._move({r: self._odometry_step(self._vals[r], level, translation) for r in speeds})
        elif self.route is not None:
            reach = c.max_step if motion.dt is None else c.max_speed * steps
            self._slow = np.abs(self.velocities) * reach < SLOW_SPACINGS * self.spacing
            self._change_velocity(_per_step(c.velocity_change, steps))
            moves = {r: self._route_step(self._vals[r], level, u * reach) for r, u in zip(speeds, self.velocities)}
            self._move({r: m for r, (m, _) in moves.items()})
            exited = Moves.joined([e for _, e in moves.values()])
        else:
            reach = _quantised(c.max_step if motion.dt is None else c.max_speed * steps)
            self._move({r: self._speed_step(self._vals[r], level, reach) for r in speeds})
        if c.out_of_map:
            # outside, the robot may have gone anywhere within the speed bound of where it left
            self._predict_outside(steps, _quantised(c.max_step if motion.dt is None else c.max_speed * steps), exited)
        else:  # the relative model: a little mass back to every place, so no place is ruled out for good
            total = float(self._bg[:-1].sum() * self._unlisted() + self._vals[:-1].sum())
            size = self._layers * self.n
            self._vals[:-1] = (1 - c.uniform_mix) * (self._vals[:-1] / total) + c.uniform_mix / size
            self._bg[:-1] = (1 - c.uniform_mix) * (self._bg[:-1] / total) + c.uniform_mix / size

    _slow: np.ndarray | None = None  # per speed: the last step moved it less than SLOW_SPACINGS of a spacing

    def _predict_outside(self, steps: float, reach: float, exited: "Moves") -> None:
        """Mass leaves the map (at leave_rate, and where a route step carried it past a route's end) and comes
        back (at enter_rate) where it has spread to, or, after long enough, anywhere."""
        c = self.config
        leave, enter = _per_step(c.leave_rate, steps), _per_step(c.enter_rate, steps)
        out = self._layers  # the "outside" row
        if len(exited.cols):  # its sources are listed: they held mass
            self._vals[out] += np.bincount(self._list(exited.cols), weights=exited.amounts, minlength=len(self._ids))
        # what is spread evenly over the map stays so: only the mass standing above that floor moves
        # (an even spread is active everywhere, and carrying it cost a pass over every place's neighbours)
        floor = min(([float(self._vals[out].min())] if len(self._ids) else [])
                    + ([float(self._bg[out])] if self._unlisted() else []))
        level = AWAY_ACTIVE_SHARE / self.n
        if self._unlisted() and self._bg[out] - floor > level:
            self._list_all()
        above = self._vals[out] - floor
        moves = self._speed_step(above, level, reach)
        self._vals[out] = above
        self._bg[out] -= floor
        self._move({out: moves})
        self._vals[out] += floor
        self._bg[out] += floor
        total_away = float(self._bg[out] * self._unlisted() + self._vals[out].sum())
        self._vals[out] = (1 - c.uniform_mix) * self._vals[out] + c.uniform_mix * total_away / self.n  # or back anywhere
        self._bg[out] = (1 - c.uniform_mix) * self._bg[out] + c.uniform_mix * total_away / self.n
        for vals in (self._vals, self._bg):
            away, inside = vals[out].copy(), vals[:out].sum(axis=0)
            vals[:out] = (1 - leave) * vals[:out] + enter * away / self._layers
            vals[out] = (1 - enter) * away + leave * inside
        self._normalise(self._total())

    def _normalise(self, total: float) -> None:
        self._vals = self._vals / total
        self._bg = self._bg / total

    def _compact(self) -> None:
        """Unlists the places that hold the background's values again (to UNLIST_RELATIVE in every row): a
        place a frame once scored drifts back to the background as frames pass, and without this the list
        grew by the frame's random look-alikes, a few places a frame, and each step with it."""
        if not len(self._ids):
            return
        back = np.all(np.abs(self._vals - self._bg[:, None]) <= UNLIST_RELATIVE * self._bg[:, None], axis=0)
        if back.any():
            self._ids, self._vals = self._ids[~back], self._vals[:, ~back]

    def _move(self, moves: dict[int, "Moves"]) -> None:
        """Each row's sources give up their mass, which lands where its Moves says (listed first)."""
        targets = [m.cols for m in moves.values() if len(m.cols)]
        if targets:
            self._list(np.concatenate(targets))
        for row, m in moves.items():
            if not len(m.sources):
                continue
            values = self._vals[row]
            values[np.searchsorted(self._ids, m.sources)] = 0.0
            values += np.bincount(np.searchsorted(self._ids, m.cols), weights=m.amounts, minlength=len(self._ids))

    def _change_velocity(self, p: float) -> None:
        """Each speed moves one step up or down with probability p (the ends reflect)."""
        if p <= 0 or self._layers < 2:
            return
        for vals in (self._vals, self._bg[:, None]):
            s = vals[:-1]
            up, down = np.vstack([s[1:], s[-1:]]), np.vstack([s[:1], s[:-1]])
            vals[:-1] = (1 - p) * s + p / 2 * (up + down)

    def _route_step(self, values: np.ndarray, level: float, displacement: float) -> tuple["Moves", "Moves"]:
        """Mass moves `displacement` along the route (linear split between the two places around its
        target, blurred by `route_noise`); what overshoots a route's end leaves the map (the second Moves)."""
        if displacement == 0.0:
            return Moves.none(), Moves.none()
        r = self.route
        active = values > level
        src = self._ids[active]
        if not len(src):
            return Moves.none(), Moves.none()
        target = r.coord[src] + displacement
        sigma = self.config.route_noise * abs(displacement)
        hit = np.searchsorted(r.coord, target)
        offsets = np.arange(-ROUTE_WINDOW, ROUTE_WINDOW + 1)
        cand = np.clip(hit[:, None] + offsets[None, :], 0, self.n - 1)
        d = r.coord[cand] - target[:, None]
        spacing = self.spacing
        width = np.sqrt(sigma ** 2 + (0.5 * spacing) ** 2)  # at least the discretisation: half a spacing
        w = np.exp(-0.5 * (d / width) ** 2) * (r.run[cand] == r.run[src][:, None])
        w[:, 1:] *= cand[:, 1:] != cand[:, :-1]  # clipped duplicates count once
        w = np.where(w >= KERNEL_CUTOFF, w, 0.0)
        sums = w.sum(axis=1)
        run = r.run[src]
        beyond = np.maximum(target - r.end[run], r.start[run] - target)  # > 0: past the route's end
        leave = ndtr((beyond - 0.5 * spacing) / width) if self.config.out_of_map else np.zeros(len(src))
        stays = sums <= 0
        mass = values[active]
        moved = (w * ((1 - leave) * mass / np.where(stays, 1.0, sums))[:, None]).ravel()
        kept = mass[stays] * (1 - leave[stays])
        return (Moves(src, np.r_[cand.ravel(), src[stays]], np.r_[moved, kept]),
                Moves(src, src, leave * mass))

    def _speed_step(self, values: np.ndarray, level: float, reach: float) -> "Moves":
        radius = reach * (1 + 4 * SPEED_TAIL) + 2 * self.spacing
        return self._carry(values, level, radius, lambda pairs: _flat_top(pairs.dist, reach, self.spacing))

    def _odometry_step(self, values: np.ndarray, level: float, translation: np.ndarray) -> "Moves":
        c = self.config
        distance = float(np.linalg.norm(translation))
        # plus the discretisation: a step shorter than the place spacing must still be able to move the mass
        sigma = c.odom_noise_floor + c.odom_noise * distance + max(self.spacing - distance, 0.0) / 2
        return self._carry(values, level, distance + 4 * sigma,
                           lambda pairs: self._odometry_weights(pairs, translation, distance, sigma))

    def _carry(self, values: np.ndarray, level: float, radius: float, weights) -> "Moves":
        """Each listed place above `level` sends its mass to the places within `radius` along its row of
        weights (normalised); where nothing within reach fits the motion, the mass stays put."""
        active = values > level
        sources = self._ids[active]
        pairs = self._neighbours(sources, radius)
        w = weights(pairs)
        w = np.where(w >= KERNEL_CUTOFF, w, 0.0)
        sums = np.bincount(pairs.source, weights=w, minlength=len(sources))
        mass = values[active]
        moved = w * (mass / np.where(sums > 0, sums, 1.0))[pairs.source]
        stuck = sums <= 0
        return Moves(sources, np.r_[pairs.cols, sources[stuck]], np.r_[moved, mass[stuck]])

    def _odometry_weights(self, pairs: "Pairs", translation: np.ndarray, distance: float, sigma: float) -> np.ndarray:
        """Around where the displacement leads from each place's mapped pose (the displacement turned into
        the map frame by the source place's heading), or, without mapped orientations, at the travelled
        distance in any direction."""
        if self._rot is not None and len(pairs.rows):
            residual = np.linalg.norm(pairs.offsets - self._rot[pairs.rows].apply(translation), axis=1)
        else:
            residual = np.abs(pairs.dist - distance)
        return np.exp(-0.5 * (residual / sigma) ** 2)

    # ---- update -------------------------------------------------------------------------------------
    def likelihood(self, evidence: Evidence) -> tuple[np.ndarray, float, float]:
        """Likelihood ratio against "no mapped place" (calibrated), or relative to the frame's best place
        (relative): of every listed place (the frame's scored places are listed first), of every other
        place, and of "outside"."""
        ids = np.asarray(evidence.ids, dtype=np.int64)
        scores = np.asarray(evidence.scores, dtype=np.float64)
        c = self.config
        where = self._list(ids)
        if c.observation == "calibrated":
            rest = self.observation.miss_rate if evidence.rest is None else evidence.rest
            lik = np.full(len(self._ids), rest)
            if len(ids):
                lik[where] = self.observation.ratio(scores - evidence.median, c.likelihood_floor)
            return lik ** evidence.weight, float(rest ** evidence.weight), 1.0
        if len(ids) == 0:
            return np.ones(len(self._ids)), 1.0, 1.0
        best, unit = scores.max(), c.likelihood_temperature * evidence.scale
        rest = max(math.exp((scores.min() - best) / unit), c.likelihood_floor)
        lik = np.full(len(self._ids), rest)
        lik[where] = np.maximum(np.exp((scores - best) / unit), c.likelihood_floor)
        return lik, rest, 1.0

    def _standing(self, moved: bool | None, moved_far: bool | None) -> np.ndarray | None:
        """The speeds the view's change speaks against: standing still when it changed; also those that moved
        less than half a spacing when it changed as much as a spacing does. None: nothing to weigh."""
        if len(self.velocities) < 2 or not (moved or moved_far):
            return None
        if moved_far and self._slow is not None:
            return self._slow
        return self.velocities == 0.0

    def _weigh(self, lik: np.ndarray, lik_rest: float, lik_out: float, standing: np.ndarray | None) -> float:
        """Multiplies in the frame's likelihoods; returns the new total (how likely the belief found the frame)."""
        out = self._layers
        self._vals[:out] *= lik[None, :]
        self._bg[:out] *= lik_rest
        if standing is not None:
            self._vals[:out][standing] *= self.config.stop_penalty
            self._bg[:out][standing] *= self.config.stop_penalty
        self._vals[out] *= lik_out
        self._bg[out] *= lik_out
        return self._total()

    def update(self, evidence: Evidence, moved: bool | None = None, moved_far: bool | None = None) -> BeliefEstimate:
        """`moved`: the view changed since the previous frame, so standing still is unlikely; `moved_far`: it
        changed as much as moving one place spacing does, so creeping is unlikely too."""
        c = self.config
        lik, lik_rest, lik_out = self.likelihood(evidence)
        standing = self._standing(moved, moved_far)
        before = self._total()  # the relative model's yardstick
        predicted = self._weigh(lik, lik_rest, lik_out, standing)  # how likely the belief found this frame
        agreement = predicted / self._fresh_predictive(lik, lik_rest, lik_out, standing, before)
        relocalized = False
        if self._fresh:
            self._fresh = False
        else:
            self._contradictions = self._contradictions + 1 if agreement < c.contradiction_level else 0
            if self._contradictions >= c.relocalize_after:  # kidnapped, or locked on a look-alike: start over
                self._set_prior()
                self._weigh(lik, lik_rest, lik_out, standing)
                relocalized = True
                self._contradictions = 0
                self.relocalizations += 1
        total = self._total()
        if not np.isfinite(total) or total <= 0:
            self._set_prior()
        else:
            self._normalise(total)
            self._compact()
        est = self.estimate(relocalized, agreement)
        if est.fix and self._contradictions and c.observation == "calibrated":
            est.fix = False  # the frame says "elsewhere": the belief's place is not published until they agree
            est.reason = f"the frame contradicts the belief (agreement {agreement:.3f} < {c.contradiction_level})"
        return est

    def _fresh_predictive(self, lik: np.ndarray, lik_rest: float, lik_out: float, standing: np.ndarray | None,
                          before: float) -> float:
        """How likely a fresh start (the prior) finds this frame: the yardstick of the belief's agreement.
        The relative model keeps its old yardstick (the belief's total before the frame's likelihoods)."""
        if self.config.observation == "relative":
            return before
        out = self._prior_outside()
        penalised = 0.0 if standing is None else float(np.mean(standing))
        share = 1 - penalised * (1 - self.config.stop_penalty)
        mean = (float(lik.sum()) + lik_rest * self._unlisted()) / self.n
        return (1.0 - out) * share * mean + out * lik_out

    def dwell(self, est: BeliefEstimate, motion: Motion, view: np.ndarray, neighbour_similarity: float) -> None:
        """A robot that moves cannot stay at one place: when the mode has been the same place for `dwell_frames`
        frames in a row and the robot has gone further than one place can hold, the fix is withheld (the
        belief itself is left alone). The motion model cannot say it: each route step leaves ~13 % of a
        speed's mass on its place, and a look-alike scored high in every frame (a night view of a place nearby,
        among a million) outgrew that and held the mode for 13 frames, 7 of them published (docs/BENCHMARKS.md,
        *A look-alike among a million*). How far the robot went: with odometry, its displacement since the
        place became the mode, beyond two fix radii plus odometry's error over the path (a fix at both ends
        would be a contradiction); a robot turning on the spot keeps its fix. Without, the view: frames that each changed
        it (`motion.moved`), and a view that now differs from the first of them as much as neighbouring mapped
        places differ (`neighbour_similarity`)."""
        view = np.asarray(view, dtype=np.float32).reshape(-1)
        odometry = motion.translation is not None
        d = self._dwell
        if d is not None and est.place_id == d.place and odometry == d.odometry and (odometry or motion.moved):
            d.frames += 1
            if odometry:
                step = np.asarray(motion.translation, float)
                d.offset += d.turned.apply(step)
                d.path += float(np.linalg.norm(step))
                if motion.rotation is not None:
                    d.turned = d.turned * Rotation.from_quat(motion.rotation)
        else:
            d = self._dwell = _Dwell(est.place_id, view, odometry, 1 if odometry or motion.moved else 0)
        if not (self.config.dwell_frames and est.fix and d.frames >= self.config.dwell_frames):
            return
        held = f"the belief's place {d.place} has stayed the mode for {d.frames} frames while "
        if odometry:
            driven = float(np.linalg.norm(d.offset))
            allowed = 2 * self.fix_radius + self.config.odom_noise_floor + self.config.odom_noise * d.path
            if driven > allowed:
                est.fix = False
                est.reason = (held + f"odometry carried the robot {driven:.3g} (> {allowed:.3g}: two fix radii and "
                              "odometry's error): a look-alike, not published")
            return
        change = float(d.view @ view)
        if change < neighbour_similarity:
            est.fix = False
            est.reason = (held + f"the view changed (cosine {change:.2f} to the first of them, < "
                          f"{neighbour_similarity:.2f} between neighbouring places): a look-alike, not published")

    def step(self, evidence: Evidence, motion: Motion) -> BeliefEstimate:
        """Predict, then update. The localizer does the two apart: it scores the places the prediction
        carried the belief to (`active_places` after `predict`)."""
        self.predict(motion)
        return self.update(evidence, *standing_evidence(motion))

    # ---- output ---------------------------------------------------------------------------------------
    def _belief_at(self, ids: np.ndarray) -> np.ndarray:
        """The belief of these places (listed or not)."""
        pos = np.minimum(np.searchsorted(self._ids, ids), max(len(self._ids) - 1, 0))
        listed = (self._ids[pos] == ids) if len(self._ids) else np.zeros(len(ids), bool)
        out = np.full(len(ids), self._bg[:-1].sum())
        out[listed] = self._vals[:-1, pos[listed]].sum(axis=0)
        return out

    def _mode(self, listed: np.ndarray, background: float) -> int:
        """The most probable place; of equals, the lowest id (as argmax over the whole map picks it)."""
        best = int(self._ids[np.argmax(listed)]) if len(listed) else -1
        if not self._unlisted() or (len(listed) and listed.max() > background):
            return best
        gaps = np.flatnonzero(self._ids != np.arange(len(self._ids)))  # ids are sorted: the first gap
        first_unlisted = int(gaps[0]) if len(gaps) else len(self._ids)
        if not len(listed) or listed.max() < background:
            return first_unlisted
        return min(best, first_unlisted)

    def estimate(self, relocalized: bool = False, agreement: float = 1.0) -> BeliefEstimate:
        c = self.config
        listed, background = self._vals[:-1].sum(axis=0), float(self._bg[:-1].sum())
        inside = float(listed.sum() + background * self._unlisted())
        mode = self._mode(listed, background)
        window = np.array(self._tree.query_ball_point(self.positions[mode], self.fix_radius), dtype=np.int64)
        w = self._belief_at(window)
        mass = float(w.sum())
        w = w / mass if mass > 0 else np.full(len(window), 1.0 / len(window))
        mean = (w[:, None] * self.positions[window]).sum(0)
        d = self.positions[window] - mean
        cov_pos = (w[:, None, None] * d[:, :, None] * d[:, None, :]).sum(0)
        # Mass outside the window is somewhere else in the map: at least a window's radius of doubt.
        cov_pos += np.eye(3) * (c.position_floor ** 2 + (1.0 - mass) * self.fix_radius ** 2)
        yaw_floor = math.radians(c.yaw_floor_deg)
        if self.orientations is not None and c.planar:
            orientation, circ_var = fuse_heading(self.orientations[window], w, int(np.flatnonzero(window == mode)[0]))
            yaw_var = yaw_floor ** 2 + circ_var + (1.0 - mass) * (math.pi / 4) ** 2
        elif self.orientations is not None:
            orientation = self.orientations[mode] / np.linalg.norm(self.orientations[mode])
            yaw_var = yaw_floor ** 2 + (1.0 - mass) * (math.pi / 4) ** 2
        else:
            orientation = np.array([0.0, 0.0, 0.0, 1.0])
            yaw_var = math.pi ** 2  # the map holds no orientation: say so
        cov = np.zeros((6, 6))
        cov[:3, :3] = cov_pos
        cov[3:, 3:] = np.eye(3) * yaw_var
        if inside > 0:
            p, p_rest = listed / inside, background / inside
        else:
            p, p_rest = np.full(len(listed), 1.0 / self.n), 1.0 / self.n
        nz = p[p > 0]
        entropy = float(-(nz * np.log(nz)).sum()) - (self._unlisted() * p_rest * math.log(p_rest) if p_rest > 0 else 0.0)
        squares = float((p ** 2).sum()) + self._unlisted() * p_rest ** 2
        fix = mass >= c.fix_mass
        outside = self.outside
        if fix:
            reason = "ok"
        elif outside >= 0.5:
            reason = f"{OUTSIDE_REASON} (P = {outside:.2f})"
        else:
            reason = (f"belief spread: {mass:.2f} within {self.fix_radius:.3g} of the mode < {c.fix_mass}"
                      + (f"; outside the map {outside:.2f}" if c.out_of_map else ""))
        return BeliefEstimate(fix, reason, mode, mean, orientation, cov, mass, float(1.0 / squares), entropy,
                              relocalized, agreement, float(outside), window.tolist())


@dataclass
class _Dwell:
    """Since `place` became the belief's mode: the view then, the frames counted, and with odometry the
    displacement in the body frame of that moment, the path's length and the heading turned."""

    place: int
    view: np.ndarray
    odometry: bool
    frames: int
    offset: np.ndarray = field(default_factory=lambda: np.zeros(3))
    path: float = 0.0
    turned: Rotation = field(default_factory=Rotation.identity)


@dataclass(frozen=True)
class Moves:
    """Where a step sends mass: `sources` (place ids) give up theirs; `amounts` land on `cols` (place ids)."""

    sources: np.ndarray
    cols: np.ndarray
    amounts: np.ndarray

    @classmethod
    def none(cls) -> "Moves":
        empty = np.zeros(0, np.int64)
        return cls(empty, empty, np.zeros(0))

    @classmethod
    def joined(cls, parts: list["Moves"]) -> "Moves":
        """One Moves of several, in order (the per-speed exits of a route step, summed as the dense one did)."""
        parts = [cls.none(), *parts]
        return cls(np.concatenate([m.sources for m in parts]), np.concatenate([m.cols for m in parts]),
                   np.concatenate([m.amounts for m in parts]))


@dataclass(frozen=True)
class Pairs:
    """Neighbouring places (both directions, self-pairs included) and their offsets."""

    radius: float
    rows: np.ndarray
    cols: np.ndarray
    offsets: np.ndarray
    dist: np.ndarray
    source: np.ndarray  # each pair's row: its index among the sources asked for


def standing_evidence(motion: Motion) -> tuple[bool | None, bool | None]:
    """(moved, moved_far): what the view's change says against standing still; nothing when odometry
    already says how far the robot went."""
    return (None, None) if motion.translation is not None else (motion.moved, motion.moved_far)


def _per_step(rate: float, steps: float) -> float:
    """A per-second (or per-frame) probability over `steps` seconds (frames)."""
    return 1.0 - (1.0 - rate) ** steps


def _flat_top(dist: np.ndarray, reach: float, spacing: float) -> np.ndarray:
    """Flat up to `reach`, a soft edge beyond (wider when a frame's motion is shorter than the place
    spacing: the robot is somewhere between places): stopping, reversing, any speed up to the bound."""
    tail = SPEED_TAIL * reach + max(spacing - reach, 0.0) / 2  # a frame's motion shorter than the spacing
    return np.where(dist <= reach, 1.0, np.exp(-0.5 * ((dist - reach) / tail) ** 2))


def _quantised(reach: float) -> float:
    """Reach rounded up to 5 % steps, so frame-to-frame jitter of the camera period reuses kernels."""
    reach = max(reach, 1e-6)
    return float(REACH_STEP ** math.ceil(math.log(reach) / math.log(REACH_STEP)))
