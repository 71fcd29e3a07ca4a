"""The dense re-rank (localization/rerank.py) and the map's dense grids (mapping/grids.py)."""
import json

import numpy as np
import pytest

from densernet_core.datasets import load_csv
from densernet_core.localization.localizer import Localizer
from densernet_core.localization.rerank import RerankConfig, dense_grid, rerank_order, spatial_score
from densernet_core.mapping import grids as grids_module
from densernet_core.mapping.grids import GRIDS, GRIDS_META, GRIDS_PARTIAL, GRIDS_PROGRESS, build_grids, remove_grids
from densernet_core.mapping.placemap import MapError, PlaceMap, add_to_map, build_map
from densernet_core.model.checkpoint import checkpoint_hash, is_trained, save_checkpoint


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_spatial_score_counts_mutual_matches_and_rewards_a_common_shift() -> None:
    """A view of the same place moves its features together: the grid shifted by one cell keeps every mutual
    match it can and scores highest; the same features scattered keep the count but lose the spatial score;
    unrelated features match fewer and score low. And the pooled grid is row-major and unit length."""
    rng = np.random.default_rng(4)
    h, w, c = 6, 10, 32
    feats = rng.normal(size=(h, w + 1, c))
    a = unit(feats[:, :w].reshape(-1, c))
    shifted = unit(feats[:, 1:].reshape(-1, c))  # the scene one column to the left: column j of a is j - 1 here
    scattered = a[rng.permutation(len(a))]
    other = unit(rng.normal(size=a.shape))
    n_shift, s_shift = spatial_score(a, shifted, w, h)
    n_scat, s_scat = spatial_score(a, scattered, w, h)
    n_other, s_other = spatial_score(a, other, w, h)
    assert n_shift == h * (w - 1) and n_scat == h * w  # the shifted grid lost one column off its edge
    assert np.isclose(s_shift, 2.0 * n_shift)  # every match moved by the common shift: full marks on both axes
    assert s_shift > 1.5 * s_scat and s_shift > 1.5 * s_other and n_other < n_shift
    assert spatial_score(a[:1], other[:1], w, h) == (1, 0.0)  # one match has no spread to score
    dense = rng.normal(size=(c, 4, 6)).astype(np.float32)
    grid = dense_grid(dense, pool=2)
    assert grid.shape == (6, c) and grid.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(grid, axis=1), 1.0, rtol=1e-6)
    cell = dense[:, 2:4, 2:4].mean(axis=(1, 2))
    np.testing.assert_allclose(grid[4], cell / np.linalg.norm(cell), rtol=1e-5)  # row 1, column 1 of the 2 x 3 grid
    assert dense_grid(dense, pool=2, dtype=np.float64).dtype == np.float64


def test_rerank_order_puts_the_matching_view_first_and_keeps_ties_in_order() -> None:
    rng = np.random.default_rng(7)
    h, w, c = 4, 5, 16
    query = unit(rng.normal(size=(h * w, c))).astype(np.float32)
    unrelated = [unit(rng.normal(size=query.shape)).astype(np.float32) for _ in range(3)]
    candidates = np.stack([unrelated[0], unrelated[1], query, unrelated[2]])
    order, scores = rerank_order(query, candidates, (h, w))
    assert order[0] == 2 and np.isclose(scores[2], 2.0 * h * w)
    same = np.stack([query, query, unrelated[0]])
    assert list(rerank_order(query, same, (h, w))[0][:2]) == [0, 1]  # equal scores: the global order stands
    with pytest.raises(ValueError, match="does not match the map's grids"):
        rerank_order(query[:, :8], candidates, (h, w))
    with pytest.raises(ValueError, match="cells"):
        rerank_order(query, candidates, (h, w + 1))
    with pytest.raises(ValueError, match="rerank top"):
        RerankConfig(top=1)


def test_grids_built_by_size_loaded_memory_mapped_and_reported(tiny_model, route, ckpt, tmp_path):
    path, sha = ckpt
    data = load_csv(route / "poses.csv")
    assert build_map(tiny_model, path, sha, data, tmp_path / "a", progress=False).grids is None  # auto: untrained
    trained = save_checkpoint(tiny_model, tmp_path / "trained.safetensors", {"stage": "final"})
    assert is_trained(trained) and not is_trained(path)
    pmap = build_map(tiny_model, trained, checkpoint_hash(trained), data, tmp_path / "m", progress=False)
    assert pmap.grids is not None  # auto: a trained checkpoint's map of 10 places
    loaded = PlaceMap.load(tmp_path / "m")
    meta = loaded.grids.meta
    assert (meta.height, meta.width, meta.pool, meta.places) == (8, 10, 2, 10)  # 64x80 -> 16x20 dense -> 8x10
    assert isinstance(loaded.grids.rows, np.memmap) and loaded.grids.rows.dtype == np.float16
    _, dense = tiny_model.describe([str(p) for p in data.images], return_dense=True)
    np.testing.assert_allclose(loaded.grids.of([3, 1]), np.stack([dense_grid(dense[3]), dense_grid(dense[1])]),
                               atol=2e-3)  # float16 on disk
    assert "dense grids: 8x10 cells" in loaded.info(tmp_path / "m")
    none = build_map(tiny_model, trained, checkpoint_hash(trained), data, tmp_path / "n", grids="never",
                     progress=False)
    assert none.grids is None and not (tmp_path / "n" / GRIDS).exists()
    assert "dense grids: none" in PlaceMap.load(tmp_path / "n").info()
    with pytest.raises(MapError, match="grids 'sometimes' unknown"):
        build_map(tiny_model, path, sha, data, tmp_path / "x", grids="sometimes", progress=False)


def test_grid_errors_name_the_file_and_the_fix(tiny_model, route, ckpt, tmp_path):
    path, sha = ckpt
    m = tmp_path / "m"
    build_map(tiny_model, path, sha, load_csv(route / "poses.csv"), m, grids="always", progress=False)
    meta = json.loads((m / GRIDS_META).read_text())
    (m / GRIDS_META).write_text(json.dumps({**meta, "checkpoint_sha256": "0" * 64}))
    with pytest.raises(MapError, match="made with checkpoint 000000000000.*densernet-map grids"):
        PlaceMap.load(m)
    (m / GRIDS_META).write_text(json.dumps(meta))
    rows = np.load(m / GRIDS)
    np.save(m / GRIDS, rows[:9])
    with pytest.raises(MapError, match=r"dense_grids.npy: shape \(9, 80, .*expected \(10, 80"):
        PlaceMap.load(m)
    (m / GRIDS).write_bytes(b"not numpy")
    with pytest.raises(MapError, match="corrupt dense grids"):
        PlaceMap.load(m)
    (m / GRIDS).unlink()
    with pytest.raises(MapError, match="dense grids incomplete.*dense_grids.npy missing"):
        PlaceMap.load(m)
    assert PlaceMap.load(m, grids=False).grids is None  # `densernet-map grids` can still read the map


def test_interrupted_grids_resume_to_the_same_rows_and_add_extends_them(tiny_model, route, ckpt, tmp_path,
                                                                        monkeypatch):
    path, sha = ckpt
    data = load_csv(route / "poses.csv")
    whole = build_map(tiny_model, path, sha, data, tmp_path / "whole", grids="always", progress=False)
    m = tmp_path / "m"
    build_map(tiny_model, path, sha, data, m, grids="never", progress=False)
    monkeypatch.setattr(grids_module, "CHUNK", 4)
    calls = []
    real = tiny_model.describe

    class Interrupt(Exception):
        pass

    def describe_then_stop(images, **kw):
        calls.append(len(images))
        if len(calls) == 2:
            raise Interrupt
        return real(images, **kw)

    monkeypatch.setattr(tiny_model, "describe", describe_then_stop)
    with pytest.raises(Interrupt):
        build_grids(tiny_model, data.images, m, sha, progress=False)
    assert (m / GRIDS_PARTIAL).is_file() and json.loads((m / GRIDS_PROGRESS).read_text())["done"] == 4
    remove_grids(m, partial=False)  # what build_map does before writing a map: an interrupted build's work stays
    monkeypatch.setattr(tiny_model, "describe", real)
    calls.clear()
    counted = []
    monkeypatch.setattr(tiny_model, "describe", lambda images, **kw: counted.append(len(images)) or real(images, **kw))
    resumed = build_grids(tiny_model, data.images, m, sha, progress=False)
    assert counted == [4, 2]  # images 4-9 only
    np.testing.assert_array_equal(np.asarray(resumed.rows), np.asarray(whole.grids.rows))
    assert not (m / GRIDS_PROGRESS).exists() and not (m / GRIDS_PARTIAL).exists()
    monkeypatch.setattr(tiny_model, "describe", real)
    part = tmp_path / "part"
    build_map(tiny_model, path, sha, data.subset(range(6)), part, grids="always", progress=False)
    merged = add_to_map(part, tiny_model, sha, data.subset(range(6, 10)), progress=False)
    assert merged.grids.meta.places == 10
    np.testing.assert_array_equal(np.asarray(PlaceMap.load(part).grids.rows), np.asarray(whole.grids.rows))


def test_localizer_reranks_by_the_dense_map_and_keeps_the_scores_sorted(tiny_model, route, ckpt, tmp_path):
    """A frame whose global descriptor is place 0's but whose dense grid is another candidate's: the re-rank
    puts that candidate first, with the best similarity; the scores stay the sorted global ones; without the
    re-rank (or without grids) the global order stands."""
    path, sha = ckpt
    m = tmp_path / "m"
    build_map(tiny_model, path, sha, load_csv(route / "poses.csv"), m, grids="always", progress=False)
    loc = Localizer.from_paths(m, path, "cpu", top_k=5)
    plain = Localizer.from_paths(m, path, "cpu", top_k=5, rerank=None)
    desc = loc.map.descriptors[0].astype(np.float32)[None]
    before = plain.retrieve(desc, np.asarray(loc.map.grids.rows[0], np.float32))
    assert before.ids[0] == 0 and not before.reranked  # rerank=None: the grid is not used
    target = int(before.ids[2])
    grid = np.asarray(loc.map.grids.rows[target], np.float32)
    after = loc.retrieve(desc, grid)
    assert after.reranked and after.ids[0] == target and after.global_best == 0 and after.rerank_moved
    kept = loc.retrieve(desc, np.asarray(loc.map.grids.rows[0], np.float32))  # its own grid: place 0 stays first
    assert kept.reranked and kept.global_best == kept.ids[0] == 0 and not kept.rerank_moved
    assert sorted(after.ids.tolist()) == sorted(before.ids.tolist())
    np.testing.assert_array_equal(after.scores, before.scores)  # the confidence's input is the global one
    result = loc.localize_descriptor(desc, grid=grid)
    assert result.single.place_id == target or target in result.single.group
    assert loc.retrieve(desc, None).ids[0] == 0  # no grid for this frame (a descriptor alone): no re-rank
    build_map(tiny_model, path, sha, load_csv(route / "poses.csv"), tmp_path / "n", grids="never", progress=False)
    assert Localizer.from_paths(tmp_path / "n", path, "cpu").rerank is None
    image = load_csv(route / "poses.csv").images[4]
    from densernet_core.images import read_image

    d, features, g = loc.describe(read_image(image))
    assert features is None and g.shape == (80, loc.map.grids.meta.channels)
    assert loc.localize(read_image(image)).retrieval.reranked


def test_localize_cli_reranks_on_a_map_with_grids_unless_told_not_to(tiny_model, route, ckpt, tmp_path, capsys):
    """`densernet-localize` uses the map's grids as the node does and says what the re-rank did; --no-rerank
    keeps the global ranking (and says nothing of it)."""
    from densernet_core.localization.cli import main as localize

    path, sha = ckpt
    build_map(tiny_model, path, sha, load_csv(route / "poses.csv"), tmp_path / "map", grids="always", progress=False)
    queries = [str(route / f"{i:03d}.png") for i in (2, 5, 7)]
    assert localize([*queries, "--map", str(tmp_path / "map")]) == 0
    assert "dense re-rank: 3 frames, the first place changed on" in capsys.readouterr().out
    assert localize([*queries, "--map", str(tmp_path / "map"), "--no-rerank"]) == 0
    assert "dense re-rank" not in capsys.readouterr().out
