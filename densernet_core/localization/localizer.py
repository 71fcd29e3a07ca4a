"""Model + map + pose estimation: one image in, a pose out (used by the CLI, the node and the demo).

Each frame gets a single-frame estimate (pose.py); with a belief filter (belief.py) it also gets the
filtered one, which carries what earlier frames and the motion since then say. `mode` picks which
of the two is published; both are always computed, so they can be compared side by side. On a map
with 3-D points (built with a camera), the published place is refined into a metric 6-DoF camera
pose by PnP (metric.py); when its gate fails, the place estimate is published and says so.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..model.checkpoint import checkpoint_hash
from ..model.runtime import load_describer
from ..mapping.placemap import MapError, PlaceMap, background_statistics
from ..camera import Camera
from ..frames import Extrinsic
from ..geometry import compose, inverse, pose_times_transform_covariance
from ..images import to_rgb_uint8
from ..local_features import LocalFeatures, describe_with_features
from .belief import BeliefConfig, BeliefEstimate, Evidence, Motion, PlaceBelief, standing_evidence
from .metric import (FOCAL_MIN_CHECKS, MetricConfig, MetricPose, focal_disagrees, intrinsics_unproven,
                     judge_intrinsics, localize_metric)
from .observation import place_posterior
from .pose import PoseEstimate, PoseEstimatorConfig, estimate_pose
from .rerank import RerankConfig, dense_grid, rerank_order

LOG = logging.getLogger("densernet")
MODES = ("filtered", "single")
FOCAL_CHECKS = 20  # recent metric frames whose fitted focal length judges the camera's intrinsics


@dataclass
class Retrieval:
    """What the map says about one frame: the top-k places and how they compare with the map at large."""

    ids: np.ndarray       # top-k place ids, best first
    scores: np.ndarray    # their similarities
    score_median: float   # the query's typical similarity to places it is not at
    score_scale: float    # the spread of those similarities (placemap.background_statistics)
    background: np.ndarray | None = None  # its similarities to the map's background sample
    weights: np.ndarray | None = None  # each candidate's evidence for the single-frame estimate (Localizer.estimate)
    search_s: float = 0.0  # the map search's share of it (the top-k; the background sample is scored apart)
    rerank_s: float = 0.0  # the dense re-rank's (0 without one)
    global_best: int | None = None  # re-ranked: the global descriptor's own first place (None: no re-rank)

    @property
    def reranked(self) -> bool:
        return self.global_best is not None

    @property
    def rerank_moved(self) -> bool:
        """Whether the dense map put another place first than the global descriptor did."""
        return self.reranked and self.global_best != int(self.ids[0])


@dataclass
class Localization:
    single: PoseEstimate              # from this frame alone
    filtered: BeliefEstimate | None   # from the belief over time (None without a filter)
    mode: str                         # which of the two is published
    retrieval: Retrieval
    describe_s: float    # inference time
    total_s: float       # inference + search + pose (+ filter, + metric)
    metric: MetricPose | None = None  # the PnP refinement (None on a retrieval-only map)
    metric_s: float = 0.0             # of total_s: local features, matching, PnP

    @property
    def place(self) -> PoseEstimate | BeliefEstimate:
        """The place estimate of the mode in use (single-frame or filtered)."""
        return self.filtered if self.place_mode == "filtered" else self.single

    @property
    def pose_source(self) -> str:
        """What the published pose comes from: "metric" (PnP), or the place estimate's mode."""
        return "metric" if self.metric is not None and self.metric.ok else self.place_mode

    @property
    def place_mode(self) -> str:
        return "filtered" if self.mode == "filtered" and self.filtered is not None else "single"

    @property
    def estimate(self) -> PoseEstimate | BeliefEstimate:
        """The published estimate: fix, reason, place_id, position, orientation, covariance. With a metric
        pose, the camera's 6-DoF pose and its covariance, at the place estimate's place."""
        place = self.place
        if self.metric is None or not self.metric.ok:
            return place
        m = self.metric
        return PoseEstimate(True, f"ok (metric: {m.inliers} inliers, {m.reproj_px:.2f} px)", place.place_id,
                            float(self.retrieval.scores[0]) if len(self.retrieval.scores) else 0.0, m.position,
                            m.orientation, m.covariance, place.confidence, list(place.group), getattr(place, "ratio", 0.0))

    @property
    def ids(self) -> np.ndarray:
        return self.retrieval.ids

    @property
    def scores(self) -> np.ndarray:
        return self.retrieval.scores


class Localizer:
    def __init__(self, model, place_map: PlaceMap, estimator: PoseEstimatorConfig = PoseEstimatorConfig(),
                 top_k: int = 10, belief: BeliefConfig | None = None, mode: str = "single",
                 metric: MetricConfig | None = MetricConfig(), rerank: RerankConfig | None = RerankConfig()) -> None:
        """`metric`: refine to a 6-DoF pose when the map has 3-D points (None: never). `rerank`: re-order the
        global top candidates by the dense map when the map holds the places' dense grids (None: never)."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "filtered" and belief is None:
            raise ValueError("mode 'filtered' needs a belief filter configuration")
        self.model, self.map, self.estimator, self.top_k, self.mode = model, place_map, estimator, top_k, mode
        calibrated = estimator.confidence == "calibrated" or (belief is not None and belief.observation == "calibrated")
        if calibrated and place_map.observation is None:
            raise MapError(f"the map holds no observation model ({place_map.observation_error}); the calibrated "
                           "confidence needs one: `densernet-map calibrate MAP` fits it, or use the relative estimator")
        places = place_map.places
        self.filter = None if belief is None else PlaceBelief(
            places.positions, places.orientations if places.has_orientation else None, belief, place_map.observation,
            places.place_sources)
        self._previous: np.ndarray | None = None  # the last frame's descriptor: did the view change?
        # base -> camera: a metric (camera) pose is published as the base's. The map's by default; the node
        # replaces it with the live robot's (tf2, or its camera_extrinsic parameter). None: the map holds
        # camera poses (made before extrinsics) and the camera's pose is what is published.
        self.extrinsic: Extrinsic | None = place_map.extrinsic
        self.metric = metric if place_map.points is not None else None
        self.rerank = rerank if place_map.grids is not None else None
        if rerank is not None and place_map.grids is None:
            LOG.info("the map has no dense grids (`densernet-map grids` adds them): the global ranking is kept")
        if metric is not None and place_map.points is None:
            LOG.info("the map has no 3-D points (built without --camera): retrieval-only, no metric pose")
        self._camera: Camera | None = None  # the query camera; None: the map's, scaled to the query image
        self.focal_checks: deque[float] = deque(maxlen=FOCAL_CHECKS)  # focal scales the recent PnP inliers fit
        self.focal_refusals: deque[bool] = deque(maxlen=FOCAL_CHECKS)  # ...and whether each frame's own fit refused

    @classmethod
    def from_paths(cls, map_dir: str | Path, checkpoint: str | Path | None = None, device: str = "auto",
                   image_size: tuple[int, int] | None = None, estimator: PoseEstimatorConfig = PoseEstimatorConfig(),
                   top_k: int = 10, belief: BeliefConfig | None = None, mode: str = "single",
                   metric: MetricConfig | None = MetricConfig(), backend: str = "torch",
                   engine: str | Path | None = None, local_frame: bool = False,
                   rerank: RerankConfig | None = RerankConfig()) -> "Localizer":
        """`backend`/`engine`: run the network on an exported engine (model/runtime.py), not PyTorch.
        `local_frame`: a map in UTM metres is localized in, and answers in, its frame local to the places
        (PlaceMap.recentre; the node's map frame), not in UTM metres."""
        place_map = PlaceMap.load(map_dir)
        if local_frame:
            place_map.recentre()
        ckpt = Path(checkpoint) if checkpoint else Path(place_map.manifest.checkpoint)
        if not ckpt.is_absolute() and not ckpt.is_file():
            ckpt = Path(map_dir) / ckpt
        if not ckpt.is_file():
            raise FileNotFoundError(f"checkpoint not found: {ckpt}")
        map_size = tuple(place_map.manifest.model_config.get("image_size", ()))
        if image_size is not None and tuple(image_size) != map_size:
            raise MapError(f"image size {tuple(image_size)} differs from the map's {map_size}; "
                           "descriptors at other resolutions are not comparable")
        model = load_describer(ckpt, device, map_size or None, backend, engine)
        place_map.check_model(model.descriptor_dim, checkpoint_hash(ckpt))
        return cls(model, place_map, estimator, top_k, belief, mode, metric, rerank)

    def retrieve(self, descriptor: np.ndarray, grid: np.ndarray | None = None) -> Retrieval:
        """The top-k by global similarity; with the frame's dense `grid` (and the map's), the first
        `rerank.top` of them re-ordered by the dense map, their similarities staying in sorted order
        (rerank.py: the confidence stays the global descriptor's, calibrated on it)."""
        t0 = time.perf_counter()
        scores, ids = self.map.search(descriptor, self.top_k)
        search_s = time.perf_counter() - t0
        background = self.map.background_scores(descriptor)  # once per frame: 512 x D multiply-adds
        median, scale = background_statistics(background)
        valid = ids[0] >= 0
        retrieval = Retrieval(ids[0][valid], scores[0][valid], float(median[0]), float(scale[0]), background[0],
                              search_s=search_s)
        if grid is not None and self.rerank is not None and len(retrieval.ids) > 1:
            t0 = time.perf_counter()
            n = min(self.rerank.top, len(retrieval.ids))
            order, _ = rerank_order(grid, self.map.grids.of(retrieval.ids[:n]), self.map.grids.meta.shape)
            retrieval.global_best = int(retrieval.ids[0])
            retrieval.ids = np.concatenate([retrieval.ids[:n][order], retrieval.ids[n:]])
            retrieval.rerank_s = time.perf_counter() - t0
        return retrieval

    def unscored_ratio(self, retrieval: Retrieval) -> float:
        """The likelihood ratio a place not scored for this frame is given: the mean over the map's background
        sample below the last retrieved score (what a place the search passed over scores), never below the
        observation model's miss rate."""
        obs = self.map.observation
        below = retrieval.background
        if below is not None and len(retrieval.scores):
            below = below[below < retrieval.scores.min()]
        if below is None or not len(below):
            return obs.miss_rate
        return max(float(obs.ratio(below - retrieval.score_median).mean()), obs.miss_rate)

    def estimate(self, retrieval: Retrieval) -> PoseEstimate:
        """This frame alone: the candidates fused by exp((s - s_best) / spread); calibrated, the confidence is
        the group's probability against every place and "no mapped place"; relative (the earlier estimator),
        a ratio test against the runner-up group."""
        places = self.map.places
        probabilities, out = None, 0.0
        if self.estimator.confidence == "calibrated":
            obs = self.map.observation
            probabilities, _, out = place_posterior(obs.ratio(retrieval.scores - retrieval.score_median),
                                                    len(self.map), self.estimator.out_prior,
                                                    self.unscored_ratio(retrieval))
        best = retrieval.scores.max() if len(retrieval.scores) else 0.0
        retrieval.weights = np.exp((retrieval.scores - best) / retrieval.score_scale)
        return estimate_pose(retrieval.ids, retrieval.scores, retrieval.weights, places.positions[retrieval.ids],
                             places.orientations[retrieval.ids], self.estimator, probabilities, out)

    def evidence(self, descriptor: np.ndarray, retrieval: Retrieval) -> Evidence:
        """What the filter weighs: the top-k and, for the calibrated observation, every place where the belief
        holds mass, scored exactly (a place not retrieved is not thereby ruled out)."""
        ids, scores, rest = retrieval.ids, retrieval.scores, None
        if self.filter.config.observation == "calibrated":
            extra = np.setdiff1d(self.filter.active_places(), ids)
            if len(extra):
                ids = np.concatenate([ids, extra])
                scores = np.concatenate([scores, self.map.similarities(descriptor, extra)])
            rest = self.unscored_ratio(retrieval)
        return Evidence(ids, scores, retrieval.score_median, retrieval.score_scale, rest=rest)

    def similarity_to_previous(self, descriptor: np.ndarray) -> float | None:
        """The frame's similarity to the previous one (None for the first): did the view change?"""
        d = np.asarray(descriptor, dtype=np.float32).reshape(-1)
        previous, self._previous = self._previous, d
        return None if previous is None else float(previous @ d)

    @property
    def camera(self) -> Camera | None:
        return self._camera

    @camera.setter
    def camera(self, camera: Camera | None) -> None:
        """A new camera (camera_info) is judged afresh: the focal scales fitted under the old one are dropped."""
        if camera != self._camera:
            self.focal_checks.clear()
            self.focal_refusals.clear()
        self._camera = camera

    def intrinsics_disagree(self) -> float | None:
        """The median focal scale the recent metric frames fit, when it says the camera's intrinsics are
        wrong (`judge_intrinsics`); None otherwise."""
        if self.metric is None:
            return None
        return judge_intrinsics(list(self.focal_checks), self.metric)  # one C-level copy: the worker appends

    def seed(self, position: np.ndarray, covariance: np.ndarray, orientation: np.ndarray | None = None,
             yaw_variance: float | None = None) -> int:
        """Start the belief from a given pose (`/initialpose`); returns the number of places it covers."""
        if self.filter is None:
            raise ValueError("mode single has no belief to seed")
        self._previous = None
        return self.filter.seed(position, covariance, orientation, yaw_variance)

    def reset(self) -> None:
        """Forget the belief and the previous frame (the robot was carried elsewhere)."""
        if self.filter is not None:
            self.filter.reset()
        self._previous = None

    def localize(self, image, color: str = "rgb", motion: Motion | None = None) -> Localization:
        """One frame; `motion` (time and/or odometry since the previous frame) feeds the filter."""
        t0 = time.perf_counter()
        desc, features, grid = self.describe(image, color)
        t1 = time.perf_counter()
        return self.localize_descriptor(desc, motion, t1 - t0, t0, features, grid)

    def describe(self, image, color: str = "rgb"
                 ) -> tuple[np.ndarray, tuple[LocalFeatures, tuple[int, int]] | None, np.ndarray | None]:
        """The global descriptor and, from the same forward pass, the dense grid for the re-rank (a map with
        grids) and the local features for the metric pose (a map with 3-D points); None where not used."""
        if self.metric is None and self.rerank is None:
            return self.model.describe([image], color=color), None, None
        rgb = to_rgb_uint8(image, color)
        if self.metric is None:  # the re-rank alone
            desc, dense = self.model.describe([rgb], return_dense=True)
            return desc, None, dense_grid(dense[0], self.map.grids.meta.pool)
        if self.rerank is None:
            desc, feats = describe_with_features(self.model, [rgb], self.map.points.kind)
            return desc, (feats[0], rgb.shape[:2]), None
        desc, feats, dense = describe_with_features(self.model, [rgb], self.map.points.kind, return_dense=True)
        return desc, (feats[0], rgb.shape[:2]), dense_grid(dense[0], self.map.grids.meta.pool)

    def localize_descriptor(self, descriptor: np.ndarray, motion: Motion | None = None, describe_s: float = 0.0,
                            started: float | None = None,
                            features: tuple[LocalFeatures, tuple[int, int]] | None = None,
                            grid: np.ndarray | None = None) -> Localization:
        """`features`: the frame's local features and image size (h, w), for the metric refinement;
        `grid`: its dense grid, for the re-rank."""
        started = time.perf_counter() if started is None else started
        retrieval = self.retrieve(descriptor, grid)
        single, filtered = self.estimate(retrieval), None
        if motion is not None and motion.restart:  # time went back: another run (belief.motion_between)
            self.reset()
        if self.filter is not None:
            motion = motion or Motion()
            similarity = self.similarity_to_previous(descriptor)
            if motion.moved is None and similarity is not None:  # a camera that moved cannot be standing still
                motion.moved = similarity < self.filter.config.moving_similarity
                if self.map.observation is not None:  # ...nor creep, if the view changed as much as a place's does
                    motion.moved_far = similarity < self.map.observation.neighbour_similarity
            self.filter.predict(motion)
            evidence = self.evidence(descriptor, retrieval)  # where the prediction carried the belief
            if self.filter.config.observation == "calibrated":  # a repeated view is not new evidence
                evidence.weight = self.map.observation.evidence_weight(similarity, self.filter.config.least_evidence)
            filtered = self.filter.update(evidence, *standing_evidence(motion))
            if self.map.observation is not None:
                self.filter.dwell(filtered, motion, descriptor, self.map.observation.neighbour_similarity)
            interpolate_in_window(filtered, retrieval, self.map.places.positions)
        result = Localization(single, filtered, self.mode, retrieval, describe_s, 0.0)
        if self.metric is not None and features is not None:
            t0 = time.perf_counter()
            result.metric = self.refine(result, *features)
            result.metric_s = time.perf_counter() - t0
        result.total_s = time.perf_counter() - started
        return result

    def refine(self, result: Localization, features: LocalFeatures, image_hw: tuple[int, int]) -> MetricPose:
        """PnP against the 3-D points of the retrieved places (and the published place), gated by the
        solution and by agreement with the place estimate."""
        place = result.place
        candidates = list(dict.fromkeys([*([place.place_id] if place.fix else []),
                                         *result.retrieval.ids[:self.metric.candidates].tolist()]))
        camera = (self.camera or self.map.points.camera).scaled(image_hw[1], image_hw[0])
        pose = localize_metric(features, camera, self.map.points, candidates, self.metric)
        if np.isfinite(pose.focal_scale):
            self.focal_refusals.append(focal_disagrees(pose.focal_scale, pose.focal_sigma, self.metric))
            self.focal_checks.append(pose.focal_scale)
        if pose.ok and (focal := self.intrinsics_disagree()) is not None:
            pose.ok, pose.reason = False, (
                f"camera intrinsics disagree with the images: the last {len(self.focal_checks)} metric frames fit "
                f"a focal length {focal:.3f} times the given one (median); no metric pose until the camera's "
                f"intrinsics are corrected")
        elif pose.ok and (focal := intrinsics_unproven(list(self.focal_checks), list(self.focal_refusals),
                                                       self.metric)) is not None:
            pose.ok, pose.reason = False, (
                f"camera intrinsics disagree with an earlier image: {sum(self.focal_refusals)} of the last "
                f"{len(self.focal_checks)} metric frames were refused by their own fit (median {focal:.3f} times "
                f"the given focal length); no metric pose until at least {FOCAL_MIN_CHECKS} frames fit it within "
                f"{self.metric.focal_tolerance:.0%} together")
        if pose.ok and self.extrinsic is not None:  # the camera's pose -> the base's (camera * extrinsic^-1)
            to_base = inverse(self.extrinsic.transform)
            pose.covariance = pose_times_transform_covariance(pose.orientation, pose.covariance, to_base)
            pose.position, pose.orientation = compose((pose.position, pose.orientation), to_base)
        if pose.ok and place.fix:
            sigma = np.sqrt(np.diag(place.covariance)[:3].sum())
            jump = float(np.linalg.norm(pose.position - place.position))
            limit = self.metric.max_jump_sigmas * sigma
            if jump > limit:
                pose.ok, pose.reason = False, (f"metric pose {jump:.2f} from the place estimate "
                                               f"(> {self.metric.max_jump_sigmas:g} sigma = {limit:.2f})")
        return pose


def interpolate_in_window(filtered: BeliefEstimate, retrieval: Retrieval, positions: np.ndarray) -> None:
    """The belief moves in whole places, so its window mean cannot fall between two mapped places; this
    frame's similarities can. Where the frame retrieved places inside the belief's window, the published
    position is their mean weighted as the single-frame estimate weighs them (`Retrieval.weights`)
    (KITTI, a frame between two mapped ones: 0.85 m median from the window mean, 0.26 m from the frame).
    The belief's covariance stays, so the pose is never more certain than the belief."""
    if not filtered.fix:
        return
    inside = np.isin(retrieval.ids, filtered.group) & (retrieval.weights > 0)
    if not inside.any():
        return
    w = retrieval.weights[inside]
    filtered.position = (w[:, None] * positions[retrieval.ids[inside]]).sum(0) / w.sum()
    filtered.position_source = "frame"
