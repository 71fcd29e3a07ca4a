"""`densernet-demo`: map a route, replay the later traverse as a live camera, report how well the robot localizes.

Steps (each reuses its output if already there): generate the route (or use Gardens Point),
get a checkpoint, `densernet-map build`, write the query run into a rosbag2, start the node
(console script with config/localize.yaml, or `ros2 launch` when ROS 2 is sourced), replay the
bag at its recorded rate, record /place_recognition/pose, report.

Checkpoint: `--checkpoint` if given; else on the synthetic route an off-the-shelf one
(`densernet init` on the map run); on Gardens Point one trained with the recipe of
`--train-config` on frames 0-99 of all three traversals, while the demo maps day_left and
replays night_right over frames 100-199 (places the training never saw).

`--seeds N` (Gardens Point): the whole demo once per training seed (the recipe's seed, +1, ...), each
in <out>/seed<k>, then each seed's figures and their mean +- sd (seeds.json): what one training run
gives is luck within that spread.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from densernet_core.cli import make_checkpoint, run_cli, setup_logging
from densernet_core.datasets import GeoImages, load_csv, load_traverse
from densernet_core.demo.routes import generated_route
from densernet_core.demo.synth import RouteConfig, generate
from densernet_core.images import read_image, resize
from densernet_core.localization.report import error_stats, fmt_spread, open_set_summary, plot_trajectory, spread

GP_TRAVERSES = ("day_left", "day_right", "night_right")
GP_TRAIN_FRAMES = (0, 100)  # [start, stop): what the demo's checkpoint is trained on
GP_TEST_FRAMES = range(100, 200)  # mapped (day_left) and replayed (night_right)
GP_CAMERA_SIZE = (180, 320)
GP_TRAIN_CONFIG = "training/configs/gardens_point_small.yaml"
# The filter's speed bound (node parameter max_speed): a walk replayed at 1 frame per second, and the
# synthetic drive's 4 m/s (2 m places, 2 Hz), each with room to spare.
GP_MAX_SPEED = 3.0  # frames per second
SYNTH_MAX_SPEED = 8.0  # m/s


def _route(args: argparse.Namespace, out: Path) -> tuple[GeoImages, GeoImages, float, str]:
    """(map run, query run, success bound on median error, unit)."""
    if args.data == "gardens_point":
        gp = Path(args.shared) / "gardens_point"
        if not gp.is_dir():
            raise FileNotFoundError(f"Gardens Point not found at {gp} (pass --shared or set DENSERNET_SHARED_DATA)")
        return (load_traverse(gp / "day_left", list(GP_TEST_FRAMES)),
                load_traverse(gp / "night_right", list(GP_TEST_FRAMES)), 10.0, "frames")
    cfg = RouteConfig(places=args.places, width=args.size[1], height=args.size[0])
    paths, _ = generated_route(out / "route", cfg, generate, derived=[out / "model.safetensors"])
    return load_csv(paths["map"]), load_csv(paths["query"]), 2 * cfg.spacing, "m"


def _checkpoint(args: argparse.Namespace, out: Path, map_run: GeoImages) -> Path:
    """The given checkpoint, an off-the-shelf one (synthetic), or one trained on held-apart frames (Gardens Point)."""
    if args.checkpoint:
        ckpt = Path(args.checkpoint)
        if not ckpt.is_file():
            raise FileNotFoundError(f"checkpoint not found: {ckpt}")
        return ckpt
    if args.data == "synthetic":
        ckpt = out / "model.safetensors"
        if not ckpt.is_file():
            make_checkpoint(map_run.images, ckpt, image_size=tuple(args.size), progress=False)
        return ckpt
    import dataclasses

    from densernet_core.training.sources import SourceSpec
    from densernet_core.training.train_config import load_train_config
    from densernet_core.training.trainer import run_training

    recipe = Path(args.train_config)
    if not recipe.is_file():
        raise FileNotFoundError(f"training recipe not found: {recipe} (run from the repository root, "
                                "or pass --train-config or --checkpoint)")
    cfg = load_train_config(recipe)
    cfg = dataclasses.replace(cfg, seed=cfg.seed + args.seed)
    gp = Path(args.shared) / "gardens_point"
    sources = tuple(SourceSpec("traverse", str(gp / t), frames=GP_TRAIN_FRAMES) for t in GP_TRAVERSES)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, database=sources, queries=sources), val=None)
    if not (out / "train" / "model.safetensors").is_file():
        print(f"training the demo's checkpoint on Gardens Point frames {GP_TRAIN_FRAMES[0]}-{GP_TRAIN_FRAMES[1] - 1} "
              f"({recipe}; about 6 min on a 2-core CPU, resumed if interrupted)", flush=True)
    return run_training(cfg, out / "train", progress=True)


def _map_is_current(map_dir: Path, ckpt: Path) -> bool:
    """A map built earlier is reused only if it was built with this very checkpoint."""
    from densernet_core.model.checkpoint import checkpoint_hash

    from densernet_core.mapping.grids import GRIDS_META, wanted
    from densernet_core.model.checkpoint import is_trained

    manifest = map_dir / "manifest.json"
    if not manifest.is_file():
        return False
    stored = json.loads(manifest.read_text())
    if stored.get("checkpoint_sha256") != checkpoint_hash(ckpt):
        return False
    # a map made before the dense re-rank, without the grids it would now get, is built again
    return not wanted("auto", stored.get("num_places", 0), is_trained(ckpt))[0] or (map_dir / GRIDS_META).is_file()


def write_bag(query: GeoImages, bag: Path, topic: str = "/image", size: tuple[int, int] | None = None) -> None:
    """The query run as a rosbag2 of rgb8 Images at their timestamps (resized to `size` (h, w) if given)."""
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    if bag.exists():
        shutil.rmtree(bag)
    ts = get_typestore(Stores.ROS2_HUMBLE)
    Image, Header, Time = (ts.types[n] for n in ("sensor_msgs/msg/Image", "std_msgs/msg/Header",
                                                  "builtin_interfaces/msg/Time"))
    with Writer(bag, version=8) as w:
        conn = w.add_connection(topic, Image.__msgtype__, typestore=ts)
        for path, t in zip(query.images, query.timestamps):
            rgb = read_image(path) if size is None else resize(read_image(path), size)
            sec, nsec = int(t), int(round((t - int(t)) * 1e9))
            msg = Image(header=Header(stamp=Time(sec=sec, nanosec=nsec), frame_id="camera"), height=rgb.shape[0],
                        width=rgb.shape[1], encoding="rgb8", is_bigendian=0, step=rgb.shape[1] * 3,
                        data=rgb.reshape(-1))
            w.write(conn, int(t * 1e9), ts.serialize_cdr(msg, Image.__msgtype__))


def replay(bag: Path, proc: subprocess.Popen, rate: float, timeout: float, log: Path,
           lockstep: bool = False) -> tuple[dict, dict, dict, int]:
    """Publish the bag's images at their recorded rate; return {stamp: pose}, {stamp: latency s},
    {stamp: the node's place status values (both modes' answers)}, frames sent. With `lockstep`, each
    frame waits (up to `timeout`) for the node's answer to the one before, so a CPU slower than the
    replay drops no frames and the figures do not depend on its speed (the filter runs on the stamps,
    and latency is then the node's own, without queueing)."""
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from rclpy.qos import qos_profile_sensor_data
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    from densernet_core.bags import open_bag

    from .harness import SpinningNode

    poses, sent, received_at, places = {}, {}, {}, {}

    def on_pose(msg):
        key = msg.header.stamp.sec * 10 ** 9 + msg.header.stamp.nanosec
        poses[key] = msg
        received_at[key] = time.monotonic()

    def on_place(msg):
        places[msg.header.stamp.sec * 10 ** 9 + msg.header.stamp.nanosec] = {kv.key: kv.value for kv in msg.status[0].values}
    with SpinningNode("densernet_demo_player") as player:
        pub = player.node.create_publisher(Image, "image", qos_profile_sensor_data)
        player.node.create_subscription(PoseWithCovarianceStamped, "place_recognition/pose", on_pose, 10)
        player.node.create_subscription(DiagnosticArray, "place_recognition/place", on_place, 10)
        player.wait_for_node(proc, pub, "place_recognition/pose", timeout, log)
        time.sleep(1.0)
        frames, last = 0, None  # last: the stamp of the frame published last
        with open_bag(bag) as reader:
            t0_bag = t0_wall = None
            for conn, t, raw in reader.messages():
                m = reader.deserialize(raw, conn.msgtype)
                t0_bag = t0_bag if t0_bag is not None else t
                t0_wall = t0_wall if t0_wall is not None else time.monotonic()
                if lockstep and last is not None:  # then at its recorded time, or at once if the answer came later
                    _wait_for_answer(places, last, timeout, proc)
                delay = t0_wall + (t - t0_bag) / 1e9 / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                msg = Image()
                msg.header.stamp.sec, msg.header.stamp.nanosec = m.header.stamp.sec, m.header.stamp.nanosec
                msg.header.frame_id = m.header.frame_id
                msg.height, msg.width, msg.encoding, msg.step = m.height, m.width, m.encoding, m.step
                msg.data = m.data.tobytes()
                key = m.header.stamp.sec * 10 ** 9 + m.header.stamp.nanosec
                sent[key] = time.monotonic()
                pub.publish(msg)
                frames, last = frames + 1, key
        if lockstep and last is not None:
            _wait_for_answer(places, last, timeout, proc)
        time.sleep(3.0)  # let the last frame finish (and its pose arrive)
    latency = {k: received_at[k] - sent[k] for k in received_at if k in sent}
    return poses, latency, places, frames


def _wait_for_answer(places: dict, key: int, timeout: float, proc: subprocess.Popen) -> None:
    from .harness import wait_until  # rclpy only where the node is run

    wait_until(lambda: key in places, timeout,
               f"the answer to the frame stamped {key} ns (--realtime does not wait for answers)", proc, poll_s=0.005)


def _answers(places: dict, stamps: list[int], mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame, the node's answer in `mode` (filtered or single) from its place status: position, fix,
    confidence (the probability of the place it names, fix or not)."""
    xy, fix, conf = np.full((len(stamps), 2), np.nan), np.zeros(len(stamps), bool), np.zeros(len(stamps))
    confidence_key = {"filtered": "belief_mass", "single": "single_confidence"}[mode]
    for k, key in enumerate(stamps):
        values = places.get(key)
        if values is None:
            continue
        conf[k] = float(values.get(confidence_key, 0.0))
        position = values.get(f"{mode}_position")
        if position:
            xy[k] = [float(v) for v in position.split(",")[:2]]
        fix[k] = values.get(f"{mode}_fix") == "true"
    return xy, fix, conf


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="densernet-demo", description=__doc__)
    p.add_argument("--data", choices=("synthetic", "gardens_point"), default="synthetic")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--places", type=int, default=120)
    p.add_argument("--size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    p.add_argument("--rate", type=float, default=1.0, help="replay speed (1 = recorded rate)")
    p.add_argument("--realtime", action="store_true",
                   help="publish every frame at its recorded time, answered or not (a CPU slower than the camera "
                        "then drops frames, as on a robot). Default: each frame waits for the answer to the one "
                        "before (never earlier than recorded), so the figures do not depend on this CPU's speed")
    p.add_argument("--shared", default=os.environ.get("DENSERNET_SHARED_DATA", "../shared/data"),
                   help="the shared data folder (default ../shared/data from the repository root)")
    p.add_argument("--checkpoint", help="use this checkpoint (default: made or trained by the demo, see above)")
    p.add_argument("--train-config", default=GP_TRAIN_CONFIG,
                   help=f"Gardens Point training recipe (default {GP_TRAIN_CONFIG}, from the repository root)")
    p.add_argument("--figure", help="also copy the PNG here (the README's picture)")
    p.add_argument("--seeds", type=int, default=1,
                   help="Gardens Point: train with this many seeds and run the demo for each; per seed and mean +- sd")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    if args.seeds > 1 and (args.data != "gardens_point" or args.checkpoint):
        p.error("--seeds trains the Gardens Point checkpoint once per seed: it needs --data gardens_point "
                "and no --checkpoint")
    args.seed = 0
    setup_logging()
    return run_cli(_run_seeds if args.seeds > 1 else _run, args)


SEED_FIGURES = (("fixes", "filtered fixes"), ("within_2", "filtered fixes within 2 frames"),
                ("median", "filtered median error (frames)"), ("single_fixes", "single-frame fixes"),
                ("auc", "filtered PR AUC"))


def _seed_figures(report: dict) -> dict:
    return {"fixes": report["fixes"], "within_2": report["error"].get("within_2"),
            "median": report["error"].get("median"), "single_fixes": report["single_frame"]["fixes"],
            "auc": report["open_set"]["auc"], "checkpoint_sha256": report.get("checkpoint_sha256")}


def _run_seeds(args: argparse.Namespace) -> int:
    """The demo once per seed, then the spread: mean and sample sd (n-1) of every figure."""
    import copy

    out = Path(args.out)
    per_seed, codes = [], []
    for k in range(args.seeds):
        sub = copy.copy(args)
        sub.out, sub.seed, sub.figure = str(out / f"seed{k}"), k, None
        print(f"--- seed {k} of {args.seeds} ---", flush=True)
        codes.append(_run(sub))
        per_seed.append(_seed_figures(json.loads((out / f"seed{k}" / "report.json").read_text())))
    columns = {key: [r[key] for r in per_seed] for key, _ in SEED_FIGURES}
    summary = {key: {"label": label, "values": columns[key], **spread(columns[key])} for key, label in SEED_FIGURES}
    (out / "seeds.json").write_text(json.dumps({"seeds": per_seed, "summary": summary}, indent=2))
    print(f"over {args.seeds} seeds (mean ± sd; each seed):")
    for key, label in SEED_FIGURES:
        v = summary[key]
        each = ", ".join("-" if x is None else f"{x:.2f}" for x in v["values"])
        print(f"  {label}: {fmt_spread(v)}  [{each}]")
    print(f"seeds: {out / 'seeds.json'}")
    return max(codes)


def _run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    marker = out / "data.txt"  # outputs are reused on reruns: never across data sources
    if marker.is_file() and marker.read_text().strip() != args.data:
        raise ValueError(f"{out} holds a '{marker.read_text().strip()}' demo; use another --out for --data {args.data}")
    if (out / "model.safetensors").is_file() and not marker.is_file() and args.data != "synthetic":
        raise ValueError(f"{out} holds outputs of another demo; use another --out for --data {args.data}")
    marker.write_text(args.data + "\n")
    map_run, query_run, bound, unit = _route(args, out)
    ckpt = _checkpoint(args, out, map_run)
    from densernet_core.mapping.cli import main as map_main

    map_dir = out / "map"
    if not _map_is_current(map_dir, ckpt):
        if map_dir.exists():
            shutil.rmtree(map_dir)
        if args.data == "gardens_point":
            from densernet_core.model.checkpoint import checkpoint_hash, load_model
            from densernet_core.mapping.placemap import build_map

            build_map(load_model(ckpt), ckpt.resolve(), checkpoint_hash(ckpt), map_run, map_dir, progress=False)
        elif map_main(["build", "--checkpoint", str(ckpt), "--poses", str(out / "route" / "map" / "poses.csv"),
                       "--out", str(map_dir)]) != 0:
            return 1
    bag = out / "query_bag"
    if args.data == "gardens_point":
        query_run.timestamps = np.arange(len(query_run)) * 1.0  # 1 Hz walking pace
    # Gardens Point night frames are 640x360; Fast DDS loses such best-effort frames on this
    # loopback without transport tuning, so the camera is replayed at 320x180 (as the node tests do).
    write_bag(query_run, bag, size=GP_CAMERA_SIZE if args.data == "gardens_point" else None)
    gp = args.data == "gardens_point"
    radius = 5.0 if gp else 2.5 * RouteConfig().spacing  # GP: as in bench_pose.py
    from .harness import node_env, start_node, stop_node

    log = out / "node.log"
    proc = start_node(map_dir.resolve(), node_env(), log,
                      {"cluster_radius": radius, "max_speed": GP_MAX_SPEED if gp else SYNTH_MAX_SPEED})
    try:
        poses, latency, places, frames = replay(bag, proc, args.rate, 120, log, lockstep=not args.realtime)
    finally:
        stop_node(proc)
    stamps = [int(round(t * 1e9)) for t in query_run.timestamps]
    true_xy = query_run.positions[:, :2]
    thresholds = (bound / 2, bound) if unit == "m" else (2.0, 5.0)
    modes = {}
    for mode in ("filtered", "single"):  # the node publishes the filtered answer; the single-frame one rides along
        est_xy, fix, conf = _answers(places, stamps, mode)
        err = np.linalg.norm((est_xy - true_xy)[:, :1] if unit == "frames" else est_xy - true_xy, axis=1)
        right = np.nan_to_num(err, nan=np.inf) <= thresholds[0]
        modes[mode] = {"est_xy": np.where(fix[:, None], est_xy, np.nan), "fix": fix,
                       "stats": error_stats(err[fix], thresholds),
                       "open_set": open_set_summary(conf, right, len(stamps))}
    published = np.array([k in poses for k in stamps])
    fix, stats = modes["filtered"]["fix"], modes["filtered"]["stats"]
    if not np.array_equal(published, fix):
        raise RuntimeError("the poses published differ from the node's filtered answers in place_recognition/place")
    lat = np.array(list(latency.values())) * 1000
    reranked = [places[k] for k in stamps if k in places and "rerank_ms" in places[k]]
    moved = sum(v["global_best"] != v["top_k_ids"].split(",")[0] for v in reranked)  # the re-rank changed the top
    unanswered = sum(k not in places for k in stamps)  # dropped by the node's newest-frame slot while busy
    from densernet_core.model.checkpoint import checkpoint_hash

    report = {"data": args.data, "checkpoint_sha256": checkpoint_hash(ckpt),
              "frames_sent": frames, "poses_received": len(poses), "fixes": int(sum(fix)),
              "no_fix": int(len(fix) - sum(fix) - unanswered), "unanswered": unanswered,
              "lockstep": not args.realtime, "error": stats, "unit": unit,
              "open_set": modes["filtered"]["open_set"],
              "single_frame": {"fixes": int(sum(modes["single"]["fix"])), "error": modes["single"]["stats"],
                               "open_set": modes["single"]["open_set"]},
              "rerank": {"frames": len(reranked), "top_changed": int(moved),
                         "ms_p50": float(np.median([float(v["rerank_ms"]) for v in reranked])) if reranked else None},
              "latency_ms_p50": float(np.percentile(lat, 50)) if lat.size else None,
              "latency_ms_p95": float(np.percentile(lat, 95)) if lat.size else None,
              "median_error_bound": bound, "wall_s": time.monotonic() - t_start}
    est_xy = modes["filtered"]["est_xy"]
    pairs = []
    fixed = [k for k in range(len(query_run)) if fix[k]]
    if fixed:  # a few query frames beside the map image nearest to their estimate
        from densernet_core.mapping.placemap import PlaceMap

        places = PlaceMap.load(map_dir).places
        for k in sorted({fixed[int(round(q))] for q in np.linspace(0, len(fixed) - 1, 3)}):
            j = int(np.argmin(np.linalg.norm(places.positions[:, :2] - est_xy[k], axis=1)))
            pairs.append((read_image(query_run.images[k]), read_image(places.images[j]), f"#{k}"))
    single = modes["single"]
    png = plot_trajectory(out / "demo.png", true_xy, est_xy, fix, map_run.positions[:, :2],
                          f"{args.data}: filtered {sum(fix)}/{len(fix)} fixes, median error "
                          f"{stats.get('median', float('nan')):.2f} {unit}; single-frame {sum(single['fix'])} fixes, "
                          f"{single['stats'].get('median', float('nan')):.2f} {unit}", pairs,
                          along_track=True,  # both routes are straight: estimate against truth along it
                          others=[("single-frame", single["est_xy"], single["fix"])], label="filtered (published)")
    if args.figure:
        shutil.copy(png, args.figure)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"frames sent {frames}, poses received {len(poses)}, fixes {sum(fix)}, no fix {report['no_fix']}, "
          f"unanswered {unanswered}" + (" (dropped while the node was busy: this CPU describes slower than the "
                                        "camera's rate; without --realtime each frame waits for its answer)"
                                        if unanswered else ""))
    for mode, label in (("filtered", "filtered (published)"), ("single", "single-frame")):
        s = modes[mode]["stats"]
        within = ", ".join(f"{100 * v:.0f}% within {k[7:]} {unit}" for k, v in s.items() if k.startswith("within_"))
        o = modes[mode]["open_set"]
        print(f"{label}: {int(sum(modes[mode]['fix']))} fixes" + (f"; position error: median {s['median']:.2f} {unit}, "
                                                                   f"p90 {s['p90']:.2f} {unit}; {within}" if s.get("n") else "")
              + f"; confidence as a score: PR AUC {o['auc']:.2f}, recall at 100 % precision {100 * o['recall_at_100p']:.0f} %")
    if reranked:
        print(f"dense re-rank: {len(reranked)} frames, the top place changed on {moved}, "
              f"{report['rerank']['ms_p50']:.0f} ms p50 per frame")
    if lat.size:
        print(f"end-to-end latency (publish -> pose received): p50 {report['latency_ms_p50']:.0f} ms, "
              f"p95 {report['latency_ms_p95']:.0f} ms")
    print(f"plot: {png}   report: {out / 'report.json'}   total {report['wall_s']:.0f} s")
    ok = stats.get("n", 0) >= len(fix) / 2 and stats["median"] <= bound
    print("LOCALIZATION OK" if ok else f"LOCALIZATION FAILED (needs fixes on >= half the frames and median error <= {bound} {unit})")
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
