"""Pose algebra in one place: quaternions (x, y, z, w), rigid transforms, headings.

A transform is (translation xyz, quaternion xyzw) taking points of its child frame into its parent
frame, as ROS's TF does: `compose(a, b)` is a * b, the child of b expressed in a's parent.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.spatial.transform import Rotation

Transform = tuple[np.ndarray, np.ndarray]  # (translation xyz, quaternion xyzw): parent -> child
IDENTITY: Transform = (np.zeros(3), np.array([0.0, 0.0, 0.0, 1.0]))


def compose(a: Transform, b: Transform) -> Transform:
    """a * b: the child of `b` expressed in the parent of `a`."""
    ra = Rotation.from_quat(a[1])
    return np.asarray(a[0], float) + ra.apply(b[0]), (ra * Rotation.from_quat(b[1])).as_quat()


def inverse(a: Transform) -> Transform:
    r_inv = Rotation.from_quat(a[1]).inv()
    return -r_inv.apply(a[0]), r_inv.as_quat()


def map_to_odom(map_base: Transform, odom_base: Transform) -> Transform:
    """map -> odom from the robot's pose in both frames at the same instant."""
    return compose(map_base, inverse(odom_base))


def yaw_to_quat(yaw: float) -> tuple[float, float, float, float]:
    return (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2))


def quat_to_yaw(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    x, y, z, w = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def rotation_to_quat(r: np.ndarray) -> tuple[float, float, float, float]:
    """3x3 rotation matrix -> quaternion (x, y, z, w)."""
    x, y, z, w = Rotation.from_matrix(r).as_quat()
    return (float(x), float(y), float(z), float(w))


def fuse_heading(orientations: np.ndarray, weights: np.ndarray, ref: int) -> tuple[np.ndarray, float]:
    """Weighted circular mean of the headings, applied as a turn about the map's vertical to
    orientation `ref`: the result keeps the map's own axis convention (a robot body's x-forward or a
    camera's z-forward) and `ref`'s tilt, so a fallback pose and a camera pose from PnP agree.
    Returns (quaternion xyzw, circular variance of the headings)."""
    q = np.asarray(orientations, dtype=np.float64).reshape(-1, 4)
    w = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    d = quat_to_yaw(q) - quat_to_yaw(q[ref])
    s, c = float((w * np.sin(d)).sum()), float((w * np.cos(d)).sum())
    turn = Rotation.from_euler("z", math.atan2(s, c))
    fused = (turn * Rotation.from_quat(q[ref] / np.linalg.norm(q[ref]))).as_quat()
    return fused, -2.0 * math.log(max(math.hypot(s, c), 1e-9))


def skew(v: np.ndarray) -> np.ndarray:
    x, y, z = np.asarray(v, float)
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


def compose_poses(positions: np.ndarray, orientations: np.ndarray, t: Transform) -> tuple[np.ndarray, np.ndarray]:
    """Each pose (N x 3, N x 4, parent -> child) times the same transform `t`: e.g. base poses -> camera poses."""
    rot = Rotation.from_quat(np.asarray(orientations, float).reshape(-1, 4))
    return (np.asarray(positions, float).reshape(-1, 3) + rot.apply(np.asarray(t[0], float)),
            (rot * Rotation.from_quat(t[1])).as_quat())


def pose_times_transform_covariance(orientation: np.ndarray, covariance: np.ndarray, t: Transform) -> np.ndarray:
    """Covariance (x y z, rotation vector in the parent frame; 6 x 6) of pose * t, from the pose's, for a fixed t.

    (R, c) * (R_t, t_t) = (R R_t, c + R t_t): a rotation error dθ in the parent frame moves the composed
    position by dθ x (R t_t) and rotates it by the same dθ, so J = [[I, -[R t_t]x], [0, I]]."""
    lever = Rotation.from_quat(orientation).apply(np.asarray(t[0], float))
    j = np.eye(6)
    j[:3, 3:] = -skew(lever)
    return j @ np.asarray(covariance, float) @ j.T


def planar(t: Transform) -> Transform:
    """The transform flattened to the ground plane: x, y and the heading kept, z, roll and pitch dropped
    (a ground robot's map -> odom, as AMCL publishes it: a tilt error of a fix must not tip the odom frame)."""
    yaw = float(quat_to_yaw(np.asarray(t[1], float)))
    return np.array([float(t[0][0]), float(t[0][1]), 0.0]), np.array(yaw_to_quat(yaw))
