"""Losses against values computed by hand on toy descriptors."""
import math

import pytest
import torch

from densernet_core.training import losses


def toy():
    q = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[0.8, 0.6]])  # |q-p|^2 = 0.04 + 0.36 = 0.4
    n = torch.tensor([[[0.0, 1.0], [-1.0, 0.0]]])  # |q-n|^2 = 2 and 4
    return q, p, n


def test_triplet_hand_computed():
    q, p, n = toy()
    # max(0, 0.4 + m - 2) and max(0, 0.4 + m - 4): both zero with m = 0.1 ...
    assert losses.triplet(q, p, n, margin=0.1).item() == pytest.approx(0.0)
    # ... and (0.4 + 1.8 - 2, 0) averaged over the two negatives with m = 1.8.
    assert losses.triplet(q, p, n, margin=1.8).item() == pytest.approx(0.2 / 2)


def test_sare_joint_hand_computed():
    q, p, n = toy()
    expected = -math.log(math.exp(-0.4) / (math.exp(-0.4) + math.exp(-2) + math.exp(-4)))
    assert losses.sare_joint(q, p, n).item() == pytest.approx(expected, rel=1e-5)


def test_sare_ind_hand_computed():
    q, p, n = toy()
    per_neg = [-math.log(math.exp(-0.4) / (math.exp(-0.4) + math.exp(-d))) for d in (2, 4)]
    assert losses.sare_ind(q, p, n).item() == pytest.approx(sum(per_neg) / 2, rel=1e-5)


def test_losses_have_gradients_and_registry():
    q, p, n = (t.clone().requires_grad_() for t in toy())
    for name in losses.names():
        q.grad = None
        losses.create(name)(q, p, n, margin=1.8).backward()
        assert q.grad is not None and torch.isfinite(q.grad).all()
    with pytest.raises(ValueError, match="unknown"):
        losses.create("contrastive")


def test_similarity_distillation_hand_computed():
    q = torch.tensor([[1.0, 0.0]])
    cands = torch.tensor([[[0.8, 0.6], [0.0, 1.0]]])  # student cosines 0.8 and 0.0
    teacher = torch.tensor([[0.5, 0.1]])
    t = [math.exp(0.5 / 0.2), math.exp(0.1 / 0.2)]
    s = [math.exp(0.8 / 0.2), math.exp(0.0 / 0.2)]
    pt = [v / sum(t) for v in t]
    ps = [v / sum(s) for v in s]
    expected = sum(a * math.log(a / b) for a, b in zip(pt, ps))
    got = losses.similarity_distillation(q, cands, teacher, temperature=0.2)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    same = losses.similarity_distillation(q, cands, torch.tensor([[0.8, 0.0]]), temperature=0.2)
    assert same.item() == pytest.approx(0.0, abs=1e-6)  # the student already ranks as the teacher does
