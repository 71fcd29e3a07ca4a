"""What the compact index's first stage costs and keeps at 1M places: the inverted file's codes, lists probed
and places proposed, against the night queries of the Gardens Point haystack.

    .venv/bin/python benchmarks/bench_first_stage.py [--map bench_out/haystack/gardens_point_1000000]
        [--out bench_out/first_stage] [--only map graph_ip ...] [--settings map:256:2000:64 ...]

The map: a compact Gardens Point haystack kept by bench_haystack.py (day_left 0-199, then distractors); the
queries: night_right 100-199 described by the map's checkpoint, as that benchmark describes them. Per
setting, the whole search of `ShortlistIndex.search` stage by stage (query projection, the inverted file's
proposals, the refining codes' best COMPACT_RERANK, the exact re-rank from the stored rows), each query
timed twice: back to back (warm) and right after a describe of a camera frame (as in the node, whose
network's pass leaves the search's data out of the CPU's caches). Reported: p50 times, the share of
queries whose exact top-1 (or a place within bench_haystack.TIE of it) the proposals hold, that the codes
keep, that is the answer (agreement), and R@1. The map's own inverted file (8-bit codes of the 512-D
projection) is searched as loaded; the other codes are built over the same lists from its vectors (read
back from its 8-bit codes); `sq8@1024` is an inverted file like the map's over a 1024-D projection fitted as
the map's own is (built once, kept in <out>), and `/alone` sends the inverted file's best COMPACT_RERANK
straight to the exact re-rank, without the refining codes. `graph_ip` and `graph_mips` replace the inverted
file by a graph (HNSW, 32 links per place, over 8-bit codes of the same vectors; the second number of a
setting is then the candidates searched): `graph_ip` by inner product, `graph_mips` by L2 distance over the
vectors with a coordinate appended, sqrt(R^2 - |x|^2) (R: the largest norm), the query's 0, which orders
places by inner product in a metric space (each built once, kept in <out>). Besides the night queries,
SELF_QUERIES of the map's own places, queried with their stored descriptors: the share whose own row the
first stage proposes. Exact search's top-1 is computed once over the stored rows and kept in <out>.
`--settings CODES:PROBES:PROPOSED[:RERANK]` replaces the built-in list (RERANK: places re-scored exactly,
COMPACT_RERANK unless given). Writes <out>/results.json, table.md and first_stage.png.
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
from benchmarks.report import save_report  # noqa: E402
from densernet_core.datasets import load_traverse  # noqa: E402
from densernet_core.images import read_image  # noqa: E402
from densernet_core.mapping import placemap as pm  # noqa: E402
from densernet_core.mapping.index import (COMPACT_FIT_SAMPLES, COMPACT_RERANK, QueryProjection,  # noqa: E402
                                          build_coarse, coarse_projection, faiss_threads, project_all, read_rows)
from densernet_core.model.checkpoint import checkpoint_hash, load_model  # noqa: E402

# (codes, lists probed, places proposed); "map" is the map's own inverted file; "sq8@1024": an inverted file
# like the map's over a 1024-D projection fitted like its own (built once, kept in <out>); "/alone": no
# refining codes, the inverted file's best COMPACT_RERANK go straight to the exact re-rank
SETTINGS = (("map", 128, 1000), ("map", 128, 2000), ("map", 96, 1000), ("map", 64, 1000), ("map", 128, 500),
            ("map", 256, 1000), ("map", 512, 1000),
            ("sq8_uniform", 128, 1000), ("sq4", 128, 1000), ("fp16", 128, 1000),
            ("pq256x4fs", 128, 1000), ("pq256x4fs", 128, 2000), ("pq128x4fs", 128, 1000),
            ("sq8@1024", 128, 1000), ("sq8@1024/alone", 128, COMPACT_RERANK), ("sq8@1024/alone", 256, COMPACT_RERANK),
            ("map/alone", 128, COMPACT_RERANK),
            ("graph_ip", 256, 256), ("graph_ip", 512, 512), ("graph_ip", 1000, 1000),
            ("graph_mips", 256, 256), ("graph_mips", 512, 512), ("graph_mips", 1000, 1000))
TRAIN_ROWS = 200000  # vectors the built codes are trained on
GRAPH_M, GRAPH_EF_CONSTRUCTION = 32, 80  # the graphs' links per place and candidates kept while building
GRAPH_ADD_ROWS = 100000  # vectors added to a graph at a time
SELF_QUERIES = 1000  # the map's own places queried with their stored descriptors
STAGES = ("project", "propose", "codes", "rerank")


def setting(text: str) -> tuple:
    """CODES:PROBES:PROPOSED[:RERANK] from the command line."""
    parts = text.split(":")
    try:
        if len(parts) not in (3, 4) or not parts[0]:
            raise ValueError
        numbers = tuple(int(v) for v in parts[1:])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected CODES:PROBES:PROPOSED[:RERANK], e.g. map:256:2000:64") from None
    if min(numbers) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: probes, proposed and re-rank depth must be >= 1")
    return (parts[0], *numbers)


def built_index(base, vectors: np.ndarray, codes: str):
    """An inverted file over the map's lists (its coarse quantiser, the same assignment) with other codes."""
    import faiss

    quantiser = faiss.clone_index(base.quantizer)
    if codes.startswith("pq"):
        m = int(codes[2:codes.index("x")])
        index = faiss.IndexIVFPQFastScan(quantiser, base.d, base.nlist, m, 4, faiss.METRIC_INNER_PRODUCT)
    else:
        qtype = {"sq8_uniform": faiss.ScalarQuantizer.QT_8bit_uniform, "sq4": faiss.ScalarQuantizer.QT_4bit,
                 "fp16": faiss.ScalarQuantizer.QT_fp16}[codes]
        index = faiss.IndexIVFScalarQuantizer(quantiser, base.d, base.nlist, qtype, faiss.METRIC_INNER_PRODUCT)
    index.cp.min_points_per_centroid = 1
    rng = np.random.default_rng(0)
    index.train(vectors[np.sort(rng.choice(len(vectors), min(TRAIN_ROWS, len(vectors)), replace=False))])
    index.add(vectors)
    return index


class GraphStage:
    """A graph as the first stage, searched as the inverted files are: `nprobe` sets its candidates searched,
    `code_size` is its RAM per place (codes and links)."""

    def __init__(self, index, mips: bool) -> None:
        import faiss

        self.index, self.mips = index, mips
        self.code_size = faiss.downcast_index(index.storage).code_size + index.hnsw.neighbors.size() * 4 // index.ntotal

    @property
    def nprobe(self) -> int:
        return self.index.hnsw.efSearch

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self.index.hnsw.efSearch = value

    def search(self, x: np.ndarray, k: int):
        if self.mips:
            x = np.hstack([x, np.zeros((len(x), 1), np.float32)])
        return self.index.search(np.ascontiguousarray(x, dtype=np.float32), k)


def graph_index(vectors: np.ndarray, mips: bool, out: Path) -> GraphStage:
    """A graph over the vectors (see the module's docstring); built once, then read from `out`."""
    import faiss

    path = out / f"graph_{'mips' if mips else 'ip'}.faiss"
    if not path.is_file():
        print(f"building a graph ({'L2 over MIPS-augmented' if mips else 'inner product over'} vectors; once, kept in "
              f"{out})", flush=True)
        radius = float(np.sqrt((vectors ** 2).sum(1)).max())

        def rows(x: np.ndarray) -> np.ndarray:
            if not mips:
                return np.ascontiguousarray(x, dtype=np.float32)
            return np.hstack([x, np.sqrt(np.maximum(radius ** 2 - (x ** 2).sum(1, keepdims=True), 0))]).astype(np.float32)

        d = vectors.shape[1] + (1 if mips else 0)
        index = faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_8bit, GRAPH_M, faiss.METRIC_L2 if mips else faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = GRAPH_EF_CONSTRUCTION
        index.train(rows(vectors[:TRAIN_ROWS]))
        for start in range(0, len(vectors), GRAPH_ADD_ROWS):
            index.add(rows(vectors[start:start + GRAPH_ADD_ROWS]))
        faiss.write_index(index, str(path))
    return GraphStage(faiss.read_index(str(path)), mips)


def wider_index(pmap: pm.PlaceMap, dim: int, out: Path):
    """An inverted file like the map's (`index.build_coarse`) over a `dim`-D projection fitted as the map's own
    is (same sample, same seed), and that projection as queries use it; built once, then read from `out`."""
    import faiss

    p_file, i_file = out / f"projection_{dim}.npy", out / f"ivf_{dim}.faiss"
    if not (p_file.is_file() and i_file.is_file()):
        print(f"building a {dim}-D inverted file over the map's {len(pmap):,} rows (once; kept in {out})", flush=True)
        seed = pmap.index.provenance.seed
        projection = coarse_projection(pmap.descriptors, dim, seed, COMPACT_FIT_SAMPLES)
        ivf = build_coarse(project_all(pmap.descriptors, projection)[0], "compact")
        np.save(p_file, projection, allow_pickle=False)
        faiss.write_index(ivf, str(i_file))
    return QueryProjection(np.load(p_file, allow_pickle=False)), faiss.read_index(str(i_file))


def run_setting(pmap: pm.PlaceMap, ivf, project, queries: np.ndarray, probes: int, proposed: int, evict,
                refine: bool = True, rerank: int = COMPACT_RERANK) -> dict:
    """Every query through the four stages, warm then after `evict()`; what each stage kept. Without `refine`
    the proposals are re-ranked exactly as they come (the codes' stage is then empty); with it the codes'
    best `rerank` are."""
    index = pmap.index
    ivf.nprobe = probes
    times = {mode: {s: [] for s in STAGES} for mode in ("warm", "after_describe")}
    answers = []
    with faiss_threads(1):
        for mode in ("warm", "warm", "after_describe"):  # the first warm pass warms, the second is timed
            spent, answers = {s: [] for s in STAGES}, []
            for q in queries:
                if mode == "after_describe":
                    evict()
                t = [time.perf_counter()]
                p = project(q[None])
                t.append(time.perf_counter())
                _, cand = ivf.search(p, proposed)
                t.append(time.perf_counter())
                cand = np.unique(cand[0][cand[0] >= 0])
                best = np.sort(index.refine.top(q, cand, rerank)) if refine else cand
                t.append(time.perf_counter())
                exact = read_rows(index.ref, best, index.prefetch).astype(np.float32) @ q
                t.append(time.perf_counter())
                for s, a, b in zip(STAGES, t, t[1:]):
                    spent[s].append(b - a)
                answers.append((cand, best, int(best[np.argmax(exact)]), float(exact.max())))
            times[mode] = {s: 1000 * float(np.median(v)) for s, v in spent.items()}
    return {"times_ms": times, "answers": answers}


def map_and_queries(folder: Path, data: Path, out: Path):
    """The compact 1M map, its Gardens Point case (night queries described by its checkpoint) and exact
    search's top bench_haystack.TOP_K per query over its stored rows (computed once, kept in `out`)."""
    if not (folder / "manifest.json").is_file():
        raise SystemExit(f"no map at {folder}: bench_haystack.py --sizes 1000000 --datasets gardens_point keeps it")
    out.mkdir(parents=True, exist_ok=True)
    pmap = pm.PlaceMap.load(folder)
    if pmap.index.refine is None:
        raise SystemExit(f"{folder}: not a compact map with refining codes (built by bench_haystack.py at >= 100k)")
    ckpt = Path(pmap.manifest.checkpoint)
    if not ckpt.is_file() or checkpoint_hash(ckpt) != pmap.manifest.checkpoint_sha256:
        raise SystemExit(f"{ckpt}: missing or not the checkpoint the map was made with "
                         f"({pmap.manifest.checkpoint_sha256[:12]}…)")
    case = bh.cases(argparse.Namespace(checkpoint=str(ckpt), data=str(data), datasets=["gardens_point"], pool="all"),
                    out)[0]
    queries = np.ascontiguousarray(case.query_desc, dtype=np.float32)
    truth_file = out / f"exact_top_{pmap.manifest.checkpoint_sha256[:12]}_{len(pmap)}.npz"
    if truth_file.is_file():
        saved = np.load(truth_file, allow_pickle=False)
        exact_s, exact_i = saved["scores"], saved["ids"]
    else:
        print(f"exact search over {len(pmap):,} stored rows (once; kept in {truth_file})", flush=True)
        exact_s, exact_i = exact_topk(pmap.descriptors, queries, bh.TOP_K)
        np.savez(truth_file, scores=exact_s, ids=exact_i)
    return pmap, case, queries, exact_s, exact_i


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--map", default=str(ROOT / "bench_out" / "haystack" / "gardens_point_1000000"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--out", default="bench_out/first_stage")
    p.add_argument("--only", nargs="+", help="only the settings of these codes (e.g. map graph_ip; default: all)")
    p.add_argument("--settings", nargs="+", type=setting, help="CODES:PROBES:PROPOSED[:RERANK], instead of the built-in list")
    args = p.parse_args(argv)
    import faiss

    folder, out = Path(args.map), Path(args.out)
    pmap, case, queries, exact_s, exact_i = map_and_queries(folder, Path(args.data), out)
    ckpt = Path(pmap.manifest.checkpoint)
    n_real = len(case.map_desc)
    model = load_model(ckpt)
    frame = read_image(load_traverse(Path(args.data) / "gardens_point" / "night_right").images[100])

    def evict() -> None:
        model.describe([frame])

    base = faiss.extract_index_ivf(pmap.index.coarse)
    vectors, built = None, {}
    results = {"map": str(folder), "places": len(pmap), "queries": len(queries), "rerank": COMPACT_RERANK,
               "exact_recall_at_1": float(np.mean([int(i) < n_real and abs(int(i) - case.query_place[k]) <= case.place_tol
                                                   for k, i in enumerate(exact_i[:, 0])])),
               "settings": []}
    tied = bh.tied_tops(exact_s, exact_i)
    own_rows = np.sort(np.random.default_rng(0).choice(len(pmap), SELF_QUERIES, replace=False))
    own = read_rows(pmap.index.ref, own_rows, pmap.index.prefetch).astype(np.float32)
    for codes, probes, proposed, *depth in args.settings or SETTINGS:
        rerank = depth[0] if depth else COMPACT_RERANK
        kind, alone = codes.split("/")[0], codes.endswith("/alone")
        if args.only and kind not in args.only:
            continue
        project = pmap.index.project
        if kind == "map":
            ivf = base
        elif "@" in kind:
            project, ivf = wider_index(pmap, int(kind.split("@")[1]), out)
        else:
            if vectors is None:
                base.make_direct_map()
                vectors = base.reconstruct_n(0, base.ntotal)
            if codes not in built:
                built[codes] = (graph_index(vectors, kind == "graph_mips", out) if kind.startswith("graph")
                                else built_index(base, vectors, codes))
            ivf = built[codes]
        r = run_setting(pmap, ivf, project, queries, probes, proposed, evict, refine=not alone, rerank=rerank)
        row = {"codes": codes, "code_bytes": int(ivf.code_size) + (0 if alone else pmap.index.refine.pq.code_size),
               "probes": probes, "proposed": proposed, "rerank": proposed if alone else rerank,  # /alone: every proposal
               "times_ms": r["times_ms"],
               "proposed_share": float(np.mean([np.isin(t, a[0]).any() for t, a in zip(tied, r["answers"])])),
               "kept_share": float(np.mean([np.isin(t, a[1]).any() for t, a in zip(tied, r["answers"])])),
               "agreement": bh.agreement([a[3] for a in r["answers"]], exact_s[:, 0]),
               "self_proposed_share": float(np.mean((ivf.search(project(own), proposed)[1] == own_rows[:, None]).any(1))),
               "recall_at_1": float(np.mean([a[2] < n_real and abs(a[2] - case.query_place[k]) <= case.place_tol
                                             for k, a in enumerate(r["answers"])]))}
        results["settings"].append(row)
        print(json.dumps(row), flush=True)
    base.nprobe = pmap.index.provenance.nprobe
    lines = [f"{len(pmap):,} places, {len(queries)} night queries; exact search R@1 {results['exact_recall_at_1']:.2f}",
             "", "| codes (B per place, the refining codes' included) | lists probed | places proposed | re-scored exactly | search warm, ms p50 (project / propose / codes / "
             "re-rank) | after a describe | exact top-1 proposed | kept by the codes | answer as exact | R@1 | the map's own places: own row proposed |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["settings"]:
        w, c = row["times_ms"]["warm"], row["times_ms"]["after_describe"]
        lines.append(f"| {row['codes']} ({row['code_bytes']}) | {row['probes']} | {row['proposed']} | {row['rerank']} | "
                     f"{sum(w.values()):.2f} ({' / '.join(f'{w[s]:.2f}' for s in STAGES)}) | "
                     f"{sum(c.values()):.2f} ({' / '.join(f'{c[s]:.2f}' for s in STAGES)}) | "
                     f"{row['proposed_share']:.2f} | {row['kept_share']:.2f} | {row['agreement']:.2f} | {row['recall_at_1']:.2f} | "
                     f"{row['self_proposed_share']:.3f} |")
    plot(results, out / "first_stage.png")
    save_report(out, results, "\n".join(lines), out / "first_stage.png")
    return 0


def plot(results: dict, png: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for row in results["settings"]:
        for mode, marker in (("warm", "o"), ("after_describe", "s")):
            ms = sum(row["times_ms"][mode].values())
            ax.plot(ms, row["agreement"], marker, color="C0" if row["codes"].startswith("map") else "C2" if "@" in row["codes"] else "C1",
                    mfc="none" if mode == "after_describe" else None)
        depth = row.get("rerank", COMPACT_RERANK)
        label = f"{row['codes']} {row['probes']}/{row['proposed']}" + ("" if depth == COMPACT_RERANK else f"/{depth}")
        ax.annotate(label, (sum(row["times_ms"]["warm"].values()),
                    row["agreement"]), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.axvline(5.0, color="0.5", ls="--", label="target, 5 ms")
    spent = [sum(row["times_ms"][m].values()) for row in results["settings"] for m in ("warm", "after_describe")]
    if spent and max(spent) > 20 * min(spent):
        ax.set_xscale("log")  # a sweep up to every place spans two decades
    ax.set_xlabel("whole search, ms p50 (filled: warm; open: after a describe)")
    ax.set_ylabel("answer as exact search's")
    ax.set_title(f"the first stage at {results['places']:,} places (lists probed / proposed [/ re-scored])", fontsize=10)
    ax.legend(fontsize=8)
    save_figure(fig, png, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
