"""Odometry at an image's stamp, for the map -> odom correction a localizer publishes (geometry.map_to_odom).

A place fix says where the robot was (map frame) when the image was taken; odometry says where
it was in the odom frame at that same instant. Their difference, map -> odom, is what the
navigation stack needs: it keeps odometry's smooth short-term motion and removes its drift.
Odometry arrives at its own rate, so the pose at the image stamp is interpolated (linear in
position, slerp in rotation) between the two samples around it, and refused when the nearest
samples are too far in time (a gap, or a stamp outside the buffer): a stale guess would move
the map frame.
"""
from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..geometry import Transform

@dataclass
class Lookup:
    transform: Transform | None
    reason: str  # "ok", or why there is no odometry pose at that stamp


class OdometryBuffer:
    """Recent odometry poses (odom -> base) by stamp; `at(t)` interpolates between neighbours."""

    def __init__(self, max_gap_s: float, history_s: float, restart_on_jump_back: bool = True) -> None:
        """`restart_on_jump_back`: live, time going back starts the buffer again (`add`); a recording read
        whole keeps both sides of a jump (each run's images are looked up among its own stamps)."""
        if max_gap_s <= 0 or history_s <= 0:
            raise ValueError(f"odometry buffer: max_gap_s ({max_gap_s}) and history_s ({history_s}) must be > 0")
        self.max_gap_s = max_gap_s
        self.history_s = history_s
        self.restart_on_jump_back = restart_on_jump_back
        self._stamps: deque[float] = deque()
        self._poses: deque[Transform] = deque()

    def __len__(self) -> int:
        return len(self._stamps)

    def add(self, stamp_s: float, translation: np.ndarray, quaternion: np.ndarray) -> float:
        """Append a sample; one a little out of order is inserted in place, old ones dropped.

        A sample stamped more than `max_gap_s` before the newest means time went back (a bag played
        again or looped, a simulator reset): the jump (seconds, > 0) is returned, otherwise 0, and live
        the buffer starts again from it, so the caller can drop what it derived from the other run. Kept
        live, it would have been pruned at once as older than the history, and so would every sample
        after it until the stamps passed the old ones again: odometry lost for a whole replay."""
        q = np.asarray(quaternion, float)
        norm = np.linalg.norm(q)
        if not np.isfinite(norm) or norm < 1e-9:
            raise ValueError(f"odometry at {stamp_s:.3f} s has an invalid quaternion {q.tolist()}")
        pose = (np.asarray(translation, float), q / norm)
        jump = self._stamps[-1] - stamp_s if self._stamps else 0.0
        if jump <= self.max_gap_s:
            jump = 0.0
        elif self.restart_on_jump_back:
            self._stamps.clear()
            self._poses.clear()
        i = bisect.bisect_right(self._stamps, stamp_s)
        self._stamps.insert(i, stamp_s)
        self._poses.insert(i, pose)
        while self._stamps and self._stamps[-1] - self._stamps[0] > self.history_s:
            self._stamps.popleft()
            self._poses.popleft()
        return jump

    def at(self, stamp_s: float) -> Lookup:
        from scipy.spatial.transform import Rotation, Slerp

        if not self._stamps:
            return Lookup(None, "no odometry received")
        i = bisect.bisect_left(self._stamps, stamp_s)
        if i < len(self._stamps) and self._stamps[i] == stamp_s:
            return Lookup(self._poses[i], "ok")
        if i == 0 or i == len(self._stamps):
            edge = self._stamps[0] if i == 0 else self._stamps[-1]
            if abs(stamp_s - edge) > self.max_gap_s:
                where = "before" if i == 0 else "after"
                return Lookup(None, f"image stamp {abs(stamp_s - edge):.3f} s {where} the odometry buffered "
                                    f"(max {self.max_gap_s} s)")
            return Lookup(self._poses[0 if i == 0 else -1], "ok")
        t0, t1 = self._stamps[i - 1], self._stamps[i]
        if t1 - t0 > self.max_gap_s:
            return Lookup(None, f"odometry gap of {t1 - t0:.3f} s around the image stamp (max {self.max_gap_s} s)")
        (p0, q0), (p1, q1) = self._poses[i - 1], self._poses[i]
        w = (stamp_s - t0) / (t1 - t0)
        rot = Slerp([0.0, 1.0], Rotation.from_quat([q0, q1]))([w])[0]
        return Lookup(((1 - w) * p0 + w * p1, rot.as_quat()), "ok")
