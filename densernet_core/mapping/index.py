"""Search over a map's descriptors (unit norm, so inner product = cosine similarity).

`flat` is exact (what `auto`, the default, picks up to `EXACT_MAX_PLACES`): every place is scored
against the stored descriptors. A 12,288-D
float16 map of 10k places is 246 MB, more than one scan per frame can read from memory in 10 ms
on a small CPU, so the scan runs first over int8 codes (one scale per place; torch's int8 weight
kernel) and then re-scores exactly every place whose int8 score, widened by a proven error bound,
could still reach the top k. The answer is the exact top k of the stored descriptors, not an
approximation of it.

`compact` is for maps too large for a scan (tens of thousands of places and up; `auto` picks it above
`EXACT_MAX_PLACES`): the descriptors are projected onto the top 512 singular
directions of the map's own descriptors (fitted on >= 10 places per kept dimension; a random
orthogonal projection, recorded as such, for a map too small for that), an inverted file over the
projections with 8-bit codes (512 B per place, in RAM, memory-mapped from index.faiss so that
nodes on one machine share its pages) proposes places, and the best `COMPACT_RERANK` of them are
re-scored exactly against the stored float16 descriptors (memory-mapped; a few dozen rows read per
query). Between the two, on maps large enough to fit it (`REFINE_MIN_PLACES`), product-quantisation
codes of the full descriptors (`RefineCodes`: 12 dimensions per 8-bit code, memory-mapped) rank the
inverted file's best `REFINE_SHORTLIST` places: on real night queries among look-alike distractors the
projection alone lost exact search's top-1 for a third of the queries, since a night query keeps less
of its energy in the map's top directions than the mapped places do (docs/BENCHMARKS.md, *Real
queries in a haystack*). The projection's provenance is kept in the map's manifest (`Projection`).

`hnsw` and `ivfpq` (a 256-D projection, a shortlist of 1000 re-read from disk) are what large maps
used before `compact`; such maps still load and search as they were built. Figures in
docs/BENCHMARKS.md.
"""
from __future__ import annotations

import logging
import os
import time
import warnings
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from mmap import PAGESIZE
from pathlib import Path

import numpy as np
import torch

LOG = logging.getLogger("densernet")
INDEX_TYPES = ("auto", "flat", "compact", "hnsw", "ivfpq")  # what a manifest may name
BUILD_TYPES = ("auto", "flat", "compact")  # what `densernet-map build --index` offers
# auto: exact search up to this many places (20k: p50 7.7 ms, p95 9.2 ms on 2 cores, docs/BENCHMARKS.md),
# the compact index above it.
EXACT_MAX_PLACES = 20000
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
IVF_LISTS_PER_SQRT = 4  # inverted lists = this * floor(sqrt(places)), within [1, IVF_MAX_LISTS]
IVF_NPROBE = 64
PQ_BITS = 8
IVF_TRAIN_SAMPLES = 200000
# Compact index: projection, inverted file with 8-bit codes, exact re-ranking of its best places.
COMPACT_DIM = 512
SAMPLES_PER_DIM = 10  # fit a projection only on >= this many places per kept dimension (docs/TRAINING.md)
COMPACT_FIT_SAMPLES = 50000  # places the singular directions are fitted on (at most)
ENERGY_SAMPLES = 4096  # places the kept share of the descriptors' energy is measured on (for the provenance)
COMPACT_RERANK = 32  # places re-scored exactly per query (read from the stored descriptors)
COMPACT_NPROBE = 128  # 64 lists kept exact search's top-1 among the best 1000 for 93 of 100 night queries, 128: 97
# The refining stage: product quantisation of the full descriptors, 12 dimensions per 8-bit code where D
# allows (12,288-D: 1,024 B per place; 8 dimensions kept top-1 for one night query more of 100 at 1,536 B,
# past the 2 KB a place may hold in RAM), ranking the inverted file's best REFINE_SHORTLIST down to COMPACT_RERANK.
REFINE_SUBVECTOR_DIMS = (12, 8, 16, 4, 2, 1)  # the first that divides D
REFINE_BITS = 8
REFINE_SHORTLIST = 1000
REFINE_MIN_PLACES = IVF_POINTS_PER_LIST * 2 ** REFINE_BITS  # FAISS's 39 training points per code
REFIT_GROWTH = 2.0  # `add` refits the projection once the map has grown this much beyond what it was fitted on
PROJECT_ROWS = 16384  # descriptors projected at a time while building
# A query's int8 projection off by more than this (relative) falls back to float32: a broken kernel, not
# rounding (about 0.014 on a map's 12,288 x 512 projection).
PROJECTION_INT8_MAX_ERROR = 0.05
# Fewer queries than this are searched one at a time: split over queries (FAISS's default), a single query
# gains nothing from more threads, and they spin for the cores torch's threads need (on 2 cores with another
# process busy: 8 ms per search instead of 1.3 ms). An inverted file on the CPU can split one query's probed
# lists between SINGLE_QUERY_THREADS instead (FAISS's parallel_mode 1); 2 were tried at 1M places, one query a
# frame after a torch burst (benchmarks/bench_search_threads.py): 5.8 ms p50 against 6.4-7.5 on one thread,
# but 40 ms against 12-15 with another process busy on one of the 2 cores, as on a robot. So one.
FAISS_PARALLEL_QUERIES = 8
SINGLE_QUERY_THREADS = 1


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

    def memory_bytes(self) -> int:
        """What searching holds in RAM: the descriptors, and their int8 codes with 3 floats and a bf16 one per place."""
        codes = 0 if self.codes is None else self.codes.numel() + self.ntotal * (3 * 4 + 2)
        return self.ref.numel() * self.ref.element_size() + codes

    def _scan(self, q: torch.Tensor) -> torch.Tensor:
        """Exact scores of M queries against every place (M x N), converting stored rows piecewise."""
        return torch.cat([q @ self.ref[s:s + SCAN_ROWS].float().T for s in range(0, self.ntotal, SCAN_ROWS)], dim=1)


@dataclass
class Projection:
    """Where a compact index's projection came from, kept in the map's manifest: what its search was
    fitted on, and when `densernet-map add` fits it anew."""
    method: str  # "pca": the top singular directions of the map's descriptors; "random-orthogonal"; "none"
    dim: int
    fitted_places: int  # places in the map when the projection was fitted
    sample_rows: int  # descriptors the directions were computed from
    seed: int
    energy_kept: float  # share of the descriptors' squared norm the projection keeps (on ENERGY_SAMPLES places)
    created: str
    lists: int  # inverted lists
    nprobe: int  # lists searched per query
    rerank: int  # places re-scored exactly per query
    refine: str = "none"  # "pq<M>x<bits>": product-quantisation codes of the full descriptors rank the lists' best
    refine_shortlist: int = 0  # places the inverted file proposes to that stage

    @classmethod
    def from_dict(cls, raw: dict) -> "Projection":
        try:
            return cls(**raw)
        except TypeError as exc:
            raise ValueError(f"projection record {raw!r} is not one this densernet writes ({exc})") from exc

    def refit_at(self) -> int:
        """The map size at which `add` fits the projection anew: when the map first has enough places for
        a fitted one, or has grown REFIT_GROWTH times beyond the places it was fitted on."""
        if self.method == "random-orthogonal":
            return SAMPLES_PER_DIM * self.dim
        return int(np.ceil(REFIT_GROWTH * self.fitted_places))

    def describe(self) -> str:
        how = {"pca": f"top {self.dim} singular directions of {self.sample_rows} of the map's {self.fitted_places} "
                      f"places ({100 * self.energy_kept:.1f} % of their energy)",
               "random-orthogonal": f"random orthogonal to {self.dim}-D (seed {self.seed}; the map had "
                                    f"{self.fitted_places} places, a fit needs {SAMPLES_PER_DIM * self.dim})",
               "none": f"none (the descriptors are {self.dim}-D)"}[self.method]
        refine = ("" if self.refine == "none" else
                  f"; best {self.refine_shortlist} ranked by {self.refine} codes of the full descriptors")
        return (f"projection: {how}, {self.created}; refitted by `add` at {self.refit_at()} places\n"
                f"compact index: {self.lists} lists, {self.nprobe} searched, 8-bit codes{refine}; best {self.rerank} "
                f"re-scored exactly")


class RefineCodes:
    """Product-quantisation codes of the full descriptors (N x M uint8, may be memory-mapped) and their
    quantiser: a shortlist ranked by the asymmetric inner product, in RAM, before any row is read from disk."""

    def __init__(self, pq, codes: np.ndarray) -> None:
        self.pq = pq  # faiss.ProductQuantizer
        self.codes = codes

    @property
    def name(self) -> str:
        return f"pq{self.pq.M}x{self.pq.nbits}"

    @classmethod
    def fit(cls, sample: np.ndarray) -> "RefineCodes":
        import faiss

        d = sample.shape[1]
        m = d // next(k for k in REFINE_SUBVECTOR_DIMS if d % k == 0)
        pq = faiss.ProductQuantizer(d, m, REFINE_BITS)
        pq.cp.min_points_per_centroid = 1  # a map of REFINE_MIN_PLACES has FAISS's 39 per code; fewer accepted
        pq.train(np.ascontiguousarray(sample, dtype=np.float32))
        return cls(pq, np.empty((0, m), np.uint8))

    def encode(self, descriptors: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(descriptors, dtype=np.float32)
        return self.pq.compute_codes(x) if len(x) else np.empty((0, self.pq.code_size), np.uint8)

    def add(self, codes: np.ndarray) -> None:
        self.codes = np.concatenate([np.asarray(self.codes), codes]) if len(self.codes) else codes

    def top(self, query: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
        """The k of the candidate places (sorted ids) whose codes score highest against one query."""
        import faiss

        k = min(k, len(candidates))
        if k == len(candidates):
            return candidates
        sub = np.ascontiguousarray(self.codes[candidates])
        scores, where = np.empty(k, np.float32), np.empty(k, np.int64)
        heap = faiss.float_minheap_array_t()
        heap.nh, heap.k, heap.val, heap.ids = 1, k, faiss.swig_ptr(scores), faiss.swig_ptr(where)
        q = np.ascontiguousarray(query, dtype=np.float32)
        self.pq.search_ip(faiss.swig_ptr(q), 1, faiss.swig_ptr(sub), len(sub), heap, True)
        return candidates[where[where >= 0]]

    def memory_bytes(self) -> int:
        return int(self.codes.nbytes) + self.pq.centroids.size() * 4  # float32 centroids

    def save(self, folder: Path, quantiser_file: str, codes_file: str) -> None:
        import faiss

        faiss.write_ProductQuantizer(self.pq, str(folder / quantiser_file))
        np.save(folder / codes_file, np.asarray(self.codes), allow_pickle=False)

    @classmethod
    def load(cls, folder: Path, quantiser_file: str, codes_file: str, places: int, dim: int) -> "RefineCodes":
        """The codes memory-mapped; ValueError naming the file when one is missing, corrupt, or not for this map."""
        import faiss

        qpath, cpath = folder / quantiser_file, folder / codes_file
        for path in (qpath, cpath):
            if not path.is_file():
                raise ValueError(f"{path} missing (the compact index's refining codes)")
        try:
            pq = faiss.read_ProductQuantizer(str(qpath))
        except RuntimeError as exc:
            raise ValueError(f"{qpath}: corrupt product quantiser ({str(exc).splitlines()[0]})") from exc
        if pq.d != dim:
            raise ValueError(f"{qpath}: a quantiser of {pq.d}-D descriptors, the map's are {dim}-D")
        try:
            codes = np.load(cpath, allow_pickle=False, mmap_mode="r")
        except (ValueError, OSError, EOFError) as exc:
            raise ValueError(f"{cpath}: corrupt codes ({exc})") from exc
        read_ahead(cpath)
        if codes.dtype != np.uint8 or codes.shape != (places, pq.code_size):
            raise ValueError(f"{cpath}: {codes.dtype} {codes.shape}, expected uint8 ({places}, {pq.code_size})")
        map_in(codes)
        return cls(pq, codes)


class QueryProjection:
    """A compact index's projection as queries use it: int8 weights with one scale per output dimension
    (torch's int8 weight kernel, bfloat16 query). It is the largest thing a query reads (12,288 x 512: 25 MB
    in float32), and after the network's pass it comes from memory, not the CPU's caches: 0.85 ms per query
    in float32, 0.25 ms in int8 (1M map, docs/BENCHMARKS.md). The int8 weights move a query's projection by
    about 1.4 % of its norm, which the inverted file's shortlist of 1,000 absorbs (night queries on the 100k
    haystack: exact search's top-1 kept for the same 97 of 100). Through torch either way: numpy's BLAS pool
    beside torch's made the projection 7 ms instead of 1.2 ms (2 cores, another process busy on one)."""

    def __init__(self, projection: np.ndarray) -> None:
        with warnings.catch_warnings():  # a read-only memory map: torch only reads it
            warnings.simplefilter("ignore", UserWarning)
            self.float32 = torch.from_numpy(np.asarray(projection))  # D x d, the map's file
        self.codes: torch.Tensor | None = None
        if hasattr(torch, "_weight_int8pack_mm"):
            weights = self.float32.T.contiguous()  # d x D
            self.scale = (weights.abs().amax(dim=1).clamp_min(1e-12) / INT8_MAX).to(torch.bfloat16)
            # in place: one float copy of the weights at a time (25 MB at 12,288 x 512), not four
            self.codes = weights.div_(self.scale.float()[:, None]).round_().clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
            probe = torch.nn.functional.normalize(torch.randn(4, weights.shape[1], generator=torch.Generator().manual_seed(0)), dim=1)
            exact = probe @ self.float32
            error = (self._int8(probe) - exact).norm() / exact.norm().clamp_min(1e-12)
            if not error <= PROJECTION_INT8_MAX_ERROR:
                LOG.warning("int8 query projection off by %.3f (relative) on this torch build; queries are projected "
                            "in float32", float(error))
                self.codes = None

    def _int8(self, x: torch.Tensor) -> torch.Tensor:
        return torch._weight_int8pack_mm(x.to(torch.bfloat16), self.codes, self.scale).float()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        q = torch.from_numpy(x)
        return (q @ self.float32 if self.codes is None else self._int8(q)).numpy()

    @property
    def nbytes(self) -> int:
        """What projecting a query reads."""
        if self.codes is None:
            return self.float32.numel() * 4
        return self.codes.numel() + self.scale.numel() * self.scale.element_size()


class ShortlistIndex:
    """A FAISS index over projected descriptors proposes places; the stored descriptors decide."""

    def __init__(self, coarse, projection: np.ndarray | None, descriptors: np.ndarray,
                 shortlist: int = SHORTLIST, provenance: Projection | None = None,
                 refine: RefineCodes | None = None) -> None:
        self.coarse = coarse  # on the CPU (saved as is); searched through a GPU copy when there is one
        self._searchable()
        self.projection = projection  # D x d float32, or None for a coarse index over the descriptors
        self._query_projection = None if projection is None else QueryProjection(projection)
        self.ref = descriptors  # N x D, may be a read-only memory map
        self.prefetch = RowPrefetch.of(descriptors)  # shared with the PlaceMap over the same rows
        self.shortlist = shortlist
        self.provenance = provenance  # compact indexes: how the projection was made
        self.refine = refine  # compact indexes of large enough maps: ranks the lists' best before the re-rank

    @property
    def ntotal(self) -> int:
        return self.ref.shape[0]

    @property
    def d(self) -> int:
        return self.ref.shape[1]

    def project(self, x: np.ndarray) -> np.ndarray:
        """Queries through `QueryProjection` (the places were projected in float32 when they were indexed)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        return x if self._query_projection is None else self._query_projection(x)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = min(k, self.ntotal)
        reread = max(self.shortlist, k)
        proposed = reread if self.refine is None else max(self.provenance.refine_shortlist, reread)
        cand = self.propose(self.project(q), min(proposed, self.ntotal))
        scores = np.full((len(q), k), -np.inf, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        for r, row in enumerate(cand):
            row = np.unique(row[row >= 0])  # sorted: memory-mapped rows are read in file order
            if self.refine is not None:
                row = np.sort(self.refine.top(q[r], row, reread))
            exact = (torch.from_numpy(read_rows(self.ref, row, self.prefetch)).float() @ torch.from_numpy(q[r])).numpy()
            order = np.argsort(-exact, kind="stable")[:k]
            scores[r, :len(order)], ids[r, :len(order)] = exact[order], row[order]
        return scores, ids

    def propose(self, projected: np.ndarray, n: int) -> np.ndarray:
        """The coarse index's best n places per projected query. A batch is split over its queries on every
        thread; a single query runs on one, or through a CPU inverted file on SINGLE_QUERY_THREADS splitting its
        probed lists (FAISS's parallel_mode 1)."""
        single = len(projected) < FAISS_PARALLEL_QUERIES
        if self._lists is None:
            threads = 1 if single else None
        else:
            self._lists.parallel_mode = 1 if single else 0
            threads = min(SINGLE_QUERY_THREADS, os.cpu_count() or 1) if single else None
        with faiss_threads(threads):
            return self._coarse_search.search(projected, n)[1]

    def _searchable(self) -> None:
        """The index searches go to (a GPU copy when there is one) and its CPU lists, if any, from `coarse`."""
        self._coarse_search, self._gpu_resources = to_gpu_if_available(self.coarse)
        self._lists = cpu_inverted_file(self._coarse_search)

    def add(self, descriptors: np.ndarray, all_descriptors: np.ndarray) -> None:
        """Index appended places with the projection and lists as they are; `all_descriptors` (the old
        places and these) is what the exact re-ranking reads from now on."""
        projected, codes = project_all(descriptors, self.projection, self.refine)  # as the build made the others
        self.coarse.add(projected)
        if self.refine is not None:
            self.refine.add(codes)
        self._searchable()
        self.ref = all_descriptors
        self.prefetch = RowPrefetch.of(all_descriptors)

    def memory_bytes(self) -> int:
        """What searching holds in RAM (the projection and the FAISS index; not the stored descriptors,
        which stay on disk and are read a shortlist at a time)."""
        projection = 0 if self._query_projection is None else self._query_projection.nbytes
        projection += 0 if self.refine is None else self.refine.memory_bytes()
        ivf = cpu_inverted_file(self.coarse)
        if ivf is None:  # HNSW: float vectors and a graph of 2 * M links per node on its lowest layer
            return projection + self.coarse.ntotal * (4 * self.coarse.d + 2 * HNSW_M * 4)
        return projection + ivf.ntotal * (ivf.code_size + 8) + ivf.nlist * ivf.d * 4


def cpu_inverted_file(index):
    """The CPU inverted file inside a FAISS index, whose probed lists one query can split between threads;
    None for HNSW and for a GPU copy (faiss-gpu's, or anything else that is not a CPU FAISS index)."""
    import faiss

    if not isinstance(index, faiss.Index):
        return None
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


@contextmanager
def faiss_threads(count: int | None):
    """FAISS's OpenMP threads for this thread's searches inside the block (None: as they are)."""
    import faiss

    if count is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class RowPrefetch:
    """Asks the kernel for a shortlist's rows of a memory-mapped descriptor file all at once. Touched one
    by one, a cold 1M-place file costs a synchronous read per row with readahead around it (32 rows:
    ~200 ms here); announced together, the reads overlap (~2 ms)."""

    def __init__(self, path: str, offset: int, row_bytes: int) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.offset, self.row_bytes = offset, row_bytes
        weakref.finalize(self, os.close, self.fd)

    @classmethod
    def of(cls, descriptors: np.ndarray) -> "RowPrefetch | None":
        if not (isinstance(descriptors, np.memmap) and descriptors.filename and hasattr(os, "posix_fadvise")):
            return None
        return cls(descriptors.filename, descriptors.offset, descriptors.shape[1] * descriptors.dtype.itemsize)

    def __call__(self, rows: np.ndarray) -> None:
        for r in rows.tolist():
            os.posix_fadvise(self.fd, self.offset + r * self.row_bytes, self.row_bytes, os.POSIX_FADV_WILLNEED)


def read_ahead(path: Path) -> None:
    """Ask the kernel to read a memory-mapped search structure (lists, codes: what search keeps in RAM) into
    the page cache now, in the background, rather than a page fault at a time as the first queries touch
    ~1,000 code rows each. Measured in the node at 1M places: its median search time did not move (7.9 ms
    without, 7.6 ms with it and the page cache dropped before start-up); `map_in` is what did."""
    if hasattr(os, "posix_fadvise"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)


def map_in(pages: np.ndarray) -> None:
    """Touch one byte of every page of a memory-mapped search structure, so that this process's page table
    maps it before the first query. Left to the queries, each of them takes a page fault for nearly every
    one of the ~1,000 code rows it reads (1 KB rows scattered over 1 GB at 1M places), and faults for
    pages of the lists it probes, for hundreds of queries: at 1M places the node's search took 6.4-7.3 ms
    p50 without, 5.0-5.1 ms with it (docs/BENCHMARKS.md). The pages are the page cache's, shared by every
    process mapping the file."""
    flat = pages.reshape(-1).view(np.uint8)
    if len(flat):
        int(flat[::PAGESIZE].max())


def map_in_lists(ivf, lists) -> None:
    """`map_in` for an IVF index's inverted lists that FAISS maps from its file (OnDiskInvertedLists)."""
    import faiss

    for i in range(ivf.nlist):
        size = lists.list_size(i)
        if size:
            map_in(faiss.rev_swig_ptr(lists.get_codes(i), size * ivf.code_size))


def read_rows(descriptors: np.ndarray, rows: np.ndarray, prefetch: RowPrefetch | None) -> np.ndarray:
    """The stored rows (sorted ids) as a writable array in their stored dtype; a memory map's asked of the
    kernel all at once first."""
    if prefetch is not None:
        prefetch(rows)
    return np.array(descriptors[rows])


def _sample_rows(n: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n, min(n, samples), replace=False))


def fit_sample(descriptors: np.ndarray, seed: int, samples: int) -> np.ndarray:
    """The float32 rows a projection (and the refining codes) with this seed is fitted on."""
    rows = _sample_rows(len(descriptors), samples, np.random.default_rng(seed))
    return read_rows(descriptors, rows, RowPrefetch.of(descriptors)).astype(np.float32)


def coarse_projection(descriptors: np.ndarray, dim: int = COARSE_DIM, seed: int = 0,
                      samples: int = COARSE_FIT_SAMPLES, sample: np.ndarray | None = None) -> np.ndarray | None:
    """Top right-singular directions of a sample of the map (randomised SVD); None if D <= dim. `sample`:
    fit_sample(descriptors, seed, samples) when the caller has already read it."""
    n, d = descriptors.shape
    if d <= dim:
        return None
    rng = np.random.default_rng(seed)
    rows = _sample_rows(n, samples, rng)  # drawn either way: omega below follows from the same generator
    x = torch.from_numpy(read_rows(descriptors, rows, RowPrefetch.of(descriptors)).astype(np.float32)
                         if sample is None else sample)
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
    if kind == "compact":
        nlist = _list_count(n)
        index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(d), d, nlist, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
        index.cp.min_points_per_centroid = 1  # small maps: fewer than 39 points per list, accepted
        index.train(_training_sample(x))
        index.nprobe = min(COMPACT_NPROBE, nlist)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = HNSW_EF_SEARCH
    elif kind == "ivfpq":
        if n < 2 ** PQ_BITS:
            raise ValueError(f"ivfpq needs at least {2 ** PQ_BITS} places to train, got {n}; use 'flat'")
        nlist = _list_count(n)
        m = next(m for m in (64, 32, 16, 8, 4, 2, 1) if d % m == 0 and m <= d)
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, m, PQ_BITS, faiss.METRIC_INNER_PRODUCT)
        # Small maps give each sub-quantizer fewer than FAISS's preferred 39 points per code;
        # accepted (the exact re-ranking decides) rather than warned 64 times.
        index.pq.cp.min_points_per_centroid = 1
        index.train(_training_sample(x))
        index.nprobe = min(IVF_NPROBE, nlist)
    else:
        raise ValueError(f"no coarse index of type {kind!r}")
    index.add(x)
    return index


def _list_count(n: int) -> int:
    return int(max(1, min(IVF_MAX_LISTS, n // IVF_POINTS_PER_LIST, IVF_LISTS_PER_SQRT * int(np.sqrt(n)))))


def _training_sample(x: np.ndarray) -> np.ndarray:
    n = len(x)
    return x if n <= IVF_TRAIN_SAMPLES else x[np.sort(np.random.default_rng(0).choice(n, IVF_TRAIN_SAMPLES, replace=False))]


def resolve_index_type(kind: str, places: int) -> str:
    """The search a map of this many places gets: `auto` is exact up to EXACT_MAX_PLACES, compact above."""
    if kind not in INDEX_TYPES:
        raise ValueError(f"index type {kind!r} unknown; choose one of {INDEX_TYPES}")
    if kind == "auto":
        return "flat" if places <= EXACT_MAX_PLACES else "compact"
    return kind


def project_all(descriptors: np.ndarray, projection: np.ndarray | None, refine: RefineCodes | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """N x d float32 projections and, with `refine`, N x M codes: one pass over the descriptors, a block of
    rows at a time (they may be a memory map larger than RAM)."""
    out = np.empty((len(descriptors), descriptors.shape[1] if projection is None else projection.shape[1]), np.float32)
    codes = None if refine is None else np.empty((len(descriptors), refine.pq.code_size), np.uint8)
    for s in range(0, len(descriptors), PROJECT_ROWS):
        block = np.asarray(descriptors[s:s + PROJECT_ROWS], dtype=np.float32)
        out[s:s + len(block)] = block if projection is None else block @ projection
        if codes is not None:
            codes[s:s + len(block)] = refine.encode(block)
    return out, codes


def random_orthogonal(d: int, dim: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, dim)).astype(np.float32))
    return np.ascontiguousarray(q, dtype=np.float32)


def build_compact(descriptors: np.ndarray, seed: int = 0) -> ShortlistIndex:
    """The projection (fitted on the map when it has SAMPLES_PER_DIM places per kept dimension, random
    orthogonal otherwise), the inverted file over the projections, and its provenance."""
    n, d = descriptors.shape
    dim = min(COMPACT_DIM, d)
    fitted, refined = dim < d and n >= SAMPLES_PER_DIM * dim, dim < d and n >= REFINE_MIN_PLACES
    sample = fit_sample(descriptors, seed, COMPACT_FIT_SAMPLES) if fitted or refined else None  # read once for both
    if dim == d:
        projection, method = None, "none"
    elif fitted:
        projection, method = coarse_projection(descriptors, dim, seed, COMPACT_FIT_SAMPLES, sample), "pca"
    else:
        projection, method = random_orthogonal(d, dim, seed), "random-orthogonal"
    refine = RefineCodes.fit(sample) if refined else None
    del sample
    projected, codes = project_all(descriptors, projection, refine)
    if refine is not None:
        refine.add(codes)
    check = _sample_rows(n, ENERGY_SAMPLES, np.random.default_rng(seed))
    rows = read_rows(descriptors, check, RowPrefetch.of(descriptors)).astype(np.float32)
    energy = float((projected[check] ** 2).sum() / max((rows ** 2).sum(), 1e-12))
    coarse = build_coarse(projected, "compact")
    provenance = Projection(method, dim, n, min(n, COMPACT_FIT_SAMPLES) if method == "pca" else 0, seed, energy,
                            time.strftime("%Y-%m-%dT%H:%M:%S%z"), coarse.nlist, coarse.nprobe, COMPACT_RERANK,
                            "none" if refine is None else refine.name, 0 if refine is None else REFINE_SHORTLIST)
    return ShortlistIndex(coarse, projection, descriptors, COMPACT_RERANK, provenance, refine)


def build_index(descriptors: np.ndarray, kind: str = "auto") -> ExactIndex | ShortlistIndex:
    kind = resolve_index_type(kind, len(descriptors))
    if kind == "flat":
        return ExactIndex(descriptors)
    if kind == "compact":
        return build_compact(descriptors)
    projection = coarse_projection(descriptors)
    return ShortlistIndex(build_coarse(project_all(descriptors, projection)[0], kind), projection, descriptors)


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


def save_index(index: ExactIndex | ShortlistIndex, folder: Path, index_file: str, projection_file: str,
               refine_files: tuple[str, str]) -> None:
    """An exact index is derived from the descriptors (nothing to save); a shortlist index saves its parts."""
    import faiss

    if isinstance(index, ShortlistIndex):
        faiss.write_index(index.coarse, str(folder / index_file))
        if index.projection is not None:
            np.save(folder / projection_file, index.projection, allow_pickle=False)
        if index.refine is not None:
            index.refine.save(folder, *refine_files)


def load_coarse(path: Path, mmap: bool = False):
    """`mmap`: the inverted lists stay in the file, mapped read-only (processes on one machine share them)."""
    import faiss

    if not path.is_file():
        raise FileNotFoundError(f"index file not found: {path}")
    try:
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0)
    except RuntimeError as exc:
        raise ValueError(f"{path}: corrupt FAISS index ({str(exc).splitlines()[0]})") from exc
    if mmap:
        read_ahead(path)
    if mmap and isinstance(index, faiss.IndexIVF):
        lists = faiss.downcast_InvertedLists(index.invlists)
        if isinstance(lists, faiss.OnDiskInvertedLists):
            # Its default starts 32 threads per search to prefetch the probed lists: 3.9 ms of a 0.15 ms
            # search on 2 cores. The page cache serves them as well.
            lists.prefetch_nthread = 0
            map_in_lists(index, lists)
    return index
