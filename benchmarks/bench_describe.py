"""describe() latency per preset and resolution next to the bare VGG16 trunk, same process, same input.

    .venv/bin/python benchmarks/bench_describe.py [--repeats 5] [--device cpu] [--pca-dim 0]

Each configuration runs in its own subprocess so peak RSS is its own. The ratio describe/trunk
is the figure that matters: what DenserNet adds on top of the unavoidable VGG16 pass. By default
the network is timed as it ships (pca_dim 0: the raw VLAD is the descriptor); `--pca-dim 4096`
times the former final stage (a PCA whitening layer of that size, random values: only its shape costs).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRESETS = ("small", "middle", "large")
SIZES = ((240, 320), (480, 640))


def measure(preset: str, h: int, w: int, repeats: int, device: str, weights: str = "caffe-vgg16",
            pca_dim: int = 0) -> dict:
    import numpy as np
    import torch

    from densernet_core.images import prepare_batch
    from densernet_core.model.network import build
    from densernet_core.model.pca import PCAWhitening

    model = build(preset, weights=weights, device=device, image_size=(h, w), pca_dim=pca_dim)
    if pca_dim:
        model.pca = PCAWhitening(model.config.vlad_dim, pca_dim).to(model.device)  # timing only: shape matters
    image = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    x = prepare_batch([image], (h, w), model.config.preprocessing).to(model.device)

    def sync():
        if model.device.type == "cuda":
            torch.cuda.synchronize()

    def trunk():
        with torch.inference_mode(), torch.autocast("cuda", torch.float16, enabled=model.device.type == "cuda"):
            model.trunk(x)
        sync()

    def describe():
        model.describe([image])
        sync()

    timings = {}
    for name, fn in (("trunk", trunk), ("describe", describe)):
        fn()  # warm-up
        samples = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t)
        timings[name] = float(np.median(samples))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if model.device.type == "cuda" else 0.0
    return {"preset": preset, "size": f"{h}x{w}", "trunk_ms": 1000 * timings["trunk"],
            "describe_ms": 1000 * timings["describe"], "ratio": timings["describe"] / timings["trunk"],
            "peak_rss_mb": peak_mb, "gpu_peak_mb": gpu_peak, "dim": model.descriptor_dim}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--one", nargs=3, metavar=("PRESET", "H", "W"), help=argparse.SUPPRESS)
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--weights", default="caffe-vgg16", help="'none' times the same network without the weights file")
    p.add_argument("--pca-dim", type=int, default=0,
                   help="0 (default): the raw VLAD, as the recipes ship; > 0: time a PCA final stage of that size")
    args = p.parse_args()
    if args.pca_dim < 0:
        p.error(f"--pca-dim must be >= 0, got {args.pca_dim}")
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), int(args.one[2]), args.repeats, args.device, args.weights,
                                 args.pca_dim)))
        return 0
    import torch

    from benchmarks.report import machine_line

    gpu = f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""
    print(machine_line() + f" Device {args.device}{gpu}; final stage "
          + (f"PCA {args.pca_dim}-D." if args.pca_dim else "none (the raw VLAD)."))
    rows = []
    print("| preset | input | trunk ms | describe ms | describe/trunk | peak RSS MB | GPU peak MB | dim |")
    print("|---|---|---|---|---|---|---|---|")
    for h, w in SIZES:
        for preset in PRESETS:
            out = subprocess.run([sys.executable, __file__, "--one", preset, str(h), str(w), "--repeats",
                                  str(args.repeats), "--device", args.device, "--weights", args.weights,
                                  "--pca-dim", str(args.pca_dim)], capture_output=True, text=True)
            if out.returncode != 0:
                print(f"| {preset} | {h}x{w} | failed: {out.stderr.strip().splitlines()[-1]} |")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(f"| {r['preset']} | {r['size']} | {r['trunk_ms']:.0f} | {r['describe_ms']:.0f} | {r['ratio']:.2f} "
                  f"| {r['peak_rss_mb']:.0f} | {r['gpu_peak_mb']:.0f} | {r['dim']} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
