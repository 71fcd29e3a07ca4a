"""Map building throughput on this CPU: one process vs batches + decode workers vs 2-rank torchrun (issue 16).

    .venv/bin/python benchmarks/bench_map_build.py [--out bench_out/map_build]

Each configuration runs `densernet-map build` as a user would (a fresh process, Gardens Point
day_left, the headline's trained `small` checkpoint), twice, configurations interleaved so that
drift hits them alike. Reported per run: images/s of the description phase (decode, resize,
network, chunk saving; what the build logs as "described N images in T s", for torchrun the slowest
rank) and the command's wall time (start-up, route and model loading, index and saving included).
Sizes: 192x320 (the checkpoint's; 200 images) and 480x640 (48 images). Every map is compared with
the first configuration's: maps whose ranks ran as many threads are byte-identical; a different
thread count changes float sums (the max difference is reported).
Writes <out>/results.json, table.md and map_build.png.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from densernet_core.plots import pyplot, save_figure  # noqa: E402
from benchmarks.report import save_report  # noqa: E402

BIN = Path(sys.executable).parent
RUNS = 2
SIZES = {(192, 320): 200, (480, 640): 48}  # image size -> images mapped
DESCRIBED = re.compile(r"described (\d+) images in ([\d.]+) s")
# name -> (command prefix, extra build arguments); torchrun gives each rank one thread itself
CONFIGS = {
    "one process, batch 8, decode in the main thread (v1)": ([], ["--batch-size", "8", "--workers", "0"]),
    "one process, batch 8, 2 decode workers": ([], ["--batch-size", "8", "--workers", "2"]),
    "one process, batch 1, 2 decode workers": ([], ["--batch-size", "1", "--workers", "2"]),
    "torchrun 2 ranks (gloo, 1 thread each), batch 8, 2 decode workers each":
        (["torchrun", "--standalone", "--nproc-per-node", "2", "--no-python"],
         ["--batch-size", "8", "--workers", "2"]),
    "one process, OpenVINO int8, batch 8, 2 decode workers": ([], ["--batch-size", "8", "--workers", "2",
                                                                   "--backend", "openvino", "--engine", "{int8}"]),
}


def build(prefix: list[str], extra: list[str], out: Path, ckpt: Path, route: Path, size: tuple[int, int]) -> dict:
    cmd = [*([str(BIN / prefix[0]), *prefix[1:]] if prefix else []), str(BIN / "densernet-map"), "build",
           "--checkpoint", str(ckpt), "--traverse", str(route), "--image-size", str(size[0]), str(size[1]),
           "--no-progress", "--out", str(out), *extra]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{log}")
    found = [(int(n), float(t)) for n, t in DESCRIBED.findall(log)]
    images, seconds = sum(n for n, _ in found), max(t for _, t in found)
    return {"images": images, "describe_s": seconds, "images_per_s": images / seconds, "wall_s": wall}


def compare(a: Path, b: Path) -> dict:
    da, db = (np.load(m / "descriptors.npy", allow_pickle=False) for m in (a, b))
    return {"identical": bool(np.array_equal(da, db)),
            "max_abs_diff": float(np.abs(da.astype(np.float32) - db.astype(np.float32)).max())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared/data"))
    p.add_argument("--checkpoint", default="bench_out/gardens_point/runs/small/model.safetensors")
    p.add_argument("--engines", default="bench_out/runtime", help="bench_runtime.py's folder (the int8 engines)")
    p.add_argument("--out", default="bench_out/map_build")
    args = p.parse_args(argv)
    out, route, ckpt = Path(args.out), Path(args.data) / "gardens_point" / "day_left", Path(args.checkpoint)
    if not ckpt.is_file():
        raise SystemExit(f"{ckpt} not found: run `make bench-train` first (the headline's trained small)")
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for size, n in SIZES.items():
        subset = out / f"route_{n}"
        subset.mkdir(exist_ok=True)
        for img in sorted(route.glob("*.jpg"))[:n]:
            link = subset / img.name
            if not link.exists():
                link.symlink_to(img.resolve())
        engine = Path(args.engines) / f"small_{size[0]}x{size[1]}_int8.onnx"
        for run in range(RUNS):
            for k, (name, (prefix, extra)) in enumerate(CONFIGS.items()):
                if "{int8}" in extra and not engine.is_file():
                    print(f"skipped {name}: {engine} not found (run benchmarks/bench_runtime.py first)")
                    continue
                extra = [engine.as_posix() if a == "{int8}" else a for a in extra]
                folder = out / "maps" / f"{size[0]}x{size[1]}_{k}"
                r = build(prefix, extra, folder, ckpt, subset, size)
                r.update(config=name, size=f"{size[0]}x{size[1]}", run=run)
                r.update(compare(out / "maps" / f"{size[0]}x{size[1]}_0", folder))
                results.append(r)
                print(f"{r['size']} run {run}: {name}: {r['images_per_s']:.2f} images/s "
                      f"(describe {r['describe_s']:.1f} s, wall {r['wall_s']:.1f} s), same as v1: {r['identical']} "
                      f"(max diff {r['max_abs_diff']:.2g})", flush=True)
    plot(results, out / "map_build.png")
    save_report(out, results, table(results), out / "map_build.png")
    return 0


def summary(results: list[dict]) -> list[dict]:
    rows = []
    for size in dict.fromkeys(r["size"] for r in results):
        base = None
        for name in CONFIGS:
            runs = [r for r in results if r["size"] == size and r["config"] == name]
            if not runs:
                continue
            ips = float(np.mean([r["images_per_s"] for r in runs]))
            base = base or ips
            rows.append({"size": size, "config": name, "images_per_s": ips, "runs": [r["images_per_s"] for r in runs],
                         "ratio": ips / base, "wall_s": float(np.mean([r["wall_s"] for r in runs])),
                         "identical": all(r["identical"] for r in runs),
                         "max_abs_diff": max(r["max_abs_diff"] for r in runs)})
    return rows


def table(results: list[dict]) -> str:
    lines = ["| size | configuration | images/s (mean of runs) | runs | vs v1 | wall s | descriptors vs v1 |",
             "|---|---|---|---|---|---|---|"]
    for r in summary(results):
        same = "identical" if r["identical"] else f"max diff {r['max_abs_diff']:.1g}"
        lines.append(f"| {r['size']} | {r['config']} | {r['images_per_s']:.2f} | "
                     f"{' / '.join(f'{x:.2f}' for x in r['runs'])} | {r['ratio']:.2f}x | {r['wall_s']:.1f} | {same} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    plt = pyplot()

    rows = summary(results)
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.5))
    for ax, size in zip(np.atleast_1d(axes), sizes):
        part = [r for r in rows if r["size"] == size]
        ax.barh(range(len(part)), [r["images_per_s"] for r in part], color="tab:blue")
        ax.set_yticks(range(len(part)), [r["config"].replace(", ", "\n", 1) for r in part], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("images/s (description phase, decode included)")
        ax.set_title(f"map building, {size}, this CPU")
    save_figure(fig, path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
