"""Reference descriptors a trained DenserNet has to beat (single-frame, no learning)."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch

from ..model.backbone import VGG16Trunk, load_backbone_weights
from ..config import PREPROCESSING_FOR_WEIGHTS
from ..images import ImageLike, prepare_batch, to_rgb_uint8
from ..model.network import resolve_device

RELU5_3 = 30  # torchvision `features` index after conv5_3 + ReLU (before pool5)
GEM_P = 3.0  # Radenovic et al.'s fixed-p default
GEM_EPS = 1e-6


def raw_pixels(images: Sequence[ImageLike], size: tuple[int, int] = (32, 64), patch: int = 8) -> np.ndarray:
    """SeqSLAM's single-frame descriptor: tiny grey image, each patch normalised to zero mean, unit variance."""
    h, w = size
    if h % patch or w % patch:
        raise ValueError(f"size {size} must be a multiple of the patch size {patch}")
    out = []
    for im in images:
        grey = cv2.cvtColor(to_rgb_uint8(im), cv2.COLOR_RGB2GRAY)
        small = cv2.resize(grey, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
        blocks = small.reshape(h // patch, patch, w // patch, patch)
        mean = blocks.mean(axis=(1, 3), keepdims=True)
        std = blocks.std(axis=(1, 3), keepdims=True)
        norm = ((blocks - mean) / np.maximum(std, 1e-3)).reshape(-1)
        out.append(norm / max(np.linalg.norm(norm), 1e-12))
    return np.stack(out).astype(np.float32)


@torch.inference_mode()
def gem_conv5(images: Sequence[ImageLike], image_size: tuple[int, int], weights: str = "caffe-vgg16",
              device: str = "cpu", p: float = GEM_P, batch_size: int = 8) -> np.ndarray:
    """Off-the-shelf VGG16 conv5_3 (after ReLU) with generalised-mean pooling, L2-normalised."""
    trunk = VGG16Trunk()
    load_backbone_weights(trunk, weights)
    dev = resolve_device(device)
    net = trunk.features[:RELU5_3].to(dev).eval()
    pre = PREPROCESSING_FOR_WEIGHTS[weights]
    out = []
    for s in range(0, len(images), batch_size):
        x = net(prepare_batch(images[s:s + batch_size], image_size, pre).to(dev))
        g = x.clamp(min=GEM_EPS).pow(p).mean(dim=(2, 3)).pow(1.0 / p)
        out.append(torch.nn.functional.normalize(g, dim=1).cpu())
    return torch.cat(out).numpy()
