from pathlib import Path

import numpy as np
import pytest

from conftest import random_images, route_like
from densernet_core.datasets import DatasetError, load_csv, load_rosbag, thin
from densernet_core.mapping.placemap import MapError, PlaceMap, add_to_map, build_map


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


def test_add_traverse_float16_by_default(tiny_model, route, ckpt, tmp_path):
    path, sha = ckpt
    data = load_csv(route / "poses.csv")
    build_map(tiny_model, path, sha, data.subset(range(6)), tmp_path / "m", progress=False)
    merged = add_to_map(tmp_path / "m", tiny_model, sha, data.subset(range(6, 10)), progress=False)
    assert len(merged) == 10 and len(PlaceMap.load(tmp_path / "m")) == 10
    stored = np.load(tmp_path / "m" / "descriptors.npy")
    assert stored.dtype == np.float16 and not (tmp_path / "m" / "index.faiss").exists()
    _, ids = PlaceMap.load(tmp_path / "m").search(tiny_model.describe([data.images[8]]), 1)
    assert ids[0, 0] == 8


@pytest.mark.parametrize("kind", ["route", "random"])
def test_exact_index_returns_the_exact_top_k(kind):
    """The int8 pre-scan must never change the answer: same ids and scores as a float32 brute force over
    the stored float16 rows, for route-like data and for random data (all near-ties: everything rescored)."""
    from densernet_core.mapping.index import ExactIndex

    if kind == "route":
        db = route_like(700, 8192, 1)
    else:
        db = np.random.default_rng(3).standard_normal((700, 8192)).astype(np.float32)
        db /= np.linalg.norm(db, axis=1, keepdims=True)
    stored = db.astype(np.float16)
    index = ExactIndex(stored)
    assert index.codes is not None  # 700 x 8192 is above the int8 threshold
    rng = np.random.default_rng(4)
    queries = db[rng.choice(700, 40, replace=False)] + 0.3 * rng.standard_normal((40, 8192)).astype(np.float32) / 90
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = queries @ stored.astype(np.float32).T
    scores, ids = index.search(queries, 10)
    for r in range(len(queries)):
        want = np.argsort(-exact[r], kind="stable")[:10]
        np.testing.assert_allclose(scores[r], exact[r, want], rtol=0, atol=1e-5)
        assert set(ids[r]) == set(want) or np.allclose(np.sort(exact[r, ids[r]]), np.sort(exact[r, want]), atol=1e-6)


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_approximate_map_reranks_exactly_and_round_trips(tiny_model, ckpt, tmp_path, kind):
    """A shortlist index proposes, the stored descriptors decide: its scores are exact, and it agrees with
    the exact search on top-1; the coarse index and its projection survive save and load."""
    from densernet_core.datasets import GeoImages
    from densernet_core.mapping.index import ExactIndex

    path, sha = ckpt
    n = 600
    desc = route_like(n, tiny_model.descriptor_dim, 5)
    places = GeoImages([Path(f"p{i}.png") for i in range(n)], np.c_[np.arange(n), np.zeros((n, 2))],
                       np.tile([0, 0, 0, 1.0], (n, 1)), np.arange(n, dtype=float))
    from densernet_core.mapping.placemap import FORMAT_VERSION, Manifest

    manifest = Manifest(FORMAT_VERSION, tiny_model.config.to_dict(), sha, str(path), desc.shape[1], n, "map", "now",
                        kind, "float16")
    PlaceMap(manifest, desc.astype(np.float16), places).save(tmp_path / kind)
    loaded = PlaceMap.load(tmp_path / kind)
    assert (tmp_path / kind / "coarse.npy").is_file() and (tmp_path / kind / "index.faiss").is_file()
    queries = desc[::20] + 0.01 * np.random.default_rng(6).standard_normal((n // 20, desc.shape[1])).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    s_a, i_a = loaded.search(queries, 5)
    s_e, i_e = ExactIndex(desc.astype(np.float16)).search(queries, 5)
    assert np.mean(i_a[:, 0] == i_e[:, 0]) >= 0.95
    stored = desc.astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(s_a, np.take_along_axis(queries @ stored.T, i_a, axis=1), atol=1e-5)


def test_faiss_gpu_copy_is_used_and_a_refused_copy_stays_on_the_cpu(monkeypatch, caplog):
    """faiss-gpu is not installable here: a stand-in of its API checks that the shortlist searches the
    GPU copy (keeping its resources alive), and that a copy the GPU refuses leaves a working CPU index."""
    import faiss

    from densernet_core.mapping.index import ShortlistIndex, build_coarse

    rng = np.random.default_rng(3)
    desc = rng.standard_normal((300, 32)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    coarse = build_coarse(desc, "ivfpq")
    searched = []

    class GpuCopy:
        def __init__(self, index):
            self.index = index

        def search(self, x, k):
            searched.append(len(x))
            return self.index.search(x, k)

    class Resources:
        pass

    monkeypatch.setattr(faiss, "StandardGpuResources", Resources, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", lambda res, dev, index: GpuCopy(index), raising=False)
    index = ShortlistIndex(coarse, None, desc)
    assert isinstance(index._gpu_resources, Resources) and index.coarse is coarse  # the CPU index is what is saved
    assert index._lists is None  # no CPU lists to split: the GPU copy searches as it is
    _, ids = index.search(desc[:3], 1)
    assert searched == [3] and ids[:, 0].tolist() == [0, 1, 2]

    def refuse(res, dev, index):
        raise RuntimeError("Error in GpuIndexIVFPQ: Bits per code 8 with 64 sub-quantizers is not supported")

    monkeypatch.setattr(faiss, "index_cpu_to_gpu", refuse, raising=False)
    caplog.set_level("WARNING", logger="densernet")
    index = ShortlistIndex(coarse, None, desc)
    assert "searching it on the CPU" in caplog.text and index._gpu_resources is None
    assert index.search(desc[:3], 1)[1][:, 0].tolist() == [0, 1, 2]


def test_format_1_map_still_loads(tiny_model, route, ckpt, tmp_path):
    """Maps written before format 2 (float32 descriptors and a FAISS flat index) keep working."""
    import json

    import faiss

    path, sha = ckpt
    data = load_csv(route / "poses.csv")
    m = tmp_path / "v1"
    build_map(tiny_model, path, sha, data, m, dtype="float32", progress=False)
    manifest = json.loads((m / "manifest.json").read_text())
    manifest["format_version"] = 1
    (m / "manifest.json").write_text(json.dumps(manifest))
    flat = faiss.IndexFlatIP(manifest["descriptor_dim"])
    flat.add(np.load(m / "descriptors.npy"))
    faiss.write_index(flat, str(m / "index.faiss"))
    _, ids = PlaceMap.load(m).search(tiny_model.describe([data.images[2]]), 1)
    assert ids[0, 0] == 2


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
    approx = tmp_path / "approx"
    build_map(tiny_model, path, sha, load_csv(route / "poses.csv"), approx, index_type="hnsw", progress=False)
    (approx / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(MapError, match="corrupt FAISS index"):
        PlaceMap.load(approx)
    (approx / "index.faiss").unlink()
    with pytest.raises(MapError, match="index file not found"):
        PlaceMap.load(approx)
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
    Info = ts.types["sensor_msgs/msg/CameraInfo"]
    with Writer(bag, version=8) as w:
        ci = w.add_connection("/camera/image_raw", Image.__msgtype__, typestore=ts)
        co = w.add_connection("/odom", Odometry.__msgtype__, typestore=ts)
        cc = w.add_connection("/camera/camera_info", Info.__msgtype__, typestore=ts)
        info = Info(header=Header(stamp=Time(sec=10, nanosec=0), frame_id="cam"), height=imgs[0].shape[0],
                    width=imgs[0].shape[1], distortion_model="plumb_bob", d=np.array([0.1, -0.05, 0.0, 0.0, 0.0]),
                    k=np.array([50.0, 0, 31.5, 0, 51.0, 23.5, 0, 0, 1]), r=np.eye(3).reshape(-1),
                    p=np.zeros(12), binning_x=0, binning_y=0,
                    roi=ts.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                                     do_rectify=False))
        w.write(cc, 10 * 10 ** 9, ts.serialize_cdr(info, Info.__msgtype__))
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
    from densernet_core.camera import Camera, camera_from_bag
    from densernet_core.config import ConfigError

    assert camera_from_bag(bag, "/camera/camera_info") == Camera(imgs[0].shape[1], imgs[0].shape[0], 50.0, 51.0, 31.5,
                                                                  23.5, (0.1, -0.05, 0.0, 0.0, 0.0))
    with pytest.raises(ConfigError, match="has type nav_msgs/msg/Odometry"):
        camera_from_bag(bag, "/odom")
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


def test_localize_ground_truth_matched_by_file_name(tiny_model, route, ckpt, tmp_path, capsys, caplog):
    """--gt rows belong to query frames by file name, wherever the CSV and the images are."""
    from densernet_core.localization.cli import main as localize

    path, sha = ckpt
    build_map(tiny_model, path, sha, load_csv(route / "poses.csv"), tmp_path / "map", progress=False)
    elsewhere = tmp_path / "gt" / "deeper"
    elsewhere.mkdir(parents=True)
    rows = (route / "poses.csv").read_text().splitlines()
    gt = elsewhere / "truth.csv"  # image column points at a folder that does not exist: only names count
    gt.write_text("\n".join([rows[0]] + [f"/nowhere/{r}" for r in rows[1:]]) + "\n")
    queries = [str(route / f"{i:03d}.png") for i in (2, 5)]
    assert localize([*queries, "--map", str(tmp_path / "map"), "--gt", str(gt), "--plot", str(tmp_path / "t.png")]) == 0
    out = capsys.readouterr().out
    assert "002.png: single: place" in out and "error" in out and "single: fixes" in out
    gt.write_text("\n".join(rows[:3]) + "\n")  # 000 and 001 only
    assert localize([*queries, "--map", str(tmp_path / "map"), "--gt", str(gt)]) == 1
    assert "no ground truth for 2 frame(s)" in caplog.text and "matched by file name" in caplog.text


def test_localize_sequence_reports_single_and_filtered_with_odometry(tiny_model, route, ckpt, tmp_path, capsys):
    """--sequence runs the belief filter over the frames in order, beside the single-frame answers; per-frame
    poses given with --odometry (matched by file name) move it; the CSV holds both answers."""
    import csv as csv_module

    from densernet_core.localization.cli import main as localize

    path, sha = ckpt
    build_map(tiny_model, path, sha, load_csv(route / "poses.csv"), tmp_path / "map", progress=False)
    args = [str(route), "--map", str(tmp_path / "map"), "--gt", str(route / "poses.csv"), "--sequence",
            "--odometry", str(route / "poses.csv"), "--out", str(tmp_path / "seq.csv"), "--thresholds", "1", "2.5"]
    assert localize(args) == 0
    out = capsys.readouterr().out
    assert "filtered: fixes" in out and "single: fixes" in out and "motion between frames from: odometry 9" in out
    rows = list(csv_module.DictReader(open(tmp_path / "seq.csv")))
    fields = ("fix", "place", "x", "y", "z", "qx", "qy", "qz", "qw", "sigma_x", "confidence", "reason", "error")
    assert len(rows) == 10 and list(rows[0]) == ["frame", "stamp", "top_score"] + [
        f"{m}_{c}" for m in ("single", "filtered") for c in fields] + ["latency_ms"]
    gt = load_csv(route / "poses.csv")
    truth = {Path(p).name: pos for p, pos in zip(gt.images, gt.positions)}
    fixed = [r for r in rows if r["filtered_fix"] == "True"]
    assert fixed, rows
    for r in fixed:  # the file's pose, its error column and the truth agree
        q = np.array([float(r[f"filtered_q{a}"]) for a in "xyzw"])
        assert abs(np.linalg.norm(q) - 1) < 1e-3
        err = np.linalg.norm(np.array([float(r["filtered_x"]), float(r["filtered_y"])]) - truth[r["frame"]][:2])
        assert abs(err - float(r["filtered_error"])) < 1e-3, (r, err)
    assert "% <= 1 m, " in out.split("filtered: fixes", 1)[1] and "% <= 2.5 m" in out  # each tolerance given
    assert (tmp_path / "seq.png").stat().st_size > 1000
    assert localize([str(route), "--map", str(tmp_path / "map"), "--odom-topic", "/odom"]) == 1  # needs --bag


def test_a_corrupt_frame_costs_only_itself(tiny_model, route, ckpt, tmp_path, caplog, monkeypatch):
    """densernet-localize over a folder with one undecodable image: the error names it, the CSV gives it a
    row that says so, and every other frame gets the answer it gets without the bad file (the run does not
    stop at it); the exit status is 1. Rows are written as frames are answered, so a run stopped part way
    keeps them."""
    import csv as csv_module

    from densernet_core.localization import localizer as localizer_module
    from densernet_core.localization.cli import main as localize

    path, sha = ckpt
    build_map(tiny_model, path, sha, load_csv(route / "poses.csv"), tmp_path / "map", progress=False)
    common = ["--map", str(tmp_path / "map"), "--sequence"]
    caplog.set_level("INFO", logger="densernet")
    assert localize([str(route), *common, "--out", str(tmp_path / "clean.csv")]) == 0
    assert "BLAS threads (frame by frame beside the network's): openblas 1 (" in caplog.text
    (route / "004.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)  # a truncated PNG
    caplog.clear()
    assert localize([str(route), *common, "--out", str(tmp_path / "bad.csv")]) == 1
    assert "cannot decode image" in caplog.text and "004.png" in caplog.text and "1 of 10 frames" in caplog.text
    clean = list(csv_module.DictReader(open(tmp_path / "clean.csv")))
    bad = list(csv_module.DictReader(open(tmp_path / "bad.csv")))
    assert [r["frame"] for r in bad] == [r["frame"] for r in clean]
    broken = bad[4]
    assert broken["single_fix"] == broken["filtered_fix"] == "False" and broken["single_place"] == ""
    assert broken["single_reason"].startswith("unreadable: cannot decode image")
    single = ("single_place", "single_x", "single_y", "single_confidence", "single_reason")
    for a, b in zip(clean, bad):  # single-frame answers depend on the frame alone
        if a["frame"] != "004.png":
            assert [a[k] for k in single] == [b[k] for k in single], (a, b)
            assert b["filtered_place"] != ""
    # Stopped at the sixth frame: the five answered are on disk.
    calls = {"n": 0}
    original = localizer_module.Localizer.localize

    def stop_at_sixth(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise RuntimeError("stopped")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(localizer_module.Localizer, "localize", stop_at_sixth)
    assert localize([str(route), *common, "--out", str(tmp_path / "part.csv")]) == 1
    part = list(csv_module.DictReader(open(tmp_path / "part.csv")))
    assert [r["frame"] for r in part] == [f"{i:03d}.png" for i in range(6)]  # five answers and the unreadable 004
    assert [r["single_place"] for r in part if r["frame"] != "004.png"] == \
        [r["single_place"] for r in clean[:6] if r["frame"] != "004.png"]
    for name in (f"{i:03d}.png" for i in range(10)):
        (route / name).write_bytes(b"not an image")
    assert localize([str(route), *common]) == 1
    assert "all 10 could not be decoded" in caplog.text
    assert localize([str(route), *common, "--fps", "-2"]) == 1
    assert "--fps must be a frame rate > 0, got -2.0" in caplog.text
    # The filter's options without the filter were ignored; now refused, each named. With it, checked.
    caplog.clear()
    assert localize([str(route), "--map", str(tmp_path / "map"), "--fix-mass", "0.9", "--odometry",
                     str(route / "poses.csv")]) == 1
    assert "--fix-mass, --odometry set the place belief filter, which runs only with --sequence" in caplog.text
    assert localize([str(route), *common, "--fix-mass", "1.5"]) == 1
    assert "fix_mass=1.5" in caplog.text


def test_video_stamps_follow_the_container_clock(tmp_path, caplog):
    """A variable-rate video (a phone's): frame 5 of a 2 Hz MKV shown 200 ms late (its cluster's timecode
    moved) is stamped 2.7 s, not 2.5 as counting frames gave; names stay consecutive, no warning; `fps`
    overrides the clock."""
    import cv2

    from densernet_core.localization.sequence import video_frames

    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(tmp_path / "drive.mkv"), cv2.VideoWriter_fourcc(*"MJPG"), 2.0, (96, 64))
    for _ in range(10):
        writer.write(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    writer.release()
    data = bytearray((tmp_path / "drive.mkv").read_bytes())
    jpeg = [i for i in range(len(data)) if data.startswith(b"\xff\xd8\xff", i)][5]
    timecode = data.rindex(b"\xe7", 0, data.rindex(b"\xa3", 0, jpeg))  # frame 5's cluster: E7, size, milliseconds
    size = data[timecode + 1] & 0x7F
    value = int.from_bytes(data[timecode + 2:timecode + 2 + size], "big")
    assert value == 2500
    data[timecode + 2:timecode + 2 + size] = (value + 200).to_bytes(size, "big")
    (tmp_path / "vfr.mkv").write_bytes(data)
    frames = list(video_frames(tmp_path / "vfr.mkv"))
    assert [f.name for f in frames] == [f"vfr.mkv#{i:06d}" for i in range(10)] and all(f.error is None for f in frames)
    assert [f.stamp for f in frames] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.7, 3.0, 3.5, 4.0, 4.5])
    assert "vfr.mkv" not in caplog.text
    assert [f.stamp for f in video_frames(tmp_path / "vfr.mkv", fps=4.0)] == pytest.approx([i / 4 for i in range(10)])


def test_a_video_cut_short_is_localized_as_far_as_it_goes_and_said(tiny_model, route, ckpt, tmp_path, caplog):
    """densernet-localize over a video: frames named <file>#<index> and stamped from the container's rate.
    Cut off part way (a copy that stopped, a recording whose writer died), OpenCV ends the file quietly;
    the frames it holds are answered and the shortfall against the container's declared count is named.
    A frame damaged in the middle (which OpenCV's read() fails on as it does at the end) is one unreadable
    row in its place, and the frames after it are answered. Cut inside its first frame, the video is an
    unreadable input, not silently nothing."""
    import csv as csv_module

    import cv2

    from densernet_core.localization.cli import main as localize

    path, sha = ckpt
    build_map(tiny_model, path, sha, load_csv(route / "poses.csv"), tmp_path / "map", progress=False)
    video = tmp_path / "drive.avi"
    first = cv2.imread(str(route / "000.png"))
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 2.0, (first.shape[1], first.shape[0]))
    for i in range(10):
        writer.write(cv2.imread(str(route / f"{i:03d}.png")))
    writer.release()
    common = ["--map", str(tmp_path / "map"), "--sequence"]
    assert localize([str(video), *common, "--out", str(tmp_path / "whole.csv")]) == 0
    whole = list(csv_module.DictReader(open(tmp_path / "whole.csv")))
    assert [(r["frame"], r["stamp"]) for r in whole] == [(f"drive.avi#{i:06d}", f"{i / 2:.6f}") for i in range(10)]
    assert "declares" not in caplog.text
    data = video.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[:int(len(data) * 0.6)])
    caplog.clear()
    assert localize([str(cut), *common, "--out", str(tmp_path / "cut.csv")]) == 0
    rows = list(csv_module.DictReader(open(tmp_path / "cut.csv")))
    assert 0 < len(rows) < 10
    assert f"decoded {len(rows)} of the 10 frames its container declares" in caplog.text and "cut.avi" in caplog.text
    single = ("single_place", "single_reason")  # the frames it holds are the same frames
    assert [[r[k] for k in single] for r in rows] == [[r[k] for k in single] for r in whole[:len(rows)]]
    starts = [i for i in range(len(data)) if data.startswith(b"\xff\xd8\xff", i)]  # each frame's JPEG
    assert len(starts) == 10
    damaged = bytearray(data)
    damaged[starts[4] + 100:starts[5] - 100] = bytes(starts[5] - starts[4] - 200)  # frame 4's picture zeroed
    (tmp_path / "damaged.avi").write_bytes(damaged)
    caplog.clear()
    assert localize([str(tmp_path / "damaged.avi"), *common, "--out", str(tmp_path / "damaged.csv")]) == 1
    rows = list(csv_module.DictReader(open(tmp_path / "damaged.csv")))  # read on past it, in its place
    assert [(r["frame"], r["stamp"]) for r in rows] == [(f"damaged.avi#{i:06d}", f"{i / 2:.6f}") for i in range(10)]
    assert rows[4]["single_reason"].startswith("unreadable:") and "frame 4 cannot be decoded" in caplog.text
    assert [[r[k] for k in single] for i, r in enumerate(rows) if i != 4] == \
        [[r[k] for k in single] for i, r in enumerate(whole) if i != 4]
    assert "declares" not in caplog.text and "1 of 10 frames" in caplog.text
    mkv = tmp_path / "drive.mkv"  # a container with a clock: a frame its demuxer drops leaves no read error
    writer = cv2.VideoWriter(str(mkv), cv2.VideoWriter_fourcc(*"MJPG"), 2.0, (first.shape[1], first.shape[0]))
    for i in range(10):
        writer.write(cv2.imread(str(route / f"{i:03d}.png")))
    writer.release()
    blocks = bytearray(mkv.read_bytes())
    jpeg = [i for i in range(len(blocks)) if blocks.startswith(b"\xff\xd8\xff", i)][4]
    blocks[blocks.rindex(b"\xa3", 0, jpeg)] = 0xEC  # frame 4's SimpleBlock marked Void: skipped without a sign
    (tmp_path / "dropped.mkv").write_bytes(blocks)
    caplog.clear()
    assert localize([str(tmp_path / "dropped.mkv"), *common, "--out", str(tmp_path / "dropped.csv")]) == 0
    rows = list(csv_module.DictReader(open(tmp_path / "dropped.csv")))
    assert [r["stamp"] for r in rows] == [f"{i / 2:.6f}" for i in range(10) if i != 4]  # the container's clock
    assert [[r[k] for k in single] for r in rows] == [[r[k] for k in single] for i, r in enumerate(whole) if i != 4]
    assert "decoded 9 of the 10 frames" in caplog.text and "skips before #000004 (1.500 s -> 2.500 s)" in caplog.text
    header_only = tmp_path / "header.avi"
    header_only.write_bytes(data[:data.index(b"movi") + 20])  # opens; its first frame is cut
    caplog.clear()
    assert localize([str(header_only), str(video), *common]) == 1
    assert "header.avi" in caplog.text and "has no decodable frame" in caplog.text and "1 of 11 frames" in caplog.text


def test_describe_leaves_out_an_undecodable_image_and_says_so(tiny_model, route, ckpt, tmp_path, caplog):
    """densernet describe over a folder with one corrupt file: the others are described as without it, the
    image list beside the .npy names each row's image, the error names the file, exit status 1."""
    from densernet_core.cli import main as densernet

    path, _ = ckpt
    assert densernet(["describe", "--checkpoint", str(path), "--out", str(tmp_path / "clean.npy"), str(route)]) == 0
    (route / "003.png").write_bytes(b"")
    assert densernet(["describe", "--checkpoint", str(path), "--out", str(tmp_path / "bad.npy"),
                      "--batch-size", "4", str(route)]) == 1
    assert "003.png" in caplog.text and "1 of 10 images could not be decoded" in caplog.text
    clean, bad = np.load(tmp_path / "clean.npy"), np.load(tmp_path / "bad.npy")
    names = (tmp_path / "bad.txt").read_text().split()
    assert len(bad) == len(names) == 9 and not any(n.endswith("003.png") for n in names)
    keep = [i for i in range(10) if i != 3]
    np.testing.assert_allclose(bad, clean[keep], atol=1e-5)
    assert densernet(["describe", "--checkpoint", str(path), "--out", str(tmp_path / "x.npy"), "--batch-size", "0",
                      str(route)]) == 1
    assert "--batch-size must be at least 1, got 0" in caplog.text


def test_a_large_map_s_places_hold_no_python_object_per_place(tmp_path):
    """A node loads the map's places: 10^6 image paths as Path objects held ~900 MB in every such process.
    Read back, the paths are one string array (a Path made on access); relative ones resolve from the folder."""
    import csv
    import gc

    from densernet_core.mapping.placemap import PLACE_FIELDS, read_places

    n = 20000
    with open(tmp_path / "places.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(PLACE_FIELDS)
        for i in range(n):
            image = f"/data/run/{i:07d}.png" if i % 2 else f"images/{i:07d}.png"
            image = "images/a, b #5.png" if i == 5 else image  # quoted by the writer
            image = "images/#7.png" if i == 7 else image  # not quoted: '#' is no comment either
            w.writerow([i, image, float(i), 0, 0, 0, 0, 0, 1, f"{i:.9f}", "run" if i < n // 2 else "other"])
    gc.collect()
    before = len(gc.get_objects())
    places = read_places(tmp_path / "places.csv", tmp_path, "map")
    gc.collect()
    assert len(gc.get_objects()) - before < 1000  # Path objects (and their parts lists) are tracked: 2 per place
    assert places.images[1] == Path("/data/run/0000001.png") and places.images[2] == tmp_path / "images/0000002.png"
    assert places.names[3] == "0000003.png" and list(places.names[:2]) == ["0000000.png", "0000001.png"]
    assert places.place_sources[0] == "run" and places.place_sources[-1] == "other"
    assert len(places) == n and places.source == "run;other"
    assert places.images[5] == tmp_path / "images/a, b #5.png" and places.positions[5, 0] == 5.0
    assert places.images[7] == tmp_path / "images/#7.png" and places.positions[7, 0] == 7.0
    lines = (tmp_path / "places.csv").read_text().splitlines()
    lines[7] = lines[7].replace(",6.0,", ",six,")  # line 8 of the file: place 6
    (tmp_path / "bad.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(MapError, match=r"bad.csv:8: bad row \(could not convert string to float: 'six'\)"):
        read_places(tmp_path / "bad.csv", tmp_path, "map")
    lines = (tmp_path / "places.csv").read_text().splitlines()
    lines[4] = "9" + lines[4][1:]  # place 3 numbered 9
    (tmp_path / "order.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(MapError, match=r"order.csv:5: bad row \(id 9 out of order\)"):
        read_places(tmp_path / "order.csv", tmp_path, "map")


def test_places_are_written_as_path_resolve_writes_them(tmp_path):
    """places.csv without a Path per place: inside the map folder relative, outside absolute, links resolved
    (a linked folder, a linked file, a path with '..' and one that does not exist) as Path.resolve() does."""
    import csv

    from densernet_core.datasets import GeoImages
    from densernet_core.mapping.placemap import read_places, write_places

    folder, data = tmp_path / "map", tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    (data / "run").mkdir(parents=True)
    for p in (folder / "images" / "a.png", data / "run" / "b.png", data / "run" / "c.png"):
        p.write_bytes(b"x")
    (tmp_path / "linked_run").symlink_to(data / "run")  # a linked folder
    (data / "run" / "link.png").symlink_to(folder / "images" / "a.png")  # a file linking into the map
    (folder / "outside").symlink_to(data / "run")  # a link inside the map pointing out of it
    images = [folder / "images" / "a.png", data / "run" / "b.png", tmp_path / "linked_run" / "c.png",
              data / "run" / "link.png", folder / "outside" / "b.png", data / "run" / ".." / "run" / "c.png",
              data / "missing" / "d.png", Path("relative") / "e.png"]
    n = len(images)
    places = GeoImages(images, np.arange(3 * n, dtype=float).reshape(n, 3) / 7, np.tile([0, 0, 0, 1.0], (n, 1)),
                       np.arange(n) * 0.1, "run", True)
    write_places(tmp_path / "new.csv", folder, places)
    with open(tmp_path / "old.csv", "w", newline="") as f:  # what save() wrote before, a Path per place
        w = csv.writer(f)
        w.writerow(["id", "image", "x", "y", "z", "qx", "qy", "qz", "qw", "timestamp", "source"])
        for i in range(n):
            img = Path(places.images[i]).resolve()
            try:
                img = img.relative_to(folder.resolve())
            except ValueError:
                pass
            w.writerow([i, str(img), *places.positions[i], *places.orientations[i], f"{places.timestamps[i]:.9f}",
                        places.place_sources[i]])
    assert (tmp_path / "new.csv").read_text() == (tmp_path / "old.csv").read_text()
    rows = (tmp_path / "new.csv").read_text().splitlines()
    assert rows[1].split(",")[1] == "images/a.png" and rows[4].split(",")[1] == "images/a.png"  # the link, followed
    back = read_places(tmp_path / "new.csv", folder, "map")
    write_places(tmp_path / "again.csv", folder, back)  # read back (one string column) and written again
    assert (tmp_path / "again.csv").read_text() == (tmp_path / "new.csv").read_text()


def _haversine(lat1, lon1, lat2, lon2) -> float:
    p1, p2, dl = np.radians(lat1), np.radians(lat2), np.radians(lon2 - lon1)
    h = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return float(2 * 6371008.8 * np.arcsin(np.sqrt(h)))


def test_lat_lon_across_a_zone_edge_and_the_equator_stays_one_metric_frame():
    """Rome's 12.5 E is zone 33, its west 32; Quito's routes cross the equator. Neighbours 111 m apart stay
    about 111 m apart in UTM (each file's own first point, or each point's hemisphere, put them ~500 km
    or 10,000 km apart), and a zone given (the map's) is kept."""
    from densernet_core.datasets import DatasetError, latlon_to_utm

    for lat, lon in (((41.9, 41.9), (11.9994, 12.0006)), ((0.0005, -0.0005), (-78.45, -78.45))):
        east, north, zone = latlon_to_utm(np.array(lat), np.array(lon))
        grid = float(np.hypot(east[1] - east[0], north[1] - north[0]))
        assert grid == pytest.approx(_haversine(lat[0], lon[0], lat[1], lon[1]), rel=5e-3), zone  # a sphere: ~0.3 %
    e33, _, zone = latlon_to_utm(np.array([41.9]), np.array([12.0006]))
    e32, _, zone32 = latlon_to_utm(np.array([41.9]), np.array([12.0006]), "32N")
    assert (zone, zone32) == ("33N", "32N") and abs(e33[0] - e32[0]) > 400_000
    with pytest.raises(DatasetError, match="'61N' is not a zone"):
        latlon_to_utm(np.array([41.9]), np.array([12.0]), "61N")


def test_a_lat_lon_traverse_added_over_a_zone_edge_lands_on_the_map(tiny_model, route, ckpt, tmp_path, capsys):
    """The map (zone 32N, west of 12 E) records its zone; `densernet-map add` projects a traverse that starts
    east of 12 E in it, so its places land beside the map's; the ground truth of densernet-localize too."""
    import csv as csvlib
    import json

    from densernet_core.localization.cli import read_ground_truth
    from densernet_core.mapping.cli import main as map_main

    path, _ = ckpt
    images = sorted(route.glob("*.png"))
    lons = 11.9990 + 0.0002 * np.arange(len(images))  # 17 m apart, 12 E between images 4 and 5

    def write(name: str, rows: range) -> Path:
        with open(route / name, "w", newline="") as f:
            w = csvlib.writer(f)
            w.writerow(["image", "lat", "lon"])
            w.writerows([[images[i].name, 41.9, f"{lons[i]:.6f}"] for i in rows])
        return route / name

    m = tmp_path / "m"
    assert map_main(["build", "--checkpoint", str(path), "--poses", str(write("west.csv", range(5))), "--out",
                     str(m), "--no-progress"]) == 0
    assert json.loads((m / "manifest.json").read_text())["utm_zone"] == "32N"
    assert "positions: UTM zone 32N (from lat/lon" in PlaceMap.load(m).info()
    assert map_main(["add", str(m), "--checkpoint", str(path), "--poses", str(write("east.csv", range(5, 10))),
                     "--no-progress"]) == 0
    capsys.readouterr()
    east = PlaceMap.load(m).places.positions[:, 0]
    steps = np.diff(east)
    assert np.all(np.abs(steps - 16.6) < 0.5), steps  # one metric frame: no 500 km jump at the fifth place
    truth, zone = read_ground_truth(str(write("truth.csv", range(10))), "32N")
    assert zone == "32N"
    np.testing.assert_allclose([truth[p.name][0] for p in images], east, atol=1e-6)


def test_lat_lon_and_local_x_y_are_not_mixed_in_one_map(tiny_model, route, ckpt, tmp_path, caplog):
    """A GPS traverse added to a map of local x/y (or x/y to a map made from GPS) would land hundreds of km
    from its places, silently: it is refused by name and the map is left as it was; ground truth in the
    other kind is refused before any error is reported. A map made from lat/lon before maps recorded their
    zone (its places UTM-like) still takes a GPS traverse, with a warning, and records the zone."""
    import json

    from densernet_core.localization.cli import main as localize
    from densernet_core.mapping.cli import main as map_main

    path, sha = ckpt
    images = sorted(route.glob("*.png"))
    gps = route / "gps.csv"
    gps.write_text("image,lat,lon\n" + "".join(f"{p.name},41.9,{11.9990 + 0.0002 * i:.6f}\n"
                                                for i, p in enumerate(images)))
    local = tmp_path / "local"  # the route's own x/y (0-18 m)
    assert map_main(["build", "--checkpoint", str(path), "--poses", str(route / "poses.csv"), "--out", str(local),
                     "--no-progress"]) == 0
    assert map_main(["add", str(local), "--checkpoint", str(path), "--poses", str(gps), "--no-progress"]) == 1
    assert "came as lat/lon (UTM zone 32N), but the map's places are x/y in a local frame (x 0 to 18 m" in caplog.text
    assert PlaceMap.load(local).manifest.num_places == 10 and PlaceMap.load(local).manifest.utm_zone == ""
    caplog.clear()
    assert localize([str(route), "--map", str(local), "--gt", str(gps)]) == 1
    assert "ground truth" in caplog.text and "x/y in a local frame" in caplog.text

    geo = tmp_path / "geo"
    assert map_main(["build", "--checkpoint", str(path), "--poses", str(gps), "--out", str(geo), "--no-progress"]) == 0
    caplog.clear()
    assert map_main(["add", str(geo), "--checkpoint", str(path), "--poses", str(route / "poses.csv"),
                     "--no-progress"]) == 1
    assert "is x/y in a local frame (x 0 to 18 m" in caplog.text and "zone 32N" in caplog.text
    assert PlaceMap.load(geo).manifest.num_places == 10

    manifest = json.loads((geo / "manifest.json").read_text())  # as a map made before the zone was recorded
    manifest.pop("utm_zone")
    (geo / "manifest.json").write_text(json.dumps(manifest))
    caplog.clear()
    assert map_main(["add", str(geo), "--checkpoint", str(path), "--poses", str(gps), "--no-progress"]) == 0
    assert "does not record a UTM zone" in caplog.text
    added = PlaceMap.load(geo)
    assert added.manifest.utm_zone == "32N" and added.manifest.num_places == 20
    np.testing.assert_allclose(added.places.positions[10:], added.places.positions[:10])


def test_a_map_in_utm_metres_gets_a_local_origin_that_its_places_and_points_move_to(tiny_model, route, ckpt,
                                                                                    tmp_path):
    """A map made from lat/lon holds UTM metres (northings of 4.6e6 here); its origin for a local map frame is
    its first place in whole metres, recorded in the manifest (and the same for a map made before it was); the
    node's Localizer moves places, points and the belief there. A map of local x/y has none and does not move."""
    import json

    from densernet_core.datasets import latlon_to_utm, local_origin
    from densernet_core.localization.belief import BeliefConfig
    from densernet_core.localization.localizer import Localizer
    from densernet_core.mapping.cli import main as map_main
    from densernet_core.mapping.points import MapPoints

    path, _ = ckpt
    images = sorted(route.glob("*.png"))
    gps = route / "gps.csv"
    gps.write_text("image,lat,lon\n" + "".join(f"{p.name},41.9,{11.9990 + 0.0002 * i:.6f}\n"
                                                for i, p in enumerate(images)))
    geo, local = tmp_path / "geo", tmp_path / "local"
    for poses, out in ((gps, geo), (route / "poses.csv", local)):
        assert map_main(["build", "--checkpoint", str(path), "--poses", str(poses), "--out", str(out),
                         "--no-progress"]) == 0
    east, north, _ = latlon_to_utm(np.array([41.9]), np.array([11.9990]), "32N")
    want = [round(float(east[0])), round(float(north[0])), 0.0]
    assert json.loads((geo / "manifest.json").read_text())["map_origin"] == want
    assert json.loads((local / "manifest.json").read_text())["map_origin"] is None
    assert f"local map frame: origin at x {want[0]}, y {want[1]}" in PlaceMap.load(geo).info()
    assert "local map frame" not in PlaceMap.load(local).info()
    manifest = json.loads((geo / "manifest.json").read_text())  # as a map made before the origin was recorded
    manifest.pop("map_origin")
    (geo / "manifest.json").write_text(json.dumps(manifest))
    assert PlaceMap.load(geo).origin.tolist() == want
    for bad in ([1.0, 2.0], "700000,5600000", [1.0, None, 0.0]):  # hand-edited: refused by name, not a numpy error
        (geo / "manifest.json").write_text(json.dumps({**manifest, "map_origin": bad}))
        with pytest.raises(MapError, match="map_origin .* is not \\[x, y, z\\]"):
            PlaceMap.load(geo)
    (geo / "manifest.json").write_text(json.dumps(manifest))
    assert local_origin(np.array([[700000.4, 5600000.6, 31.0]])).tolist() == [700000.0, 5600001.0, 0.0]  # UTM x/y
    assert local_origin(np.array([[12.0, 3.0, 0.0]])) is None

    pmap = PlaceMap.load(geo)
    stored = pmap.places.positions.copy()
    pmap.points = MapPoints(None, "sift", stored[:3] + [0.0, 0.0, 1.5], np.zeros((0, 2), np.int64),
                            np.zeros((0, 2)), np.zeros((0, 128), np.float16))
    np.testing.assert_array_equal(pmap.recentre(), want)
    pmap.recentre()  # once only
    np.testing.assert_allclose(pmap.places.positions, stored - want, atol=1e-9)
    np.testing.assert_allclose(pmap.points.xyz, stored[:3] + [0.0, 0.0, 1.5] - want, atol=1e-9)
    assert np.abs(pmap.places.positions[:, :2]).max() < 200  # metres from the origin, not 4.6e6
    with pytest.raises(MapError, match="moved to its local frame"):
        pmap.save(tmp_path / "moved")
    np.testing.assert_array_equal(PlaceMap.load(geo).places.positions, stored)  # the files keep UTM metres

    loc = Localizer.from_paths(geo, path, belief=BeliefConfig(), mode="filtered", metric=None, local_frame=True)
    np.testing.assert_allclose(loc.filter.positions, stored - want, atol=1e-9)
    assert loc.seed(stored[4] - want, np.eye(3) * 0.01) >= 1
    assert np.linalg.norm(loc.filter.estimate().position - (stored[4] - want)) < 1.0
    assert not Localizer.from_paths(local, path, metric=None, local_frame=True).map.recentred
