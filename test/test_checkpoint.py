import numpy as np
import pytest
import torch

from conftest import official_state_dict, random_images
from densernet_core.model.checkpoint import (CheckpointError, checkpoint_hash, import_official, load_model,
                                       save_checkpoint)


def test_round_trip_identical_descriptors(tiny_model, tmp_path):
    path = save_checkpoint(tiny_model, tmp_path / "m.safetensors")
    loaded = load_model(path)
    imgs = random_images(4, seed=11)
    np.testing.assert_array_equal(loaded.describe(imgs), tiny_model.describe(imgs))
    assert loaded.config == tiny_model.config
    assert loaded.descriptor_dim == tiny_model.descriptor_dim
    assert loaded.netvlad_init == "kmeans"
    assert len(checkpoint_hash(path)) == 64


def test_image_size_override(tiny_model, tmp_path):
    path = save_checkpoint(tiny_model, tmp_path / "m.safetensors")
    assert load_model(path, image_size=(96, 128)).config.image_size == (96, 128)


def test_missing_truncated_foreign_and_mismatched(tiny_model, tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_model(tmp_path / "nope.safetensors")
    path = save_checkpoint(tiny_model, tmp_path / "m.safetensors")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"hello world, definitely not tensors")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_model(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a densernet checkpoint"):
        load_model(foreign)
    # A checkpoint whose tensors don't fit its stated config (branch widths edited).
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    meta["config"] = meta["config"].replace('"branch_dims": [64, 64, 64]', '"branch_dims": [32, 64, 64]')
    bad = tmp_path / "mismatch.safetensors"
    save_file(state, str(bad), metadata=meta)
    with pytest.raises(CheckpointError, match="shape"):
        load_model(bad)


def test_import_official_layout(tiny_model, tmp_path):
    """An OpenIBL-layout state_dict (module. prefix, three trunk slices, 4-D pca conv) imports exactly,
    its PCA layer included (official checkpoints keep the whitening fitted on Pittsburgh)."""
    import copy

    from densernet_core.model.pca import fit_pca_whitening

    tiny_model = copy.deepcopy(tiny_model)
    tiny_model.pca = fit_pca_whitening(tiny_model.describe(random_images(24, seed=3)), 16)
    official = official_state_dict(tiny_model)
    path = tmp_path / "official.pth.tar"
    torch.save({"state_dict": official, "epoch": 3, "best_recall5": 0.9}, path)
    model = import_official(path, image_size=tiny_model.config.image_size)
    assert model.config.preprocessing == "torchvision"
    assert model.pca is not None and model.descriptor_dim == 16 and model.config.pca_dim == 16
    # Same weights: same descriptors when both use the same preprocessing.
    tiny = tiny_model.config
    ref = type(tiny_model)(tiny.replace(preprocessing="torchvision"))
    ref.pca = model.pca
    ref.load_state_dict(tiny_model.state_dict())
    imgs = random_images(2, seed=5)
    np.testing.assert_allclose(model.describe(imgs), ref.describe(imgs), atol=1e-5)
    official["module.extra.thing"] = torch.zeros(1)
    torch.save({"state_dict": official}, path)
    with pytest.raises(CheckpointError, match="unexpected key 'extra.thing'"):
        import_official(path)
