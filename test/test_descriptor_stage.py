"""The final descriptor stage on real frames: a model must find the very places it was fitted on.

A held-out protocol (fit on frames 0-99, test on 100-199) hid a collapse: a PCA whitening fitted on
as many images as it kept dimensions made the fit set's descriptors nearly orthogonal, and a
checkpoint made by `densernet init` from 100 Gardens Point images found 16 % of those same places.
Every way a checkpoint is made is checked on its own fit set: init, training, import. Plus the
determinism the published figures rely on: two runs give byte-identical checkpoints.
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import torch

from conftest import ROOT, official_state_dict
from densernet_core.cli import make_checkpoint
from densernet_core.model.checkpoint import import_official, load_model
from densernet_core.training.recall import recall_at_n, search

SIZE = (120, 160)
FIT_FRAMES = list(range(0, 100, 2))  # 50 places; day_left + day_right = 100 images (the case)
FIT_SET_R1 = 0.90
HALVES_NOISE = 0.04  # two of 50 queries: frames 0-49 and 50-99 are different places, not equally hard


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _fit_set_recall(model, gp, frames) -> float:
    """day_right -> day_left R@1 over `frames` (correct within 2 frames)."""
    db = model.describe([gp / "day_left" / f"Image{i:03d}.jpg" for i in frames])
    q = model.describe([gp / "day_right" / f"Image{i:03d}.jpg" for i in frames])
    _, ranked = search(db, q, 1)
    positives = [[j for j, f in enumerate(frames) if abs(f - i) <= 2] for i in frames]
    return recall_at_n(ranked, positives, [1])[1]


@pytest.fixture(scope="module")
def init_checkpoint(gardens_point, caffe_weights_ready, tmp_path_factory):
    images = [gardens_point / t / f"Image{i:03d}.jpg" for t in ("day_left", "day_right") for i in FIT_FRAMES]
    return make_checkpoint(images, tmp_path_factory.mktemp("init") / "model.safetensors", image_size=SIZE,
                           progress=False)


def test_init_checkpoint_finds_the_places_it_was_made_from(init_checkpoint, gardens_point):
    model = load_model(init_checkpoint)
    assert model.pca is None and model.descriptor_dim == model.config.vlad_dim
    r1 = _fit_set_recall(model, gardens_point, FIT_FRAMES)
    print(f"init, fit set day_right->day_left R@1 {r1:.3f}")
    assert r1 >= FIT_SET_R1


def test_imported_checkpoint_keeps_the_same_descriptors_and_places(init_checkpoint, gardens_point, tmp_path):
    """The official layout round trip (what OpenIBL/DenserNet files look like) changes nothing."""
    model = load_model(init_checkpoint)
    path = tmp_path / "official.pth.tar"
    torch.save({"state_dict": official_state_dict(model)}, path)
    imported = import_official(path, image_size=SIZE, preprocessing="caffe")
    images = [gardens_point / "day_right" / f"Image{i:03d}.jpg" for i in FIT_FRAMES[:4]]
    np.testing.assert_allclose(imported.describe(images), model.describe(images), atol=1e-5)
    assert _fit_set_recall(imported, gardens_point, FIT_FRAMES) >= FIT_SET_R1


def test_trained_checkpoint_finds_its_training_places(gardens_point, caffe_weights_ready, tmp_path):
    """One epoch of the headline recipe (its size, 192x320) on frames 0-49 of the three traversals, then
    retrieval among those frames, beside the held-out frames 50-99. Measured: 0.98 on the training
    frames, 0.96 held out (at 120x160 one epoch lowered day retrieval, so the recipe's size is used)."""
    from densernet_core.training.sources import SourceSpec
    from densernet_core.training.train_config import load_train_config
    from densernet_core.training.trainer import run_training

    cfg = load_train_config(ROOT / "training" / "configs" / "gardens_point_small.yaml")
    sources = tuple(SourceSpec("traverse", str(gardens_point / t), frames=(0, 50))
                    for t in ("day_left", "day_right", "night_right"))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, database=sources, queries=sources),
                              optim=dataclasses.replace(cfg.optim, epochs=1), device="cpu")
    model = load_model(run_training(cfg, tmp_path / "run", progress=False))
    fit, held = _fit_set_recall(model, gardens_point, list(range(50))), _fit_set_recall(model, gardens_point, list(range(50, 100)))
    print(f"trained, day_right->day_left R@1: training frames {fit:.3f}, held-out frames {held:.3f}")
    assert fit >= FIT_SET_R1
    assert fit >= held - HALVES_NOISE


def test_init_is_byte_for_byte_repeatable(gardens_point, caffe_weights_ready, tmp_path):
    images = [gardens_point / "day_left" / f"Image{i:03d}.jpg" for i in range(0, 200, 10)]
    a = make_checkpoint(images, tmp_path / "a.safetensors", image_size=(64, 96), num_clusters=8, progress=False)
    b = make_checkpoint(images, tmp_path / "b.safetensors", image_size=(64, 96), num_clusters=8, progress=False)
    assert _sha(a) == _sha(b)
