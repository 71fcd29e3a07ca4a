"""Deployment runtimes on this CPU: PyTorch fp32 vs ONNX Runtime and OpenVINO, fp32 and int8 (issue 16).

    .venv/bin/python benchmarks/bench_runtime.py [--out bench_out/runtime] [--presets small] [--sizes 192 320]
                                                 [--int8-weight-bits 8]

For each preset (`small`: the headline run's trained checkpoint; `large`: an off-the-shelf checkpoint
made by `densernet init` from Gardens Point day_left frames 0-99) and image size (192x320, 480x640):
batch-1 latency (p50, images/s = 1 / mean) of describe() per backend on Gardens Point night frames,
in one process, backends interleaved per frame so drift hits them alike; and, at 192x320 (the
checkpoints' size), Gardens Point held-out R@1 (frames 100-199, the headline's three protocols) per
backend. A precision is accepted where its R@1 stays within 0.01 of torch fp32 on all three
protocols. int8: static quantization of the trunk and branches, calibrated on 25 day_left map frames
(100-199, every 4th), with 7-bit weights (`--int8-weight-bits 8`: the full range, which saturates on
CPUs without VNNI). Writes <out>/results.json, table.md and runtime.png.

    .venv/bin/python benchmarks/bench_runtime.py --recall-size 480 640 [--variants torch/fp32 openvino/int8 ...]

measures only the R@1 of `small` at another size (the engines of a full run are reused) and writes
<out>/recall_<H>x<W>.json and .md: whether a precision holds its recall where it was only timed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from densernet_core.plots import pyplot, save_figure  # noqa: E402
from densernet_core.cli import make_checkpoint, setup_logging  # noqa: E402
from densernet_core.datasets import load_traverse  # noqa: E402
from densernet_core.images import read_image  # noqa: E402
from densernet_core.model.runtime import (INT8_WEIGHT_BITS, INT8_WEIGHT_BITS_CHOICES, engine_metadata,  # noqa: E402
                                          export_onnx, load_describer)
from densernet_core.training.evaluation import evaluate_descriptors  # noqa: E402
from benchmarks.report import save_report  # noqa: E402

PROTOCOLS = (("day_right", "day_left"), ("night_right", "day_right"), ("night_right", "day_left"))
EVAL_FRAMES = range(100, 200)
TOLERANCE = 2.0
ACCEPT_R1_DROP = 0.01
CHECKPOINT_SIZE = (192, 320)
SIZES = ((192, 320), (480, 640))
VARIANTS = (("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"),
            ("openvino", "int8"))


def recall(model, gp: Path) -> dict[str, float]:
    sets = {t: load_traverse(gp / t, EVAL_FRAMES) for t in ("day_left", "day_right", "night_right")}
    desc = {t: model.describe(s.images) for t, s in sets.items()}
    return {f"{q}->{db}": evaluate_descriptors(f"{q}->{db}", desc[db], desc[q], sets[db].positions,
                                               sets[q].positions, TOLERANCE).recalls[1] for q, db in PROTOCOLS}


def latency(models: dict, frames: list[np.ndarray], warmup: int = 2) -> dict[str, dict]:
    """Batch-1 describe() per backend, interleaved frame by frame."""
    times = {k: [] for k in models}
    for m in models.values():
        for f in frames[:warmup]:
            m.describe([f])
    for f in frames:
        for k, m in models.items():
            t = time.perf_counter()
            m.describe([f])
            times[k].append(time.perf_counter() - t)
    return {k: {"p50_ms": 1000 * float(np.median(v)), "p95_ms": 1000 * float(np.percentile(v, 95)),
                "images_per_s": float(len(v) / np.sum(v))} for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared/data"))
    p.add_argument("--small", default="bench_out/gardens_point/runs/small/model.safetensors")
    p.add_argument("--out", default="bench_out/runtime")
    p.add_argument("--frames", type=int, default=20, help="latency frames per backend and size")
    p.add_argument("--recall-size", type=int, nargs=2, metavar=("H", "W"), help="only R@1 of small at this size")
    p.add_argument("--presets", nargs="+", choices=("small", "large"), default=["small", "large"])
    p.add_argument("--sizes", type=int, nargs="+", metavar="H W", default=[v for hw in SIZES for v in hw],
                   help="image sizes as H W pairs (default 192 320 480 640)")
    p.add_argument("--int8-weight-bits", type=int, choices=INT8_WEIGHT_BITS_CHOICES, default=INT8_WEIGHT_BITS,
                   help="int8 engines' weight range (8 saturates on CPUs without VNNI: compare both there)")
    p.add_argument("--variants", nargs="+", default=[f"{b}/{q}" for b, q in VARIANTS],
                   help="with --recall-size: backend/precision pairs (torch/fp32 is always measured)")
    args = p.parse_args(argv)
    if len(args.sizes) % 2:
        p.error("--sizes takes H W pairs")
    sizes = [tuple(args.sizes[i:i + 2]) for i in range(0, len(args.sizes), 2)]
    setup_logging()
    out, gp = Path(args.out), Path(args.data) / "gardens_point"
    out.mkdir(parents=True, exist_ok=True)
    if not Path(args.small).is_file():
        raise SystemExit(f"{args.small} not found: run `make bench-train` first (the headline's trained small)")
    calibration = [gp / "day_left" / f"Image{i:03d}.jpg" for i in range(100, 200, 4)]
    if args.recall_size:
        return recall_at(Path(args.small), tuple(args.recall_size), args.variants, calibration, gp, out,
                         args.int8_weight_bits)
    large = out / "large_off_the_shelf.safetensors"
    if "large" in args.presets and not large.is_file():
        fit = [gp / t / f"Image{i:03d}.jpg" for t in ("day_left",) for i in range(0, 100)]
        make_checkpoint(fit, large, preset="large", image_size=CHECKPOINT_SIZE, progress=False)
    checkpoints = {k: v for k, v in {"small": Path(args.small), "large": large}.items() if k in args.presets}
    frames = [read_image(gp / "night_right" / f"Image{i:03d}.jpg") for i in range(100, 100 + args.frames)]
    results = []
    for preset, ckpt in checkpoints.items():
        for size in sizes:
            models, export_s = {}, {}
            for backend, precision in VARIANTS:
                key = f"{backend} {precision}"
                engine = None
                if backend != "torch":  # one engine file per precision, read by both runtimes
                    engine = out / f"{preset}_{size[0]}x{size[1]}_{precision}.onnx"
                    if precision not in export_s:
                        t = time.perf_counter()
                        export_onnx(ckpt, engine, size, precision, calibration, args.int8_weight_bits)
                        export_s[precision] = round(time.perf_counter() - t, 1)
                models[key] = load_describer(ckpt, "cpu", size, backend, engine)
            ref = models["torch fp32"].describe(frames[:5])
            cos = {k: float(((m.describe(frames[:5]) * ref).sum(1)).min()) for k, m in models.items()}
            lat = latency(models, frames)
            r1 = {k: recall(m, gp) for k, m in models.items()} if size == CHECKPOINT_SIZE else {}
            for k in models:
                row = {"preset": preset, "size": list(size), "variant": k, **lat[k], "min_cosine_vs_torch": cos[k],
                       "speedup_vs_torch": lat[k]["images_per_s"] / lat["torch fp32"]["images_per_s"],
                       "export_s": export_s.get(k.split()[1]) if k != "torch fp32" else None, "r1": r1.get(k)}
                if r1:
                    drop = max(r1["torch fp32"][n] - r1[k][n] for n in r1[k])
                    row["accepted"] = bool(drop <= ACCEPT_R1_DROP + 1e-9)
                results.append(row)
                print(json.dumps(row), flush=True)
    plot(results, out / "runtime.png")
    save_report(out, results, table(results), out / "runtime.png")
    return 0


def recall_at(ckpt: Path, size: tuple[int, int], variants: list[str], calibration: list[Path], gp: Path,
              out: Path, int8_weight_bits: int = INT8_WEIGHT_BITS) -> int:
    """R@1 of `small` at `size` per backend/precision, against torch fp32 at the same size."""
    wanted = ["torch/fp32"] + [v for v in variants if v != "torch/fp32"]
    r1 = {}
    for variant in wanted:
        backend, precision = variant.split("/")
        engine = None
        if backend != "torch":
            engine = out / f"small_{size[0]}x{size[1]}_{precision}.onnx"
            if not engine.is_file() or engine_metadata(engine).get("int8_weight_bits") != (
                    int8_weight_bits if precision == "int8" else None):  # a full run's engine, if made alike
                export_onnx(ckpt, engine, size, precision, calibration, int8_weight_bits)
        t = time.perf_counter()
        r1[variant] = recall(load_describer(ckpt, "cpu", size, backend, engine), gp)
        print(f"{variant}: R@1 {r1[variant]} ({time.perf_counter() - t:.0f} s)", flush=True)
    names = [f"{q}->{db}" for q, db in PROTOCOLS]
    lines = [f"| small {size[0]}×{size[1]} | R@1 " + " / ".join(names) + " | largest drop vs torch fp32 | accepted |",
             "|---|---|---|---|"]
    rows = []
    for variant, r in r1.items():
        drop = max(r1["torch/fp32"][n] - r[n] for n in names)
        accepted = bool(drop <= ACCEPT_R1_DROP + 1e-9)
        rows.append({"variant": variant, "size": list(size), "r1": r, "max_drop": drop, "accepted": accepted})
        lines.append(f"| {variant} | {' / '.join(f'{r[n]:.2f}' for n in names)} | {drop:+.2f} | "
                     f"{'yes' if accepted else '**no**'} |")
    stem = out / f"recall_{size[0]}x{size[1]}"
    stem.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def table(rows: list[dict]) -> str:
    names = [f"{q}->{db}" for q, db in PROTOCOLS]
    lines = ["| preset | size | backend, precision | p50 ms | p95 ms | images/s | × torch fp32 | min cosine vs torch | "
             "R@1 " + " / ".join(names) + " | accepted |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        r1 = " / ".join(f"{r['r1'][n]:.2f}" for n in names) if r["r1"] else "not measured"
        acc = {True: "yes", False: "**no**"}.get(r.get("accepted"), "-")
        lines.append(f"| {r['preset']} | {r['size'][0]}×{r['size'][1]} | {r['variant']} | {r['p50_ms']:.0f} | "
                     f"{r['p95_ms']:.0f} | {r['images_per_s']:.2f} | {r['speedup_vs_torch']:.2f} | "
                     f"{r['min_cosine_vs_torch']:.4f} | {r1} | {acc} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()

    groups = list(dict.fromkeys(f"{r['preset']} {r['size'][0]}×{r['size'][1]}" for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(variants)
    for j, v in enumerate(variants):
        vals = [next(r["images_per_s"] for r in rows if r["variant"] == v and f"{r['preset']} {r['size'][0]}×{r['size'][1]}" == g)
                for g in groups]
        ax.bar(np.arange(len(groups)) + j * width, vals, width, label=v)
    ax.set_xticks(np.arange(len(groups)) + width * (len(variants) - 1) / 2, groups)
    ax.set_ylabel("images/s, batch 1 (2-core CPU)")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path, dpi=90)


if __name__ == "__main__":
    sys.exit(main())
