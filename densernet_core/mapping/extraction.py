"""Describing a map's images: in batches, decoded by parallel workers, resumable, sharded under torchrun.

The images are cut into chunks (`ExtractionOptions.chunk` images, a multiple of the batch size). A
chunk is the unit of work three ways: its results are saved under the map's `.partial/` folder as
soon as it is described (an interrupted build resumes from the first missing chunk), rank r of a
torchrun job describes chunks r, r + W, r + 2W, ... and rank 0 receives the others' chunks in
order. Every chunk is described in the same batches whoever describes it, so a sharded build
gives the single-process build's descriptors (bit for bit when the ranks run as many threads).

Decoding (JPEG/PNG decode and the resize to the network's input, OpenCV, which releases the GIL)
runs in `workers` threads ahead of the network, so the network does not wait for the disk.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tqdm import tqdm

from ..distributed import DistContext
from ..images import read_image, resize
from ..local_features import LocalFeatures, describe_with_features

LOG = logging.getLogger("densernet")
PLAN = "plan.json"
DEFAULT_CHUNK = 32     # images per saved chunk: what an interruption can lose, and the sharding grain
DEFAULT_BATCH = 8      # images per network pass (CPU: larger batches are no faster; GPUs want 32-256)
DEFAULT_WORKERS = 2    # decode threads
LOOKAHEAD_BATCHES = 2  # decoded images kept ready per worker, in batches: bounds the memory decoding may use


@dataclass(frozen=True)
class ExtractionOptions:
    batch_size: int = DEFAULT_BATCH
    workers: int = DEFAULT_WORKERS
    chunk: int = DEFAULT_CHUNK

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if self.workers < 0:
            raise ValueError(f"decode workers must be 0 (decode in the main thread) or more, got {self.workers}")
        if self.chunk < self.batch_size or self.chunk % self.batch_size:
            raise ValueError(f"chunk ({self.chunk} images) must be a multiple of the batch size ({self.batch_size}): "
                             "every chunk is described in the same batches, whichever rank or run describes it")

    @classmethod
    def for_batch(cls, batch_size: int, workers: int = DEFAULT_WORKERS, chunk: int | None = None) -> "ExtractionOptions":
        """The default chunk, rounded up to a multiple of `batch_size`."""
        if chunk is None:
            chunk = max(1, batch_size) * -(-DEFAULT_CHUNK // max(1, batch_size))
        return cls(batch_size, workers, chunk)


def decoded_images(paths: Iterable[Path], size: tuple[int, int] | None, workers: int,
                   lookahead: int) -> Iterator[np.ndarray]:
    """RGB uint8 images in the order given, resized to `size` (None: as stored), decoded by `workers`
    threads at most `lookahead` images ahead of the consumer. A bad image raises when its turn comes,
    so everything before it is still used."""
    def load(path: Path) -> np.ndarray:
        rgb = read_image(path)
        return rgb if size is None else resize(rgb, size)

    if workers == 0:
        yield from (load(p) for p in paths)
        return
    pending: deque[Future] = deque()
    source = iter(paths)
    with ThreadPoolExecutor(workers, thread_name_prefix="densernet-decode") as pool:
        try:
            pending.extend(pool.submit(load, p) for p in islice(source, max(1, lookahead)))
            while pending:
                image = pending.popleft().result()
                pending.extend(pool.submit(load, p) for p in islice(source, 1))
                yield image
        finally:
            for f in pending:
                f.cancel()


@dataclass(frozen=True)
class PackedFeatures:
    """A chunk's local features as three arrays: what is saved, and what a rank sends to rank 0."""
    keypoints: np.ndarray    # K x 2 float32, all images' keypoints one after another
    descriptors: np.ndarray  # K x d float16
    counts: np.ndarray       # per image, how many of the K are its own (int64)

    PARTS = ("kp", "fd", "n")

    @classmethod
    def pack(cls, feats: list[LocalFeatures]) -> "PackedFeatures":
        dims = {f.descriptors.shape[1] for f in feats if len(f)}
        dim = dims.pop() if dims else 0
        return cls(np.concatenate([f.keypoints for f in feats]).reshape(-1, 2).astype(np.float32),
                   np.concatenate([f.descriptors.reshape(-1, dim) for f in feats]).astype(np.float16),
                   np.array([len(f) for f in feats], np.int64))

    def unpack(self, kind: str) -> list[LocalFeatures]:
        bounds = np.r_[0, np.cumsum(self.counts)]
        return [LocalFeatures(self.keypoints[a:b], self.descriptors[a:b].astype(np.float32), kind)
                for a, b in zip(bounds[:-1], bounds[1:])]


class ChunkStore:
    """A build's saved chunks under `.partial/`: descriptors, and local features when the map has points."""

    def __init__(self, work: Path, features: str | None) -> None:
        self.work, self.features = work, features

    def path(self, chunk: int) -> Path:
        return self.work / f"chunk_{chunk:05d}.npy"

    def done(self, chunk: int) -> bool:
        return self.path(chunk).is_file() and (
            self.features is None or all(self._part(chunk, p).is_file() for p in PackedFeatures.PARTS))

    def save(self, chunk: int, desc: np.ndarray, feats: PackedFeatures | None) -> None:
        if feats is not None:
            for part, array in zip(PackedFeatures.PARTS, (feats.keypoints, feats.descriptors, feats.counts)):
                np.save(self._part(chunk, part), array, allow_pickle=False)
        # Last, and whole or not at all (a kill mid-write leaves no truncated file): the chunk counts as done.
        tmp = self.work / f"chunk_{chunk:05d}.partial.npy"
        np.save(tmp, desc.astype(np.float32), allow_pickle=False)
        os.replace(tmp, self.path(chunk))

    def load(self, chunk: int) -> tuple[np.ndarray, PackedFeatures | None]:
        desc = np.load(self.path(chunk), allow_pickle=False)
        if self.features is None:
            return desc, None
        return desc, PackedFeatures(*(np.load(self._part(chunk, p), allow_pickle=False) for p in PackedFeatures.PARTS))

    def _part(self, chunk: int, part: str) -> Path:
        return self.work / f"chunk_{chunk:05d}_{part}.npy"


def _start_or_resume(work: Path, wanted: dict, ctx: DistContext) -> None:
    """Keep a previous partial build of the same inputs, else start over. Rank 0 decides first; on a
    shared folder the other ranks then find its plan, on a folder of their own they decide alike."""
    def decide() -> None:
        plan = work / PLAN
        if plan.is_file() and json.loads(plan.read_text()) != wanted:
            LOG.info("%s: the previous partial build was for other inputs or options; starting over", work)
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        if not plan.is_file():
            plan.write_text(json.dumps(wanted))

    if ctx.is_main:
        decide()
    ctx.barrier()
    if not ctx.is_main:
        decide()


def describe_images(model, images: list[Path], work: Path, key: str, features: str | None = None,
                    options: ExtractionOptions = ExtractionOptions(), ctx: DistContext = DistContext(),
                    progress: bool = True) -> tuple[np.ndarray, list[LocalFeatures]] | None:
    """Global descriptors of `images` (and, with `features`, their local features), in order.

    Under torchrun every rank describes its share; rank 0 returns all of them, the other ranks None.
    `key` (the checkpoint's sha256) and the options decide whether saved chunks may be reused.
    """
    wanted = {"key": key, "images": [str(p) for p in images], "features": features,
              "batch_size": options.batch_size, "chunk": options.chunk}
    _start_or_resume(work, wanted, ctx)
    store = ChunkStore(work, features)
    n_chunks = -(-len(images) // options.chunk)
    mine = [c for c in range(n_chunks) if c % ctx.world_size == ctx.rank]
    todo = [c for c in mine if not store.done(c)]
    if len(todo) < len(mine):
        LOG.info("resuming: %d of %d chunks%s already described", len(mine) - len(todo), len(mine),
                 f" of rank {ctx.rank}" if ctx.enabled else "")
    started = time.perf_counter()
    _describe_chunks(model, images, todo, store, features, options, ctx, progress)
    seconds = time.perf_counter() - started
    described = sum(len(images[c * options.chunk:(c + 1) * options.chunk]) for c in todo)
    if described:
        LOG.info("described %d images in %.1f s (%.1f images/s%s, batch %d, %d decode workers)", described, seconds,
                 described / seconds, f", rank {ctx.rank} of {ctx.world_size}" if ctx.enabled else "",
                 options.batch_size, options.workers)
    return _gather(store, n_chunks, model.descriptor_dim, features, ctx)


def _describe_chunks(model, images: list[Path], todo: list[int], store: ChunkStore, features: str | None,
                     options: ExtractionOptions, ctx: DistContext, progress: bool) -> None:
    # Local features are found in the stored image, so decode workers resize only when there are none.
    size = None if features else model.config.image_size
    chunks = [images[c * options.chunk:(c + 1) * options.chunk] for c in todo]
    stream = decoded_images((p for chunk in chunks for p in chunk), size, options.workers,
                            options.batch_size * LOOKAHEAD_BATCHES * max(1, options.workers))
    bar = tqdm(total=sum(map(len, chunks)), disable=not progress, unit="img",
               desc="map descriptors" + (f" (rank {ctx.rank})" if ctx.enabled else ""))
    with bar:
        for c, chunk in zip(todo, chunks):
            rgb = list(islice(stream, len(chunk)))
            if features is None:
                store.save(c, model.describe(rgb, batch_size=options.batch_size), None)
            else:
                desc, feats = describe_with_features(model, rgb, features, batch_size=options.batch_size)
                store.save(c, desc, PackedFeatures.pack(feats))
            bar.update(len(chunk))


def _gather(store: ChunkStore, n_chunks: int, dim: int, features: str | None,
            ctx: DistContext) -> tuple[np.ndarray, list[LocalFeatures]] | None:
    """Every chunk in order on rank 0: its own from disk, the others' received from their ranks."""
    owner = [c % ctx.world_size for c in range(n_chunks)]
    if not ctx.is_main:
        for c in (c for c in range(n_chunks) if owner[c] == ctx.rank):
            desc, packed = store.load(c)
            ctx.send_array(np.array(desc.shape, np.int64))
            ctx.send_array(desc)
            if packed is not None:
                ctx.send_array(np.array(packed.descriptors.shape, np.int64))
                ctx.send_array(packed.counts)
                ctx.send_array(packed.keypoints)
                ctx.send_array(packed.descriptors)
        return None
    descs: list[np.ndarray] = []
    feats: list[LocalFeatures] = []
    for c in range(n_chunks):
        if owner[c] == 0:
            desc, packed = store.load(c)
        else:
            shape = tuple(ctx.recv_array((2,), np.int64, owner[c]))
            if shape[1] != dim:
                raise RuntimeError(f"rank {owner[c]} described chunk {c} with {shape[1]}-D descriptors, "
                                   f"rank 0 with {dim}-D: the ranks loaded different models")
            desc, packed = ctx.recv_array(shape, np.float32, owner[c]), None
            if features is not None:
                n_kp, fd_dim = (int(v) for v in ctx.recv_array((2,), np.int64, owner[c]))
                counts = ctx.recv_array((shape[0],), np.int64, owner[c])
                keypoints = ctx.recv_array((n_kp, 2), np.float32, owner[c])
                packed = PackedFeatures(keypoints, ctx.recv_array((n_kp, fd_dim), np.float16, owner[c]), counts)
        descs.append(desc)
        if packed is not None:
            feats += packed.unpack(features)
    return (np.concatenate(descs) if descs else np.zeros((0, dim), np.float32)), feats
