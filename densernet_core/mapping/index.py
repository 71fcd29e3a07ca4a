"""Search over a map's descriptors (unit norm, so inner product = cosine similarity).

`flat` (the default) is exact: every place is scored against the stored descriptors. A 12,288-D
float16 map of 10k places is 246 MB, more than one scan per frame can read from memory in 10 ms
on a small CPU, so the scan runs first over int8 codes (one scale per place; torch's int8 weight
kernel) and then re-scores exactly every place whose int8 score, widened by a proven error bound,
could still reach the top k. The answer is the exact top k of the stored descriptors, not an
approximation of it.

`hnsw` and `ivfpq` are for maps too large for a scan (hundreds of thousands of places and up):
a FAISS index over a 256-D projection of the descriptors (their top singular directions, from a
sample of the map) proposes a shortlist, and the shortlist is re-scored exactly against the
stored descriptors, which may stay memory-mapped on disk. Figures in docs/BENCHMARKS.md.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

LOG = logging.getLogger("densernet")
INDEX_TYPES = ("flat", "hnsw", "ivfpq")
# int8 pre-scan only where a plain fp32 scan costs more than this many multiply-adds per query.
INT8_MIN_ELEMENTS = 1 << 22
INT8_MAX = 127
BF16_UNIT_ROUNDOFF = 2.0 ** -8
FP32_UNIT_ROUNDOFF = 2.0 ** -24
# Above this share of the map needing exact re-scoring, scoring all of it is as cheap.
RESCORE_ALL_FRACTION = 0.25
QUERY_CHUNK = 64  # queries per int8 call (bounds the score matrix's memory)
SCAN_ROWS = 2048  # stored rows converted to fp32 at a time in a full exact scan
# Approximate indexes: coarse projection, shortlist, FAISS parameters.
COARSE_DIM = 256
COARSE_FIT_SAMPLES = 20000
COARSE_POWER_ITERATIONS = 2
COARSE_OVERSAMPLE = 32
SHORTLIST = 1000
HNSW_M = 32
HNSW_EF_SEARCH = 1024
IVF_POINTS_PER_LIST = 39   # FAISS wants >= 39 training points per list
IVF_MAX_LISTS = 4096
IVF_NPROBE = 64
PQ_BITS = 8
IVF_TRAIN_SAMPLES = 200000


class ExactIndex:
    """Exact top-k inner products against stored descriptors (float16 or float32), int8-accelerated."""

    def __init__(self, descriptors: np.ndarray) -> None:
        ref = np.ascontiguousarray(descriptors)
        self.ref = torch.from_numpy(ref if ref.flags.writeable else ref.copy())  # torch wants writable memory
        if self.ref.ndim != 2 or self.ref.dtype not in (torch.float16, torch.float32):
            raise ValueError(f"descriptors must be N x D float16/float32, got {tuple(self.ref.shape)} {self.ref.dtype}")
        self.codes: torch.Tensor | None = None
        if self.ref.numel() >= INT8_MIN_ELEMENTS and hasattr(torch, "_weight_int8pack_mm"):
            self._quantise()

    @property
    def ntotal(self) -> int:
        return self.ref.shape[0]

    @property
    def d(self) -> int:
        return self.ref.shape[1]

    def _quantise(self) -> None:
        x = self.ref.float()
        scale = x.abs().amax(dim=1).clamp_min(1e-12) / INT8_MAX
        codes = torch.round(x / scale[:, None]).to(torch.int8)
        dequant = codes.float() * scale[:, None]
        self.scale = scale
        self.residual_norm = (x - dequant).norm(dim=1)  # |x - s c|: bounds the int8 score's error
        self.dequant_norm = dequant.norm(dim=1)
        self.codes = codes.contiguous()
        self._ones = torch.ones(self.ntotal, dtype=torch.bfloat16)
        if not self._bound_holds(x[:256]):
            LOG.warning("int8 scores broke their error bound on this torch build; exact map search scans in fp32")
            self.codes = None

    def _int8_scores(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores from the int8 codes and a bound on their distance from the exact ones (both M x N)."""
        q16 = q.to(torch.bfloat16)
        raw = torch._weight_int8pack_mm(q16, self.codes, self._ones).float()  # sum_i q~_i c_ji, rounded to bf16
        approx = raw * self.scale[None, :]
        qn = q.norm(dim=1, keepdim=True)
        q16n = q16.float().norm(dim=1, keepdim=True)
        dn = self.dequant_norm[None, :]
        # |q.e_j| (int8 rounding) + bf16 query rounding + fp32 accumulation + bf16 output rounding.
        bound = (qn * self.residual_norm[None, :] + BF16_UNIT_ROUNDOFF * qn * dn
                 + self.d * FP32_UNIT_ROUNDOFF * q16n * dn + 2 * BF16_UNIT_ROUNDOFF * approx.abs())
        return approx, bound

    def _bound_holds(self, sample: torch.Tensor) -> bool:
        q = torch.nn.functional.normalize(sample[:8] + sample[8:16].flip(0), dim=1) if len(sample) >= 16 else sample
        approx, bound = self._int8_scores(q)
        exact = q @ self.ref.float().T
        return bool(((approx - exact).abs() <= bound).all())

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = torch.from_numpy(np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32))
        k = min(k, self.ntotal)
        scores = np.empty((len(q), k), np.float32)
        ids = np.empty((len(q), k), np.int64)
        for s in range(0, len(q), QUERY_CHUNK):
            chunk = q[s:s + QUERY_CHUNK]
            if self.codes is None:
                top = torch.topk(self._scan(chunk), k, dim=1)
                scores[s:s + len(chunk)], ids[s:s + len(chunk)] = top.values.numpy(), top.indices.numpy()
                continue
            approx, bound = self._int8_scores(chunk)
            floor = torch.topk(approx - bound, k, dim=1).values[:, -1:]  # the k-th best score is at least this
            maybe = approx + bound >= floor
            for r in range(len(chunk)):
                cand = torch.nonzero(maybe[r]).squeeze(1)
                if len(cand) > RESCORE_ALL_FRACTION * self.ntotal:
                    exact, cand = self._scan(chunk[r:r + 1])[0], torch.arange(self.ntotal)
                else:
                    exact = self.ref.index_select(0, cand).float() @ chunk[r]
                top = torch.topk(exact, k)
                scores[s + r], ids[s + r] = top.values.numpy(), cand[top.indices].numpy()
        return scores, ids

    def _scan(self, q: torch.Tensor) -> torch.Tensor:
        """Exact scores of M queries against every place (M x N), converting stored rows piecewise."""
        return torch.cat([q @ self.ref[s:s + SCAN_ROWS].float().T for s in range(0, self.ntotal, SCAN_ROWS)], dim=1)


class ShortlistIndex:
    """A FAISS index over projected descriptors proposes places; the stored descriptors decide."""

    def __init__(self, coarse, projection: np.ndarray | None, descriptors: np.ndarray,
                 shortlist: int = SHORTLIST) -> None:
        self.coarse = coarse  # on the CPU (saved as is); searched through a GPU copy when there is one
        self._coarse_search, self._gpu_resources = to_gpu_if_available(coarse)
        self.projection = projection  # D x d float32, or None for a coarse index over the descriptors
        self.ref = descriptors  # N x D, may be a read-only memory map
        self.shortlist = shortlist

    @property
    def ntotal(self) -> int:
        return self.ref.shape[0]

    @property
    def d(self) -> int:
        return self.ref.shape[1]

    def project(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return x if self.projection is None else np.ascontiguousarray(x @ self.projection)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = min(k, self.ntotal)
        _, cand = self._coarse_search.search(self.project(q), min(max(self.shortlist, k), self.ntotal))
        scores = np.full((len(q), k), -np.inf, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        for r, row in enumerate(cand):
            row = np.unique(row[row >= 0])  # sorted: memory-mapped rows are read in file order
            exact = np.asarray(self.ref[row], dtype=np.float32) @ q[r]
            order = np.argsort(-exact, kind="stable")[:k]
            scores[r, :len(order)], ids[r, :len(order)] = exact[order], row[order]
        return scores, ids


def coarse_projection(descriptors: np.ndarray, dim: int = COARSE_DIM, seed: int = 0) -> np.ndarray | None:
    """Top right-singular directions of a sample of the map (randomised SVD); None if D <= dim."""
    n, d = descriptors.shape
    if d <= dim:
        return None
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, min(n, COARSE_FIT_SAMPLES), replace=False))
    x = torch.from_numpy(np.asarray(descriptors[rows], dtype=np.float32))
    omega = torch.from_numpy(rng.standard_normal((d, dim + COARSE_OVERSAMPLE)).astype(np.float32))
    y = x @ omega
    for _ in range(COARSE_POWER_ITERATIONS):
        y = x @ (x.T @ torch.linalg.qr(y).Q)
    basis = torch.linalg.qr(y).Q  # n x (dim + oversample), spans X's top left directions
    _, _, vh = torch.linalg.svd(basis.T @ x, full_matrices=False)
    return np.ascontiguousarray(vh[:dim].T.numpy(), dtype=np.float32)


def build_coarse(projected: np.ndarray, kind: str):
    import faiss

    x = np.ascontiguousarray(projected, dtype=np.float32)
    n, d = x.shape
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = HNSW_EF_SEARCH
    elif kind == "ivfpq":
        if n < 2 ** PQ_BITS:
            raise ValueError(f"ivfpq needs at least {2 ** PQ_BITS} places to train, got {n}; use 'flat'")
        nlist = int(max(1, min(IVF_MAX_LISTS, n // IVF_POINTS_PER_LIST, 4 * int(np.sqrt(n)))))
        m = next(m for m in (64, 32, 16, 8, 4, 2, 1) if d % m == 0 and m <= d)
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, m, PQ_BITS, faiss.METRIC_INNER_PRODUCT)
        # Small maps give each sub-quantizer fewer than FAISS's preferred 39 points per code;
        # accepted (the exact re-ranking decides) rather than warned 64 times.
        index.pq.cp.min_points_per_centroid = 1
        train = x if n <= IVF_TRAIN_SAMPLES else x[np.sort(np.random.default_rng(0).choice(n, IVF_TRAIN_SAMPLES, replace=False))]
        index.train(train)
        index.nprobe = min(IVF_NPROBE, nlist)
    else:
        raise ValueError(f"no coarse index of type {kind!r}")
    index.add(x)
    return index


def build_index(descriptors: np.ndarray, kind: str = "flat") -> ExactIndex | ShortlistIndex:
    if kind not in INDEX_TYPES:
        raise ValueError(f"index type {kind!r} unknown; choose one of {INDEX_TYPES}")
    if kind == "flat":
        return ExactIndex(descriptors)
    projection = coarse_projection(descriptors)
    projected = np.concatenate([np.asarray(descriptors[s:s + 65536], dtype=np.float32) @ projection
                                if projection is not None else np.asarray(descriptors[s:s + 65536], dtype=np.float32)
                                for s in range(0, len(descriptors), 65536)])
    return ShortlistIndex(build_coarse(projected, kind), projection, descriptors)


def to_gpu_if_available(index):
    """(index to search, GPU resources to keep alive): a GPU copy of a FAISS index when faiss-gpu and a
    CUDA device exist and the index has a GPU form (HNSW has none); else the index itself. A copy the
    GPU refuses (an IVF-PQ code size its kernels lack, no memory) leaves the search on the CPU."""
    import faiss

    if not (hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0) or isinstance(index, faiss.IndexHNSW):
        return index, None
    resources = faiss.StandardGpuResources()
    try:
        gpu = faiss.index_cpu_to_gpu(resources, 0, index)
    except RuntimeError as exc:
        LOG.warning("FAISS could not copy the %s index to the GPU (%s); searching it on the CPU",
                    type(index).__name__, str(exc).splitlines()[0])
        return index, None
    LOG.info("searching the %s index on the GPU (faiss-gpu)", type(index).__name__)
    return gpu, resources


def save_index(index: ExactIndex | ShortlistIndex, folder: Path, index_file: str, projection_file: str) -> None:
    """An exact index is derived from the descriptors (nothing to save); a shortlist index saves its parts."""
    import faiss

    if isinstance(index, ShortlistIndex):
        faiss.write_index(index.coarse, str(folder / index_file))
        if index.projection is not None:
            np.save(folder / projection_file, index.projection, allow_pickle=False)


def load_coarse(path: Path):
    import faiss

    if not path.is_file():
        raise FileNotFoundError(f"index file not found: {path}")
    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        raise ValueError(f"{path}: corrupt FAISS index ({str(exc).splitlines()[0]})") from exc
