"""Photometric augmentation that imitates night and weather, so day-only routes teach invariance."""
from __future__ import annotations

import cv2
import numpy as np

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
