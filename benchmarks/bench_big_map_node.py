"""The node with a big map: start-up time, memory (and what two nodes on one machine share), per-frame search.

    .venv/bin/python benchmarks/bench_big_map_node.py [--map bench_out/haystack/gardens_point_1000000]
        [--frames 60] [--rate 2] [--node-param NAME:=VALUE]

The map: Gardens Point day_left padded with distractors to 1M places by benchmarks/bench_haystack.py
(a compact index: lists, projection and descriptors memory-mapped). The camera: night_right frames
100-199 at 320x180, `--rate` Hz. Start-up = from starting the node's process to its image
subscription and its answer topic being seen. Memory, from /proc: RSS (anonymous + file-backed) and PSS
(shared pages split between the processes mapping them). A second node on the same map (its own ROS
domain, idle) is then started and both are measured again: the map's files are mapped once for both.
Per frame: `search_ms` (the map search), `processing_ms` and `describe_ms` from place_recognition/place;
fixes published, and right ones (the published place within 2 frames of the camera frame's).
Writes <out>/big_map_node.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from densernet_core.datasets import load_traverse  # noqa: E402
from densernet_core.images import read_image, resize  # noqa: E402
from densernet_ros.harness import (SpinningNode, check_node_params, node_env, start_node, stop_node,  # noqa: E402
                                   wait_until)
from densernet_ros.image_conversion import rgb_to_image  # noqa: E402
from benchmarks.report import machine, machine_line  # noqa: E402

CAMERA_SIZE = (180, 320)
STARTUP_TIMEOUT_S = 300
SECOND_DOMAIN_OFFSET = 50  # the idle second node's ROS domain, away from the first's
FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")
FIRST_FRAME = 100  # camera: night_right 100-199; the map's places 0-199 are day_left 0-199, then distractors
REAL_PLACES = 200  # day_left frames in the map, and the camera's end frame (exclusive)
TOLERANCE = 2  # frames: a published place this close to the camera frame's is right (as bench_haystack)


def right(place_id: int, truth: int | None) -> bool:
    return truth is not None and place_id < REAL_PLACES and abs(place_id - truth) <= TOLERANCE


def memory(pid: int) -> dict[str, float]:
    """MB: the process's RSS split into anonymous and file-backed pages, and its PSS."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in FIELDS:
            out[key] = int(value.split()[0]) / 1024
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "Pss":
            out["Pss"] = int(value.split()[0]) / 1024
    return out


def wait_for_log(log: Path, text: str, proc, timeout: float) -> float:
    return wait_until(lambda: text in (log.read_text() if log.is_file() else ""), timeout,
                      f"{text!r} in {log}", proc, poll_s=0.1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--map", default="bench_out/haystack/gardens_point_1000000")
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/gardens_point"))
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--rate", type=float, default=2.0)
    p.add_argument("--node-param", action="append", default=[], metavar="NAME:=VALUE")
    p.add_argument("--no-second-node", action="store_true")
    p.add_argument("--out", default="bench_out/big_map_node")
    args = p.parse_args(argv)
    map_dir = Path(args.map).resolve()
    if not (map_dir / "manifest.json").is_file():
        print(f"no map at {map_dir}: run benchmarks/bench_haystack.py first")
        return 2
    params = {n: yaml.safe_load(v) for n, _, v in (x.partition(":=") for x in args.node_param)}
    check_node_params(params)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((map_dir / "manifest.json").read_text())
    frames = [resize(read_image(f), CAMERA_SIZE)
              for f in load_traverse(Path(args.data) / "night_right", list(range(FIRST_FRAME, REAL_PLACES))).images]
    msgs = [rgb_to_image(rgb) for rgb in frames]
    answers: list[dict] = []
    env = node_env()
    log = out / "node.log"

    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    def on_answer(m: DiagnosticArray) -> None:
        answers.append({kv.key: kv.value for kv in m.status[0].values}
                       | {"stamp": (m.header.stamp.sec, m.header.stamp.nanosec)})

    t0 = time.monotonic()
    proc = start_node(map_dir, env, log, params)
    second = None
    try:
        with SpinningNode("densernet_big_map_camera") as camera:
            pub = camera.node.create_publisher(Image, "image", qos_profile_sensor_data)
            camera.node.create_subscription(DiagnosticArray, "place_recognition/place", on_answer, 50)
            camera.wait_for_node(proc, pub, "place_recognition/place", STARTUP_TIMEOUT_S, log)
            startup_s = time.monotonic() - t0
            mem_idle = memory(proc.pid)
            time.sleep(2.0)
            truth = {}  # stamp -> the camera frame's true place (day_left frame index = map place id)
            for k in range(args.frames):
                m = msgs[k % len(msgs)]
                now = time.time()
                m.header.stamp.sec, m.header.stamp.nanosec = int(now), int((now % 1) * 1e9)
                truth[(m.header.stamp.sec, m.header.stamp.nanosec)] = FIRST_FRAME + k % len(msgs)
                pub.publish(m)
                time.sleep(1.0 / args.rate)
            time.sleep(3.0)
            mem_run = memory(proc.pid)
            two = None
            if not args.no_second_node:
                env2 = dict(env, ROS_DOMAIN_ID=str((int(env["ROS_DOMAIN_ID"]) + SECOND_DOMAIN_OFFSET) % 100))
                second = start_node(map_dir, env2, out / "node2.log", params)
                second_s = wait_for_log(out / "node2.log", "localizing", second, STARTUP_TIMEOUT_S)
                time.sleep(2.0)
                two = {"first": memory(proc.pid), "second": memory(second.pid), "second_startup_s": second_s}
    finally:
        stop_node(proc)
        if second is not None:
            stop_node(second)
    ms = lambda key: [float(a[key]) for a in answers if key in a]  # noqa: E731
    result = {"map": str(map_dir), "places": manifest["num_places"], "index": manifest["index_type"],
              "node_params": args.node_param, "startup_s": startup_s, "memory_idle_mb": mem_idle,
              "memory_after_frames_mb": mem_run, "two_nodes_mb": two, "frames_sent": args.frames,
              "machine": machine(), "answered": len(answers), "fixes": sum(a.get("fix") == "true" for a in answers),
              "right_fixes": sum(a.get("fix") == "true" and right(int(a["place_id"]), truth.get(a["stamp"]))
                                 for a in answers)}
    for key in ("search_ms", "processing_ms", "describe_ms"):
        v = ms(key)
        result[key] = {"p50": float(np.median(v)), "p95": float(np.percentile(v, 95)), "max": float(max(v))} if v else None
    (out / "big_map_node.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(machine_line(result["machine"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
