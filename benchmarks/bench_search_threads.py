"""A large map's single-query search as the node makes it (issue 21): one query a frame, after describe.

    .venv/bin/python benchmarks/bench_search_threads.py --map bench_out/haystack/gardens_point_1000000 \
        --queries bench_out/haystack/desc_<sha>_gp_night_right.npy

The node searches one descriptor per camera frame, right after the network's forward pass has filled the
caches and left torch's threads spinning. Back-to-back timings (`bench_index.py --retime`) miss both. Here
each query follows a torch burst on the node's thread count and a pause (`--interval`), and is searched with
its inverted file's probed lists on one thread (the product's SINGLE_QUERY_THREADS) or split between two
(FAISS's parallel_mode 1), interleaved round by round, optionally with
a busy process on one core (`--busy-core`). Beside them, the stages of one search back to back: the query's
projection, the inverted file, the refining codes, the exact re-rank. Writes <out>/results.json, table.md,
machine.json and search_threads.png.
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from densernet_core.cli import setup_logging  # noqa: E402
from densernet_core.mapping import index as idx  # noqa: E402
from densernet_core.mapping.placemap import PlaceMap  # noqa: E402
from densernet_core.plots import pyplot, save_figure  # noqa: E402
from benchmarks.report import save_report  # noqa: E402

TOP_K = 10  # the node's top_k (config/localize.yaml)
BURST = (512, 2048, 20)  # rows, width, matrix products: about describe's share of a frame on 2 threads
SETTINGS = {"one thread": 1, "lists split": 2}  # the product: idx.SINGLE_QUERY_THREADS (one)


def spin(stop) -> None:
    while not stop.is_set():
        pass


def timed_search(index, queries: np.ndarray, threads: int, interval: float, burst: bool) -> list[float]:
    """Milliseconds per single-query search, each after a torch burst (if asked) and a pause."""
    rows, width, products = BURST
    a, b = torch.randn(rows, width), torch.randn(width, width)
    kept, out = idx.SINGLE_QUERY_THREADS, []
    idx.SINGLE_QUERY_THREADS = threads
    try:
        for q in queries:
            for _ in range(products if burst else 0):
                a @ b
            time.sleep(interval)
            t0 = time.perf_counter()
            index.search(q[None], TOP_K)
            out.append((time.perf_counter() - t0) * 1e3)
    finally:
        idx.SINGLE_QUERY_THREADS = kept
    return out


def stage_times(index, queries: np.ndarray) -> dict[str, float]:
    """p50 ms of each stage of one compact search, back to back (warm caches), on the product's threads."""
    if not isinstance(index, idx.ShortlistIndex) or index.refine is None:
        raise ValueError("the map's index is not a compact index with refining codes; nothing to split into stages")
    t = {k: [] for k in ("projection", "inverted file", "refining codes", "exact re-rank", "total")}
    proposed = max(index.provenance.refine_shortlist, index.shortlist)
    for q in queries:
        t0 = time.perf_counter()
        p = index.project(q[None])
        t1 = time.perf_counter()
        cand = index.propose(p, proposed)
        t2 = time.perf_counter()
        row = np.sort(index.refine.top(q, np.unique(cand[0][cand[0] >= 0]), index.shortlist))
        t3 = time.perf_counter()
        idx.read_rows(index.ref, row, index.prefetch).astype(np.float32) @ q
        t4 = time.perf_counter()
        for k, v in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
            t[k].append(v * 1e3)
    return {k: float(np.median(v)) for k, v in t.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--map", type=Path, required=True, help="a map folder with a compact index")
    p.add_argument("--queries", type=Path, required=True, help=".npy of query descriptors (N x D)")
    p.add_argument("--count", type=int, default=100, help="queries per round")
    p.add_argument("--rounds", type=int, default=2, help="rounds; each times every setting, interleaved")
    p.add_argument("--interval", type=float, default=0.02, help="seconds between queries")
    p.add_argument("--no-burst", action="store_true", help="no torch burst before each query")
    p.add_argument("--busy-core", action="store_true", help="a spinning process on one core throughout")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the node's)")
    p.add_argument("--out", type=Path, default=Path("bench_out/search_threads"))
    args = p.parse_args(argv)
    if not (args.map / "manifest.json").is_file():
        p.error(f"--map {args.map}: no map there (no manifest.json)")
    if not args.queries.is_file():
        p.error(f"--queries {args.queries}: no such file")
    setup_logging()
    torch.set_num_threads(args.threads)
    place_map = PlaceMap.load(args.map)
    queries = np.load(args.queries, allow_pickle=False).astype(np.float32)
    if queries.ndim != 2 or queries.shape[1] != place_map.manifest.descriptor_dim:
        p.error(f"--queries {args.queries}: shape {queries.shape}, the map holds {place_map.manifest.descriptor_dim}-D descriptors")
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    rng = np.random.default_rng(0)
    args.out.mkdir(parents=True, exist_ok=True)
    stop = multiprocessing.Event()
    busy = multiprocessing.Process(target=spin, args=(stop,), daemon=True) if args.busy_core else None
    if busy is not None:
        busy.start()
    try:
        per: dict[str, list[list[float]]] = {name: [] for name in SETTINGS}
        for _ in range(args.rounds):
            for name, threads in SETTINGS.items():
                picked = queries[rng.choice(len(queries), min(args.count, len(queries)), replace=False)]
                per[name].append(timed_search(place_map.index, picked, threads, args.interval, not args.no_burst))
        stages = stage_times(place_map.index, queries)
    finally:
        stop.set()
        if busy is not None:
            busy.join()
    rows = {name: [{"p50": float(np.median(r)), "p95": float(np.percentile(r, 95))} for r in runs]
            for name, runs in per.items()}
    lines = [f"{args.map} ({len(place_map)} places), {min(args.count, len(queries))} queries a round from "
             f"{args.queries.name}, top {TOP_K}; each after {'no burst' if args.no_burst else 'a torch burst'} "
             f"and {args.interval * 1e3:.0f} ms; {'a busy process on one core' if args.busy_core else 'nothing else running'}",
             "", "| inverted file | " + " | ".join(f"round {i + 1} p50 / p95 ms" for i in range(args.rounds)) + " |",
             "|---|" + "---|" * args.rounds]
    for name, threads in SETTINGS.items():
        lines.append(f"| {name} ({threads} thread{'s' if threads > 1 else ''}) | "
                     + " | ".join(f"{r['p50']:.2f} / {r['p95']:.2f}" for r in rows[name]) + " |")
    lines += ["", f"Stages back to back ({idx.SINGLE_QUERY_THREADS} thread(s), as the product), p50 ms: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items())]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.boxplot([sum(per[n], []) for n in SETTINGS], showfliers=False)
    ax.set_xticks(range(1, len(SETTINGS) + 1), list(SETTINGS))
    ax.set_ylabel("single-query search, ms")
    ax.set_title(f"{len(place_map):,} places, one query after {'a burst' if not args.no_burst else 'a pause'}")
    png = save_figure(fig, args.out / "search_threads.png")
    save_report(args.out, {"map": str(args.map), "places": len(place_map), "queries": str(args.queries),
                           "interval_s": args.interval, "burst": not args.no_burst, "busy_core": args.busy_core,
                           "per_query_ms": per, "rounds": rows, "stages_p50_ms": stages}, "\n".join(lines), png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
