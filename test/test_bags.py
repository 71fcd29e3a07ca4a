"""Recordings a robot did not close (recorder killed, power lost): no metadata.yaml, an MCAP file cut part way.
They are read as far as they go, with a warning; rosbags alone refused them and the drive was lost."""
import shutil
from pathlib import Path

import numpy as np
import pytest

from densernet_core.bags import BagError, UnclosedBag, open_bag
from densernet_core.datasets import load_rosbag
from densernet_core.localization.sequence import bag_frames

FRAMES = 20
IMAGE_TOPIC, ODOM_TOPIC = "/camera/image_raw", "/odom"


def record(path: Path, storage: str, compress: bool = False, stamped: bool = True) -> list[np.ndarray]:
    """A closed recording: FRAMES noise images (240x320, ~230 KB each: rosbags' 1 MiB chunks hold 4) with
    odometry beside each, recorded 1 s apart from 10 s (header stamps the same, or zero: `stamped` False);
    returns the images."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.rosbag2.enums import CompressionFormat, CompressionMode
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    T = ts.types  # noqa: N806
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (240, 320, 3), dtype=np.uint8) for _ in range(FRAMES)]
    writer = Writer(path, version=8, storage_plugin=StoragePlugin[storage])
    if compress:
        writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    with writer as w:
        ci = w.add_connection(IMAGE_TOPIC, "sensor_msgs/msg/Image", typestore=ts)
        co = w.add_connection(ODOM_TOPIC, "nav_msgs/msg/Odometry", typestore=ts)
        for k, img in enumerate(images):
            stamp = T["builtin_interfaces/msg/Time"](sec=10 + k if stamped else 0, nanosec=0)
            image = T["sensor_msgs/msg/Image"](header=T["std_msgs/msg/Header"](stamp=stamp, frame_id="camera"),
                                               height=240, width=320, encoding="rgb8", is_bigendian=0, step=960,
                                               data=img.reshape(-1))
            pose = T["geometry_msgs/msg/Pose"](position=T["geometry_msgs/msg/Point"](x=float(k), y=0.0, z=0.0),
                                               orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0))
            odom = T["nav_msgs/msg/Odometry"](
                header=T["std_msgs/msg/Header"](stamp=stamp, frame_id="odom"), child_frame_id="base_link",
                pose=T["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=np.zeros(36)),
                twist=T["geometry_msgs/msg/TwistWithCovariance"](
                    twist=T["geometry_msgs/msg/Twist"](linear=T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0),
                                                       angular=T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0)),
                    covariance=np.zeros(36)))
            t = int((10 + k) * 1e9)
            w.write(co, t, ts.serialize_cdr(odom, "nav_msgs/msg/Odometry"))
            w.write(ci, t, ts.serialize_cdr(image, "sensor_msgs/msg/Image"))
    return images


def killed(closed: Path, out: Path, keep: float) -> Path:
    """What a recorder killed part way leaves: no metadata.yaml, its data file ending at `keep` of its length."""
    shutil.copytree(closed, out)
    (out / "metadata.yaml").unlink()
    data = next(p for p in out.iterdir() if p.suffix in (".mcap", ".db3"))
    data.write_bytes(data.read_bytes()[:int(data.stat().st_size * keep)])
    return out


def messages(bag: Path) -> dict[str, list[tuple[int, bytes]]]:
    out: dict[str, list[tuple[int, bytes]]] = {}
    with open_bag(bag) as reader:
        for c, t, raw in reader.messages():
            out.setdefault(c.topic, []).append((t, bytes(raw)))
    return out


@pytest.mark.parametrize("compress", [False, True], ids=["uncompressed", "zstd"])
def test_a_killed_mcap_recording_gives_every_message_it_holds(tmp_path, caplog, compress):
    """Each topic's messages are the closed recording's first ones, byte for byte. Uncompressed, every
    message whose bytes lie wholly before the cut is read, those of the chunk cut part way too (found by
    searching the file for each message's bytes, independently of the reader); zstd chunks are read whole."""
    images = record(tmp_path / "closed", "MCAP", compress)
    whole = messages(tmp_path / "closed")
    assert [len(whole[t]) for t in (IMAGE_TOPIC, ODOM_TOPIC)] == [FRAMES, FRAMES]
    bag = killed(tmp_path / "closed", tmp_path / "killed", 0.7)
    got = messages(bag)
    for topic in (IMAGE_TOPIC, ODOM_TOPIC):
        n = len(got[topic])
        assert 0 < n < FRAMES and got[topic] == whole[topic][:n], topic
    if not compress:
        cut = next(bag.glob("*.mcap")).read_bytes()
        held = [raw for _, raw in whole[IMAGE_TOPIC] if raw in cut]
        assert got[IMAGE_TOPIC] == whole[IMAGE_TOPIC][:len(held)]
    assert "the recording was not closed (no metadata.yaml)" in caplog.text and "cut at byte" in caplog.text
    frames = list(bag_frames(bag, IMAGE_TOPIC))  # what densernet-localize --bag reads
    assert len(frames) == len(got[IMAGE_TOPIC]) and all(f.error is None for f in frames)
    for f, img in zip(frames, images):
        np.testing.assert_array_equal(f.rgb, img)
    data = load_rosbag(bag, IMAGE_TOPIC, ODOM_TOPIC, tmp_path / "frames")  # what densernet-map build reads
    n = min(len(got[IMAGE_TOPIC]), len(got[ODOM_TOPIC]))  # an image's pose is the odometry of its stamp
    assert len(data) == n and np.allclose(data.positions[:, 0], np.arange(n))


@pytest.mark.parametrize("storage", ["MCAP", "SQLITE3"])
def test_a_recording_without_metadata_is_read_whole(tmp_path, caplog, storage):
    record(tmp_path / "closed", storage)
    whole = messages(tmp_path / "closed")
    assert "not closed" not in caplog.text
    bag = killed(tmp_path / "closed", tmp_path / "no_metadata", 1.0)
    assert messages(bag) == whole
    assert "no metadata.yaml" in caplog.text
    with open_bag(bag) as reader:
        assert isinstance(reader, UnclosedBag) == (storage == "MCAP")
        assert sorted(c.topic for c in reader.connections) == [IMAGE_TOPIC, ODOM_TOPIC]


def test_what_is_not_a_recording_is_named(tmp_path):
    with pytest.raises(BagError, match="rosbag not found"):
        open_bag(tmp_path / "nothing").__enter__()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a bag")
    with pytest.raises(BagError, match="notes: cannot open as a rosbag2"):
        open_bag(tmp_path / "notes").__enter__()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "empty_0.mcap").write_bytes(b"")
    with pytest.raises(BagError, match="empty_0.mcap is empty"):
        open_bag(tmp_path / "empty").__enter__()
    (tmp_path / "garbage").mkdir()  # a schema record of garbage where its name should be
    (tmp_path / "garbage" / "garbage_0.mcap").write_bytes(b"\x89MCAP0\r\n\x03" + (20).to_bytes(8, "little") + b"\xff" * 20)
    with pytest.raises(BagError, match="garbage: cannot open as a rosbag2: .*; read record by record: .*codec"):
        open_bag(tmp_path / "garbage").__enter__()
    record(tmp_path / "closed", "MCAP")
    bag = killed(tmp_path / "closed", tmp_path / "header_only", 0.0005)  # killed before its first message
    with pytest.raises(BagError, match="holds no complete message"):
        open_bag(bag).__enter__()


def test_a_damaged_message_costs_only_itself(tmp_path, caplog):
    """Bytes that do not deserialize (bit rot, a bad copy) in one image and one odometry message: the frame
    comes as unreadable in its place, odometry and map building go on without the two (both were a
    traceback that ended the whole recording)."""
    import sqlite3

    from densernet_core.localization.sequence import bag_odometry

    images = record(tmp_path / "bag", "SQLITE3")
    db = next((tmp_path / "bag").glob("*.db3"))
    with sqlite3.connect(db) as con:
        topic = dict(con.execute("select name, id from topics").fetchall())
        rows = {name: [r for (r,) in con.execute("select id from messages where topic_id = ? order by timestamp",
                                                  (tid,))] for name, tid in topic.items()}
        con.execute("update messages set data = substr(data, 1, 40) where id = ?", (rows[IMAGE_TOPIC][3],))
        con.execute("update messages set data = X'00' where id = ?", (rows[ODOM_TOPIC][7],))
    frames = list(bag_frames(tmp_path / "bag", IMAGE_TOPIC))
    assert len(frames) == FRAMES and [k for k, f in enumerate(frames) if f.rgb is None] == [3]
    assert "message 3 on /camera/image_raw is not a readable sensor_msgs/msg/Image" in frames[3].error
    assert frames[3].stamp == 13.0  # its recording time
    for k in (2, 4):
        np.testing.assert_array_equal(frames[k].rgb, images[k])
    odometry = bag_odometry(tmp_path / "bag", ODOM_TOPIC, 2.0)
    assert len(odometry) == FRAMES - 1 and "1 message(s) on /odom are not readable" in caplog.text
    caplog.clear()
    data = load_rosbag(tmp_path / "bag", IMAGE_TOPIC, ODOM_TOPIC, tmp_path / "frames")
    kept = [k for k in range(FRAMES) if k not in (3, 7)]  # image 7 has no pose within 0.1 s
    assert np.allclose(data.positions[:, 0], kept)
    assert "1 message(s) on /camera/image_raw cannot be read or decoded and were left out: 3 (" in caplog.text
    assert "1 message(s) on /odom cannot be read" in caplog.text and "1 image(s) had no pose" in caplog.text


def test_zero_header_stamps_take_the_recording_time(tmp_path, caplog):
    """A publisher that leaves header.stamp at zero (a quick script, a driver on a sim clock that was not
    running). Taken as they were, every image matched the same pose, so a map built from it put all its
    places at one position, and a localized sequence saw no time pass between frames."""
    from densernet_core.frames import extrinsic_from_bag
    from densernet_core.localization.sequence import bag_odometry

    images = record(tmp_path / "bag", "MCAP", stamped=False)
    frames = list(bag_frames(tmp_path / "bag", IMAGE_TOPIC))
    assert [f.stamp for f in frames] == [10.0 + k for k in range(FRAMES)]
    np.testing.assert_array_equal(frames[5].rgb, images[5])
    assert "message 0 on /camera/image_raw has a zero header stamp: it and any others like it are stamped with " \
           "their recording time" in caplog.text
    caplog.clear()
    data = load_rosbag(tmp_path / "bag", IMAGE_TOPIC, ODOM_TOPIC, tmp_path / "frames")
    np.testing.assert_allclose(data.positions[:, 0], np.arange(FRAMES))  # each image its own pose
    np.testing.assert_allclose(data.timestamps, 10.0 + np.arange(FRAMES))
    assert "message 0 on /odom has a zero header stamp" in caplog.text
    found = bag_odometry(tmp_path / "bag", ODOM_TOPIC, 2.0).at(14.5)
    np.testing.assert_allclose(found.transform[0], [4.5, 0, 0])
    assert extrinsic_from_bag(tmp_path / "bag", "base_link", "camera") is None  # no /tf: read, not raised
