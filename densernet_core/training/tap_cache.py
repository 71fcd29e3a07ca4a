"""Frozen-trunk outputs computed once per image, so CPU training only runs the trainable head.

Valid while the trunk is frozen up to pool4 (`train_layers` none or conv5): the cache holds the
taps the head needs (pool4 feeds a trainable conv5 block). With augmentation, `copies` extra
variants per image are drawn once and stored; training picks among them.
The cache lives in chunk files named by a key over everything that changes its content, so a
rerun reuses it and an interrupted build resumes at the next chunk.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm import tqdm

from .augment import night_weather
from ..model.backbone import TAP_INDICES
from ..images import normalise, read_image, resize
from ..model.network import TAP_NAMES, DenserNet
from ..tensor_files import write_safetensors
from .train_config import AugmentConfig

LOG = logging.getLogger("densernet")
CHUNK = 32  # images per cache file


def stored_taps(model: DenserNet) -> tuple[int, ...]:
    """Tap indices the cache must hold for this model's trainable head."""
    used = set(model.used_taps)
    if model.config.train_layers == "conv5":
        used.discard(2)
        used.add(1)  # pool5 is recomputed from pool4 through the trainable conv5 block
    elif model.config.train_layers != "none":
        raise ValueError(f"taps cannot be cached when train_layers is {model.config.train_layers!r} "
                         "(the trunk below pool4 trains)")
    return tuple(sorted(used))


def trunk_taps(model: DenserNet, taps: dict[int, torch.Tensor]) -> list[torch.Tensor | None]:
    """The three taps for `fuse`, recomputing pool5 when conv5 trains."""
    out: list[torch.Tensor | None] = [taps.get(0), taps.get(1), taps.get(2)]
    if model.config.train_layers == "conv5" and 2 in model.used_taps:
        out[2] = model.trunk.features[24:31](taps[1].float())
    return out


class TapCache:
    def __init__(self, model: DenserNet, images: Sequence[Path], cache_dir: Path, copies: int = 0,
                 augment: AugmentConfig | None = None, seed: int = 0, progress: bool = True) -> None:
        self.images = [Path(p) for p in images]
        self.copies = copies if augment is not None and augment.enabled else 0
        self.taps = stored_taps(model)
        self.trunk = trunk_fingerprint(model)
        # The seed only draws the augmented copies: without them, every seed of a recipe shares one cache.
        key = {"images": [str(p.resolve()) for p in self.images], "size": list(model.config.image_size),
               "weights": model.config.weights, "preprocessing": model.config.preprocessing,
               "taps": list(self.taps), "copies": self.copies, "seed": seed if self.copies else None,
               "augment": augment.__dict__ if self.copies else None,
               "trunk": self.trunk}
        self.key = hashlib.sha256(json.dumps(key, sort_keys=True, default=list).encode()).hexdigest()[:16]
        self.dir = Path(cache_dir) / f"taps-{self.key}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._build(model, augment, seed, progress)
        self.data = self._load()

    @property
    def variants(self) -> int:
        return 1 + self.copies

    def _chunks(self) -> list[range]:
        return [range(s, min(s + CHUNK, len(self.images))) for s in range(0, len(self.images), CHUNK)]

    @torch.inference_mode()
    def _build(self, model: DenserNet, augment: AugmentConfig | None, seed: int, progress: bool) -> None:
        todo = [(k, r) for k, r in enumerate(self._chunks()) if not (self.dir / f"{k:05d}.safetensors").is_file()]
        if not todo:
            return
        was_training = model.training
        model.eval()
        last = max(self.taps)
        stop = TAP_INDICES[last] + 1  # run the trunk only as deep as the deepest stored tap
        try:
            for k, rows in tqdm(todo, desc=f"trunk taps ({self.variants} variant(s))", unit="chunk", disable=not progress):
                out: dict[str, list[torch.Tensor]] = {TAP_NAMES[t]: [] for t in self.taps}
                for i in rows:
                    rgb = resize(read_image(self.images[i]), model.config.image_size)
                    rng = np.random.default_rng([seed, i])
                    variants = [rgb] + [night_weather(rgb, rng, augment) for _ in range(self.copies)]
                    x = normalise(np.stack(variants), model.config.preprocessing).to(model.device)
                    for j, layer in enumerate(model.trunk.features[:stop]):
                        x = layer(x)
                        if j in TAP_INDICES and TAP_INDICES.index(j) in self.taps:
                            out[TAP_NAMES[TAP_INDICES.index(j)]].append(x.half().cpu().contiguous())
                tensors = {name: torch.stack(v).contiguous() for name, v in out.items()}  # images x variants x C x h x w
                write_safetensors(tensors, self.dir / f"{k:05d}.safetensors")
        finally:
            model.train(was_training)

    def _load(self) -> dict[int, torch.Tensor]:
        parts = [load_file(str(self.dir / f"{k:05d}.safetensors")) for k in range(len(self._chunks()))]
        return {t: torch.cat([p[TAP_NAMES[t]] for p in parts]) for t in self.taps}

    def get(self, rows: Sequence[int], variants: Sequence[int] | None = None,
            device: torch.device | str = "cpu") -> dict[int, torch.Tensor]:
        rows_t = torch.as_tensor(list(rows), dtype=torch.long)
        var_t = torch.zeros_like(rows_t) if variants is None else torch.as_tensor(list(variants), dtype=torch.long)
        return {t: v[rows_t, var_t].to(device).float() for t, v in self.data.items()}


def trunk_fingerprint(model: DenserNet) -> str:
    """A cheap hash of the frozen trunk weights so other weights miss the cache."""
    h = hashlib.sha256()
    for idx in (0, 21):  # conv1_1 and conv4_3: frozen whenever the cache is valid
        h.update(model.trunk.features[idx].weight.detach().cpu().numpy().tobytes()[:1 << 16])
    return h.hexdigest()[:16]
