"""NetVLAD aggregation (Arandjelovic et al.) with the reference's data-driven initialisation."""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LOG = logging.getLogger("densernet")
# Soft-assignment sharpness: the reference sets alpha so that the second-nearest centroid
# gets about this much weight relative to the nearest, on average over training descriptors.
RUNNER_UP_WEIGHT = 0.01


class NetVLAD(nn.Module):
    def __init__(self, num_clusters: int, dim: int) -> None:
        super().__init__()
        self.num_clusters = num_clusters
        self.dim = dim
        self.conv = nn.Conv2d(dim, num_clusters, kernel_size=1, bias=False)
        self.centroids = nn.Parameter(torch.rand(num_clusters, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """NxCxHxW dense features -> Nx(K*C) intra- and L2-normalised VLAD."""
        n, c = x.shape[:2]
        x = F.normalize(x, p=2, dim=1)
        assign = F.softmax(self.conv(x).view(n, self.num_clusters, -1), dim=1)  # N,K,HW
        flat = x.view(n, c, -1)  # N,C,HW
        # sum_i a_ik (x_i - c_k) without materialising the N*K*C*HW residual tensor.
        vlad = torch.bmm(assign, flat.transpose(1, 2)) - assign.sum(-1).unsqueeze(-1) * self.centroids.unsqueeze(0)
        vlad = F.normalize(vlad, p=2, dim=2).reshape(n, -1)
        return F.normalize(vlad, p=2, dim=1)

    @torch.no_grad()
    def init_from_clusters(self, centroids: np.ndarray, descriptors: np.ndarray) -> float:
        """Centroids from k-means; assignment weights alpha*c/|c|; alpha from the data. Returns alpha."""
        if centroids.shape != (self.num_clusters, self.dim):
            raise ValueError(f"centroids have shape {centroids.shape}, expected {(self.num_clusters, self.dim)}")
        if descriptors.ndim != 2 or descriptors.shape[1] != self.dim:
            raise ValueError(f"descriptors have shape {descriptors.shape}, expected (N, {self.dim})")
        unit = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
        dots = np.sort(unit @ descriptors.T, axis=0)[::-1]
        gap = float(np.mean(dots[0] - dots[1]))
        if not gap > 0:
            raise ValueError("degenerate clustering: nearest and second-nearest centroids are equally close")
        alpha = float(-np.log(RUNNER_UP_WEIGHT) / gap)
        self.centroids.copy_(torch.from_numpy(centroids.astype(np.float32)))
        self.conv.weight.copy_(torch.from_numpy((alpha * unit).astype(np.float32))[:, :, None, None])
        LOG.info("NetVLAD initialised: K=%d, dim=%d, alpha=%.2f", self.num_clusters, self.dim, alpha)
        return alpha


def kmeans(descriptors: np.ndarray, k: int, iterations: int = 100, seed: int = 0) -> np.ndarray:
    """k-means centroids with FAISS (what the NetVLAD init is computed from)."""
    import faiss

    x = np.ascontiguousarray(descriptors, dtype=np.float32)
    if x.shape[0] < k:
        raise ValueError(f"need at least {k} descriptors to find {k} clusters, got {x.shape[0]}")
    km = faiss.Kmeans(x.shape[1], k, niter=iterations, seed=seed, verbose=False)
    km.train(x)
    return np.asarray(km.centroids, dtype=np.float32)
