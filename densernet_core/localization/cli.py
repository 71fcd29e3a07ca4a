"""`densernet-localize`: localize images, a folder or a video against a map; score against ground truth."""
from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..cli import run_cli, setup_logging
from ..images import ImageError, list_images, read_image
from .pose import PoseEstimatorConfig
from .report import error_stats, format_stats, plot_trajectory

LOG = logging.getLogger("densernet")
VIDEO_EXTS = {".mp4", ".avi", ".mkv", ".mov", ".webm"}


def frames(inputs: Sequence[str]) -> Iterator[tuple[str, np.ndarray]]:
    """(name, RGB image) for image files, folders and videos."""
    import cv2

    for item in inputs:
        p = Path(item)
        if p.suffix.lower() in VIDEO_EXTS:
            cap = cv2.VideoCapture(str(p))
            if not cap.isOpened():
                raise ImageError(f"cannot open video {p}")
            k = 0
            while True:
                ok, bgr = cap.read()
                if not ok:
                    break
                yield f"{p.name}#{k:06d}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                k += 1
            cap.release()
        else:
            for img in list_images([p]):
                yield img.name, read_image(img)


def read_ground_truth(path: str) -> dict[str, np.ndarray]:
    """Positions by file name (the last component of the CSV's image column), wherever the images are."""
    from ..datasets import DatasetError, load_csv

    data = load_csv(path, require_images=False)
    out: dict[str, np.ndarray] = {}
    for img, pos in zip(data.images, data.positions):
        if img.name in out:
            raise DatasetError(f"{path}: file name {img.name!r} appears more than once; ground truth is matched by "
                               "file name, so each must be unique")
        out[img.name] = pos
    return out


def _cmd(args: argparse.Namespace) -> int:
    from .localizer import Localizer

    est_cfg = PoseEstimatorConfig(min_score=args.min_score, cluster_radius=args.cluster_radius,
                                  ratio_threshold=args.ratio, min_confidence=args.min_confidence,
                                  position_floor=args.position_floor)
    loc = Localizer.from_paths(args.map, args.checkpoint, args.device, None, est_cfg, args.top_k)
    gt = read_ground_truth(args.gt) if args.gt else None
    if gt is not None:  # check image files before any work (a video's frames are checked as they come)
        missing = [p.name for item in args.inputs if Path(item).suffix.lower() not in VIDEO_EXTS
                   for p in list_images([item]) if p.name not in gt]
        if missing:
            raise ValueError(f"{args.gt}: no ground truth for {len(missing)} frame(s), e.g. {missing[:3]} "
                             "(rows are matched by file name)")
    rows, true_xy, est_xy, fixes, errors = [], [], [], [], []
    for name, img in frames(args.inputs):
        r = loc.localize(img)
        e = r.estimate
        x, y, z = e.position
        line = (f"{name}: place {e.place_id} score {e.score:.3f} pose ({x:.2f}, {y:.2f}, {z:.2f}) "
                f"conf {e.confidence:.2f} {'fix' if e.fix else 'no fix: ' + e.reason}")
        err = None
        if gt is not None:
            if name not in gt:
                raise ValueError(f"{args.gt}: no ground truth for {name} (rows are matched by file name)")
            err = float(np.linalg.norm(gt[name][:2] - e.position[:2]))
            true_xy.append(gt[name][:2])
            est_xy.append(e.position[:2])
            fixes.append(e.fix)
            if e.fix:
                errors.append(err)
            line += f" error {err:.2f}"
        print(line, flush=True)
        rows.append([name, e.fix, e.place_id, f"{e.score:.4f}", *[f"{v:.4f}" for v in e.position],
                     *[f"{v:.6f}" for v in e.orientation], f"{e.confidence:.4f}", e.reason,
                     "" if err is None else f"{err:.4f}", f"{1000 * r.total_s:.1f}"])
    if not rows:
        raise ImageError("no frames to localize")
    if args.out:
        with open(args.out, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["frame", "fix", "place", "score", "x", "y", "z", "qx", "qy", "qz", "qw", "confidence",
                        "reason", "error", "latency_ms"])
            w.writerows(rows)
    if gt is not None:
        stats = error_stats(np.array(errors), args.thresholds)
        print(f"fixes: {sum(fixes)}/{len(fixes)}; " + format_stats(stats, args.unit))
        png = Path(args.plot or (Path(args.out).with_suffix(".png") if args.out else "localize.png"))
        plot_trajectory(png, np.array(true_xy), np.array(est_xy), np.array(fixes),
                        loc.map.places.positions[:, :2], f"{len(fixes)} frames, {sum(fixes)} fixes")
        print(f"trajectory plot: {png}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="densernet-localize", description=__doc__)
    p.add_argument("inputs", nargs="+", help="images, folders or videos")
    p.add_argument("--map", required=True)
    p.add_argument("--checkpoint", help="default: the checkpoint recorded in the map")
    p.add_argument("--gt", help="ground-truth CSV (image,x,y,...; lat,lon also): a row belongs to the query frame "
                                "whose file name equals the last component of its image column, wherever the CSV "
                                "and the images are (a video's frames are named <video file name>#<frame, 6 digits>)")
    p.add_argument("--out", help="per-frame CSV")
    p.add_argument("--plot", help="trajectory PNG (with --gt)")
    p.add_argument("--device", default="auto")
    p.add_argument("--top-k", type=int, default=10)
    defaults = PoseEstimatorConfig()  # one set of defaults for the CLI, the node and the API
    p.add_argument("--min-score", type=float, default=defaults.min_score)
    p.add_argument("--cluster-radius", type=float, default=defaults.cluster_radius)
    p.add_argument("--ratio", type=float, default=defaults.ratio_threshold)
    p.add_argument("--min-confidence", type=float, default=defaults.min_confidence)
    p.add_argument("--position-floor", type=float, default=defaults.position_floor)
    p.add_argument("--thresholds", type=float, nargs="+", default=[5.0, 10.0, 25.0])
    p.add_argument("--unit", default="m")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_cli(_cmd, args)


if __name__ == "__main__":
    sys.exit(main())
