"""Training tuples from positions only (weak supervision), as NetVLAD/OpenIBL mine them.

Positives are database images within `pos_radius` of the query; negatives are those beyond
`neg_radius` (images in between are neither). Which positive and which negatives are used is
decided in descriptor space: the positive nearest to the query (or, with `each_source`, the nearest
within one other traversal, the traversal taken in turn), and the hardest of a random sample of
negatives together with the previous round's hard negatives.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

POSITIVE_CHOICES = ("nearest", "each_source")  # mining.positive


def within(query_pos: np.ndarray, db_pos: np.ndarray, radius: float) -> list[np.ndarray]:
    """Database indices within `radius` (metres, or frames) of each query, sorted."""
    tree = cKDTree(np.asarray(db_pos, dtype=np.float64))
    return [np.array(sorted(ids), dtype=np.int64)
            for ids in tree.query_ball_point(np.asarray(query_pos, dtype=np.float64), r=radius)]


def positives(query_pos: np.ndarray, db_pos: np.ndarray, radius: float,
              query_groups: np.ndarray | None = None, db_groups: np.ndarray | None = None,
              other_group_only: bool = False, query_db_ids: np.ndarray | None = None) -> list[np.ndarray]:
    """Positives per query; never the query image itself (`query_db_ids`: its index in the database or -1).

    `other_group_only` keeps positives from other traversals (groups), so a positive teaches a
    change of condition rather than the neighbouring frame of the same run.
    """
    out = within(query_pos, db_pos, radius)
    for qi, ids in enumerate(out):
        keep = np.ones(len(ids), dtype=bool)
        if query_db_ids is not None and query_db_ids[qi] >= 0:
            keep &= ids != query_db_ids[qi]
        if other_group_only:
            if query_groups is None or db_groups is None:
                raise ValueError("other_group_only needs query_groups and db_groups")
            keep &= np.asarray(db_groups)[ids] != query_groups[qi]
        out[qi] = ids[keep]
    return out


def negative_pools(query_pos: np.ndarray, db_pos: np.ndarray, neg_radius: float) -> list[np.ndarray]:
    """Database indices that are valid negatives (strictly beyond `neg_radius`) for each query."""
    near = within(query_pos, db_pos, neg_radius)
    everything = np.arange(len(db_pos))
    return [np.setdiff1d(everything, ids, assume_unique=True) for ids in near]


@dataclass
class TupleMiner:
    """Chooses (positive, negatives) per query from a cache of current descriptors."""

    pos: list[np.ndarray]
    neg_pool: list[np.ndarray]
    num_negatives: int = 10
    negative_samples: int = 1000
    seed: int = 0
    positive: str = "nearest"  # one of POSITIVE_CHOICES
    db_groups: np.ndarray | None = None  # each database image's traversal (needed by "each_source")
    previous: dict[int, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.pos) != len(self.neg_pool):
            raise ValueError("positives and negative pools must have one entry per query")
        if self.positive not in POSITIVE_CHOICES:
            raise ValueError(f"positive choice {self.positive!r} unknown; choose one of {list(POSITIVE_CHOICES)}")
        if self.positive == "each_source" and self.db_groups is None:
            raise ValueError("positive choice 'each_source' needs each database image's traversal (db_groups)")
        if self.db_groups is not None:
            self.db_groups = np.asarray(self.db_groups)
        self.rng = np.random.default_rng(self.seed)
        # each query's first source in the rotation, drawn once so that a resumed run rotates as before
        self.turn = np.random.default_rng([self.seed, len(self.pos)]).integers(0, 1 << 30, len(self.pos))

    def usable(self) -> np.ndarray:
        """Queries with at least one positive and enough negatives."""
        return np.array([i for i in range(len(self.pos))
                         if len(self.pos[i]) and len(self.neg_pool[i]) >= self.num_negatives], dtype=np.int64)

    def mine(self, query: int, q_desc: np.ndarray, db_desc: np.ndarray, epoch: int = 0) -> tuple[int, np.ndarray]:
        """Best positive (nearest in descriptor space) and the hardest negatives for one query.

        "nearest" lets the easiest other traversal win nearly every time: with Gardens Point's three, a
        night_right query's nearest positive is a day_right frame 89-90 times in 100, and a day_left query's
        is never a night_right frame. "each_source" takes the query's traversals with a positive in turn,
        one per epoch, so every pair of conditions is trained."""
        pos = self.pos[query]
        if len(pos) == 0:
            raise ValueError(f"query {query} has no positive within the radius")
        if self.positive == "each_source":
            groups = self.db_groups[pos]
            sources = np.unique(groups)
            pos = pos[groups == sources[(self.turn[query] + epoch) % len(sources)]]
        sims = db_desc[pos] @ q_desc
        best_pos = int(pos[int(np.argmax(sims))])
        pool = self.neg_pool[query]
        if len(pool) < self.num_negatives:
            raise ValueError(f"query {query} has {len(pool)} negatives, {self.num_negatives} needed")
        sample = self.rng.choice(pool, size=min(self.negative_samples, len(pool)), replace=False)
        candidates = np.unique(np.concatenate([sample, self.previous.get(query, np.zeros(0, np.int64))]))
        neg_sims = db_desc[candidates] @ q_desc
        hardest = candidates[np.argsort(-neg_sims, kind="stable")[: self.num_negatives]]
        self.previous[query] = hardest
        return best_pos, hardest
