"""Generated routes: how a generator writes one run (images and poses.csv), and how a route is kept
between runs but reused only while it is what the generator would write now (same configuration,
same generator source, same writer). A route left by an older generator or by other options (`make
demo` with another --places) is written again instead of silently reused."""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import inspect
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import cv2
import numpy as np

STAMP = "generated.json"
RUNS = ("map", "query")
FIRST_STAMP_S, FRAME_PERIOD_S = 100.0, 0.5  # the runs' timestamps: a 2 Hz camera


def write_run(folder: Path, frames: Iterable[tuple[np.ndarray, list[str]]], pose_fields: list[str]) -> Path:
    """Frames (RGB image, its pose fields as text) as 0000.png, 0001.png, ... and poses.csv (image, the
    pose fields, a timestamp); the frames are rendered as they are written, in order."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (rgb, fields) in enumerate(frames):
        name = f"{i:04d}.png"
        cv2.imwrite(str(folder / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        rows.append([name, *fields, f"{FIRST_STAMP_S + i * FRAME_PERIOD_S:.3f}"])
    with open(folder / "poses.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", *pose_fields, "timestamp"])
        w.writerows(rows)
    return folder / "poses.csv"


def generated_route(out: str | Path, cfg: Any, generate: Callable[[Path, Any], dict[str, Path]],
                    derived: Sequence[Path] = ()) -> tuple[dict[str, Path], bool]:
    """(poses.csv of each run, whether the route was written now). Writing it anew also deletes the
    `derived` files (a checkpoint made from the older route's images)."""
    out = Path(out)
    source = Path(inspect.getsourcefile(generate)).read_bytes() + Path(__file__).read_bytes()  # and write_run
    want = json.loads(json.dumps({"generator": f"{generate.__module__}.{generate.__name__}",
                                  "source_sha256": hashlib.sha256(source).hexdigest(),
                                  "config": dataclasses.asdict(cfg)}, sort_keys=True))
    paths = {run: out / run / "poses.csv" for run in RUNS}
    stamp = out / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()) == want and all(p.is_file() for p in paths.values()):
        return paths, False
    stamp.unlink(missing_ok=True)
    for path in derived:
        Path(path).unlink(missing_ok=True)
    for run in RUNS:
        shutil.rmtree(out / run, ignore_errors=True)
    paths = generate(out, cfg)
    stamp.write_text(json.dumps(want, sort_keys=True, indent=1))
    return paths, True
