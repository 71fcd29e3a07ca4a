"""One YAML file per experiment: every training hyper-parameter lives here, none in code."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from ..config import BRANCH_INITS, ConfigError, ModelConfig, dataclass_from_mapping, load_yaml, model_config
from .losses import names as loss_names
from .mining import POSITIVE_CHOICES
from .sources import SourceSpec, specs_from

OPTIMIZERS = ("adam", "sgd")
SCHEDULERS = ("none", "step", "cosine")
LR_SCALES = ("absolute", "relative")  # optim.lr_scale: lr as a step in the weights' units, or per tensor as a share of its size
FREEZABLE = ("branches", "netvlad")  # head parts `optim.frozen` can hold at their initialisation
CACHE_MODES = ("auto", "on", "off")
# Trainable trunk settings whose frozen prefix ends at or after pool4, so the trunk's taps can be cached.
CACHEABLE_TRAIN_LAYERS = ("none", "conv5")


@dataclass(frozen=True)
class TrainData:
    database: tuple[SourceSpec, ...]
    queries: tuple[SourceSpec, ...]
    pos_radius: float = 10.0
    neg_radius: float = 25.0
    positives_from_other_source: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.pos_radius < self.neg_radius:
            raise ConfigError(f"need 0 < pos_radius < neg_radius, got {self.pos_radius} and {self.neg_radius}")


@dataclass(frozen=True)
class EvalData:
    database: tuple[SourceSpec, ...]
    queries: tuple[SourceSpec, ...]
    tolerance: float = 25.0
    name: str = ""

    def __post_init__(self) -> None:
        if self.tolerance <= 0:
            raise ConfigError(f"tolerance must be > 0, got {self.tolerance}")


@dataclass(frozen=True)
class ClusterConfig:
    descriptors_per_image: int = 100
    max_images: int = 1000
    iterations: int = 100
    branch_init: str = "random"  # one of config.BRANCH_INITS
    seed: int | None = None  # the images sampled, the branch init and k-means; None: the run's seed

    def __post_init__(self) -> None:
        if self.descriptors_per_image < 1 or self.max_images < 1 or self.iterations < 1:
            raise ConfigError("cluster: descriptors_per_image, max_images and iterations must be >= 1")
        if self.seed is not None and self.seed < 0:  # its type is checked on load (config.dataclass_from_mapping)
            raise ConfigError(f"cluster.seed must be >= 0 or null, got {self.seed!r}")
        if self.branch_init not in BRANCH_INITS:
            raise ConfigError(f"cluster.branch_init {self.branch_init!r} unknown; choose one of {list(BRANCH_INITS)}")


@dataclass(frozen=True)
class MiningConfig:
    num_negatives: int = 10
    negative_samples: int = 1000
    refresh_every: int = 1000  # iterations between descriptor-cache refreshes
    positive: str = "nearest"  # or "each_source": the nearest in one other traversal, taken in turn per epoch

    def __post_init__(self) -> None:
        if self.num_negatives < 1 or self.negative_samples < self.num_negatives or self.refresh_every < 1:
            raise ConfigError("mining: need num_negatives >= 1, negative_samples >= num_negatives, refresh_every >= 1")
        if self.positive not in POSITIVE_CHOICES:
            raise ConfigError(f"mining.positive {self.positive!r} unknown; choose one of {list(POSITIVE_CHOICES)}")


@dataclass(frozen=True)
class OptimConfig:
    loss: str = "triplet"
    margin: float = 0.1
    optimizer: str = "adam"
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 1e-3
    scheduler: str = "step"
    step_size: int = 5
    gamma: float = 0.5
    epochs: int = 5
    batch_size: int = 4  # tuples per step
    amp: bool = True  # fp16 autocast on CUDA; ignored on CPU
    grad_clip: float = 0.0  # 0 = off
    average_from: int = 0  # > 0: the model is the mean of the weights after every step from this epoch (1-based) on
    frozen: tuple[str, ...] = ()  # head parts held at their initialisation (FREEZABLE): fewer weights fitted to few places
    # relative: each tensor's rate is lr x its RMS at the start of training. Adam's step is about lr in every weight
    # whatever the tensor's size, and the PCA branches' weights are 10-40,000 times smaller than NetVLAD's.
    lr_scale: str = "absolute"
    lr_netvlad: float = 0.0  # > 0: NetVLAD's own rate, the branches (and a trained trunk) keep lr; 0: one rate for all

    def __post_init__(self) -> None:
        if self.loss not in loss_names():
            raise ConfigError(f"optim.loss {self.loss!r} unknown; choose one of {loss_names()}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optim.optimizer {self.optimizer!r} unknown; choose one of {list(OPTIMIZERS)}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"optim.scheduler {self.scheduler!r} unknown; choose one of {list(SCHEDULERS)}")
        if self.lr <= 0 or self.epochs < 1 or self.batch_size < 1 or self.step_size < 1 or self.margin < 0:
            raise ConfigError("optim: lr > 0, epochs >= 1, batch_size >= 1, step_size >= 1 and margin >= 0 are required")
        if not 0 <= self.average_from <= self.epochs:
            raise ConfigError(f"optim.average_from must be 0 (off) or an epoch in 1..{self.epochs} "
                              f"(optim.epochs), got {self.average_from}")
        if self.lr_scale not in LR_SCALES:
            raise ConfigError(f"optim.lr_scale {self.lr_scale!r} unknown; choose one of {list(LR_SCALES)}")
        if self.lr_netvlad < 0 or (self.lr_netvlad > 0 and self.lr_scale != "absolute"):
            raise ConfigError(f"optim.lr_netvlad must be 0 (off) or a rate > 0 with lr_scale: absolute, got "
                              f"{self.lr_netvlad} with lr_scale: {self.lr_scale}")
        if isinstance(self.frozen, str) or any(part not in FREEZABLE for part in self.frozen):
            raise ConfigError(f"optim.frozen {self.frozen!r}: a list of head parts from {list(FREEZABLE)}")
        if len(set(self.frozen)) == len(FREEZABLE):
            raise ConfigError(f"optim.frozen {list(self.frozen)} holds every head part: nothing of the head would train")


@dataclass(frozen=True)
class AugmentConfig:
    """Photometric night/weather simulation; with cached taps, `copies` variants per image are precomputed."""

    enabled: bool = False
    copies: int = 2
    probability: float = 0.5  # chance a training image is shown as an augmented variant
    gamma: tuple[float, float] = (1.0, 2.5)  # >1 darkens mid-tones
    brightness: tuple[float, float] = (0.25, 1.0)
    noise_std: tuple[float, float] = (0.0, 8.0)  # in 0..255 units
    blur_sigma: tuple[float, float] = (0.0, 1.5)
    color_cast: float = 0.15  # max relative gain per channel (sodium/blue light)
    # Share of the fused map's height and width each training image keeps, drawn per step in [low, high],
    # the window placed at random per image: a shift of viewpoint, independent of `enabled`. [1, 1]: off.
    crop: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        for name in ("gamma", "brightness", "noise_std", "blur_sigma", "crop"):
            if len(getattr(self, name)) != 2:
                raise ConfigError(f"augment.{name} must be [low, high], got {list(getattr(self, name))}")
        for name in ("gamma", "brightness", "noise_std", "blur_sigma"):
            lo, hi = getattr(self, name)
            if lo > hi or lo < 0:
                raise ConfigError(f"augment.{name} must be [low, high] with 0 <= low <= high, got {[lo, hi]}")
        lo, hi = self.crop
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"augment.crop must be [low, high] with 0 < low <= high <= 1, got {[lo, hi]}")
        if not 0 <= self.probability <= 1 or self.copies < 1 or not 0 <= self.color_cast < 1:
            raise ConfigError("augment: probability in [0, 1], copies >= 1 and color_cast in [0, 1) are required")


@dataclass(frozen=True)
class DistillConfig:
    """Teachers whose similarities the model also learns: a seed ensemble distilled into one network.

    For each training tuple, the student's softmax over its candidates (positive and negatives) by cosine
    similarity is pulled towards the teachers' (their mean cosine, i.e. the concatenated ensemble's) by a
    KL term of weight `weight`; the triplet loss still trains it. Teachers describe the training images
    once per run, through the same frozen trunk when taps are cached.
    """

    teachers: tuple[str, ...] = ()  # checkpoint files; empty: no distillation
    weight: float = 1.0
    temperature: float = 0.05  # cosine differences of this size change a candidate's odds e-fold

    def __post_init__(self) -> None:
        if self.weight <= 0 or self.temperature <= 0:
            raise ConfigError(f"distill: weight and temperature must be > 0, got {self.weight} and {self.temperature}")
        for i, path in enumerate(self.teachers):
            if not isinstance(path, str) or not Path(path).is_file():
                raise ConfigError(f"distill.teachers[{i}]: no such checkpoint file {path!r}")


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig
    train: TrainData
    val: EvalData | None = None
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    cache_taps: str = "auto"
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.cache_taps not in CACHE_MODES:
            raise ConfigError(f"cache_taps {self.cache_taps!r} unknown; choose one of {list(CACHE_MODES)}")
        if self.cache_taps == "on" and self.model.train_layers not in CACHEABLE_TRAIN_LAYERS:
            raise ConfigError(f"cache_taps: on needs a frozen trunk up to pool4 (train_layers in "
                              f"{list(CACHEABLE_TRAIN_LAYERS)}), got train_layers {self.model.train_layers!r}")

    @property
    def uses_tap_cache(self) -> bool:
        return self.cache_taps == "on" or (self.cache_taps == "auto" and self.model.train_layers in CACHEABLE_TRAIN_LAYERS)


def _section(cls: type, raw: Mapping[str, Any], key: str) -> Any:
    return dataclass_from_mapping(cls, raw.get(key) or {}, key)


def _data(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping with database and queries, got {raw!r}")
    for key in ("database", "queries"):
        if key not in raw:
            raise ConfigError(f"{where}: missing {key!r}")
    values = dict(raw)
    values["database"] = specs_from(raw["database"], f"{where}.database")
    values["queries"] = specs_from(raw["queries"], f"{where}.queries")
    return dataclass_from_mapping(cls, values, where)


def eval_data_from(raw: Any, where: str) -> EvalData:
    return _data(EvalData, raw, where)


def train_config_from_mapping(raw: Mapping[str, Any], where: str = "config") -> TrainConfig:
    known = {"model", "data", "cluster", "mining", "optim", "augment", "distill", "cache_taps", "device", "seed"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(known)}")
    model_raw = dict(raw.get("model") or {})
    preset = model_raw.pop("preset", "small")
    model = model_config(preset, **model_raw)  # lists become tuples in dataclass_from_mapping
    data = raw.get("data")
    if not isinstance(data, Mapping) or "train" not in data:
        raise ConfigError(f"{where}: needs data.train (database and queries sources)")
    extra = sorted(set(data) - {"train", "val"})
    if extra:
        raise ConfigError(f"{where}: data has unknown key(s) {extra}; expected train and val")
    return TrainConfig(
        model=model,
        train=_data(TrainData, data["train"], "data.train"),
        val=eval_data_from(data["val"], "data.val") if data.get("val") else None,
        cluster=_section(ClusterConfig, raw, "cluster"),
        mining=_section(MiningConfig, raw, "mining"),
        optim=_section(OptimConfig, raw, "optim"),
        augment=_section(AugmentConfig, raw, "augment"),
        distill=_section(DistillConfig, raw, "distill"),
        cache_taps=_on_off(raw.get("cache_taps", "auto")),
        device=raw.get("device", "auto"),
        seed=raw.get("seed", 0),
    )


def _on_off(value: Any) -> Any:
    """YAML reads a bare on/off as a boolean; take it as the word the user wrote."""
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


def load_train_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """`overrides`: "dotted.key=value" strings (values parsed as YAML) applied over the file before validation:
    a recipe trial stated on the command line (`optim.average_from=2`), checked like the file itself."""
    raw = load_yaml(path)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. optim.epochs=8")
        node = raw
        *parents, leaf = key.split(".")
        for name in parents:
            if not isinstance(node.setdefault(name, {}), dict):
                raise ConfigError(f"override {item!r}: {name!r} is not a section")
            node = node[name]
        node[leaf] = yaml.safe_load(value)
    return train_config_from_mapping(raw, f"{path}" + (f" with {', '.join(overrides)}" if overrides else ""))
