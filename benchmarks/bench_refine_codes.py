"""What ranks the compact index's proposals best: its projection alone, product-quantisation codes of the
full descriptor (what `RefineCodes` stores), or codes of the residual the projection drops, added to the
inverted file's own projected score.

    .venv/bin/python benchmarks/bench_refine_codes.py [--size 100000] [--shortlists 1000 4000 10000]
        [--out bench_out/refine_codes]

The Gardens Point haystack of bench_haystack.py (map day_left 0-199 padded with distractors to --size,
queries night_right 100-199, the Gardens Point demo's trained `small`), with the compact index's own
parts (the 512-D projection fitted on the map, the inverted file of 8-bit codes, its lists probed as
the map does). For each shortlist length N (places the inverted file proposes) and each ranking, the
best COMPACT_RERANK places are re-scored exactly; reported: R@1, agreement with exact search's top-1
(a tie within bench_haystack.TIE counts), and the share of queries whose exact top-1 is among the N.
Both code kinds have the same size (1,024 codes of 8 bits per place). Writes <out>/results.json and
<out>/refine_codes.png.
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

from densernet_core.plots import pyplot, save_figure  # noqa: E402
from benchmarks import bench_haystack as bh  # noqa: E402
from benchmarks.bench_index import exact_topk  # noqa: E402
from densernet_core.mapping import index as idx  # noqa: E402
from densernet_core.model.checkpoint import load_model  # noqa: E402

RANKINGS = ("projection", "full codes", "residual codes")


def residual(x: np.ndarray, projection: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x - (x @ projection) @ projection.T, dtype=np.float32)


def code_scores(pq, codes: np.ndarray, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The asymmetric inner product of one query with the codes of `rows` (a lookup table per query)."""
    import faiss

    table = np.empty((pq.M, pq.ksub), np.float32)
    pq.compute_inner_prod_table(faiss.swig_ptr(np.ascontiguousarray(query, dtype=np.float32)), faiss.swig_ptr(table))
    return table[np.arange(pq.M)[None, :], codes[rows].astype(np.int64)].sum(1)


def encode_residual(pq, descriptors: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """Codes of each place's residual, a block of rows at a time (as `project_all` reads them)."""
    codes = np.empty((len(descriptors), pq.M), np.uint8)
    for s in range(0, len(descriptors), idx.PROJECT_ROWS):
        codes[s:s + idx.PROJECT_ROWS] = pq.compute_codes(
            residual(np.asarray(descriptors[s:s + idx.PROJECT_ROWS], dtype=np.float32), projection))
    return codes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(ROOT / "demo_out_gardens_point" / "train" / "model.safetensors"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--size", type=int, default=100000)
    p.add_argument("--shortlists", type=int, nargs="+", default=[1000, 4000, 10000])
    p.add_argument("--out", default="bench_out/refine_codes")
    args = p.parse_args(argv)
    if not Path(args.checkpoint).is_file():
        raise SystemExit(f"checkpoint not found: {args.checkpoint} (`make demo DATA=gardens_point` trains it)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    case = bh.cases(argparse.Namespace(checkpoint=args.checkpoint, data=args.data, datasets=["gardens_point"],
                                       pool="all"), out)[0]
    clusters = load_model(Path(args.checkpoint)).config.num_clusters
    desc, _ = bh.padded_map(case, args.size, out / f"gardens_point_{args.size}", clusters)
    q = np.ascontiguousarray(case.query_desc, dtype=np.float32)
    exact_s, exact_i = exact_topk(desc, q, bh.TOP_K)
    n_real = len(case.map_desc)

    def right(place: int, k: int) -> bool:
        return place < n_real and abs(place - case.query_place[k]) <= case.place_tol

    t0 = time.perf_counter()
    sample = idx.fit_sample(desc, 0, idx.COMPACT_FIT_SAMPLES)
    projection = idx.coarse_projection(desc, idx.COMPACT_DIM, 0, idx.COMPACT_FIT_SAMPLES, sample)
    full = idx.RefineCodes.fit(sample)
    projected, full_codes = idx.project_all(desc, projection, full)  # one pass, as build_compact makes them
    full.add(full_codes)
    coarse = idx.build_coarse(projected, "compact")
    resid = idx.RefineCodes.fit(residual(sample, projection))
    resid_codes = encode_residual(resid.pq, desc, projection)
    build_s = time.perf_counter() - t0
    del sample, projected

    qp, qr = q @ projection, residual(q, projection)
    results = {"checkpoint": args.checkpoint, "size": args.size, "rerank": idx.COMPACT_RERANK, "nprobe": coarse.nprobe,
               "codes": full.name, "build_s": build_s,
               "exact_recall_at_1": float(np.mean([right(int(exact_i[k, 0]), k) for k in range(len(q))])),
               "query_energy_kept": float(np.mean(np.sum(qp ** 2, 1) / np.sum(q ** 2, 1))), "shortlists": {}}
    answers = bh.tied_tops(exact_s, exact_i)
    for n in args.shortlists:
        scores, ids = coarse.search(qp, min(n, len(desc)))
        row = {"exact_top1_proposed": 0.0, **{r: {"recall_at_1": 0.0, "agreement": 0.0} for r in RANKINGS}}
        for k in range(len(q)):
            keep = ids[k] >= 0
            rows, projected_score = ids[k][keep], scores[k][keep]
            tied = answers[k]
            row["exact_top1_proposed"] += np.isin(tied, rows).any() / len(q)
            with_residual = projected_score + code_scores(resid.pq, resid_codes, qr[k], rows)
            shortlisted = {"projection": rows[np.argsort(-projected_score, kind="stable")[:idx.COMPACT_RERANK]],
                           "full codes": full.top(q[k], np.sort(rows), idx.COMPACT_RERANK),  # the shipped ranking
                           "residual codes": rows[np.argsort(-with_residual, kind="stable")[:idx.COMPACT_RERANK]]}
            for name, best in shortlisted.items():
                best = np.sort(best)
                exact = np.asarray(desc[best], dtype=np.float32) @ q[k]
                row[name]["recall_at_1"] += right(int(best[np.argmax(exact)]), k) / len(q)
                row[name]["agreement"] += (exact.max() >= exact_s[k, 0] - bh.TIE) / len(q)
        results["shortlists"][str(n)] = row
        print(n, json.dumps(row), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"exact search over the padded map: R@1 {results['exact_recall_at_1']:.2f}; "
          f"query energy kept by the projection {results['query_energy_kept']:.2f}")
    print("| places proposed | exact top-1 proposed | " + " | ".join(f"{r}: R@1 / agreement" for r in RANKINGS) + " |")
    print("|---|---|" + "---|" * len(RANKINGS))
    for n, row in results["shortlists"].items():
        print(f"| {n} | {row['exact_top1_proposed']:.2f} | " + " | ".join(
            f"{row[r]['recall_at_1']:.2f} / {row[r]['agreement']:.2f}" for r in RANKINGS) + " |")
    plot(results, out / "refine_codes.png")
    return 0


def plot(results: dict, png: Path) -> None:
    plt = pyplot()

    ns = list(results["shortlists"])
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for r in RANKINGS:
        ax.plot(range(len(ns)), [results["shortlists"][n][r]["recall_at_1"] for n in ns], "o-", label=r)
    ax.axhline(results["exact_recall_at_1"], color="0.5", ls="--", label="exact search")
    ax.set_xticks(range(len(ns)), ns)
    ax.set_xlabel("places the inverted file proposes")
    ax.set_ylabel("R@1 (night_right -> day_left)")
    ax.set_title(f"ranking the proposals, {results['size']:,} places")
    ax.legend(fontsize=8)
    save_figure(fig, png, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
