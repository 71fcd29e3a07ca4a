import numpy as np
import pytest
import torch

from conftest import random_images
from densernet_core.config import ConfigError, PRESETS, model_config
from densernet_core.model.network import DenserNet, build


@pytest.mark.parametrize("preset", sorted(set(PRESETS) - {"conv5"}))
@pytest.mark.parametrize("size", [(64, 64), (96, 128), (100, 70)])
def test_shapes_per_preset_and_size(preset, size):
    model = DenserNet(model_config(preset, weights="none", image_size=size, num_clusters=4, pca_dim=0)).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        dense = model.dense(x)
        desc = model(x)
    # pool3 is at stride 8 (floor at each pool); fused map at stride 4 = twice pool3.
    h3, w3 = size[0] // 8, size[1] // 8
    assert dense.shape == (2, sum(PRESETS[preset]), 2 * h3, 2 * w3)
    assert desc.shape == (2, 4 * sum(PRESETS[preset]))
    assert torch.allclose(desc.norm(dim=1), torch.ones(2), atol=1e-5)


def test_single_depth_preset_uses_pool5_only_at_its_own_resolution():
    """The conv5 ablation: only the pool5 branch, no upsampling, same VLAD size as 'small'."""
    model = DenserNet(model_config("conv5", weights="none", num_clusters=4, pca_dim=0)).eval()
    assert not list(model.branches[0].parameters()) and not list(model.branches[1].parameters())
    with torch.no_grad():
        dense = model.dense(torch.randn(1, 3, 96, 128))
        desc = model(torch.randn(1, 3, 96, 128))
    assert dense.shape == (1, 192, 3, 4)
    assert desc.shape[1] == model_config("small", num_clusters=4).vlad_dim


def test_partial_multiscale_fuses_at_finest_present_depth():
    model = DenserNet(model_config("small", weights="none", branch_dims=(0, 32, 32),
                                   num_clusters=4, pca_dim=0)).eval()
    with torch.no_grad():
        dense = model.dense(torch.randn(1, 3, 96, 128))
    # pool4 (stride 16) upsampled 4x to the stride-4 fuse grid.
    assert dense.shape == (1, 64, 24, 32)


def test_fuse_stride_8_keeps_pool3_resolution():
    model = DenserNet(model_config("small", weights="none", fuse_stride=8, num_clusters=4, pca_dim=0)).eval()
    with torch.no_grad():
        dense = model.dense(torch.randn(1, 3, 64, 96))
    assert dense.shape[-2:] == (8, 12)


def test_fuse_matches_reference_order_upsample_then_conv():
    """Our conv-then-upsample equals the reference's upsample-then-conv, in pool5, pool4, pool3 order."""
    model = DenserNet(model_config("small", weights="none", num_clusters=4, pca_dim=0)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        taps = model.trunk(x)
        ours = model.fuse(taps)
        up = torch.nn.functional.interpolate
        ref = torch.cat([
            model.branches[2](up(taps[2], scale_factor=8, mode="nearest")),
            model.branches[1](up(taps[1], scale_factor=4, mode="nearest")),
            model.branches[0](up(taps[0], scale_factor=2, mode="nearest")),
        ], dim=1)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_trunk_runs_once_per_image():
    model = DenserNet(model_config("small", weights="none", num_clusters=4, pca_dim=0)).eval()
    calls = []
    model.trunk.features[0].register_forward_hook(lambda *a: calls.append(1))
    model.describe(random_images(3), batch_size=3)
    assert len(calls) == 1  # one batch, one pass of the first conv


def test_descriptors_unit_norm_and_deterministic(tiny_model):
    imgs = random_images(5, seed=3)
    a = tiny_model.describe(imgs)
    assert a.dtype == np.float32 and a.shape == (5, tiny_model.descriptor_dim)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a, tiny_model.describe(imgs))  # same call, same bits
    # Another batch size changes only float summation order.
    np.testing.assert_allclose(a, tiny_model.describe(imgs, batch_size=2), atol=1e-3)  # PCA whitening amplifies it


def test_input_types_and_colour_order(tiny_model, tmp_path):
    import cv2
    from PIL import Image

    rgb = random_images(1, seed=7)[0]
    path = tmp_path / "im.png"
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    ref = tiny_model.describe([rgb])
    np.testing.assert_allclose(tiny_model.describe([rgb[:, :, ::-1].copy()], color="bgr"), ref, atol=1e-5)
    np.testing.assert_allclose(tiny_model.describe([str(path)]), ref, atol=1e-5)
    np.testing.assert_allclose(tiny_model.describe([Image.fromarray(rgb)]), ref, atol=1e-5)
    assert not np.allclose(tiny_model.describe([rgb[:, :, ::-1].copy()]), ref, atol=1e-3)


def test_bad_images_are_named(tiny_model, tmp_path):
    from densernet_core.images import ImageError

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageError, match="broken.jpg"):
        tiny_model.describe([bad])
    with pytest.raises(ImageError, match="not found"):
        tiny_model.describe([tmp_path / "missing.png"])
    with pytest.raises(ImageError, match="empty image"):
        tiny_model.describe([np.zeros((0, 0, 3), np.uint8)])


def test_netvlad_init_sets_centroids_and_sharp_assignment():
    torch.manual_seed(0)
    model = build("small", weights="none", image_size=(64, 80), num_clusters=8, pca_dim=0)
    imgs = random_images(12)
    alpha = model.init_netvlad(imgs, per_image=30, iterations=10)
    assert alpha > 0 and model.netvlad_init == "kmeans"
    descs = model.sample_dense_descriptors(imgs, per_image=30)
    cent = model.netvlad.centroids.detach().numpy()
    # Assignment weights are alpha * unit centroids.
    w = model.netvlad.conv.weight.detach().numpy()[:, :, 0, 0]
    np.testing.assert_allclose(w, alpha * cent / np.linalg.norm(cent, axis=1, keepdims=True), rtol=1e-4)
    # On average the runner-up centroid gets about 1% of the winner's weight (the reference's alpha rule).
    logits = descs @ w.T
    top2 = np.sort(logits, axis=1)[:, -2:]
    ratio = np.exp(top2[:, 0] - top2[:, 1])
    assert 0.001 < np.exp(np.mean(np.log(ratio))) < 0.05


def test_pca_whitening_gives_identity_covariance():
    from densernet_core.model.pca import fit_pca_whitening

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 40)) @ rng.normal(size=(40, 40)) + 3.0
    layer = fit_pca_whitening(x, 20)
    with torch.no_grad():
        y = layer.linear(torch.from_numpy(x).float()).numpy()
    cov = np.cov(y, rowvar=False)
    np.testing.assert_allclose(cov, np.eye(20), atol=1e-3)
    # Fewer samples than dimensions: the Gram route, output clipped to the rank.
    small = rng.normal(size=(30, 200))
    layer = fit_pca_whitening(small, 64)
    assert layer.out_dim == 29
    with torch.no_grad():
        y = layer.linear(torch.from_numpy(small).float()).numpy()
    np.testing.assert_allclose(np.cov(y, rowvar=False), np.eye(29), atol=1e-3)


def test_config_validation_names_the_bad_value():
    with pytest.raises(ConfigError, match="preset 'huge'"):
        model_config("huge")
    with pytest.raises(ConfigError, match="fuse_stride"):
        model_config("small", fuse_stride=3)
    with pytest.raises(ConfigError, match="unknown key"):
        model_config("small", clusters=3)
    with pytest.raises(ConfigError, match="weights 'imagenet'"):
        model_config("small", weights="imagenet")


def test_trainable_layers():
    model = DenserNet(model_config("small", weights="none", train_layers="conv5", pca_dim=0))
    feats = model.trunk.features
    assert not any(p.requires_grad for p in feats[0].parameters())
    assert not any(p.requires_grad for p in feats[21].parameters())
    assert all(p.requires_grad for p in feats[24].parameters())
    assert all(p.requires_grad for p in model.branches.parameters())


def test_device_names_are_checked():
    import torch

    from densernet_core.model.network import resolve_device

    assert resolve_device("cpu").type == "cpu"
    for bad in ("gpu", "cuda:x", "cuda:", "CPU"):
        with pytest.raises(ValueError, match="cuda\\[:N\\]"):
            resolve_device(bad)
    if torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="GPU\\(s\\)"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        for name in ("cuda", "cuda:0"):
            with pytest.raises(RuntimeError, match="CUDA is not available"):
                resolve_device(name)


def test_pca_branch_init_of_a_branch_wider_than_its_tap():
    """`large` gives pool3 (256 channels) a 384-wide branch: whitening keeps 256 components, embedded
    isometrically so the branch still carries one unit of variance per output on average."""
    model = DenserNet(model_config("small", weights="none", branch_dims=(300, 16, 0), image_size=(64, 64)))
    rng = np.random.default_rng(0)
    samples = {0: rng.standard_normal((3000, 256)) * rng.uniform(0.1, 5.0, 256) + 2.0,
               1: rng.standard_normal((3000, 512)) * rng.uniform(0.1, 5.0, 512)}
    model.init_branches_from_samples(samples)
    with torch.no_grad():
        y = model.branches[0](torch.from_numpy(samples[0].astype(np.float32)).T[None, :, :, None])[0, :, :, 0].T
    cov = np.cov(y.numpy().T)
    eig = np.linalg.eigvalsh(cov)
    assert cov.shape == (300, 300) and abs(np.trace(cov) / 300 - 1.0) < 0.05
    assert eig[-256:].min() > 0.5 * eig[-256:].max() and eig[:44].max() < 1e-3  # rank 256, isotropic in it
