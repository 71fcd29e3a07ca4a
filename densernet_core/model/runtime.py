"""Exported runtimes: the network from image tensor to final descriptor (and its fused dense map) as an
ONNX file, run by ONNX Runtime or OpenVINO instead of eager PyTorch (both read it; OpenVINO also
its own IR, `--format openvino`), or built into a TensorRT engine on an NVIDIA GPU (model/tensorrt.py).

Preprocessing stays the package's own (`images.prepare_batch`), so every backend sees the same input
tensor and only the network changes. Provenance: the ONNX file's metadata records the checkpoint's
sha256, preset and image size; an engine from another checkpoint is refused, and since a map records
its checkpoint's sha256, a map refuses a mismatched engine too.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..images import ImageLike, as_image_list, prepare_batch, prepared_batches
from .checkpoint import checkpoint_hash, load_model
from .network import DEFAULT_BATCH, DenserNet, resolve_device

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")
EXPORT_FORMATS = ("onnx", "openvino", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
FORMAT_PRECISIONS = {"onnx": ("fp32", "int8"), "openvino": ("fp32", "int8"), "tensorrt": ("fp32", "fp16", "bf16")}
BACKEND_FORMATS = {"onnxruntime": ("onnx",), "openvino": ("onnx", "openvino"), "tensorrt": ("tensorrt",)}
# int8: the VGG16 trunk and the 1x1 branches (where the time goes); NetVLAD's soft assignment and
# normalisation stay fp32.
INT8_EXCLUDE = "netvlad"
# int8 weights keep 7 bits: x86 CPUs without VNNI (AVX2, AVX-512 before Cascade Lake, AMD before Zen 4)
# multiply uint8 activations by int8 weights in pairs summed into int16 (vpmaddubsw), which saturates
# with 8-bit weights: descriptors at cosine 0.71 to fp32 there, 0.92 with 7 bits (0.95 is the 8-bit ideal).
INT8_WEIGHT_BITS = 7
INT8_WEIGHT_BITS_CHOICES = (7, 8)  # 8: a little closer to fp32, but only on VNNI CPUs (benchmarks compare)
MIN_CALIBRATION_IMAGES = 8
ONNX_OPSET = 17
META_KEY = "densernet"  # ONNX metadata_props key holding the provenance JSON


class EngineError(RuntimeError):
    """An engine that cannot be used: missing, not ours, or from another checkpoint."""


class _Exported(torch.nn.Module):
    """image tensor -> (descriptor, fused dense map): the graph every runtime runs."""

    def __init__(self, model: DenserNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.model.head_maps(x)
        return self.model.aggregate_heads(maps), maps[0]


def export_onnx(checkpoint: str | Path, out: str | Path, image_size: tuple[int, int] | None = None,
                precision: str = "fp32", calibration: Sequence[ImageLike] = (),
                int8_weight_bits: int = INT8_WEIGHT_BITS) -> Path:
    """The checkpoint's network at its image size (or `image_size`), dynamic batch, with its provenance
    in the metadata. int8: static quantization (QDQ, per channel) calibrated on `calibration` images,
    which should be images of the map's environment."""
    import onnx

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if int8_weight_bits not in INT8_WEIGHT_BITS_CHOICES:
        raise ValueError(f"int8_weight_bits must be one of {INT8_WEIGHT_BITS_CHOICES}, got {int8_weight_bits!r}")
    if precision == "int8" and len(calibration) < MIN_CALIBRATION_IMAGES:
        raise ValueError(f"int8 needs at least {MIN_CALIBRATION_IMAGES} calibration images (map images), "
                         f"got {len(calibration)}")
    checkpoint, out = Path(checkpoint), Path(out)
    model = load_model(checkpoint, device="cpu", image_size=image_size)
    h, w = model.config.image_size
    tmp = out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    # The TorchScript exporter (dynamo=False: the torch.export one needs onnxscript, not a dependency)
    # warns that it is legacy, and the tracer about shape checks that are constant at a fixed image size.
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(_Exported(model).eval(), (torch.zeros(1, 3, h, w),), str(tmp), dynamo=False,
                          input_names=["image"], output_names=["descriptor", "dense"], opset_version=ONNX_OPSET,
                          dynamic_axes={"image": {0: "batch"}, "descriptor": {0: "batch"}, "dense": {0: "batch"}},
                          do_constant_folding=True)
    graph = onnx.load(str(tmp))
    meta = {"checkpoint_sha256": checkpoint_hash(checkpoint), "checkpoint": checkpoint.name,
            "preset": model.config.preset, "image_size": [h, w], "descriptor_dim": model.descriptor_dim,
            "feature_dim": model.config.feature_dim, "precision": precision,
            **({"int8_weight_bits": int8_weight_bits} if precision == "int8" else {})}
    graph.metadata_props.add(key=META_KEY, value=json.dumps(meta, sort_keys=True))
    onnx.save(graph, str(tmp))
    if precision == "int8":
        _quantize_int8(tmp, model, calibration, int8_weight_bits)
    os.replace(tmp, out)
    return out


def export(checkpoint: str | Path, out: str | Path, fmt: str = "onnx", image_size: tuple[int, int] | None = None,
           precision: str = "fp32", calibration: Sequence[ImageLike] = (),
           int8_weight_bits: int = INT8_WEIGHT_BITS) -> Path:
    """`densernet export`: the checkpoint's network as an engine of format `fmt` at `precision`."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {fmt!r}")
    if precision not in FORMAT_PRECISIONS[fmt]:
        raise ValueError(f"format {fmt} exports precisions {FORMAT_PRECISIONS[fmt]}, not {precision!r}"
                         + (" (fp16/bf16 are GPU precisions: --format tensorrt)" if precision in ("fp16", "bf16") else "")
                         + (" (int8 is the CPU precision: --format onnx or openvino)" if precision == "int8" else ""))
    out = Path(out)
    if fmt == "onnx":
        return export_onnx(checkpoint, out, image_size, precision, calibration, int8_weight_bits)
    if fmt == "tensorrt":
        from .tensorrt import build_engine, require_tensorrt

        require_tensorrt()  # before the export: say at once when this machine cannot build one
        onnx_file = export_onnx(checkpoint, out.with_name(out.name + ".onnx.partial"), image_size, "fp32")
        try:
            return build_engine(onnx_file, out, engine_metadata(onnx_file), precision)
        finally:
            onnx_file.unlink(missing_ok=True)
    if out.suffix != ".xml":
        raise ValueError(f"an OpenVINO IR is a .xml file (with its .bin beside it), not {out.name}")
    import openvino as ov

    onnx_file = export_onnx(checkpoint, out.with_name(out.stem + ".onnx.partial"), image_size, precision, calibration,
                            int8_weight_bits)
    try:
        meta = {**engine_metadata(onnx_file), "format": "openvino"}
        model = ov.convert_model(str(onnx_file))
        model.set_rt_info(json.dumps(meta, sort_keys=True), [META_KEY])
        ov.save_model(model, str(out), compress_to_fp16=False)  # fp32 weights stay fp32 (int8 ones stay int8)
    finally:
        onnx_file.unlink(missing_ok=True)
    return out


def _quantize_int8(path: Path, model: DenserNet, calibration: Sequence[ImageLike], weight_bits: int) -> None:
    """Static int8 in place: activation ranges from the calibration images (MinMax, folded in image by
    image so memory stays that of one image's activations); `weight_bits` 7 (reduce_range) keeps the engine
    as close to fp32 on every x86 CPU (INT8_WEIGHT_BITS)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quant_pre_process, quantize_static

    class Reader(CalibrationDataReader):
        """One image at a time; ORT folds each image's ranges in before the next (CalibStridedMinMax)."""

        def __init__(self) -> None:
            self.set_range(0, len(calibration))

        def __len__(self) -> int:
            return len(calibration)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.items = iter(calibration[start_index:end_index])

        def get_next(self):
            image = next(self.items, None)
            if image is None:
                return None
            return {"image": prepare_batch([image], model.config.image_size, model.config.preprocessing).numpy()}

    graph = onnx.load(str(path))
    props = list(graph.metadata_props)
    exclude = [n.name for n in graph.graph.node if INT8_EXCLUDE in n.name]
    prepared, quantized = path.with_name(path.name + ".pre"), path.with_name(path.name + ".int8")
    quant_pre_process(str(path), str(prepared))  # shape inference and graph optimisation, as ORT asks
    quantize_static(str(prepared), str(quantized), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                    per_channel=True, reduce_range=weight_bits == 7, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=exclude, extra_options={"CalibStridedMinMax": 1})
    q = onnx.load(str(quantized))
    del q.metadata_props[:]
    q.metadata_props.extend(props)
    onnx.save(q, str(path))
    quantized.unlink()
    prepared.unlink()


def engine_metadata(engine: str | Path) -> dict:
    """The provenance an exported engine carries (raises when the file is missing or not ours)."""
    import onnx

    from .tensorrt import is_engine, read_engine

    engine = Path(engine)
    if not engine.is_file():
        raise EngineError(f"engine not found: {engine}")
    if engine.suffix == ".xml":
        return _openvino_metadata(engine)
    if is_engine(engine):
        try:
            return read_engine(engine)[0]
        except ValueError as exc:
            raise EngineError(str(exc)) from exc
    try:
        graph = onnx.load(str(engine), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for non-ONNX files
        raise EngineError(f"{engine}: not an ONNX file ({type(exc).__name__}: {exc})") from exc
    props = {p.key: p.value for p in graph.metadata_props}
    if META_KEY not in props:
        raise EngineError(f"{engine}: no densernet provenance; export it with `densernet export`")
    return {"format": "onnx", **json.loads(props[META_KEY])}


def _openvino_metadata(engine: Path) -> dict:
    import openvino as ov

    if not engine.with_suffix(".bin").is_file():
        raise EngineError(f"{engine}: its weights {engine.with_suffix('.bin').name} are missing beside it")
    try:
        model = ov.Core().read_model(str(engine))
    except RuntimeError as exc:
        raise EngineError(f"{engine}: not an OpenVINO IR ({exc})") from exc
    if not model.has_rt_info([META_KEY]):
        raise EngineError(f"{engine}: no densernet provenance; export it with `densernet export --format openvino`")
    return json.loads(model.get_rt_info([META_KEY]).astype(str))


def cpu_has_vnni(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this x86 CPU multiplies int8 without int16 saturation (AVX-512 VNNI or AVX-VNNI); True where
    that cannot be read (not Linux) or does not apply (not x86: no vpmaddubsw there)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return True
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), None)
    if flags is None:
        return True
    return bool({"avx512_vnni", "avx_vnni"} & set(flags))


class ExportedModel:
    """The `describe()` of a DenserNet, run by a runtime on an exported engine (subclasses: the runtime)."""

    backend = ""

    def __init__(self, model: DenserNet, engine: str | Path, checkpoint_sha: str) -> None:
        meta = engine_metadata(engine)
        if meta["format"] not in BACKEND_FORMATS[self.backend]:
            runs = [b for b, formats in BACKEND_FORMATS.items() if meta["format"] in formats]
            raise EngineError(f"{engine} is in format {meta['format']}; the {self.backend} backend runs "
                              f"{' or '.join(BACKEND_FORMATS[self.backend])} files (this one: --backend {runs[0]})")
        if meta["checkpoint_sha256"] != checkpoint_sha:
            raise EngineError(f"{engine} was exported from checkpoint {meta['checkpoint_sha256'][:16]}…, "
                              f"not {checkpoint_sha[:16]}…: export it again from this checkpoint")
        self.precision = meta.get("precision", "fp32")
        if self.precision == "int8" and meta.get("int8_weight_bits", 8) > INT8_WEIGHT_BITS and not cpu_has_vnni():
            log.warning("%s has 8-bit int8 weights and this CPU has no VNNI: its int8 products saturate "
                        "(descriptors far from fp32); export it again with `densernet export --precision int8`",
                        engine)
        if tuple(meta["image_size"]) != tuple(model.config.image_size):
            raise EngineError(f"{engine} runs at {meta['image_size']}, the model at "
                              f"{list(model.config.image_size)}: export at that size (descriptors at other "
                              "resolutions are not comparable)")
        self.engine = Path(engine)
        self.config = model.config
        self._dim = model.descriptor_dim
        self.netvlad_init = model.netvlad_init

    def _run(self, x: np.ndarray, dense: bool) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    @property
    def descriptor_dim(self) -> int:
        return self._dim

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def describe(self, images: Sequence[ImageLike] | ImageLike, color: str = "rgb", batch_size: int = DEFAULT_BATCH,
                 return_dense: bool = False, progress: bool = False) -> np.ndarray | tuple[np.ndarray, list[np.ndarray]]:
        """As `DenserNet.describe`."""
        out, dense_out = [], []
        for x in prepared_batches(as_image_list(images), self.config.image_size, self.config.preprocessing, color,
                                  batch_size, progress):
            desc, dense = self._run(x.numpy(), return_dense)
            out.append(np.asarray(desc, np.float32))
            if return_dense:
                dense_out.extend(np.asarray(d, np.float32) for d in dense)
        desc = np.concatenate(out) if out else np.zeros((0, self._dim), np.float32)
        return (desc, dense_out) if return_dense else desc


class OnnxRuntimeModel(ExportedModel):
    backend = "onnxruntime"

    def __init__(self, model: DenserNet, engine: str | Path, checkpoint_sha: str, device: str = "cpu",
                 threads: int = 0, device_id: int = 0) -> None:
        import onnxruntime as ort

        super().__init__(model, engine, checkpoint_sha)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if device == "cuda" and missing:
            raise EngineError(f"onnxruntime has no {missing[0]} here (install onnxruntime-gpu)")
        options = [{"device_id": device_id}, {}] if device == "cuda" else [{}]
        self.session = ort.InferenceSession(str(engine), opts, providers=providers, provider_options=options)

    def _run(self, x: np.ndarray, dense: bool) -> tuple[np.ndarray, np.ndarray | None]:
        result = self.session.run(["descriptor", "dense"] if dense else ["descriptor"], {"image": x})
        return result[0], (result[1] if dense else None)


class OpenVinoModel(ExportedModel):
    """OpenVINO on the CPU (its int8 kernels use VNNI), tuned for one frame at a time."""

    backend = "openvino"

    def __init__(self, model: DenserNet, engine: str | Path, checkpoint_sha: str) -> None:
        import openvino as ov

        super().__init__(model, engine, checkpoint_sha)
        # f32: OpenVINO would otherwise run fp32 layers in bf16 on CPUs that have it (this one does),
        # a precision change the engine's recall was not measured at.
        self.compiled = ov.Core().compile_model(str(engine), "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                                     "INFERENCE_PRECISION_HINT": "f32"})
        self.request = self.compiled.create_infer_request()
        self._outputs = {name: o for o in self.compiled.outputs for name in o.get_names()}  # a tensor has several

    def _run(self, x: np.ndarray, dense: bool) -> tuple[np.ndarray, np.ndarray | None]:
        result = self.request.infer({"image": x})
        return (np.array(result[self._outputs["descriptor"]]),
                np.array(result[self._outputs["dense"]]) if dense else None)


class TensorRTModel(ExportedModel):
    """A TensorRT engine on an NVIDIA GPU (model/tensorrt.py)."""

    backend = "tensorrt"

    def __init__(self, model: DenserNet, engine: str | Path, checkpoint_sha: str, device: torch.device) -> None:
        from .tensorrt import TensorRTRunner

        super().__init__(model, engine, checkpoint_sha)
        self.runner = TensorRTRunner(Path(engine), device)

    @property
    def device(self) -> torch.device:
        return self.runner.device

    def _run(self, x: np.ndarray, dense: bool) -> tuple[np.ndarray, np.ndarray | None]:
        return self.runner.run(x, dense)


def _onnxruntime_has_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def load_describer(checkpoint: str | Path, device: str = "cpu", image_size: tuple[int, int] | None = None,
                   backend: str = "torch", engine: str | Path | None = None) -> DenserNet | ExportedModel:
    """The checkpoint's network on the chosen backend (torch: the model itself)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        if engine:
            raise ValueError("an engine file is for an exported backend (--backend onnxruntime), not torch")
        return load_model(checkpoint, device=device, image_size=image_size)
    if not engine:
        raise ValueError(f"backend {backend} needs an engine file from `densernet export --checkpoint "
                         f"{checkpoint} --format onnx --out model.onnx`")
    model = load_model(checkpoint, device="cpu", image_size=image_size)
    target = resolve_device(device)
    if backend == "tensorrt":
        from .tensorrt import require_tensorrt

        require_tensorrt()  # before the engine's checks: say at once when this machine cannot run one
        return TensorRTModel(model, engine, checkpoint_hash(checkpoint),
                             torch.device("cuda", target.index or 0))  # TensorRT runs on a GPU only
    if backend == "openvino":
        if target.type == "cuda" and device != "auto":
            raise ValueError("the openvino backend runs on the CPU here; use onnxruntime (onnxruntime-gpu) for CUDA")
        return OpenVinoModel(model, engine, checkpoint_hash(checkpoint))
    if device == "auto" and target.type == "cuda" and not _onnxruntime_has_cuda():
        target = torch.device("cpu")  # auto: the GPU only where this onnxruntime build can use it
    return OnnxRuntimeModel(model, engine, checkpoint_hash(checkpoint), target.type, device_id=target.index or 0)
