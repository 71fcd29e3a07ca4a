"""Map building at scale: parallel decoding, batches, resuming, and torchrun sharding (issue 16)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from densernet_core.datasets import load_csv
from densernet_core.images import ImageError, read_image, resize
from densernet_core.mapping.extraction import ExtractionOptions, decoded_images
from densernet_core.mapping.placemap import PARTIAL, build_map

BIN = Path(sys.executable).parent


def test_decoded_images_keep_order_and_a_bad_image_fails_in_its_turn(route):
    paths = sorted(route.glob("*.png"))
    serial = [resize(read_image(p), (40, 56)) for p in paths]
    for workers in (0, 1, 3):
        parallel = list(decoded_images(paths, (40, 56), workers, lookahead=4))
        assert len(parallel) == len(serial)
        assert all(np.array_equal(a, b) for a, b in zip(parallel, serial)), workers
    (route / "005.png").write_bytes(b"not a png")
    stream = decoded_images(paths, None, 2, lookahead=8)
    got = []
    with pytest.raises(ImageError, match="005.png"):
        for img in stream:
            got.append(img)
    assert len(got) == 5  # the images before the bad one were all delivered


def test_options_are_checked():
    with pytest.raises(ValueError, match="multiple of the batch size"):
        ExtractionOptions(batch_size=8, workers=2, chunk=12)
    with pytest.raises(ValueError, match="batch size"):
        ExtractionOptions(batch_size=0)
    assert ExtractionOptions.for_batch(12).chunk == 36 and ExtractionOptions.for_batch(64).chunk == 64


def test_parallel_batched_build_matches_and_resumes_after_a_bad_image(tiny_model, route, ckpt, tmp_path, caplog):
    path, sha = ckpt
    data = load_csv(route / "poses.csv")
    serial = ExtractionOptions(batch_size=2, workers=0, chunk=4)
    reference = build_map(tiny_model, path, sha, data, tmp_path / "reference", extraction=serial, progress=False)

    good = (route / "009.png").read_bytes()
    (route / "009.png").write_bytes(good[:40])  # truncated: chunk 2 (images 8-9) cannot be described
    out = tmp_path / "map"
    parallel = ExtractionOptions(batch_size=2, workers=3, chunk=4)
    with pytest.raises(ImageError, match="009.png"):
        build_map(tiny_model, path, sha, data, out, extraction=parallel, progress=False)
    assert sorted(p.name for p in (out / PARTIAL).glob("chunk_*.npy")) == ["chunk_00000.npy", "chunk_00001.npy"]

    (route / "009.png").write_bytes(good)
    caplog.set_level("INFO", logger="densernet")
    resumed = build_map(tiny_model, path, sha, data, out, extraction=parallel, progress=False)
    assert "resuming: 2 of 3 chunks already described" in caplog.text
    assert "described 2 images" in caplog.text  # only the missing chunk
    assert np.array_equal(resumed.descriptors, reference.descriptors)  # workers change nothing
    assert not (out / PARTIAL).exists()

    # Other batches are another plan: started over, not mixed with the saved chunks.
    (out / PARTIAL).mkdir()
    (out / PARTIAL / "plan.json").write_text(json.dumps({"key": sha, "batch_size": 4}))
    caplog.clear()
    build_map(tiny_model, path, sha, data, out, extraction=ExtractionOptions(batch_size=4, workers=2, chunk=4),
              progress=False)
    assert "starting over" in caplog.text and "described 10 images" in caplog.text


def _run(cmd: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    # One thread per process on both sides: a torchrun rank gets one (torchrun sets OMP_NUM_THREADS=1),
    # and the convolutions' float sums depend on the thread count.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def _same_map(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert "points_xyz.npy" in names, names  # the 3-D points went through the merge too
    for name in names:
        if name == "manifest.json":
            ma, mb = (json.loads((m / name).read_text()) for m in (a, b))
            ma.pop("created"), mb.pop("created")
            assert ma == mb
        elif name == "observation.json":  # fitted from the same descriptors: the same model, made at another time
            oa, ob = (json.loads((m / name).read_text()) for m in (a, b))
            oa["fit"].pop("created"), ob["fit"].pop("created")
            assert oa == ob
        else:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.skipif(not (BIN / "torchrun").is_file(), reason="torchrun not installed beside this Python")
def test_torchrun_two_ranks_build_the_single_process_map_and_resume(tiny_model, tmp_path):
    """Two CPU ranks (gloo) shard the images, rank 0 merges: the map, 3-D points included, is the
    single-process one byte for byte. A rank that meets a bad image stops the job; the rerun resumes."""
    from densernet_core.demo.street3d import StreetConfig, generate
    from densernet_core.model.checkpoint import save_checkpoint

    street = tmp_path / "street"
    generate(street, StreetConfig(places=10))
    ckpt = save_checkpoint(tiny_model, tmp_path / "model.safetensors")
    args = ["build", "--checkpoint", str(ckpt), "--poses", str(street / "map" / "poses.csv"),
            "--camera", str(street / "map" / "camera.yaml"), "--batch-size", "2", "--chunk", "4", "--no-progress"]
    single = _run([str(BIN / "densernet-map"), *args, "--out", str(tmp_path / "single")], tmp_path)
    assert single.returncode == 0, single.stdout + single.stderr
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "--no-python", str(BIN / "densernet-map")]

    images = sorted((street / "map").glob("*.png"))
    bad, good = images[9], images[9].read_bytes()  # chunk 2 (images 8-9): rank 0's second chunk
    bad.write_bytes(b"broken")
    failed = _run([*torchrun, *args, "--out", str(tmp_path / "sharded")], tmp_path)
    assert failed.returncode != 0
    assert f"cannot decode image {bad}" in failed.stdout + failed.stderr
    assert (tmp_path / "sharded" / PARTIAL / "chunk_00000.npy").is_file()  # rank 0's first chunk was kept

    bad.write_bytes(good)
    sharded = _run([*torchrun, *args, "--out", str(tmp_path / "sharded")], tmp_path)
    log = sharded.stdout + sharded.stderr
    assert sharded.returncode == 0, log
    assert "chunks of rank 0 already described" in log
    assert "rank 1 of 2: its share of 10 images went to rank 0" in log
    _same_map(tmp_path / "single", tmp_path / "sharded")
    assert not (tmp_path / "sharded" / PARTIAL).exists()
    shutil.rmtree(street)
