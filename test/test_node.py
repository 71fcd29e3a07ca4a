"""The real node, end to end, over real rclpy: Gardens Point map, camera frames in, poses out."""
from __future__ import annotations

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed (pip install '.[ros]' or source ROS 2)")

from densernet_core.images import read_image  # noqa: E402
from ros_helpers import Client, rss_mb, start_node, stop  # noqa: E402

SIZE = (120, 160)
MAP_FRAMES = list(range(0, 200, 5))   # 40 places; position x = frame index
QUERY_FRAMES = list(range(2, 200, 10))  # 20 frames between/at map places
PARAMS = (f"image_height:={SIZE[0]}", f"image_width:={SIZE[1]}", "cluster_radius:=6.0", "position_floor:=1.0")


@pytest.fixture(scope="module")
def gp_map(tmp_path_factory, gardens_point, caffe_weights_ready):
    from densernet_core.checkpoint import checkpoint_hash
    from densernet_core.cli import make_checkpoint
    from densernet_core.checkpoint import load_model
    from densernet_core.datasets import load_traverse
    from densernet_core.placemap import build_map

    work = tmp_path_factory.mktemp("gpmap")
    data = load_traverse(gardens_point / "day_left", MAP_FRAMES)
    ckpt = make_checkpoint(data.images, work / "model.safetensors", image_size=SIZE, progress=False)
    build_map(load_model(ckpt), ckpt, checkpoint_hash(ckpt), data, work / "map", progress=False)
    return work


@pytest.fixture(scope="module")
def raw_node(gp_map):
    proc = start_node(gp_map / "map", *PARAMS)
    client = Client()
    client.wait_matched(proc)
    yield proc, client
    client.close()
    code, out = stop(proc)
    assert code == 0, out


def frame(gp, folder: str, i: int) -> np.ndarray:
    """A camera frame at 320x180: large best-effort messages are often lost by Fast DDS over UDP."""
    import cv2

    return cv2.resize(read_image(gp / folder / f"Image{i:03d}.jpg"), (320, 180), interpolation=cv2.INTER_AREA)


def _stamp(i: int) -> int:
    return 1_700_000_000 * 10 ** 9 + i * 100_000_000


def test_poses_arrive_with_frame_stamp_covariance_and_right_place(raw_node, gardens_point):
    proc, client = raw_node
    sent = {}
    for i in QUERY_FRAMES:
        rgb = frame(gardens_point, "day_right", i)
        msg = client.make_msg(rgb, _stamp(i), encoding="bgr8" if i % 20 == 2 else "rgb8")
        sent[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = i
        client.send_and_wait(msg)
    assert client.poses, "no pose published"
    correct = 0
    for pose in client.poses:
        key = (pose.header.stamp.sec, pose.header.stamp.nanosec)
        assert key in sent, f"pose stamp {key} is not an image stamp"
        assert pose.header.frame_id == "map"
        cov = np.array(pose.pose.covariance).reshape(6, 6)
        assert np.all(np.diag(cov) > 0)
        correct += abs(pose.pose.pose.position.x - sent[key]) <= 5.0  # within one map spacing
    print(f"{len(client.poses)} poses for {len(sent)} frames, {correct} within 5 frames")
    assert len(client.poses) >= 0.7 * len(sent)
    assert correct >= 0.7 * len(sent)
    assert len(client.candidates) >= len(sent) and client.candidates[-1].header.frame_id == "map"
    place = client.places[-1].status[0]
    keys = {kv.key for kv in place.values}
    assert {"place_id", "score", "confidence", "top_k_ids", "top_k_scores"} <= keys


def test_bad_frames_are_counted_and_node_keeps_answering(raw_node, gardens_point):
    proc, client = raw_node
    from sensor_msgs.msg import Image

    rgb = frame(gardens_point, "day_right", 50)
    bad = []
    m = client.make_msg(rgb, _stamp(1001))
    m.encoding = "yuv422_yuy2"
    bad.append(m)
    m = client.make_msg(rgb, _stamp(1002))
    m.data = m.data[: len(m.data) // 3]
    bad.append(m)
    m = Image()
    m.encoding, m.height, m.width, m.step = "rgb8", 0, 0, 0
    bad.append(m)
    for m in bad:
        client.pub.publish(m)
        import time
        time.sleep(0.3)
    good = client.make_msg(rgb, _stamp(1003))
    client.send_and_wait(good)
    assert proc.poll() is None

    def bad_count():
        for arr in reversed(client.diagnostics):
            for st in arr.status:
                values = {kv.key: kv.value for kv in st.values}
                if "bad_frames" in values:
                    return int(values["bad_frames"])
        return -1
    client.wait_for(lambda: bad_count() >= 3, 5.0, "diagnostics to count 3 bad frames")
    out_status = [st for arr in client.diagnostics for st in arr.status if "localization" in st.name]
    assert out_status and {kv.key for kv in out_status[-1].values} >= {"inference_latency_ms", "frames_dropped",
                                                                        "input_rate_hz", "map_places"}


def test_back_pressure_keeps_newest_frame_and_memory_flat(raw_node, gardens_point):
    import time

    proc, client = raw_node
    rgb = frame(gardens_point, "day_right", 100)
    msgs = [client.make_msg(rgb, _stamp(2000 + k)) for k in range(60)]
    before = rss_mb(proc.pid)
    for burst in range(2):
        for m in msgs[burst * 30:(burst + 1) * 30]:
            client.pub.publish(m)
            time.sleep(1 / 200)
        last = msgs[(burst + 1) * 30 - 1]
        stamp = (last.header.stamp.sec, last.header.stamp.nanosec)
        client.wait_for(lambda: any((p.header.stamp.sec, p.header.stamp.nanosec) == stamp for p in client.places),
                        30.0, "the newest frame of the burst to be processed")
    answered = [p for p in client.places if p.header.stamp.sec * 10 ** 9 + p.header.stamp.nanosec >= _stamp(2000)]
    assert len(answered) < 60, "every frame was processed: nothing was dropped"
    after = rss_mb(proc.pid)
    assert after - before < 100, f"node memory grew from {before:.0f} to {after:.0f} MB"


def test_compressed_images_and_corrupt_jpeg(gp_map, gardens_point):
    proc = start_node(gp_map / "map", *PARAMS, "use_compressed:=true")
    client = Client(compressed=True)
    try:
        client.wait_matched(proc)
        corrupt = client.make_msg(frame(gardens_point, "day_right", 30), _stamp(3000))
        corrupt.data = b"\xff\xd8\xff\xe0" + b"\x00" * 100
        client.pub.publish(corrupt)
        for i in (30, 80, 150):
            client.send_and_wait(client.make_msg(frame(gardens_point, "day_right", i),
                                                 _stamp(3001 + i)))
        assert len(client.poses) >= 2
        assert proc.poll() is None
    finally:
        client.close()
        code, out = stop(proc)
    assert code == 0, out
    assert "cannot decode compressed image" in out


def test_startup_errors_exit_nonzero_with_message(gp_map, tmp_path, tiny_model):
    from densernet_core.checkpoint import save_checkpoint

    proc = start_node(tmp_path / "no_map", *PARAMS)
    out = proc.communicate(timeout=120)[0]
    code = proc.returncode
    assert code == 1 and "map folder not found" in out
    other = save_checkpoint(tiny_model, tmp_path / "other.safetensors")
    proc = start_node(gp_map / "map", *PARAMS, f"checkpoint:={other}")
    out = proc.communicate(timeout=120)[0]
    code = proc.returncode
    assert code == 1 and "mismatch" in out
    proc = start_node(gp_map / "map", "image_height:=240", "image_width:=320")
    out = proc.communicate(timeout=120)[0]
    code = proc.returncode
    assert code == 1 and "image size" in out
