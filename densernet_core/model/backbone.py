"""The VGG16 trunk, run once per image, with taps after pool3, pool4 and pool5.

The reference code slices `vgg.features` three times and runs the image through each
slice (three trunk passes). Here one pass records the three maps on the way.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from ..config import TRAIN_LAYERS
from .weights import WeightsError, load_caffe_vgg16, load_torchvision_vgg16

# torchvision `vgg16().features` indices of pool3 (stride 8, 256 ch), pool4 (16, 512), pool5 (32, 512).
TAP_INDICES = (16, 23, 30)
TAP_CHANNELS = (256, 512, 512)
TAP_STRIDES = (8, 16, 32)


class VGG16Trunk(nn.Module):
    """torchvision's `features` layout, so its and the converted Caffe weights load unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.features = make_layers(cfgs["D"], batch_norm=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps: list[torch.Tensor] = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAP_INDICES:
                taps.append(x)
        return taps

    def set_trainable(self, train_layers: str) -> None:
        """Freeze every layer before the first trainable one (reference: all frozen)."""
        first = TRAIN_LAYERS[train_layers]
        for i, layer in enumerate(self.features):
            for p in layer.parameters():
                p.requires_grad = i >= first


def load_backbone_weights(trunk: VGG16Trunk, source: str) -> None:
    if source == "none":
        return
    state = load_caffe_vgg16() if source == "caffe-vgg16" else load_torchvision_vgg16()
    missing, unexpected = trunk.features.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsError(f"{source} weights do not fit VGG16: missing {missing}, unexpected {unexpected}")
