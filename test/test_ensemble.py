"""Seed ensembles in one checkpoint: heads trained seed by seed over the frozen trunk, merged, described as
the sum of their members at one head's size, exported whole; and what is not one recipe is refused."""
import copy
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import random_images
from densernet_core.cli import main as densernet_main
from densernet_core.config import ConfigError, model_config
from densernet_core.model.checkpoint import CheckpointError, checkpoint_hash, load_model, save_checkpoint
from densernet_core.model.ensemble import ensemble_members, merge_checkpoints
from densernet_core.training.train_config import load_train_config
from densernet_core.training.trainer import Trainer, run_training
from test_training import route, write_config  # noqa: F401  (the module's route fixture)


def summed(member_descs: list[np.ndarray], perm: torch.Tensor, sign: torch.Tensor) -> np.ndarray:
    """The ensemble descriptor written out by hand: each member reordered and signed, summed, unit length."""
    out = sum(d[:, perm[k].numpy()] * sign[k].numpy() for k, d in enumerate(member_descs))
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_training_heads_trains_each_seed_and_describes_as_the_sum_of_its_members(route, tmp_path):  # noqa: F811
    cfg = load_train_config(write_config(route, tmp_path / "exp.yaml", **{"model.heads": 3, "model.pca_dim": 0,
                                                                          "optim.epochs": 1}))
    run = tmp_path / "run"
    final = run_training(cfg, run, progress=False)
    members = [run / f"head{k}" / "model.safetensors" for k in range(3)]
    assert final == run / "model.safetensors" and all(m.is_file() for m in members)
    assert [m["sha256"] for m in ensemble_members(final)] == [checkpoint_hash(m) for m in members]
    model = load_model(final)
    assert model.config.heads == 3 and model.descriptor_dim == load_model(members[0]).descriptor_dim
    images = [str(p) for t in ("day", "dusk") for p in sorted((route / t).glob("*.jpg"))]
    alone = [load_model(m).describe(images) for m in members]
    assert not np.allclose(alone[0], alone[1]), "the heads' seeds differ, so must their descriptors"
    desc = model.describe(images)
    np.testing.assert_allclose(desc, summed(alone, model.head_perm, model.head_sign), atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(desc, axis=1), 1.0, atol=1e-5)
    # head 0's dense map is the one local features use
    _, dense = model.describe(images[:2], return_dense=True)
    _, dense0 = load_model(members[0]).describe(images[:2], return_dense=True)
    np.testing.assert_array_equal(dense[0], dense0[0])
    # head k is the one-head recipe's run of seed k, byte for byte
    single = replace(cfg, model=cfg.model.replace(heads=1), seed=1)
    assert checkpoint_hash(Trainer(single, tmp_path / "seed1", progress=False).train()) == checkpoint_hash(members[1])
    stamp = final.stat().st_mtime_ns
    assert run_training(cfg, run, progress=False) == final and final.stat().st_mtime_ns == stamp  # resumes: done
    with pytest.raises(ConfigError, match="one head"):
        Trainer(cfg, tmp_path / "direct", progress=False)


def test_a_one_head_checkpoint_stores_the_config_it_stored_before_heads(tiny_model, tmp_path):
    from safetensors import safe_open

    path = save_checkpoint(tiny_model, tmp_path / "one.safetensors")
    with safe_open(str(path), "pt") as f:
        assert "heads" not in json.loads(f.metadata()["config"]) and "ensemble_members" not in f.metadata()
        assert not any(k.startswith(("extra_heads.", "head_")) for k in f.keys())
    assert load_model(path).config.heads == 1


def _other_head(model, seed: int):
    """The same trunk, another head: what a second seed of the recipe gives."""
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in list(other.branches.parameters()) + list(other.netvlad.parameters()):
            p.add_(0.3 * p.abs().mean() * torch.randn(p.shape, generator=g))
    return other


def test_merge_sums_the_members_and_refuses_what_is_not_one_recipe(tiny_model, tmp_path):
    a = save_checkpoint(tiny_model, tmp_path / "a.safetensors")
    b = save_checkpoint(_other_head(tiny_model, 1), tmp_path / "b.safetensors")
    ens = merge_checkpoints([a, b], tmp_path / "ens.safetensors")
    model = load_model(ens)
    images = random_images(5, seed=4)
    np.testing.assert_allclose(model.describe(images), summed([load_model(a).describe(images), load_model(b).describe(images)],
                                                             model.head_perm, model.head_sign), atol=2e-6)
    assert torch.equal(load_model(ens).head_perm, model.head_perm)  # stored, not redrawn
    from benchmarks.bench_ensemble import summed as bench_summed  # the benchmark scores what the product describes

    alone = {"a": {"x": load_model(a).describe(images)}, "b": {"x": load_model(b).describe(images)}}
    np.testing.assert_allclose(bench_summed([alone["a"], alone["b"]], (0, 1))["x"], model.describe(images), atol=2e-6)
    with pytest.raises(ValueError, match="at least 2"):
        merge_checkpoints([a], tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="more than once"):
        merge_checkpoints([a, a], tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="overwrite"):
        merge_checkpoints([a, b], b)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        merge_checkpoints([a, tmp_path / "missing.safetensors"], tmp_path / "x.safetensors")
    trunk = _other_head(tiny_model, 2)
    with torch.no_grad():
        trunk.trunk.features[0].weight.add_(0.01)
    c = save_checkpoint(trunk, tmp_path / "c.safetensors")
    with pytest.raises(CheckpointError, match="trunk differs"):
        merge_checkpoints([a, c], tmp_path / "x.safetensors")
    wider = copy.deepcopy(tiny_model)
    wider.config = tiny_model.config.replace(image_size=(96, 96))
    d = save_checkpoint(wider, tmp_path / "d.safetensors")
    with pytest.raises(CheckpointError, match=r"config differs .*image_size"):
        merge_checkpoints([a, d], tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="already an ensemble"):
        merge_checkpoints([ens, a], tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
    assert densernet_main(["ensemble", str(a), str(c), "--out", str(tmp_path / "y.safetensors")]) == 1
    assert densernet_main(["ensemble", str(a), str(b), "--out", str(tmp_path / "y.safetensors")]) == 0
    assert checkpoint_hash(tmp_path / "y.safetensors") == checkpoint_hash(ens)  # merging is deterministic
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    copies = [moved / "first.safetensors", moved / "second.safetensors"]
    for src, dst in zip((a, b), copies):
        dst.write_bytes(src.read_bytes())
    assert checkpoint_hash(merge_checkpoints(copies, moved / "ens.safetensors")) == checkpoint_hash(ens)  # by content


def test_heads_config_is_validated():
    with pytest.raises(ConfigError, match="heads must be"):
        model_config("small", heads=0)
    with pytest.raises(ConfigError, match="no PCA stage"):
        model_config("small", heads=3, pca_dim=64)
    with pytest.raises(ConfigError, match="trunk frozen"):
        model_config("small", heads=3, train_layers="conv5")


def test_an_ensemble_exports_whole(tiny_model, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is a dev extra (pip install '.[dev]')")
    from densernet_core.model.runtime import export_onnx, load_describer

    a = save_checkpoint(tiny_model, tmp_path / "a.safetensors")
    b = save_checkpoint(_other_head(tiny_model, 1), tmp_path / "b.safetensors")
    ens = merge_checkpoints([a, b], tmp_path / "ens.safetensors")
    engine = export_onnx(ens, tmp_path / "ens.onnx")
    images = random_images(9, seed=6)
    ref, ref_dense = load_model(ens).describe(images, return_dense=True)
    got, got_dense = load_describer(ens, backend="onnxruntime", engine=engine).describe(images, return_dense=True)
    assert got.shape == ref.shape == (9, tiny_model.descriptor_dim)
    assert ((got * ref).sum(1)).min() >= 0.999
    np.testing.assert_allclose(got_dense[2], ref_dense[2], atol=1e-4, rtol=1e-3)
    one = load_model(a).describe(images)
    assert ((one * ref).sum(1)).max() < 0.9, "the engine must hold both heads, not one"


def test_a_map_of_an_ensemble_says_so_and_refuses_its_members(tiny_model, route, tmp_path):  # noqa: F811
    from densernet_core.datasets import load_traverse
    from densernet_core.mapping.placemap import MapError, PlaceMap, build_map

    a = save_checkpoint(tiny_model, tmp_path / "a.safetensors")
    b = save_checkpoint(_other_head(tiny_model, 1), tmp_path / "b.safetensors")
    ens = merge_checkpoints([a, b], tmp_path / "ens.safetensors")
    model = load_model(ens)
    build_map(model, ens, checkpoint_hash(ens), load_traverse(route / "day"), tmp_path / "map", progress=False)
    pmap = PlaceMap.load(tmp_path / "map")
    assert "2 heads (a seed ensemble)" in pmap.info()
    pmap.check_model(model.descriptor_dim, checkpoint_hash(ens))
    with pytest.raises(MapError, match="checkpoint"):
        pmap.check_model(tiny_model.descriptor_dim, checkpoint_hash(a))  # same size, another model
    _, ids = pmap.search(model.describe([str(sorted((route / "day").glob("*.jpg"))[4])]), 1)
    assert ids[0, 0] == 4
