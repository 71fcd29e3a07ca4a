"""PCA whitening of VLAD descriptors, stored as a linear layer."""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import MIN_IMAGES_PER_PCA_DIM, ConfigError

LOG = logging.getLogger("densernet")
# Eigenvalues below this fraction of the largest are treated as zero (no whitening blow-up).
EIG_FLOOR = 1e-9


class PCAWhitening(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    @property
    def out_dim(self) -> int:
        return self.linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x), p=2, dim=1)


def check_pca_fit_size(images: int, out_dim: int) -> None:
    """Refuse, before any work, a whitening stage that the fit set is too small to support."""
    if out_dim > 0 and images < MIN_IMAGES_PER_PCA_DIM * out_dim:
        raise ConfigError(
            f"pca_dim {out_dim} needs at least {MIN_IMAGES_PER_PCA_DIM * out_dim} images to fit on "
            f"({MIN_IMAGES_PER_PCA_DIM} per kept dimension), got {images}: whitening fitted on fewer destroys "
            f"retrieval among those very images. Use pca_dim 0 (the raw VLAD, the default) or at most "
            f"{images // MIN_IMAGES_PER_PCA_DIM}")


def principal_axes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, eigenvalues (descending) and eigenvectors (columns) of the sample covariance of N x d data."""
    mean = x.mean(axis=0)
    xc = x - mean
    eigval, vec = np.linalg.eigh(xc.T @ xc / (len(x) - 1))
    order = np.argsort(eigval)[::-1]
    return mean, eigval[order], vec[:, order]


def fit_pca_whitening(descriptors: np.ndarray, out_dim: int) -> PCAWhitening:
    """Whitening learnt from training descriptors; out_dim is clipped to the rank the data supports.

    With fewer samples than dimensions (the usual case: 12k-D VLAD, a few thousand images) the
    eigenvectors come from the N x N Gram matrix, as the NetVLAD/OpenIBL code does.
    """
    x = np.asarray(descriptors, dtype=np.float64)
    n, d = x.shape
    if n < 2:
        raise ValueError(f"PCA needs at least 2 descriptors, got {n}")
    if n < d:
        mean = x.mean(axis=0)
        xc = x - mean
        gram = xc @ xc.T / (n - 1)
        eigval, v = np.linalg.eigh(gram)
        order = np.argsort(eigval)[::-1]
        eigval, v = eigval[order], v[:, order]
        keep = eigval > eigval[0] * EIG_FLOOR
        eigval, v = eigval[keep], v[:, keep]
        u = xc.T @ v / np.sqrt(eigval * (n - 1))  # unit-norm principal directions in R^d
    else:
        mean, eigval, u = principal_axes(x)
        keep = eigval > eigval[0] * EIG_FLOOR
        eigval, u = eigval[keep], u[:, keep]
    k = min(out_dim, len(eigval))
    if k < out_dim:
        LOG.warning("PCA: %d dimensions requested, data supports %d; using %d", out_dim, len(eigval), k)
    weight = (u[:, :k] / np.sqrt(eigval[:k])).T  # k x d
    layer = PCAWhitening(d, k)
    with torch.no_grad():
        layer.linear.weight.copy_(torch.from_numpy(weight.astype(np.float32)))
        layer.linear.bias.copy_(torch.from_numpy((-weight @ mean).astype(np.float32)))
    return layer
