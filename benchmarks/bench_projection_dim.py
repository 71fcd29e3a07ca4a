"""How much of exact search's answer a projection of the map can hold at all, by its size: the ceiling of
any inverted file or codes built over it, on the night queries of the 1M Gardens Point haystack.

    .venv/bin/python benchmarks/bench_projection_dim.py [--map bench_out/haystack/gardens_point_1000000]
        [--dims 256 512 1024 2048] [--out bench_out/projection_dim]

For the map's own projection (as built) and for the top `dims` singular directions of the same sample of
its rows (`index.coarse_projection`, the map's fit at a larger size), every one of the 1M stored rows is
scored against each query in the projected space (exactly, float32: no inverted file, no codes) and the
rank of exact search's top-1 (the best of the places tied with it) is counted. Reported: the share of
queries whose exact top-1 ranks within 32 (what the exact re-rank reads), 1,000 (the places the map's inverted
file proposes) and 10,000, the median rank, and how much of their energy queries and mapped places keep
in the projection. A projection that ranks the answer beyond 1,000 loses it whatever is built on it.
Writes <out>/results.json, table.md and projection_dim.png.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from densernet_core.plots import pyplot, save_figure  # noqa: E402
from benchmarks import bench_haystack as bh  # noqa: E402
from benchmarks.bench_first_stage import map_and_queries  # noqa: E402
from benchmarks.report import save_report  # noqa: E402
from densernet_core.mapping.index import (COMPACT_FIT_SAMPLES, ENERGY_SAMPLES, PROJECT_ROWS,  # noqa: E402
                                          coarse_projection, read_rows)

DEPTHS = (32, 1000, 10000)


def projected_ranks(rows: np.ndarray, queries: np.ndarray, bases: dict[str, np.ndarray],
                    targets: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Per basis, each query's rank of its best target place among all rows, scored in the projected space.
    A row's projected score is row . (B B^T q), so one pass over the rows scores every basis at once."""
    names = list(bases)
    lifted = {n: (queries @ b) @ b.T for n, b in bases.items()}  # Q x D: each query seen through the basis
    stacked = torch.from_numpy(np.ascontiguousarray(np.concatenate([lifted[n] for n in names]).T))  # D x (B Q)
    q = len(queries)
    best = np.stack([(read_rows(rows, np.sort(t), None).astype(np.float32) @ lifted[n][k]).max()
                     for n in names for k, t in enumerate(targets)])  # (B Q,): the best tied place's score
    above = np.zeros(len(best), np.int64)
    for s in tqdm(range(0, len(rows), PROJECT_ROWS), desc="score the map", unit="block"):
        block = torch.from_numpy(np.asarray(rows[s:s + PROJECT_ROWS], dtype=np.float32))
        above += (block @ stacked > torch.from_numpy(best + bh.TIE)).sum(0).numpy()  # a tie is not above
    return {n: above[i * q:(i + 1) * q] for i, n in enumerate(names)}


def energy_kept(x: np.ndarray, basis: np.ndarray) -> float:
    """Mean share of the rows' squared norm that the projection keeps."""
    return float(np.mean(((x @ basis) ** 2).sum(1) / (x ** 2).sum(1)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--map", default=str(ROOT / "bench_out" / "haystack" / "gardens_point_1000000"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--dims", type=int, nargs="+", default=[256, 512, 1024, 2048])
    p.add_argument("--out", default="bench_out/projection_dim")
    args = p.parse_args(argv)
    if any(d <= 0 for d in args.dims):
        raise SystemExit(f"--dims must be positive, got {args.dims}")
    out = Path(args.out)
    pmap, case, queries, exact_s, exact_i = map_and_queries(Path(args.map), Path(args.data), out)
    rows = pmap.descriptors
    if max(args.dims) >= rows.shape[1]:
        raise SystemExit(f"--dims must be below the descriptor's {rows.shape[1]} dimensions, got {max(args.dims)}")
    if pmap.index.projection is None:
        raise SystemExit(f"{args.map}: its index has no projection to compare with")
    provenance = pmap.index.provenance
    print(f"fitting the top {max(args.dims)} directions on {COMPACT_FIT_SAMPLES:,} of the map's rows "
          f"(seed {provenance.seed}, as the map's own {provenance.dim})", flush=True)
    top = coarse_projection(rows, max(args.dims), provenance.seed, COMPACT_FIT_SAMPLES)
    bases = {f"the map's own ({provenance.dim}-D, as built)": pmap.index.projection}
    bases.update({f"top {d} directions": np.ascontiguousarray(top[:, :d]) for d in sorted(args.dims)})
    ranks = projected_ranks(rows, queries, bases, bh.tied_tops(exact_s, exact_i))
    sample = read_rows(rows, np.sort(np.random.default_rng(0).choice(len(rows), ENERGY_SAMPLES, replace=False)),
                       None).astype(np.float32)
    results = {"map": args.map, "places": len(pmap), "queries": len(queries), "depths": list(DEPTHS),
               "projections": []}
    lines = [f"{len(pmap):,} places, {len(queries)} night queries: the rank of exact search's top-1 when the map is "
             "scored exactly in the projected space", "",
             "| projection | within 32 | within 1,000 | within 10,000 | median rank | energy kept: queries / places |",
             "|---|---|---|---|---|---|"]
    for name, basis in bases.items():
        r = ranks[name]
        row = {"projection": name, "dim": int(basis.shape[1]),
               "within": {str(d): float(np.mean(r < d)) for d in DEPTHS}, "median_rank": float(np.median(r)),
               "energy_queries": energy_kept(queries, basis), "energy_places": energy_kept(sample, basis),
               "ranks": r.tolist()}
        results["projections"].append(row)
        lines.append(f"| {name} | " + " | ".join(f"{row['within'][str(d)]:.2f}" for d in DEPTHS)
                     + f" | {row['median_rank']:.0f} | {row['energy_queries']:.2f} / {row['energy_places']:.2f} |")
    plot(results, out / "projection_dim.png")
    save_report(out, results, "\n".join(lines), out / "projection_dim.png")
    return 0


def plot(results: dict, png: Path) -> None:
    plt = pyplot()

    fitted = [r for r in results["projections"] if r["projection"].startswith("top")]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for depth, colour in zip(results["depths"], ("C0", "C1", "C2")):
        ax.plot([r["dim"] for r in fitted], [r["within"][str(depth)] for r in fitted], "o-", color=colour,
                label=f"exact top-1 within {depth:,}")
        own = results["projections"][0]
        ax.plot(own["dim"], own["within"][str(depth)], "s", color=colour, mfc="none")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("projection size (open square: the map's own, as built)")
    ax.set_ylabel("share of night queries")
    ax.set_title(f"what a projection can hold at {results['places']:,} places")
    ax.legend(fontsize=8)
    save_figure(fig, png, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
