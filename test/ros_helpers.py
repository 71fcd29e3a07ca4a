"""Start the real node in a subprocess and talk to it with real rclpy (PyPI wheels or a ROS install)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DOMAIN_ID = 100 + os.getpid() % 100  # one domain per test process
# A domain no other participant joins, for tests that shut a context down as soon as it starts: Fast DDS 3.2
# deadlocked destroying such a participant while it was discovering this process's other ones (a fresh clone's
# make test hung: DomainParticipant::set_listener spinning, a discovery thread waiting in on_reader_discovery).
LONE_DOMAIN_ID = 1 + os.getpid() % 99
POSE_AFTER_PLACE_S = 10.0  # the pose follows its place message on another topic; delivery order is not kept


def ros_env(pythonpath: tuple[str, ...] = ()) -> dict[str, str]:
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(DOMAIN_ID)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    env["PYTHONPATH"] = os.pathsep.join([*pythonpath, str(ROOT), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_node(map_dir: Path, *params: str, namespace: str = "", extra: tuple[str, ...] = (),
               pythonpath: tuple[str, ...] = ()) -> subprocess.Popen:
    """The node in `namespace`: a test's node and client get their own, so a node another test left
    running (a module fixture) cannot answer this test's frames or stand in for its diagnostics."""
    cmd = [sys.executable, "-m", "densernet_ros.node", "--map-dir", str(map_dir), *extra, "--ros-args"]
    if namespace:
        cmd += ["-r", f"__ns:=/{namespace}"]
    for p in params:
        cmd += ["-p", p]
    return subprocess.Popen(cmd, env=ros_env(pythonpath), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Client:
    """Publishes camera frames and records everything the node publishes."""

    def __init__(self, compressed: bool = False, namespace: str = "") -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseArray, PoseWithCovarianceStamped
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import CompressedImage, Image

        from densernet_ros.harness import SpinningNode

        self._spinner = SpinningNode("densernet_test_client", domain_id=DOMAIN_ID, namespace=namespace)
        self.node = self._spinner.node
        self.compressed = compressed
        self.namespace = self.node.get_namespace()  # "/" or "/<namespace>"
        topic, kind = ("image/compressed", CompressedImage) if compressed else ("image", Image)
        self.pub = self.node.create_publisher(kind, topic, qos_profile_sensor_data)
        self.poses: list = []
        self.places: list = []
        self.candidates: list = []
        self.diagnostics: list = []
        self.node.create_subscription(PoseWithCovarianceStamped, "place_recognition/pose", self.poses.append, 10)
        self.node.create_subscription(DiagnosticArray, "place_recognition/place", self.places.append, 10)
        self.node.create_subscription(PoseArray, "place_recognition/candidates", self.candidates.append, 10)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _on_diagnostics(self, arr) -> None:
        """/diagnostics is global: keep only the statuses of nodes directly in this client's namespace
        (a status is named '<fully qualified node name>: <task>')."""
        arr.status = [st for st in arr.status
                      if (st.name.split(":")[0].rpartition("/")[0] or "/") == self.namespace]
        if arr.status:
            self.diagnostics.append(arr)

    def wait_for(self, predicate, timeout: float, what: str) -> None:
        from densernet_ros.harness import wait_until

        wait_until(predicate, timeout, what)

    def wait_matched(self, proc: subprocess.Popen, timeout: float = 60.0) -> None:
        from densernet_ros.harness import wait_until

        try:
            wait_until(lambda: (self.pub.get_subscription_count() > 0
                                and self.node.count_publishers("place_recognition/pose") > 0
                                and self.node.count_publishers("place_recognition/place") > 0),
                       timeout, "the node's subscription and publishers to match", proc)
        except RuntimeError as e:
            raise RuntimeError(f"{e}: {proc.stdout.read()}") from None

    def make_msg(self, rgb: np.ndarray, stamp_ns: int, encoding: str = "rgb8"):
        from densernet_ros.image_conversion import rgb_to_image

        if not self.compressed:
            return rgb_to_image(rgb, stamp_ns, encoding)
        import cv2
        from sensor_msgs.msg import CompressedImage

        msg = CompressedImage()
        msg.format = "jpeg"
        msg.data = cv2.imencode(".jpg", rgb[:, :, ::-1])[1].tobytes()
        msg.header.frame_id = "camera"
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 10 ** 9)
        return msg

    def send_and_wait(self, msg, timeout: float = 30.0, resend_s: float = 5.0) -> tuple[dict, object]:
        """Publish one frame and wait until the node has answered it: its place message, and, where that
        says there is a fix, its pose (published just after, on another topic, so it may arrive later).
        Returns (the place status values, the pose or None).

        The camera topic is best effort: a frame published just after discovery can be lost (seen
        here), so an unanswered frame is sent again every `resend_s` seconds."""
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)

        def answered(messages):
            return next((m for m in list(messages) if (m.header.stamp.sec, m.header.stamp.nanosec) == stamp), None)

        end = time.monotonic() + timeout
        while True:
            self.pub.publish(msg)
            try:
                self.wait_for(lambda: answered(self.places) is not None,
                              min(resend_s, max(end - time.monotonic(), 0.0)), f"the node's answer to frame {stamp}")
                break
            except TimeoutError:
                if time.monotonic() >= end:
                    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for the node's answer to frame "
                                       f"{stamp}") from None
        values = {kv.key: kv.value for kv in answered(self.places).status[0].values}
        if values.get("fix") != "true":
            return values, None
        self.wait_for(lambda: answered(self.poses) is not None, POSE_AFTER_PLACE_S,
                      f"the pose that the place message of frame {stamp} announced")
        return values, answered(self.poses)

    def call(self, service_client, request, timeout: float, what: str, resend_s: float = 10.0):
        """A service's answer, the request sent again every `resend_s` s until one comes. Fast DDS can call a
        server ready before the server's reply writer has matched this client's reader, and the reply to a
        request sent then is lost (seen here: the first get_state unanswered for 120 s, on a ready service).
        Only for requests that are safe to repeat. Returns (the answer, how many times the request was sent)."""
        end = time.monotonic() + timeout
        sent = 0
        while True:
            future = service_client.call_async(request)
            sent += 1
            try:
                self.wait_for(future.done, min(resend_s, max(end - time.monotonic(), 0.0)), what)
                return future.result(), sent
            except TimeoutError:
                service_client.remove_pending_request(future)
                if time.monotonic() >= end:
                    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}") from None

    def close(self) -> None:
        self._spinner.close()


def stop(proc: subprocess.Popen, timeout: float = 20.0) -> tuple[int, str]:
    import signal

    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return proc.returncode, out
