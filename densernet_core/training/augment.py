"""Augmentation: photometric (night and weather, so day-only routes teach invariance) and a random window
of the fused map (a shift of viewpoint)."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from .train_config import AugmentConfig


def night_weather(rgb: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Gamma, darkening, a colour cast, blur and sensor noise, each drawn from the configured range."""
    x = rgb.astype(np.float32) / 255.0
    x = x ** rng.uniform(*cfg.gamma)
    x = x * rng.uniform(*cfg.brightness)
    x = x * (1.0 + rng.uniform(-cfg.color_cast, cfg.color_cast, size=3)).astype(np.float32)
    sigma = rng.uniform(*cfg.blur_sigma)
    if sigma > 0.05:
        x = cv2.GaussianBlur(x, (0, 0), sigmaX=sigma)
    x = x * 255.0 + rng.normal(0.0, rng.uniform(*cfg.noise_std), size=x.shape).astype(np.float32)
    return np.clip(x, 0, 255).astype(np.uint8)


def crop_windows(dense: torch.Tensor, share: tuple[float, float], rng: np.random.Generator) -> torch.Tensor:
    """One window size for the batch (a share of the height and width drawn from `share`), placed at random
    in each image: the images still stack, and each keeps a different part of its view. Works on the fused
    map, so the window moves in steps of its stride whatever the trunk's depths."""
    n, _, height, width = dense.shape
    s = rng.uniform(*share)
    h, w = max(1, round(s * height)), max(1, round(s * width))
    if (h, w) == (height, width):
        return dense
    ys, xs = rng.integers(0, height - h + 1, n), rng.integers(0, width - w + 1, n)
    return torch.stack([dense[i, :, y:y + h, x:x + w] for i, (y, x) in enumerate(zip(ys.tolist(), xs.tolist()))])
