"""A robot drives the synthetic 3-D street (street3d.py): what a real ROS 2 robot would record.

`base_link` rides on the ground (x forward along the street, z up); the camera sits 0.25 m ahead of
it and 0.9 m up, facing the facades on the robot's left and pitched down 5 degrees, with optical
axes (x right, y down, z forward): `camera_optical_frame`. Two drives, each a rosbag2 with
    /tf_static              base_link -> camera_optical_frame
    /odom                   nav_msgs/Odometry odom -> base_link, 20 Hz
    /camera/image_raw       sensor_msgs/Image rgb8, 2 Hz, frame camera_optical_frame
    /camera/camera_info     sensor_msgs/CameraInfo
- mapping/: the mapping drive, its /odom exact (survey-grade poses: the map is built from it);
- later/: a later drive 0.4 m closer to the facades, weaving +-4 degrees, at dusk, whose /odom is
  wheel odometry that drifts (a scale error and a yaw bias), starting at the identity;
and truth.csv beside each (base_link in the map frame at every image stamp). Images are rendered from
the camera pose = base * extrinsic, exactly, so the base pose a localizer publishes has an exact answer.
"""
from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from ..frames import Extrinsic
from ..geometry import compose, inverse
from .street3d import LOOK_AT_FACADES, StreetConfig, render, street

BASE_FRAME, CAMERA_FRAME, ODOM_FRAME = "base_link", "camera_optical_frame", "odom"
IMAGE_TOPIC, INFO_TOPIC, ODOM_TOPIC = "/camera/image_raw", "/camera/camera_info", "/odom"
DRIVES = ("mapping", "later")


@dataclass(frozen=True)
class RobotConfig:
    places: int = 60                 # camera frames per drive
    spacing: float = 1.0             # metres driven between frames
    frame_period_s: float = 0.5      # a 2 Hz camera (2 m/s)
    width: int = 640                 # the robot's camera: 640x480, 520 px focal (a 63 degree lens)
    height: int = 480
    focal: float = 520.0
    odom_rate_hz: float = 20.0
    mount_forward: float = 0.25      # camera origin in base_link, metres
    mount_up: float = 0.9
    mount_pitch_deg: float = 5.0     # down
    later_lateral: float = 0.4       # the later drive, towards the facades
    later_along: float = 0.3
    later_weave_deg: float = 4.0     # heading weave amplitude
    odom_scale_error: float = 0.03   # wheel odometry reads 3 % long
    odom_yaw_bias_deg_per_m: float = 0.2
    darkening: float = 0.75          # the later drive at dusk
    noise_std: float = 3.0
    seed: int = 5

    @property
    def extrinsic(self) -> Extrinsic:
        look = Rotation.from_matrix(LOOK_AT_FACADES) * Rotation.from_euler("x", -self.mount_pitch_deg, degrees=True)
        return Extrinsic(BASE_FRAME, CAMERA_FRAME, (self.mount_forward, 0.0, self.mount_up),
                         tuple(float(v) for v in look.as_quat()), "robot_street")

    def street(self) -> StreetConfig:
        return StreetConfig(places=self.places, spacing=self.spacing, camera_height=self.mount_up, width=self.width,
                            height=self.height, focal=self.focal, px_per_metre=self.focal / 3.25)


def base_pose(drive: str, t: float, cfg: RobotConfig) -> tuple[np.ndarray, np.ndarray]:
    """The true base_link pose (map frame) at time t (seconds from the drive's start)."""
    speed = cfg.spacing / cfg.frame_period_s
    x = speed * t
    if drive == "mapping":
        return np.array([x, 0.0, 0.0]), np.array([0.0, 0.0, 0.0, 1.0])
    phase = 2 * math.pi * x / 12.0  # a 12 m weave
    y = cfg.later_lateral + 0.1 * math.sin(phase)
    yaw = math.radians(cfg.later_weave_deg) * math.cos(phase)
    return np.array([x + cfg.later_along, y, 0.0]), Rotation.from_euler("z", yaw).as_quat()


def wheel_odometry(drive: str, times: np.ndarray, cfg: RobotConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """odom -> base_link at each time: exact for the mapping drive (its odom frame is the map's); for the
    later drive the true motion increments integrated with a scale error and a yaw bias, from the identity."""
    truth = [base_pose(drive, float(t), cfg) for t in times]
    if drive == "mapping":
        return truth
    out = [(np.zeros(3), np.array([0.0, 0.0, 0.0, 1.0]))]
    for a, b in zip(truth[:-1], truth[1:]):
        dt, dq = compose(inverse(a), b)  # the increment in the robot's own frame
        dist = float(np.linalg.norm(dt))
        bias = Rotation.from_euler("z", math.radians(cfg.odom_yaw_bias_deg_per_m) * dist)
        step = (dt * (1 + cfg.odom_scale_error), (Rotation.from_quat(dq) * bias).as_quat())
        out.append(compose(out[-1], step))
    return out


def generate(out: str | Path, cfg: RobotConfig = RobotConfig()) -> dict[str, Path]:
    """mapping/ and later/ rosbag2 folders (bag/) with truth.csv; the same bytes every time."""
    out = Path(out)
    scfg = cfg.street()
    facades = street(scfg)
    rng = np.random.default_rng(cfg.seed)
    ext = cfg.extrinsic
    paths = {}
    for drive in DRIVES:
        folder = out / drive
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        image_times = np.arange(cfg.places) * cfg.frame_period_s
        odom_times = np.arange(0.0, image_times[-1] + 1e-9, 1.0 / cfg.odom_rate_hz)
        frames, truth = [], []
        for t in image_times:
            base = base_pose(drive, float(t), cfg)
            cam = compose(base, ext.transform)
            img = render(facades, cam, scfg)
            if drive == "later":
                img = np.clip(img.astype(np.float32) * cfg.darkening + rng.normal(0, cfg.noise_std, img.shape), 0, 255
                              ).astype(np.uint8)
            frames.append((float(t), img))
            truth.append((float(t), *base[0], *base[1]))
        write_bag(folder / "bag", frames, list(zip(odom_times, wheel_odometry(drive, odom_times, cfg))), scfg, ext)
        with open(folder / "truth.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "x", "y", "z", "qx", "qy", "qz", "qw", "timestamp"])
            for k, (t, *pose) in enumerate(truth):
                w.writerow([f"{IMAGE_TOPIC}#{k:06d}", *(f"{v:.6f}" for v in pose), f"{t:.3f}"])
        paths[drive] = folder
    (out / "robot.json").write_text(json.dumps({"config": asdict(cfg), "extrinsic": ext.to_dict()}, indent=1))
    return paths


def write_bag(bag: Path, frames: list[tuple[float, np.ndarray]], odometry: list, scfg: StreetConfig,
              ext: Extrinsic) -> None:
    """Images, camera info, odometry and the static transform as a rosbag2 (rosbags, no ROS needed)."""
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    T = ts.types  # noqa: N806
    Header, Time = T["std_msgs/msg/Header"], T["builtin_interfaces/msg/Time"]  # noqa: N806

    def header(t: float, frame: str):
        sec = int(t)
        return Header(stamp=Time(sec=sec, nanosec=int(round((t - sec) * 1e9))), frame_id=frame)

    def vec(v):
        return T["geometry_msgs/msg/Vector3"](x=float(v[0]), y=float(v[1]), z=float(v[2]))

    def quat(q):
        return T["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))

    cam = scfg.camera
    start = 1000.0  # seconds: the drive's clock
    with Writer(bag, version=8) as w:
        c_tf = w.add_connection("/tf_static", "tf2_msgs/msg/TFMessage", typestore=ts)
        c_img = w.add_connection(IMAGE_TOPIC, "sensor_msgs/msg/Image", typestore=ts)
        c_info = w.add_connection(INFO_TOPIC, "sensor_msgs/msg/CameraInfo", typestore=ts)
        c_odom = w.add_connection(ODOM_TOPIC, "nav_msgs/msg/Odometry", typestore=ts)
        t, q = ext.transform
        tf = T["geometry_msgs/msg/TransformStamped"](
            header=header(start, ext.base_frame), child_frame_id=ext.camera_frame,
            transform=T["geometry_msgs/msg/Transform"](translation=vec(t), rotation=quat(q)))
        w.write(c_tf, int(start * 1e9), ts.serialize_cdr(T["tf2_msgs/msg/TFMessage"](transforms=[tf]),
                                                          "tf2_msgs/msg/TFMessage"))
        msgs = []
        for ot, (p, oq) in odometry:
            pose = T["geometry_msgs/msg/PoseWithCovariance"](
                pose=T["geometry_msgs/msg/Pose"](position=T["geometry_msgs/msg/Point"](x=float(p[0]), y=float(p[1]),
                                                                                          z=float(p[2])),
                                                 orientation=quat(oq)), covariance=np.zeros(36))
            twist = T["geometry_msgs/msg/TwistWithCovariance"](
                twist=T["geometry_msgs/msg/Twist"](linear=vec((0, 0, 0)), angular=vec((0, 0, 0))), covariance=np.zeros(36))
            msg = T["nav_msgs/msg/Odometry"](header=header(start + ot, ODOM_FRAME), child_frame_id=BASE_FRAME,
                                             pose=pose, twist=twist)
            msgs.append((start + ot, c_odom, ts.serialize_cdr(msg, "nav_msgs/msg/Odometry")))
        for ft, img in frames:
            h = header(start + ft, ext.camera_frame)
            image = T["sensor_msgs/msg/Image"](header=h, height=img.shape[0], width=img.shape[1], encoding="rgb8",
                                               is_bigendian=0, step=img.shape[1] * 3, data=img.reshape(-1))
            roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
            info = T["sensor_msgs/msg/CameraInfo"](
                header=h, height=cam.height, width=cam.width, distortion_model="plumb_bob", d=np.zeros(5),
                k=np.array([cam.fx, 0, cam.cx, 0, cam.fy, cam.cy, 0, 0, 1], float), r=np.eye(3).reshape(-1),
                p=np.array([cam.fx, 0, cam.cx, 0, 0, cam.fy, cam.cy, 0, 0, 0, 1, 0], float), binning_x=0, binning_y=0,
                roi=roi)
            msgs.append((start + ft, c_info, ts.serialize_cdr(info, "sensor_msgs/msg/CameraInfo")))
            msgs.append((start + ft + 1e-6, c_img, ts.serialize_cdr(image, "sensor_msgs/msg/Image")))
        for when, conn, raw in sorted(msgs, key=lambda m: m[0]):
            w.write(conn, int(round(when * 1e9)), raw)


def read_truth(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(stamps s on the drive's clock, positions N x 3, quaternions N x 4) of base_link in the map frame."""
    rows = list(csv.DictReader(open(path)))
    stamps = np.array([1000.0 + float(r["timestamp"]) for r in rows])
    pos = np.array([[float(r[k]) for k in ("x", "y", "z")] for r in rows])
    quat = np.array([[float(r[k]) for k in ("qx", "qy", "qz", "qw")] for r in rows])
    return stamps, pos, quat
