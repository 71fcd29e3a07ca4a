"""Frames in order, with their time and the robot's motion between them, for offline localization.

Sources: image files and folders (in the order given; a folder's images sorted by name; stamps
from `fps` when given, else none), videos (stamps from the container's clock) and rosbag2
recordings (an image topic with header stamps, optionally an odometry topic). Motion between two
frames comes from odometry (a bag's topic, or per-frame poses matched by file name) when there is
some, else from the stamps (the filter's speed bound), else from the frame count (`max_step`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..bags import open_bag, topic_messages
from ..images import ImageError, list_images, message_to_rgb, read_image
from ..listing import first_few
from .belief import Motion, motion_between
from ..geometry import Transform, compose, inverse
from .odometry import OdometryBuffer

VIDEO_EXTS = {".mp4", ".avi", ".mkv", ".mov", ".webm"}
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
ODOMETRY_TYPES = ("nav_msgs/msg/Odometry", "geometry_msgs/msg/PoseStamped", "geometry_msgs/msg/PoseWithCovarianceStamped")
OFFLINE_ODOM_HISTORY_S = 1e9  # a recording's odometry is kept whole
LOG = logging.getLogger("densernet")
VIDEO_MAX_FAILED_READS = 25  # failed reads in a row taken as the end of a video with no declared count
CLOCK_GAP_FRAMES = 1.5  # a step of the container's clock longer than this many frame periods is named as a gap


@dataclass
class Frame:
    name: str                 # file name, <video>#<index>, or <topic>#<index>
    rgb: np.ndarray | None    # None when the frame could not be decoded (`error` says why)
    stamp: float | None       # seconds; None for unstamped images
    error: str | None = None  # an unreadable frame is yielded, not raised: the frames after it still count


def frames(inputs: Sequence[str], fps: float | None = None) -> Iterator[Frame]:
    """Image files, folders and videos, in the order given. A file that cannot be decoded comes as a
    frame with `error` set, in its place, so one corrupt image does not end a run of thousands."""
    k = 0
    for item in inputs:
        p = Path(item)
        if p.suffix.lower() in VIDEO_EXTS:
            yield from video_frames(p, fps)
        else:
            for img in list_images([p]):
                stamp = k / fps if fps else None
                try:
                    frame = Frame(img.name, read_image(img), stamp)
                except ImageError as exc:
                    frame = Frame(img.name, None, stamp, str(exc))
                yield frame
                k += 1


def video_frames(p: Path, fps: float | None = None) -> Iterator[Frame]:
    """A video's frames, named <file>#<index>. OpenCV's read() fails on a frame the decoder rejects just as
    it does at the end, so reading goes on past a failure: such a frame comes as an unreadable Frame in its
    place and the rest of the video still counts (stopping there lost it all). Stamps follow the container's
    clock (right for variable-rate video and across a frame the demuxer drops without a failed read), or
    the frame rate where the clock does not advance; `fps` overrides both."""
    import cv2

    cap = cv2.VideoCapture(str(p))
    if not cap.isOpened():
        raise ImageError(f"cannot open video {p}")
    rate = fps or cap.get(cv2.CAP_PROP_FPS) or None
    declared = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
    use_clock, last_clock = fps is None, -1.0
    index = decoded = 0
    pending: list[int] = []  # failed reads: rejected frames if a frame follows, else the end
    gaps: list[str] = []  # where the clock skips: variable-rate video, or frames the demuxer dropped
    while len(pending) < VIDEO_MAX_FAILED_READS and not (pending and declared and index >= declared):
        ok, bgr = cap.read()
        if not ok:
            pending.append(index)
            index += 1
            continue
        for j in pending:
            yield Frame(f"{p.name}#{j:06d}", None, j / rate if rate else None,
                        f"{p}: frame {j} cannot be decoded (the frames after it are read on)")
        pending = []
        clock = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        if use_clock and clock <= last_clock:
            use_clock = False
            LOG.warning("%s: the container's clock does not advance at frame %d; stamps from the frame rate (%s)",
                        p, index, f"{rate:g} Hz" if rate else "unknown: no stamps")
        if use_clock and rate and decoded and (clock - last_clock) * rate > CLOCK_GAP_FRAMES:
            gaps.append(f"#{index:06d} ({last_clock:.3f} s -> {clock:.3f} s)")
        last_clock = clock
        stamp = clock if use_clock else (index / rate if rate else None)
        yield Frame(f"{p.name}#{index:06d}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), stamp)
        index += 1
        decoded += 1
    cap.release()
    if decoded == 0:
        yield Frame(p.name, None, None, f"video {p} opened but has no decodable frame")
    elif index - len(pending) < declared:  # frames read, decoded or rejected (the failed reads at the end aside)
        # A cut-off file ends in failed reads; a frame the demuxer skips leaves no failed read, so only this
        # count short of the declared one (AVI, MKV keep it in their header) shows it.
        LOG.warning("%s: decoded %d of the %d frames its container declares (cut off or damaged?); frame names "
                    "count the frames read, so after a frame lost without a read error they are early%s%s", p,
                    index - len(pending), declared, " (stamps follow the container's clock)" if use_clock else
                    ", and so are stamps", "; the clock skips before " + ", ".join(gaps) if gaps else "")


def bag_frames(bag: str | Path, image_topic: str) -> Iterator[Frame]:
    """The image topic of a rosbag2, decoded frame by frame, with header stamps (bags.topic_messages)."""
    from rosbags.image import compressed_image_to_cvimage

    with open_bag(bag) as reader:
        conn = _connection(reader, bag, image_topic, IMAGE_TYPES, "image")
        for m in topic_messages(reader, [conn], bag):
            name = f"{image_topic}#{m.index:06d}"
            if m.msg is None:
                yield Frame(name, None, m.stamp, f"{bag}: message {m.index} on {image_topic} is not a readable "
                            f"{conn.msgtype} ({m.error}); stamped with its recording time")
                continue
            try:
                rgb = compressed_image_to_cvimage(m.msg, "rgb8") if conn.msgtype.endswith("CompressedImage") \
                    else message_to_rgb(m.msg)
            except Exception as exc:  # rosbags-image raises its own error types
                yield Frame(name, None, m.stamp, f"{bag}: image {m.index} on {image_topic} cannot be decoded: {exc}")
                continue
            yield Frame(name, np.ascontiguousarray(rgb), m.stamp)


def bag_odometry(bag: str | Path, topic: str, max_gap_s: float) -> OdometryBuffer:
    """All odometry (or pose) messages of a topic, for lookups at image stamps."""
    buffer = OdometryBuffer(max_gap_s, OFFLINE_ODOM_HISTORY_S, restart_on_jump_back=False)
    with open_bag(bag) as reader:
        conn = _connection(reader, bag, topic, ODOMETRY_TYPES, "odometry")
        damaged, jumps = [], []
        for m in topic_messages(reader, [conn], bag):
            if m.msg is None:  # damaged bytes: the poses either side of it still hold
                damaged.append(f"{m.index} ({m.error})")
                continue
            pose = m.msg.pose.pose if hasattr(m.msg.pose, "pose") else m.msg.pose
            p, q = pose.position, pose.orientation
            if jump := buffer.add(m.stamp, (p.x, p.y, p.z), (q.x, q.y, q.z, q.w)):
                jumps.append(f"{m.index} ({jump:.3f} s back)")
    if jumps:  # two runs in one recording: each image is still looked up by its own stamp
        LOG.warning("%s: the stamps on %s go back in time at message(s) %s: two runs in one recording? Where the "
                    "runs' stamps overlap, odometry between frames may mix them", bag, topic,
                    first_few(jumps))
    if damaged:
        LOG.warning("%s: %d message(s) on %s are not readable and were left out: %s", bag, len(damaged), topic,
                    first_few(damaged))
    if not len(buffer):
        raise ValueError(f"{bag}: odometry topic {topic!r} has no messages" + (" that can be read" if damaged else ""))
    return buffer


class MotionSource:
    """Motion between consecutive frames from whichever is there: odometry poses (by stamp or by name),
    stamps, or nothing (one frame's worth of the speed bound)."""

    def __init__(self, odometry: OdometryBuffer | None = None, poses: dict[str, Transform] | None = None) -> None:
        self.odometry, self.poses = odometry, poses
        self._prev: Frame | None = None
        self.used = {"odometry": 0, "stamps": 0, "frame count": 0, "restarts (time went back)": 0}

    def __call__(self, frame: Frame) -> Motion:
        prev, self._prev = self._prev, frame
        if prev is None:
            return Motion()
        motion = motion_between(prev.stamp, frame.stamp)
        if motion.restart:
            self.used["restarts (time went back)"] += 1
            LOG.warning("%s is stamped %.3f s before %s: time went back (another run?); the belief starts again",
                        frame.name, prev.stamp - frame.stamp, prev.name)
            return motion
        a, b = self._pose(prev), self._pose(frame)
        if a is not None and b is not None:
            self.used["odometry"] += 1
            motion.translation, motion.rotation = compose(inverse(a), b)
            return motion
        self.used["stamps" if motion.dt is not None else "frame count"] += 1
        return motion

    def _pose(self, frame: Frame) -> Transform | None:
        if self.poses is not None:
            return self.poses.get(frame.name)
        if self.odometry is not None and frame.stamp is not None:
            return self.odometry.at(frame.stamp).transform
        return None


def poses_by_name(data) -> dict[str, Transform]:
    """Per-frame poses (a GeoImages, e.g. a poses CSV of the query run) keyed by file name."""
    return {name: (pos, q) for name, pos, q in zip(data.names, data.positions, data.orientations)}


def _connection(reader, bag, topic: str, kinds: tuple[str, ...], what: str):
    by_topic = {c.topic: c for c in reader.connections}
    if topic not in by_topic:
        raise ValueError(f"{bag}: no topic {topic!r}; topics are {sorted(by_topic)}")
    if by_topic[topic].msgtype not in kinds:
        raise ValueError(f"{bag}: {what} topic {topic!r} has type {by_topic[topic].msgtype}, expected one of {kinds}")
    return by_topic[topic]

