"""A robot in the loop (issue 20): base_link's pose, map -> odom, /initialpose, on the synthetic 3-D street.

    .venv/bin/python benchmarks/bench_robot.py [--out bench_out/robot]

1. Two drives of a robot through the 3-D street (densernet_core/demo/robot_street.py: base_link on the
   ground, a 640x480 camera 0.25 m ahead and 0.9 m up facing the facades, pitched down 5 degrees) as
   rosbag2 files with /tf_static, /odom, /camera/image_raw and /camera/camera_info. The mapping drive's
   odometry is exact (survey poses); the later drive's drifts (3 % scale, 0.2 deg/m of yaw bias).
2. `densernet-map build --bag mapping --checkpoint C --out map`, no other flag: a metric map of base
   poses with the extrinsic from /tf_static (the checkpoint: `densernet init` on the mapping images).
3. Offline: the Localizer on the later drive; base_link's error where PnP passed, beside what was
   published before this change (the camera's pose, taken as the base's).
4. Live: the node (console script, filter_odometry, publish_tf) fed the later drive (odometry, camera
   info, images) with an /initialpose at the first frame; the published pose against base_link's truth,
   tf2's chain map -> odom -> base_link against the truth where odometry alone has drifted >= 1 m, and
   the frames until the first right fix after the initial pose. Without tf2_ros (PyPI) the node's
   map -> odom is read through the stand-in broadcaster of the tests (same signature as upstream).
Writes <out>/results.json and table.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from densernet_core.cli import make_checkpoint, setup_logging  # noqa: E402
from densernet_core.demo.robot_street import RobotConfig, generate, read_truth  # noqa: E402
from densernet_core.geometry import compose  # noqa: E402
from benchmarks.report import save_report  # noqa: E402

RIGHT_M = 0.5  # a fix within this of base_link's truth counts as right (the initial-pose row)
FAKE_TF2 = '''
from geometry_msgs.msg import TransformStamped


class TransformBroadcaster:
    def __init__(self, node, qos=100):
        self._pub = node.create_publisher(TransformStamped, "bench_tf", 10)

    def sendTransform(self, transform):
        for t in transform if isinstance(transform, list) else [transform]:
            self._pub.publish(t)
'''


def drives(out: Path, cfg: RobotConfig) -> dict[str, Path]:
    stamp = out / "drives" / "robot.json"
    if stamp.is_file() and json.loads(stamp.read_text())["config"] == json.loads(json.dumps(asdict(cfg))):
        return {d: out / "drives" / d for d in ("mapping", "later")}
    return generate(out / "drives", cfg)


def build(out: Path, paths: dict[str, Path]) -> tuple[Path, float]:
    import cv2

    from densernet_core.localization.sequence import bag_frames
    from densernet_core.mapping.cli import main as map_main

    images = []
    (out / "mapping_images").mkdir(parents=True, exist_ok=True)
    for k, f in enumerate(bag_frames(paths["mapping"] / "bag", "/camera/image_raw")):
        images.append(out / "mapping_images" / f"{k:03d}.png")
        cv2.imwrite(str(images[-1]), cv2.cvtColor(f.rgb, cv2.COLOR_RGB2BGR))
    ckpt = out / "street.safetensors"
    if not ckpt.is_file():
        make_checkpoint(images, ckpt, image_size=(240, 320), progress=False)
    shutil.rmtree(out / "map", ignore_errors=True)
    t0 = time.perf_counter()
    if map_main(["build", "--bag", str(paths["mapping"] / "bag"), "--checkpoint", str(ckpt), "--out", str(out / "map"),
                 "--no-progress"]) != 0:
        raise RuntimeError("densernet-map build --bag failed")
    return ckpt, time.perf_counter() - t0


def offline(out: Path, paths: dict[str, Path], cfg: RobotConfig) -> dict:
    from densernet_core.localization.belief import BeliefConfig, Motion
    from densernet_core.localization.localizer import Localizer
    from densernet_core.localization.sequence import bag_frames

    loc = Localizer.from_paths(out / "map", belief=BeliefConfig(max_speed=4.0), mode="filtered")
    stamps, truth, quats = read_truth(paths["later"] / "truth.csv")
    base, camera, angles, frames, previous = [], [], [], 0, None
    for k, f in enumerate(bag_frames(paths["later"] / "bag", "/camera/image_raw")):
        r = loc.localize(f.rgb, motion=Motion(dt=None if previous is None else f.stamp - previous))
        previous, frames = f.stamp, frames + 1
        if r.pose_source != "metric":
            continue
        e = r.estimate
        base.append(float(np.linalg.norm(e.position - truth[k])))
        angles.append(float(np.degrees((Rotation.from_quat(e.orientation) * Rotation.from_quat(quats[k]).inv()).magnitude())))
        cam = compose((e.position, e.orientation), cfg.extrinsic.transform)  # what was published before
        camera.append((float(np.linalg.norm(cam[0] - truth[k])),
                       float(np.degrees((Rotation.from_quat(cam[1]) * Rotation.from_quat(quats[k]).inv()).magnitude()))))
    return {"frames": frames, "metric": len(base), "base_median_m": float(np.median(base)),
            "base_p95_m": float(np.percentile(base, 95)), "base_median_deg": float(np.median(angles)),
            "camera_as_base_median_m": float(np.median([c[0] for c in camera])),
            "camera_as_base_median_deg": float(np.median([c[1] for c in camera]))}


def live(out: Path, paths: dict[str, Path]) -> dict:
    import importlib.util

    from geometry_msgs.msg import PoseWithCovarianceStamped, TransformStamped
    from nav_msgs.msg import Odometry
    from sensor_msgs.msg import CameraInfo, Image
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from densernet_core.bags import open_bag
    from densernet_ros.harness import SpinningNode, initial_pose, node_env, stop_node, to_rclpy

    real_tf2 = importlib.util.find_spec("tf2_ros") is not None
    env = node_env()
    if not real_tf2:
        fake = out / "fake_tf2" / "tf2_ros"
        fake.mkdir(parents=True, exist_ok=True)
        (fake / "__init__.py").write_text(FAKE_TF2)
        env["PYTHONPATH"] = os.pathsep.join([str(fake.parent), env["PYTHONPATH"]])
    log = out / "node.log"
    # 640x480 frames are large for best-effort Fast DDS on a busy loopback: the camera is played reliably
    params = ["publish_tf:=true", "filter_odometry:=true", "camera_info_topic:=camera_info", "max_speed:=4.0",
              "tf_rate_hz:=20.0", "qos_overrides./image.subscription.reliability:=reliable"]
    cmd = [sys.executable, "-m", "densernet_ros.node", "--map-dir", str(out / "map"), "--ros-args",
           *[a for p in params for a in ("-p", p)]]
    proc = subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    stamps, truth, quats = read_truth(paths["later"] / "truth.csv")
    with open_bag(paths["later"] / "bag") as reader:
        msgs = [(c.topic, to_rclpy(reader.deserialize(raw, c.msgtype), c.msgtype))
                for c, _, raw in reader.messages() if c.topic != "/tf_static"]
    odom = [m for t, m in msgs if t == "/odom"]
    infos = [m for t, m in msgs if t == "/camera/camera_info"]
    images = [m for t, m in msgs if t == "/camera/image_raw"]
    poses, places, tfs = {}, {}, []
    key = lambda h: (h.stamp.sec, h.stamp.nanosec)  # noqa: E731
    results = []
    try:
        with SpinningNode("densernet_bench_robot") as client:
            n = client.node
            img_pub = n.create_publisher(Image, "image", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
            odom_pub, info_pub = n.create_publisher(Odometry, "odom", 100), n.create_publisher(CameraInfo, "camera_info", 10)
            init_pub = n.create_publisher(PoseWithCovarianceStamped, "initialpose", 10)
            n.create_subscription(PoseWithCovarianceStamped, "place_recognition/pose",
                                  lambda m: poses.__setitem__(key(m.header), m), 10)
            n.create_subscription(DiagnosticArray, "place_recognition/place",
                                  lambda m: places.__setitem__(key(m.header), {kv.key: kv.value for kv in m.status[0].values}), 10)
            if real_tf2:
                import tf2_ros

                buffer = tf2_ros.Buffer()
                client.listener = tf2_ros.TransformListener(buffer, n)
            else:
                n.create_subscription(TransformStamped, "bench_tf", tfs.append, 10)
            client.wait_for_node(proc, img_pub, "place_recognition/pose", 120, log)
            end = time.monotonic() + 30
            while not (odom_pub.get_subscription_count() and init_pub.get_subscription_count()
                       and info_pub.get_subscription_count()) and time.monotonic() < end:
                time.sleep(0.1)
            time.sleep(1.0)
            init_pub.publish(initial_pose(truth[0][0], truth[0][1], var_xy=1.0, var_yaw=0.1))
            time.sleep(1.0)
            sent = 0
            for k, img in enumerate(images):
                t_img = img.header.stamp.sec + img.header.stamp.nanosec * 1e-9
                while sent < len(odom) and odom[sent].header.stamp.sec + odom[sent].header.stamp.nanosec * 1e-9 <= t_img + 0.1:
                    odom_pub.publish(odom[sent])
                    sent += 1
                info_pub.publish(infos[k])
                time.sleep(0.05)
                for _ in range(6):  # best effort: sent again every 5 s until answered
                    img_pub.publish(img)
                    end = time.monotonic() + 5
                    while key(img.header) not in places and time.monotonic() < end:
                        time.sleep(0.05)
                    if key(img.header) in places:
                        break
                time.sleep(0.2)  # the pose follows the place message; the map -> odom its fix
                tf = tfs[-1] if tfs else (buffer.lookup_transform("map", "odom", rclpy_time()) if real_tf2 and
                                          buffer.can_transform("map", "odom", rclpy_time()) else None)
                results.append((k, places.get(key(img.header), {}), poses.get(key(img.header)), tf))
    finally:
        stop_node(proc)
    first_right = next((k for k, v, p, _ in results if p is not None
                        and np.linalg.norm(_xyz(p) - truth[k]) <= RIGHT_M), None)
    metric = [(k, float(np.linalg.norm(_xyz(p) - truth[k])), _angle(p, quats[k])) for k, v, p, _ in results
              if p is not None and v.get("pose_source") == "metric"]
    odom_at = {round(o.header.stamp.sec + o.header.stamp.nanosec * 1e-9, 3): o for o in odom}
    chain, alone = [], []
    for k, v, p, tf in results:
        o = odom_at.get(round(stamps[k], 3))
        if p is None or tf is None or o is None or v.get("pose_source") != "metric":
            continue
        op = (np.array([o.pose.pose.position.x, o.pose.pose.position.y, o.pose.pose.position.z]),
              np.array([o.pose.pose.orientation.x, o.pose.pose.orientation.y, o.pose.pose.orientation.z,
                        o.pose.pose.orientation.w]))
        drift = float(np.linalg.norm(compose((truth[0], quats[0]), op)[0] - truth[k]))
        if drift < 1.0:
            continue
        t, r = tf.transform.translation, tf.transform.rotation
        c = compose((np.array([t.x, t.y, t.z]), np.array([r.x, r.y, r.z, r.w])), op)[0]
        chain.append(float(np.linalg.norm(c - truth[k])))
        alone.append(drift)
    return {"frames": len(results), "fixes": sum(p is not None for _, _, p, _ in results), "metric": len(metric),
            "base_median_m": float(np.median([m[1] for m in metric])) if metric else None,
            "base_median_deg": float(np.median([m[2] for m in metric])) if metric else None,
            "frames_until_right_after_initialpose": None if first_right is None else first_right + 1,
            "tf_chain_frames": len(chain), "tf_chain_median_m": float(np.median(chain)) if chain else None,
            "tf_chain_max_m": float(np.max(chain)) if chain else None,
            "odometry_alone_median_m": float(np.median(alone)) if alone else None,
            "map_odom_read_through": "tf2 Buffer" if real_tf2 else "the tf2_ros stand-in"}


def rclpy_time():
    from rclpy.time import Time

    return Time()


def _xyz(pose) -> np.ndarray:
    p = pose.pose.pose.position
    return np.array([p.x, p.y, p.z])


def _angle(pose, q_true) -> float:
    o = pose.pose.pose.orientation
    return float(np.degrees((Rotation.from_quat([o.x, o.y, o.z, o.w]) * Rotation.from_quat(q_true).inv()).magnitude()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench_out/robot")
    parser.add_argument("--no-live", action="store_true", help="skip the node run (no rclpy)")
    args = parser.parse_args(argv)
    setup_logging()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = RobotConfig()
    paths = drives(out, cfg)
    _, build_s = build(out, paths)
    results = {"config": asdict(cfg), "map_build_s": build_s, "offline": offline(out, paths, cfg)}
    if not args.no_live:
        results["live"] = live(out, paths)
    o, lv = results["offline"], results.get("live", {})
    lines = ["| run | frames | metric poses | base_link median m / deg | as before (camera pose as base) median m / deg |",
             "|---|---|---|---|---|",
             f"| offline (Localizer) | {o['frames']} | {o['metric']} | {o['base_median_m']:.3f} / {o['base_median_deg']:.2f} "
             f"(p95 {o['base_p95_m']:.3f} m) | {o['camera_as_base_median_m']:.3f} / {o['camera_as_base_median_deg']:.1f} |"]
    if lv:
        lines.append(f"| live (node) | {lv['frames']} | {lv['metric']} | {_f(lv['base_median_m'])} / "
                     f"{_f(lv['base_median_deg'], 2)} | - |")
        lines += ["", f"tf2 chain map -> odom -> base_link where odometry alone drifted >= 1 m ({lv['tf_chain_frames']} "
                      f"frames, read through {lv['map_odom_read_through']}): median {_f(lv['tf_chain_median_m'])} m, max "
                      f"{_f(lv['tf_chain_max_m'])} m; odometry alone there: median {_f(lv['odometry_alone_median_m'])} m",
                  f"first right fix (<= {RIGHT_M} m) after /initialpose at the first frame: frame "
                  f"{lv['frames_until_right_after_initialpose']}"]
    lines.append(f"map built from the bag in {build_s:.1f} s (densernet-map build --bag, no other flag)")
    save_report(out, results, "\n".join(lines))
    return 0


def _f(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


if __name__ == "__main__":
    sys.exit(main())
