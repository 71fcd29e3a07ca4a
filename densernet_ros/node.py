"""The localizer node: camera frames in, place and pose out.

Subscribes to `image` (sensor_msgs/Image) or `image/compressed` (CompressedImage), best-effort,
depth 1. The callback only keeps the newest frame (frame_slot.py); a worker thread runs inference,
so the executor never blocks and no queue builds up. Publishes (all relative to the node namespace):

  place_recognition/pose        geometry_msgs/PoseWithCovarianceStamped, map frame, image stamp;
                                nothing when there is no fix. `mode` filtered (default): the place
                                belief over time (densernet_core/localization/belief.py); single:
                                this frame alone
  place_recognition/candidates  geometry_msgs/PoseArray: the top-k retrieved places (RViz)
  place_recognition/place       diagnostic_msgs/DiagnosticArray: one status 'place' whose key/values
                                hold place_id, score, confidence, fix, reason, top_k_ids, top_k_scores,
                                processing_ms (this frame's time in the node, from its bytes to here),
                                describe_ms (of which the network's forward pass), search_ms (of which
                                the map search), mode, the belief's
                                mass / effective_places / relocalized, and the other mode's answer
                                (single_fix, single_place_id, single_position)
  place_recognition/reset       std_srvs/Trigger service: forget the belief (the robot was carried)
  /diagnostics                  diagnostic_msgs/DiagnosticArray, ~1 Hz; one status named
                                '<fully qualified node name>: localization', so the localizers of
                                several robots (namespaces) stay apart
  /tf (publish_tf only)         map -> odom, from each fix and the odometry (odom_topic,
                                nav_msgs/Odometry) interpolated at the image stamp; re-sent at
                                tf_rate_hz, stamped now + transform_tolerance (as AMCL does)
  /tf_static (a UTM map)        map -> utm: a map whose places are UTM metres (made from lat/lon,
                                or UTM x/y) is published relative to its origin (`local_frame`)
  place_recognition/map_markers visualization_msgs/MarkerArray of the mapped places (latched)
  place_recognition/belief_markers  the belief over the places, per frame (RViz: rviz/densernet.rviz)
Subscribes to `initialpose` (geometry_msgs/PoseWithCovarianceStamped in map_frame: RViz's "2D Pose
Estimate", as AMCL): the belief is seeded around that pose with that covariance.

The pose published is always `base_frame`'s in `map_frame` (REP-105): a metric camera pose is turned
into the base's through the camera's extrinsic (frames.py). The node's work lives in LocalizerCore,
shared with the managed (lifecycle) node of lifecycle.py: configure loads the model and the map,
activate subscribes and publishes, deactivate stops, cleanup frees.
"""
from __future__ import annotations

import argparse
import difflib
import gc
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Pose, PoseArray, PoseWithCovarianceStamped
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from densernet_core.camera import Camera
from densernet_core.config import ConfigError, heads_note
from densernet_core.localization.belief import BeliefConfig, Motion, motion_between
from densernet_core.localization.localizer import MODES
from densernet_core.model.runtime import BACKENDS
from densernet_core.localization.metric import MetricConfig
from densernet_core.localization.rerank import RerankConfig
from densernet_core.geometry import compose, inverse
from densernet_core.localization.pose import PoseEstimatorConfig
from densernet_core.threads import limit_blas_for_frames

from .frame_slot import NEXT_FRAME_MARGIN, FrameSlot
from .frames import RobotFrames, seconds as _seconds
from .image_conversion import FrameError, compressed_to_rgb, image_to_rgb
from .markers import belief_markers, map_markers

NODE_NAME = "densernet_localizer"
ESTIMATOR = PoseEstimatorConfig()  # the estimator's and the filter's defaults are the node's
BELIEF = BeliefConfig()
DIAGNOSTICS_PERIOD_S = 1.0
WARN_THROTTLE_S = 5.0
QOS_OVERRIDES = "qos_overrides."  # declared as the subscriptions are made, after the parameters
# Declared later by a library, not by the node: bondpy's switch, read when a heartbeat times out (lifecycle.py).
LIBRARY_PARAMETERS = ("bond_disable_heartbeat_timeout",)
# deactivate waits this long for the worker to finish its frame before it says it is still waiting (it then
# waits on: releasing the model or the publishers under a frame still running in native code can crash).
WORKER_STOP_WARN_S = 10.0


@dataclass(frozen=True)
class NodeSettings:
    map_dir: str
    checkpoint: str
    image_topic: str
    use_compressed: bool
    device: str
    backend: str
    engine: str
    image_size: tuple[int, int] | None
    top_k: int
    max_rate_hz: float
    max_frame_wait_s: float
    map_frame: str
    input_timeout_s: float
    mode: str
    metric: bool
    camera_info_topic: str
    filter_odometry: bool
    belief: BeliefConfig
    estimator: PoseEstimatorConfig
    publish_tf: bool
    odom_topic: str
    odom_max_gap_s: float
    odom_history_s: float
    transform_tolerance: float
    tf_rate_hz: float
    base_frame: str
    camera_extrinsic: str
    map_odom_2d: bool
    publish_markers: bool
    autostart: bool
    local_frame: bool
    utm_frame: str
    bond_heartbeat_period: float
    rerank: bool


# name: (default, description, read_only, range)
PARAMETERS = {
    "map_dir": ("", "map folder built by densernet-map", True, None),
    "checkpoint": ("", "model checkpoint; empty: the one recorded in the map", True, None),
    "image_topic": ("image", "camera topic (relative; remap it or set a namespace)", True, None),
    "use_compressed": (False, "subscribe to <image_topic>/compressed", True, None),
    "device": ("auto", "auto, cpu or cuda", True, None),
    "backend": ("torch", "torch, or onnxruntime, openvino, tensorrt with an exported engine (densernet export)", True, None),
    "engine": ("", "the exported engine file for a backend other than torch", True, None),
    "image_height": (0, "inference height; 0: the map's (any other value must equal it)", True, (0, 4096)),
    "image_width": (0, "inference width; 0: the map's (any other value must equal it)", True, (0, 4096)),
    "top_k": (10, "candidates retrieved per frame", True, (1, 1000)),
    "max_rate_hz": (0.0, "max frames processed per second (0: unlimited)", True, (0.0, 1000.0)),
    "max_frame_wait_s": (0.005, "a frame that waited longer than this for the busy worker is passed over for the "
                                f"next one if that comes within {NEXT_FRAME_MARGIN:g} camera periods (fresher "
                                "answers, fewer per second; 0: take the newest however long it waited)", True,
                         (0.0, 10.0)),
    "map_frame": ("map", "frame_id of published poses", True, None),
    "local_frame": (True, "a map in UTM metres (from lat/lon or UTM x/y) is published in map_frame relative to its "
                          "origin (the first place, whole metres), not in UTM metres, where float32 consumers "
                          "(RViz) step by 0.5 m; initialpose is read in that frame", True, None),
    "utm_frame": ("utm", "local_frame on a UTM map: map_frame -> utm_frame (minus the origin; utm a child of map, as "
                         "navsat_transform's default) is broadcast on /tf_static (needs tf2_ros); empty: not "
                         "broadcast (another node owns it, e.g. navsat_transform)",
                  True, None),
    "mode": ("filtered", "filtered: the place belief over time (motion and earlier frames); single: each frame "
                         "alone", True, None),
    "max_speed": (BELIEF.max_speed, "filter: the robot's top speed, map units per second (no odometry)", True,
                  (1e-3, 1e4)),
    "fix_mass": (BELIEF.fix_mass, "filter: probability near its mode needed for a fix (the belief includes \"not in the map\")", True, (0.01, 1.0)),
    "filter_odometry": (False, "filter: predict the motion from odom_topic (nav_msgs/Odometry) between frames",
                        True, None),
    "metric": (True, "refine the place into a 6-DoF camera pose by PnP when the map has 3-D points", True, None),
    "rerank": (True, "re-order the top candidates by the dense map when the map holds the places' dense grids "
                     "(densernet-map build --grids; night R@1 0.75 -> 0.87 on Gardens Point, docs/TRAINING.md)",
               True, None),
    "camera_info_topic": ("", "sensor_msgs/CameraInfo of the camera (relative); empty: the map's intrinsics, scaled "
                              "to the image", True, None),
    "input_timeout_s": (2.0, "diagnostics go WARN when no image arrived for this long (camera stalled)", True,
                        (0.1, 3600.0)),
    "min_score": (ESTIMATOR.min_score, "ignore candidates below this cosine similarity", True, (-1.0, 1.0)),
    "cluster_radius": (ESTIMATOR.cluster_radius, "candidates closer than this agree on a place (map units)", True, (1e-3, 1e6)),
    "ratio_threshold": (ESTIMATOR.ratio_threshold, "best/runner-up group weight needed for a fix", True, (1.0, 1e6)),
    "min_confidence": (ESTIMATOR.min_confidence, "single mode: no fix below this probability of the place (against every other place and \"not in the map\")", True, (0.0, 1.0)),
    "position_floor": (ESTIMATOR.position_floor, "smallest position std-dev reported (map units)", True, (1e-6, 1e6)),
    "yaw_floor_deg": (ESTIMATOR.yaw_floor_deg, "smallest yaw std-dev reported (degrees)", True, (1e-6, 180.0)),
    "publish_tf": (False, "broadcast map -> odom (needs tf2_ros and odom_topic); only one node may own it",
                   True, None),
    "odom_topic": ("odom", "nav_msgs/Odometry (odom -> base) used for map -> odom at the image stamp", True, None),
    "odom_max_gap_s": (0.2, "max time between odometry samples around an image stamp (s)", True, (1e-3, 10.0)),
    "odom_history_s": (10.0, "odometry kept for lookups at image stamps (s)", True, (0.1, 600.0)),
    "transform_tolerance": (0.5, "map -> odom is stamped this far in the future (s)", True, (0.0, 10.0)),
    "tf_rate_hz": (10.0, "rate at which the last map -> odom is re-broadcast", True, (0.1, 1000.0)),
    "base_frame": ("base_link", "the robot frame whose pose is published (the camera's extrinsic is looked up "
                                "from it: tf2, camera_extrinsic, or the map's)", True, None),
    "camera_extrinsic": ("", "YAML file with the camera's pose on the robot (base_frame -> camera frame); empty: "
                             "tf2 when available, else the extrinsic recorded in the map", True, None),
    "map_odom_2d": (True, "map -> odom from the fix's x, y and heading only (a ground robot, as AMCL); false: full 6-DoF",
                    True, None),
    "publish_markers": (True, "RViz markers: the map's places (latched) and the belief per frame", True, None),
    "autostart": (False, "managed node only: configure and activate at start-up (as nav2's lifecycle_manager "
                          "would)", True, None),
    "bond_heartbeat_period": (0.1, "managed node only: heartbeat period (s) of the bond nav2's lifecycle_manager "
                                   "forms with the node once active (bondpy); 0: no bond", True, (0.0, 10.0)),
}


class LocalizerCore:
    """The localizer's work, for a plain and a managed node alike (a mixin over an rclpy node)."""

    def configure(self) -> None:
        """Load the model and the map, make the publishers and services (raises on a start-up failure)."""
        self._load_localizer()
        self.stats = {"processed": 0, "bad_frames": 0, "fixes": 0, "no_fix": 0, "metric_poses": 0, "seeds": 0,
                      "time_jumps": 0, "unstamped": 0, "last_score": 0.0, "last_confidence": 0.0,
                      "last_latency_ms": 0.0, "last_error": ""}
        self.robot = RobotFrames(self, self.settings, self.localizer.map.extrinsic, self.stats)
        self.robot.publish_origin(self.localizer.map.origin if self.localizer.map.recentred else None)
        self._filter_lock = threading.Lock()  # the worker steps the belief; the reset service and initialpose set it
        self.pose_pub = self._publisher(PoseWithCovarianceStamped, "place_recognition/pose", 10)
        self.cand_pub = self._publisher(PoseArray, "place_recognition/candidates", 10)
        self.place_pub = self._publisher(DiagnosticArray, "place_recognition/place", 10)
        self.diag_pub = self._publisher(DiagnosticArray, "/diagnostics", 10)
        self.marker_pubs = None
        if self.settings.publish_markers:
            latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
            self.marker_pubs = (self._publisher(MarkerArray, "place_recognition/map_markers", latched),
                                self._publisher(MarkerArray, "place_recognition/belief_markers", 1))
        self.reset_srv = self.create_service(Trigger, "place_recognition/reset", self._on_reset)
        self._subs: list = []
        self._core_timers: list = []  # not `_timers`: rclpy's Node keeps its own there (the executor's list)
        self.frames = None
        self.worker = None

    def _publisher(self, msg_type, topic: str, qos):
        return self.create_publisher(msg_type, topic, qos)

    def activate(self) -> None:
        """Subscribe, start the worker and the timers: frames in, answers out."""
        s = self.settings
        self.frames: FrameSlot[tuple[bytes, str]] = FrameSlot(s.max_frame_wait_s)
        self._rate_marks: list[tuple[float, int, int]] = [(time.monotonic(), 0, self.stats["processed"])]
        qos = QoSProfile(**{**_qos_kwargs(qos_profile_sensor_data), "depth": 1})
        # Users may switch reliability/depth with qos_overrides.<topic>.subscription.* parameters.
        overrides = QoSOverridingOptions.with_default_policies()
        # raw=True: the callback gets the serialized bytes; only the frame the worker picks is
        # deserialized, so a 30 Hz camera does not cost 30 Python message conversions a second.
        if s.use_compressed:
            self.sub = self.create_subscription(CompressedImage, f"{s.image_topic}/compressed", self._on_compressed,
                                                qos, qos_overriding_options=overrides, raw=True)
        else:
            self.sub = self.create_subscription(Image, s.image_topic, self._on_image, qos,
                                                qos_overriding_options=overrides, raw=True)
        self._subs = [self.sub, self.create_subscription(PoseWithCovarianceStamped, "initialpose",
                                                         self._on_initial_pose, 1)]
        if s.camera_info_topic:
            self.info_sub = self.create_subscription(CameraInfo, s.camera_info_topic, self._on_camera_info, 1)
            self._subs.append(self.info_sub)
        self.robot.start()
        self._core_timers = [self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)]
        if self.marker_pubs is not None:
            self.marker_pubs[0].publish(map_markers(self.localizer.map.places.positions, s.map_frame,
                                                    self._spacing(), self.get_clock().now().to_msg()))
        self.worker = threading.Thread(target=self._work, name="densernet-inference", daemon=True)
        self.worker.start()
        model = self.localizer.model
        self.get_logger().info(
            f"localizing {s.base_frame} against {len(self.localizer.map)} places ({s.map_dir}) with model "
            f"{model.config.preset}{heads_note(model.config.heads)}, {model.descriptor_dim}-D, on {model.device}; "
            f"listening on {self.sub.topic_name}")

    def deactivate(self) -> None:
        """Stop the worker, the subscriptions and the timers: nothing is published while inactive."""
        if self.frames is not None:
            self.frames.close()
        if self.worker is not None:
            self.worker.join(timeout=WORKER_STOP_WARN_S)
            if self.worker.is_alive():
                self.get_logger().warning(f"the inference worker is still on a frame after {WORKER_STOP_WARN_S:g} s; "
                                          "waiting for it before releasing the model")
                self.worker.join()
            self.worker = None
        for sub in self._subs:
            self.destroy_subscription(sub)
        for timer in self._core_timers:
            self.destroy_timer(timer)
        self._subs, self._core_timers = [], []
        self.robot.stop()

    def cleanup(self) -> None:
        """Release the model (and GPU memory), the publishers and the services."""
        for pub in (self.pose_pub, self.cand_pub, self.place_pub, self.diag_pub, *(self.marker_pubs or ())):
            self._destroy_publisher(pub)
        self.destroy_service(self.reset_srv)
        device = self.localizer.model.device
        del self.localizer
        gc.collect()
        if device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    def _destroy_publisher(self, pub) -> None:
        self.destroy_publisher(pub)

    def _spacing(self) -> float:
        """The map's place spacing (marker sizes), computed once."""
        if getattr(self, "_place_spacing", None) is None:
            from densernet_core.localization.observation import median_spacing

            self._place_spacing = median_spacing(self.localizer.map.places.positions)
        return self._place_spacing

    # ---- set-up ---------------------------------------------------------------------------------
    def _warn_unknown_parameters(self) -> None:
        """ROS ignores a parameter file's or -p's value for a name the node does not declare, so a misspelt
        `fix_mas: 0.5` left the default in force without a word. Named here, with the nearest real name.
        (rclpy keeps the overrides meant for this node in Node._parameter_overrides, since Foxy.)"""
        given = getattr(self, "_parameter_overrides", {})
        for name in sorted(n for n in given if not self.has_parameter(n) and not n.startswith(QOS_OVERRIDES)
                           and n not in LIBRARY_PARAMETERS):
            near = difflib.get_close_matches(name, PARAMETERS, n=1)
            self.get_logger().warning(f"parameter {name!r} is set but this node has no such parameter: ignored"
                                      + (f" (did you mean {near[0]!r}?)" if near else ""))

    def _declare_parameters(self) -> NodeSettings:
        values = {}
        for name, (default, text, read_only, rng) in PARAMETERS.items():
            desc = ParameterDescriptor(description=text, read_only=read_only)
            if isinstance(rng, tuple) and isinstance(default, int) and not isinstance(default, bool):
                desc.integer_range = [IntegerRange(from_value=rng[0], to_value=rng[1], step=1)]
            elif isinstance(rng, tuple):
                desc.floating_point_range = [FloatingPointRange(from_value=rng[0], to_value=rng[1], step=0.0)]
            values[name] = self.declare_parameter(name, default, desc).value
        self._warn_unknown_parameters()
        if not values["map_dir"]:
            raise ConfigError("parameter map_dir is empty: set it to a map folder built by densernet-map")
        if values["device"] not in ("auto", "cpu", "cuda") and not str(values["device"]).startswith("cuda:"):
            raise ConfigError(f"parameter device={values['device']!r}: use auto, cpu or cuda")
        if not values["image_topic"]:
            raise ConfigError("parameter image_topic is empty")
        if not values["base_frame"]:
            raise ConfigError("parameter base_frame is empty: name the robot frame whose pose is published")
        if values["utm_frame"] and values["utm_frame"] == values["map_frame"]:
            raise ConfigError(f"parameters utm_frame and map_frame are both {values['map_frame']!r}: the transform "
                              "between them would be a loop; name another utm_frame, or empty for none")
        size = (values["image_height"], values["image_width"])
        if (size[0] == 0) != (size[1] == 0):
            raise ConfigError(f"parameters image_height={size[0]}, image_width={size[1]}: set both or neither (0)")
        estimator = PoseEstimatorConfig(values["min_score"], values["cluster_radius"], values["ratio_threshold"],
                                        values["min_confidence"], values["position_floor"], values["yaw_floor_deg"])
        if (values["publish_tf"] or values["filter_odometry"]) and not values["odom_topic"]:
            raise ConfigError("parameters publish_tf/filter_odometry need odom_topic, which is empty")
        if values["mode"] not in MODES:
            raise ConfigError(f"parameter mode={values['mode']!r}: use one of {', '.join(MODES)}")
        if values["backend"] not in BACKENDS:
            raise ConfigError(f"parameter backend={values['backend']!r}: use one of {', '.join(BACKENDS)}")
        belief = BeliefConfig(max_speed=values["max_speed"], fix_mass=values["fix_mass"],
                              position_floor=values["position_floor"], yaw_floor_deg=values["yaw_floor_deg"])
        return NodeSettings(values["map_dir"], values["checkpoint"], values["image_topic"], values["use_compressed"],
                            values["device"], values["backend"], values["engine"], size, values["top_k"], values["max_rate_hz"],
                            values["max_frame_wait_s"], values["map_frame"], values["input_timeout_s"],
                            values["mode"], values["metric"], values["camera_info_topic"], values["filter_odometry"],
                            belief, estimator, values["publish_tf"],
                            values["odom_topic"], values["odom_max_gap_s"], values["odom_history_s"],
                            values["transform_tolerance"], values["tf_rate_hz"], values["base_frame"],
                            values["camera_extrinsic"], values["map_odom_2d"], values["publish_markers"],
                            values["autostart"], values["local_frame"], values["utm_frame"],
                            values["bond_heartbeat_period"], values["rerank"])

    def _load_localizer(self) -> None:
        from densernet_core.localization.localizer import Localizer

        s = self.settings
        size = s.image_size if s.image_size and s.image_size[0] > 0 else None
        self.localizer = Localizer.from_paths(s.map_dir, s.checkpoint or None, s.device, size, s.estimator,
                                              s.top_k, s.belief, s.mode, MetricConfig() if s.metric else None,
                                              s.backend, s.engine or None, s.local_frame,
                                              RerankConfig() if s.rerank else None)
        self._last_stamp: float | None = None  # image stamp of the previous processed frame (filter motion)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        """The live camera's intrinsics replace the map's for PnP (OpenCV's plumb_bob/rational models)."""
        try:
            camera = Camera(msg.width, msg.height, msg.k[0], msg.k[4], msg.k[2], msg.k[5], tuple(msg.d))
        except ConfigError as exc:
            self.get_logger().warning(f"camera_info ignored: {exc}", throttle_duration_sec=WARN_THROTTLE_S)
            return
        if camera != self.localizer.camera:
            self.localizer.camera = camera
            self.get_logger().info(f"intrinsics from {self.info_sub.topic_name}: {camera.width}x{camera.height} "
                                   f"fx {camera.fx:.1f} fy {camera.fy:.1f}")

    def _on_reset(self, request, response):
        """place_recognition/reset: the robot was carried (or re-placed): start from a uniform belief."""
        if self.localizer.filter is None:
            response.success, response.message = False, "mode is single: there is no belief to reset"
            return response
        with self._filter_lock:
            self.localizer.reset()
            self._last_stamp = None
        response.success, response.message = True, f"belief reset over {len(self.localizer.map)} places"
        self.get_logger().info(response.message)
        return response

    def _on_initial_pose(self, msg: PoseWithCovarianceStamped) -> None:
        """RViz's "2D Pose Estimate" (or a fleet manager): seed the belief around the base pose given, with
        the covariance given, as AMCL does."""
        frame = msg.header.frame_id or self.settings.map_frame
        if frame != self.settings.map_frame:
            self.get_logger().warning(f"initialpose in frame {frame!r} ignored: it must be in {self.settings.map_frame!r}")
            return
        if self.localizer.filter is None:
            self.get_logger().warning("initialpose ignored: mode is single (no belief to seed)")
            return
        p, q = msg.pose.pose.position, msg.pose.pose.orientation
        cov = np.asarray(msg.pose.covariance, float).reshape(6, 6)
        try:
            with self._filter_lock:
                n = self.localizer.seed(np.array([p.x, p.y, p.z]), cov[:3, :3], np.array([q.x, q.y, q.z, q.w]),
                                        float(cov[5, 5]))
                self._last_stamp = None
        except ValueError as exc:
            self.get_logger().warning(f"initialpose ignored: {exc}")
            return
        self.stats["seeds"] += 1
        self.get_logger().info(f"belief seeded at ({p.x:.2f}, {p.y:.2f}) over {n} places")

    def _stamp_or_none(self, stamp) -> float | None:
        """The image stamp in seconds; None where the publisher left it at zero (a quick script, a driver on a
        sim clock that is not running): at its word no time would pass between frames and the belief could
        not move, so the speed bound is applied per frame (`max_step`) instead, as for unstamped images."""
        stamp_s = _seconds(stamp)
        if stamp_s == 0.0:
            self.stats["unstamped"] += 1
            self.get_logger().warning("image header.stamp is zero: motion between frames bounded per frame, not per "
                                      "second; map -> odom and odometry need stamped images",
                                      throttle_duration_sec=WARN_THROTTLE_S)
            return None
        return stamp_s

    def _motion(self, stamp_s: float | None) -> Motion:
        """Time since the previous processed frame, and the odometry displacement over it when asked for."""
        prev, self._last_stamp = self._last_stamp, stamp_s
        motion = motion_between(prev, stamp_s)
        if motion.restart:  # the localizer resets the belief
            self.stats["time_jumps"] += 1
            self.get_logger().warning(f"image stamps went back {prev - stamp_s:.3f} s in time (a bag played again or "
                                      "looped, a simulator reset?)" + ("; belief reset" if self.localizer.filter is not None else ""))
        if motion.dt is None:
            return motion
        if self.settings.filter_odometry and self.robot.odometry is not None:
            a, b = self.robot.odometry_at(prev), self.robot.odometry_at(stamp_s)
            if a.transform is not None and b.transform is not None:
                motion.translation, motion.rotation = compose(inverse(a.transform), b.transform)
                self.stats["motion"] = "odometry"
            else:
                self.stats["motion"] = f"speed bound ({(a if a.transform is None else b).reason})"
        else:
            self.stats["motion"] = "speed bound"
        return motion

    # ---- callbacks: keep only the newest frame ------------------------------------------------
    def _on_image(self, data: bytes) -> None:
        self.frames.put((data, "raw"))

    def _on_compressed(self, data: bytes) -> None:
        self.frames.put((data, "compressed"))

    # ---- worker -------------------------------------------------------------------------------
    def _work(self) -> None:
        min_period = 1.0 / self.settings.max_rate_hz if self.settings.max_rate_hz > 0 else 0.0
        last = -min_period
        while (frame := self.frames.take(not_before=last + min_period)) is not None:
            last = time.monotonic()
            msg, kind = frame
            try:
                self._process(msg, kind)
            except FrameError as exc:
                self.stats["bad_frames"] += 1
                self.stats["last_error"] = str(exc)
                self.get_logger().warning(f"frame skipped: {exc}", throttle_duration_sec=WARN_THROTTLE_S)
            except Exception as exc:  # noqa: BLE001 - a bad frame must never kill the node
                self.stats["bad_frames"] += 1
                self.stats["last_error"] = f"{type(exc).__name__}: {exc}"
                self.get_logger().error(f"frame failed: {type(exc).__name__}: {exc}",
                                        throttle_duration_sec=WARN_THROTTLE_S)

    def _process(self, data: bytes, kind: str) -> None:
        t0 = time.perf_counter()
        msg = deserialize_message(data, CompressedImage if kind == "compressed" else Image)
        rgb = compressed_to_rgb(msg) if kind == "compressed" else image_to_rgb(msg)
        stamp = msg.header.stamp
        self.localizer.extrinsic = self.robot.extrinsic_for(msg.header.frame_id)  # the base's pose is published
        t_describe = time.perf_counter()
        desc, features, grid = self.localizer.describe(rgb)
        describe_s = time.perf_counter() - t_describe
        with self._filter_lock:
            result = self.localizer.localize_descriptor(desc, self._motion(self._stamp_or_none(stamp)), describe_s,
                                                        t_describe, features, grid)
        est = result.estimate
        frame = self.settings.map_frame
        places = self.localizer.map.places
        cands = PoseArray()
        cands.header.stamp, cands.header.frame_id = stamp, frame
        cands.poses = [_pose(places.positions[i], places.orientations[i]) for i in result.ids]
        self.cand_pub.publish(cands)
        self.place_pub.publish(_place_array(stamp, frame, est, result, 1000 * (time.perf_counter() - t0)))
        if est.fix:
            out = PoseWithCovarianceStamped()
            out.header.stamp, out.header.frame_id = stamp, frame
            out.pose.pose = _pose(est.position, est.orientation)
            out.pose.covariance = [float(v) for v in est.covariance.reshape(-1)]
            self.pose_pub.publish(out)
            self.stats["fixes"] += 1
            if result.pose_source == "metric":
                self.stats["metric_poses"] += 1
            if self.settings.publish_tf:
                self.robot.update_map_odom(stamp, est.position, est.orientation)
        else:
            self.stats["no_fix"] += 1
            self.get_logger().debug(f"no fix: {est.reason}")
        if self.marker_pubs is not None and self.localizer.filter is not None:
            with self._filter_lock:
                b, outside = self.localizer.filter.belief, self.localizer.filter.outside
            self.marker_pubs[1].publish(belief_markers(places.positions, b, outside, frame, self._spacing(), stamp))
        self.stats.update(processed=self.stats["processed"] + 1, last_confidence=est.confidence,
                          last_out_of_map=getattr(result.place, "out_of_map", 0.0),
                          last_score=float(result.scores[0]) if len(result.scores) else 0.0,
                          last_latency_ms=1000 * result.total_s, last_reason=est.reason)

    # ---- diagnostics ----------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        t0, r0, p0 = self._rate_marks[0]
        s = self.stats
        received = self.frames.received
        self._rate_marks = [(now, received, s["processed"])]
        dt = max(now - t0, 1e-6)
        status = DiagnosticStatus(name=f"{self.get_fully_qualified_name()}: localization", hardware_id=str(self.localizer.model.device))
        silent = now - self.frames.last_arrival if self.frames.last_arrival is not None else None
        focal = self.localizer.intrinsics_disagree()
        intrinsics = None if focal is None else (
            f"camera intrinsics disagree with the images: they fit a focal length {focal:.2f} times the one from "
            f"{self.info_sub.topic_name if self.settings.camera_info_topic else 'the map camera'}; metric poses "
            f"are refused until it is corrected")
        if s["processed"] == 0 and s["bad_frames"] == 0:
            status.level, status.message = DiagnosticStatus.WARN, "waiting for images"
        elif silent is not None and silent > self.settings.input_timeout_s:
            status.level, status.message = DiagnosticStatus.WARN, f"no image for {silent:.1f} s on {self.sub.topic_name}"
        elif s.get("last_reason", "ok") != "ok":
            reason = s["last_reason"]  # "not localized: outside the map or unrecognisable" says it all
            status.level, status.message = DiagnosticStatus.WARN, reason if reason.startswith("not localized") \
                else f"no fix: {reason}"
        elif self.robot.odometry is not None and s["odometry_msgs"] == 0:
            status.level, status.message = DiagnosticStatus.WARN, f"no odometry on {self.robot.odom_topic_name}"
        elif s["bad_frames"] and s["processed"] == 0:
            status.level, status.message = DiagnosticStatus.ERROR, f"no usable frames: {s['last_error']}"
        else:
            status.level, status.message = DiagnosticStatus.OK, "localized"
        if intrinsics:  # a configuration fault outlasts any frame's answer and any stall: always named
            if status.level == DiagnosticStatus.OK:
                status.level, status.message = DiagnosticStatus.WARN, intrinsics
            else:
                status.message += f"; {intrinsics}"
        values = {"input_rate_hz": (received - r0) / dt, "output_rate_hz": (s["processed"] - p0) / dt,
                  "inference_latency_ms": s["last_latency_ms"], "frames_received": received,
                  "frames_processed": s["processed"], "frames_dropped": self.frames.dropped,
                  "frames_stale": self.frames.stale, "bad_frames": s["bad_frames"],
                  "fixes": s["fixes"], "no_fix": s["no_fix"], "map_places": len(self.localizer.map),
                  "seconds_since_last_image": silent if silent is not None else -1.0,
                  "last_score": s["last_score"], "last_confidence": s["last_confidence"],
                  "last_out_of_map": s.get("last_out_of_map", 0.0),
                  "last_error": s["last_error"]}
        values["mode"] = self.settings.mode
        values["backend"] = self.settings.backend
        if self.localizer.metric is not None:
            values.update(metric_poses=s["metric_poses"], place_poses=s["fixes"] - s["metric_poses"])
            checks = list(self.localizer.focal_checks)
            if checks:
                values.update(focal_scale_median=float(np.median(checks)))
        belief = self.localizer.filter
        if belief is not None:
            with self._filter_lock:
                b = belief.estimate() if s["processed"] else None
                values.update(filter_resets=belief.resets - 1, relocalizations=belief.relocalizations,
                              motion_model=s["motion"] or "none yet")
            if b is not None:
                values.update(belief_mass=b.mass, belief_effective_places=b.effective_places,
                              belief_entropy=b.entropy)
        if self.robot.odometry is not None:
            values.update(odometry_msgs=s["odometry_msgs"], odometry_restarts=s["odometry_restarts"])
        if "map_origin" in s:
            values["map_origin"] = s["map_origin"]
        values.update(base_frame=self.settings.base_frame, extrinsic=s["extrinsic_source"] or "no frame yet",
                      initial_poses=s["seeds"], time_jumps_back=s["time_jumps"],
                      unstamped_frames=s["unstamped"])
        if self.settings.publish_tf:
            values.update(map_odom_updates=s["tf_updates"], map_odom_skipped=s["tf_skipped"],
                          map_odom_reason=s["tf_reason"])
        status.values = [KeyValue(key=k, value=f"{v:.3f}" if isinstance(v, float) else str(v)) for k, v in values.items()]
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [status]
        self.diag_pub.publish(arr)



class LocalizerNode(LocalizerCore, Node):
    """The plain node: configured and active from its start (the console script, `ros2 launch`)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.settings = self._declare_parameters()
        self.configure()  # raises on start-up failure; main() turns that into exit 1
        self.activate()

    def shutdown(self) -> None:
        """Stop the worker and release the model (and GPU memory)."""
        self.deactivate()
        self.cleanup()


def _qos_kwargs(profile) -> dict:
    return {"history": profile.history, "depth": profile.depth, "reliability": profile.reliability,
            "durability": profile.durability}


def _pose(position, orientation) -> Pose:
    p = Pose()
    p.position.x, p.position.y, p.position.z = (float(v) for v in position)
    p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w = (float(v) for v in orientation)
    return p


def _place_array(stamp, frame: str, est, result, processing_ms: float) -> DiagnosticArray:
    status = DiagnosticStatus(name="place", hardware_id=frame,
                              level=DiagnosticStatus.OK if est.fix else DiagnosticStatus.WARN,
                              message=f"place {est.place_id}" if est.fix else f"no fix: {est.reason}")
    score = float(result.scores[0]) if len(result.scores) else 0.0
    values = {"place_id": str(est.place_id), "score": f"{score:.4f}", "confidence": f"{est.confidence:.4f}",
              "fix": str(est.fix).lower(), "reason": est.reason, "mode": result.mode, "pose_source": result.pose_source,
              "top_k_ids": ",".join(str(int(i)) for i in result.ids),
              "top_k_scores": ",".join(f"{s:.4f}" for s in result.scores),
              "processing_ms": f"{processing_ms:.1f}",  # deserialise, convert, describe, search, estimate
              "describe_ms": f"{1000 * result.describe_s:.1f}",
              "search_ms": f"{1000 * result.retrieval.search_s:.2f}"}  # the map search (top-k) alone
    if result.retrieval.reranked:  # the dense re-rank's cost, and the place the global descriptor alone put first
        values.update(rerank_ms=f"{1000 * result.retrieval.rerank_s:.1f}",
                      global_best=str(result.retrieval.global_best))
    # position standard deviation (root of the covariance's trace) of what is published and of the place estimate
    values.update(pose_sigma=f"{np.sqrt(np.trace(est.covariance[:3, :3])):.4f}",
                  place_sigma=f"{np.sqrt(np.trace(result.place.covariance[:3, :3])):.4f}")
    if result.metric is not None:
        m = result.metric
        values.update(metric_ok=str(m.ok).lower(), metric_reason=m.reason, metric_matches=str(m.matches),
                      metric_inliers=str(m.inliers), metric_reproj_px=f"{m.reproj_px:.2f}",
                      metric_focal_scale=f"{m.focal_scale:.4f}",
                      metric_ms=f"{1000 * result.metric_s:.1f}")
    single = result.single  # what this frame alone says, beside the filter's answer
    values.update(single_fix=str(single.fix).lower(), single_place_id=str(single.place_id),
                  single_position=",".join(f"{v:.4f}" for v in single.position),
                  single_confidence=f"{single.confidence:.4f}", single_out_of_map=f"{single.out_of_map:.4f}")
    if result.filtered is not None:
        f = result.filtered
        values.update(belief_mass=f"{f.mass:.4f}", effective_places=f"{f.effective_places:.2f}",
                      out_of_map=f"{f.out_of_map:.4f}", agreement=f"{f.contradiction:.4g}",
                      relocalized=str(f.relocalized).lower(), filtered_fix=str(f.fix).lower(),
                      position_source=f.position_source,
                      filtered_position=",".join(f"{v:.4f}" for v in f.position))
    status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
    arr = DiagnosticArray()
    arr.header.stamp, arr.header.frame_id = stamp, frame
    arr.status = [status]
    return arr


PARAMS_FILE = Path("config") / "localize.yaml"


def params_file_candidates() -> list[Path]:
    """Where each kind of install puts config/localize.yaml, in the order they are tried.

    colcon (and any sourced workspace): the ament index's share directory; pip into a venv or the
    system: <data prefix>/share/densernet_ros (setup.py data_files; also pip --user's prefix);
    editable install or a source checkout: the repository beside this package.
    """
    import site
    import sysconfig

    out = []
    try:
        from ament_index_python.packages import get_package_share_directory

        out.append(Path(get_package_share_directory("densernet_ros")) / PARAMS_FILE)
    except (ImportError, LookupError, OSError, ValueError):  # no ament index set, or the package is not in it
        pass
    prefixes = [sysconfig.get_paths()["data"], sys.prefix, site.getuserbase()]
    out += [Path(p) / "share" / "densernet_ros" / PARAMS_FILE for p in dict.fromkeys(prefixes)]
    out.append(Path(__file__).resolve().parents[1] / PARAMS_FILE)
    return out


def default_params_file() -> Path:
    """The first candidate that exists (else the first one, so the error names where it was looked for)."""
    candidates = params_file_candidates()
    return next((p for p in candidates if p.is_file()), candidates[0])


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry: `densernet-node [--params-file F] [--map-dir M] [--checkpoint C] [--ros-args ...]`."""
    return run(LocalizerNode, argv, "densernet-node", "DenserNet localizer node (no ros2 launch needed)")


def run(make_node, argv: Sequence[str] | None, prog: str, description: str) -> int:
    """Parse the console arguments, start rclpy with the parameter file, make the node (a start-up failure
    is one log line and exit 1), spin until SIGINT/SIGTERM, and release it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args: list[str] = []
    if "--ros-args" in argv:
        i = argv.index("--ros-args")
        argv, ros_args = argv[:i], argv[i:]
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--params-file", help=f"parameter YAML (default: {default_params_file()})")
    p.add_argument("--map-dir")
    p.add_argument("--checkpoint")
    p.add_argument("--image-topic")
    args = p.parse_args(argv)
    extra = ["--ros-args"]
    params_file = args.params_file
    if params_file is None and not any(a == "--params-file" for a in ros_args):
        params_file = str(default_params_file())
    if params_file:
        if not Path(params_file).is_file():
            looked = "" if args.params_file else " (looked in: " + ", ".join(map(str, params_file_candidates())) + ")"
            print(f"[{prog}] parameter file not found: {params_file}{looked}", file=sys.stderr)
            return 1
        extra += ["--params-file", params_file]
    for name in ("map_dir", "checkpoint", "image_topic"):
        if getattr(args, name):
            extra += ["-p", f"{name}:={getattr(args, name)}"]
    # The parameter file first, so that -p overrides given after --ros-args win.
    rclpy.init(args=[sys.argv[0], *extra, *ros_args[1:]])
    # BLAS workers left spinning after each frame's search compete with the next frame's network
    # (densernet_core/threads.py).
    rclpy.logging.get_logger(NODE_NAME).info(limit_blas_for_frames())
    node = None
    try:
        try:
            node = make_node()
        except (ConfigError, FileNotFoundError, ValueError, RuntimeError, OSError) as exc:
            if not rclpy.ok():  # SIGINT/SIGTERM while starting: a shutdown, not a failure
                return 0
            rclpy.logging.get_logger(NODE_NAME).fatal(f"start-up failed: {exc}")
            return 1
        spin_until_shutdown(node)
    except KeyboardInterrupt:
        pass
    finally:
        if node is not None:
            node.shutdown()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


def spin_until_shutdown(node: Node) -> None:
    """Spin until the context is shut down (SIGINT/SIGTERM: rclpy's handlers shut it down).

    A signal can land at any point of start-up or spinning, and each point fails differently in
    rclpy: before the first spin, rclpy.spin's global executor is already reset to None
    (AttributeError); while a wait set is built, RCLError ("the given context is not valid");
    while waiting, ExternalShutdownException. So the node spins on an executor of its own, and
    once the context is shut down any of these is a shutdown like any other; while it is still
    valid, whatever went wrong is raised.
    """
    if not node.context.ok():  # shut down before spinning (an executor cannot be built on it)
        return
    executor = None
    try:
        executor = SingleThreadedExecutor(context=node.context)
        executor.add_node(node)
        while node.context.ok():
            executor.spin_once()
    except ExternalShutdownException:
        pass
    except RuntimeError:  # rclpy's RCLError (private class) is a RuntimeError
        if node.context.ok():
            raise
    finally:
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)


if __name__ == "__main__":
    sys.exit(main())
