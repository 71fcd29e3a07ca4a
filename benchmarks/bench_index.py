"""Map index scaling: query latency, memory per place, build time and recall agreement vs map size.

    .venv/bin/python benchmarks/bench_index.py [--sizes 1000 10000 100000 1000000] [--dim 256]

Synthetic descriptors with the structure of a route (consecutive places are similar: a smoothed
random walk on the unit sphere); each query is a database place plus noise, as a revisit. Latency
is one query per call (what the node does per frame), median over the queries. "agreement" is
the fraction of queries whose approximate top-1 equals the exact top-1. Writes <out>.json/.png.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from densernet_core.mapping.index import INDEX_TYPES, build_index  # noqa: E402

WALK_SMOOTHING = 0.9  # each place keeps this much of the previous one's direction
QUERY_NOISE = 0.5  # noise norm relative to the unit descriptor


def route_descriptors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """y[i] = a * y[i-1] + (1 - a) * noise[i], normalised: neighbours along the route look alike."""
    from scipy.signal import lfilter

    noise = rng.standard_normal((n, dim)).astype(np.float32)
    out = lfilter([1 - WALK_SMOOTHING], [1, -WALK_SMOOTHING], noise, axis=0).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def queries_from(db: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    idx = rng.choice(len(db), size=count, replace=False)
    noise = rng.standard_normal((count, db.shape[1])).astype(np.float32)
    noise *= QUERY_NOISE / np.linalg.norm(noise, axis=1, keepdims=True)
    q = db[idx] + noise
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def measure(db: np.ndarray, q: np.ndarray, kind: str, exact_top1: np.ndarray | None) -> dict:
    import faiss

    t0 = time.perf_counter()
    index = build_index(db, kind)
    build_s = time.perf_counter() - t0
    nbytes = len(faiss.serialize_index(index))
    times, top1 = [], []
    for row in q:
        t = time.perf_counter()
        _, ids = index.search(row[None], 10)
        times.append(time.perf_counter() - t)
        top1.append(int(ids[0, 0]))
    top1 = np.array(top1)
    return {"kind": kind, "places": len(db), "build_s": round(build_s, 2),
            "latency_ms_p50": round(1000 * float(np.median(times)), 3),
            "latency_ms_p95": round(1000 * float(np.percentile(times, 95)), 3),
            "bytes_per_place": round(nbytes / len(db), 1),
            "agreement_top1": None if exact_top1 is None else round(float(np.mean(top1 == exact_top1)), 4),
            "top1": top1}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--kinds", nargs="+", choices=INDEX_TYPES, default=list(INDEX_TYPES))
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", default="bench_out/index")
    args = parser.parse_args(argv)
    import faiss

    rows = []
    rng = np.random.default_rng(0)
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, dim {args.dim}, {args.queries} queries")
    print("| places | index | build s | query p50 ms | query p95 ms | bytes/place | top-1 agreement |")
    print("|---|---|---|---|---|---|---|")
    for n in args.sizes:
        db = route_descriptors(n, args.dim, rng)
        q = queries_from(db, min(args.queries, n), rng)
        exact = None
        for kind in ["flat"] + [k for k in args.kinds if k != "flat"]:
            if kind == "ivfpq" and n < 256:
                continue
            r = measure(db, q, kind, None if kind == "flat" else exact)
            if kind == "flat":
                exact = r["top1"]
                r["agreement_top1"] = 1.0
            r.pop("top1")
            rows.append(r)
            print(f"| {n} | {kind} | {r['build_s']} | {r['latency_ms_p50']} | {r['latency_ms_p95']} | "
                  f"{r['bytes_per_place']} | {r['agreement_top1']} |", flush=True)
        del db
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"dim": args.dim, "queries": args.queries, "rows": rows}, indent=2))
    plot(rows, out.with_suffix(".png"), args.dim)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


def plot(rows: list[dict], png: Path, dim: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for kind in sorted({r["kind"] for r in rows}):
        rs = [r for r in rows if r["kind"] == kind]
        axes[0].loglog([r["places"] for r in rs], [r["latency_ms_p50"] for r in rs], "o-", label=kind)
        axes[1].loglog([r["places"] for r in rs], [r["bytes_per_place"] for r in rs], "o-", label=kind)
    axes[0].set_ylabel("query latency p50 (ms)")
    axes[1].set_ylabel("index bytes per place")
    for ax in axes:
        ax.set_xlabel("places in map")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.suptitle(f"FAISS index scaling, {dim}-D descriptors, one query per call")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
