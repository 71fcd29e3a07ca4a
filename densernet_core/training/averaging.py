"""Weight averaging: the running mean of the trained weights over the late training steps.

With 100 training places the triplet loss reaches ~0 within a few epochs, and what the final weights
look like then depends on the last few tuples drawn: five seeds of the Gardens Point recipe spread
night_right -> day_left R@1 from 0.69 to 0.82 (docs/BENCHMARKS.md). The mean of the iterates from a
chosen epoch on (Polyak-Ruppert averaging; SWA with a constant schedule) is a standard way to take
that last-steps noise out. `optim.average_from` turns it on; the result, not the last epoch, is then
the model (docs/TRAINING.md, *Recipe trials*).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from ..tensor_files import write_safetensors

META_KEY = "weight_average"


class WeightAverage:
    """Equal-weight running mean of a model's trainable parameters, one update per training step."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.count = 0
        self.mean: dict[str, torch.Tensor] = {}

    def _trainable(self) -> dict[str, torch.Tensor]:
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self) -> None:
        self.count += 1
        for name, p in self._trainable().items():
            value = p.detach().float()
            if name not in self.mean:
                self.mean[name] = value.clone()
            else:
                self.mean[name] += (value - self.mean[name]) / self.count

    @torch.no_grad()
    def apply_to(self, model: nn.Module) -> nn.Module:
        """Write the mean into `model` (a copy of the trained one; frozen weights are left as they are)."""
        if not self.count:
            raise RuntimeError("no training step was averaged: optim.average_from is after the last epoch")
        params = dict(model.named_parameters())
        missing = sorted(set(self.mean) - set(params))
        if missing:
            raise KeyError(f"the weight average holds parameters the model lacks: {missing[:5]}")
        for name, value in self.mean.items():
            params[name].copy_(value.to(params[name].dtype))
        return model

    def save(self, path: Path) -> None:
        tensors = {k: v.cpu().contiguous() for k, v in self.mean.items()}
        write_safetensors(tensors, path, {META_KEY: json.dumps({"count": self.count})})

    def load(self, path: Path) -> None:
        """Continue a resumed run's average (the file `save` wrote at the last finished epoch)."""
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if META_KEY not in meta:
            raise ValueError(f"{path} is not a weight average (no {META_KEY!r} metadata)")
        device = next(self.model.parameters()).device
        self.mean = {k: v.to(device) for k, v in load_file(str(path)).items()}
        self.count = int(json.loads(meta[META_KEY])["count"])
        unknown = sorted(set(self.mean) - set(self._trainable()))
        if unknown:
            raise ValueError(f"{path} averages parameters this model does not train: {unknown[:5]}")


@torch.no_grad()
def uniform_soup(models: list[nn.Module]) -> nn.Module:
    """The first model with every floating weight replaced by the mean over all of them (a "model soup").

    Meant for runs trained from one initialisation (`cluster.seed`) in different orders: they stay close
    enough that the mean of their weights behaves like their ensemble, at one network's cost; runs from
    different k-means initialisations have unrelated clusters and must not be mixed (docs/TRAINING.md)."""
    if not models:
        raise ValueError("a soup needs at least one model")
    states = [m.state_dict() for m in models]
    for i, state in enumerate(states[1:], 1):
        if state.keys() != states[0].keys() or any(state[k].shape != v.shape for k, v in states[0].items()):
            raise ValueError(f"model {i} of the soup has other weights than model 0 (another preset or size)")
    mean = {k: (sum(s[k].double() for s in states) / len(states)).to(v.dtype) if v.is_floating_point() else v
            for k, v in states[0].items()}
    models[0].load_state_dict(mean)
    return models[0]
