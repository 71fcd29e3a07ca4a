"""The small Gardens Point map the node and thread benchmarks run on, built once in their --out folder."""
from __future__ import annotations

from pathlib import Path

from densernet_core.cli import make_checkpoint
from densernet_core.datasets import GeoImages, load_traverse
from densernet_core.mapping.placemap import build_map
from densernet_core.model.checkpoint import checkpoint_hash, load_model

MAP_FRAMES = range(0, 200, 5)  # day_left: 40 places


def day_left_map(data: Path, out: Path, image_size: tuple[int, int],
                 map_dir: Path | None = None) -> tuple[GeoImages, Path, Path]:
    """day_left every 5th frame, mapped with an off-the-shelf `small` at `image_size` (checkpoint and map
    reused when `out` already holds them); the places, the checkpoint and the map folder."""
    db = load_traverse(data / "day_left", list(MAP_FRAMES))
    ckpt = out / "model.safetensors"
    if not ckpt.is_file():
        make_checkpoint(db.images, ckpt, image_size=image_size, progress=False)
    map_dir = map_dir or out / "map"
    if not (map_dir / "manifest.json").is_file():
        build_map(load_model(ckpt), ckpt.resolve(), checkpoint_hash(ckpt), db, map_dir, progress=False)
    return db, ckpt, map_dir
