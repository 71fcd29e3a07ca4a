"""Knowing when it does not know: fixes in the map, and "no fix" outside it (issue 24).

    .venv/bin/python benchmarks/bench_open_set.py [--gp-checkpoint C] [--out bench_out/open_set]

Every row runs the same frames through two estimators side by side, single-frame and filtered:
`calibrated` (the map's observation model with a "not in the map" state, the default) and `relative`
(the earlier estimator: confidence relative to the frame's best place, no outside state, bounded-speed
filter; its defaults of min_confidence 0.5 and fix_mass 0.5).

- Gardens Point, map day_left 100-199 (trained `small`, as the demo; position = frame index), camera
  night_right 100-199 in order, no odometry, 3 frames per frame at most: forward, backwards, twice the
  speed, a kidnap (100-149 then 170-199). Right: within 2 frames.
- Routes not in the map: the KITTI snippet (51 frames) and the synthetic street's query run (120 frames)
  against the Gardens Point map; the Gardens Point night camera against the street's map. Right: none.
- A descriptor that carries no information at night: a random-weight trunk (`densernet init --weights
  none` on day_left 0-99), map day_left 100-199, camera night_right 100-199.
- A drive that leaves the mapped area: the Gardens Point map without places 140-159 (night_right and
  day_right 100-199 replayed), and the street's map without places 50-69 (its query run replayed):
  no fix more than 2 places off inside the gap, fixed again within 5 frames after it.
- In-map references: KITTI odd frames against an even-frame map with their poses as odometry, the
  street's query run against its own map (checkpoints from the map's frames).

`--dev` runs instead the development split the margin and the filter's rates were chosen on (Gardens
Point frames 0-99, which the checkpoint was trained on: map day_left 0-99, night_right 0-99 inside; KITTI,
night_right and day_right 100-199 outside), at recognition margins 0.2, 0.25 and 0.3.

Per row: fixes, right fixes, precision, 2-sigma coverage; per in-map set the precision-recall AUC and
the recall at 100 % / 99 % precision (every frame's confidence as the score; out-of-map frames count as
negatives in the open-set curve); reliability per confidence bin over all fixes of each estimator.
Writes <out>/results.json, table.md and open_set.png.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from densernet_core.cli import make_checkpoint, setup_logging  # noqa: E402
from densernet_core.datasets import GeoImages, load_csv, load_kitti, load_traverse  # noqa: E402
from densernet_core.localization.belief import EARLIER_FILTER, BeliefConfig, Motion  # noqa: E402
from densernet_core.localization.localizer import Localizer  # noqa: E402
from densernet_core.localization.pose import PoseEstimatorConfig  # noqa: E402
from densernet_core.localization.report import (open_set_summary, plot_open_set,  # noqa: E402
                                                precision_recall, reliability)
from densernet_core.mapping.placemap import PlaceMap, build_map  # noqa: E402
from densernet_core.model.checkpoint import checkpoint_hash, load_model  # noqa: E402
from benchmarks.bench_filter import CHI2_95, SYNTH_MAX_SPEED, kidnap_recovery, kitti_map, train_gp  # noqa: E402
from benchmarks.report import fmt_num, fmt_pct, fmt_spread, save_report, spread_rows  # noqa: E402

GP_FRAMES = (100, 200)
GP_GAP = (140, 160)
GP_MAX_STEP = 3.0  # frames per frame (the walk is 1)
GP_RADIUS = 5.0  # single-frame cluster radius, frames
GP_TOL = 2.0
STREET_GAP = (50, 70)
STREET_TOL = 4.0  # two place spacings
ESTIMATORS = {
    "calibrated": (lambda radius: PoseEstimatorConfig(cluster_radius=radius), BeliefConfig()),
    "relative": (lambda radius: PoseEstimatorConfig(cluster_radius=radius, confidence="relative", min_confidence=0.5),
                 EARLIER_FILTER),
}
MIN_BIN_FIXES = 10


def run_sequence(pmap: PlaceMap, model, desc: np.ndarray, truth: list, estimator: str, radius: float,
                 belief: BeliefConfig, motions: list[Motion] | None = None, tol: float = GP_TOL, dims: int = 1) -> dict:
    """Frames in order through a fresh localizer; per frame, both answers, their confidence, right or wrong."""
    est_cfg, base = ESTIMATORS[estimator]
    belief = dataclasses.replace(base, **{k: getattr(belief, k) for k in ("max_step", "max_speed")})
    loc = Localizer(model, pmap, est_cfg(radius), belief=belief, mode="filtered", metric=None)
    rows = []
    for k, d in enumerate(desc):
        r = loc.localize_descriptor(d[None], motions[k] if motions else Motion())
        row = {"truth": None if truth[k] is None else [float(v) for v in truth[k]]}
        for mode, e in (("single", r.single), ("filtered", r.filtered)):
            err = None if truth[k] is None else float(np.linalg.norm(np.asarray(e.position[:dims]) - np.asarray(truth[k][:dims])))
            covered = None
            if err is not None and e.fix:
                d_ = np.asarray(e.position[:dims]) - np.asarray(truth[k][:dims])
                covered = bool(d_ @ np.linalg.solve(e.covariance[:dims, :dims], d_) <= CHI2_95[dims])
            row[mode] = {"fix": bool(e.fix), "confidence": float(e.confidence), "position": [float(v) for v in e.position],
                         "error": err, "right": err is not None and err <= tol, "covered": covered,
                         "out_of_map": float(getattr(e, "out_of_map", 0.0)), "reason": e.reason}
        rows.append(row)
    return {"rows": rows, "relocalizations": loc.filter.relocalizations}


def summarise(run: dict) -> dict:
    out = {}
    for mode in ("single", "filtered"):
        a = [r[mode] for r in run["rows"]]
        fixes = [x for x in a if x["fix"]]
        right = sum(x["right"] for x in fixes)
        covered = [x["covered"] for x in fixes if x["covered"] is not None]
        errors = [x["error"] for x in fixes if x["error"] is not None]
        positives = sum(r["truth"] is not None for r in run["rows"])
        out[mode] = {"frames": len(a), "fixes": len(fixes), "right": int(right),
                     "precision": right / len(fixes) if fixes else None,
                     "coverage_2sigma": float(np.mean(covered)) if covered else None,
                     "median_error": float(np.median(errors)) if errors else None,
                     **open_set_summary([x["confidence"] for x in a], [x["right"] for x in a], positives)}
    out["relocalizations"] = run["relocalizations"]
    return out


def gap_summary(run: dict, gap: tuple[int, int], first: int, tol: float) -> dict:
    """Inside the gap: fixes farther than `tol` from the truth; after it: frames until the first right fix."""
    out = {}
    for mode in ("single", "filtered"):
        rows = run["rows"]
        inside = [r[mode] for r in rows[gap[0] - first:gap[1] - first]]
        after = rows[gap[1] - first:]
        back = next((k for k, r in enumerate(after) if r[mode]["fix"] and r[mode]["right"]), None)
        out[mode] = {"fixes_in_gap": sum(x["fix"] for x in inside),
                     "wrong_fixes_in_gap": sum(x["fix"] and x["error"] > tol for x in inside),
                     "frames_until_fixed_after": None if back is None else back + 1}
    return out


def gardens_point(args, out: Path, results: dict, runs: dict, ckpt: Path | None, tag: str = "") -> None:
    """Every row that depends on the Gardens Point checkpoint (`tag` keeps another checkpoint's maps apart)."""
    gp = Path(args.data) / "gardens_point"
    ckpt = ckpt if ckpt is not None else train_gp(gp, out / "gp_train")
    sha = results["checkpoint_sha256"] = checkpoint_hash(ckpt)
    model = load_model(ckpt)
    frames = list(range(*GP_FRAMES))
    db = load_traverse(gp / "day_left", frames)
    pmap = build_map(model, ckpt.resolve(), sha, db, out / f"gp_map{tag}", progress=False)
    night = model.describe(load_traverse(gp / "night_right", frames).images, progress=True)
    day_right = model.describe(load_traverse(gp / "day_right", frames).images, progress=True)
    kit = model.describe(load_kitti(Path(args.data) / "kitti_vo_seq1").images) if args.kitti else None
    street_q = street_route(out)[1]
    street = model.describe(street_q.images)
    belief = BeliefConfig(max_step=GP_MAX_STEP)
    lo, hi = GP_FRAMES
    orders = {"forward": list(range(lo, hi)), "backwards": list(range(hi - 1, lo - 1, -1)),
              "2x speed": list(range(lo, hi, 2)), "kidnap": list(range(lo, lo + 50)) + list(range(lo + 70, hi))}
    gap_keep = [f for f in frames if not GP_GAP[0] <= f < GP_GAP[1]]
    gap_map = build_map(model, ckpt.resolve(), sha, db.subset([f - lo for f in gap_keep]),
                        out / f"gp_gap_map{tag}", progress=False)
    results["maps"] = {"gardens_point": pmap.observation.describe(), "gardens_point_gap": gap_map.observation.describe()}
    for est in ESTIMATORS:
        for name, order in orders.items():
            key = ("Gardens Point night", name, est)
            runs[key] = run_sequence(pmap, model, night[[f - lo for f in order]], [[f, 0, 0] for f in order], est,
                                     GP_RADIUS, belief)
            results[" | ".join(key)] = summarise(runs[key])
        results[" | ".join(("Gardens Point night", "kidnap", est))]["recovery"] = kidnap_recovery(
            runs[("Gardens Point night", "kidnap", est)], 50, GP_TOL)
        if kit is not None:
            key = ("KITTI (not in the map)", "vs Gardens Point map", est)
            runs[key] = run_sequence(pmap, model, kit, [None] * len(kit), est, GP_RADIUS, belief)
            results[" | ".join(key)] = summarise(runs[key])
        key = ("synthetic street (not in the map)", "vs Gardens Point map", est)
        runs[key] = run_sequence(pmap, model, street, [None] * len(street), est, GP_RADIUS, belief)
        results[" | ".join(key)] = summarise(runs[key])
        for cond, desc in (("night", night), ("day_right", day_right)):
            key = (f"Gardens Point {cond}, map without {GP_GAP[0]}-{GP_GAP[1] - 1}", "forward", est)
            runs[key] = run_sequence(gap_map, model, desc, [[f, 0, 0] for f in frames], est, GP_RADIUS, belief)
            results[" | ".join(key)] = {**summarise(runs[key]), "gap": gap_summary(runs[key], GP_GAP, lo, GP_TOL)}


SPREAD_FIGURES = ("fixes", "right", "precision", "coverage_2sigma", "auc", "recall_at_100p")


def across_checkpoints(each: list[dict]) -> dict:
    """The checkpoint-dependent rows' figures as mean and sample sd over the checkpoints (issue 22), with
    each checkpoint's kidnap recovery and gap counts beside them."""
    keys = [k for k in each[0] if " | " in k]
    out = spread_rows(each, keys, SPREAD_FIGURES)
    for k in keys:
        for extra in ("recovery", "gap"):
            if extra in each[0][k]:
                out[k][extra] = [r[k][extra] for r in each]
    return out


def spread_table(spread_: dict, shas: list[str]) -> str:
    lines = [f"Rows that depend on the Gardens Point checkpoint, over {len(shas)} checkpoints "
             f"({', '.join(s[:8] for s in shas)}): mean ± sd (sample sd, n-1)", "",
             "| data | scenario | estimator | mode | fixes | right | precision | 2σ coverage | PR AUC | R@100P |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, modes in spread_.items():
        for mode in ("single", "filtered"):
            f = modes[mode]
            lines.append(f"| {key} | {mode} | {fmt_spread(f['fixes'], digits=1)} | {fmt_spread(f['right'], digits=1)} | "
                         f"{fmt_spread(f['precision'], 100, 0, ' %')} | {fmt_spread(f['coverage_2sigma'], 100, 0, ' %')} | "
                         f"{fmt_spread(f['auc'])} | {fmt_spread(f['recall_at_100p'], 100, 0, ' %')} |")
    for key, modes in spread_.items():
        for extra in ("recovery", "gap"):
            if extra in modes:
                lines.append(f"- {key}, {extra} per checkpoint: {modes[extra]}")
    return "\n".join(lines)


DEV_FRAMES = (0, 100)
DEV_MARGINS = (0.2, 0.25, 0.3)


def development(args, out: Path, results: dict, runs: dict) -> None:
    """The split the recognition margin and the filter's rates were chosen on (docs/POSE_MODEL.md)."""
    from densernet_core.localization.observation import ObservationConfig

    gp = Path(args.data) / "gardens_point"
    ckpt = args.gp_checkpoint[0] if args.gp_checkpoint else train_gp(gp, out / "gp_train")
    model = load_model(ckpt)
    frames, others = list(range(*DEV_FRAMES)), list(range(DEV_FRAMES[1], 2 * DEV_FRAMES[1]))
    db = load_traverse(gp / "day_left", frames)
    night = model.describe(load_traverse(gp / "night_right", frames).images)
    outside = {"night_right 100-199": model.describe(load_traverse(gp / "night_right", others).images),
               "day_right 100-199": model.describe(load_traverse(gp / "day_right", others).images)}
    if args.kitti:
        outside["KITTI"] = model.describe(load_kitti(Path(args.data) / "kitti_vo_seq1").images)
    belief = BeliefConfig(max_step=GP_MAX_STEP)
    for margin in DEV_MARGINS:
        pmap = build_map(model, ckpt.resolve(), checkpoint_hash(ckpt), db, out / f"dev_map_{margin:g}", progress=False,
                         observation=ObservationConfig(recognition_margin=margin))
        results["maps"][f"dev margin {margin:g}"] = pmap.observation.describe()
        key = (f"dev (margin {margin:g}): Gardens Point night 0-99", "forward", "calibrated")
        runs[key] = run_sequence(pmap, model, night, [[f, 0, 0] for f in frames], "calibrated", GP_RADIUS, belief)
        results[" | ".join(key)] = summarise(runs[key])
        for name, desc in outside.items():
            key = (f"dev (margin {margin:g}): {name} (not in the map)", "vs day_left 0-99", "calibrated")
            runs[key] = run_sequence(pmap, model, desc, [None] * len(desc), "calibrated", GP_RADIUS, belief)
            results[" | ".join(key)] = summarise(runs[key])


def random_trunk(args, out: Path, results: dict, runs: dict) -> None:
    gp = Path(args.data) / "gardens_point"
    ckpt = out / "random_trunk.safetensors"
    if not ckpt.is_file():
        make_checkpoint(load_traverse(gp / "day_left", list(range(0, 100))).images, ckpt, weights="none",
                        image_size=(192, 320), progress=False)
    model = load_model(ckpt)
    frames = list(range(*GP_FRAMES))
    pmap = build_map(model, ckpt.resolve(), checkpoint_hash(ckpt), load_traverse(gp / "day_left", frames),
                     out / "random_map", progress=False)
    results["maps"]["random_trunk"] = pmap.observation.describe() if pmap.observation else pmap.observation_error
    night = model.describe(load_traverse(gp / "night_right", frames).images)
    for est in ESTIMATORS:
        key = ("random-weight trunk, Gardens Point night", "forward", est)
        runs[key] = run_sequence(pmap, model, night, [[f, 0, 0] for f in frames], est, GP_RADIUS,
                                 BeliefConfig(max_step=GP_MAX_STEP))
        results[" | ".join(key)] = summarise(runs[key])


def street_route(out: Path) -> tuple[GeoImages, GeoImages, Path]:
    from densernet_core.demo.routes import generated_route
    from densernet_core.demo.synth import RouteConfig, generate

    ckpt = out / "synthetic.safetensors"
    paths, _ = generated_route(out / "synthetic_route", RouteConfig(), generate, derived=[ckpt])
    return load_csv(paths["map"]), load_csv(paths["query"]), ckpt


def street(args, out: Path, results: dict, runs: dict) -> None:
    from densernet_core.demo.synth import RouteConfig

    db, q, ckpt = street_route(out)
    if not ckpt.is_file():
        make_checkpoint(db.images, ckpt, image_size=(240, 320), progress=False)
    model = load_model(ckpt)
    pmap = build_map(model, ckpt.resolve(), checkpoint_hash(ckpt), db, out / "street_map", progress=False)
    keep = [i for i in range(len(db)) if not STREET_GAP[0] <= i < STREET_GAP[1]]
    gap_map = build_map(model, ckpt.resolve(), checkpoint_hash(ckpt), db.subset(keep), out / "street_gap_map",
                        progress=False)
    results["maps"]["street"] = pmap.observation.describe()
    desc = model.describe(q.images)
    motions = [Motion() if k == 0 else Motion(dt=float(q.timestamps[k] - q.timestamps[k - 1])) for k in range(len(q))]
    belief = BeliefConfig(max_speed=SYNTH_MAX_SPEED)
    radius = 2.5 * RouteConfig().spacing
    truth = [p.tolist() for p in q.positions]
    gp = Path(args.data) / "gardens_point" / "night_right"
    night = model.describe(load_traverse(gp, list(range(*GP_FRAMES))).images) if gp.is_dir() else None
    for est in ESTIMATORS:
        key = ("synthetic street", "query run", est)
        runs[key] = run_sequence(pmap, model, desc, truth, est, radius, belief, motions, STREET_TOL, 2)
        results[" | ".join(key)] = summarise(runs[key])
        key = (f"synthetic street, map without places {STREET_GAP[0]}-{STREET_GAP[1] - 1}", "query run", est)
        runs[key] = run_sequence(gap_map, model, desc, truth, est, radius, belief, motions, STREET_TOL, 2)
        # the gap in the query run: its frames are index-aligned with the mapped places
        results[" | ".join(key)] = {**summarise(runs[key]), "gap": gap_summary(runs[key], STREET_GAP, 0, STREET_TOL)}
        if night is not None:
            key = ("Gardens Point night (not in the map)", "vs the street's map", est)
            stamps = [Motion() if k == 0 else Motion(dt=1.0) for k in range(len(night))]
            runs[key] = run_sequence(pmap, model, night, [None] * len(night), est, radius, belief, stamps, STREET_TOL, 2)
            results[" | ".join(key)] = summarise(runs[key])


def kitti(args, out: Path, results: dict, runs: dict) -> None:
    model, pmap, q, motions, described = kitti_map(args, out)
    results["maps"]["kitti"] = pmap.observation.describe() if pmap.observation else pmap.observation_error
    if pmap.observation is None:
        return
    desc = np.stack([described[k] for k in range(len(q))])
    for est in ESTIMATORS:
        key = ("KITTI", "odd frames, poses as odometry", est)
        runs[key] = run_sequence(pmap, model, desc, [p.tolist() for p in q.positions], est, 5.0, BeliefConfig(),
                                 motions, 1.0, 3)
        results[" | ".join(key)] = summarise(runs[key])


def pooled(runs: dict) -> dict:
    """Per estimator and mode: the open-set curve over every sequence (in the map and outside it), and the
    reliability of all its fixes."""
    out = {}
    for est in ESTIMATORS:
        for mode in ("single", "filtered"):
            conf, right, fixes_conf, fixes_right, positives = [], [], [], [], 0
            for key, run in runs.items():
                if key[2] != est:
                    continue
                for r in run["rows"]:
                    a = r[mode]
                    conf.append(a["confidence"])
                    right.append(a["right"])
                    positives += r["truth"] is not None
                    if a["fix"]:
                        fixes_conf.append(a["confidence"])
                        fixes_right.append(a["right"])
            out[f"{est} {mode}"] = {"open_set": open_set_summary(conf, right, positives),
                                    "curve": [c.tolist() for c in precision_recall(conf, right, positives)],
                                    "reliability": reliability(fixes_conf, fixes_right)}
    return out


def calibration_check(results: dict, runs: dict) -> dict:
    """Per sequence set, estimator and mode: the reliability bins with at least MIN_BIN_FIXES fixes, and the
    largest gap between a bin's accuracy and its mean confidence."""
    out = {}
    for key, run in runs.items():
        for mode in ("single", "filtered"):
            fixes = [r[mode] for r in run["rows"] if r[mode]["fix"]]
            bins = [b for b in reliability([x["confidence"] for x in fixes], [x["right"] for x in fixes])
                    if b["fixes"] >= MIN_BIN_FIXES]
            worst = max((abs(b["accuracy"] - b["confidence"]) for b in bins), default=None)
            out[f"{' | '.join(key)} | {mode}"] = {"bins": bins, "worst_gap": worst}
    return out


def table(results: dict, calib: dict) -> str:
    lines = ["| data | scenario | estimator | mode | frames | fixes | right | precision | 2σ coverage | PR AUC | "
             "R@100P | R@99P | worst bin gap |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, s in results.items():
        if " | " not in key:
            continue
        for mode in ("single", "filtered"):
            m = s[mode]
            worst = calib.get(f"{key} | {mode}", {}).get("worst_gap")
            lines.append(f"| {key} | {mode} | {m['frames']} | {m['fixes']} | {m['right']} | {fmt_pct(m['precision'])} | "
                         f"{fmt_pct(m['coverage_2sigma'])} | {fmt_num(m['auc'])} | {fmt_pct(m['recall_at_100p'])} | "
                         f"{fmt_pct(m['recall_at_99p'])} | {fmt_pct(worst)} |")
    text = "\n".join(lines)
    gaps = {k: v["gap"] for k, v in results.items() if isinstance(v, dict) and "gap" in v}
    if gaps:
        text += "\n\nDrive leaving the mapped area (no fix > 2 places off inside the gap; fixed again within 5 frames):\n"
        text += "\n".join(f"- {k}: {v}" for k, v in gaps.items())
    kid = {k: v["recovery"] for k, v in results.items() if isinstance(v, dict) and "recovery" in v}
    if kid:
        text += "\n\nKidnap recovery (filtered):\n" + "\n".join(f"- {k}: {v}" for k, v in kid.items())
    text += "\n\nPooled over every sequence (open set):\n" + "\n".join(
        f"- {k}: PR AUC {fmt_num(v['open_set']['auc'])}, R@100P {fmt_pct(v['open_set']['recall_at_100p'])}, "
        f"R@99P {fmt_pct(v['open_set']['recall_at_99p'])}; reliability " + ", ".join(
            f"[{b['low']:.1f}, {b['high']:.1f}): {b['fixes']} fixes, conf {fmt_num(b['confidence'])} acc {fmt_num(b['accuracy'])}"
            for b in v["reliability"] if b["fixes"]) for k, v in results["pooled"].items())
    text += "\n\nObservation models:\n" + "\n".join(f"- {k}: {v}" for k, v in results["maps"].items())
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data"))
    parser.add_argument("--gp-checkpoint", nargs="+", type=Path,
                        help="Gardens Point checkpoint(s) (default: one trained here on frames 0-99); several (e.g. "
                             "each seed's): the rows that depend on it also as mean +- sd, beside the first one's")
    parser.add_argument("--out", default="bench_out/open_set")
    parser.add_argument("--dev", action="store_true", help="only the development split (margins 0.2, 0.25, 0.3)")
    args = parser.parse_args(argv)
    for c in args.gp_checkpoint or []:
        if not c.is_file():
            parser.error(f"--gp-checkpoint {c}: no such file")
    if args.dev and args.gp_checkpoint and len(args.gp_checkpoint) > 1:
        parser.error("--dev takes one --gp-checkpoint")
    setup_logging()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.kitti = (Path(args.data) / "kitti_vo_seq1" / "poses.txt").is_file()
    results: dict = {"maps": {}}
    runs: dict = {}
    if args.dev:
        development(args, out, results, runs)
    else:
        if (Path(args.data) / "gardens_point" / "day_left").is_dir():
            ckpts = args.gp_checkpoint or [None]
            gardens_point(args, out, results, runs, ckpts[0])
            if len(ckpts) > 1:  # the table, the pooled curves and the plot stay the first checkpoint's
                each = [results]
                for k, c in enumerate(ckpts[1:], start=1):
                    each.append({"maps": {}})
                    gardens_point(args, out, each[-1], {}, c, f"_{k}")
                results["over checkpoints"] = across_checkpoints(each)
                results["checkpoints"] = [r["checkpoint_sha256"] for r in each]
            random_trunk(args, out, results, runs)
        street(args, out, results, runs)
        if args.kitti:
            kitti(args, out, results, runs)
    results["pooled"] = pooled(runs)
    calib = calibration_check(results, runs)
    results["calibration"] = calib
    curves = [(f"{k} (AUC {fmt_num(v['open_set']['auc'])})", np.array(v["curve"][0]), np.array(v["curve"][1]))
              for k, v in results["pooled"].items()]
    diagrams = [(k, v["reliability"]) for k, v in results["pooled"].items()]
    png = plot_open_set(out / "open_set.png", curves, diagrams,
                        "every sequence pooled: in the map (Gardens Point, KITTI, street) and outside it")
    text = table(results, calib)
    if "checkpoint_sha256" in results:
        text += f"\n\nGardens Point rows above: checkpoint sha256 {results['checkpoint_sha256']}"
    if "over checkpoints" in results:
        text += "\n\n" + spread_table(results["over checkpoints"], results["checkpoints"])
    save_report(out, results, text, png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
