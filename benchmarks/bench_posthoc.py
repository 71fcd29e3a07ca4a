"""Descriptor post-processing without retraining, over the recipe's seeds (issue 22, *Recipe trials*).

    .venv/bin/python benchmarks/bench_posthoc.py --checkpoints bench_out/gp_seeds_epyc/runs/small*/model.safetensors

Cheap to try before another training run: does a change applied to trained checkpoints raise the held-out
Gardens Point recall (frames 100-199, the headline protocols) on the mean over seeds by more than one sd?
Variants, each beside the checkpoints as trained, in the same run:
- power normalisation (signed square root of the unit VLAD, then unit length again; Jegou et al.'s
  answer to bursty features);
- centring (the descriptors' common component, which night shifts, taken out before the cosine): the
  map less its mean, the queries less the map's mean, or less the running mean of the query run so far
  (causal, as a robot could; started from the map's mean counted as 1 or 10 frames), or each set less its
  own mean (an offline bound: it needs the whole query run);
- nuisance directions removed: the top 1, 5 or 20 principal directions of the differences between one
  place's descriptors on two traversals, fitted on the training frames 0-99 only (light and side of the
  path, which retrieval should ignore), projected out of queries and map alike (a fixed linear map: it
  needs no query run, unlike centring);
- the light's shift taken out: the mean of (night_right less day_right, the same side of the path) over the
  training frames' places, one vector
  fitted on frames 0-99 only; subtracted from the night queries (the light known, e.g. from the clock),
  or from every query in proportion to how much of it the query run so far shows (causal: the running
  mean's excess over the map's mean, projected on the shift), so that a day run takes out about none;
  beside them the evaluated frames' own shift taken out of their night queries (an oracle bound), and the
  cosine between the two shifts (how far the fitted one carries to other places);
- database-side augmentation: each mapped descriptor averaged with its nearest mapped neighbour in
  descriptor space (DBA, k = 1), the queries unchanged;
- the NetVLAD soft assignment made softer or sharper: its weights (alpha times the unit centroids) scaled
  by 0.5, 0.75 or 1.5 (the recipe sets alpha so that the runner-up centroid gets 1 % of the nearest's
  weight, netvlad.py);
- test-time augmentation, each image described twice and the two descriptors summed (unit length again),
  queries and map alike, at twice the network's cost per frame: with its mirror image, or at 1.5 times the
  trained resolution as well (a second scale, as multi-scale NetVLAD evaluations do);
- the global top 10 re-ranked by the fused dense map (its 192-D features, 2x2-pooled to a 24x40 grid and
  unit length, the map's and the query's matched by mutual nearest neighbour): by the count of mutual
  matches, or by Patch-NetVLAD's rapid spatial scoring of their displacements (Hausler et al., CVPR 2021),
  which also asks that the matches move together, as one view of one place does. Rule and depth fixed
  before the first run, as the SIFT re-rank's top 10 (docs/TRAINING.md).
Writes <out>/results.json, table.md and machine.json.
"""
from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from densernet_core.cli import setup_logging  # noqa: E402
from densernet_core.datasets import load_traverse  # noqa: E402
from densernet_core.images import read_image  # noqa: E402
from densernet_core.localization.rerank import dense_grid, spatial_score  # noqa: E402
from densernet_core.model.checkpoint import checkpoint_hash, load_model  # noqa: E402
from densernet_core.training.evaluation import evaluate_descriptors  # noqa: E402
from benchmarks.bench_final_stage import unit  # noqa: E402
from benchmarks.bench_gardens_point import EVAL_FRAMES, FIT_FRAMES, PROTOCOLS, TOLERANCE  # noqa: E402
from benchmarks.report import fmt_spread, save_report, spread  # noqa: E402

SHARPNESS = (0.5, 0.75, 1.5)
RUNNING_PRIOR = (1.0, 10.0)  # frames the map's mean counts for in a query run's running mean
HALF_ROUTE = slice(0, (EVAL_FRAMES[1] - EVAL_FRAMES[0]) // 2)  # queries on the first half of the mapped places
SECOND_SCALE = 1.5  # the test-time second resolution, times the trained one
NUISANCE_DIMS = (1, 5, 20)  # directions removed; 300 training differences keep >= 10 per direction (docs/TRAINING.md)
NIGHT_RUN, DAY_RUN = "night_right", "day_right"  # the light shift: night less day on the same side of the path
VARIANTS = ("power", "centre", "nuisance", "shift", "dba", "sharpness", "mirror", "scale", "rerank")
RERANK_TOP = 10  # global candidates re-ranked by the dense map
RERANK_POOL = 2  # the dense map averaged over POOL x POOL cells before matching (48x80 -> 24x40 at 192x320)
BATCH = 8  # images per forward pass; the mirror variant reads its flipped images one batch at a time


def power_norm(x: np.ndarray, power: float = 0.5) -> np.ndarray:
    return unit(np.sign(x) * np.abs(x) ** power)


def dba(db: np.ndarray, k: int = 1) -> np.ndarray:
    """Each mapped descriptor plus its k nearest mapped neighbours (itself first), unit length again."""
    nearest = np.argsort(-(db @ db.T), axis=1)[:, :k + 1]
    return unit(db[nearest].sum(axis=1))


def describe_all(model, sets: dict) -> dict[str, np.ndarray]:
    return {t: model.describe(s.images, batch_size=BATCH).astype(np.float64) for t, s in sets.items()}


def describe_mirrored(model, sets: dict, batch_size: int = BATCH) -> dict[str, np.ndarray]:
    """Every image flipped left to right and described, one batch of images in memory at a time (the same
    batches as `describe_all`, so the same descriptors as describing the flipped files)."""
    out = {}
    for t, s in sets.items():
        parts = [model.describe([np.ascontiguousarray(read_image(p)[:, ::-1]) for p in s.images[i:i + batch_size]],
                                batch_size=batch_size) for i in range(0, len(s.images), batch_size)]
        out[t] = np.concatenate(parts).astype(np.float64)
    return out


def summed(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {t: unit(a[t] + b[t]) for t in a}


def centred_on_map(q: np.ndarray, db: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Queries and map less the map's mean descriptor (known when the map is built), unit length again."""
    mu = db.mean(axis=0)
    return unit(q - mu), unit(db - mu)


def centred_offline(q: np.ndarray, db: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The map less its mean, the queries less the mean of the whole query run (needs the run's end: a bound)."""
    return unit(q - q.mean(axis=0)), unit(db - db.mean(axis=0))


def centred_running(q: np.ndarray, db: np.ndarray, prior: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """As a robot could: the map less its mean; query t less the mean of queries 0..t in the order driven,
    started from the map's mean counted as `prior` frames (frame 0 alone would centre to zero)."""
    mu_db = db.mean(axis=0)
    n = np.arange(1, len(q) + 1, dtype=np.float64)[:, None]
    running = (prior * mu_db + np.cumsum(q, axis=0)) / (prior + n)
    return unit(q - running), unit(db - mu_db)


def nuisance_basis(fit: dict[str, np.ndarray], k: int) -> np.ndarray:
    """The k directions (k x D, orthonormal) in which one place's descriptors differ most between traversals,
    from the training frames only: light and side of the path, what retrieval should ignore."""
    names = sorted(fit)
    diffs = np.concatenate([fit[a] - fit[b] for i, a in enumerate(names) for b in names[i + 1:]])
    if k > len(diffs) // 10:
        raise ValueError(f"{k} directions from {len(diffs)} differences: fewer than 10 per direction")
    _, _, vt = np.linalg.svd(diffs, full_matrices=False)
    return vt[:k]


def light_shift(fit: dict[str, np.ndarray], night: str = NIGHT_RUN, day: str = DAY_RUN) -> np.ndarray:
    """What night adds to a place's descriptor, averaged over the training places: light only, since both
    runs walked the same side of the path and the places average out."""
    return (fit[night] - fit[day]).mean(axis=0)


def shift_removed(desc: dict[str, np.ndarray], shift: np.ndarray, run: str = NIGHT_RUN) -> dict[str, np.ndarray]:
    """The light known: one run's descriptors less the whole shift, unit length again; the others as they were."""
    return {t: unit(x - shift) if t == run else x for t, x in desc.items()}


def shifted_running(q: np.ndarray, db: np.ndarray, shift: np.ndarray, prior: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Query t less the shift times alpha_t, the share of it the run so far shows: the running mean's excess
    over the map's mean (started from the map's mean counted as `prior` frames), projected on the shift.
    The map as it is."""
    mu_db = db.mean(axis=0)
    n = np.arange(1, len(q) + 1, dtype=np.float64)[:, None]
    running = (prior * mu_db + np.cumsum(q, axis=0)) / (prior + n)
    alpha = (running - mu_db) @ shift / (shift @ shift)
    return unit(q - alpha[:, None] * shift), db


def without(basis: np.ndarray):
    """Descriptors with `basis`'s directions projected out, unit length again (queries and map alike)."""
    return lambda x: unit(x - (x @ basis.T) @ basis)


def recalls(desc: dict, sets: dict, query_fn=lambda x: x, db_fn=lambda x: x, pair_fn=None,
            queries_taken: slice = slice(None)) -> list[float]:
    """R@1 per protocol; `queries_taken`: the part of each query run driven (the map stays whole)."""
    out = []
    for q, db in PROTOCOLS:
        queries, mapped = query_fn(desc[q][queries_taken]), db_fn(desc[db])
        if pair_fn is not None:
            queries, mapped = pair_fn(queries, mapped)
        r = evaluate_descriptors(f"{q}->{db}", mapped, queries, sets[db].positions,
                                 sets[q].positions[queries_taken], TOLERANCE)
        out.append(float(r.recalls[1]))
    return out


def reranked_recalls(desc: dict, grids: dict, sets: dict, shape: tuple[int, int], top: int = RERANK_TOP
                     ) -> tuple[list[float], list[float], list[float]]:
    """R@1 per protocol after re-ranking each query's global top `top` by mutual matches, and by spatial score;
    and the seconds each query's scoring of its candidates took."""
    import time

    from densernet_core.training.mining import within

    by_count, by_space, seconds = [], [], []
    for q, db in PROTOCOLS:
        ranked = np.argsort(-(desc[q] @ desc[db].T), axis=1, kind="stable")[:, :top]
        truth = within(np.asarray(sets[q].positions), np.asarray(sets[db].positions), TOLERANCE)
        right_count = right_space = 0
        for i, cands in enumerate(ranked):
            t0 = time.perf_counter()
            scores = [spatial_score(grids[q][i], grids[db][j], shape[1], shape[0]) for j in cands]
            seconds.append(time.perf_counter() - t0)
            right_count += cands[int(np.argmax([s[0] for s in scores]))] in truth[i]
            right_space += cands[int(np.argmax([s[1] for s in scores]))] in truth[i]
        by_count.append(right_count / len(ranked))
        by_space.append(right_space / len(ranked))
    return by_count, by_space, seconds


def with_sharpness(model, scale: float, sets: dict) -> dict[str, np.ndarray]:
    """Describe with every NetVLAD's assignment weights scaled by `scale`, then put them back."""
    import torch

    from densernet_core.model.netvlad import NetVLAD

    layers = [m for m in model.modules() if isinstance(m, NetVLAD)]
    if not layers:
        raise ValueError("the checkpoint has no NetVLAD layer to soften or sharpen")
    kept = [m.conv.weight.detach().clone() for m in layers]
    try:
        with torch.no_grad():
            for m, w in zip(layers, kept):
                m.conv.weight.copy_(w * scale)
        return describe_all(model, sets)
    finally:
        with torch.no_grad():
            for m, w in zip(layers, kept):
                m.conv.weight.copy_(w)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", type=Path, required=True, help="one per training seed")
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/gardens_point"))
    parser.add_argument("--out", default="bench_out/posthoc")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="which variants to run beside the checkpoints as trained (default: all)")
    args = parser.parse_args(argv)
    for c in args.checkpoints:
        if not c.is_file():
            parser.error(f"--checkpoints {c}: no such file")
    data = Path(args.data)
    if not all((data / t).is_dir() for p in PROTOCOLS for t in p):
        print(f"Gardens Point not found at {data} (see ../shared/data/README.md); nothing to benchmark")
        return 2
    setup_logging()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sets = {t: load_traverse(data / t, range(*EVAL_FRAMES)) for t in sorted({t for p in PROTOCOLS for t in p})}
    fit_sets = ({t: load_traverse(data / t, range(*FIT_FRAMES)) for t in sets}
                if {"nuisance", "shift"} & set(args.variants) else {})
    per: dict[str, list[list[float]]] = {}
    # per checkpoint: its sha256, the cosine of the training frames' light shift with the evaluated frames', the re-rank p50
    shas, shift_cosines, rerank_ms = [], [], []
    for c in args.checkpoints:
        shas.append(checkpoint_hash(c))
        model = load_model(c)
        desc = describe_all(model, sets)
        per.setdefault("as trained", []).append(recalls(desc, sets))
        if "power" in args.variants:
            per.setdefault("power normalisation (signed square root)", []).append(
                recalls(desc, sets, power_norm, power_norm))
        if "centre" in args.variants:
            per.setdefault("centred on the map's mean", []).append(recalls(desc, sets, pair_fn=centred_on_map))
            per.setdefault("map and query run each centred on its own mean (offline bound)", []).append(
                recalls(desc, sets, pair_fn=centred_offline))
            running = {p: partial(centred_running, prior=p) for p in RUNNING_PRIOR}
            for prior, fn in running.items():
                per.setdefault(f"queries centred on their running mean (prior {prior:g} frames), map on its own",
                               []).append(recalls(desc, sets, pair_fn=fn))
            # a robot drives part of its map: the query run's mean is then not the map's places under other light
            per.setdefault("as trained, queries on the first half of the route only", []).append(
                recalls(desc, sets, queries_taken=HALF_ROUTE))
            for prior, fn in running.items():
                per.setdefault(f"running-mean centring (prior {prior:g}), queries on the first half only", []).append(
                    recalls(desc, sets, pair_fn=fn, queries_taken=HALF_ROUTE))
        fit = describe_all(model, fit_sets) if fit_sets else {}
        if "nuisance" in args.variants:
            for k in NUISANCE_DIMS:
                drop = without(nuisance_basis(fit, k))
                per.setdefault(f"the training frames' top {k} cross-traversal directions removed", []).append(
                    recalls(desc, sets, drop, drop))
        if "shift" in args.variants:
            shift = light_shift(fit)
            per.setdefault("night queries less the training frames' light shift (the light known)", []).append(
                recalls(shift_removed(desc, shift), sets))
            held_out = light_shift(desc)  # the evaluated frames' own shift: a bound, and how far the fitted one carries
            per.setdefault("night queries less the evaluated frames' own light shift (oracle bound)", []).append(
                recalls(shift_removed(desc, held_out), sets))
            shift_cosines.append(float(shift @ held_out / np.linalg.norm(shift) / np.linalg.norm(held_out)))
            for prior in RUNNING_PRIOR:
                fn = partial(shifted_running, shift=shift, prior=prior)
                per.setdefault(f"every query less the shift its running mean shows (prior {prior:g} frames)", []).append(
                    recalls(desc, sets, pair_fn=fn))
                per.setdefault(f"the same (prior {prior:g}), queries on the first half only", []).append(
                    recalls(desc, sets, pair_fn=fn, queries_taken=HALF_ROUTE))
        if "dba" in args.variants:
            per.setdefault("map-side augmentation (DBA, k = 1)", []).append(recalls(desc, sets, db_fn=dba))
        for s in SHARPNESS if "sharpness" in args.variants else ():
            per.setdefault(f"NetVLAD assignment weights x {s:g}", []).append(recalls(with_sharpness(model, s, sets), sets))
        if "mirror" in args.variants:
            flipped = describe_mirrored(model, sets)
            per.setdefault("with the mirror image (2 descriptors per frame)", []).append(recalls(summed(desc, flipped), sets))
        if "scale" in args.variants:
            h, w = model.config.image_size
            big = (int(round(h * SECOND_SCALE / 16)) * 16, int(round(w * SECOND_SCALE / 16)) * 16)
            larger = describe_all(load_model(c, image_size=big), sets)
            per.setdefault(f"with a second scale, {big[0]}x{big[1]} (2 descriptors per frame)", []).append(
                recalls(summed(desc, larger), sets))
        if "rerank" in args.variants:
            grids, shape = {}, None
            for t, s in sets.items():
                _, dense = model.describe(s.images, batch_size=BATCH, return_dense=True)
                grids[t] = [dense_grid(d, RERANK_POOL, np.float64) for d in dense]  # as first measured
                shape = (dense[0].shape[1] // RERANK_POOL, dense[0].shape[2] // RERANK_POOL)
            by_count, by_space, seconds = reranked_recalls(desc, grids, sets, shape)
            rerank_ms.append(1000 * float(np.median(seconds)))
            per.setdefault(f"top {RERANK_TOP} re-ranked by the dense map's mutual matches", []).append(by_count)
            per.setdefault(f"top {RERANK_TOP} re-ranked by their rapid spatial score (Patch-NetVLAD's)", []).append(
                by_space)
        print(f"{c}: " + "; ".join(f"{k}: {' / '.join(f'{x:.2f}' for x in v[-1])}" for k, v in per.items()), flush=True)
    names = [f"{q}->{db}" for q, db in PROTOCOLS]
    summary = {k: {n: spread([r[i] for r in rows]) for i, n in enumerate(names)} for k, rows in per.items()}
    lines = [f"Held-out Gardens Point R@1 (frames {EVAL_FRAMES[0]}-{EVAL_FRAMES[1] - 1}, |i-j| <= {TOLERANCE:g}), "
             f"mean ± sd over {len(args.checkpoints)} checkpoints ({', '.join(s[:8] for s in shas)})", "",
             "| variant | " + " | ".join(names) + " | per checkpoint (" + names[-1] + ") |",
             "|---|" + "---|" * (len(names) + 1)]
    for k, rows in per.items():
        lines.append(f"| {k} | " + " | ".join(fmt_spread(summary[k][n], digits=3) for n in names)
                     + " | " + " ".join(f"{r[-1]:.2f}" for r in rows) + " |")
    if shift_cosines:
        lines += ["", "Cosine of the training frames' light shift with the evaluated frames' own, per checkpoint: "
                  + " ".join(f"{c:.2f}" for c in shift_cosines)]
    if rerank_ms:
        lines += ["", f"Re-ranking {RERANK_TOP} candidates by the dense map (float64 grids, numpy), ms per query, p50 per "
                  "checkpoint: " + " ".join(f"{m:.1f}" for m in rerank_ms)]
    save_report(out, {"checkpoints": [str(c) for c in args.checkpoints], "sha256": shas, "per_checkpoint": per,
                      "summary": summary, "shift_cosine": shift_cosines, "rerank_ms_p50": rerank_ms}, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
