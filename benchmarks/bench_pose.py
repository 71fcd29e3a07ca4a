"""Pose accuracy on real data, and map build throughput.

    .venv/bin/python benchmarks/bench_pose.py --checkpoint NAME=PATH [--checkpoint NAME=PATH ...]

- Gardens Point: map from day_left (all 200 frames), localize night_right frames 100-199 (the
  places the headline benchmark holds out from training); position = frame index, error in frames.
- KITTI snippet: map from the even frames, localize the odd frames; error = distance between the
  estimated and the true camera centre, metres. A second, off-the-shelf checkpoint is made from
  the map's own even frames (what a user without training data does: `densernet init`).
Each map is localized with both single-frame confidences (calibrated, the default; relative, the
earlier ratio test) side by side. Frames without a fix count in the fix rate, not in the error
statistics. Writes <out>.json/.png.
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
from densernet_core.model.checkpoint import checkpoint_hash, load_model  # noqa: E402
from densernet_core.cli import make_checkpoint, setup_logging  # noqa: E402
from densernet_core.datasets import GeoImages, load_kitti, load_traverse  # noqa: E402
from densernet_core.localization.localizer import Localizer  # noqa: E402
from densernet_core.mapping.placemap import build_map  # noqa: E402
from densernet_core.localization.pose import CONFIDENCES, PoseEstimatorConfig  # noqa: E402
from densernet_core.localization.report import error_stats  # noqa: E402

KITTI_SIZE = (128, 416)  # KITTI frames are 1241x376 (3.3:1)
GP_THRESHOLDS = (2.0, 5.0, 10.0)  # frames
KITTI_THRESHOLDS = (1.0, 2.0, 5.0)  # metres


def run(name: str, ckpt: Path, db: GeoImages, queries: GeoImages, out: Path, image_size=None) -> list[dict]:
    """One map, both single-frame confidences side by side on the same frames: calibrated (the default,
    P(these places) against every place and "no mapped place") and relative (the earlier ratio test)."""
    model = load_model(ckpt, image_size=image_size)
    t0 = time.perf_counter()
    pmap = build_map(model, ckpt.resolve(), checkpoint_hash(ckpt), db, out / f"map_{name}", progress=False)
    build_s = time.perf_counter() - t0
    rows = []
    for confidence in CONFIDENCES:
        loc = Localizer(model, pmap, PoseEstimatorConfig(confidence=confidence), mode="single")
        errors, est_xy, fix = [], [], []
        for path, truth in zip(queries.images, queries.positions):
            e = loc.localize(path).estimate
            fix.append(e.fix)
            est_xy.append(e.position[:3])
            if e.fix:
                errors.append(float(np.linalg.norm(e.position[:3] - truth)))
        rows.append({"name": f"{name} ({confidence})", "map_places": len(db), "queries": len(queries),
                     "fixes": int(sum(fix)), "build_images_per_s": round(len(db) / build_s, 2), "errors": errors,
                     "est": np.array(est_xy).tolist(), "fix": fix})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data"))
    parser.add_argument("--out", default="bench_out/pose")
    args = parser.parse_args(argv)
    setup_logging()
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpts = dict(item.split("=", 1) for item in args.checkpoint)
    rows = []
    gp = data / "gardens_point"
    if (gp / "day_left").is_dir():
        db, q = load_traverse(gp / "day_left"), load_traverse(gp / "night_right", list(range(100, 200)))
        for name, path in ckpts.items():
            for r in run(f"gp_{name}", Path(path), db, q, out):
                r.update(dataset="Gardens Point day_left map, night_right 100-199", unit="frames",
                         stats=error_stats(r["errors"], GP_THRESHOLDS), truth=q.positions.tolist())
                rows.append(r)
    kitti = data / "kitti_vo_seq1"
    if (kitti / "poses.txt").is_file():
        db, q = load_kitti(kitti, list(range(0, 51, 2))), load_kitti(kitti, list(range(1, 51, 2)))
        own = out / "kitti_off_the_shelf.safetensors"
        if not own.is_file():
            make_checkpoint(db.images, own, image_size=KITTI_SIZE, progress=False)
        for name, path in {"kitti_map_init": str(own), **ckpts}.items():
            for r in run(f"kitti_{name}", Path(path), db, q, out, image_size=KITTI_SIZE):
                r.update(dataset="KITTI even frames map, odd frames queries", unit="m",
                         stats=error_stats(r["errors"], KITTI_THRESHOLDS), truth=q.positions.tolist())
                rows.append(r)
    if not rows:
        print(f"no data under {data}; nothing to benchmark")
        return 2
    print("| dataset | checkpoint | queries | fixes | median | p90 | within | map build img/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["stats"]
        within = ", ".join(f"{100 * v:.0f}% <= {k[7:]}" for k, v in s.items() if k.startswith("within_")) if s.get("n") else "-"
        med = f"{s['median']:.2f} {r['unit']}" if s.get("n") else "-"
        p90 = f"{s['p90']:.2f} {r['unit']}" if s.get("n") else "-"
        print(f"| {r['dataset']} | {r['name']} | {r['queries']} | {r['fixes']} | {med} | {p90} | {within} | "
              f"{r['build_images_per_s']} |")
    (out / "pose.json").write_text(json.dumps([{k: v for k, v in r.items() if k not in ("est", "truth", "fix")}
                                               for r in rows], indent=2))
    plot(rows, out / "pose.png")
    print(f"wrote {out / 'pose.json'} and {out / 'pose.png'}")
    return 0


def plot(rows: list[dict], png: Path) -> None:
    plt = pyplot()

    cols = 2  # the two confidences of one map side by side
    fig, axes = plt.subplots(-(-len(rows) // cols), cols, figsize=(4.5 * cols, 4 * -(-len(rows) // cols)),
                             squeeze=False)
    for ax in axes.flat[len(rows):]:
        ax.axis("off")
    for ax, r in zip(axes.flat, rows):
        est, truth, fix = np.array(r["est"]), np.array(r["truth"]), np.array(r["fix"], bool)
        if r["unit"] == "frames":
            ax.plot(truth[:, 0], truth[:, 0], "-", color="tab:green", label="truth")
            ax.plot(truth[fix, 0], est[fix, 0], "o", ms=3, color="tab:blue", label="estimate")
            ax.set_xlabel("query frame")
            ax.set_ylabel("estimated frame")
        else:  # KITTI camera frame: x right, z forward -> plot the ground plane
            ax.plot(truth[:, 0], truth[:, 2], "-", color="tab:green", label="truth")
            ax.plot(est[fix, 0], est[fix, 2], "o", ms=3, color="tab:blue", label="estimate")
            ax.set_xlabel("x (m)")
            ax.set_ylabel("z (m)")
        ax.set_title(f"{r['name']}: {r['fixes']}/{r['queries']} fixes", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    save_figure(fig, png, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
