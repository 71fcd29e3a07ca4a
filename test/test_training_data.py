"""Loaders and configs the trainer reads: NetVLAD .mat files, source specs, the experiment YAML."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from scipy.io import savemat

from conftest import random_images
from densernet_core.config import ConfigError
from densernet_core.datasets import DatasetError, load_netvlad_mat
from densernet_core.training.sources import SourceSpec, load_source, load_split
from densernet_core.training.train_config import eval_data_from, load_train_config


def write_images(folder: Path, names: list[str]) -> None:
    for name, img in zip(names, random_images(len(names), 32, 32)):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), img)


def netvlad_mat(path: Path, db_names, q_names, utm_db, utm_q, drop: str = "") -> Path:
    """The layout of pitts30k_train.mat / tokyoTM_val.mat: one dbStruct with these fields."""
    cell = lambda names: np.array([[n] for n in names], dtype=object)  # noqa: E731 - MATLAB cell column
    fields = {"whichSet": "train", "dbImageFns": cell(db_names), "utmDb": np.asarray(utm_db).T,
              "qImageFns": cell(q_names), "utmQ": np.asarray(utm_q).T, "numImages": len(db_names),
              "numQueries": len(q_names), "posDistThr": 25.0, "posDistSqThr": 625.0, "nonTrivPosDistSqThr": 100.0}
    fields.pop(drop, None)
    savemat(str(path), {"dbStruct": fields})
    return path


def test_netvlad_mat_both_splits(tmp_path):
    db_names = [f"000/00{i}_pitch1_yaw1.jpg" for i in range(4)]
    q_names = [f"queries/q{i}.jpg" for i in range(2)]
    write_images(tmp_path / "images", db_names + q_names)
    utm_db = [[585000.0 + 10 * i, 4477000.0] for i in range(4)]
    utm_q = [[585001.0, 4477000.5], [585031.0, 4477001.0]]
    mat = netvlad_mat(tmp_path / "pitts_train.mat", db_names, q_names, utm_db, utm_q)
    db = load_netvlad_mat(mat, tmp_path / "images", "database")
    q = load_netvlad_mat(mat, tmp_path / "images", "queries")
    assert len(db) == 4 and len(q) == 2
    np.testing.assert_allclose(db.positions[:, :2], utm_db)
    np.testing.assert_allclose(q.positions[:, :2], utm_q)
    assert db.names == db_names and db.images[0] == tmp_path / "images" / db_names[0]
    split = load_split((SourceSpec(type="mat", path=str(mat), image_root=str(tmp_path / "images")),))
    assert len(split.data) == 4 and split.group_names == [f"{mat}:database"]


def test_netvlad_mat_errors_are_clear(tmp_path):
    names = ["a.jpg", "b.jpg"]
    write_images(tmp_path, names)
    utm = [[0.0, 0.0], [1.0, 1.0]]
    broken = netvlad_mat(tmp_path / "nofield.mat", names, names, utm, utm, drop="utmQ")
    with pytest.raises(DatasetError, match="no field 'utmQ'"):
        load_netvlad_mat(broken, tmp_path, "queries")
    truncated = tmp_path / "truncated.mat"
    truncated.write_bytes(netvlad_mat(tmp_path / "ok.mat", names, names, utm, utm).read_bytes()[:100])
    with pytest.raises(DatasetError, match="truncated.mat"):
        load_netvlad_mat(truncated, tmp_path, "database")
    savemat(str(tmp_path / "other.mat"), {"x": np.zeros(3)})
    with pytest.raises(DatasetError, match="no 'dbStruct'"):
        load_netvlad_mat(tmp_path / "other.mat", tmp_path, "database")
    missing = netvlad_mat(tmp_path / "missing.mat", ["a.jpg", "gone.jpg"], names, utm, utm)
    with pytest.raises(DatasetError, match="gone.jpg"):
        load_netvlad_mat(missing, tmp_path, "database")
    assert len(load_netvlad_mat(missing, tmp_path, "database", skip_missing=True)) == 1
    with pytest.raises(DatasetError, match="split must be"):
        load_netvlad_mat(missing, tmp_path, "train")


def test_traverse_source_frames_and_step(tmp_path):
    names = [f"Image{i:03d}.jpg" for i in range(10)]
    write_images(tmp_path / "walk", names)
    data = load_source(SourceSpec(type="traverse", path=str(tmp_path / "walk"), frames=(2, 9), step=3))
    assert [p.name for p in data.images] == ["Image002.jpg", "Image005.jpg", "Image008.jpg"]
    np.testing.assert_allclose(data.positions[:, 0], [2, 5, 8])
    with pytest.raises(ConfigError, match="frames must be"):
        SourceSpec(type="traverse", path="x", frames=(5, 2))
    with pytest.raises(ConfigError, match="source type 'zip' unknown"):
        SourceSpec(type="zip", path="x")


def minimal_config(tmp_path: Path, **changes) -> Path:
    raw = {"model": {"preset": "small", "weights": "none", "image_size": [64, 64], "num_clusters": 4},
           "data": {"train": {"database": [{"type": "traverse", "path": "walk"}],
                              "queries": [{"type": "traverse", "path": "walk"}], "pos_radius": 1, "neg_radius": 3}}}
    for dotted, value in changes.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_train_config_loads_and_rejects_bad_values(tmp_path):
    cfg = load_train_config(minimal_config(tmp_path))
    assert cfg.model.branch_dims == (64, 64, 64) and cfg.optim.loss == "triplet" and cfg.optim.margin == 0.1
    assert cfg.mining.num_negatives == 10 and cfg.mining.negative_samples == 1000 and cfg.uses_tap_cache
    bad = {"optim.loss": ("hinge", "optim.loss 'hinge' unknown"),
           "optim.lr": (-1, "lr > 0"),
           "data.train.neg_radius": (0.5, "pos_radius < neg_radius"),
           "mining.typo": (3, r"unknown key\(s\) \['typo'\]"),
           "augment.gamma": ([2.0, 1.0], "augment.gamma"),
           "cache_taps": ("maybe", "cache_taps 'maybe' unknown"),
           "model.preset": ("huge", "preset 'huge' unknown")}
    for key, (value, message) in bad.items():
        with pytest.raises(ConfigError, match=message):
            load_train_config(minimal_config(tmp_path, **{key: value}))
    with pytest.raises(ConfigError, match="cache_taps: on needs a frozen trunk"):
        load_train_config(minimal_config(tmp_path, cache_taps="on", **{"model.train_layers": "conv4"}))
    assert not load_train_config(minimal_config(tmp_path, **{"model.train_layers": "conv4"})).uses_tap_cache


def test_shipped_experiment_configs_load():
    root = Path(__file__).resolve().parents[1] / "training" / "configs"
    configs = sorted(root.glob("*.yaml"))
    assert configs, "training/configs has no experiment"
    kinds = {"protocols": 0, "training": 0}
    for path in configs:
        raw = yaml.safe_load(path.read_text())
        if "protocols" in raw:  # an evaluation file for training/evaluate.py, told apart by content, not name
            assert raw["protocols"], f"{path.name}: empty protocols list"
            for i, protocol in enumerate(raw["protocols"]):
                eval_data_from(protocol, f"{path.name}: protocols[{i}]")
            kinds["protocols"] += 1
        else:
            load_train_config(path)
            kinds["training"] += 1
    assert kinds["protocols"] and kinds["training"], kinds


def test_lat_lon_sources_of_a_split_share_the_first_ones_utm_zone(tmp_path):
    """Two GPS traverses of one street either side of 12 E (Rome): positives are found by distance across
    traverses, so both must be in one metric frame (each in its own zone, they were ~500 km apart)."""
    write_images(tmp_path, ["a.png", "b.png"])
    for name, lon in (("west.csv", 11.9999), ("east.csv", 12.0001)):
        (tmp_path / name).write_text(f"image,lat,lon\n{'a.png' if name == 'west.csv' else 'b.png'},41.9,{lon}\n")
    split = load_split((SourceSpec(type="csv", path=str(tmp_path / "west.csv")),
                        SourceSpec(type="csv", path=str(tmp_path / "east.csv"))))
    assert split.data.utm_zone == "32N"
    assert np.linalg.norm(split.data.positions[1] - split.data.positions[0]) == pytest.approx(16.6, abs=0.2)
    later = load_split((SourceSpec(type="csv", path=str(tmp_path / "east.csv")),), split.data.utm_zone)
    np.testing.assert_allclose(later.data.positions, split.data.positions[1:])


def test_lat_lon_and_local_x_y_sources_are_not_mixed_in_a_split(tmp_path):
    """A GPS traverse beside one in local x/y (a frame-index traverse, a CSV of metres from a start): positives
    found by distance across them would be hundreds of km apart; refused by name, within a split and between
    a database and its queries."""
    from densernet_core.config import ConfigError
    from densernet_core.training.sources import load_database_and_queries

    write_images(tmp_path, ["a.png", "b.png"])
    (tmp_path / "gps.csv").write_text("image,lat,lon\na.png,41.9,12.0\nb.png,41.9001,12.0\n")
    (tmp_path / "local.csv").write_text("image,x,y\na.png,0,0\nb.png,11,0\n")
    gps, local = (SourceSpec(type="csv", path=str(tmp_path / n)) for n in ("gps.csv", "local.csv"))
    with pytest.raises(ConfigError, match=r"local.csv is x/y in a local frame \(x 0 to 11 m.*came as lat/lon"):
        load_split((gps, local))
    with pytest.raises(ConfigError, match="gps.csv came as lat/lon .*but the first source's"):
        load_split((local, gps))
    with pytest.raises(ConfigError, match="data.train queries came as lat/lon.*data.train database's positions"):
        load_database_and_queries((local,), (gps,), "data.train")
    db, q = load_database_and_queries((gps,), (gps,), "data.train")
    np.testing.assert_allclose(db.data.positions, q.data.positions)
