"""FAISS indexes over unit-norm descriptors (inner product = cosine similarity).

`flat` is exact and the default; `hnsw` and `ivfpq` trade a little recall for speed and memory
on large maps (figures in docs/BENCHMARKS.md). A GPU copy is used when faiss-gpu and CUDA are
present; results are the same.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

LOG = logging.getLogger("densernet")
INDEX_TYPES = ("flat", "hnsw", "ivfpq")
HNSW_M = 32
HNSW_EF_SEARCH = 128
IVF_POINTS_PER_LIST = 39   # FAISS wants >= 39 training points per list
IVF_MAX_LISTS = 4096
IVF_NPROBE = 16
PQ_BITS = 8


def build_index(descriptors: np.ndarray, kind: str = "flat"):
    import faiss

    if kind not in INDEX_TYPES:
        raise ValueError(f"index type {kind!r} unknown; choose one of {INDEX_TYPES}")
    x = np.ascontiguousarray(descriptors, dtype=np.float32)
    n, d = x.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        nlist = int(max(1, min(IVF_MAX_LISTS, n // IVF_POINTS_PER_LIST, 4 * int(np.sqrt(n)))))
        m = next(m for m in (64, 32, 16, 8, 4, 2, 1) if d % m == 0 and m <= d)
        if n < 2 ** PQ_BITS:
            raise ValueError(f"ivfpq needs at least {2 ** PQ_BITS} descriptors to train, got {n}; use 'flat'")
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, m, PQ_BITS, faiss.METRIC_INNER_PRODUCT)
        # Maps under ~10k places give each sub-quantizer fewer than FAISS's preferred 39 points per
        # code; accepted (recall agreement in docs/BENCHMARKS.md) rather than warned 64 times.
        index.pq.cp.min_points_per_centroid = 1
        index.train(x)
        index.nprobe = min(IVF_NPROBE, nlist)
    index.add(x)
    return index


def to_gpu_if_available(index):
    """A GPU copy of an exact index when faiss-gpu and a CUDA device exist; else the index itself."""
    import faiss

    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0 and isinstance(index, faiss.IndexFlat):
        LOG.info("using a FAISS GPU index")
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    return index


def save_index(index, path: Path) -> None:
    import faiss

    faiss.write_index(index, str(path))


def load_index(path: Path):
    import faiss

    if not path.is_file():
        raise FileNotFoundError(f"index file not found: {path}")
    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        raise ValueError(f"{path}: corrupt FAISS index ({str(exc).splitlines()[0]})") from exc
