"""Single-frame vs filtered localization, side by side in one run (the place belief filter, issue 13).

    .venv/bin/python benchmarks/bench_filter.py [--gp-checkpoint C] [--out bench_out/filter]

- Gardens Point: map day_left (all 200 frames, position = frame index), camera night_right frames
  100-199 in order, no odometry (the speed bound in frames per frame): forward, a kidnap (100-149
  then 170-199 without warning), backwards, and at twice the speed (every second frame). Forward again
  in the Gardens Point demo's setup, one change at a time (issue 22: why the demo fixes fewer): the map
  of day_left 100-199 only (the places the run drives; the demo's), the night frames sent as the demo's
  320x180 camera images (the node scales them to the model's size), and both (the demo offline). The
  checkpoint is trained with training/configs/gardens_point_small.yaml on frames 0-99 (as the demo),
  unless --gp-checkpoint is given. Given several (e.g. the seeds of `bench_gardens_point.py --seeds 5`),
  every Gardens Point row is also reported as mean +- sd over them (issue 22: one checkpoint's fixes
  are one draw of the training seed); the table's own rows and the plot are the first checkpoint's.
  Forward, kidnap and the demo's setups also with the top 10 re-ranked by the dense map (the maps' dense
  grids and the frames', as the node does; localization/rerank.py), beside the global ranking's rows; and
  both with an off-the-shelf checkpoint in the node test's setup (why such maps keep no grids by default).
- KITTI snippet: map from the even frames (with orientations), the odd frames in order, with their
  poses as odometry; metric error. Checkpoint: `densernet init` on the map's own frames. Also a stop
  with a turn on the spot (nav2's spin): after half the odd frames the car stands and the camera looks
  left and right (TURN_YAWS), each view the standing frame warped by a pure rotation's homography
  (K R^T K^-1, black where the real frame saw nothing), odometry saying so (no translation, the yaw);
  then it drives on. Filtered as configured and with `dwell_frames` 0 (no guard), side by side.
- The synthetic street of `make demo`: map run vs query run, stamps 0.5 s apart, speed bound 8 m/s.
- Covariance coverage: the share of fixes whose true position lies inside the published 2-sigma
  ellipse (along the route for the index-aligned traverses).
- Cost of one filter step at 10k places.
Writes <out>/results.json, table.md and gardens_point.png.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from densernet_core.cli import make_checkpoint, setup_logging  # noqa: E402
from densernet_core.datasets import load_csv, load_kitti, load_traverse  # noqa: E402
from densernet_core.geometry import compose, inverse, yaw_to_quat  # noqa: E402
from densernet_core.localization.belief import BeliefConfig, Evidence, Motion, PlaceBelief  # noqa: E402
from densernet_core.localization.localizer import Localizer  # noqa: E402
from densernet_core.localization.observation import ObservationModel  # noqa: E402
from densernet_core.localization.pose import PoseEstimatorConfig  # noqa: E402
from densernet_core.localization.rerank import dense_grid  # noqa: E402
from densernet_core.model.network import DEFAULT_BATCH  # noqa: E402
from densernet_core.localization.report import plot_trajectory  # noqa: E402
from densernet_core.localization.sequence import Frame, MotionSource, poses_by_name  # noqa: E402
from densernet_core.mapping.placemap import build_map  # noqa: E402
from densernet_core.model.checkpoint import checkpoint_hash, load_model  # noqa: E402
from densernet_ros.demo import GP_CAMERA_SIZE, GP_TEST_FRAMES  # noqa: E402  (rclpy-free: the demo's setup)
from densernet_core.images import read_image, resize  # noqa: E402
from benchmarks.report import fmt_num, fmt_spread, save_report, spread_rows  # noqa: E402

GP_FRAMES = (100, 200)
GP_MAX_STEP = 3.0  # frames per frame: room for twice the walking pace
GP_RADIUS = 5.0  # single-frame cluster radius, frames (as bench_pose)
DEMO_MAP = "forward, map day_left 100-199 (the demo's)"
DEMO_CAMERA = "forward, camera 320x180 (the demo's)"
DEMO_BOTH = "forward, both (the Gardens Point demo offline)"
RERANKED = "top 10 re-ranked by the dense map"  # rows with the map's dense grids used, as the node does
OTS_EVERY = 5  # the off-the-shelf rows' map: every 5th day_left frame (test/test_node.py's)
KITTI_SIZE = (128, 416)
KITTI_STOP = 12  # the odd frame (its index among them) where the car stops and turns
TURN_YAWS = (0, 10, 20, 30, 40, 50, 40, 30, 20, 10, 0, -10, -20, -30, -40, -50, -40, -30, -20, -10, 0)  # degrees: the camera looks left and right where the car stands
TURN_DT = 0.5  # seconds between the turn's frames
assert TURN_YAWS[0] == TURN_YAWS[-1] == 0, "the turn starts and ends at the stop's heading"
SYNTH_MAX_SPEED = 8.0  # m/s (the drive is 4 m/s)
COST_PLACES = 10000
COST_MEDIAN, COST_SCALE = 0.45, 0.03  # the frame's median similarity to the map and its spread (typical of a trained map)


def scenario(loc: Localizer, desc: dict[int, np.ndarray], order: list[int], truth_x, motions,
             grids: dict[int, np.ndarray] | None = None) -> dict:
    """Run frames in `order` through a fresh filter; per frame both answers and the truth. With the frames'
    dense `grids` (and a map that has them) the top candidates are re-ranked by the dense map, as the node does."""
    loc.filter.reset()
    loc.filter.resets = loc.filter.relocalizations = 0
    rows = []
    for k, f in enumerate(order):
        r = loc.localize_descriptor(desc[f][None], motions[k] if motions else Motion(),
                                    grid=None if grids is None else grids[f])
        rows.append({"frame": f, "truth": truth_x(f), "single": _answer(r.single), "filtered": _answer(r.filtered)})
    return {"rows": rows, "relocalizations": loc.filter.relocalizations}


def _answer(e) -> dict:
    return {"fix": bool(e.fix), "reason": e.reason, "position": [float(v) for v in e.position],
            "sigma": [float(np.sqrt(e.covariance[i, i])) for i in range(3)], "covariance": e.covariance[:3, :3].tolist()}


def summarise(run: dict, unit: str, within: float, dims: int) -> dict:
    out = {}
    for mode in ("single", "filtered"):
        errors, covered, fixes = [], [], 0
        for row in run["rows"]:
            a = row[mode]
            if not a["fix"]:
                continue
            fixes += 1
            d = np.asarray(a["position"][:dims]) - np.asarray(row["truth"][:dims])
            errors.append(float(np.linalg.norm(d)))
            cov = np.asarray(a["covariance"])[:dims, :dims]
            covered.append(float(d @ np.linalg.solve(cov, d)) <= CHI2_95[dims])
        e = np.array(errors)
        out[mode] = {"frames": len(run["rows"]), "fixes": fixes,
                     "within": float(np.mean(e <= within)) if fixes else None,
                     "median": float(np.median(e)) if fixes else None, "p95": float(np.percentile(e, 95)) if fixes else None,
                     "coverage_2sigma": float(np.mean(covered)) if fixes else None, "unit": unit, "within_tol": within}
    out["relocalizations"] = run["relocalizations"]
    return out


# 2-sigma region of a d-dimensional Gaussian: its squared Mahalanobis radius (1-D: 2^2; 2-D: the ellipse
# holding as much mass, 95.4 %: chi2 quantile 6.18).
CHI2_95 = {1: 4.0, 2: 6.18, 3: 8.02}


def kidnap_recovery(run: dict, jump_at: int, tol: float) -> dict:
    rows = run["rows"][jump_at:]
    right = next((k for k, r in enumerate(rows) if r["filtered"]["fix"]
                  and abs(r["filtered"]["position"][0] - r["truth"][0]) <= tol), None)
    wrong = sum(r["filtered"]["fix"] and abs(r["filtered"]["position"][0] - r["truth"][0]) > tol
                for r in rows[: right if right is not None else len(rows)])
    return {"frames_until_right": None if right is None else right + 1, "wrong_fixes_meanwhile": int(wrong)}


def described_with_grids(model, images: list) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """The night frames' descriptors and dense grids by frame, in the batches `describe` makes alone (so the
    descriptors are those of the rows without the re-rank, to the bit)."""
    descs, grids = [], []
    for i in range(0, len(images), DEFAULT_BATCH):
        d, dense = model.describe(images[i:i + DEFAULT_BATCH], return_dense=True)
        descs.append(d)
        grids += [dense_grid(x) for x in dense]
    frames = range(*GP_FRAMES)
    return dict(zip(frames, np.concatenate(descs))), dict(zip(frames, grids))


def gardens_point(args, out: Path, ckpt: Path | None, map_dir: str = "gp_map") -> tuple[dict, dict]:
    gp = Path(args.data) / "gardens_point"
    ckpt = ckpt if ckpt is not None else train_gp(gp, out / "gp_train")
    model, sha = load_model(ckpt), checkpoint_hash(ckpt)
    db = load_traverse(gp / "day_left")
    night = load_traverse(gp / "night_right", list(range(*GP_FRAMES)))
    pmap = build_map(model, ckpt.resolve(), sha, db, out / map_dir, progress=False)  # with dense grids (auto)
    desc, grids = described_with_grids(model, night.images)
    def filtered(place_map) -> Localizer:  # the same filter on the benchmark's map and on the demo's
        return Localizer(model, place_map, PoseEstimatorConfig(cluster_radius=GP_RADIUS),
                         belief=BeliefConfig(max_step=GP_MAX_STEP), mode="filtered")

    loc = filtered(pmap)
    truth = lambda f: [float(f), 0.0, 0.0]  # noqa: E731
    lo, hi = GP_FRAMES
    orders = {"forward": list(range(lo, hi)), "kidnap": list(range(lo, lo + 50)) + list(range(lo + 70, hi)),
              "backwards": list(range(hi - 1, lo - 1, -1)), "2x speed": list(range(lo, hi, 2))}
    results, runs = {}, {}
    for name, order in orders.items():
        runs[name] = scenario(loc, desc, order, truth, None)
        results[name] = summarise(runs[name], "frames", 2.0, 1)
    for name in ("forward", "kidnap"):
        runs[f"{name}, {RERANKED}"] = scenario(loc, desc, orders[name], truth, None, grids)
        results[f"{name}, {RERANKED}"] = summarise(runs[f"{name}, {RERANKED}"], "frames", 2.0, 1)
    demo_map = build_map(model, ckpt.resolve(), sha, load_traverse(gp / "day_left", list(GP_TEST_FRAMES)),
                         out / f"{map_dir}_demo", progress=False)
    demo_loc = filtered(demo_map)
    camera, camera_grids = described_with_grids(model, [resize(read_image(p), GP_CAMERA_SIZE) for p in night.images])
    for name, (lc, d, g) in {DEMO_MAP: (demo_loc, desc, grids), DEMO_CAMERA: (loc, camera, camera_grids),
                             DEMO_BOTH: (demo_loc, camera, camera_grids)}.items():
        results[name] = summarise(scenario(lc, d, orders["forward"], truth, None), "frames", 2.0, 1)
        results[f"{name}, {RERANKED}"] = summarise(scenario(lc, d, orders["forward"], truth, None, g), "frames", 2.0, 1)
    results["kidnap"]["recovery"] = kidnap_recovery(runs["kidnap"], 50, 2.0)
    results[f"kidnap, {RERANKED}"]["recovery"] = kidnap_recovery(runs[f"kidnap, {RERANKED}"], 50, 2.0)
    results["checkpoint_sha256"] = sha
    return results, runs


def off_the_shelf(args, out: Path) -> dict:
    """Why a map of an off-the-shelf checkpoint keeps no dense grids by default (mapping/grids.py): the node
    test's setup (`densernet init` on the mapped frames at 180x320, a map of every 5th day_left frame, night_right
    100-199 as 320x180 camera frames 1 s apart, speed bound 6 frames/s, right within 5 frames), filtered with the
    global ranking and with the top 10 re-ranked, the map's grids built although auto would not."""
    gp = Path(args.data) / "gardens_point"
    mapped = load_traverse(gp / "day_left", list(range(0, 200, OTS_EVERY)))
    ckpt = out / "gp_off_the_shelf.safetensors"
    if not ckpt.is_file():
        make_checkpoint(mapped.images, ckpt, image_size=GP_CAMERA_SIZE, progress=False)
    model = load_model(ckpt)
    pmap = build_map(model, ckpt.resolve(), checkpoint_hash(ckpt), mapped, out / "gp_ots_map", grids="always",
                     progress=False)
    night = load_traverse(gp / "night_right", list(range(*GP_FRAMES)))
    desc, grids = described_with_grids(model, [resize(read_image(p), GP_CAMERA_SIZE) for p in night.images])
    loc = Localizer(model, pmap, PoseEstimatorConfig(cluster_radius=6.0, min_confidence=0.1, position_floor=1.0),
                    belief=BeliefConfig(max_speed=6.0), mode="filtered")
    order = list(range(*GP_FRAMES))
    truth = lambda f: [float(f), 0.0, 0.0]  # noqa: E731
    runs = {"forward, global ranking": None, f"forward, {RERANKED}": grids}
    return {name: summarise(scenario(loc, desc, order, truth, [Motion()] + [Motion(dt=1.0) for _ in order[1:]], g),
                            "frames", float(OTS_EVERY), 1) for name, g in runs.items()}


SPREAD_FIGURES = ("fixes", "within", "median", "p95", "coverage_2sigma")


def across_checkpoints(each: list[dict]) -> dict:
    """Every scenario's figures as mean and sample sd over the checkpoints."""
    return spread_rows(each, [name for name in each[0] if name != "checkpoint_sha256"], SPREAD_FIGURES)


def spread_table(spread_: dict, n: int) -> str:
    """Gardens Point's rows as mean +- sd over n checkpoints (within as a share, errors in frames); "(k of n)":
    only k checkpoints made a fix there."""
    lines = [f"Gardens Point over {n} checkpoints: mean ± sd (sample sd, n-1)", "",
             "| scenario | mode | fixes | within 2 frames | median error | p95 error | 2-sigma coverage |",
             "|---|---|---|---|---|---|---|"]
    for name, modes in spread_.items():
        for mode, f in modes.items():
            lines.append(f"| {name} | {mode} | {fmt_spread(f['fixes'], digits=1)} | {fmt_spread(f['within'], 100, 0, ' %')} | "
                         f"{fmt_spread(f['median'])} | {fmt_spread(f['p95'])} | {fmt_spread(f['coverage_2sigma'], 100, 0, ' %')} |")
    return "\n".join(lines)


def train_gp(gp: Path, run_dir: Path) -> Path:
    from densernet_core.training.sources import SourceSpec
    from densernet_core.training.train_config import load_train_config
    from densernet_core.training.trainer import run_training

    cfg = load_train_config(ROOT / "training" / "configs" / "gardens_point_small.yaml")
    sources = tuple(SourceSpec("traverse", str(gp / t), frames=(0, 100)) for t in ("day_left", "day_right", "night_right"))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, database=sources, queries=sources), val=None)
    return run_training(cfg, run_dir, progress=True)


def kitti_map(args, out: Path) -> tuple:
    """The KITTI snippet's even frames as the map (off-the-shelf checkpoint), its odd frames as the camera
    with their poses as odometry: model, map, queries, motions, the queries' descriptors by index (built
    once, for both KITTI scenarios)."""
    kit = Path(args.data) / "kitti_vo_seq1"
    db, q = load_kitti(kit, list(range(0, 51, 2))), load_kitti(kit, list(range(1, 51, 2)))
    ckpt = out / "kitti_off_the_shelf.safetensors"
    if not ckpt.is_file():
        make_checkpoint(db.images, ckpt, image_size=KITTI_SIZE, progress=False)
    model = load_model(ckpt)
    pmap = build_map(model, ckpt.resolve(), checkpoint_hash(ckpt), db, out / "kitti_map", progress=False)
    frames = [Frame(q.names[k], np.zeros((1, 1, 3), np.uint8), float(q.timestamps[k])) for k in range(len(q))]
    source = MotionSource(poses=poses_by_name(q))
    return model, pmap, q, [source(f) for f in frames], dict(enumerate(model.describe(q.images)))


def kitti(built: tuple) -> dict:
    model, pmap, q, motions, desc = built
    loc = Localizer(model, pmap, PoseEstimatorConfig(), belief=BeliefConfig(), mode="filtered")
    run = scenario(loc, desc, list(range(len(q))), lambda k: q.positions[k].tolist(), motions)
    return summarise(run, "m", 1.0, 3)


def turned_view(image: Path, camera, yaw_deg: float) -> np.ndarray:
    """What the camera sees after turning on the spot by `yaw_deg` (about its y axis, down in KITTI's
    camera frame): the real frame through the rotation's homography K R^T K^-1, black where it saw nothing."""
    import cv2
    from scipy.spatial.transform import Rotation

    gray = cv2.imread(str(image), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise ValueError(f"{image}: not a readable image")
    k = camera.matrix
    h = k @ Rotation.from_euler("y", yaw_deg, degrees=True).as_matrix().T @ np.linalg.inv(k)
    warped = cv2.warpPerspective(gray, h, (gray.shape[1], gray.shape[0]))
    return np.repeat(warped[:, :, None], 3, axis=2)


def kitti_turn(args, built: tuple) -> dict:
    """Drive the odd frames to KITTI_STOP, stand there turning (TURN_YAWS), drive on; with and without the
    guard. Two stops: at the odd frame itself (between two mapped places), and at the mapped place just
    behind it (the map's own image turned: a robot standing where the map was recorded)."""
    from scipy.spatial.transform import Rotation

    from densernet_core.camera import load_camera

    model, pmap, q, motions, desc = built
    kit = Path(args.data) / "kitti_vo_seq1"
    camera = load_camera(kit / "calib.txt", image_size=(1241, 376))
    mapped = load_kitti(kit, [2 * KITTI_STOP])  # odd frame 2k+1's mapped neighbour behind it, even frame 2k
    spin = [Motion(TURN_DT, np.zeros(3), Rotation.from_euler("y", b - a, degrees=True).as_quat())
            for a, b in zip(TURN_YAWS, TURN_YAWS[1:])]  # between the turn's views
    result = {}
    for stop, (image, position, pose_back) in {
            "between two mapped places": (q.images[KITTI_STOP], q.positions[KITTI_STOP], None),
            "at a mapped place": (mapped.images[0], mapped.positions[0], (mapped.positions[0], mapped.orientations[0]))}.items():
        stand = {len(q) + k: model.describe([turned_view(image, camera, yaw)])[0] for k, yaw in enumerate(TURN_YAWS)}
        views = {**desc, **stand}
        # odometry into the stop and out of it again (the turn ends at the stop's heading)
        into, onward = motions[KITTI_STOP], motions[KITTI_STOP + 1]
        if pose_back is not None:
            poses = poses_by_name(q)
            before, after = poses[q.names[KITTI_STOP - 1]], poses[q.names[KITTI_STOP + 1]]
            into = Motion(into.dt, *compose(inverse(before), pose_back))
            onward = Motion(onward.dt, *compose(inverse(pose_back), after))
        order = list(range(KITTI_STOP)) + list(stand) + list(range(KITTI_STOP + 1, len(q)))
        moves = motions[:KITTI_STOP] + [into] + spin + [onward] + motions[KITTI_STOP + 2:]
        truth = lambda k, p=position: (p if k >= len(q) else q.positions[k]).tolist()  # noqa: E731
        for name, config in (("filtered", BeliefConfig()), ("no guard (dwell_frames 0)", BeliefConfig(dwell_frames=0))):
            loc = Localizer(model, pmap, PoseEstimatorConfig(), belief=config, mode="filtered")
            run = scenario(loc, views, order, truth, [dataclasses.replace(m) for m in moves])
            standing = {"rows": [r for r in run["rows"] if r["frame"] >= len(q)], "relocalizations": 0}
            result[f"{stop}, {name}"] = {
                "whole drive": summarise(run, "m", 1.0, 3), "standing, turning": summarise(standing, "m", 1.0, 3),
                "standing reasons": [r["filtered"]["reason"] for r in standing["rows"]]}
    return result


def turn_table(result: dict) -> str:
    lines = ["KITTI, a stop with a turn on the spot after odd frame index "
             f"{KITTI_STOP} ({len(TURN_YAWS)} views, yaw {', '.join(map(str, TURN_YAWS))} degrees; odometry):", "",
             "| belief | part | frames | fixes | within 1 m | median error |", "|---|---|---|---|---|---|"]
    for name, parts in result.items():
        for part in ("whole drive", "standing, turning"):
            m = parts[part]["filtered"]
            within = "-" if m["within"] is None else f"{100 * m['within']:.0f} %"
            lines.append(f"| {name} | {part} | {m['frames']} | {m['fixes']} | {within} | {fmt_num(m['median'])} |")
    reasons = sorted({r for parts in result.values() for r in parts["standing reasons"] if r != "ok"})
    return "\n".join(lines + ["", "Reasons given while standing: " + ("; ".join(reasons) or "none (every frame ok)")])


def synthetic(args, out: Path) -> dict:
    from densernet_core.demo.synth import RouteConfig, generate

    from densernet_core.demo.routes import generated_route

    route, ckpt = out / "synthetic_route", out / "synthetic.safetensors"
    paths, _ = generated_route(route, RouteConfig(), generate, derived=[ckpt])
    db, q = load_csv(paths["map"]), load_csv(paths["query"])
    if not ckpt.is_file():
        make_checkpoint(db.images, ckpt, image_size=(240, 320), progress=False)
    model = load_model(ckpt)
    pmap = build_map(model, ckpt.resolve(), checkpoint_hash(ckpt), db, out / "synthetic_map", progress=False)
    desc = dict(enumerate(model.describe(q.images)))
    motions = [Motion() if k == 0 else Motion(dt=float(q.timestamps[k] - q.timestamps[k - 1])) for k in range(len(q))]
    loc = Localizer(model, pmap, PoseEstimatorConfig(cluster_radius=2.5 * RouteConfig().spacing),
                    belief=BeliefConfig(max_speed=SYNTH_MAX_SPEED), mode="filtered")
    run = scenario(loc, desc, list(range(len(q))), lambda k: q.positions[k].tolist(), motions)
    return summarise(run, "m", 2.0, 2)


def filter_cost(observation: ObservationModel) -> dict:
    """The filter's own cost at 10k places, with the synthetic map's observation model (its figures only set
    how sharply the belief moves, not what a step costs)."""
    rng = np.random.default_rng(0)
    heading = np.cumsum(rng.normal(0, 0.05, COST_PLACES))
    pos = np.c_[np.cumsum(np.cos(heading)), np.cumsum(np.sin(heading)), np.zeros(COST_PLACES)]
    belief = PlaceBelief(pos, np.array([yaw_to_quat(h) for h in heading]), observation=observation)
    out = {}
    for name, motion in (("speed bound (stamps 0.2 s apart)", Motion(dt=0.2)),
                         ("odometry (0.5 m)", Motion(dt=0.2, translation=np.array([0.5, 0.0, 0.0])))):
        belief.reset()
        times = []
        for k in range(200):
            i = 5000 + k // 2
            ids, scores = np.array([i, i + 1, i - 1, 300, 9000]), np.array([0.62, 0.6, 0.6, 0.59, 0.55])
            t0 = time.perf_counter()
            belief.step(Evidence(ids, scores, median=COST_MEDIAN, scale=COST_SCALE), motion)
            times.append(time.perf_counter() - t0)
        out[name] = {"p50_ms": 1000 * float(np.median(times[10:])), "p95_ms": 1000 * float(np.percentile(times[10:], 95))}
    return out


def table(results: dict) -> str:
    lines = ["| data | scenario | mode | frames | fixes | within | median error | p95 error | 2-sigma coverage |",
             "|---|---|---|---|---|---|---|---|---|"]
    for data, scenarios in results.items():
        if data in ("filter_cost", "Gardens Point, each checkpoint", "Gardens Point, over checkpoints",
                    "KITTI, a stop with a turn"):
            continue
        for name, s in scenarios.items():
            if name == "checkpoint_sha256":
                continue
            for mode in ("single", "filtered"):
                m = s[mode]
                within = "-" if m["within"] is None else f"{100 * m['within']:.0f} % <= {m['within_tol']:g} {m['unit']}"
                coverage = "-" if m["coverage_2sigma"] is None else f"{100 * m['coverage_2sigma']:.0f} %"
                lines.append(f"| {data} | {name} | {mode} | {m['frames']} | {m['fixes']} | {within} | "
                             f"{fmt_num(m['median'])} | {fmt_num(m['p95'])} | {coverage} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data"))
    parser.add_argument("--gp-checkpoint", nargs="+", type=Path,
                        help="Gardens Point checkpoint(s) (default: one trained here on frames 0-99); several: "
                             "each seed's, reported as mean +- sd beside the first one's rows")
    parser.add_argument("--out", default="bench_out/filter")
    args = parser.parse_args(argv)
    setup_logging()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    for c in args.gp_checkpoint or []:
        if not c.is_file():
            parser.error(f"--gp-checkpoint {c}: no such file")
    if (Path(args.data) / "gardens_point" / "day_left").is_dir():
        ckpts = args.gp_checkpoint or [None]
        results["Gardens Point"], runs = gardens_point(args, out, ckpts[0])
        if len(ckpts) > 1:
            each = [results["Gardens Point"]] + [gardens_point(args, out, c, f"gp_map_{k}")[0]
                                                 for k, c in enumerate(ckpts[1:], start=1)]
            results["Gardens Point, each checkpoint"] = each
            results["Gardens Point, over checkpoints"] = across_checkpoints(each)
        results["Gardens Point, off the shelf, map of every 5th frame"] = off_the_shelf(args, out)
        fwd = runs["forward"]["rows"]
        truth = np.array([[r["truth"][0], 0.0] for r in fwd])
        xy = {m: np.array([r[m]["position"][:2] for r in fwd]) for m in ("single", "filtered")}
        fix = {m: np.array([r[m]["fix"] for r in fwd]) for m in ("single", "filtered")}
        s = results["Gardens Point"]["forward"]
        plot_trajectory(out / "gardens_point.png", truth, xy["filtered"], fix["filtered"], None,
                        f"Gardens Point night_right 100-199 vs day_left: filtered {s['filtered']['fixes']} fixes, "
                        f"single-frame {s['single']['fixes']}", along_track=True,
                        others=[("single-frame", xy["single"], fix["single"])], label="filtered")
    if (Path(args.data) / "kitti_vo_seq1" / "poses.txt").is_file():
        built = kitti_map(args, out)
        results["KITTI"] = {"odd frames, poses as odometry": kitti(built)}
        results["KITTI, a stop with a turn"] = kitti_turn(args, built)
    results["synthetic street"] = {"query run": synthetic(args, out)}
    results["filter_cost"] = filter_cost(ObservationModel.load(out / "synthetic_map"))
    text = table(results) + "\n\nFilter step at 10k places: " + "; ".join(
        f"{k}: p50 {v['p50_ms']:.2f} ms, p95 {v['p95_ms']:.2f} ms" for k, v in results["filter_cost"].items())
    if "KITTI, a stop with a turn" in results:
        text += "\n\n" + turn_table(results["KITTI, a stop with a turn"])
    if "Gardens Point" in results:
        text += (f"\n\nGardens Point rows above: checkpoint sha256 {results['Gardens Point']['checkpoint_sha256']}"
                 f"\n\nKidnap recovery: {results['Gardens Point']['kidnap']['recovery']}; {RERANKED}: "
                 f"{results['Gardens Point'][f'kidnap, {RERANKED}']['recovery']}")
    if "Gardens Point, over checkpoints" in results:
        each = results["Gardens Point, each checkpoint"]
        text += ("\n\n" + spread_table(results["Gardens Point, over checkpoints"], len(each)) + "\n\nKidnap recovery per "
                 "checkpoint: " + "; ".join(f"{r['checkpoint_sha256'][:8]}: {r['kidnap']['recovery']}" for r in each))
    save_report(out, results, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
