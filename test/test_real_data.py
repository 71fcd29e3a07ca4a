"""Off-the-shelf descriptors on real Gardens Point frames: ImageNet weights must clearly beat random ones.

Across the day viewpoint change a random trunk already finds 70-80 % of 40 places (it varied between
runs and machines: 0.72 here, 0.80 in a CI run), too close to ImageNet's 0.95 for a margin the noise
cannot cross. At night a random trunk finds 5-10 % (three seeds) against ImageNet's 50 %, so the
night margin is what the test asserts; the day figure must stay high for ImageNet alone.
"""
import torch

from densernet_core.model.network import build
from densernet_core.training.recall import recall_at_n, search

FRAMES = list(range(0, 200, 5))  # 40 places, 5 frames apart
SIZE = (120, 160)
NIGHT_MARGIN = 0.25  # measured: 0.40-0.45 (ImageNet 0.50, random trunk 0.05-0.10 over seeds 0-2)


def _recall(gp, weights):
    torch.manual_seed(0)
    db = [gp / "day_left" / f"Image{i:03d}.jpg" for i in FRAMES]
    positives = [[j for j, f in enumerate(FRAMES) if abs(f - i) <= 2] for i in FRAMES]
    model = build("small", weights=weights, image_size=SIZE)
    model.init_netvlad(db, per_image=50, iterations=20)
    db_desc = model.describe(db)
    out = {}
    for traverse in ("day_right", "night_right"):
        _, ranked = search(db_desc, model.describe([gp / traverse / f"Image{i:03d}.jpg" for i in FRAMES]), 5)
        out[traverse] = recall_at_n(ranked, positives, [1])[1]
    return out


def test_imagenet_weights_beat_random_on_gardens_point(gardens_point, caffe_weights_ready):
    imagenet = _recall(gardens_point, "caffe-vgg16")
    random = _recall(gardens_point, "none")
    print(f"R@1 day_right->day_left: imagenet {imagenet['day_right']:.3f}, random {random['day_right']:.3f}; "
          f"night_right->day_left: imagenet {imagenet['night_right']:.3f}, random {random['night_right']:.3f}")
    assert imagenet["day_right"] >= 0.85
    assert imagenet["night_right"] >= random["night_right"] + NIGHT_MARGIN
