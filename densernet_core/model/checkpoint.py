"""One checkpoint file: config, preprocessing, all weights, NetVLAD init and PCA.

Safetensors holds the tensors and a JSON config in its metadata, so loading never unpickles
anything. Official DenserNet/OpenIBL `state_dict` files (torch pickles) are imported with
`torch.load(weights_only=True)`, which refuses arbitrary objects.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from safetensors import safe_open

from ..tensor_files import write_safetensors
from ..listing import first_few
from ..config import PREPROCESSINGS, PRESETS, ConfigError, ModelConfig, model_config_from_json
from .network import DenserNet, resolve_device
from .pca import PCAWhitening
from .weights import sha256_of

LOG = logging.getLogger("densernet")
FORMAT = "densernet-checkpoint"
FORMAT_VERSION = "1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, foreign or does not fit its config."""


def save_checkpoint(model: DenserNet, path: str | Path, extra: dict[str, str] | None = None) -> Path:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": model.config.to_json(),
            "netvlad_init": model.netvlad_init, "pca_dim": str(model.pca.out_dim if model.pca else 0)}
    meta.update(extra or {})
    return write_safetensors(state, path, meta)


def read_checkpoint(path: str | Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises SafetensorError / OSError for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable densernet checkpoint (truncated or foreign file: {exc})") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: a safetensors file but not a densernet checkpoint (no '{FORMAT}' marker)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {meta.get('format_version')!r}, "
                              f"this densernet reads {FORMAT_VERSION!r}")
    return meta, state


def model_from_state(config: ModelConfig, state: dict[str, torch.Tensor], netvlad_init: str, where: str) -> DenserNet:
    model = DenserNet(config)
    pca_w = state.get("pca.linear.weight")
    if pca_w is not None:
        model.pca = PCAWhitening(pca_w.shape[1], pca_w.shape[0])
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{where}: does not match its config: missing [{first_few(missing)}], "
                              f"unexpected [{first_few(unexpected)}]")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{where}: tensor {key} has shape {tuple(state[key].shape)}, "
                                  f"the config needs {tuple(tensor.shape)}")
    model.load_state_dict(state)
    model.netvlad_init = netvlad_init
    return model


def load_model(path: str | Path, device: str = "cpu", image_size: tuple[int, int] | None = None) -> DenserNet:
    """Restore a model; `image_size` overrides the stored inference resolution."""
    meta, state = read_checkpoint(path)
    try:
        config = model_config_from_json(meta.get("config", ""))
    except ConfigError as exc:
        raise CheckpointError(f"{path}: invalid stored config: {exc}") from exc
    if image_size is not None:
        config = config.replace(image_size=tuple(image_size))
    model = model_from_state(config, state, meta.get("netvlad_init", "random"), str(path))
    if model.netvlad_init != "kmeans":
        LOG.warning("%s: NetVLAD was never initialised from data; descriptors will be poor", path)
    return model.to(resolve_device(device)).eval()


TRAINED_STAGES = ("train", "best", "final")  # the `stage` densernet-train writes into the checkpoints it saves


def is_trained(path: str | Path) -> bool:
    """Whether a checkpoint's weights come from training (a stage densernet-train saves, or an ensemble of
    trained seeds), not from `densernet init` alone. The dense re-rank was measured to help the former and to
    add wrong fixes with an off-the-shelf one, so a map decides by it (mapping/grids.py)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - as read_checkpoint: truncated or foreign
        raise CheckpointError(f"{path}: not a readable densernet checkpoint ({exc})") from exc
    return meta.get("stage") in TRAINED_STAGES or "ensemble_members" in meta


def checkpoint_hash(path: str | Path) -> str:
    """Content hash a map records, so a map is never queried with another model's descriptors."""
    return sha256_of(Path(path))


# ---- official DenserNet / OpenIBL checkpoints ------------------------------------------------
# official key (after stripping 'module.')          -> ours
#   base_model.conv_h.0.<i>.{weight,bias}            -> trunk.features.<i>.*   (conv_1/conv_m share these)
#   base_model.conv_1.2.* (pool3 branch)             -> branches.0.*
#   base_model.conv_m.2.* (pool4 branch)             -> branches.1.*
#   base_model.conv_h.2.* (pool5 branch)             -> branches.2.*
#   net_vlad.conv.weight / net_vlad.centroids        -> netvlad.conv.weight / netvlad.centroids
#   pca_layer.weight (D,K*C,1,1) / pca_layer.bias    -> pca.linear.weight (D,K*C) / pca.linear.bias
_OFFICIAL = [
    (re.compile(r"^base_model\.conv_h\.0\.(\d+)\.(weight|bias)$"), r"trunk.features.\1.\2"),
    (re.compile(r"^base_model\.conv_1\.2\.(weight|bias)$"), r"branches.0.\1"),
    (re.compile(r"^base_model\.conv_m\.2\.(weight|bias)$"), r"branches.1.\1"),
    (re.compile(r"^base_model\.conv_h\.2\.(weight|bias)$"), r"branches.2.\1"),
    (re.compile(r"^net_vlad\.(conv\.weight|centroids)$"), r"netvlad.\1"),
    (re.compile(r"^pca_layer\.(weight|bias)$"), r"pca.linear.\1"),
]
_OFFICIAL_IGNORED = re.compile(r"^base_model\.conv_(1|m)\.0\.")  # shared slices of the same trunk


def import_official(path: str | Path, image_size: tuple[int, int] = (480, 640),
                    preprocessing: str = "torchvision") -> DenserNet:
    """Load an official DenserNet (OpenIBL-style) `.pth`/`.pth.tar` into our model, its PCA included.

    OpenIBL trains from torchvision's VGG16 and its preprocessing; a file trained from Caffe
    weights needs `preprocessing="caffe"`."""
    if preprocessing not in PREPROCESSINGS:
        raise ValueError(f"preprocessing {preprocessing!r} unknown; choose one of {list(PREPROCESSINGS)}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint not found: {path}")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot be read as a weights-only torch file: {exc}") from exc
    raw = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: no state_dict inside")
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if _OFFICIAL_IGNORED.match(key):
            continue
        for pattern, repl in _OFFICIAL:
            if pattern.match(key):
                new = pattern.sub(repl, key)
                state[new] = value.reshape(value.shape[0], -1) if new == "pca.linear.weight" else value
                break
        else:
            raise CheckpointError(f"{path}: unexpected key {key!r} for an official DenserNet checkpoint")
    try:
        dims = tuple(int(state[f"branches.{i}.weight"].shape[0]) for i in range(3))
        k = int(state["netvlad.centroids"].shape[0])
    except KeyError as exc:
        raise CheckpointError(f"{path}: missing {exc} in the official checkpoint") from exc
    preset = next((name for name, d in PRESETS.items() if d == dims), "custom")
    pca = state.get("pca.linear.weight")
    config = ModelConfig(preset=preset, branch_dims=dims, num_clusters=k, image_size=tuple(image_size),
                         pca_dim=int(pca.shape[0]) if pca is not None else 0,
                         weights="torchvision" if preprocessing == "torchvision" else "caffe-vgg16",
                         preprocessing=preprocessing)
    return model_from_state(config, state, "kmeans", str(path)).eval()
