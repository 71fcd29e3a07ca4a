"""`densernet-map`: build a place map from a recorded route, inspect it, append a traverse.

`build` also runs under torchrun, each rank describing a share of the images, rank 0 writing the map:
    torchrun --nproc-per-node 2 --no-python densernet-map build --checkpoint C --traverse DIR --out MAP
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from ..cli import add_backend_args, run_cli, setup_logging
from ..datasets import GeoImages, bag_route, load_csv, load_kitti, load_rosbag, load_traverse, thin
from ..local_features import DEFAULT_FEATURES, FEATURE_TYPES
from .extraction import DEFAULT_BATCH, DEFAULT_WORKERS, ExtractionOptions
from .grids import AUTO_MAX_PLACES, GRID_CHOICES, build_grids, remove_grids
from .index import BUILD_TYPES, EXACT_MAX_PLACES
from .placemap import DTYPES, PlaceMap, add_to_map, build_map, read_manifest, reindex_map

LOG = logging.getLogger("densernet")
INDEX_HELP = (f"map search: flat (exact), compact (a projection fitted on the map, an inverted file of 8-bit codes in "
              f"RAM, its best 1000 ranked by product-quantisation codes of the full descriptors, the best 32 of "
              f"those re-scored exactly; for maps of tens of thousands of places and more), or auto "
              f"(the default: flat up to {EXACT_MAX_PLACES} places, compact above, chosen again by `add`)")


def load_route(args: argparse.Namespace, out_dir: Path, utm_zone: str | None = None) -> GeoImages:
    """The route to map, from exactly one of: --poses CSV, --bag, --traverse, --kitti; lat/lon in `utm_zone`
    (the map's, when adding to it)."""
    given = [x for x in ("poses", "bag", "traverse", "kitti") if getattr(args, x)]
    if len(given) != 1:
        raise ValueError("give exactly one route source: --poses CSV, --bag BAG, --traverse DIR or --kitti DIR")
    if args.poses:
        data = load_csv(args.poses, args.images, skip_bad=args.skip_bad, frame_id=args.frame_id, utm_zone=utm_zone)
    elif args.bag:
        args.bag_route = bag_route(args.bag, args.image_topic, args.pose_topic)
        LOG.info("bag %s: images %s (%s), poses %s (%s), camera info %s", args.bag, args.bag_route.image_topic,
                 args.bag_route.camera_frame or "no frame", args.bag_route.pose_topic,
                 args.bag_route.base_frame or "no child frame", args.bag_route.camera_info_topic or "none")
        data = load_rosbag(args.bag, args.bag_route.image_topic, args.bag_route.pose_topic, out_dir / "images",
                           args.max_dt, utm_zone=utm_zone)
    elif args.traverse:
        data = load_traverse(args.traverse, spacing=args.spacing)
    else:
        data = load_kitti(args.kitti)
    if args.every > 1:
        data = data.subset(range(0, len(data), args.every))
    return thin(data, args.min_distance, args.min_angle)


def _model(args: argparse.Namespace, device: str | None = None):
    from ..model.checkpoint import checkpoint_hash
    from ..model.runtime import load_describer

    image_size = tuple(args.image_size) if args.image_size else None
    return (load_describer(args.checkpoint, device or args.device, image_size, args.backend, args.engine),
            checkpoint_hash(args.checkpoint))


def _extraction(args: argparse.Namespace) -> ExtractionOptions:
    return ExtractionOptions.for_batch(args.batch_size, args.workers, args.chunk)


def _camera(args: argparse.Namespace, data: GeoImages):
    """The mapped images' intrinsics (--camera; a bag's CameraInfo for its image topic when not given), or
    None: a retrieval-only map."""
    from ..camera import camera_from_bag, load_camera
    from ..images import read_image

    route = getattr(args, "bag_route", None)
    if not args.camera:
        if route is not None and route.camera_info_topic and not getattr(args, "no_camera", False):
            LOG.info("intrinsics from the bag's %s: a metric map (--no-camera: retrieval only)", route.camera_info_topic)
            return camera_from_bag(args.bag, route.camera_info_topic)
        return None
    if args.bag and args.camera.startswith("/") and not Path(args.camera).is_file():
        return camera_from_bag(args.bag, args.camera)  # a CameraInfo topic of the bag
    h, w = read_image(data.images[0]).shape[:2]
    return load_camera(args.camera, image_size=(w, h))


def _extrinsic(args: argparse.Namespace):
    """base -> camera: --extrinsic FILE, else the bag's /tf_static from the odometry's child frame to the
    images' frame; None: the route's poses are taken as they are (camera poses for a metric map)."""
    from ..frames import extrinsic_from_bag, load_extrinsic

    if args.extrinsic:
        return load_extrinsic(args.extrinsic)
    route = getattr(args, "bag_route", None)
    if route is None or not (route.base_frame and route.camera_frame):
        return None
    extrinsic = extrinsic_from_bag(args.bag, route.base_frame, route.camera_frame)
    if extrinsic is None:
        LOG.warning("%s: no /tf_static from %s to %s: the map's poses are the odometry's (%s), not the camera's",
                    args.bag, route.base_frame, route.camera_frame, route.base_frame)
    else:
        LOG.info("camera extrinsic %s", extrinsic.describe())
    return extrinsic


def _cmd_build(args: argparse.Namespace) -> int:
    from ..distributed import init_distributed

    out = Path(args.out)
    ctx = init_distributed(args.device)  # one process, or this rank of a torchrun job
    try:
        data = load_route(args, out)
        model, sha = _model(args, str(ctx.device))
        pmap = build_map(model, Path(args.checkpoint).resolve(), sha, data, out, args.index, args.dtype,
                         camera=_camera(args, data), features=args.local_features, extraction=_extraction(args),
                         ctx=ctx, progress=not args.no_progress, extrinsic=_extrinsic(args), grids=args.grids)
    finally:
        ctx.close()
    if pmap is None:
        print(f"rank {ctx.rank} of {ctx.world_size}: its share of {len(data)} images went to rank 0, "
              f"which wrote the map to {out}")
    else:
        print(pmap.info(out))
    return 0


def _cmd_add(args: argparse.Namespace) -> int:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("densernet-map add runs in one process; start it without torchrun")
    data = load_route(args, Path(args.map), read_manifest(args.map).utm_zone or None)
    model, sha = _model(args)
    print(add_to_map(args.map, model, sha, data, progress=not args.no_progress, extraction=_extraction(args))
          .info(args.map))
    return 0


def _cmd_grids(args: argparse.Namespace) -> int:
    """Build (or rebuild) a map's dense grids from its images with the map's checkpoint, or remove them."""
    if args.remove:
        remove_grids(args.map)
        print(f"{args.map}: dense grids removed; the global ranking is used as it is")
        return 0
    pmap = PlaceMap.load(args.map, observation=False, grids=False)
    ckpt = Path(args.checkpoint or pmap.manifest.checkpoint)
    if not args.checkpoint and not ckpt.is_absolute() and not ckpt.is_file():
        ckpt = Path(args.map) / ckpt  # as the localizer finds a map's checkpoint
    args.checkpoint = str(ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint not found: {args.checkpoint} (the map's; pass --checkpoint)")
    args.image_size = None
    model, sha = _model(args)
    pmap.check_model(model.descriptor_dim, sha)
    grids = build_grids(model, pmap.places.images, args.map, sha, progress=not args.no_progress)
    print(f"{args.map}: dense grids of {grids.meta.places} places, {grids.meta.height}x{grids.meta.width} cells of "
          f"{grids.meta.channels}, {grids.meta.bytes_per_place() / 1024:.0f} KB per place on disk")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    print(PlaceMap.load(args.map).info(args.map))
    return 0


def _cmd_reindex(args: argparse.Namespace) -> int:
    print(reindex_map(args.map, args.index).info(args.map))
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from ..localization.observation import ObservationConfig
    from .placemap import calibrate_map

    pmap = calibrate_map(args.map, ObservationConfig(recognition_margin=args.recognition_margin))
    print(pmap.observation.describe())
    return 0


def _route_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--poses", help="CSV: image,x,y[,z][,yaw|qx,qy,qz,qw][,timestamp] or image,lat,lon,...")
    p.add_argument("--images", help="folder the CSV's image paths are relative to (default: the CSV's folder)")
    p.add_argument("--skip-bad", action="store_true", help="skip bad CSV rows with a warning instead of failing")
    p.add_argument("--bag", help="rosbag2 recording (its image and odometry topics, CameraInfo and /tf_static are "
                                 "found by type when there is one of each)")
    p.add_argument("--image-topic", help="--bag: the Image/CompressedImage topic (default: the bag's only one)")
    p.add_argument("--pose-topic", help="--bag: nav_msgs/Odometry, PoseStamped, PoseWithCovarianceStamped or NavSatFix "
                                        "(default: the bag's only Odometry topic, else its only pose topic)")
    p.add_argument("--max-dt", type=float, default=0.1, help="max image/pose time difference (s)")
    p.add_argument("--traverse", help="index-aligned image folder (frame index as position)")
    p.add_argument("--spacing", type=float, default=1.0, help="distance between traverse frames")
    p.add_argument("--kitti", help="KITTI odometry folder (image_l/, poses.txt)")
    p.add_argument("--every", type=int, default=1, help="use every n-th frame")
    p.add_argument("--min-distance", type=float, default=0.0, help="thinning: skip frames closer than this")
    p.add_argument("--min-angle", type=float, default=0.0, help="thinning: ...unless turned this many degrees")
    p.add_argument("--frame-id", default="map")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--device", default="auto")
    add_backend_args(p)
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH,
                   help="images per network pass (CPU: 8 is as fast as any; GPUs: 32-256)")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                   help="threads decoding and resizing images ahead of the network (0: in the main thread)")
    p.add_argument("--chunk", type=int,
                   help="images per saved chunk, the unit of resuming and of torchrun sharding "
                        "(default: 32 rounded up to a multiple of --batch-size)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs, CI)")


def parser() -> argparse.ArgumentParser:
    from ..localization.observation import ObservationConfig

    p = argparse.ArgumentParser(prog="densernet-map", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build a map (resumes an interrupted build)")
    b.add_argument("--out", required=True)
    b.add_argument("--index", choices=BUILD_TYPES, default="auto", help=INDEX_HELP)
    b.add_argument("--camera", help="intrinsics of the mapped images (YAML: width, height, fx, fy, cx, cy, distortion; "
                                    "a ROS camera_info YAML; a KITTI calib.txt; or, with --bag, the bag's CameraInfo topic): "
                                    "also triangulate 3-D points for "
                                    "metric localization (the route must give orientations)")
    b.add_argument("--no-camera", action="store_true",
                   help="with --bag: a retrieval-only map even though the bag has the camera's CameraInfo")
    b.add_argument("--extrinsic", help="YAML: the camera's pose on the robot (base_frame, camera_frame, translation, "
                                       "rotation or rpy_deg); the route's poses are then the base's (with --bag the "
                                       "bag's /tf_static gives it, docs/POSE_MODEL.md)")
    b.add_argument("--local-features", choices=FEATURE_TYPES, default=DEFAULT_FEATURES,
                   help="local features for the 3-D points (sift, the default: OpenCV, the more precise in "
                        "docs/BENCHMARKS.md; densernet: the network's own dense map)")
    b.add_argument("--grids", choices=GRID_CHOICES, default="auto",
                   help="keep each place's dense grid (the fused dense map pooled 2x2, float16; ~369 KB per place "
                        "at 192x320) to re-rank the global top 10 by it (localization/rerank.py: night R@1 0.75 -> "
                        f"0.87 on Gardens Point); auto (the default): maps of up to {AUTO_MAX_PLACES} places built "
                        "with a trained checkpoint (with `densernet init`'s off-the-shelf one it added wrong fixes)")
    b.add_argument("--dtype", choices=DTYPES, default="float16",
                   help="stored descriptor precision (float16: half the size, searched exactly as stored)")
    _route_args(b)
    b.set_defaults(func=_cmd_build)
    a = sub.add_parser("add", help="append a traverse to a map")
    a.add_argument("map")
    _route_args(a)
    a.set_defaults(func=_cmd_add)
    r = sub.add_parser("reindex", help="build a map's search anew from its stored descriptors (another --index; "
                                       "a compact projection refitted on the map as it is now)")
    r.add_argument("map")
    r.add_argument("--index", choices=BUILD_TYPES, help="default: what the map was built with")
    r.set_defaults(func=_cmd_reindex)
    g = sub.add_parser("grids", help="build a map's dense grids for the re-rank (a map built without them, or "
                                     "with another --grids), from its images and checkpoint; --remove drops them")
    g.add_argument("map")
    g.add_argument("--checkpoint", help="default: the map's own")
    g.add_argument("--remove", action="store_true", help="remove the grids (the node then keeps the global ranking)")
    g.add_argument("--device", default="auto")
    add_backend_args(g)
    g.add_argument("--no-progress", action="store_true", help="no progress bar (logs, CI)")
    g.set_defaults(func=_cmd_grids)
    i = sub.add_parser("info", help="what is in a map and what searching it costs (bytes per place, query time)")
    i.add_argument("map")
    i.set_defaults(func=_cmd_info)
    c = sub.add_parser("calibrate", help="fit the map's observation model (how likely a frame shows a mapped place "
                                         "against none) anew and store it; maps made before it need this once")
    c.add_argument("map")
    c.add_argument("--recognition-margin", type=float, default=ObservationConfig().recognition_margin,
                   help="a place counts as evidence above this fraction of the map's own neighbour similarity gap "
                        "(lower: recognises stronger appearance change, and more look-alikes; docs/POSE_MODEL.md)")
    c.set_defaults(func=_cmd_calibrate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_cli(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
