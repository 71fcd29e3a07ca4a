"""Shared fixtures: the real data folder (skipped when absent), small generated images and route-like descriptors."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DENSERNET_SHARED_DATA", ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(ROOT))


def route_like(n: int, d: int, seed: int) -> np.ndarray:
    """Unit descriptors that drift along a route, so neighbouring places look alike (near-ties)."""
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.standard_normal((n, d)).astype(np.float32) * 0.15, axis=0) + rng.standard_normal(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="session")
def gardens_point() -> Path:
    path = SHARED_DATA / "gardens_point"
    if not (path / "day_left").is_dir():
        pytest.skip(f"Gardens Point data not found at {path} (needs ../shared/data beside the repo)")
    return path


@pytest.fixture(scope="session")
def kitti() -> Path:
    path = SHARED_DATA / "kitti_vo_seq1"
    if not (path / "poses.txt").is_file():
        pytest.skip(f"KITTI snippet not found at {path} (needs ../shared/data beside the repo)")
    return path


@pytest.fixture(scope="session")
def caffe_weights_ready() -> None:
    from densernet_core.model.weights import CAFFE_WEIGHTS_FILE, cache_dir

    if not (cache_dir() / CAFFE_WEIGHTS_FILE).is_file():
        pytest.fail("Caffe VGG16 weights are not prepared; the test command runs `densernet weights fetch` first")


def random_images(n: int, h: int = 64, w: int = 80, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
    out = []
    for i in range(n):
        img = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))
        img = np.roll(img, i * 3, axis=1)
        noise = rng.integers(0, 40, img.shape, dtype=np.uint8)
        out.append(np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    return out


@pytest.fixture(scope="session")
def tiny_model():
    """A small random-weights model with NetVLAD initialised, raw VLAD descriptors (fast, deterministic)."""
    import torch

    from densernet_core.model.network import build

    torch.manual_seed(0)
    model = build("small", weights="none", image_size=(64, 80), num_clusters=8)
    model.init_netvlad(random_images(24), per_image=20, iterations=10)
    return model


def official_state_dict(model) -> dict:
    """Our weights in the official DenserNet/OpenIBL layout (module. prefix, three trunk slices, 4-D PCA
    conv), as their training code saves them: what `import_official` reads."""
    ours = model.state_dict()
    official = {}
    for k, v in ours.items():
        if k.startswith("trunk.features."):
            i = int(k.split(".")[2])
            rest = k[len("trunk.features."):]
            official[f"module.base_model.conv_h.0.{rest}"] = v
            if i < 17:
                official[f"module.base_model.conv_1.0.{rest}"] = v
            if i < 24:
                official[f"module.base_model.conv_m.0.{rest}"] = v
    for i, name in enumerate(["conv_1", "conv_m", "conv_h"]):
        official[f"module.base_model.{name}.2.weight"] = ours[f"branches.{i}.weight"]
        official[f"module.base_model.{name}.2.bias"] = ours[f"branches.{i}.bias"]
    official["module.net_vlad.conv.weight"] = ours["netvlad.conv.weight"]
    official["module.net_vlad.centroids"] = ours["netvlad.centroids"]
    if "pca.linear.weight" in ours:
        official["module.pca_layer.weight"] = ours["pca.linear.weight"][:, :, None, None]
        official["module.pca_layer.bias"] = ours["pca.linear.bias"]
    return official


@pytest.fixture()
def route(tmp_path):
    """Ten generated images and a poses CSV (x, y, z, yaw, timestamp)."""
    import csv

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
    from densernet_core.model.checkpoint import checkpoint_hash, save_checkpoint

    path = save_checkpoint(tiny_model, tmp_path / "model.safetensors")
    return path, checkpoint_hash(path)
