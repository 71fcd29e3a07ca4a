"""Off-the-shelf descriptors on real Gardens Point frames: ImageNet weights must clearly beat random ones."""
import torch

from densernet_core.model.network import build
from densernet_core.training.recall import recall_at_n, search

FRAMES = list(range(0, 200, 5))  # 40 places, 5 frames apart
SIZE = (120, 160)


def _recall(gp, weights):
    torch.manual_seed(0)
    db = [gp / "day_left" / f"Image{i:03d}.jpg" for i in FRAMES]
    queries = [gp / "day_right" / f"Image{i:03d}.jpg" for i in FRAMES]
    positives = [[j for j, f in enumerate(FRAMES) if abs(f - i) <= 2] for i in FRAMES]
    model = build("small", weights=weights, image_size=SIZE, pca_dim=0)
    model.init_netvlad(db, per_image=50, iterations=20)
    _, ranked = search(model.describe(db), model.describe(queries), 5)
    return recall_at_n(ranked, positives, [1, 5])


def test_imagenet_weights_beat_random_on_gardens_point(gardens_point, caffe_weights_ready):
    imagenet = _recall(gardens_point, "caffe-vgg16")
    random = _recall(gardens_point, "none")
    print(f"day_right->day_left R@1: imagenet {imagenet[1]:.3f}, random {random[1]:.3f}")
    assert imagenet[1] >= 0.85
    assert imagenet[1] >= random[1] + 0.15
