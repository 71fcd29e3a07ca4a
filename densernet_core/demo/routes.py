"""Generated routes are kept between runs, but reused only while they are what the generator would
write now: same configuration, same generator source. A route left by an older generator or by
other options (`make demo` with another --places) is written again instead of silently reused."""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import shutil
from pathlib import Path
from typing import Any, Callable

STAMP = "generated.json"
RUNS = ("map", "query")


def generated_route(out: str | Path, cfg: Any, generate: Callable[[Path, Any], dict[str, Path]]
                    ) -> tuple[dict[str, Path], bool]:
    """(poses.csv of each run, whether the route was written now). Whatever was derived from an older
    route (a checkpoint made from its images) is the caller's to drop when the second item is True."""
    out = Path(out)
    source = Path(inspect.getsourcefile(generate))
    want = json.loads(json.dumps({"generator": f"{generate.__module__}.{generate.__name__}",
                                  "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
                                  "config": dataclasses.asdict(cfg)}, sort_keys=True))
    paths = {run: out / run / "poses.csv" for run in RUNS}
    stamp = out / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()) == want and all(p.is_file() for p in paths.values()):
        return paths, False
    stamp.unlink(missing_ok=True)
    for run in RUNS:
        shutil.rmtree(out / run, ignore_errors=True)
    paths = generate(out, cfg)
    stamp.write_text(json.dumps(want, sort_keys=True, indent=1))
    return paths, True
