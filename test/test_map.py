import csv

import numpy as np
import pytest

from conftest import random_images
from densernet_core.model.checkpoint import checkpoint_hash, save_checkpoint
from densernet_core.datasets import DatasetError, load_csv, load_rosbag, thin
from densernet_core.mapping.placemap import MapError, PlaceMap, add_to_map, build_map


@pytest.fixture()
def route(tmp_path):
    import cv2

    folder = tmp_path / "route"
    folder.mkdir()
    rows = []
    for i, img in enumerate(random_images(10, seed=21)):
        cv2.imwrite(str(folder / f"{i:03d}.png"), img[:, :, ::-1])
        rows.append([f"{i:03d}.png", 2.0 * i, 0.5 * i, 0.0, 0.1 * i, 100.0 + i])
    with open(folder / "poses.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "x", "y", "z", "yaw", "timestamp"])
        w.writerows(rows)
    return folder


@pytest.fixture()
def ckpt(tiny_model, tmp_path):
    path = save_checkpoint(tiny_model, tmp_path / "model.safetensors")
    return path, checkpoint_hash(path)


def test_map_round_trip_identical_search(tiny_model, route, ckpt, tmp_path):
    path, sha = ckpt
    data = load_csv(route / "poses.csv")
    built = build_map(tiny_model, path, sha, data, tmp_path / "map", progress=False)
    loaded = PlaceMap.load(tmp_path / "map")
    q = tiny_model.describe(random_images(3, seed=99))
    s1, i1 = built.search(q, 5)
    s2, i2 = loaded.search(q, 5)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, atol=1e-6)
    np.testing.assert_allclose(loaded.places.positions, data.positions)
    np.testing.assert_allclose(loaded.places.orientations, data.orientations, atol=1e-9)
    assert loaded.manifest.checkpoint_sha256 == sha and loaded.manifest.num_places == 10
    assert "places: 10" in loaded.info()
    # Querying with a map image finds itself first.
    _, ids = loaded.search(tiny_model.describe([data.images[4]]), 1)
    assert ids[0, 0] == 4


def test_add_traverse_and_float16(tiny_model, route, ckpt, tmp_path):
    path, sha = ckpt
    data = load_csv(route / "poses.csv")
    build_map(tiny_model, path, sha, data.subset(range(6)), tmp_path / "m", dtype="float16", progress=False)
    merged = add_to_map(tmp_path / "m", tiny_model, sha, data.subset(range(6, 10)), progress=False)
    assert len(merged) == 10 and len(PlaceMap.load(tmp_path / "m")) == 10
    assert np.load(tmp_path / "m" / "descriptors.npy").dtype == np.float16


def test_mismatch_and_corruption_errors(tiny_model, route, ckpt, tmp_path):
    path, sha = ckpt
    m = tmp_path / "map"
    build_map(tiny_model, path, sha, load_csv(route / "poses.csv"), m, progress=False)
    pmap = PlaceMap.load(m)
    with pytest.raises(MapError, match="descriptor size mismatch"):
        pmap.check_model(tiny_model.descriptor_dim + 1, sha)
    with pytest.raises(MapError, match="checkpoint mismatch"):
        pmap.check_model(tiny_model.descriptor_dim, "0" * 64)
    with pytest.raises(MapError, match="map folder not found"):
        PlaceMap.load(tmp_path / "nowhere")
    (m / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(MapError, match="corrupt FAISS index"):
        PlaceMap.load(m)
    manifest = (m / "manifest.json").read_text()
    (m / "manifest.json").write_text("{not json")
    with pytest.raises(MapError, match="corrupt manifest"):
        PlaceMap.load(m)
    (m / "manifest.json").write_text(manifest)
    (m / "descriptors.npy").write_bytes(b"\x93NUMPY truncated")
    with pytest.raises(MapError, match="corrupt descriptors"):
        PlaceMap.load(m)
    (m / "descriptors.npy").unlink()
    with pytest.raises(MapError, match="descriptors.npy missing"):
        PlaceMap.load(m)


def test_csv_errors_name_file_and_line(route, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("image,x,y\n000.png,1,2\n001.png,abc,2\nmissing.png,1,1\n")
    with pytest.raises(DatasetError, match=r"bad.csv:3: column 'x' is 'abc'"):
        load_csv(bad, route)
    data = load_csv(bad, route, skip_bad=True)
    assert len(data) == 1
    with pytest.raises(DatasetError, match="header"):
        bad.write_text("file,a,b\n")
        load_csv(bad, route)


def test_latlon_csv_converted_to_utm(route, tmp_path):
    f = tmp_path / "gps.csv"
    # Two points 0.001 deg of latitude apart (~111 m) in Brisbane.
    f.write_text("image,lat,lon\n000.png,-27.4770,153.0280\n001.png,-27.4760,153.0280\n")
    data = load_csv(f, route)
    d = np.linalg.norm(data.positions[1] - data.positions[0])
    assert 110 < d < 112
    assert 400000 < data.positions[0, 0] < 600000  # easting near the zone's central meridian


def test_thinning(route):
    data = load_csv(route / "poses.csv")
    kept = thin(data, min_distance=4.0, min_angle_deg=0)
    assert len(kept) == 5  # steps of ~2.06 m: every second frame


def test_rosbag_fixture_builds_map_with_right_poses(tiny_model, ckpt, tmp_path):
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    Image, Odometry = ts.types["sensor_msgs/msg/Image"], ts.types["nav_msgs/msg/Odometry"]
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    G = {n: ts.types[f"geometry_msgs/msg/{n}"] for n in ("Pose", "PoseWithCovariance", "Twist", "TwistWithCovariance",
                                                         "Point", "Quaternion", "Vector3")}
    bag = tmp_path / "bag"
    imgs = random_images(5, seed=4)
    with Writer(bag, version=8) as w:
        ci = w.add_connection("/camera/image_raw", Image.__msgtype__, typestore=ts)
        co = w.add_connection("/odom", Odometry.__msgtype__, typestore=ts)
        for i, img in enumerate(imgs):
            t_img = Time(sec=10 + i, nanosec=0)
            t_odo = Time(sec=10 + i, nanosec=20_000_000)  # 20 ms after the image
            msg = Image(header=Header(stamp=t_img, frame_id="cam"), height=img.shape[0], width=img.shape[1],
                        encoding="rgb8", is_bigendian=0, step=img.shape[1] * 3, data=img.reshape(-1))
            odo = Odometry(header=Header(stamp=t_odo, frame_id="odom"), child_frame_id="base_link",
                           pose=G["PoseWithCovariance"](pose=G["Pose"](position=G["Point"](x=float(i), y=2.0 * i, z=0.0),
                                                                      orientation=G["Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)),
                                                        covariance=np.zeros(36)),
                           twist=G["TwistWithCovariance"](twist=G["Twist"](linear=G["Vector3"](x=0.0, y=0.0, z=0.0),
                                                                          angular=G["Vector3"](x=0.0, y=0.0, z=0.0)),
                                                          covariance=np.zeros(36)))
            w.write(ci, (10 + i) * 10 ** 9, ts.serialize_cdr(msg, Image.__msgtype__))
            w.write(co, (10 + i) * 10 ** 9 + 20_000_000, ts.serialize_cdr(odo, Odometry.__msgtype__))
    data = load_rosbag(bag, "/camera/image_raw", "/odom", tmp_path / "frames")
    assert len(data) == 5 and data.frame_id == "odom"
    np.testing.assert_allclose(data.positions[:, :2], [[i, 2 * i] for i in range(5)])
    path, sha = ckpt
    pmap = build_map(tiny_model, path, sha, data, tmp_path / "bagmap", progress=False)
    _, ids = pmap.search(tiny_model.describe([imgs[3]]), 1)
    assert ids[0, 0] == 3
    with pytest.raises(DatasetError, match="no topic '/nope'"):
        load_rosbag(bag, "/nope", "/odom", tmp_path / "f2")
    with pytest.raises(DatasetError, match="has type"):
        load_rosbag(bag, "/odom", "/odom", tmp_path / "f3")


def test_relative_image_paths_survive_save_and_load(tiny_model, route, ckpt, tmp_path, monkeypatch):
    """A route given with paths relative to the working directory still resolves after loading."""
    monkeypatch.chdir(tmp_path)
    path, sha = ckpt
    data = load_csv("route/poses.csv")
    assert not data.images[0].is_absolute()
    build_map(tiny_model, path, sha, data, "out/map", progress=False)
    loaded = PlaceMap.load("out/map")
    assert all(p.is_file() for p in loaded.places.images)
