"""Re-ranking the global top-k by the fused dense map (issue 22; Patch-NetVLAD's rapid spatial scoring).

The global descriptor pools the whole view into one vector; at night it is often nearest to a place beside
the right one. The fused dense map (the paper's multi-scale features, before NetVLAD) still says *where*
each feature is: a query and the map image of its place share many features that match mutually and move
together across the image. Each image's dense map is averaged over `pool` x `pool` cells into a grid of
unit-length features (24 x 40 x 192 at 192x320, pool 2); the query's and a candidate's are matched by
mutual nearest neighbour, and the candidate is scored by how closely the matches' displacements agree
(Hausler et al., CVPR 2021, "rapid spatial scoring"). Measured over the recipe's five checkpoints on the
held-out Gardens Point frames: night_right->day_left R@1 0.748 +- 0.057 -> 0.874 +- 0.046
(benchmarks/bench_posthoc.py --variants rerank; docs/TRAINING.md).

The re-rank decides the candidates' order only. Their confidence keeps coming from the global similarities,
on which the observation model and the open-set gate were fitted: the k scores, sorted, are handed out in
the re-ranked order, so the best score stays the best score (the gate's decision does not move) and the
estimate's weight goes to the place the dense map prefers. In the Gardens Point demo offline (the filter,
map day_left 100-199) that took 68.4 +- 4.1 fixes, 92 % within 2 frames, to 79.2 +- 3.4, 97 %, over the five
checkpoints (benchmarks/bench_filter.py). With an off-the-shelf checkpoint (`densernet init`, untrained
fusion) it added wrong filtered fixes (3 -> 9 of 100), so maps keep grids for trained checkpoints only by
default (mapping/grids.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_POOL = 2   # dense-map cells averaged per grid cell (48x80 -> 24x40 at 192x320)
DEFAULT_TOP = 10   # global candidates re-ranked (fixed before the first measurement, as the SIFT trial's)


@dataclass(frozen=True)
class RerankConfig:
    """`top`: how many of the global top-k the dense map re-orders (at most the localizer's top_k)."""

    top: int = DEFAULT_TOP

    def __post_init__(self) -> None:
        if not isinstance(self.top, int) or isinstance(self.top, bool) or self.top < 2:
            raise ValueError(f"rerank top must be an integer >= 2 (re-ranking one candidate changes nothing), "
                             f"got {self.top!r}")


def grid_shape(dense_hw: tuple[int, int], pool: int = DEFAULT_POOL) -> tuple[int, int]:
    """The pooled grid's (height, width) for a dense map of (h, w)."""
    return dense_hw[0] // pool, dense_hw[1] // pool


def dense_grid(dense: np.ndarray, pool: int = DEFAULT_POOL, dtype=np.float32) -> np.ndarray:
    """A C x h x w fused map as (h/pool * w/pool) x C unit rows, row-major over the pooled grid."""
    if dense.ndim != 3:
        raise ValueError(f"a dense map is C x h x w, got shape {dense.shape}")
    c, h, w = dense.shape
    if h < pool or w < pool:
        raise ValueError(f"a {h}x{w} dense map is smaller than one {pool}x{pool} pooling cell")
    pooled = dense[:, :h - h % pool, :w - w % pool].reshape(c, h // pool, pool, w // pool, pool).mean(axis=(2, 4))
    rows = pooled.reshape(c, -1).T.astype(dtype)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), np.finfo(dtype).tiny)


def spatial_score(query: np.ndarray, candidate: np.ndarray, width: int, height: int) -> tuple[int, float]:
    """(mutual nearest neighbours of two grids' features, their rapid spatial score): the score rewards
    matches whose displacement is near the matches' mean displacement, per axis, relative to the grid's
    size; a common shift of every match scores 2 per match. Computed in the grids' dtype."""
    sim = query @ candidate.T
    ab, ba = sim.argmax(axis=1), sim.argmax(axis=0)
    mutual = np.flatnonzero(ba[ab] == np.arange(len(query)))
    if len(mutual) < 2:
        return len(mutual), 0.0
    qy, qx = np.divmod(mutual, width)
    dy, dx = np.divmod(ab[mutual], width)
    ex, ey = dx - qx, dy - qy
    ex, ey = np.abs(ex - ex.mean()), np.abs(ey - ey.mean())
    score = (np.maximum(0.0, width - ex) ** 2).sum() / width ** 2 + (np.maximum(0.0, height - ey) ** 2).sum() / height ** 2
    return len(mutual), float(score)


def rerank_order(query: np.ndarray, candidates: np.ndarray, grid_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(the candidates' order by spatial score, best first, ties kept in the given order; the scores).
    `query`: cells x C; `candidates`: k x cells x C, in the global ranking's order."""
    if candidates.ndim != 3 or query.ndim != 2 or candidates.shape[1:] != query.shape:
        raise ValueError(f"the query's grid {query.shape} does not match the map's grids {candidates.shape[1:]} "
                         "(a map's grids come from the same model at the same image size)")
    height, width = grid_hw
    if height * width != len(query):
        raise ValueError(f"a {height}x{width} grid has {height * width} cells, the query's has {len(query)}")
    scores = np.array([spatial_score(query, np.asarray(c, dtype=query.dtype), width, height)[1] for c in candidates])
    return np.argsort(-scores, kind="stable"), scores
