"""How far training moved each tensor from its initialisation (issue 22, *Recipe trials*).

    .venv/bin/python benchmarks/bench_weight_change.py bench_out/gp_recipe_seed0/runs/small \
        bench_out/gp_trial_relative_wd0/runs/small --out bench_out/weight_change

Adam steps every weight by about the rate whatever the tensor's size, and the head's tensors differ in size by
four orders of magnitude (PCA branches over Caffe-scale maps, NetVLAD's assignment weights), so one rate
rewrites some tensors and leaves others where k-means and PCA put them. For each run folder (a training
run's `init.safetensors` and `model.safetensors`) and each tensor of the head, plus any trunk tensor that
changed: the RMS at the start, the RMS of the change, the change relative to the starting norm
(||w - w0|| / ||w0||) and the ratio of the norms. Writes <out>/results.json, table.md, machine.json and
weight_change.png.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from densernet_core.plots import pyplot, save_figure  # noqa: E402
from benchmarks.report import save_report  # noqa: E402

START, TRAINED = "init.safetensors", "model.safetensors"


def weight_change(run: Path) -> dict[str, dict[str, float]]:
    """Per tensor: rms at the start, rms of the change, relative change, norm ratio."""
    files = [run / START, run / TRAINED]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{run}: not a finished training run folder, missing {', '.join(missing)}")
    start, trained = (load_file(str(f)) for f in files)
    rows = {}
    for name, w0 in start.items():
        w = trained.get(name)
        if w is None or not w0.is_floating_point() or w.shape != w0.shape:
            continue
        if name.startswith("trunk.") and torch.equal(w, w0):
            continue
        w0, w = w0.double(), w.double()
        norm0 = float(w0.norm())
        rows[name] = {"rms_start": float(w0.pow(2).mean().sqrt()), "rms_change": float((w - w0).pow(2).mean().sqrt()),
                      "relative_change": float((w - w0).norm()) / norm0 if norm0 > 0 else float("nan"),
                      "norm_ratio": float(w.norm()) / norm0 if norm0 > 0 else float("nan")}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="training run folders (init.safetensors, model.safetensors)")
    parser.add_argument("--out", type=Path, default=Path("bench_out/weight_change"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {str(run): weight_change(run) for run in args.runs}
    names = list(dict.fromkeys(n for rows in results.values() for n in rows))
    runs = list(results)
    lines = ["| tensor | RMS at the start | " + " | ".join(f"`{r}`: change / start norm (norm ratio)" for r in runs) + " |",
             "|---|---|" + "---|" * len(runs)]
    for n in names:
        first = next(results[r][n] for r in runs if n in results[r])
        cells = [f"{results[r][n]['relative_change']:.3f} ({results[r][n]['norm_ratio']:.3f})" if n in results[r] else "-"
                 for r in runs]
        lines.append(f"| {n} | {first['rms_start']:.2e} | " + " | ".join(cells) + " |")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names)) + 4, 4))
    width = 0.8 / len(runs)
    for i, r in enumerate(runs):
        ax.bar(np.arange(len(names)) + i * width, [results[r].get(n, {}).get("relative_change", np.nan) for n in names],
               width, label=r)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("||w - w0|| / ||w0||")
    ax.set_title("How far training moved each tensor")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    plot = save_figure(fig, args.out / "weight_change.png")
    save_report(args.out, results, "\n".join(lines), plot)


if __name__ == "__main__":
    main()
