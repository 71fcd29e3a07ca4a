"""Running the localizer node from tools (the demo, the node benchmark): start and stop it as a
process, and talk to it from a node spun by a background thread in its own rclpy context."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Mapping

import rclpy
from rclpy.executors import SingleThreadedExecutor

SPIN_TIMEOUT_S = 0.02
# Without ROS_DOMAIN_ID set, a tool picks one of these domains from its pid (keeps parallel runs apart).
DOMAIN_BASE, DOMAIN_SPAN = 150, 80


def wait_until(ready: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None,
               poll_s: float = 0.05) -> float:
    """Poll `ready` until it holds and return the seconds waited. A node process (`proc`) that exits
    first is a RuntimeError, a deadline passed a TimeoutError; both name `what` was awaited, so a tool
    or test that stalls says on what."""
    t0 = time.monotonic()
    while not ready():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the node exited with code {proc.returncode} while waiting for {what}")
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll_s)
    return time.monotonic() - t0


def node_env() -> dict[str, str]:
    """Environment for the node process; its domain and discovery range also apply to this process."""
    env = dict(os.environ)
    env.setdefault("ROS_DOMAIN_ID", str(DOMAIN_BASE + os.getpid() % DOMAIN_SPAN))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    return env


def start_node(map_dir: Path, env: dict, log: Path, params: Mapping[str, object] | None = None) -> subprocess.Popen:
    """`ros2 launch` when a ROS 2 install is sourced, else the console entry; both read
    config/localize.yaml, and `params` override its values (for the launch file, which takes no
    per-parameter arguments, through a copy of that file beside `log`)."""
    params = dict(params or {})
    check_node_params(params)
    if os.environ.get("ROS_DISTRO") and shutil.which("ros2"):
        cmd = ["ros2", "launch", "densernet_ros", "localize.launch.py", f"map_dir:={map_dir}", "image_topic:=image"]
        if params:
            cmd.append(f"params_file:={write_params_file(params, log.with_name('node_params.yaml'))}")
    else:
        cmd = [sys.executable, "-m", "densernet_ros.node", "--map-dir", str(map_dir), "--ros-args",
               *(a for name, value in params.items()
                 for a in ("-p", f"{name}:={str(value).lower() if isinstance(value, bool) else value}"))]
    return subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def check_node_params(params: Mapping[str, object]) -> None:
    """Refuse names the node does not declare (it would ignore them without a word)."""
    from .node import PARAMETERS

    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise ValueError(f"unknown node parameter(s): {', '.join(unknown)}")


def write_params_file(params: Mapping[str, object], path: Path) -> Path:
    """The node's parameter file with `params` in place of its values."""
    import yaml

    from .node import default_params_file

    data = yaml.safe_load(default_params_file().read_text())
    data["/**"]["ros__parameters"].update(params)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def stop_node(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGINT the node's process group (ros2 launch forwards it), SIGKILL if it does not exit."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


class SpinningNode:
    """A node in its own context, spun in the background; `paused` stops the spinning (for timing)."""

    def __init__(self, name: str, domain_id: int | None = None, namespace: str = "") -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(name, namespace=namespace, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.paused = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            if self.paused.is_set():
                time.sleep(0.05)
            else:
                self.executor.spin_once(timeout_sec=SPIN_TIMEOUT_S)

    def wait_for_node(self, proc: subprocess.Popen, publisher, answer_topic: str, timeout: float, log: Path) -> None:
        """Until `publisher` has the node's subscription and the node publishes `answer_topic`."""
        wait_until(lambda: publisher.get_subscription_count() > 0 and self.node.count_publishers(answer_topic) > 0,
                   timeout, f"the node to come up (see {log})", proc, poll_s=0.1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()

    def __enter__(self) -> "SpinningNode":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def initial_pose(x: float, y: float, var_xy: float, var_yaw: float, frame: str = "map"):
    """What RViz's "2D Pose Estimate" sends on /initialpose: a planar position, heading 0, with these
    variances (m², rad²)."""
    from geometry_msgs.msg import PoseWithCovarianceStamped

    seed = PoseWithCovarianceStamped()
    seed.header.frame_id = frame
    seed.pose.pose.position.x, seed.pose.pose.position.y = float(x), float(y)
    seed.pose.pose.orientation.w = 1.0
    cov = [0.0] * 36
    cov[0] = cov[7] = float(var_xy)
    cov[35] = float(var_yaw)
    seed.pose.covariance = cov
    return seed


def to_rclpy(msg, msgtype: str):
    """A message read by rosbags (its dataclasses, numpy arrays) as the rclpy message of the same type
    (`pkg/msg/Name` or `pkg/Name`), field by field: the tools that replay a bag to the node publish what
    the bag holds."""
    import importlib

    package, _, name = msgtype.replace("/msg/", "/").partition("/")
    cls = getattr(importlib.import_module(f"{package}.msg"), name)
    out = cls()
    for field, kind in cls.get_fields_and_field_types().items():
        value = getattr(msg, field)
        inner = kind[len("sequence<"):].split(",")[0].rstrip(">") if kind.startswith("sequence<") else kind
        inner = inner.split("[")[0]
        if "/" in inner:  # a message, or a sequence / array of them
            setattr(out, field, [to_rclpy(v, inner) for v in value] if inner != kind else to_rclpy(value, inner))
        elif hasattr(value, "tobytes") and inner in ("uint8", "octet"):
            setattr(out, field, value.tobytes())
        elif hasattr(value, "tolist"):
            setattr(out, field, value.tolist())
        else:
            setattr(out, field, value)
    return out
