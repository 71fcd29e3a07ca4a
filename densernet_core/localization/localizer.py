"""Model + map + pose estimation: one image in, a pose out (used by the CLI, the node and the demo).

Each frame gets a single-frame estimate (pose.py); with a belief filter (belief.py) it also gets the
filtered one, which carries what earlier frames and the motion since then say. `mode` picks which
of the two is published; both are always computed, so they can be compared side by side.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..model.checkpoint import checkpoint_hash, load_model
from ..mapping.placemap import MapError, PlaceMap
from .belief import BeliefConfig, BeliefEstimate, Motion, PlaceBelief
from .pose import PoseEstimate, PoseEstimatorConfig, estimate_pose

LOG = logging.getLogger("densernet")
MODES = ("filtered", "single")


@dataclass
class Retrieval:
    """What the map says about one frame: the top-k places and how they compare with the map at large."""

    ids: np.ndarray       # top-k place ids, best first
    scores: np.ndarray    # their similarities
    score_median: float   # the query's typical similarity to places it is not at
    score_scale: float    # the spread of those similarities (PlaceMap.score_background)


@dataclass
class Localization:
    single: PoseEstimate              # from this frame alone
    filtered: BeliefEstimate | None   # from the belief over time (None without a filter)
    mode: str                         # which of the two is published
    retrieval: Retrieval
    describe_s: float    # inference time
    total_s: float       # inference + search + pose (+ filter)

    @property
    def estimate(self) -> PoseEstimate | BeliefEstimate:
        """The published estimate: fix, reason, place_id, position, orientation, covariance."""
        return self.filtered if self.mode == "filtered" and self.filtered is not None else self.single

    @property
    def ids(self) -> np.ndarray:
        return self.retrieval.ids

    @property
    def scores(self) -> np.ndarray:
        return self.retrieval.scores


class Localizer:
    def __init__(self, model, place_map: PlaceMap, estimator: PoseEstimatorConfig = PoseEstimatorConfig(),
                 top_k: int = 10, belief: BeliefConfig | None = None, mode: str = "single") -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "filtered" and belief is None:
            raise ValueError("mode 'filtered' needs a belief filter configuration")
        self.model, self.map, self.estimator, self.top_k, self.mode = model, place_map, estimator, top_k, mode
        places = place_map.places
        self.filter = None if belief is None else PlaceBelief(
            places.positions, places.orientations if places.has_orientation else None, belief)

    @classmethod
    def from_paths(cls, map_dir: str | Path, checkpoint: str | Path | None = None, device: str = "auto",
                   image_size: tuple[int, int] | None = None, estimator: PoseEstimatorConfig = PoseEstimatorConfig(),
                   top_k: int = 10, belief: BeliefConfig | None = None, mode: str = "single") -> "Localizer":
        place_map = PlaceMap.load(map_dir)
        ckpt = Path(checkpoint) if checkpoint else Path(place_map.manifest.checkpoint)
        if not ckpt.is_absolute() and not ckpt.is_file():
            ckpt = Path(map_dir) / ckpt
        if not ckpt.is_file():
            raise FileNotFoundError(f"checkpoint not found: {ckpt}")
        map_size = tuple(place_map.manifest.model_config.get("image_size", ()))
        if image_size is not None and tuple(image_size) != map_size:
            raise MapError(f"image size {tuple(image_size)} differs from the map's {map_size}; "
                           "descriptors at other resolutions are not comparable")
        model = load_model(ckpt, device=device, image_size=map_size or None)
        place_map.check_model(model.descriptor_dim, checkpoint_hash(ckpt))
        return cls(model, place_map, estimator, top_k, belief, mode)

    def retrieve(self, descriptor: np.ndarray) -> Retrieval:
        scores, ids = self.map.search(descriptor, self.top_k)
        median, scale = self.map.score_background(descriptor)
        valid = ids[0] >= 0
        return Retrieval(ids[0][valid], scores[0][valid], float(median[0]), float(scale[0]))

    def estimate(self, retrieval: Retrieval) -> PoseEstimate:
        places = self.map.places
        return estimate_pose(retrieval.ids, retrieval.scores, places.positions[retrieval.ids],
                             places.orientations[retrieval.ids], self.estimator, retrieval.score_scale)

    def localize(self, image, color: str = "rgb", motion: Motion | None = None) -> Localization:
        """One frame; `motion` (time and/or odometry since the previous frame) feeds the filter."""
        t0 = time.perf_counter()
        desc = self.model.describe([image], color=color)
        t1 = time.perf_counter()
        return self.localize_descriptor(desc, motion, t1 - t0, t0)

    def localize_descriptor(self, descriptor: np.ndarray, motion: Motion | None = None, describe_s: float = 0.0,
                            started: float | None = None) -> Localization:
        started = time.perf_counter() if started is None else started
        retrieval = self.retrieve(descriptor)
        single, filtered = self.estimate(retrieval), None
        if self.filter is not None:
            filtered = self.filter.step(retrieval.ids, retrieval.scores, retrieval.score_scale, motion or Motion())
            interpolate_in_window(filtered, retrieval, self.map.places.positions)
        return Localization(single, filtered, self.mode, retrieval, describe_s, time.perf_counter() - started)


def interpolate_in_window(filtered: BeliefEstimate, retrieval: Retrieval, positions: np.ndarray) -> None:
    """The belief moves in whole places, so its window mean cannot fall between two mapped places; this
    frame's similarities can. Where the frame retrieved places inside the belief's window, the published
    position is their mean weighted as the single-frame estimate weighs them, exp((s - s_best) / spread)
    (KITTI, a frame between two mapped ones: 0.85 m median from the window mean, 0.26 m from the frame).
    The belief's covariance stays, so the pose is never more certain than the belief."""
    if not filtered.fix:
        return
    inside = np.isin(retrieval.ids, filtered.group)
    if not inside.any():
        return
    s = retrieval.scores[inside]
    w = np.exp((s - s.max()) / retrieval.score_scale)
    filtered.position = (w[:, None] * positions[retrieval.ids[inside]]).sum(0) / w.sum()
    filtered.position_source = "frame"
