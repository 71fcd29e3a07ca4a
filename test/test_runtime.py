"""Exported runtimes against PyTorch: the same descriptors (cosine >= 0.999 each), the same top-1 on
Gardens Point, provenance that refuses a mismatched engine, and the backend through map and localizer."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import random_images
from densernet_core.model.checkpoint import checkpoint_hash, load_model, save_checkpoint
from densernet_core.model.runtime import EngineError, ExportedModel, engine_metadata, export, export_onnx, load_describer
from densernet_core.model.tensorrt import TensorRTUnavailable, tensorrt_unavailable_reason
from densernet_core.training.recall import search

pytest.importorskip("onnxruntime", reason="onnxruntime is a dev extra (pip install '.[dev]')")
pytest.importorskip("openvino", reason="openvino is a dev extra (pip install '.[dev]')")
MIN_COSINE = 0.999
NO_TENSORRT = tensorrt_unavailable_reason()
RUNTIMES = ("onnxruntime", "openvino")  # the CPU runtimes: both read the ONNX export
SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "tensorrt": ".engine"}
# (backend, engine format): every pair a user can run; TensorRT only where a GPU and tensorrt are.
PAIRS = [("onnxruntime", "onnx"), ("openvino", "onnx"), ("openvino", "openvino"),
         pytest.param("tensorrt", "tensorrt", marks=pytest.mark.skipif(
             NO_TENSORRT is not None, reason=f"TensorRT not tested on this machine: {NO_TENSORRT}"))]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
    work = tmp_path_factory.mktemp("export")
    ckpt = save_checkpoint(tiny_model, work / "model.safetensors")
    return ckpt, export_onnx(ckpt, work / "model.onnx")


@pytest.mark.parametrize("backend,fmt", PAIRS)
def test_runtime_gives_torchs_descriptors_and_dense_maps(exported, backend, fmt, tmp_path):
    ckpt, engine = exported
    if fmt != "onnx":
        engine = export(ckpt, tmp_path / f"model{SUFFIX[fmt]}", fmt)
        assert engine_metadata(engine)["format"] == fmt
    torch_model = load_model(ckpt)
    ort_model = load_describer(ckpt, backend=backend, engine=engine)
    assert isinstance(ort_model, ExportedModel) and ort_model.backend == backend
    assert ort_model.descriptor_dim == torch_model.descriptor_dim
    images = random_images(11, seed=9)  # batches of 8 and 3: the batch axis is dynamic
    ref, ref_dense = torch_model.describe(images, return_dense=True)
    got, got_dense = ort_model.describe(images, return_dense=True)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert _cosines(got, ref).min() >= MIN_COSINE
    assert len(got_dense) == len(ref_dense) and got_dense[0].shape == ref_dense[0].shape
    np.testing.assert_allclose(got_dense[3], ref_dense[3], atol=1e-4, rtol=1e-3)
    meta = engine_metadata(engine)
    assert meta["checkpoint_sha256"] == checkpoint_hash(ckpt) and meta["image_size"] == list(torch_model.config.image_size)


def test_a_mismatched_or_foreign_engine_is_refused(exported, tiny_model, tmp_path):
    ckpt, engine = exported
    import torch

    other = load_model(ckpt)
    with torch.no_grad():
        other.netvlad.centroids.mul_(1.01)
    other_ckpt = save_checkpoint(other, tmp_path / "other.safetensors")
    with pytest.raises(EngineError, match="exported from checkpoint .* export it again"):
        load_describer(other_ckpt, backend="onnxruntime", engine=engine)
    with pytest.raises(EngineError, match="runs at .* export at that size"):
        load_describer(ckpt, image_size=(32, 48), backend="onnxruntime", engine=engine)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(EngineError, match="not an ONNX file"):
        load_describer(ckpt, backend="onnxruntime", engine=junk)
    with pytest.raises(EngineError, match="engine not found"):
        load_describer(ckpt, backend="onnxruntime", engine=tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="needs an engine file"):
        load_describer(ckpt, backend="onnxruntime")
    with pytest.raises(EngineError, match="exported from checkpoint"):
        load_describer(other_ckpt, backend="openvino", engine=engine)
    with pytest.raises(ValueError, match="backend must be one of"):
        load_describer(ckpt, backend="tensorflow")
    ir = export(ckpt, tmp_path / "model.xml", "openvino")
    with pytest.raises(EngineError, match="is in format openvino.* --backend openvino"):
        load_describer(ckpt, backend="onnxruntime", engine=ir)
    ir.with_suffix(".bin").unlink()
    with pytest.raises(EngineError, match="model.bin are missing"):
        load_describer(ckpt, backend="openvino", engine=ir)
    with pytest.raises(ValueError, match="fp16/bf16 are GPU precisions: --format tensorrt"):
        export(ckpt, tmp_path / "half.onnx", "onnx", precision="fp16")
    with pytest.raises(ValueError, match="int8 is the CPU precision"):
        export(ckpt, tmp_path / "q.engine", "tensorrt", precision="int8")
    with pytest.raises(ValueError, match=r"an OpenVINO IR is a \.xml file"):
        export(ckpt, tmp_path / "model.onnx", "openvino")


@pytest.mark.skipif(NO_TENSORRT is None, reason="this machine can run TensorRT: the engine tests above run instead")
def test_tensorrt_without_a_gpu_says_why(exported, tmp_path):
    ckpt, engine = exported
    with pytest.raises(TensorRTUnavailable, match=NO_TENSORRT):
        export(ckpt, tmp_path / "model.engine", "tensorrt", precision="fp16")
    assert not list(tmp_path.iterdir())  # refused before anything was written
    with pytest.raises(TensorRTUnavailable, match=NO_TENSORRT):
        load_describer(ckpt, backend="tensorrt", engine=engine)


def test_map_and_localizer_on_the_exported_backend(exported, tmp_path, capsys):
    """A map built with torch is queried through the engine (same places), a map refuses an engine of
    another checkpoint, and `densernet export` / `densernet-map build --backend` work from the shell."""
    from densernet_core.cli import main as densernet_main
    from densernet_core.localization.localizer import Localizer
    from densernet_core.mapping.cli import main as map_main
    from densernet_core.mapping.placemap import build_map

    ckpt, engine = exported
    images = random_images(6, seed=21)
    folder = tmp_path / "route"
    folder.mkdir()
    import cv2

    rows = ["image,x,y"]
    for i, img in enumerate(images):
        cv2.imwrite(str(folder / f"{i}.png"), img[:, :, ::-1])
        rows.append(f"{i}.png,{2.0 * i},0")
    (folder / "poses.csv").write_text("\n".join(rows) + "\n")
    from densernet_core.datasets import load_csv

    build_map(load_model(ckpt), ckpt, checkpoint_hash(ckpt), load_csv(folder / "poses.csv"), tmp_path / "map",
              progress=False)
    # Six random images are too few (and too alike) to calibrate a map: the relative estimator serves here.
    from densernet_core.localization.pose import PoseEstimatorConfig

    relative = PoseEstimatorConfig(confidence="relative")
    torch_loc = Localizer.from_paths(tmp_path / "map", ckpt, estimator=relative)
    ort_loc = Localizer.from_paths(tmp_path / "map", ckpt, estimator=relative, backend="onnxruntime", engine=engine)
    ov_loc = Localizer.from_paths(tmp_path / "map", ckpt, estimator=relative, backend="openvino", engine=engine)
    for img in images:
        assert torch_loc.localize(img).ids[0] == ort_loc.localize(img).ids[0] == ov_loc.localize(img).ids[0]
    assert densernet_main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "cli.onnx")]) == 0
    assert "dynamic batch" in capsys.readouterr().out
    assert map_main(["build", "--checkpoint", str(ckpt), "--poses", str(folder / "poses.csv"), "--out",
                     str(tmp_path / "map2"), "--backend", "onnxruntime", "--engine", str(tmp_path / "cli.onnx")]) == 0
    a = np.load(tmp_path / "map" / "descriptors.npy").astype(np.float32)
    b = np.load(tmp_path / "map2" / "descriptors.npy").astype(np.float32)
    assert _cosines(a, b).min() >= MIN_COSINE


@pytest.fixture(scope="module")
def gp_reference(gardens_point, caffe_weights_ready, tmp_path_factory):
    from densernet_core.cli import make_checkpoint

    work = tmp_path_factory.mktemp("gp_runtime")
    frames = list(range(0, 200, 5))
    db = [gardens_point / "day_left" / f"Image{i:03d}.jpg" for i in frames]
    q = [gardens_point / "day_right" / f"Image{i:03d}.jpg" for i in frames]
    ckpt = make_checkpoint(db, work / "gp.safetensors", image_size=(120, 160), num_clusters=16, progress=False)
    torch_model = load_model(ckpt)
    return ckpt, db, q, torch_model.describe(db), torch_model.describe(q)


@pytest.mark.parametrize("backend,fmt", PAIRS)
def test_same_top1_on_gardens_point(gp_reference, backend, fmt, tmp_path):
    """The real network (ImageNet trunk, small, 120x160): day_right -> day_left over 40 frames, every
    query's top-1 the same through the exported engine as through PyTorch."""
    ckpt, db, q, ref_db, ref_q = gp_reference
    engine = export(ckpt, tmp_path / f"gp{SUFFIX[fmt]}", fmt)
    model = load_describer(ckpt, backend=backend, engine=engine)
    got_db, got_q = model.describe(db), model.describe(q)
    assert min(_cosines(got_db, ref_db).min(), _cosines(got_q, ref_q).min()) >= MIN_COSINE
    np.testing.assert_array_equal(search(got_db, got_q, 1)[1], search(ref_db, ref_q, 1)[1])


def test_int8_export_is_calibrated_and_marked(exported, tmp_path):
    """int8 needs calibration images (refused without), records its precision, and stays close to fp32."""
    ckpt, _ = exported
    with pytest.raises(ValueError, match="at least 8 calibration images"):
        export_onnx(ckpt, tmp_path / "q.onnx", precision="int8", calibration=random_images(3))
    with pytest.raises(ValueError, match="int8_weight_bits must be one of"):
        export_onnx(ckpt, tmp_path / "q.onnx", precision="int8", calibration=random_images(8), int8_weight_bits=6)
    engine = export_onnx(ckpt, tmp_path / "q.onnx", precision="int8", calibration=random_images(8, seed=5))
    assert engine_metadata(engine)["precision"] == "int8" and engine_metadata(engine)["int8_weight_bits"] == 7
    images = random_images(4, seed=6)
    ref = load_model(ckpt).describe(images)
    ir = export(ckpt, tmp_path / "q.xml", "openvino", precision="int8", calibration=random_images(8, seed=5))
    for backend, model_file in (*((b, engine) for b in RUNTIMES), ("openvino", ir)):
        model = load_describer(ckpt, backend=backend, engine=model_file)
        assert model.precision == "int8"
        # 0.92 on a CPU without VNNI (2026-12-01, AMD EPYC, AVX2 only), where 8-bit weights saturate
        # (0.71); 7-bit weights are that close on every x86 CPU
        assert _cosines(model.describe(images), ref).min() > 0.9, (backend, model_file)


def test_cpu_without_vnni_is_told_to_reexport_an_8bit_engine(exported, tmp_path, monkeypatch, caplog):
    """An int8 engine exported before 7-bit weights saturates on CPUs without VNNI: loading it there says so."""
    import json

    import onnx

    from densernet_core.model import runtime

    avx2, vnni = tmp_path / "avx2", tmp_path / "vnni"
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")
    vnni.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert not runtime.cpu_has_vnni(avx2) and runtime.cpu_has_vnni(vnni)
    assert runtime.cpu_has_vnni(tmp_path / "absent")  # not Linux: nothing to warn about
    ckpt, _ = exported
    engine = export_onnx(ckpt, tmp_path / "q.onnx", precision="int8", calibration=random_images(8, seed=5))
    graph = onnx.load(str(engine))
    prop = next(p for p in graph.metadata_props if p.key == runtime.META_KEY)
    meta = json.loads(prop.value)
    del meta["int8_weight_bits"]  # as exported before 7-bit weights
    prop.value = json.dumps(meta)
    old = tmp_path / "old.onnx"
    onnx.save(graph, str(old))
    eight = export_onnx(ckpt, tmp_path / "q8.onnx", precision="int8", calibration=random_images(8, seed=5),
                        int8_weight_bits=8)
    assert engine_metadata(eight)["int8_weight_bits"] == 8
    real = runtime.cpu_has_vnni
    for cpu, warned in ((vnni, False), (avx2, True)):
        monkeypatch.setattr(runtime, "cpu_has_vnni", lambda cpu=cpu: real(cpu))
        for eight_bits in (old, eight):
            caplog.clear()
            load_describer(ckpt, backend="onnxruntime", engine=eight_bits)
            assert ("no VNNI" in caplog.text) == warned, (cpu, eight_bits)
    caplog.clear()
    load_describer(ckpt, backend="onnxruntime", engine=engine)  # 7-bit weights: fine on either CPU
    assert "no VNNI" not in caplog.text
