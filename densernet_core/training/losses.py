"""Metric-learning losses over (query, positive, negatives) descriptors, by name.

All take q: B x D, p: B x D, n: B x M x D (unit-norm descriptors) and use squared Euclidean
distances, as NetVLAD (triplet) and Liu et al. 2019 (SARE) define them.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def _distances(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d_pos = ((q - p) ** 2).sum(-1)  # B
    d_neg = ((q.unsqueeze(1) - n) ** 2).sum(-1)  # B x M
    return d_pos, d_neg


def triplet(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """Mean over all (query, negative) pairs of max(0, d(q,p)^2 + margin - d(q,n)^2)."""
    d_pos, d_neg = _distances(q, p, n)
    return F.relu(d_pos.unsqueeze(1) + margin - d_neg).mean()


def sare_joint(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """-log of the positive's softmax probability against all negatives jointly."""
    d_pos, d_neg = _distances(q, p, n)
    logits = -torch.cat([d_pos.unsqueeze(1), d_neg], dim=1)
    return -F.log_softmax(logits, dim=1)[:, 0].mean()


def sare_ind(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """The same softmax, but the positive against each negative independently, averaged."""
    d_pos, d_neg = _distances(q, p, n)
    logits = -torch.stack([d_pos.unsqueeze(1).expand_as(d_neg), d_neg], dim=2)  # B x M x 2
    return -F.log_softmax(logits, dim=2)[..., 0].mean()


def similarity_distillation(q: torch.Tensor, candidates: torch.Tensor, teacher: torch.Tensor,
                            temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the softmax over each query's candidates by cosine / temperature.

    q: B x D, candidates: B x K x D (unit-norm student descriptors), teacher: B x K cosines. Listwise, so
    the student learns the teachers' order and margins among the hard candidates, not only the positive.
    """
    student = torch.einsum("bd,bkd->bk", q, candidates) / temperature
    target = F.softmax(teacher.to(student.dtype) / temperature, dim=1)
    return F.kl_div(F.log_softmax(student, dim=1), target, reduction="batchmean")


LOSSES: dict[str, Callable[..., torch.Tensor]] = {"triplet": triplet, "sare_joint": sare_joint, "sare_ind": sare_ind}


def names() -> list[str]:
    return sorted(LOSSES)


def create(name: str) -> Callable[..., torch.Tensor]:
    if name not in LOSSES:
        raise ValueError(f"loss {name!r} unknown; choose one of {names()}")
    return LOSSES[name]
