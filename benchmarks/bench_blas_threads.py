"""BLAS threads beside the network: what numpy's (OpenBLAS) workers cost a frame-by-frame process.

    .venv/bin/python benchmarks/bench_blas_threads.py [--frames 40] [--runs 3] [--out bench_out/blas_threads]

1. Idle burn: in a fresh process, the CPU seconds the other threads burn while the main one sleeps 0.3 s
   right after a product of a query with a map's background sample (512 x 12,288, as the localizer does
   per frame), 5 times; before and after `limit_blas_for_frames` (densernet_core/threads.py).
2. densernet-localize over Gardens Point night_right 100.. against a map of day_left (every 5th frame,
   off-the-shelf `small` at 192x320), `--sequence --fps 1`: each run a fresh process, with the limit (as
   shipped) and without it (the call replaced by a no-op), alternating; per frame the CLI's own total
   (describe + search + filter) from its CSV, and the run's wall time.
Writes <out>/results.json, table.md and blas_threads.png.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.small_map import day_left_map  # noqa: E402
from benchmarks.report import machine, save_report  # noqa: E402
from densernet_core.cli import setup_logging  # noqa: E402
from densernet_core.datasets import load_traverse  # noqa: E402
from densernet_core.plots import pyplot, save_figure  # noqa: E402

IMAGE_SIZE = (192, 320)  # as bench_node.py
FIRST_QUERY = 100  # night_right frames the training of the demo never saw

IDLE_PROBE = "import json; from densernet_core.threads import idle_burn_probe; print(json.dumps(idle_burn_probe()))"

LOCALIZE = r'''
import sys
import densernet_core.localization.cli as cli
if sys.argv[1] == "without":
    cli.limit_blas_for_frames = lambda: "BLAS threads: as they come (not limited)"
sys.exit(cli.main(sys.argv[2:]))
'''


def localize_run(limit: str, frames: list[str], map_dir: Path, csv_out: Path) -> dict:
    """One fresh densernet-localize process; per-frame totals from its CSV."""
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", LOCALIZE, limit, *frames, "--map", str(map_dir), "--sequence",
                           "--fps", "1", "--out", str(csv_out)], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise RuntimeError(f"densernet-localize failed ({limit} the limit):\n{done.stderr[-2000:]}")
    with open(csv_out) as f:
        per_frame = [float(r["latency_ms"]) for r in csv.DictReader(f)]
    return {"limit": limit, "wall_s": wall, "frame_ms_p50": float(np.median(per_frame)),
            "frame_ms_mean": float(np.mean(per_frame)), "frame_ms": per_frame}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "gardens_point"))
    p.add_argument("--frames", type=int, default=40, help="night_right frames from 100")
    p.add_argument("--runs", type=int, default=3, help="runs with and without the limit each, alternating")
    p.add_argument("--out", default="bench_out/blas_threads")
    args = p.parse_args(argv)
    setup_logging()
    data, out = Path(args.data), Path(args.out)
    if not (data / "day_left").is_dir():
        print(f"Gardens Point not found at {data} (needs ../shared/data beside the repo)")
        return 1
    if not 1 <= args.frames <= 200 - FIRST_QUERY or args.runs < 1:
        p.error(f"--frames must be 1..{200 - FIRST_QUERY} and --runs at least 1")
    out.mkdir(parents=True, exist_ok=True)
    idle = json.loads(subprocess.run([sys.executable, "-c", IDLE_PROBE], cwd=ROOT, capture_output=True, text=True,
                                     check=True).stdout)
    db, _, map_dir = day_left_map(data, out, IMAGE_SIZE)
    frames = [str(p) for p in load_traverse(data / "night_right",
                                            list(range(FIRST_QUERY, FIRST_QUERY + args.frames))).images]
    runs = []
    for k in range(args.runs):
        for limit in ("without", "with"):
            runs.append({"run": k, **localize_run(limit, frames, map_dir.resolve(), out / f"{limit}_{k}.csv")})
            print(f"run {k}, {limit} the limit: {runs[-1]['frame_ms_p50']:.0f} ms per frame (p50), "
                  f"{runs[-1]['wall_s']:.1f} s", flush=True)
    m = machine()
    lines = [
             f"Idle burn (other threads' CPU over 5 x 0.3 s right after a 512 x 12,288 product): {idle['before_s']:.2f} s "
             f"with BLAS as it comes, {idle['after_s']:.2f} s held to one thread ({', '.join(idle['limited'])}).", "",
             f"densernet-localize, {args.frames} night_right frames against {len(db.images)} day_left places, one "
             "fresh process per run:", "",
             "| run | BLAS | per frame p50 ms | per frame mean ms | wall s |", "|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['limit']} the limit | {r['frame_ms_p50']:.0f} | {r['frame_ms_mean']:.0f} | "
              f"{r['wall_s']:.1f} |" for r in runs]
    for limit in ("without", "with"):
        p50 = [r["frame_ms_p50"] for r in runs if r["limit"] == limit]
        lines.append(f"| all | {limit} the limit | {np.mean(p50):.0f} ± {np.std(p50, ddof=1) if len(p50) > 1 else 0:.0f} "
                     "(mean ± sd of the runs' p50) | | |")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    for r in runs:
        ax.plot(r["frame_ms"], color="tab:red" if r["limit"] == "without" else "tab:blue", alpha=0.6,
                label=f"{r['limit']} the limit" if r["run"] == 0 else None)
    ax.set_xlabel(f"night_right frame - {FIRST_QUERY}")
    ax.set_ylabel("ms per frame (describe + search + filter)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("densernet-localize: numpy's BLAS threads beside the network")
    plot = out / "blas_threads.png"
    save_figure(fig, plot, dpi=110)
    save_report(out, {"idle": idle, "runs": runs, "machine": m, "frames": args.frames,
                      "places": len(db.images)}, "\n".join(lines), plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
