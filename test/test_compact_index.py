"""The compact index for large maps: exact answers from a shortlist, chosen by size, provenance kept,
kept valid by `add`, and refused by name when its files are damaged."""
import json
import os
from pathlib import Path

import faiss
import numpy as np
import pytest

from conftest import random_images, route_like
from densernet_core.datasets import GeoImages, load_csv
from densernet_core.mapping import index as idx
from densernet_core.mapping.placemap import FORMAT_VERSION, Manifest, MapError, PlaceMap, add_to_map, build_map, reindex_map


def _places(n: int) -> GeoImages:
    return GeoImages([Path(f"p{i}.png") for i in range(n)], np.c_[np.arange(n), np.zeros((n, 2))],
                     np.tile([0, 0, 0, 1.0], (n, 1)), np.arange(n, dtype=float))


def _revisits(desc: np.ndarray, every: int, seed: int) -> np.ndarray:
    q = desc[::every] + 0.02 * np.random.default_rng(seed).standard_normal((len(desc[::every]), desc.shape[1]))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def test_auto_is_exact_up_to_its_size_and_compact_above():
    assert idx.resolve_index_type("auto", idx.EXACT_MAX_PLACES) == "flat"
    assert idx.resolve_index_type("auto", idx.EXACT_MAX_PLACES + 1) == "compact"
    assert idx.resolve_index_type("flat", 10 ** 7) == "flat" and idx.resolve_index_type("compact", 5) == "compact"
    with pytest.raises(ValueError, match="index type 'annoy' unknown"):
        idx.resolve_index_type("annoy", 10)


def test_compact_map_answers_as_exact_search_and_round_trips(tiny_model, ckpt, tmp_path):
    """A map with enough places for a fitted projection: PCA, its provenance in the manifest, exact scores,
    top-1 as exact search, the same answers after save and load (its lists memory-mapped), and `info`
    telling what search costs."""
    path, sha = ckpt
    n, d = 6000, 1024  # >= 10 places per kept dimension (512)
    desc = route_like(n, d, 5).astype(np.float16)
    manifest = Manifest(FORMAT_VERSION, tiny_model.config.to_dict(), sha, str(path), d, n, "map", "now", "compact",
                        "float16")
    built = PlaceMap(manifest, desc, _places(n))
    prov = built.index.provenance
    assert prov.method == "pca" and prov.dim == idx.COMPACT_DIM and prov.fitted_places == n
    assert 0.0 < prov.energy_kept <= 1.0 and built.index.shortlist == idx.COMPACT_RERANK
    built.save(tmp_path / "m")
    stored = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert stored["index_type"] == "compact" and stored["projection"]["method"] == "pca"
    loaded = PlaceMap.load(tmp_path / "m")
    assert loaded.index.provenance == prov and loaded.index.coarse.nprobe == prov.nprobe
    assert isinstance(loaded.descriptors, np.memmap) and isinstance(loaded.index.projection, np.memmap)
    queries = _revisits(desc.astype(np.float32), 30, 6)
    s_c, i_c = loaded.search(queries, 5)
    s_e, i_e = idx.ExactIndex(desc).search(queries, 5)
    np.testing.assert_array_equal(i_c[:, 0], i_e[:, 0])
    np.testing.assert_allclose(s_c, np.take_along_axis(queries @ desc.astype(np.float32).T, i_c, axis=1), atol=1e-5)
    np.testing.assert_array_equal(built.search(queries, 5)[1], i_c)
    info = loaded.info(tmp_path / "m")
    assert "in RAM for search" in info and "expected query time" in info and "top 512 singular directions" in info
    ram = float(info.split("bytes per place: ")[1].split(" ")[0])
    assert ram < 1024  # 512 B of codes and 8 B of id per place, the projection and lists shared out
    assert f"{idx.COMPACT_RERANK} stored descriptors read from disk per query" in info


@pytest.mark.parametrize("threads", [1, 2])
def test_a_single_query_splits_its_probed_lists_between_threads_and_answers_as_a_batch(monkeypatch, threads):
    """The node searches one query a frame: its probed lists go to SINGLE_QUERY_THREADS (FAISS's parallel_mode
    1; one in the product, two in benchmarks/bench_search_threads.py), a batch is split over its queries on every
    thread (mode 0), and both give the same answers."""
    desc = route_like(3000, 256, 7).astype(np.float16)
    index = idx.build_index(desc, "compact")
    assert index._lists is not None and index._lists.nprobe > 1
    queries = _revisits(desc.astype(np.float32), 100, 8)
    assert len(queries) >= idx.FAISS_PARALLEL_QUERIES
    used, real = [], idx.faiss_threads
    monkeypatch.setattr(idx, "faiss_threads", lambda n: used.append(n) or real(n))
    monkeypatch.setattr(idx, "SINGLE_QUERY_THREADS", threads)
    batch = index.search(queries, 5)
    assert used == [None] and index._lists.parallel_mode == 0
    one = [index.search(q[None], 5) for q in queries]
    assert set(used[1:]) == {min(threads, os.cpu_count() or 1)} and index._lists.parallel_mode == 1
    np.testing.assert_array_equal(np.concatenate([i for _, i in one]), batch[1])
    np.testing.assert_allclose(np.concatenate([s for s, _ in one]), batch[0], atol=1e-6)


def test_small_compact_map_projects_at_random_and_says_when_it_will_fit(tiny_model, ckpt, tmp_path):
    path, sha = ckpt
    n, d = 700, 1024
    desc = route_like(n, d, 7).astype(np.float16)
    manifest = Manifest(FORMAT_VERSION, tiny_model.config.to_dict(), sha, str(path), d, n, "map", "now", "compact",
                        "float16")
    pmap = PlaceMap(manifest, desc, _places(n))
    prov = pmap.index.provenance
    assert prov.method == "random-orthogonal" and prov.refit_at() == idx.SAMPLES_PER_DIM * idx.COMPACT_DIM
    proj = pmap.index.projection
    np.testing.assert_allclose(proj.T @ proj, np.eye(idx.COMPACT_DIM), atol=1e-4)
    assert f"a fit needs {idx.SAMPLES_PER_DIM * idx.COMPACT_DIM}" in prov.describe()
    queries = _revisits(desc.astype(np.float32), 20, 8)
    np.testing.assert_array_equal(pmap.search(queries, 1)[1], idx.ExactIndex(desc).search(queries, 1)[1])


def test_auto_map_chooses_by_size_and_add_keeps_the_projection_valid(tiny_model, route, ckpt, tmp_path, monkeypatch):
    """`auto`: exact while small; `add` past the size limit builds the compact index; further adds extend it
    under its projection until the map has outgrown what it was fitted on, then refit it."""
    monkeypatch.setattr(idx, "EXACT_MAX_PLACES", 5)
    monkeypatch.setattr(idx, "COMPACT_DIM", 4)
    monkeypatch.setattr(idx, "SAMPLES_PER_DIM", 2)  # a fitted projection needs 8 places
    path, sha = ckpt
    data = load_csv(route / "poses.csv")
    m = tmp_path / "m"
    small = build_map(tiny_model, path, sha, data.subset(range(4)), m, progress=False)
    assert small.manifest.index_type == "flat" and small.manifest.index_request == "auto"
    assert "chosen by size: auto" in small.info()
    grown = add_to_map(m, tiny_model, sha, data.subset(range(4, 7)), progress=False)  # 7 places: compact, random
    assert grown.manifest.index_type == "compact" and grown.index.provenance.method == "random-orthogonal"
    assert grown.index.provenance.fitted_places == 7 and grown.index.provenance.refit_at() == 8
    # 3 more places (10 >= 8): refitted, as PCA over the map's own descriptors
    refit = add_to_map(m, tiny_model, sha, data.subset(range(7, 10)), progress=False)
    assert refit.index.provenance.method == "pca" and refit.index.provenance.fitted_places == 10
    assert refit.index.provenance.refit_at() == 20
    again = add_to_map(m, tiny_model, sha, data.subset(range(0, 3)), progress=False)  # 13 < 20: extended
    assert again.index.provenance == refit.index.provenance and again.index.coarse.ntotal == 13
    loaded = PlaceMap.load(m)
    assert len(loaded) == 13 and loaded.index.coarse.ntotal == 13
    assert loaded.manifest.projection == json.loads((m / "manifest.json").read_text())["projection"]
    assert np.load(m / "descriptors.npy").shape == (13, tiny_model.descriptor_dim)
    assert not (m / "descriptors.npy.tmp").exists()
    for i in (2, 5, 8):  # every place, old and appended, is found by its own image
        _, ids = loaded.search(tiny_model.describe([data.images[i]]), 2)
        assert i in ids[0] or (i < 3 and i + 10 in ids[0])


def test_reindex_switches_search_without_describing_again(tiny_model, route, ckpt, tmp_path):
    path, sha = ckpt
    data = load_csv(route / "poses.csv")
    m = tmp_path / "m"
    build_map(tiny_model, path, sha, data, m, progress=False)
    q = tiny_model.describe(random_images(3, seed=99))
    exact = PlaceMap.load(m).search(q, 1)[1]
    compact = reindex_map(m, "compact")
    assert compact.manifest.index_type == "compact" and (m / "index.faiss").is_file()
    np.testing.assert_array_equal(PlaceMap.load(m).search(q, 1)[1], exact)
    back = reindex_map(m, "flat")
    assert back.manifest.index_type == "flat" and back.manifest.projection is None
    assert not (m / "index.faiss").exists() and not (m / "coarse.npy").exists()
    with pytest.raises(MapError, match="index type 'lsh' unknown"):
        reindex_map(m, "lsh")


def test_damaged_compact_map_is_refused_by_name(tiny_model, route, ckpt, tmp_path):
    path, sha = ckpt
    m = tmp_path / "m"
    build_map(tiny_model, path, sha, load_csv(route / "poses.csv"), m, index_type="compact", progress=False)
    manifest = json.loads((m / "manifest.json").read_text())
    broken = dict(manifest, projection=None)
    (m / "manifest.json").write_text(json.dumps(broken))
    with pytest.raises(MapError, match="compact map without its projection record.*reindex"):
        PlaceMap.load(m)
    repaired = reindex_map(m)  # what the message says: rebuilt from the descriptors, as it was asked for
    assert repaired.manifest.index_type == "compact" and PlaceMap.load(m).manifest.projection is not None
    (m / "manifest.json").write_text(json.dumps(dict(manifest, projection={"method": "pca"})))
    with pytest.raises(MapError, match="projection record .* is not one this densernet writes"):
        PlaceMap.load(m)
    (m / "manifest.json").write_text(json.dumps(dict(manifest, index_request="fastest")))
    with pytest.raises(MapError, match="index request 'fastest' unknown"):
        PlaceMap.load(m)
    (m / "manifest.json").write_text(json.dumps(dict(manifest, index_type="auto")))
    with pytest.raises(MapError, match="index type 'auto' unknown"):
        PlaceMap.load(m)
    (m / "manifest.json").write_text(json.dumps(manifest))
    if (m / "coarse.npy").is_file():
        np.save(m / "coarse.npy", np.zeros((3, 3), np.float32))
        with pytest.raises(MapError, match="coarse.npy: shape"):
            PlaceMap.load(m)


def test_shortlist_reads_of_a_memory_mapped_map_are_announced(tmp_path, monkeypatch):
    """The shortlist's rows are asked of the kernel together (posix_fadvise) before they are read."""
    import os

    desc = route_like(300, 64, 2).astype(np.float16)
    np.save(tmp_path / "d.npy", desc)
    mapped = np.load(tmp_path / "d.npy", mmap_mode="r")
    calls = []
    real = os.posix_fadvise
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, n, adv: (calls.append((off, n)), real(fd, off, n, adv)))
    index = idx.ShortlistIndex(idx.build_coarse(desc.astype(np.float32), "compact"), None, mapped, 8)
    _, ids = index.search(desc[40:41].astype(np.float32), 3)
    assert ids[0, 0] == 40 and len(calls) == 8
    assert all((off - mapped.offset) % (64 * 2) == 0 and n == 64 * 2 for off, n in calls)
    assert idx.RowPrefetch.of(desc) is None  # in memory: nothing to announce



def test_map_cli_reindex_and_info_report_the_search(tiny_model, route, ckpt, tmp_path, capsys):
    """`densernet-map build` takes auto by default; `reindex --index compact` switches a map's search and
    `info` prints what it costs: bytes per place in RAM and on disk, a measured query time, provenance."""
    from densernet_core.mapping.cli import main as map_main

    path, sha = ckpt
    m = tmp_path / "m"
    assert map_main(["build", "--checkpoint", str(path), "--poses", str(route / "poses.csv"), "--out", str(m),
                     "--no-progress"]) == 0
    built = capsys.readouterr().out
    assert "search: exact (chosen by size: auto)" in built and "expected query time" in built
    assert map_main(["reindex", str(m), "--index", "compact"]) == 0
    out = capsys.readouterr().out
    assert "search: compact shortlist + exact re-ranking" in out and "projection: random orthogonal" in out
    assert map_main(["info", str(m)]) == 0
    info = capsys.readouterr().out
    assert "in RAM for search" in info and "on disk" in info and "ms (p50 of 10 searches timed now)" in info
    assert json.loads((m / "manifest.json").read_text())["index_request"] == "compact"
    with pytest.raises(SystemExit):  # argparse refuses an unknown kind by name
        map_main(["reindex", str(m), "--index", "fastest"])
    assert "invalid choice: 'fastest'" in capsys.readouterr().err


def _refining_map(monkeypatch, tiny_model, ckpt, n: int = 1200, d: int = 256) -> tuple[PlaceMap, np.ndarray]:
    """A compact map whose projection keeps too little to rank revisits (4 of 256 dimensions), with the
    product-quantisation stage fitted (sizes scaled down from 12,288-D maps of >= 10k places)."""
    monkeypatch.setattr(idx, "COMPACT_DIM", 4)
    monkeypatch.setattr(idx, "REFINE_MIN_PLACES", 1000)
    monkeypatch.setattr(idx, "REFINE_SHORTLIST", 400)
    path, sha = ckpt
    desc = route_like(n, d, 5).astype(np.float16)
    manifest = Manifest(FORMAT_VERSION, tiny_model.config.to_dict(), sha, str(path), d, n, "map", "now", "compact",
                        "float16")
    return PlaceMap(manifest, desc, _places(n)), desc


def test_refining_codes_find_what_the_projection_loses(tiny_model, ckpt, tmp_path, monkeypatch):
    """Between the inverted file and the exact re-rank, product-quantisation codes of the full descriptors
    rank the lists' best 400: exact search's top-1 comes back where the projection alone lost it; only
    the re-rank's rows are read from disk; the stage and its codes survive save and load."""
    pmap, desc = _refining_map(monkeypatch, tiny_model, ckpt)
    index = pmap.index
    prov = index.provenance
    assert prov.refine == "pq32x8" and prov.refine_shortlist == 400 and index.refine.codes.shape == (1200, 32)
    assert "best 400 ranked by pq32x8 codes" in prov.describe()
    q = desc[::12].astype(np.float32) + 0.05 * np.random.default_rng(1).standard_normal((100, 256)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    exact = idx.ExactIndex(desc).search(q, 1)[1][:, 0]
    reads = []
    real_read = idx.read_rows
    monkeypatch.setattr(idx, "read_rows", lambda ref, rows, pre: (reads.append(len(rows)), real_read(ref, rows, pre))[1])
    refined = np.mean(pmap.search(q, 1)[1][:, 0] == exact)
    assert refined >= 0.9 and set(reads) == {idx.COMPACT_RERANK}
    projected_only = idx.ShortlistIndex(index.coarse, index.projection, desc, index.shortlist, prov)
    assert np.mean(projected_only.search(q, 1)[1][:, 0] == exact) <= 0.5  # the same index without the stage
    # the stage ranks by the asymmetric inner product: the k best of the candidates, as computed by hand
    cand = np.sort(np.random.default_rng(2).choice(1200, 300, replace=False))
    pq = index.refine.pq
    centroids = faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub)  # M x 256 x (d / M)
    table = np.einsum("mkd,md->mk", centroids, q[0].reshape(32, 8))
    by_hand = cand[np.argsort(-table[np.arange(32), index.refine.codes[cand]].sum(1))[:32]]
    assert set(index.refine.top(q[0], cand, 32)) == set(by_hand)
    pmap.save(tmp_path / "m")
    loaded = PlaceMap.load(tmp_path / "m")
    assert isinstance(loaded.index.refine.codes, np.memmap) and loaded.index.provenance == prov
    np.testing.assert_array_equal(loaded.search(q, 3)[1], pmap.search(q, 3)[1])
    ram = float(loaded.info(tmp_path / "m").split("bytes per place: ")[1].split(" ")[0])
    assert ram >= 32 + 8  # the codes count in what search holds in RAM


def test_refining_codes_grow_with_add_and_are_refused_when_damaged(tiny_model, ckpt, tmp_path, monkeypatch):
    from densernet_core.mapping.placemap import _extended_index

    pmap, desc = _refining_map(monkeypatch, tiny_model, ckpt)
    m = tmp_path / "m"
    pmap.save(m)
    loaded = PlaceMap.load(m)
    new = route_like(60, 256, 9)
    extended = _extended_index(m, loaded, new, np.vstack([desc, new.astype(np.float16)]))
    assert extended.refine.codes.shape == (1260, 32) and loaded.index.refine.codes.shape == (1200, 32)
    np.testing.assert_array_equal(extended.refine.codes[1200:], extended.refine.encode(new))
    assert extended.search(new[:10], 1)[1][:, 0].tolist() == list(range(1200, 1210))
    manifest = json.loads((m / "manifest.json").read_text())
    (m / "manifest.json").write_text(json.dumps(dict(manifest, projection=dict(manifest["projection"], refine="pq64x8"))))
    with pytest.raises(MapError, match="refine_pq.faiss is pq32x8, manifest.json says pq64x8"):
        PlaceMap.load(m)
    (m / "manifest.json").write_text(json.dumps(manifest))
    codes = np.load(m / "refine_codes.npy")
    np.save(m / "refine_codes.npy", codes[:-1])
    with pytest.raises(MapError, match=r"refine_codes.npy: uint8 \(1199, 32\), expected uint8 \(1200, 32\).*reindex"):
        PlaceMap.load(m)
    (m / "refine_codes.npy").unlink()
    with pytest.raises(MapError, match="refine_codes.npy missing"):
        PlaceMap.load(m)
    (m / "refine_pq.faiss").write_bytes(b"not a quantiser")
    np.save(m / "refine_codes.npy", codes)
    with pytest.raises(MapError, match="refine_pq.faiss: corrupt product quantiser"):
        PlaceMap.load(m)
    assert reindex_map(m).index.refine.codes.shape == (1200, 32)  # what the message says mends it
    assert PlaceMap.load(m).search(desc[:1].astype(np.float32), 1)[1][0, 0] == 0


def _mapped_kb(path: Path) -> int:
    """Resident kB of this process's mappings of `path` (/proc/self/smaps)."""
    kb, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if not line.split()[0].endswith(":"):  # a mapping's header line: address range ... path
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            kb += int(line.split()[1])
    return kb


@pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="needs Linux's /proc/self/smaps")
def test_memory_mapped_search_structures_are_mapped_in_at_load(tiny_model, ckpt, tmp_path, monkeypatch):
    """The refining codes and the inverted lists are in the process's page table once the map has loaded,
    not page-faulted in by the first queries (a fault per code row at 1M places)."""
    rows = np.random.default_rng(0).integers(0, 255, (4096, 1024), dtype=np.uint8)  # 4 MB
    np.save(tmp_path / "codes.npy", rows)
    mapped = np.load(tmp_path / "codes.npy", mmap_mode="r")
    assert _mapped_kb(tmp_path / "codes.npy") < 1024
    idx.map_in(mapped)
    assert _mapped_kb(tmp_path / "codes.npy") >= 4096
    pmap, desc = _refining_map(monkeypatch, tiny_model, ckpt)
    pmap.save(tmp_path / "m")
    touched = []
    real = idx.map_in
    monkeypatch.setattr(idx, "map_in", lambda pages: (touched.append(pages.nbytes), real(pages))[1])
    loaded = PlaceMap.load(tmp_path / "m")
    ivf = faiss.extract_index_ivf(loaded.index.coarse)
    assert isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists)
    assert touched[-1] == 1200 * 32  # every list of the inverted file, then the codes
    assert sum(touched[:-1]) == 1200 * ivf.code_size and len(touched) > 2


def test_queries_are_projected_through_int8_weights_close_to_float32(caplog, monkeypatch):
    """A query's projection reads int8 weights (a quarter of the float32 bytes), within a few per cent of
    the float32 one; a kernel that breaks that is not used."""
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((2048, 64)))[0].astype(np.float32)  # D x d, orthonormal columns
    q = route_like(8, 2048, 3).astype(np.float32)
    projection = idx.QueryProjection(basis)
    assert projection.codes is not None and projection.nbytes == 2048 * 64 + 64 * 2
    err = np.linalg.norm(projection(q) - q @ basis) / np.linalg.norm(q @ basis)
    assert 1e-3 < err < idx.PROJECTION_INT8_MAX_ERROR  # int8 rounding, visible; float32 would be ~1e-7
    import torch

    real = torch._weight_int8pack_mm
    monkeypatch.setattr(torch, "_weight_int8pack_mm", lambda x, w, s: real(x, w, s) * 1.5)  # a kernel off by half
    broken = idx.QueryProjection(basis)
    assert broken.codes is None and broken.nbytes == 2048 * 64 * 4 and "projected in float32" in caplog.text
    np.testing.assert_allclose(broken(q), q @ basis, rtol=1e-5, atol=1e-6)
