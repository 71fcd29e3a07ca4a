"""TensorRT: an engine built from the ONNX export on the GPU that will run it, and its describe().

A TensorRT engine is specific to the GPU model and TensorRT version that built it, so it is built on
the robot (or an identical card): `densernet export --format tensorrt` exports the ONNX graph, then
builds the engine with a dynamic-batch profile. The engine file starts with a small header holding
the same provenance JSON as the ONNX metadata (checkpoint sha256, image size, precision), so a
mismatched engine is refused like any other. Needs an NVIDIA GPU, `pip install tensorrt` (10.x) and
the CUDA build of torch, whose tensors hold the engine's inputs and outputs.
"""
from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import torch

MAGIC = b"DNSRTRT1"           # first bytes of a densernet TensorRT engine file
TRT_PRECISIONS = ("fp32", "fp16", "bf16")
MAX_BATCH = 64                # the largest batch the engine's profile accepts
OPT_BATCH = 1                 # the batch TensorRT tunes kernels for: one camera frame
WORKSPACE_BYTES = 4 << 30     # scratch memory TensorRT may use while choosing kernels


class TensorRTUnavailable(RuntimeError):
    """This machine cannot build or run TensorRT engines (no GPU, no tensorrt package)."""


def tensorrt_unavailable_reason() -> str | None:
    """Why TensorRT cannot run here, or None when it can."""
    if not torch.cuda.is_available():
        return "TensorRT needs an NVIDIA GPU; torch sees no CUDA device on this machine"
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt package is not installed (pip install tensorrt)"
    return None


def require_tensorrt():
    """The tensorrt module, or TensorRTUnavailable saying why this machine cannot use it."""
    reason = tensorrt_unavailable_reason()
    if reason:
        raise TensorRTUnavailable(reason)
    import tensorrt as trt

    if int(trt.__version__.split(".")[0]) < 10:
        raise TensorRTUnavailable(f"tensorrt {trt.__version__} is too old; densernet uses the TensorRT 10 API")
    return trt


def build_engine(onnx_path: Path, out: Path, meta: dict, precision: str = "fp16", max_batch: int = MAX_BATCH) -> Path:
    """A serialized engine for this GPU from the ONNX export, with `meta` (its provenance) in the header."""
    if precision not in TRT_PRECISIONS:
        raise ValueError(f"TensorRT precision must be one of {TRT_PRECISIONS}, got {precision!r}")
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch: the only mode of TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    h, w = meta["image_size"]
    profile = builder.create_optimization_profile()
    profile.set_shape("image", (1, 3, h, w), (OPT_BATCH, 3, h, w), (max_batch, 3, h, w))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build an engine from {onnx_path} (see its log above)")
    header = json.dumps({**meta, "precision": precision, "format": "tensorrt", "max_batch": max_batch,
                         "tensorrt": trt.__version__, "gpu": torch.cuda.get_device_name()}, sort_keys=True).encode()
    tmp = out.with_name(out.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack("<I", len(header)) + header)
        f.write(memoryview(serialized))
    tmp.replace(out)
    return out


def is_engine(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def read_engine(path: Path) -> tuple[dict, bytes]:
    """(provenance, serialized engine) of a densernet TensorRT engine file."""
    data = path.read_bytes()
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
        raise ValueError(f"{path}: not a densernet TensorRT engine (export it with `densernet export --format tensorrt`)")
    (n,) = struct.unpack("<I", data[len(MAGIC):len(MAGIC) + 4])
    start = len(MAGIC) + 4
    try:
        meta = json.loads(data[start:start + n])
    except ValueError as exc:
        raise ValueError(f"{path}: corrupt TensorRT engine header ({exc})") from exc
    return meta, data[start + n:]


class TensorRTRunner:
    """One deserialized engine and its execution context; inputs and outputs are CUDA torch tensors."""

    def __init__(self, path: Path, device: torch.device) -> None:
        trt = require_tensorrt()
        meta, blob = read_engine(path)
        self.device = device
        self.max_batch = int(meta["max_batch"])
        with torch.cuda.device(device):
            self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self.engine = self._runtime.deserialize_cuda_engine(blob)
            if self.engine is None:
                raise RuntimeError(f"{path}: TensorRT could not load this engine (built with TensorRT "
                                   f"{meta.get('tensorrt')} on {meta.get('gpu')}; build it again on this machine)")
            self.context = self.engine.create_execution_context()
        # The engine's outputs keep the ONNX graph's float32 unless TensorRT was told otherwise.
        self._dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
                        trt.DataType.BF16: torch.bfloat16}

    def run(self, x: np.ndarray, dense: bool) -> tuple[np.ndarray, np.ndarray | None]:
        outputs: dict[str, np.ndarray] = {}
        parts = []
        for start in range(0, len(x), self.max_batch):
            parts.append(self._run(x[start:start + self.max_batch], dense))
        for name in parts[0]:
            outputs[name] = np.concatenate([p[name] for p in parts])
        return outputs["descriptor"], outputs.get("dense")

    def _run(self, x: np.ndarray, dense: bool) -> dict[str, np.ndarray]:
        with torch.cuda.device(self.device):
            stream = torch.cuda.current_stream(self.device)
            image = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(self.device, non_blocking=False)
            self.context.set_input_shape("image", tuple(image.shape))
            self.context.set_tensor_address("image", image.data_ptr())
            out = {}
            for name in ("descriptor", "dense"):
                shape = tuple(self.context.get_tensor_shape(name))
                dtype = self._dtypes[self.engine.get_tensor_dtype(name)]
                out[name] = torch.empty(shape, dtype=dtype, device=self.device)
                self.context.set_tensor_address(name, out[name].data_ptr())
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT failed to run the engine")
            stream.synchronize()
            return {name: t.float().cpu().numpy() for name, t in out.items() if dense or name == "descriptor"}
