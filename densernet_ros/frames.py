"""The robot's frames at run time (REP-105): odometry, map -> odom, and where the camera sits on the robot.

- Odometry (`odom_topic`, nav_msgs/Odometry: odom -> base) is kept for lookups at image stamps: the
  filter's motion between frames (`filter_odometry`) and the map -> odom correction (`publish_tf`).
- map -> odom = fix(base in map) * odom(stamp)^-1, broadcast on /tf and re-sent at `tf_rate_hz`, stamped
  now + `transform_tolerance`, as AMCL does; with `map_odom_2d` (default) both are flattened to x, y and
  heading first, so a fix's small roll/pitch error does not tip the odom frame (0.5 degree of pitch is
  0.25 m of height 30 m from odom's origin). It needs tf2_ros (a ROS 2 install; not on PyPI).
- A map in UTM metres is published relative to its origin (`local_frame`): map_frame -> utm_frame (utm's
  origin in the map: minus the map's origin) goes out once on /tf_static, utm a child of map, as
  robot_localization's navsat_transform broadcasts it by default (map stays the tree's root).
- The extrinsic base_frame -> camera frame (the image header's frame_id), in this order: tf2 (when
  tf2_ros imports and the robot publishes it, looked up once per camera frame and cached), the
  `camera_extrinsic` parameter (a YAML file), the one recorded in the map (densernet_core/frames.py).
"""
from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np

from geometry_msgs.msg import TransformStamped
from nav_msgs.msg import Odometry
from rclpy.duration import Duration
from rclpy.time import Time

from densernet_core.frames import Extrinsic, load_extrinsic
from densernet_core.geometry import map_to_odom, planar
from densernet_core.localization.odometry import Lookup, OdometryBuffer

TF_LOOKUP_TIMEOUT_S = 0.05
WARN_THROTTLE_S = 5.0


def seconds(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


class RobotFrames:
    def __init__(self, node, settings, map_extrinsic: Extrinsic | None, stats: dict) -> None:
        """Raises RuntimeError when publish_tf is asked for and tf2_ros is missing, and the parameter's
        extrinsic file's errors (start-up failures)."""
        self.node, self.settings, self.stats = node, settings, stats
        self.map_extrinsic = map_extrinsic
        self.parameter_extrinsic = None
        if settings.camera_extrinsic:
            self.parameter_extrinsic = replace(load_extrinsic(settings.camera_extrinsic),
                                               source=f"parameter camera_extrinsic ({settings.camera_extrinsic})")
            if self.parameter_extrinsic.base_frame != settings.base_frame:
                raise ValueError(f"camera_extrinsic {settings.camera_extrinsic} is from {self.parameter_extrinsic.base_frame}, "
                                 f"the node's base_frame is {settings.base_frame}")
        self._extrinsics: dict[str, Extrinsic | None] = {}
        self.odometry: OdometryBuffer | None = None
        self._map_odom: TransformStamped | None = None
        self._lock = threading.Lock()  # odometry buffer and the map -> odom message
        self._odom_frame = "odom"  # replaced by the odometry's header.frame_id
        self._odom_sub = self._tf_timer = None
        stats.update(odometry_msgs=0, odometry_restarts=0, tf_updates=0, tf_skipped=0, tf_reason="", motion="",
                     extrinsic_source="")
        self.broadcaster = self._static = None
        if settings.publish_tf:
            try:
                from tf2_ros import TransformBroadcaster
            except ImportError as exc:
                raise RuntimeError(f"publish_tf is true but tf2_ros cannot be imported ({exc}); install it "
                                   "(apt install ros-$ROS_DISTRO-tf2-ros) or set publish_tf false") from exc
            self.broadcaster = TransformBroadcaster(node)
        self.tf_buffer = self._tf_listener = None
        try:  # the live robot's extrinsic, where a ROS 2 install provides tf2
            from tf2_ros import Buffer, TransformListener

            self.tf_buffer = Buffer()
            self._tf_listener = TransformListener(self.tf_buffer, node, spin_thread=False)
        except ImportError:
            pass

    @property
    def wants_odometry(self) -> bool:
        return self.settings.publish_tf or self.settings.filter_odometry

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        if self.wants_odometry:
            self.odometry = OdometryBuffer(s.odom_max_gap_s, s.odom_history_s)
            self._odom_sub = self.node.create_subscription(Odometry, s.odom_topic, self._on_odometry, 50)
        if self.broadcaster is not None:
            self._tf_timer = self.node.create_timer(1.0 / s.tf_rate_hz, self.broadcast)

    def stop(self) -> None:
        if self._odom_sub is not None:
            self.node.destroy_subscription(self._odom_sub)
            self._odom_sub = None
        if self._tf_timer is not None:
            self.node.destroy_timer(self._tf_timer)
            self._tf_timer = None

    @property
    def odom_topic_name(self) -> str:
        return self._odom_sub.topic_name if self._odom_sub is not None else self.settings.odom_topic

    # ---- the camera on the robot -------------------------------------------------------------------
    def extrinsic_for(self, camera_frame: str) -> Extrinsic | None:
        """base_frame -> `camera_frame` (the image's header frame): tf2, the parameter, the map's; None: the
        map's poses are the camera's (a map made before extrinsics) and the camera's pose is published."""
        if camera_frame in self._extrinsics:
            return self._extrinsics[camera_frame]
        found = self._from_tf2(camera_frame)
        if found is not None:
            self._extrinsics[camera_frame] = found  # cached: a mount does not move
        else:
            found = self.parameter_extrinsic or self.map_extrinsic
            if self.tf_buffer is None:
                self._extrinsics[camera_frame] = found  # no tf2 here: this is the answer
        self.stats["extrinsic_source"] = "none (the map's poses are the camera's)" if found is None else found.source
        return found

    def _from_tf2(self, camera_frame: str) -> Extrinsic | None:
        if self.tf_buffer is None or not camera_frame:
            return None
        base = self.settings.base_frame
        try:
            t = self.tf_buffer.lookup_transform(base, camera_frame, Time(),
                                                timeout=Duration(seconds=TF_LOOKUP_TIMEOUT_S))
        except Exception as exc:  # noqa: BLE001 - tf2's LookupException, ConnectivityException, ExtrapolationException
            self.node.get_logger().warning(f"no tf2 transform {base} -> {camera_frame} yet ({exc}); using "
                                           f"{'the parameter' if self.parameter_extrinsic else 'the map'}'s extrinsic",
                                           throttle_duration_sec=WARN_THROTTLE_S)
            return None
        tr, q = t.transform.translation, t.transform.rotation
        return Extrinsic(base, camera_frame, (tr.x, tr.y, tr.z), (q.x, q.y, q.z, q.w), "tf2")

    # ---- odometry and map -> odom ------------------------------------------------------------------
    def _on_odometry(self, msg: Odometry) -> None:
        p, q = msg.pose.pose.position, msg.pose.pose.orientation
        try:
            with self._lock:
                jump = self.odometry.add(seconds(msg.header.stamp), (p.x, p.y, p.z), (q.x, q.y, q.z, q.w))
                self._odom_frame = msg.header.frame_id or "odom"
                if jump:  # another run's odom frame: its correction would place this run's robot wrongly
                    withdrawn, self._map_odom = self._map_odom is not None, None
            self.stats["odometry_msgs"] += 1
        except ValueError as exc:
            self.node.get_logger().warning(f"odometry skipped: {exc}", throttle_duration_sec=WARN_THROTTLE_S)
            return
        if jump:
            self.stats["odometry_restarts"] += 1
            self.node.get_logger().warning(
                f"odometry on {self.odom_topic_name} went back {jump:.3f} s in time (a bag played again or looped, a "
                "simulator reset?): its buffer starts again" + ("; map -> odom withdrawn until the next fix"
                                                                 if withdrawn else ""))

    def odometry_at(self, stamp_s: float) -> Lookup:
        with self._lock:
            return self.odometry.at(stamp_s)

    def update_map_odom(self, stamp, position, orientation) -> None:
        """The correction from a fix of the base: the fixed base pose times the inverse odometry pose at the
        image stamp."""
        with self._lock:
            found = self.odometry.at(seconds(stamp))
            odom_frame = self._odom_frame
        if found.transform is None:
            self.stats.update(tf_skipped=self.stats["tf_skipped"] + 1, tf_reason=found.reason)
            self.node.get_logger().warning(f"map -> odom not updated: {found.reason}",
                                           throttle_duration_sec=WARN_THROTTLE_S)
            return
        fix, odom = (np.asarray(position, float), np.asarray(orientation, float)), found.transform
        if self.settings.map_odom_2d:  # a ground robot: a fix's small roll/pitch error would tip the whole odom frame
            fix, odom = planar(fix), planar(odom)
        t, q = map_to_odom(fix, odom)
        tf = TransformStamped()
        tf.header.frame_id, tf.child_frame_id = self.settings.map_frame, odom_frame
        tf.transform.translation.x, tf.transform.translation.y, tf.transform.translation.z = (float(v) for v in t)
        r = tf.transform.rotation
        r.x, r.y, r.z, r.w = (float(v) for v in q)
        with self._lock:
            self._map_odom = tf
        self.stats.update(tf_updates=self.stats["tf_updates"] + 1, tf_reason="ok")
        self.broadcast()

    def publish_origin(self, origin: np.ndarray | None) -> None:
        """map_frame -> utm_frame on /tf_static, for a map published relative to its origin (where tf2_ros
        imports and utm_frame is set); said in the log either way, and in diagnostics (`map_origin`)."""
        s = self.settings
        if origin is None:
            return
        where = f"x {origin[0]:.0f}, y {origin[1]:.0f}"
        self.stats["map_origin"] = f"{where} in {s.utm_frame or 'UTM metres'}"
        said = f"poses in {s.map_frame} relative to the map's origin at {where} (UTM metres)"
        if not s.utm_frame:
            self.node.get_logger().info(f"{said}; utm_frame is empty: no transform broadcast for it")
            return
        try:
            from tf2_ros import StaticTransformBroadcaster
        except ImportError:
            self.node.get_logger().info(f"{said}; {s.map_frame} -> {s.utm_frame} not broadcast: tf2_ros cannot be "
                                        "imported")
            return
        tf = TransformStamped()
        tf.header.stamp = self.node.get_clock().now().to_msg()
        tf.header.frame_id, tf.child_frame_id = s.map_frame, s.utm_frame
        v = tf.transform.translation
        v.x, v.y, v.z = (-float(c) for c in origin)  # a point's UTM metres less the origin are its map coordinates
        tf.transform.rotation.w = 1.0
        self._static = StaticTransformBroadcaster(self.node)  # kept: its latched publisher serves late joiners
        self._static.sendTransform(tf)
        self.node.get_logger().info(f"{said}; {s.map_frame} -> {s.utm_frame} on /tf_static")

    def broadcast(self) -> None:
        with self._lock:
            tf = self._map_odom
            if tf is None or self.broadcaster is None:
                return
            tf.header.stamp = (self.node.get_clock().now()
                               + Duration(seconds=self.settings.transform_tolerance)).to_msg()
            self.broadcaster.sendTransform(tf)
