"""Real queries in a haystack: real maps padded with distractor places, searched exactly and compactly.

    .venv/bin/python benchmarks/bench_haystack.py [--checkpoint C] [--sizes 100000 1000000]
        [--datasets gardens_point kitti] [--out bench_out/haystack]

Maps and queries (the trained `small` of the Gardens Point demo, `--checkpoint`; trained here when absent):
- Gardens Point: map day_left 0-199, queries night_right 100-199, right within 2 frames;
- KITTI: map the even frames, queries the odd ones (at 128x416), right within 2 frames.

Each map is padded with distractors up to `--sizes` places. A distractor is derived from two real
descriptors (two different frames) of a pool that holds none of the evaluated places (Gardens Point: frames 0-99 of its three
traversals, or with `--pool day` of its two day ones, and the KITTI frames; KITTI: all Gardens Point
frames): each of the raw VLAD's cluster blocks is taken from one of the two at random, then the whole is
normalised. Its blocks are real ones, and it resembles a query as much as the real images it mixes do. Distractor places lie on a line far from
the real route, so a query that retrieves one is wrong.

Every map is searched three ways on the same queries: exact over the unpadded map, exact over the
padded map (a float32 brute force over the stored float16 rows), and with the compact index a map of
that size gets (`auto`), built over the padded map, saved and loaded back as a map folder (its lists and
descriptors memory-mapped). Reported: R@1; the single-frame estimator's fixes, right fixes and median
error (calibrated confidence; the observation model fitted on the unpadded map, used for all three);
top-1 agreement of the compact search with the exact one at re-rank depths 16, 32 (the default) and
64 (a place as similar as exact search's top-1, within TIE, counts as agreeing: a tie is no miss, and
maps padded before distractors mixed two different frames held copies); query time. The padded Gardens Point map of the largest size stays in <out>/ as a map folder (the
node benchmark runs on it). Each compact map is also queried with its own places' stored descriptors (every
real place and 1,000 distractors: what its search was fitted on): the share answered with the place itself
or a tie; `--self-check` does only that, on the map folders kept in <out>. Writes <out>/results.json and
<out>/haystack.png.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from densernet_core.plots import pyplot, save_figure  # noqa: E402
from densernet_core.datasets import GeoImages, load_kitti, load_traverse  # noqa: E402
from densernet_core.localization.localizer import Localizer  # noqa: E402
from densernet_core.localization.pose import PoseEstimatorConfig  # noqa: E402
from densernet_core.mapping import placemap as pm  # noqa: E402
from densernet_core.mapping.index import ShortlistIndex, build_index, resolve_index_type  # noqa: E402
from densernet_core.model.checkpoint import checkpoint_hash, load_model  # noqa: E402
from benchmarks.bench_index import exact_topk  # noqa: E402
from benchmarks.report import machine, machine_line  # noqa: E402

GP_TOL = 2.0  # frames
POOL_TRAVERSES = {"all": ("day_left", "day_right", "night_right"), "day": ("day_left", "day_right")}
KITTI_PLACE_TOL = 1.0  # an odd frame's two even neighbours (2 frames)
KITTI_TOL = 1.0  # metres (bench_pose's threshold)
KITTI_SIZE = (128, 416)
GP_RADIUS = 5.0  # the single-frame estimator's cluster radius (frames), as bench_pose
KITTI_RADIUS = 5.0  # metres
DISTRACTOR_OFFSET = 1.0e6  # distractor places lie on a line this far from the real route
CHUNK = 16384
TOP_K = 10
RERANK_DEPTHS = (16, 32, 64)
SELF_DISTRACTORS = 1000  # distractors queried with their own descriptors (beside every real place)
TIE = 1e-5  # two places this close in exact similarity are the same answer (float16 rows re-scored in float32)


@dataclass
class Case:
    name: str
    places: GeoImages
    map_desc: np.ndarray  # M x D float32, real
    query_desc: np.ndarray  # Q x D float32
    query_place: np.ndarray  # Q: where each query is, in map place ids (KITTI's odd frames: halfway, k + 0.5)
    place_tol: float  # a retrieved place is right this close to it (in place ids)
    truth: np.ndarray  # Q x 3: each query's true position (map units)
    pos_tol: float  # a fix is right this close to it (map units)
    pool: np.ndarray  # P x D float32: real descriptors of no evaluated place
    radius: float
    unit: str


def describe(model, images: list, cache: Path) -> np.ndarray:
    """Descriptors of the images, kept in `cache` (keyed by the caller: checkpoint and image size)."""
    if cache.is_file():
        return np.load(cache, allow_pickle=False)
    desc = model.describe(images, progress=True).astype(np.float32)
    np.save(cache, desc, allow_pickle=False)
    return desc


def cases(args, out: Path) -> list[Case]:
    ckpt = Path(args.checkpoint)
    sha = checkpoint_hash(ckpt)[:12]
    gp, kit = Path(args.data) / "gardens_point", Path(args.data) / "kitti_vo_seq1"
    model = load_model(ckpt)
    gp_desc = {t: describe(model, load_traverse(gp / t).images, out / f"desc_{sha}_gp_{t}.npy")
               for t in ("day_left", "day_right", "night_right")}
    kitti_model = load_model(ckpt, image_size=KITTI_SIZE)
    kitti = load_kitti(kit)
    kitti_desc = describe(kitti_model, kitti.images, out / f"desc_{sha}_kitti.npy")
    found = []
    if "gardens_point" in args.datasets:
        pool = np.concatenate([gp_desc[t][:100] for t in POOL_TRAVERSES[args.pool]] + [kitti_desc])
        places = load_traverse(gp / "day_left")
        found.append(Case("gardens_point", places, gp_desc["day_left"], gp_desc["night_right"][100:],
                          np.arange(100, 200, dtype=float), GP_TOL, places.positions[100:], GP_TOL, pool, GP_RADIUS,
                          "frames"))
    if "kitti" in args.datasets:
        even, odd = list(range(0, len(kitti), 2)), list(range(1, len(kitti), 2))
        found.append(Case("kitti", kitti.subset(even), kitti_desc[even], kitti_desc[odd], np.arange(len(odd)) + 0.5,
                          KITTI_PLACE_TOL, kitti.positions[odd], KITTI_TOL, np.concatenate(list(gp_desc.values())),
                          KITTI_RADIUS, "m"))
    return found


def padded_map(case: Case, size: int, folder: Path, num_clusters: int, seed: int = 0) -> tuple[np.ndarray, GeoImages]:
    """The map's descriptors then distractors up to `size` places, float16 in folder/descriptors.npy
    (reused when it is there with that shape), and the places with the distractors' positions."""
    n_real, d = case.map_desc.shape
    path = folder / pm.DESCRIPTORS
    folder.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        existing = np.load(path, mmap_mode="r")
        if existing.shape == (size, d):
            return existing, padded_places(case.places, size)
    partial = path.with_suffix(".partial.npy")  # renamed when complete: an interrupted run leaves no full-shaped file
    out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=(size, d))
    out[:n_real] = case.map_desc
    rng = np.random.default_rng(seed)
    blocks = case.pool.reshape(len(case.pool), num_clusters, d // num_clusters)
    for s in range(n_real, size, CHUNK):
        m = min(CHUNK, size - s)
        # b is never a: a distractor mixed from one frame with itself is that frame again (a copy of a pool
        # frame, or of a map place where the pool holds them), a tie with it rather than a distractor.
        a = rng.integers(len(blocks), size=m)
        b = (a + rng.integers(1, len(blocks), size=m)) % len(blocks)
        pick = rng.random((m, num_clusters, 1)) < 0.5
        x = np.where(pick, blocks[a], blocks[b]).reshape(m, d)
        out[s:s + m] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
    out.flush()
    del out
    partial.replace(path)
    return np.load(path, mmap_mode="r"), padded_places(case.places, size)


def padded_places(places: GeoImages, size: int) -> GeoImages:
    n = size - len(places)
    line = np.c_[DISTRACTOR_OFFSET + np.arange(n, dtype=float), np.zeros((n, 2))]
    return GeoImages(list(places.images) + [Path(f"distractor/{i:07d}.png") for i in range(n)],
                     np.vstack([places.positions, line]), np.vstack([places.orientations, np.tile([0, 0, 0, 1.0], (n, 1))]),
                     np.r_[places.timestamps, np.zeros(n)], "haystack", places.has_orientation, places.frame_id,
                     place_sources=[places.source] * len(places) + ["distractor"] * n)


class Precomputed:
    """A map index answering with results computed beforehand (the padded maps' brute force)."""

    def __init__(self, queries: np.ndarray, scores: np.ndarray, ids: np.ndarray) -> None:
        self.answers = {q.tobytes(): (s, i) for q, s, i in zip(np.asarray(queries, np.float32), scores, ids)}

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        s, i = self.answers[np.asarray(q, np.float32).reshape(-1).tobytes()]
        return s[None, :k], i[None, :k]


def make_map(descriptors: np.ndarray, places: GeoImages, index, observation, ckpt: Path, sha: str, cfg: dict,
             kind: str) -> pm.PlaceMap:
    manifest = pm.Manifest(pm.FORMAT_VERSION, cfg, sha, str(ckpt.resolve()), descriptors.shape[1], len(places), "map",
                           time.strftime("%Y-%m-%dT%H:%M:%S%z"), kind, "float16", places.has_orientation,
                           None, "auto")
    return pm.PlaceMap(manifest, descriptors, places, index=index, observation=observation)


def evaluate(case: Case, pmap: pm.PlaceMap, times: bool = False) -> dict:
    """R@1 and the single-frame estimator's fixes, right fixes and median error."""
    loc = Localizer(None, pmap, PoseEstimatorConfig(cluster_radius=case.radius), metric=None)
    n_real = len(case.map_desc)
    right1, fixes, right_fixes, errors, top1, top1_score, spent = 0, 0, 0, [], [], [], []
    for k, d in enumerate(case.query_desc):
        result = loc.localize_descriptor(d[None])  # its retrieval is the map's search, timed alone
        spent.append(result.retrieval.search_s)
        j = int(result.retrieval.ids[0])
        top1.append(j)
        top1_score.append(float(result.retrieval.scores[0]))
        right1 += j < n_real and abs(j - case.query_place[k]) <= case.place_tol
        est = result.single
        if est.fix:
            fixes += 1
            e = float(np.linalg.norm(np.asarray(est.position) - case.truth[k]))
            errors.append(e)
            right_fixes += e <= case.pos_tol
    out = {"recall_at_1": right1 / len(case.query_desc), "fixes": fixes, "right_fixes": right_fixes,
           "median_error": float(np.median(errors)) if errors else None, "unit": case.unit, "top1": top1,
           "top1_score": top1_score}
    if times:
        out["query_ms_p50"] = 1000 * float(np.median(spent[1:]))
        out["query_ms_p95"] = 1000 * float(np.percentile(spent[1:], 95))
    return out


def tied_tops(exact_s: np.ndarray, exact_i: np.ndarray) -> list[np.ndarray]:
    """Per query, the places as similar as exact search's top-1 (itself and any tie): what counts as its answer."""
    return [ids[scores >= scores[0] - TIE] for scores, ids in zip(exact_s, exact_i)]


def agreement(top1_score: list[float] | np.ndarray, exact_top1_score: list[float]) -> float:
    """Share of queries whose answer is as similar as exact search's top-1 (the same place, or a tie)."""
    return float(np.mean(np.asarray(top1_score) >= np.asarray(exact_top1_score) - TIE))


def printable(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("top1", "top1_score", "machine")}


def self_agreement(pmap: pm.PlaceMap, distractors: int = SELF_DISTRACTORS, seed: int = 0) -> dict:
    """The map's own places as queries (what its compact search was fitted on): the share whose top-1 is
    the place itself or a place as similar, for the real places and for a sample of distractors."""
    real = np.flatnonzero(pmap.places.positions[:, 0] < DISTRACTOR_OFFSET / 2)
    others = np.setdiff1d(np.arange(len(pmap)), real)
    sample = np.sort(np.random.default_rng(seed).choice(others, min(distractors, len(others)), replace=False))
    out = {}
    for name, rows in (("real", real), ("distractors", sample)):
        q = np.asarray(pmap.descriptors[rows], dtype=np.float32)
        scores, ids = pmap.search(q, 1)
        own = np.einsum("ij,ij->i", q, q)  # the place's exact similarity to itself
        out[name] = {"queries": len(rows), "self_top1": float(np.mean(ids[:, 0] == rows)),
                     "agreement": agreement(scores[:, 0], own)}
    return out


def self_check(out: Path) -> dict:
    """`self_agreement` of every map folder the benchmark kept in `out`, into results.json."""
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    found = {}
    for folder in sorted(p.parent for p in out.glob("*/manifest.json")):
        found[folder.name] = self_agreement(pm.PlaceMap.load(folder))
        print(folder.name, json.dumps(found[folder.name]), flush=True)
    if not found:
        raise SystemExit(f"no map folder in {out}: run the benchmark first (the largest Gardens Point map is kept)")
    results["self_agreement"] = {**results.get("self_agreement", {}), **found}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return found


def rerank_agreement(pmap: pm.PlaceMap, queries: np.ndarray, exact_top1_score: list[float]) -> dict:
    """Top-1 agreement with exact search had the compact index re-scored its best 16/32/64 places."""
    i = pmap.index
    agree = {}
    for depth in RERANK_DEPTHS:
        s, _ = ShortlistIndex(i.coarse, i.projection, pmap.descriptors, depth, i.provenance, i.refine).search(queries, 1)
        agree[str(depth)] = agreement(s[:, 0], exact_top1_score)
    return agree


def run(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = Path(args.checkpoint)
    model = load_model(ckpt)
    cfg, sha, clusters = model.config.to_dict(), checkpoint_hash(ckpt), model.config.num_clusters
    previous = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    if previous.get("sha256") != sha:
        previous = {}
    if previous.get("pool", "all") != args.pool:
        previous = {}
    results = {"checkpoint": str(ckpt), "sha256": sha, "pool": args.pool,
               "cases": previous.get("cases", {})}  # runs add sizes
    host = machine()
    for case in cases(args, out):
        real = make_map(case.map_desc.astype(np.float16), case.places, None, None, ckpt, sha, cfg, "flat")
        observation = real.fit_observation()
        rows = {"unpadded, exact": {"places": len(case.places), **evaluate(case, real)}}
        print(case.name, "unpadded", json.dumps(printable(rows["unpadded, exact"])), flush=True)
        for size in args.sizes:
            pooled = "" if args.pool == "all" or case.name != "gardens_point" else f"_{args.pool}_pool"
            folder = out / f"{case.name}_{size}{pooled}"  # the cached descriptors are the pool's: one folder each
            desc, places = padded_map(case, size, folder, clusters)
            t0 = time.perf_counter()
            s, i = exact_topk(desc, case.query_desc, TOP_K)
            exact_s = time.perf_counter() - t0
            exact = evaluate(case, make_map(desc, places, Precomputed(case.query_desc, s, i), observation, ckpt, sha,
                                            cfg, "flat"))
            kind = resolve_index_type("auto", size)
            t0 = time.perf_counter()
            built = make_map(desc, places, build_index(desc, kind), observation, ckpt, sha, cfg, kind)
            build_s = time.perf_counter() - t0
            built.save(folder)
            del built
            t0 = time.perf_counter()
            loaded = pm.PlaceMap.load(folder)
            load_s = time.perf_counter() - t0
            compact = evaluate(case, loaded, times=True)
            agree = agreement(compact["top1_score"], exact["top1_score"])
            ties = int(np.sum(s[:, 0] - s[:, 1] <= TIE))  # queries whose exact top-1 is tied
            rows[f"{size}, exact"] = {"places": size, **exact, "search_s_all_queries": exact_s, "tied_top1": ties}
            rows[f"{size}, {kind}"] = {"places": size, **compact, "build_s": build_s, "load_s": load_s,
                                       "top1_agreement": agree,
                                       "agreement_by_rerank": rerank_agreement(loaded, case.query_desc, exact["top1_score"])
                                       if kind == "compact" else None,
                                       "ram_bytes_per_place": loaded.index.memory_bytes() / size,
                                       "self_agreement": self_agreement(loaded)}
            for key in (f"{size}, exact", f"{size}, {kind}"):
                print(case.name, key, json.dumps(printable(rows[key])), flush=True)
            del loaded
            if not (case.name == "gardens_point" and size == max(args.sizes)) and not args.keep_maps:
                for f in folder.iterdir():
                    f.unlink()
                folder.rmdir()
        for row in rows.values():
            row["machine"] = host  # rows of earlier runs stay in the file: each names the CPU it came from
        results["cases"][case.name] = {**results["cases"].get(case.name, {}), **rows}
        (out / "results.json").write_text(json.dumps(results, indent=2))
    print(machine_line(host) + " Rows kept from earlier runs name theirs in the .json.")
    table(results)
    plot(results, out / "haystack.png")
    return results


def table(results: dict) -> None:
    print(f"| data | map | search | R@1 | fixes (right) | median error | top-1 = exact | agreement at re-rank "
          f"{'/'.join(map(str, RERANK_DEPTHS))} | query p50 ms | RAM B / place |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, rows in results["cases"].items():
        for key, r in rows.items():
            places, search = key.split(", ")
            med = "—" if r["median_error"] is None else f"{r['median_error']:.2f} {r['unit']}"
            by = r.get("agreement_by_rerank")
            print(f"| {name} | {r['places']} places | {search} | {r['recall_at_1']:.2f} | {r['fixes']} ({r['right_fixes']}) "
                  f"| {med} | {r.get('top1_agreement', 1.0) if 'top1_agreement' in r else '—'} | "
                  f"{'/'.join(f'{by[str(k)]:.2f}' for k in RERANK_DEPTHS) if by else '—'} | "
                  f"{r['query_ms_p50']:.2f} | {r['ram_bytes_per_place']:.0f} |" if "query_ms_p50" in r else
                  f"| {name} | {r['places']} places | {search} | {r['recall_at_1']:.2f} | {r['fixes']} ({r['right_fixes']}) "
                  f"| {med} | — | — | — | — |")


def plot(results: dict, png: Path) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, len(results["cases"]), figsize=(5 * len(results["cases"]), 3.6), squeeze=False)
    for ax, (name, rows) in zip(axes[0], results["cases"].items()):
        labels = list(rows)
        ax.bar(range(len(labels)), [rows[k]["recall_at_1"] for k in labels],
               color=["0.6" if "exact" in k else "tab:blue" for k in labels])
        ax.set_xticks(range(len(labels)), [k.replace(", ", "\n") for k in labels], fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel("R@1")
        ax.set_title(name)
    save_figure(fig, png, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(ROOT / "demo_out_gardens_point" / "train" / "model.safetensors"),
                   help="the trained small (default: the Gardens Point demo's; `make demo DATA=gardens_point`)")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--sizes", type=int, nargs="+", default=[100000, 1000000])
    p.add_argument("--datasets", nargs="+", choices=("gardens_point", "kitti"), default=["gardens_point", "kitti"])
    p.add_argument("--pool", choices=sorted(POOL_TRAVERSES), default="all",
                   help="Gardens Point distractors from frames 0-99 of all three traversals, or of the day ones only "
                        "(a day map grown large holds no night views)")
    p.add_argument("--keep-maps", action="store_true", help="keep every padded map folder (1M places: 25 GB each)")
    p.add_argument("--out", default="bench_out/haystack")
    p.add_argument("--self-check", action="store_true",
                   help="only query the map folders kept in --out with their own places' descriptors")
    args = p.parse_args(argv)
    if args.self_check:
        self_check(Path(args.out))
        return 0
    if not Path(args.checkpoint).is_file():
        raise SystemExit(f"checkpoint not found: {args.checkpoint} (`make demo DATA=gardens_point` trains it)")
    if not (Path(args.data) / "gardens_point").is_dir():
        raise SystemExit(f"no data at {args.data} (see ../shared/data/README.md)")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
