"""Typed configuration for the model, validated on load.

Configuration is data: YAML or JSON maps onto these dataclasses, and every value is
checked once, here, with a message that names the field and the value at fault.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

# Branch widths (pool3, pool4, pool5) of the reference model zoo. "large" is the paper's model.
# A width of 0 leaves that depth out: "conv5" is the single-scale NetVLAD ablation, with the same
# descriptor size as "small" so the comparison is about scales, not dimensions.
PRESETS: dict[str, tuple[int, int, int]] = {
    "small": (64, 64, 64),
    "middle": (128, 128, 128),
    "large": (384, 256, 512),
    "conv5": (0, 0, 192),
}
WEIGHT_SOURCES = ("caffe-vgg16", "torchvision", "none")
# Which preprocessing each backbone weight source was trained with.
PREPROCESSING_FOR_WEIGHTS = {"caffe-vgg16": "caffe", "torchvision": "torchvision", "none": "torchvision"}
PREPROCESSINGS = ("caffe", "torchvision")
# Trainable part of the trunk, by the first torchvision `features` index that trains.
TRAIN_LAYERS = {"none": 31, "conv5": 24, "conv4": 17, "conv3": 10, "conv2": 5, "full": 0}
FUSE_STRIDES = (4, 8)
# How the 1x1 branches start before training: "random" (PyTorch default, the reference) or "pca"
# (whitening of each tap's local features, so every depth contributes equally; docs/TRAINING.md).
BRANCH_INITS = ("random", "pca")
# The optional final PCA-whitening stage is fitted on one VLAD per image and needs at least this many
# images per kept dimension. With fewer, the whitened descriptors of the very images it was fitted on
# come out nearly orthogonal to one another and retrieval among them collapses (Gardens Point: 300
# images whitened to 256-D found their own places 3-31 % of the time, against 92-98 % raw). The
# default, pca_dim 0, keeps the raw VLAD (docs/TRAINING.md, "The final descriptor stage").
MIN_IMAGES_PER_PCA_DIM = 10
# Most NetVLAD heads one checkpoint may hold (each costs a branch pass and a NetVLAD per frame).
MAX_HEADS = 16


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a DenserNet (stored verbatim in each checkpoint)."""

    preset: str = "small"
    branch_dims: tuple[int, int, int] = PRESETS["small"]
    fuse_stride: int = 4
    num_clusters: int = 64
    pca_dim: int = 0  # 0: the raw VLAD is the descriptor; > 0: PCA whitening (see MIN_IMAGES_PER_PCA_DIM)
    image_size: tuple[int, int] = (480, 640)  # (height, width) images are resized to
    train_layers: str = "none"
    weights: str = "caffe-vgg16"
    preprocessing: str = "caffe"
    # NetVLAD heads over the one trunk: > 1 is a seed ensemble, each head trained alone on the frozen
    # trunk and merged (model/ensemble.py); its descriptor stays one head's size (docs/TRAINING.md).
    heads: int = 1

    def __post_init__(self) -> None:
        if self.preset not in PRESETS and self.preset != "custom":
            raise ConfigError(f"preset {self.preset!r} unknown; choose one of {sorted(PRESETS)} or 'custom'")
        dims = tuple(self.branch_dims)
        if len(dims) != 3 or not all(isinstance(d, int) and d >= 0 for d in dims) or not any(dims):
            raise ConfigError(f"branch_dims must be three integers >= 0 (0 = depth not used), at least one "
                              f"positive, got {self.branch_dims!r}")
        object.__setattr__(self, "branch_dims", dims)
        if self.fuse_stride not in FUSE_STRIDES:
            raise ConfigError(f"fuse_stride must be one of {FUSE_STRIDES}, got {self.fuse_stride!r}")
        if not isinstance(self.num_clusters, int) or self.num_clusters < 2:
            raise ConfigError(f"num_clusters must be an integer >= 2, got {self.num_clusters!r}")
        if not isinstance(self.pca_dim, int) or self.pca_dim < 0:
            raise ConfigError(f"pca_dim must be an integer >= 0 (0 disables PCA), got {self.pca_dim!r}")
        size = tuple(self.image_size)
        if len(size) != 2 or not all(isinstance(s, int) and s >= 32 for s in size):
            raise ConfigError(f"image_size must be [height, width], each an integer >= 32, got {self.image_size!r}")
        object.__setattr__(self, "image_size", size)
        if self.train_layers not in TRAIN_LAYERS:
            raise ConfigError(f"train_layers {self.train_layers!r} unknown; choose one of {list(TRAIN_LAYERS)}")
        if self.weights not in WEIGHT_SOURCES:
            raise ConfigError(f"weights {self.weights!r} unknown; choose one of {list(WEIGHT_SOURCES)}")
        if self.preprocessing not in PREPROCESSINGS:
            raise ConfigError(f"preprocessing {self.preprocessing!r} unknown; choose one of {list(PREPROCESSINGS)}")
        if not isinstance(self.heads, int) or isinstance(self.heads, bool) or not 1 <= self.heads <= MAX_HEADS:
            raise ConfigError(f"heads must be an integer in 1..{MAX_HEADS}, got {self.heads!r}")
        if self.heads > 1 and self.pca_dim:
            raise ConfigError(f"heads {self.heads} with pca_dim {self.pca_dim}: an ensemble's descriptor is the "
                              "heads' VLADs summed at one head's size; it takes no PCA stage (pca_dim: 0)")
        if self.heads > 1 and self.train_layers != "none":
            raise ConfigError(f"heads {self.heads} needs the trunk frozen (train_layers: none), got "
                              f"{self.train_layers!r}: the heads share one trunk")

    @property
    def feature_dim(self) -> int:
        return sum(self.branch_dims)

    @property
    def vlad_dim(self) -> int:
        return self.feature_dim * self.num_clusters

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["branch_dims"] = list(self.branch_dims)
        data["image_size"] = list(self.image_size)
        if self.heads == 1:
            del data["heads"]  # a one-head checkpoint stores the config it stored before heads existed
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def heads_note(heads: int) -> str:
    """The phrase a model's one-line description gains when its checkpoint is a seed ensemble."""
    return f", {heads} heads (a seed ensemble)" if heads > 1 else ""


def dataclass_from_mapping(cls: type, data: Mapping[str, Any], where: str) -> Any:
    """Build a dataclass from a mapping, rejecting unknown keys by name (typos must not pass silently)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(names)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if types[key] in ("float", float) and isinstance(value, str):  # YAML reads 1e-5 (no dot) as a string
            try:
                values[key] = float(value)
            except ValueError:
                raise ConfigError(f"{where}: {key} must be a number, got {value!r}") from None
        elif types[key] in ("int", int, "int | None"):
            optional = types[key] == "int | None"  # null: the field's own default behaviour
            if not ((optional and value is None) or (isinstance(value, int) and not isinstance(value, bool))):
                raise ConfigError(f"{where}: {key} must be an integer{' or null' if optional else ''}, got {value!r}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def model_config(preset: str = "small", **overrides: Any) -> ModelConfig:
    """A preset's config with the caller's overrides; the preset fixes branch widths unless overridden."""
    if preset not in PRESETS:
        raise ConfigError(f"preset {preset!r} unknown; choose one of {sorted(PRESETS)}")
    weights = overrides.get("weights", "caffe-vgg16")
    base = {"preset": preset, "branch_dims": PRESETS[preset], "preprocessing": PREPROCESSING_FOR_WEIGHTS.get(weights, "caffe")}
    base.update(overrides)
    return dataclass_from_mapping(ModelConfig, base, f"preset {preset!r}")


def model_config_from_json(text: str) -> ModelConfig:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"model config is not valid JSON: {exc}") from exc
    return dataclass_from_mapping(ModelConfig, data, "model config")


def load_yaml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file (`what` it is)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file, so not a YAML {what} ({exc.reason} at byte {exc.start})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data
