"""Which final descriptor stage keeps what the VLAD knows? Options side by side on Gardens Point.

    .venv/bin/python benchmarks/bench_final_stage.py --checkpoint off_the_shelf=C1 --checkpoint trained=C2

For each checkpoint (made or trained on frames 0-99 of the three traversals; make bench-train writes
bench_out/gardens_point/runs/small/{off_the_shelf,model}.safetensors), the raw VLAD of all 600
images is computed once; every option is then fitted on the 300 VLADs of frames 0-99 (the only
images a user of this size has: the training set) and evaluated, R@1 (correct within 2 frames), on
  held:  queries and database frames 100-199 (held out from everything),
  fit:   queries and database frames 0-99 (the images every fitted part saw),
  fit+:  queries 0-99 against all 200 database frames.
Options: none (the raw VLAD); PCA whitening to 32-256 D; PCA projection without whitening;
square-root whitening; shrinkage whitening; PCA whitening fitted on all 600 images (the map's own
images included); random orthogonal projections (fitted on nothing). Writes <out>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from densernet_core.cli import setup_logging  # noqa: E402
from densernet_core.model.checkpoint import load_model  # noqa: E402
from densernet_core.training.recall import search  # noqa: E402

TRAVERSES = ("day_left", "day_right", "night_right")
PROTOCOLS = (("day_right", "day_left"), ("night_right", "day_right"), ("night_right", "day_left"))
SCENARIOS = {"held": (range(100, 200), range(100, 200)), "fit": (range(0, 100), range(0, 100)),
             "fit+": (range(0, 100), range(0, 200))}
TOLERANCE = 2
EIG_FLOOR = 1e-9
Reduce = Callable[[np.ndarray], np.ndarray]


def describe_all(ckpt: Path, gp: Path, cache: Path) -> dict[str, np.ndarray]:
    """Raw VLADs (the checkpoint's own PCA, if any, left out) of all 200 frames of each traversal."""
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as f:
            return {t: f[t] for t in TRAVERSES}
    model = load_model(ckpt)
    model.pca = None
    out = {t: model.describe([gp / t / f"Image{i:03d}.jpg" for i in range(200)], progress=True) for t in TRAVERSES}
    np.savez(cache, **out)
    return out


def recall1(db: np.ndarray, q: np.ndarray, q_frames: range, db_frames: range) -> float:
    _, ids = search(db, q, 1)
    return float(np.mean(np.abs(np.asarray(db_frames)[ids[:, 0]] - np.asarray(q_frames)) <= TOLERANCE))


def evaluate(desc: dict[str, np.ndarray], reduce: Reduce) -> dict[str, list[float]]:
    r = {t: reduce(desc[t]) for t in TRAVERSES}
    return {name: [recall1(r[d][list(dbf)], r[q][list(qf)], qf, dbf) for q, d in PROTOCOLS]
            for name, (qf, dbf) in SCENARIOS.items()}


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def pca(fit: np.ndarray, dim: int, mode: str = "whiten", shrink: float = 0.0) -> Reduce:
    """Top-`dim` principal axes of `fit` (Gram route: fewer samples than dimensions)."""
    x = fit.astype(np.float64)
    mean = x.mean(0)
    xc = x - mean
    eigval, v = np.linalg.eigh(xc @ xc.T / (len(x) - 1))
    order = np.argsort(eigval)[::-1]
    eigval, v = eigval[order], v[:, order]
    keep = eigval > eigval[0] * EIG_FLOOR
    eigval, v = eigval[keep], v[:, keep]
    axes = xc.T @ v / np.sqrt(eigval * (len(x) - 1))
    k = min(dim, len(eigval))
    scale = {"whiten": 1 / np.sqrt(eigval[:k] + shrink * eigval[:k].mean()), "sqrt": eigval[:k] ** -0.25,
             "project": np.ones(k)}[mode]
    w = axes[:, :k] * scale
    return lambda y: unit((y - mean) @ w)


def random_projection(dim_in: int, dim: int, seed: int = 0) -> Reduce:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim_in, dim)))
    return lambda y: unit(y @ q)


def options(desc: dict[str, np.ndarray]) -> dict[str, Reduce]:
    fit = np.concatenate([desc[t][:100] for t in TRAVERSES])  # the 300 images of frames 0-99
    every = np.concatenate([desc[t] for t in TRAVERSES])
    out: dict[str, Reduce] = {"none (raw VLAD)": lambda y: y}
    for d in (32, 64, 128, 256):
        out[f"PCA whitening {d}-D (300 images)"] = pca(fit, d)
    out["PCA projection 256-D, no whitening (300)"] = pca(fit, 256, "project")
    out["square-root whitening 256-D (300)"] = pca(fit, 256, "sqrt")
    out["shrinkage whitening 256-D, +1 mean eigenvalue (300)"] = pca(fit, 256, shrink=1.0)
    for d in (32, 64, 256):
        out[f"PCA whitening {d}-D (all 600 images)"] = pca(every, d)
    for d in (4096, 2048, 1024):
        out[f"random orthogonal projection {d}-D (fitted on nothing)"] = random_projection(fit.shape[1], d)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH", required=True)
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/gardens_point"))
    parser.add_argument("--out", default="bench_out/final_stage")
    args = parser.parse_args(argv)
    setup_logging()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results, lines = {}, []
    names = [f"{q}->{d}" for q, d in PROTOCOLS]
    for item in args.checkpoint:
        name, path = item.split("=", 1)
        desc = describe_all(Path(path), Path(args.data), Path(f"{out}_{name}_vlad.npz"))
        lines += [f"### {name} ({path})", "", "R@1 " + ", ".join(names) + " (correct within 2 frames)", "",
                  "| final stage | held out (100-199) | fit set (0-99) | fit queries vs all 200 |", "|---|---|---|---|"]
        results[name] = {}
        for label, reduce in options(desc).items():
            r = evaluate(desc, reduce)
            results[name][label] = r
            lines.append(f"| {label} | " + " | ".join(" / ".join(f"{v:.2f}" for v in r[s]) for s in SCENARIOS) + " |")
            print(lines[-1], flush=True)
        lines.append("")
    Path(f"{out}.json").write_text(json.dumps(results, indent=2))
    Path(f"{out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
