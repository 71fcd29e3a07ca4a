"""DenserNet: VGG16 maps from three depths fused into one dense map, NetVLAD, PCA whitening.

A checkpoint may hold several heads (branches + NetVLAD) over its one frozen trunk: a seed ensemble
(model/ensemble.py). Their VLADs are summed, each through its own fixed signs and coordinate order,
into one head's size, so the map stores what it stores for one head.

The model constructor takes a config and reads no files; `build()` loads backbone weights and
`checkpoint.load_model()` restores a trained model. `describe()` is the one entry point that
turns images into descriptors, handling colour, resizing, batching, device and precision.
"""
from __future__ import annotations

import logging
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbone import TAP_CHANNELS, TAP_STRIDES, VGG16Trunk, load_backbone_weights
from ..config import ModelConfig, model_config
from ..images import ImageLike, as_image_list, prepared_batches
from .netvlad import NetVLAD, kmeans
from .pca import EIG_FLOOR, PCAWhitening, check_pca_fit_size, fit_pca_whitening, principal_axes

LOG = logging.getLogger("densernet")
# The reference fuses pool5, pool4 and pool3 branches in that order; official checkpoints'
# NetVLAD channels follow it, so we keep it.
FUSE_ORDER = (2, 1, 0)
TAP_NAMES = ("pool3", "pool4", "pool5")
DEFAULT_BATCH = 8
# Dense descriptors sampled per image for the k-means NetVLAD initialisation (reference: 100).
DESCRIPTORS_PER_IMAGE = 100
# Seeds the heads' coordinate orders and signs when an ensemble is merged (they are then stored).
HEAD_SKETCH_SEED = 0


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available on this machine")
        index = int(device[5:]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise RuntimeError(f"device {device!r} requested but this machine has {torch.cuda.device_count()} GPU(s)")
    return torch.device(device)


def make_branches(config: ModelConfig) -> nn.ModuleList:
    # An absent depth (width 0) keeps its slot as a parameter-free placeholder so state-dict
    # keys stay "branches.<depth>.*" for every preset.
    return nn.ModuleList(nn.Conv2d(c, d, kernel_size=1) if d else nn.Identity()
                         for c, d in zip(TAP_CHANNELS, config.branch_dims))


class Head(nn.Module):
    """A further head over the shared trunk (heads 1.. of an ensemble; head 0 is the model's own)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.branches = make_branches(config)
        self.netvlad = NetVLAD(config.num_clusters, config.feature_dim)


def head_sketch(heads: int, dim: int, seed: int = HEAD_SKETCH_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Each head's coordinate order and signs (heads x dim each), stored in the checkpoint with the heads.

    Summed this way, two frames' ensemble descriptors have the heads' mean cosine as inner product
    plus cross-head terms of zero mean and about 1/sqrt(dim) spread (docs/TRAINING.md)."""
    rng = np.random.default_rng(seed)
    perm = np.stack([rng.permutation(dim) for _ in range(heads)])
    sign = rng.choice(np.array([-1.0, 1.0], np.float32), size=(heads, dim))
    return torch.from_numpy(perm.astype(np.int64)), torch.from_numpy(sign.astype(np.float32))


def sum_heads(vlads: Sequence[torch.Tensor], perm: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Unit descriptors (N x dim) from each head's unit VLAD, reordered, signed and summed."""
    out = sum(v.index_select(1, perm[k]) * sign[k] for k, v in enumerate(vlads))
    return F.normalize(out, p=2, dim=1)


class DenserNet(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.trunk = VGG16Trunk()
        self.branches = make_branches(config)
        self.used_taps = tuple(i for i in FUSE_ORDER if config.branch_dims[i])
        self.netvlad = NetVLAD(config.num_clusters, config.feature_dim)
        self.extra_heads = nn.ModuleList(Head(config) for _ in range(config.heads - 1))
        if config.heads > 1:
            perm, sign = head_sketch(config.heads, config.vlad_dim)
            self.register_buffer("head_perm", perm)
            self.register_buffer("head_sign", sign)
        self.pca: PCAWhitening | None = None
        self.trunk.set_trainable(config.train_layers)
        # Provenance recorded in the checkpoint; a model used before these are set says so.
        self.netvlad_init = "random"

    # ---- forward pieces -------------------------------------------------------------------
    def fuse(self, taps: Sequence[torch.Tensor], branches: nn.ModuleList | None = None) -> torch.Tensor:
        """1x1-reduce each tap, nearest-upsample to the fuse stride, concatenate.

        The 1x1 conv commutes with nearest upsampling, so reducing first gives the reference's
        result on fewer pixels. A single-depth model is not upsampled: replicating every pixel
        the same number of times leaves the normalised VLAD unchanged. `branches`: another head's.
        """
        branches = self.branches if branches is None else branches
        if len(self.used_taps) == 1:
            i = self.used_taps[0]
            return branches[i](taps[i])
        finest = min(self.used_taps)
        scale = TAP_STRIDES[finest] // self.config.fuse_stride
        size = (taps[finest].shape[-2] * scale, taps[finest].shape[-1] * scale)
        maps = []
        for i in self.used_taps:
            maps.append(upsample_nearest(branches[i](taps[i]), size))
        return torch.cat(maps, dim=1)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """The fused dense feature map (N x feature_dim x H/stride x W/stride)."""
        return self.fuse(self.trunk(x))

    def aggregate(self, dense: torch.Tensor) -> torch.Tensor:
        vlad = self.netvlad(dense.float())
        return self.pca(vlad) if self.pca is not None else vlad

    def head_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every head's fused dense map, head 0 (the one local features use) first."""
        taps = self.trunk(x)
        return [self.fuse(taps)] + [self.fuse(taps, head.branches) for head in self.extra_heads]

    def aggregate_heads(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """The descriptor from `head_maps`: one head's as `aggregate`, several summed (`sum_heads`)."""
        if not self.extra_heads:
            return self.aggregate(maps[0])
        vlads = [self.netvlad(maps[0].float())] + [h.netvlad(m.float()) for h, m in zip(self.extra_heads, maps[1:])]
        return sum_heads(vlads, self.head_perm, self.head_sign)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aggregate_heads(self.head_maps(x))

    @property
    def descriptor_dim(self) -> int:
        return self.pca.out_dim if self.pca is not None else self.config.vlad_dim

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ---- inference ---------------------------------------------------------------------------
    def _batches(self, images: Sequence[ImageLike], batch_size: int, color: str, progress: bool
                 ) -> Iterable[torch.Tensor]:
        for x in prepared_batches(images, self.config.image_size, self.config.preprocessing, color, batch_size,
                                  progress):
            yield x.to(self.device)

    @torch.inference_mode()
    def describe(self, images: Sequence[ImageLike] | ImageLike, color: str = "rgb", batch_size: int = DEFAULT_BATCH,
                 return_dense: bool = False, progress: bool = False) -> np.ndarray | tuple[np.ndarray, list[np.ndarray]]:
        """Global descriptors (N x D float32, unit L2 norm) for paths, arrays (`color` order) or PIL images.

        With `return_dense`, also the fused dense maps (one C x h x w float32 array per image; head 0's
        in an ensemble), for local matching downstream.
        """
        images = as_image_list(images)
        was_training = self.training
        self.eval()
        use_amp = self.device.type == "cuda"
        out, dense_out = [], []
        try:
            for x in self._batches(images, batch_size, color, progress):
                with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
                    maps = self.head_maps(x)
                out.append(self.aggregate_heads(maps).float().cpu())
                if return_dense:
                    dense_out.extend(d.float().cpu().numpy() for d in maps[0])
        finally:
            self.train(was_training)
        desc = torch.cat(out).numpy() if out else np.zeros((0, self.descriptor_dim), np.float32)
        return (desc, dense_out) if return_dense else desc

    # ---- data-driven initialisation ------------------------------------------------------
    @torch.inference_mode()
    def sample_dense_descriptors(self, images: Sequence[ImageLike], per_image: int = DESCRIPTORS_PER_IMAGE,
                                 seed: int = 0, batch_size: int = DEFAULT_BATCH, progress: bool = False) -> np.ndarray:
        """L2-normalised dense descriptors sampled from each image (k-means input, as the reference)."""
        rng = np.random.default_rng(seed)
        self.eval()
        samples = [sample_locations(self.dense(x), per_image, rng)
                   for x in self._batches(images, batch_size, "rgb", progress)]
        return np.concatenate(samples).astype(np.float32)

    def init_netvlad_from_samples(self, descs: np.ndarray, iterations: int = 100, seed: int = 0) -> float:
        centroids = kmeans(descs, self.config.num_clusters, iterations=iterations, seed=seed)
        alpha = self.netvlad.init_from_clusters(centroids, descs)
        self.netvlad_init = "kmeans"
        return alpha

    @torch.no_grad()
    def init_branches_from_samples(self, samples: dict[int, np.ndarray]) -> None:
        """Each used 1x1 branch := PCA whitening of its tap's local features (N x C samples per tap).

        The reference starts the branches at random; whitened branches make every depth
        contribute equally to the fused map before any training (docs/TRAINING.md).
        """
        for i in self.used_taps:
            x = np.asarray(samples[i], dtype=np.float64)
            width = self.config.branch_dims[i]
            kept = min(width, TAP_CHANNELS[i])  # a branch wider than its tap (large: 384 of pool3's 256)
            if x.ndim != 2 or x.shape[1] != TAP_CHANNELS[i] or len(x) <= kept:
                raise ValueError(f"PCA branch init of tap {i} needs more than {kept} samples of "
                                 f"{TAP_CHANNELS[i]} channels, got shape {x.shape}")
            mean, eigval, eigvec = principal_axes(x)
            scale = np.sqrt(np.maximum(eigval[:kept], eigval[0] * EIG_FLOOR))
            weight = (eigvec[:, :kept] / scale).T  # kept x C
            if width > kept:
                # Embed the whitened tap in `width` dims by a fixed random isometry, scaled so the branch
                # carries `width` units of variance like the others: its output has rank `kept` anyway.
                q, _ = np.linalg.qr(np.random.default_rng(i).standard_normal((width, kept)))
                weight = np.sqrt(width / kept) * (q @ weight)
            self.branches[i].weight.copy_(torch.from_numpy(weight.astype(np.float32))[:, :, None, None])
            self.branches[i].bias.copy_(torch.from_numpy((-weight @ mean).astype(np.float32)))
        LOG.info("branches initialised by PCA whitening of %s", [TAP_NAMES[i] for i in self.used_taps])

    @torch.inference_mode()
    def sample_tap_features(self, images: Sequence[ImageLike], per_image: int = DESCRIPTORS_PER_IMAGE,
                            seed: int = 0, batch_size: int = DEFAULT_BATCH, progress: bool = False
                            ) -> dict[int, np.ndarray]:
        self.eval()
        return sample_tap_locations((self.trunk(x) for x in self._batches(images, batch_size, "rgb", progress)),
                                    self.used_taps, per_image, np.random.default_rng(seed))

    def init_netvlad(self, images: Sequence[ImageLike], per_image: int = DESCRIPTORS_PER_IMAGE, seed: int = 0,
                     iterations: int = 100, progress: bool = False) -> float:
        """k-means over dense descriptors -> NetVLAD centroids and assignment weights. Returns alpha."""
        descs = self.sample_dense_descriptors(images, per_image, seed, progress=progress)
        return self.init_netvlad_from_samples(descs, iterations, seed)

    @torch.inference_mode()
    def fit_pca(self, images: Sequence[ImageLike], batch_size: int = DEFAULT_BATCH, progress: bool = False) -> int:
        """Fit PCA whitening on these images' VLAD descriptors. Returns the output dimension."""
        if self.config.pca_dim == 0:
            self.pca = None
            return self.config.vlad_dim
        check_pca_fit_size(len(images), self.config.pca_dim)
        self.pca = None
        vlads = self.describe(images, batch_size=batch_size, progress=progress)
        self.pca = fit_pca_whitening(vlads, self.config.pca_dim).to(self.device)
        return self.pca.out_dim


def upsample_nearest(y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest upsampling; integer factors by broadcasting, whose backward is a cheap sum (3-4x
    faster on CPU than interpolate's scatter), other sizes by interpolate. Same values either way."""
    h, w = y.shape[-2:]
    if (h, w) == tuple(size):
        return y
    if size[0] % h == 0 and size[1] % w == 0:
        sh, sw = size[0] // h, size[1] // w
        return y[:, :, :, None, :, None].expand(-1, -1, -1, sh, -1, sw).reshape(*y.shape[:2], *size)
    return F.interpolate(y, size=size, mode="nearest")


def sample_locations(dense: torch.Tensor, per_image: int, rng: np.random.Generator, normalise: bool = True
                     ) -> np.ndarray:
    """Descriptors (L2-normalised unless told) at `per_image` random locations of each map (N x C x h x w)."""
    dense = F.normalize(dense.float(), p=2, dim=1) if normalise else dense.float()
    flat = dense.flatten(2).transpose(1, 2).cpu().numpy()  # N, HW, C
    picks = [d[rng.choice(d.shape[0], size=min(per_image, d.shape[0]), replace=False)] for d in flat]
    return np.concatenate(picks).astype(np.float32)


def sample_tap_locations(tap_batches: Iterable[Sequence[torch.Tensor | None]], taps: Sequence[int], per_image: int,
                         rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Raw trunk features at random locations, per tap, over batches of taps (the branch-init input)."""
    out: dict[int, list[np.ndarray]] = {i: [] for i in taps}
    for batch in tap_batches:
        for i in taps:
            out[i].append(sample_locations(batch[i], per_image, rng, normalise=False))
    return {i: np.concatenate(v) for i, v in out.items()}


def build(preset: str = "small", weights: str = "caffe-vgg16", device: str = "cpu", **overrides) -> DenserNet:
    """A fresh model from a preset with ImageNet trunk weights (NetVLAD/PCA not yet initialised)."""
    return build_from_config(model_config(preset, weights=weights, **overrides), device)


def build_from_config(config: ModelConfig, device: str = "cpu") -> DenserNet:
    model = DenserNet(config)
    load_backbone_weights(model.trunk, config.weights)
    return model.to(resolve_device(device))
