"""The node's overhead: end-to-end latency at a 30 Hz camera next to bare describe(), same run.

    .venv/bin/python benchmarks/bench_node.py [--seconds 30] [--rate 30] [--node-param NAME:=VALUE] [--node-env NAME=VALUE]

Map: Gardens Point day_left (every 5th frame) with an off-the-shelf `small` checkpoint at the
benchmark resolution; camera: night_right frames at 320x180, published as sensor_msgs/Image at
`--rate` Hz with the wall-clock stamp at publish time. Latency = time the node's answer
(place_recognition/place, sent for every processed frame, fix or not) is received minus the
image stamp. Bare describe(): the same checkpoint on the same frames, one call per frame, in this
process while the node idles and this process's executor is paused.
Bare timings drift by up to +-15 % between minutes on this machine, so the run alternates:
bare window, camera window, bare window, ... (`--cycles` camera windows, one more bare window at
the end). Ratio per camera window = node p50 in it / bare p50 of the two bare windows around it;
the headline is the median of those (target <= 1.10); the pooled ratio is printed too.
Breakdown from the node's answers: `processing_ms` (deserialise, convert, describe, search,
estimate, under the camera load) and `describe_ms` (the network alone, in the node); the rest of
stamp -> answer is the frame's wait for the busy worker, transport and publishing.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from densernet_core.model.checkpoint import load_model  # noqa: E402
from densernet_core.cli import setup_logging  # noqa: E402
from densernet_core.datasets import load_traverse  # noqa: E402
from densernet_ros.harness import SpinningNode, check_node_params, node_env, start_node, stop_node  # noqa: E402
from densernet_ros.image_conversion import rgb_to_image  # noqa: E402
from densernet_core.images import read_image, resize  # noqa: E402
from benchmarks.small_map import day_left_map  # noqa: E402
from benchmarks.report import machine, machine_line  # noqa: E402

CAMERA_SIZE = (180, 320)  # what is published (height, width)
DESCRIBE_REPEATS = 20  # describe() calls per bare window


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/gardens_point"))
    parser.add_argument("--image-size", type=int, nargs=2, default=(192, 320), metavar=("H", "W"))
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=30.0, help="camera time in all")
    parser.add_argument("--cycles", type=int, default=6, help="camera windows, each between two bare windows")
    parser.add_argument("--node-param", action="append", default=[], metavar="NAME:=VALUE",
                        help="node parameter (repeatable), e.g. max_frame_wait_s:=0.005")
    parser.add_argument("--node-env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment variable for the node process only (repeatable), e.g. OMP_WAIT_POLICY=PASSIVE")
    parser.add_argument("--out", default="bench_out/node")
    args = parser.parse_args(argv)
    bad = [p for p in args.node_param if not p.partition(":=")[0] or ":=" not in p]
    bad += [e for e in args.node_env if not e.partition("=")[0] or "=" not in e]
    if bad:
        parser.error(f"--node-param wants NAME:=VALUE, --node-env NAME=VALUE; got {bad[0]!r}")
    params = {name: yaml.safe_load(value) for name, _, value in (p.partition(":=") for p in args.node_param)}
    try:
        check_node_params(params)
    except ValueError as exc:
        parser.error(str(exc))
    env = dict(e.split("=", 1) for e in args.node_env)
    setup_logging()
    data, out = Path(args.data), Path(args.out)
    if not (data / "day_left").is_dir():
        print(f"Gardens Point not found at {data}; nothing to benchmark")
        return 2
    out.mkdir(parents=True, exist_ok=True)
    size = tuple(args.image_size)
    _, ckpt, map_dir = day_left_map(data, out, size)
    frames = [resize(read_image(p), CAMERA_SIZE) for p in load_traverse(data / "night_right", list(range(0, 200, 5))).images]

    model = load_model(ckpt)
    model.describe(frames[0])  # warm-up

    def bare() -> list[float]:
        """Seconds per describe() call, one frame per call (the node is idle meanwhile)."""
        times = []
        for k in range(DESCRIBE_REPEATS):
            t = time.perf_counter()
            model.describe(frames[k % len(frames)])
            times.append(time.perf_counter() - t)
        return times
    run = run_node(map_dir, frames, args.rate, args.seconds, out, bare, args.cycles, params, env)
    result = summarize(run, args)
    result.update(image_size=list(size), camera_size=list(CAMERA_SIZE), machine=machine())
    (out / "node_latency.json").write_text(json.dumps(result, indent=2))
    print(machine_line(result["machine"]))
    print("| input | rate | node params | frames sent | answered (per s) | bare describe p50 / p95 ms | "
          "node stamp->answer p50 / p95 ms | ratio p50 per window: median (range) | pooled |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {size[0]}x{size[1]} | {args.rate:g} Hz | {' '.join(args.node_param + args.node_env) or 'defaults'} | "
          f"{result['frames_sent']} | {result['frames_answered']} ({result['answers_per_s']:.2f}) | "
          f"{result['describe_ms_p50']:.0f} / {result['describe_ms_p95']:.0f} | {result['node_ms_p50']:.0f} / "
          f"{result['node_ms_p95']:.0f} | {result['ratio_p50']:.2f} ({min(result['window_ratios']):.2f}-"
          f"{max(result['window_ratios']):.2f}) | {result['pooled_ratio_p50']:.2f} |")
    print("bare describe p50 per window: " + ", ".join(f"{v:.0f}" for v in result["describe_ms_p50_per_window"])
          + " ms; ratio per camera window: " + ", ".join(f"{v:.2f}" for v in result["window_ratios"]))
    print(f"in the node, p50: processing {result['processing_ms_p50']:.0f} ms, of which describe "
          f"{result['node_describe_ms_p50']:.0f} ms; stamp->answer minus processing "
          f"{result['outside_processing_ms_p50']:.0f} ms; stamp->answer / processing "
          f"{result['node_ms_p50'] / result['processing_ms_p50']:.2f}; stamp->answer / describe in the node "
          f"{result['node_ms_p50'] / result['node_describe_ms_p50']:.2f} (what the node adds to its own describe())")
    print(f"wrote {out / 'node_latency.json'} (node log: {run.log})")
    return 0


def summarize(run: "NodeRun", args: argparse.Namespace) -> dict:
    """Pooled figures, and each camera window against the bare windows on either side of it."""
    lat = np.array([a[1] for a in run.answers])
    p50 = lambda v: 1000 * float(np.median(v))  # noqa: E731
    bare_all = [t for w in run.bare_windows for t in w]
    window_ratios = []
    for k, (t0, t1) in enumerate(run.camera_windows):
        in_window = [a[1] for a in run.answers if t0 <= a[0] <= t1]
        if in_window:
            window_ratios.append(p50(in_window) / p50(run.bare_windows[k] + run.bare_windows[k + 1]))
    result = {"rate_hz": args.rate, "node_params": args.node_param, "node_env": args.node_env, "frames_sent": run.sent,
              "frames_answered": len(run.answers), "answers_per_s": len(run.answers) / args.seconds,
              "describe_ms_p50": p50(bare_all), "describe_ms_p95": 1000 * float(np.percentile(bare_all, 95)),
              "describe_ms_p50_per_window": [p50(w) for w in run.bare_windows],
              "node_ms_p50": p50(lat), "node_ms_p95": 1000 * float(np.percentile(lat, 95)),
              "window_ratios": window_ratios, "ratio_p50": float(np.median(window_ratios)),
              "processing_ms_p50": p50([a[2] for a in run.answers]),
              "node_describe_ms_p50": p50([a[3] for a in run.answers]),
              "outside_processing_ms_p50": p50([a[1] - a[2] for a in run.answers])}
    result["pooled_ratio_p50"] = result["node_ms_p50"] / result["describe_ms_p50"]
    return result


@dataclass
class NodeRun:
    answers: list[tuple[float, float, float, float]]  # image stamp, stamp -> answer, processing, describe (s)
    bare_windows: list[list[float]]                    # cycles + 1 windows of describe() seconds
    camera_windows: list[tuple[float, float]]          # wall-clock start, end of each camera window
    sent: int
    log: Path


def run_node(map_dir: Path, frames: list[np.ndarray], rate: float, seconds: float, out: Path,
             bare: Callable[[], list[float]], cycles: int, params: dict[str, object], env: dict[str, str]) -> NodeRun:
    """Bare describe() while the node idles, then the camera for seconds/cycles; `cycles` times, then bare.
    `env` is added to the node's environment only."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    log = out / "node.log"
    answers: list[tuple[float, float, float, float]] = []

    def on_answer(m: DiagnosticArray) -> None:
        stamp = m.header.stamp.sec + m.header.stamp.nanosec * 1e-9
        values = {kv.key: kv.value for kv in m.status[0].values}
        answers.append((stamp, time.time() - stamp, float(values["processing_ms"]) / 1000,
                        float(values["describe_ms"]) / 1000))
    sent = 0
    bare_windows: list[list[float]] = []
    camera_windows: list[tuple[float, float]] = []
    proc = start_node(map_dir.resolve(), {**node_env(), **env}, log, params)
    try:
        with SpinningNode("densernet_bench_camera") as camera:
            pub = camera.node.create_publisher(Image, "image", qos_profile_sensor_data)
            camera.node.create_subscription(DiagnosticArray, "place_recognition/place", on_answer, 50)
            camera.wait_for_node(proc, pub, "place_recognition/place", 120, log)
            time.sleep(2.0)
            msgs = [rgb_to_image(rgb) for rgb in frames]  # stamped at publish

            def timed_bare() -> None:
                camera.paused.set()  # no executor work in this process while bare describe() is timed
                bare_windows.append(bare())
                camera.paused.clear()
            for _ in range(cycles):
                timed_bare()
                t0, n0, start = time.monotonic(), sent, time.time()
                while time.monotonic() - t0 < seconds / cycles:
                    m = msgs[sent % len(msgs)]
                    now = time.time()
                    m.header.stamp.sec, m.header.stamp.nanosec = int(now), int((now % 1) * 1e9)
                    pub.publish(m)
                    sent += 1
                    delay = t0 + (sent - n0) / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                camera_windows.append((start, time.time()))
                time.sleep(2.0)  # the node finishes its last frame before bare describe() runs again
            timed_bare()
    finally:
        stop_node(proc)
    return NodeRun(answers, bare_windows, camera_windows, sent, log)


if __name__ == "__main__":
    sys.exit(main())
