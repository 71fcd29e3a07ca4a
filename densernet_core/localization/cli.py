"""`densernet-localize`: localize images, a folder, a video or a rosbag2 against a map; score against ground truth.

Each frame alone (single-frame); with --sequence the frames are one drive in order, and the place
belief filter (as the node runs it) is reported beside the single-frame answers.
"""
from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..cli import add_backend_args, run_cli, setup_logging
from ..images import ImageError, list_images
from ..listing import first_few
from ..threads import limit_blas_for_frames
from .belief import BeliefConfig
from .pose import CONFIDENCES, PoseEstimatorConfig
from .report import error_stats, format_stats, plot_trajectory
from .sequence import VIDEO_EXTS, Frame, MotionSource, bag_frames, bag_odometry, frames, poses_by_name

LOG = logging.getLogger("densernet")
OFFLINE_ODOM_MAX_GAP_S = 0.5
# Per answer mode (single, filtered, published), the CSV columns of one frame.
ROW_FIELDS = ("fix", "place", "x", "y", "z", "qx", "qy", "qz", "qw", "sigma_x", "confidence", "reason", "error")


def read_ground_truth(path: str, utm_zone: str | None = None) -> tuple[dict[str, np.ndarray], str]:
    """Positions by file name (the last component of the CSV's image column), wherever the images are; lat/lon
    in `utm_zone` (the map's), and the zone they were projected in ("" for x/y)."""
    from ..datasets import DatasetError, load_csv

    data = load_csv(path, require_images=False, utm_zone=utm_zone)
    out: dict[str, np.ndarray] = {}
    for img, pos in zip(data.images, data.positions):
        if img.name in out:
            raise DatasetError(f"{path}: file name {img.name!r} appears more than once; ground truth is matched by "
                               "file name, so each must be unique")
        out[img.name] = pos
    return out, data.utm_zone


def _inputs(args: argparse.Namespace) -> Iterator[Frame]:
    if args.bag:
        if args.inputs:
            raise ValueError("give images/folders/videos or --bag, not both")
        if not args.image_topic:
            raise ValueError("--bag needs --image-topic")
        return bag_frames(args.bag, args.image_topic)
    if not args.inputs:
        raise ValueError("nothing to localize: give images, folders or videos, or --bag")
    if args.fps is not None and not args.fps > 0:  # a negative rate made time run backwards: the filter froze
        raise ValueError(f"--fps must be a frame rate > 0, got {args.fps}")
    return frames(args.inputs, args.fps)


def _motion_source(args: argparse.Namespace, utm_zone: str | None) -> MotionSource:
    """Odometry from --odometry (lat/lon in the map's `utm_zone`) or a bag's --odom-topic, else none."""
    from ..datasets import load_csv

    if args.odom_topic and not args.bag:
        raise ValueError("--odom-topic reads a bag's odometry: give --bag too")
    if args.odometry:
        return MotionSource(poses=poses_by_name(load_csv(args.odometry, require_images=False, utm_zone=utm_zone)))
    if args.odom_topic:
        return MotionSource(odometry=bag_odometry(args.bag, args.odom_topic, OFFLINE_ODOM_MAX_GAP_S))
    return MotionSource()


def _cmd(args: argparse.Namespace) -> int:
    from .localizer import Localizer
    from .rerank import RerankConfig

    est_cfg = PoseEstimatorConfig(min_score=args.min_score, cluster_radius=args.cluster_radius,
                                  ratio_threshold=args.ratio, min_confidence=args.min_confidence,
                                  position_floor=args.position_floor, confidence=args.confidence)
    relative = args.confidence == "relative"  # the earlier estimator and filter, for comparison
    filter_options = {"max_step": args.max_step, "max_speed": args.max_speed, "fix_mass": args.fix_mass}
    given = [f"--{k.replace('_', '-')}" for k, v in {**filter_options, "odometry": args.odometry,
                                                      "odom_topic": args.odom_topic}.items() if v is not None]
    if given and not args.sequence:  # they would be ignored: the single-frame answers have no filter
        raise ValueError(f"{', '.join(given)} set the place belief filter, which runs only with --sequence: "
                         "give --sequence too, or leave them out")
    belief = BeliefConfig(**{k: v for k, v in filter_options.items() if v is not None},
                          position_floor=args.position_floor, observation=args.confidence, out_of_map=not relative,
                          route_velocity=not relative) if args.sequence else None
    from ..datasets import frame_mismatch
    from ..mapping.placemap import read_manifest

    # lat/lon of ground truth and odometry in the map's UTM zone (the manifest read once, only for them)
    map_zone = (read_manifest(args.map).utm_zone or None) if args.gt or args.odometry else None
    gt, gt_zone = read_ground_truth(args.gt, map_zone) if args.gt else (None, "")
    if gt is not None and not args.bag:  # check image files before any work (video frames: as they come)
        missing = [p.name for item in args.inputs if Path(item).suffix.lower() not in VIDEO_EXTS
                   for p in list_images([item]) if p.name not in gt]
        if missing:
            raise ValueError(f"{args.gt}: no ground truth for {len(missing)} frame(s), e.g. {missing[:3]} "
                             "(rows are matched by file name)")
    motion = _motion_source(args, map_zone)
    LOG.info(limit_blas_for_frames())
    loc = Localizer.from_paths(args.map, args.checkpoint, args.device, None, est_cfg, args.top_k, belief,
                               "filtered" if args.sequence else "single", backend=args.backend, engine=args.engine,
                               rerank=None if args.no_rerank else RerankConfig())
    if gt and (problem := frame_mismatch(loc.map.manifest.utm_zone, loc.map.places.positions, gt_zone,
                                         np.array(list(gt.values())), f"ground truth {args.gt}")):
        raise ValueError(problem)  # every error would be hundreds of km
    # On a map with 3-D points the published pose is the metric one where its gate passed.
    modes = (("single", "filtered") if args.sequence else ("single",)) + (("published",) if loc.metric else ())
    metric_poses, answered, unreadable, true_xy = 0, 0, [], []
    rerank_s, moved = [], 0  # the dense re-rank's time per frame, and the frames whose first place it changed
    est = {m: ([], [], []) for m in modes}  # positions, fix flags, errors of fixes
    with _RowWriter(args.out, modes) as out:
        for frame in _inputs(args):
            stamp = "" if frame.stamp is None else f"{frame.stamp:.6f}"
            if frame.rgb is None:  # named now and at the end; the filter goes on as over a dropped camera frame
                LOG.error("%s: skipped, %s", frame.name, frame.error)
                unreadable.append(frame.name)
                blank = {**dict.fromkeys(ROW_FIELDS, ""), "fix": False, "reason": f"unreadable: {frame.error}"}
                out.write([frame.name, stamp, ""] + [blank[c] for _ in modes for c in ROW_FIELDS] + [""])
                continue
            r = loc.localize(frame.rgb, motion=motion(frame))
            truth = None
            if gt is not None:
                key = Path(frame.name).name  # a bag's frame "/camera/image_raw#000012" is matched as "image_raw#000012"
                if key not in gt:
                    raise ValueError(f"{args.gt}: no ground truth for {frame.name} (rows are matched by file name: {key})")
                truth = gt[key]
                true_xy.append(truth[:2])
            row, parts = [frame.name, stamp, f"{r.scores[0]:.4f}" if len(r.scores) else ""], []
            for m in modes:
                e = {"single": r.single, "filtered": r.filtered, "published": r.estimate}[m]
                err = None if truth is None else float(np.linalg.norm(truth[:2] - e.position[:2]))
                xy, fix, errors = est[m]
                xy.append(e.position[:2])
                fix.append(e.fix)
                if e.fix and err is not None:
                    errors.append(err)
                x, y, z = e.position
                source = f" [{r.pose_source}]" if m == "published" else ""
                parts.append(f"{m}{source}: place {e.place_id} ({x:.2f}, {y:.2f}, {z:.2f}) conf {e.confidence:.2f} "
                             + ("fix" if e.fix else "no fix: " + e.reason) + ("" if err is None else f" error {err:.2f}"))
                row += [e.fix, e.place_id, *[f"{v:.4f}" for v in e.position], *[f"{v:.6f}" for v in e.orientation],
                        f"{np.sqrt(e.covariance[0, 0]):.4f}", f"{e.confidence:.4f}", e.reason,
                        "" if err is None else f"{err:.4f}"]
            metric_poses += r.pose_source == "metric"
            if r.retrieval.reranked:
                rerank_s.append(r.retrieval.rerank_s)
                moved += r.retrieval.rerank_moved
            print(f"{frame.name}: " + " | ".join(parts), flush=True)
            answered += 1
            out.write(row + [f"{1000 * r.total_s:.1f}"])
    if not answered:
        raise ImageError("no frames to localize" + (f": all {len(unreadable)} could not be decoded" if unreadable else ""))
    if loc.metric:
        print(f"metric 6-DoF poses (PnP gate passed): {metric_poses} of {answered} frames")
    if rerank_s:
        print(f"dense re-rank: {len(rerank_s)} frames, the first place changed on {moved}, "
              f"{1000 * float(np.median(rerank_s)):.0f} ms p50 per frame")
    if args.sequence:
        print(f"motion between frames from: {', '.join(f'{k} {v}' for k, v in motion.used.items() if v)}; "
              f"relocalizations {loc.filter.relocalizations}")
    if gt is not None:
        for m in modes:
            xy, fix, errors = est[m]
            print(f"{m}: fixes {sum(fix)}/{len(fix)}; " + format_stats(error_stats(np.array(errors), args.thresholds),
                                                                        args.unit))
        png = Path(args.plot or (Path(args.out).with_suffix(".png") if args.out else "localize.png"))
        published = modes[-1]
        plot_trajectory(png, np.array(true_xy), np.array(est[published][0]), np.array(est[published][1]),
                        loc.map.places.positions[:, :2],
                        " | ".join(f"{m}: {sum(est[m][1])}/{answered} fixes" for m in modes),
                        along_track=args.along_track,
                        others=[("single-frame", np.array(est["single"][0]), np.array(est["single"][1]))]
                        if len(modes) > 1 else ())
        print(f"trajectory plot: {png}")
    if unreadable:
        LOG.error("%d of %d frames could not be decoded and have no answer (rows with reason 'unreadable'%s): %s",
                  len(unreadable), answered + len(unreadable), f" in {args.out}" if args.out else "",
                  first_few(unreadable, 10))
        return 1
    return 0


class _RowWriter:
    """The per-frame CSV, written row by row as frames are localized: a run stopped part way (an error
    in a later frame, Ctrl-C) keeps every answer it gave. No file without an `--out`, nor before a first row."""

    def __init__(self, path: str | None, modes: Sequence[str]) -> None:
        self.path, self.modes, self._file, self._csv = path, modes, None, None

    def __enter__(self) -> "_RowWriter":
        return self

    def write(self, row: list) -> None:
        if self.path is None:
            return
        if self._file is None:
            self._file = open(self.path, "w", newline="")
            self._csv = csv.writer(self._file)
            self._csv.writerow(["frame", "stamp", "top_score"]
                               + [f"{m}_{c}" for m in self.modes for c in ROW_FIELDS] + ["latency_ms"])
        self._csv.writerow(row)
        self._file.flush()

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="densernet-localize", description=__doc__)
    p.add_argument("inputs", nargs="*", help="images, folders or videos (in this order)")
    p.add_argument("--bag", help="a rosbag2 recording to localize (with --image-topic)")
    p.add_argument("--image-topic", help="the bag's sensor_msgs/Image or CompressedImage topic")
    p.add_argument("--sequence", action="store_true",
                   help="the inputs are one drive in order: run the place belief filter (as the node does) and "
                        "report it beside the single-frame answers")
    p.add_argument("--odom-topic", help="--sequence: the bag's odometry (nav_msgs/Odometry or a pose topic)")
    p.add_argument("--odometry", help="--sequence: per-frame poses (CSV as for maps; rows matched by file name) "
                                      "used as odometry between frames")
    p.add_argument("--fps", type=float, help="frame rate of an image folder (stamps for the filter's speed bound); for a video it "
                   "replaces the container's clock")
    belief = BeliefConfig()
    # The filter's options default to None so that one given without --sequence is refused, not ignored.
    p.add_argument("--max-step", type=float,
                   help=f"--sequence: map units the robot may move per frame (unstamped frames, no odometry; "
                        f"default {belief.max_step:g})")
    p.add_argument("--max-speed", type=float,
                   help=f"--sequence: map units per second the robot may move (stamped frames, no odometry; "
                        f"default {belief.max_speed:g})")
    p.add_argument("--fix-mass", type=float,
                   help=f"--sequence: belief within the fix radius needed for a fix (default {belief.fix_mass:g})")
    p.add_argument("--along-track", action="store_true", help="plot position along a straight route (traverses)")
    p.add_argument("--map", required=True)
    p.add_argument("--checkpoint", help="default: the checkpoint recorded in the map")
    p.add_argument("--gt", help="ground-truth CSV (image,x,y,...; lat,lon also): a row belongs to the query frame "
                                "whose file name equals the last component of its image column, wherever the CSV "
                                "and the images are (a video's frames are named <video file name>#<frame, 6 digits>, a bag's "
                                "<last part of the topic>#<message index, 6 digits>)")
    p.add_argument("--out", help="per-frame CSV")
    p.add_argument("--plot", help="trajectory PNG (with --gt)")
    p.add_argument("--device", default="auto")
    add_backend_args(p)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--no-rerank", action="store_true",
                   help="keep the global ranking on a map with dense grids (default: its top 10 re-ordered by the "
                        "dense map, localization/rerank.py)")
    defaults = PoseEstimatorConfig()  # one set of defaults for the CLI, the node and the API
    p.add_argument("--min-score", type=float, default=defaults.min_score)
    p.add_argument("--cluster-radius", type=float, default=defaults.cluster_radius)
    p.add_argument("--ratio", type=float, default=defaults.ratio_threshold)
    p.add_argument("--min-confidence", type=float, default=defaults.min_confidence)
    p.add_argument("--confidence", choices=CONFIDENCES, default=defaults.confidence,
                   help="calibrated (default): probabilities against every place and 'not in the map', from the "
                        "map's observation model; relative: the earlier estimator and filter (no 'not in the map' "
                        "state), for comparison")
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
