"""Recall@N as a pure function of descriptors and ground truth (no model, no files)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

DEFAULT_NS = (1, 5, 10, 20)


def search(db: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k (descriptors are unit-norm, so this is cosine)."""
    import faiss

    if db.shape[1] != queries.shape[1]:
        raise ValueError(f"descriptor size mismatch: database {db.shape[1]}, queries {queries.shape[1]}")
    index = faiss.IndexFlatIP(db.shape[1])
    index.add(np.ascontiguousarray(db, dtype=np.float32))
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, db.shape[0]))
    return scores, ids


def recall_at_n(ranked: np.ndarray, positives: Sequence[Sequence[int]], ns: Sequence[int] = DEFAULT_NS
                ) -> dict[int, float]:
    """Fraction of queries with a true positive among the first n retrieved, for each n.

    Queries with no positive at all in the database are excluded (the usual protocol).
    """
    hits = {n: 0 for n in ns}
    counted = 0
    for row, pos in zip(ranked, positives):
        pos = set(int(p) for p in pos)
        if not pos:
            continue
        counted += 1
        first = next((i for i, r in enumerate(row) if int(r) in pos), None)
        for n in ns:
            hits[n] += first is not None and first < n
    if counted == 0:
        raise ValueError("no query has a positive in the database")
    return {n: hits[n] / counted for n in ns}


def recall_curve(ranked: np.ndarray, positives: Sequence[Sequence[int]]) -> np.ndarray:
    """Recall@n for n = 1..k (for plots)."""
    return np.array([recall_at_n(ranked, positives, [n])[n] for n in range(1, ranked.shape[1] + 1)])
