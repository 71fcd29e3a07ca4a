"""Where the robot is over time: a discrete Bayes filter over the map's places.

A frame's retrieval alone is often wrong at night (a place that merely looks alike wins), yet a
robot that was at place 120 a second ago is not at place 40 now. The belief b (one probability
per mapped place) is carried from frame to frame:

- predict: b <- T b, with T from the motion since the last frame. With odometry (the robot's
  displacement in its own frame), each place i sends its mass to where that displacement leads
  from i's mapped pose (or, for maps without orientation, to places at the travelled distance);
  without odometry, anywhere within a bounded speed (stopping and reversing included). A little
  mass goes back to every place (`uniform_mix`), so no place is ever ruled out for good.
- update: b <- b * l, with l_j = exp((s_j - s_best) / (T spread)) for the retrieved places and the
  k-th candidate's value (at least `likelihood_floor`) for the rest, so a single wrong frame
  cannot zero the truth.
- relocalize: when `relocalize_after` frames in a row contradict the belief (the belief-weighted
  likelihood falls below `contradiction_level`: the robot was carried elsewhere), the belief is
  rebuilt from the observation alone.

The pose is the belief's mean over the places within `fix_radius` of its mode, with the
covariance of that mass, widened by the mass outside it; "no fix" only when that window holds
less than `fix_mass`. Documented in docs/POSE_MODEL.md; benchmarks in docs/BENCHMARKS.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from ..config import ConfigError
from ..datasets import fuse_heading

# Places whose belief is below this multiple of the uniform share keep their (negligible) mass where
# it is during prediction, so a step costs in proportion to where the robot may be, not the map size.
ACTIVE_SHARE = 10.0
# Transition weights below this are cut (the kernel's tail, beyond ~3.7 standard deviations).
KERNEL_CUTOFF = 1e-3
SPEED_TAIL = 0.25  # the bounded-speed kernel's soft edge, as a fraction of its reach
FIX_RADIUS_SPACINGS = 2.0  # default window around the mode, in place spacings
REACH_STEP = 1.05  # bounded-speed reach is rounded up to these ratios (kernel reuse)


@dataclass(frozen=True)
class BeliefConfig:
    max_speed: float = 3.0           # map units per second the robot may move (no odometry; stamps known)
    max_step: float = 3.0            # map units per frame the robot may move (no odometry; no stamps)
    odom_noise: float = 0.2          # odometry distance error, fraction of the distance travelled
    odom_noise_floor: float = 1.0    # map units: smallest odometry position error per step
    uniform_mix: float = 1e-3        # share of the belief returned to every place each step
    likelihood_floor: float = 0.02   # smallest observation likelihood of any place (relative to the best)
    likelihood_temperature: float = 0.35  # l = exp((s - s_best) / (temperature * spread)); chosen on GP frames 0-99
    contradiction_level: float = 0.05  # belief-weighted likelihood below this: the frame contradicts the belief
    relocalize_after: int = 3        # contradicting frames in a row before a global relocalization
    fix_radius: float = 0.0          # map units around the mode that count as "the place"; 0: 2 place spacings
    fix_mass: float = 0.5            # belief within fix_radius needed to publish a fix
    position_floor: float = 1.0      # smallest position standard deviation (map units)
    yaw_floor_deg: float = 10.0      # smallest yaw standard deviation
    neighbour_radius: float = 0.0    # map units of precomputed transitions; 0: from max_speed/max_step
    planar: bool = True              # yaw from the belief's weighted circular mean (else the mode's orientation)

    def __post_init__(self) -> None:
        checks = {"max_speed": self.max_speed > 0, "max_step": self.max_step > 0, "odom_noise": self.odom_noise >= 0,
                  "likelihood_temperature": self.likelihood_temperature > 0,
                  "odom_noise_floor": self.odom_noise_floor > 0, "uniform_mix": 0 < self.uniform_mix < 1,
                  "likelihood_floor": 0 < self.likelihood_floor <= 1,
                  "contradiction_level": 0 <= self.contradiction_level < 1, "relocalize_after": self.relocalize_after >= 1,
                  "fix_radius": self.fix_radius >= 0, "fix_mass": 0 < self.fix_mass <= 1,
                  "position_floor": self.position_floor > 0, "yaw_floor_deg": self.yaw_floor_deg > 0,
                  "neighbour_radius": self.neighbour_radius >= 0}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"belief filter: invalid {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")


@dataclass
class Motion:
    """What happened since the previous frame: elapsed time and/or odometry (previous body frame)."""

    dt: float | None = None                       # seconds; None: unknown (an unstamped sequence)
    translation: np.ndarray | None = None         # odometry displacement in the previous body frame
    rotation: np.ndarray | None = None            # odometry rotation (quaternion xyzw), for completeness


@dataclass
class BeliefEstimate:
    fix: bool
    reason: str
    place_id: int                     # the mode
    position: np.ndarray
    orientation: np.ndarray           # x, y, z, w
    covariance: np.ndarray            # 6 x 6: x y z roll pitch yaw
    mass: float                       # belief within fix_radius of the mode
    effective_places: float           # 1 / sum(b^2): 1 = certain, N = uniform
    entropy: float                    # nats
    relocalized: bool                 # this frame rebuilt the belief from the observation
    contradiction: float              # belief-weighted likelihood of this frame (1: agrees, ~0: contradicts)
    group: list[int] = field(default_factory=list)  # places in the window
    position_source: str = "belief"   # "frame": interpolated by this frame inside the window (localizer.py)

    @property
    def confidence(self) -> float:
        """The belief's mass at the published place (what the single-frame estimate calls confidence)."""
        return self.mass


class PlaceBelief:
    def __init__(self, positions: np.ndarray, orientations: np.ndarray | None, config: BeliefConfig = BeliefConfig()
                 ) -> None:
        self.positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        self.n = len(self.positions)
        if self.n == 0:
            raise ValueError("a belief needs at least one place")
        self.orientations = None if orientations is None else np.asarray(orientations, float).reshape(self.n, 4)
        self.config = config
        self._tree = cKDTree(self.positions)
        self.spacing = self._median_spacing()
        self.fix_radius = config.fix_radius or FIX_RADIUS_SPACINGS * self.spacing
        self._rot = None if self.orientations is None else Rotation.from_quat(self.orientations)
        # Places are discrete: mass must be able to reach the next place even when a frame's motion is shorter.
        self.neighbour_reach = config.neighbour_radius or max(2 * max(config.max_step, config.max_speed) * (1 + SPEED_TAIL),
                                                              3 * self.spacing)
        self._pairs = self._neighbours(self.neighbour_reach)
        self._speed_cache: dict[float, np.ndarray] = {}
        self.relocalizations = 0
        self.resets = 0
        self._contradictions = 0
        self.reset()

    def _median_spacing(self) -> float:
        if self.n < 2:
            return self.config.position_floor
        d, _ = self._tree.query(self.positions, k=2)
        spacing = float(np.median(d[:, 1]))
        return spacing if spacing > 0 else self.config.position_floor

    def _neighbours(self, radius: float) -> "Pairs":
        """Every (i, j) with |x_j - x_i| <= radius, i == j included."""
        pairs = self._tree.query_pairs(radius, output_type="ndarray")
        rows = np.concatenate([pairs[:, 0], pairs[:, 1], np.arange(self.n)])
        cols = np.concatenate([pairs[:, 1], pairs[:, 0], np.arange(self.n)])
        offsets = self.positions[cols] - self.positions[rows]
        return Pairs(radius, rows, cols, offsets, np.linalg.norm(offsets, axis=1))

    def _pairs_for(self, reach: float) -> "Pairs":
        """The precomputed neighbours, or (rarely: a long gap or a large odometry step) wider ones."""
        return self._pairs if reach <= self._pairs.radius else self._neighbours(reach)

    # ---- state ----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Everywhere equally likely (start-up, or after the robot was carried: the reset service)."""
        self.belief = np.full(self.n, 1.0 / self.n)
        self._contradictions = 0
        self._fresh = True
        self.resets += 1

    # ---- predict ----------------------------------------------------------------------------------
    def predict(self, motion: Motion) -> None:
        if self._fresh:  # nothing is known yet: motion cannot sharpen a uniform belief
            return
        c = self.config
        if motion.translation is not None:
            translation = np.asarray(motion.translation, float)
            distance = float(np.linalg.norm(translation))
            # plus the discretisation: a step shorter than the place spacing must still be able to move the mass
            sigma = c.odom_noise_floor + c.odom_noise * distance + max(self.spacing - distance, 0.0) / 2
            pairs = self._pairs_for(distance + 4 * sigma)
            weights = lambda sel: self._odometry_weights(pairs, sel, translation, sigma)  # noqa: E731
        else:
            reach = _quantised(c.max_step if motion.dt is None else c.max_speed * max(motion.dt, 0.0))
            pairs = self._pairs_for(reach * (1 + 4 * SPEED_TAIL) + 2 * self.spacing)
            weights = lambda sel: self._speed_weights(pairs, reach)[sel]  # noqa: E731
        b = self.belief
        active = b > ACTIVE_SHARE / self.n
        sel = np.flatnonzero(active[pairs.rows])
        rows, cols = pairs.rows[sel], pairs.cols[sel]
        moved, stuck = self._carry(b, rows, cols, weights(sel), active)
        b = moved + stuck * b + np.where(active, 0.0, b)
        mix = c.uniform_mix
        self.belief = _normalised((1 - mix) * b / b.sum() + mix / self.n)

    def _carry(self, b: np.ndarray, rows: np.ndarray, cols: np.ndarray, w: np.ndarray, active: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        """Move each active place's mass along its row of weights (normalised). Returns the moved mass
        and, per place, 1 where nothing within reach fits the motion (that mass stays put)."""
        w = np.where(w >= KERNEL_CUTOFF, w, 0.0)
        sums = np.bincount(rows, weights=w, minlength=self.n)
        moved = np.bincount(cols, weights=w * (b / np.where(sums > 0, sums, 1.0))[rows], minlength=self.n)
        return moved, (active & (sums <= 0)).astype(float)

    def _speed_weights(self, pairs: "Pairs", reach: float) -> np.ndarray:
        """Flat up to `reach`, a soft edge beyond (wider when a frame's motion is shorter than the place
        spacing: the robot is somewhere between places): stopping, reversing, any speed up to the bound."""
        if pairs is not self._pairs:
            return _flat_top(pairs.dist, reach, self.spacing)
        if reach not in self._speed_cache:
            if len(self._speed_cache) > 32:
                self._speed_cache.clear()
            self._speed_cache[reach] = _flat_top(pairs.dist, reach, self.spacing)
        return self._speed_cache[reach]

    def _odometry_weights(self, pairs: "Pairs", sel: np.ndarray, translation: np.ndarray, sigma: float) -> np.ndarray:
        """Around where the displacement leads from each place's mapped pose (or, without mapped
        orientations, at the travelled distance in any direction)."""
        rows = pairs.rows[sel]
        if self._rot is not None:
            step = self._rot.apply(translation)  # the displacement in the map frame, from each place's heading
            residual = np.linalg.norm(pairs.offsets[sel] - step[rows], axis=1)
        else:
            residual = np.abs(pairs.dist[sel] - float(np.linalg.norm(translation)))
        return np.exp(-0.5 * (residual / sigma) ** 2)

    # ---- update -------------------------------------------------------------------------------------
    def likelihood(self, ids: np.ndarray, scores: np.ndarray, score_scale: float) -> np.ndarray:
        """Observation likelihood of every place (best = 1), from the top-k similarities."""
        ids = np.asarray(ids, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float64)
        if len(ids) == 0:
            return np.ones(self.n)
        best, unit = scores.max(), self.config.likelihood_temperature * score_scale
        rest = max(math.exp((scores.min() - best) / unit), self.config.likelihood_floor)
        lik = np.full(self.n, rest)
        lik[ids] = np.maximum(np.exp((scores - best) / unit), self.config.likelihood_floor)
        return lik

    def update(self, ids: np.ndarray, scores: np.ndarray, score_scale: float) -> BeliefEstimate:
        lik = self.likelihood(ids, scores, score_scale)
        agreement = float(self.belief @ lik)  # 1: the belief sits where the frame says; ~floor: elsewhere
        relocalized = False
        if self._fresh:
            posterior = lik
            self._fresh = False
        else:
            self._contradictions = self._contradictions + 1 if agreement < self.config.contradiction_level else 0
            if self._contradictions >= self.config.relocalize_after:
                posterior, relocalized = lik, True  # kidnapped: start over from what the camera sees
                self._contradictions = 0
                self.relocalizations += 1
            else:
                posterior = self.belief * lik
        self.belief = _normalised(posterior)
        return self.estimate(relocalized, agreement)

    def step(self, ids: np.ndarray, scores: np.ndarray, score_scale: float, motion: Motion) -> BeliefEstimate:
        self.predict(motion)
        return self.update(ids, scores, score_scale)

    # ---- output ---------------------------------------------------------------------------------------
    def estimate(self, relocalized: bool = False, agreement: float = 1.0) -> BeliefEstimate:
        c, b = self.config, self.belief
        mode = int(np.argmax(b))
        window = np.array(self._tree.query_ball_point(self.positions[mode], self.fix_radius), dtype=np.int64)
        w = b[window]
        mass = float(w.sum())
        w = w / mass
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
        nz = b[b > 0]
        entropy = float(-(nz * np.log(nz)).sum())
        fix = mass >= c.fix_mass
        reason = "ok" if fix else f"belief spread: {mass:.2f} within {self.fix_radius:.3g} of the mode < {c.fix_mass}"
        return BeliefEstimate(fix, reason, mode, mean, orientation, cov, mass, float(1.0 / (b ** 2).sum()), entropy,
                              relocalized, agreement, window.tolist())


@dataclass(frozen=True)
class Pairs:
    """Neighbouring places (both directions, self-pairs included) and their offsets."""

    radius: float
    rows: np.ndarray
    cols: np.ndarray
    offsets: np.ndarray
    dist: np.ndarray


def _flat_top(dist: np.ndarray, reach: float, spacing: float) -> np.ndarray:
    tail = SPEED_TAIL * reach + max(spacing - reach, 0.0) / 2  # a frame's motion shorter than the spacing
    return np.where(dist <= reach, 1.0, np.exp(-0.5 * ((dist - reach) / tail) ** 2))


def _quantised(reach: float) -> float:
    """Reach rounded up to 5 % steps, so frame-to-frame jitter of the camera period reuses kernels."""
    reach = max(reach, 1e-6)
    return float(REACH_STEP ** math.ceil(math.log(reach) / math.log(REACH_STEP)))


def _normalised(x: np.ndarray) -> np.ndarray:
    total = x.sum()
    if not np.isfinite(total) or total <= 0:
        return np.full(len(x), 1.0 / len(x))
    return x / total
