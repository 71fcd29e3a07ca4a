"""The mapped places' dense grids, for re-ranking the global top-k (localization/rerank.py).

Stored in the map folder, no pickle:
    dense_grids.json   pool, grid height and width, channels, dtype, the checkpoint's sha256, places
    dense_grids.npy    N x cells x C float16, each row a unit-length pooled feature of the fused dense map;
                       memory-mapped, so a query reads only its candidates' grids (and several nodes share pages)

At 192x320 and pool 2 a place costs 24 x 40 x 192 x 2 B = 369 KB on disk, 15 times its global descriptor:
a map builds them by default up to AUTO_MAX_PLACES places when its checkpoint was trained (`densernet-map
build --grids`); a larger map, or one of an off-the-shelf checkpoint (where the re-rank added wrong fixes),
keeps the global ranking unless asked. Built in chunks written as they are done,
so an interrupted build resumes; `densernet-map add` extends them, `densernet-map grids` adds them to a
map built without.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from ..images import read_image
from ..localization.rerank import DEFAULT_POOL, dense_grid, grid_shape

LOG = logging.getLogger("densernet")
GRIDS, GRIDS_META = "dense_grids.npy", "dense_grids.json"
GRIDS_PARTIAL, GRIDS_PROGRESS = "dense_grids.npy.partial", "dense_grids.progress.json"
GRID_CHOICES = ("auto", "always", "never")
AUTO_MAX_PLACES = 2000  # "auto" builds grids up to here: 0.74 GB at 192x320 (369 KB per place)
GRID_DTYPE = "float16"
CHUNK = 32  # images described (and written) at a time; the unit of resuming


class GridError(ValueError):
    """A map's dense grids are missing, corrupt, or from another model."""


@dataclass(frozen=True)
class GridMeta:
    pool: int
    height: int
    width: int
    channels: int
    places: int
    checkpoint_sha256: str
    dtype: str = GRID_DTYPE

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def bytes_per_place(self) -> int:
        return self.height * self.width * self.channels * np.dtype(self.dtype).itemsize


@dataclass
class DenseGrids:
    meta: GridMeta
    rows: np.ndarray  # N x cells x C (a memory map when loaded)

    def of(self, ids: Sequence[int]) -> np.ndarray:
        """The grids of these places (k x cells x C float32), read in sorted order from the file."""
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        out = np.empty((len(ids), *self.rows.shape[1:]), np.float32)
        out[order] = self.rows[ids[order]]
        return out

    @classmethod
    def load(cls, folder: str | Path, num_places: int, checkpoint_sha256: str) -> "DenseGrids | None":
        """The map's grids, or None when it has none; a damaged or mismatched set is an error that says so."""
        folder = Path(folder)
        meta_path, rows_path = folder / GRIDS_META, folder / GRIDS
        if not meta_path.is_file() and not rows_path.is_file():
            return None
        if not meta_path.is_file() or not rows_path.is_file():
            missing = GRIDS_META if not meta_path.is_file() else GRIDS
            raise GridError(f"map {folder}: dense grids incomplete ({missing} missing); `densernet-map grids "
                            f"{folder}` builds them again")
        try:
            meta = GridMeta(**json.loads(meta_path.read_text()))
            rows = np.load(rows_path, allow_pickle=False, mmap_mode="r")
        except (json.JSONDecodeError, TypeError, ValueError, OSError, EOFError) as exc:
            raise GridError(f"map {folder}: corrupt dense grids ({exc}); `densernet-map grids {folder}` builds "
                            "them again") from exc
        expected = (num_places, meta.height * meta.width, meta.channels)
        if rows.shape != expected or rows.dtype.name != meta.dtype or meta.places != num_places:
            raise GridError(f"{rows_path}: shape {rows.shape} {rows.dtype}, expected {expected} {meta.dtype} for "
                            f"{num_places} places; `densernet-map grids {folder}` builds them again")
        if meta.checkpoint_sha256 != checkpoint_sha256:
            raise GridError(f"{meta_path}: made with checkpoint {meta.checkpoint_sha256[:12]}…, the map's descriptors "
                            f"with {checkpoint_sha256[:12]}…; `densernet-map grids {folder}` builds them again")
        return cls(meta, rows)


def wanted(choice: str, places: int, trained: bool) -> tuple[bool, str]:
    """Whether a map of `places` gets grids under `choice`, and why. auto: small maps of a trained checkpoint
    only: with `densernet init`'s off-the-shelf one the re-rank left the filter's right fixes on Gardens Point
    night as they were and tripled its wrong ones (3 -> 9 of 100 frames, a map of every 5th frame;
    benchmarks/bench_filter.py, docs/BENCHMARKS.md)."""
    if choice not in GRID_CHOICES:
        raise ValueError(f"grids {choice!r} unknown; choose one of {GRID_CHOICES}")
    if choice != "auto":
        return choice == "always", f"--grids {choice}"
    if places > AUTO_MAX_PLACES:
        return False, (f"not built: {places} places, above the {AUTO_MAX_PLACES} that --grids auto keeps them for "
                       "(--grids always builds them)")
    if not trained:
        return False, ("not built: the checkpoint is not a trained one (densernet init): with one the re-rank added "
                       "wrong fixes (--grids always builds them)")
    return True, "auto: a trained checkpoint's map"


def build_grids(model, images: Sequence[str | Path], folder: str | Path, checkpoint_sha256: str,
                pool: int = DEFAULT_POOL, first: DenseGrids | None = None, progress: bool = True) -> DenseGrids:
    """Grids of `images` written to the map folder (after `first`'s, when extending a map's), resumable:
    each chunk is flushed and counted in a progress file before the next is described."""
    folder = Path(folder)
    if not len(images):
        raise GridError("no images to build dense grids from")
    start = 0 if first is None else len(first.rows)
    total = start + len(images)
    key = {"checkpoint_sha256": checkpoint_sha256, "pool": pool, "images": [str(p) for p in images], "start": start}
    progress_path, partial = folder / GRIDS_PROGRESS, folder / GRIDS_PARTIAL
    done, out, hw = 0, None, None
    if progress_path.is_file() and partial.is_file():
        saved = json.loads(progress_path.read_text())
        if saved.get("key") == key:
            done, hw = int(saved["done"]), tuple(saved["grid"])
            out = np.load(partial, mmap_mode="r+", allow_pickle=False)
            LOG.info("resuming the dense grids: %d of %d images already described", done, len(images))
    with tqdm(total=len(images), initial=done, disable=not progress, unit="img", desc="dense grids") as bar:
        for i in range(done, len(images), CHUNK):
            _, dense = model.describe([read_image(p) for p in images[i:i + CHUNK]], return_dense=True)
            rows = np.stack([dense_grid(d, pool) for d in dense]).astype(GRID_DTYPE)
            if out is None:
                hw = grid_shape(dense[0].shape[1:], pool)
                out = np.lib.format.open_memmap(partial, mode="w+", dtype=GRID_DTYPE, shape=(total, *rows.shape[1:]))
                if first is not None:
                    if first.rows.shape[1:] != rows.shape[1:]:
                        raise GridError(f"the map's grids are {first.rows.shape[1:]} (cells x channels), the model "
                                        f"gives {rows.shape[1:]}: not the model the map was built with")
                    for s in range(0, start, CHUNK):
                        out[s:min(s + CHUNK, start)] = first.rows[s:min(s + CHUNK, start)]
            out[start + i:start + i + len(rows)] = rows
            out.flush()
            progress_path.write_text(json.dumps({"key": key, "done": i + len(rows), "grid": list(hw)}))
            bar.update(len(rows))
    meta = GridMeta(pool, int(hw[0]), int(hw[1]), int(out.shape[2]), total, checkpoint_sha256)
    del out
    (folder / GRIDS_META).unlink(missing_ok=True)
    partial.replace(folder / GRIDS)
    (folder / GRIDS_META).write_text(json.dumps(asdict(meta), indent=2))  # last: marks them complete
    progress_path.unlink(missing_ok=True)
    return DenseGrids.load(folder, total, checkpoint_sha256)


def remove_grids(folder: str | Path, partial: bool = True) -> None:
    """A map's grids gone; `partial` False keeps an interrupted build's work (its progress file says whose
    it is, so `build_grids` resumes it only for the same images and checkpoint)."""
    for name in (GRIDS, GRIDS_META, *((GRIDS_PARTIAL, GRIDS_PROGRESS) if partial else ())):
        (Path(folder) / name).unlink(missing_ok=True)
