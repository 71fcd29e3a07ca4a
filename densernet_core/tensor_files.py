"""Safetensors files written atomically and byte-for-byte reproducibly.

The safetensors writer orders metadata keys by a hash map, so the same tensors and metadata gave
files with different bytes (and sha256) from run to run. Maps refuse a checkpoint whose sha256
differs from the one they were built with, so a repeated training must give the same bytes: the
header is rewritten with sorted keys, padded to its original length (the file stays valid).
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import save_file

HEADER_SIZE_BYTES = 8  # little-endian u64 length of the JSON header that follows


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: str | Path,
                      metadata: Mapping[str, str] | None = None) -> Path:
    """Write to a temporary name, canonicalise the header, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(dict(tensors), str(tmp), metadata=dict(metadata) if metadata else None)
    canonicalise_header(tmp)
    tmp.replace(path)
    return path


def canonicalise_header(path: Path) -> None:
    """Rewrite the JSON header with sorted keys (same length, space-padded as safetensors pads)."""
    with open(path, "r+b") as f:
        (size,) = struct.unpack("<Q", f.read(HEADER_SIZE_BYTES))
        header = json.loads(f.read(size))
        text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        if len(text) > size:
            raise ValueError(f"{path}: canonical safetensors header ({len(text)} B) exceeds the original ({size} B)")
        f.seek(HEADER_SIZE_BYTES)
        f.write(text.ljust(size, b" "))
