"""Map search at scale: query latency, bytes per place, build time and top-1 agreement with exact search.

    .venv/bin/python benchmarks/bench_index.py [--sizes 1000 10000 100000 1000000] [--dim 12288]

Descriptors shaped like a route (consecutive places alike: a smoothed random walk, normalised),
stored as float16 like a map's descriptors.npy (12,288-D: DenserNet `small`'s raw VLAD). Each query
is a mapped place plus noise, as a revisit. One query per call, as the node searches; p50/p95 over
the queries. `flat` is the exact search (int8 pre-scan + exact re-scoring; `auto` maps use it up to
20k places); `compact` (what `auto` builds above that) proposes 32 places from an inverted file of
8-bit codes over a 512-D projection fitted on the map and re-scores them exactly against the float16
descriptors; `hnsw`/`ivfpq` (maps made before compact) propose 1000 in a 256-D projection. The
approximate indexes are saved and loaded back as a map loads them (compact: its lists memory-mapped),
their descriptors memory-mapped from disk. Agreement = share of queries whose top-1 equals the exact
top-1 (a float32 brute force over the stored float16 rows). "disk B / place": descriptors + index
(+ projection); "RAM B / place": what searching holds in memory (`memory_bytes`; the approximate
indexes read their shortlist from the descriptors on disk). Sizes above --flat-max skip `flat` (its
int8 codes alone would not fit in memory). Writes <out>.json/.png; the generated descriptors stay in
<out>_data/ for reruns.

`--retime` times a compact row again from the index files a previous run saved, in a fresh process,
without building it anew (a 1M build takes half an hour; timed right after it, while the new files were
still being written back, the 1M row's queries took several times as long). The index's provenance (lists
probed, re-rank depth, refining shortlist) is read from the provenance.json the build saved beside them.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from densernet_core.plots import pyplot, save_figure  # noqa: E402
from densernet_core.mapping.index import (ExactIndex, RefineCodes, ShortlistIndex, build_index,  # noqa: E402
                                          load_coarse, save_index)
from densernet_core.mapping.placemap import REFINE_FILES  # noqa: E402
from benchmarks.report import machine, machine_line  # noqa: E402

PROVENANCE = "provenance.json"  # the compact index's record (a map keeps it in its manifest)

WALK_SMOOTHING = 0.9  # each place keeps this much of the previous one's direction
QUERY_NOISE = 0.5  # noise norm relative to the unit descriptor
CHUNK = 16384  # rows generated / scanned at a time
QUERIES = 200


def route_descriptors(path: Path, n: int, dim: int, seed: int = 0) -> np.ndarray:
    """y[i] = a y[i-1] + (1 - a) noise[i], normalised, float16, written to a .npy memory map chunk by chunk."""
    if path.is_file():
        data = np.load(path, mmap_mode="r")
        if data.shape == (n, dim) and data.dtype == np.float16:
            return data
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npy")  # renamed when complete: an interrupted run leaves no full-shaped file
    out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=(n, dim))
    rng = np.random.default_rng(seed)
    prev = np.zeros(dim, np.float32)  # the walk carries on from one chunk into the next
    for s in range(0, n, CHUNK):
        y = rng.standard_normal((min(CHUNK, n - s), dim), dtype=np.float32)
        y *= 1 - WALK_SMOOTHING
        for r in range(len(y)):  # the recurrence row by row: a vector op per place (scipy's lfilter: 4x slower)
            y[r] += WALK_SMOOTHING * prev
            prev = y[r]
        out[s:s + len(y)] = (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float16)
    out.flush()
    del out
    partial.replace(path)
    return np.load(path, mmap_mode="r")


def queries_from(db: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Queries (revisits: mapped places plus noise) and the places they revisit."""
    idx = np.sort(rng.choice(len(db), size=count, replace=False))
    noise = rng.standard_normal((count, db.shape[1])).astype(np.float32)
    noise *= QUERY_NOISE / np.linalg.norm(noise, axis=1, keepdims=True)
    q = np.asarray(db[idx], dtype=np.float32) + noise
    return q / np.linalg.norm(q, axis=1, keepdims=True), idx


def check_truth(db: np.ndarray, q: np.ndarray, truth: np.ndarray, revisited: np.ndarray) -> None:
    """The exact top-1 scores at least as high as the place each query revisits: a cached brute force that
    belongs to other data fails here."""
    best = np.einsum("ij,ij->i", q, np.asarray(db[truth], np.float32))
    source = np.einsum("ij,ij->i", q, np.asarray(db[revisited], np.float32))
    if np.any(best < source - 1e-5):
        raise RuntimeError(f"exact top-1 below the revisited place for {int((best < source - 1e-5).sum())} queries")


def exact_topk(db: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force in float32 over the stored rows, a block at a time (works on a memory map)."""
    qt = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32))
    best_s = torch.full((len(q), 0), -np.inf)
    best_i = torch.zeros((len(q), 0), dtype=torch.int64)
    for s in range(0, len(db), CHUNK):
        scores = qt @ torch.from_numpy(np.asarray(db[s:s + CHUNK], dtype=np.float32)).T
        cat_s = torch.cat([best_s, scores], dim=1)
        cat_i = torch.cat([best_i, torch.arange(s, s + scores.shape[1]).expand(len(q), -1)], dim=1)
        top = torch.topk(cat_s, min(k, cat_s.shape[1]), dim=1)
        best_s, best_i = top.values, torch.gather(cat_i, 1, top.indices)
    return best_s.numpy(), best_i.numpy()


def retime(db: np.ndarray, q: np.ndarray, truth: np.ndarray, work: Path, previous: dict) -> dict:
    """The compact row `previous` timed again from its saved index files (what a map loads), not rebuilt."""
    from densernet_core.mapping import index as idx

    if not (work / PROVENANCE).is_file():
        raise SystemExit(f"--retime: {work / PROVENANCE} is missing (files saved before the build kept it); "
                         "run without --retime to build this size again")
    provenance = idx.Projection.from_dict(json.loads((work / PROVENANCE).read_text()))
    index = load_saved(work, db, provenance.rerank, provenance)
    return {**previous, **timed(index, q, truth), "retimed": True}


def load_saved(work: Path, db: np.ndarray, shortlist: int, provenance) -> ShortlistIndex:
    """A shortlist index from the files `save_index` wrote in `work`, loaded as a map loads it (a compact
    one's lists and codes memory-mapped)."""
    compact = provenance is not None
    coarse = load_coarse(work / "index.faiss", mmap=compact)
    projection = np.load(work / "coarse.npy", mmap_mode="r") if (work / "coarse.npy").is_file() else None
    refine = (RefineCodes.load(work, *REFINE_FILES, len(db), db.shape[1])
              if compact and provenance.refine != "none" else None)
    return ShortlistIndex(coarse, projection, db, shortlist, provenance, refine)


def timed(index, q: np.ndarray, truth: np.ndarray) -> dict:
    index.search(q[:1], 10)  # warm-up
    times, top1 = [], []
    for row in q:
        t = time.perf_counter()
        _, ids = index.search(row[None], 10)
        times.append(time.perf_counter() - t)
        top1.append(int(ids[0, 0]))
    return {"query_ms_p50": round(1000 * float(np.median(times)), 3),
            "query_ms_p95": round(1000 * float(np.percentile(times, 95)), 3),
            "top1_agreement": float(np.mean(np.array(top1) == truth))}


def measure(db: np.ndarray, q: np.ndarray, kind: str, truth: np.ndarray, work: Path) -> dict:
    t0 = time.perf_counter()
    index = build_index(np.asarray(db) if kind == "flat" else db, kind)
    build_s = time.perf_counter() - t0
    work.mkdir(parents=True, exist_ok=True)
    for f in work.iterdir():
        f.unlink()
    save_index(index, work, "index.faiss", "coarse.npy", REFINE_FILES)
    if isinstance(index, ShortlistIndex) and index.provenance is not None:
        (work / PROVENANCE).write_text(json.dumps(asdict(index.provenance), indent=2))
    extra = sum(f.stat().st_size for f in work.iterdir())
    if isinstance(index, ShortlistIndex):  # searched as a loaded map searches it
        index = load_saved(work, db, index.shortlist, index.provenance)
    ram = index.memory_bytes()
    desc_bytes = db.shape[1] * db.dtype.itemsize
    return {"places": len(db), "dim": db.shape[1], "index": kind, "build_s": round(build_s, 2),
            **timed(index, q, truth),
            "bytes_per_place": round(desc_bytes + extra / len(db), 1),
            "ram_bytes_per_place": round(ram / len(db), 1),
            "search": "exact (int8 pre-scan + exact re-score)" if isinstance(index, ExactIndex)
            else f"{kind}: {describe_shortlist(index)}" if isinstance(index, ShortlistIndex) else kind}


def describe_shortlist(index: ShortlistIndex) -> str:
    refine = "" if index.refine is None else f"{index.provenance.refine_shortlist} by {index.refine.name} codes, "
    return f"shortlist of {refine}{index.shortlist} + exact re-rank"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000, 1000000])
    parser.add_argument("--dim", type=int, default=12288)
    parser.add_argument("--kinds", nargs="+", default=["flat", "compact", "ivfpq"])
    parser.add_argument("--flat-max", type=int, default=100000, help="largest size searched with flat")
    parser.add_argument("--approx-min", type=int, default=100000, help="smallest size for compact/hnsw/ivfpq")
    parser.add_argument("--out", default="bench_out/index")
    parser.add_argument("--retime", action="store_true",
                        help="time the compact rows again from their saved index files instead of building them")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = json.loads(Path(f"{out}.json").read_text()) if Path(f"{out}.json").is_file() else []
    rows = [r for r in done if r["places"] not in args.sizes or r["index"] not in args.kinds]  # the rest stays
    host = machine()
    for n in args.sizes:
        db = route_descriptors(Path(f"{out}_data") / f"route_{n}_{args.dim}.npy", n, args.dim)
        q, revisited = queries_from(db, QUERIES, np.random.default_rng(1))
        truth_file = Path(f"{out}_data") / f"truth_{n}_{args.dim}.npy"  # a brute force over 1M places: minutes
        if truth_file.is_file():
            truth = np.load(truth_file, allow_pickle=False)
        else:
            truth = exact_topk(db, q, 1)[1][:, 0]
            np.save(truth_file, truth, allow_pickle=False)
        check_truth(db, q, truth, revisited)
        for kind in args.kinds:
            if (kind == "flat" and n > args.flat_max) or (kind != "flat" and n < args.approx_min):
                continue
            work = Path(f"{out}_data") / f"index_{n}_{kind}"
            before = [r for r in done if r["places"] == n and r["index"] == kind]
            if args.retime and kind == "compact" and before and (work / "index.faiss").is_file():
                r = retime(db, q, truth, work, before[0])
            else:
                r = measure(db, q, kind, truth, work)
            r["machine"] = host  # rows of earlier runs stay in the file: each names the CPU it was timed on
            print(json.dumps(r), flush=True)
            rows.append(r)
            rows.sort(key=lambda x: (x["places"], args.kinds.index(x["index"]) if x["index"] in args.kinds else 99))
            Path(f"{out}.json").write_text(json.dumps(rows, indent=2))
    plot(rows, Path(f"{out}.png"))
    print(machine_line(host) + " Rows kept from earlier runs name theirs in the .json.")
    print("| places | search | build s | query p50 ms | query p95 ms | RAM B / place | disk B / place | "
          "top-1 agreement with exact |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['places']} | {r['search']}{' (retimed)' if r.get('retimed') else ''} | {r['build_s']} | {r['query_ms_p50']} | {r['query_ms_p95']} | "
              f"{r['ram_bytes_per_place']:.0f} | {r['bytes_per_place']:.0f} | {r['top1_agreement']:.3f} |")
    return 0


def plot(rows: list[dict], png: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in sorted({r["index"] for r in rows}):
        rs = [r for r in rows if r["index"] == kind]
        ax.loglog([r["places"] for r in rs], [r["query_ms_p50"] for r in rs], "o-", label=kind)
    ax.axhline(10, color="0.6", ls="--", lw=1)
    ax.set_xlabel("places in the map")
    ax.set_ylabel("query p50 (ms)")
    ax.set_title(f"map search, {rows[0]['dim']}-D float16 descriptors")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    save_figure(fig, png, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
