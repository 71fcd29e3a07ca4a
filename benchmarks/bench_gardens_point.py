"""The headline benchmark: weakly supervised DenserNet vs baselines on Gardens Point Walking.

    .venv/bin/python benchmarks/bench_gardens_point.py            # or: make bench-train

Train on frames 0-99 of all three traversals (recipe: training/configs/gardens_point_small.yaml,
the preset swapped per row), evaluate on frames 100-199 for day_right->day_left,
night_right->day_right and night_right->day_left; a retrieval is correct when |i - j| <= 2.
Every row is also evaluated on frames 0-99, the places the model was fitted on (k-means, branch
init, training): a model must find those at least as well. One extra row keeps the old final stage
(a 256-D PCA whitening fitted on the 300 training images) for comparison.
Every row runs in this process at the same resolution. Writes <out>/results.json, table.md,
recall.png and each training run's folder (resumable: rerunning skips finished work).

`--seeds N` trains every preset with N seeds (the config's seed, +1, ...: k-means, branch init, tuple
mining and batch order all follow it) and adds a row of mean +- sd (sample sd, n-1) per preset: a
recipe change has to move the mean by more than that sd to count. Off-the-shelf rows run once (seed 0).

    .venv/bin/python benchmarks/bench_gardens_point.py --presets small --seeds 5

A recipe trial changes keys of the recipe on the command line, e.g. (docs/TRAINING.md, *Recipe trials*):

    .venv/bin/python benchmarks/bench_gardens_point.py --presets small --seeds 5 --set optim.average_from=2 \
        --out bench_out/gp_trial_average
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from densernet_core.plots import pyplot, save_figure  # noqa: E402
from densernet_core.training.baselines import gem_conv5, raw_pixels  # noqa: E402
from densernet_core.model.checkpoint import checkpoint_hash, load_model  # noqa: E402
from densernet_core.cli import setup_logging  # noqa: E402
from densernet_core.config import PRESETS  # noqa: E402
from densernet_core.datasets import load_traverse  # noqa: E402
from densernet_core.training.evaluation import EvalResult, evaluate_descriptors  # noqa: E402
from densernet_core.training.train_config import load_train_config  # noqa: E402
from densernet_core.training.trainer import Trainer  # noqa: E402
from benchmarks.report import machine, machine_line, spread  # noqa: E402

LOG = logging.getLogger("densernet")
PROTOCOLS = (("day_right", "day_left"), ("night_right", "day_right"), ("night_right", "day_left"))
EVAL_FRAMES = (100, 200)
FIT_FRAMES = (0, 100)
OLD_PCA_DIM = 256  # the final stage before the fix (fitted on the 300 training images)
TOLERANCE = 2.0  # frames
RAW_SIZE = (32, 64)  # SeqSLAM-sized thumbnail, 16:9-ish


def evaluate(name: str, describe, data_dir: Path, keep: dict | None = None,
             splits: tuple[str, ...] = ("held_out", "fit_set")) -> dict[str, list[EvalResult]]:
    """Held-out frames (100-199) and the frames the models were fitted on (0-99), every protocol.
    `describe` maps images to descriptors, or is a dict {split: {traverse: descriptors}} already made;
    `keep`, when given, receives the descriptors (the seed ensemble reuses them)."""
    traverses = sorted({t for p in PROTOCOLS for t in p})
    out = {}
    for split, frames in (("held_out", range(*EVAL_FRAMES)), ("fit_set", range(*FIT_FRAMES))):
        if split not in splits:
            continue
        sets = {t: load_traverse(data_dir / t, frames) for t in traverses}
        desc = {t: describe[split][t] if isinstance(describe, dict) else describe(s.images) for t, s in sets.items()}
        if keep is not None:
            keep[split] = desc
        out[split] = []
        for q, db in PROTOCOLS:
            r = evaluate_descriptors(f"{q}->{db}", desc[db], desc[q], sets[db].positions, sets[q].positions, TOLERANCE)
            LOG.info("%-28s %-9s %-24s R@1 %.3f  R@5 %.3f", name, split, r.name, r.recalls[1], r.recalls[5])
            out[split].append(r)
    return out


def checkpoint_describer(path: Path, device: str):
    model = load_model(path, device)
    return lambda images: model.describe(images, batch_size=8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "training/configs/gardens_point_small.yaml"))
    parser.add_argument("--presets", nargs="+", default=["conv5", "small", "middle"])
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/gardens_point"))
    parser.add_argument("--out", default="bench_out/gardens_point")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seeds", type=int, default=1, help="train each preset with this many seeds")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key (dotted, YAML value), e.g. optim.average_from=2: a recipe trial")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    setup_logging()
    data_dir, out = Path(args.data), Path(args.out)
    if not all((data_dir / t).is_dir() for t in ("day_left", "day_right", "night_right")):
        print(f"Gardens Point not found at {data_dir} (see ../shared/data/README.md); nothing to benchmark")
        return 2
    base = load_train_config(args.config, args.set)
    size = base.model.image_size
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    host = machine()  # trained checkpoints differ between CPUs (issue 22): every results file names its own

    def save() -> None:
        (out / "results.json").write_text(json.dumps({"image_size": list(size), "tolerance_frames": TOLERANCE,
                                                      "eval_frames": list(EVAL_FRAMES), "machine": host,
                                                      "rows": rows}, indent=2))

    def record(method: str, results: dict[str, list[EvalResult]], seconds: float | None, note: str = "",
               seed: int | None = None, checkpoint: Path | None = None) -> None:
        """`seconds` None: not timed (the ensemble reuses its seeds' descriptors), printed as a dash."""
        rows.append({"method": method, "note": note, "seed": seed,
                     "seconds": None if seconds is None else round(seconds, 1),
                     "checkpoint_sha256": checkpoint_hash(checkpoint) if checkpoint else None,
                     "protocols": {r.name: {str(k): v for k, v in r.recalls.items()} for r in results["held_out"]},
                     "fit_set": {r.name: {str(k): v for k, v in r.recalls.items()} for r in results["fit_set"]}})
        save()

    t0 = time.time()
    record("raw pixels (patch-normalised grey)", evaluate("raw", lambda ims: raw_pixels(ims, RAW_SIZE), data_dir),
           time.time() - t0, f"{RAW_SIZE[0]}x{RAW_SIZE[1]}")
    t0 = time.time()
    record("VGG16 conv5 + GeM (ImageNet, off the shelf)",
           evaluate("gem", lambda ims: gem_conv5(ims, size, base.model.weights, args.device), data_dir), time.time() - t0)
    for preset in args.presets:
        cfg = dataclasses.replace(base, model=base.model.replace(preset=preset, branch_dims=PRESETS[preset]))
        trainer = Trainer(cfg, out / "runs" / preset, out / "cache")
        if preset != "conv5":
            t0 = time.time()
            off = trainer.whiten(trainer.cluster(), out / "runs" / preset / "off_the_shelf.safetensors")
            record(f"DenserNet {preset}, off the shelf (PCA-initialised branches, k-means NetVLAD, no training)",
                   evaluate(f"{preset} off-the-shelf", checkpoint_describer(off, args.device), data_dir), time.time() - t0)
        label = "NetVLAD on conv5 only (pool5 branch), trained" if preset == "conv5" else f"DenserNet {preset}, trained"
        trained_rows, checkpoints, seed_desc = [], [], []
        for k in range(args.seeds):  # seed k > 0 trains in runs/<preset>_seed<seed>, sharing the tap cache
            seeded = dataclasses.replace(cfg, seed=cfg.seed + k)
            run = trainer if k == 0 else Trainer(seeded, out / "runs" / f"{preset}_seed{seeded.seed}",
                                                 out / "cache")
            t0 = time.time()
            checkpoints.append(run.train())
            train_s = time.time() - t0
            describe = checkpoint_describer(checkpoints[-1], args.device)
            seed_desc.append({})
            results = evaluate(f"{preset} trained seed {seeded.seed}", describe, data_dir, seed_desc[-1])
            record(label + (f", seed {seeded.seed}" if args.seeds > 1 else ""), results, train_s,
                   f"{cfg.optim.epochs} epochs, {cfg.optim.loss}", seed=seeded.seed, checkpoint=checkpoints[-1])
            trained_rows.append(rows[-1])
        if args.seeds > 1:
            rows.append(seed_summary(f"{label}: mean ± sd over {args.seeds} seeds", trained_rows))
            record(f"{label}: the {args.seeds} seeds as one ensemble (descriptors concatenated)",
                   evaluate(f"{preset} ensemble", ensemble(seed_desc), data_dir), None,
                   f"{args.seeds} models per frame: the most a distilled single model could reach")
        trained = checkpoints[0]  # the old-stage row is built on the recipe's own seed
        if preset == "small":
            t0 = time.time()
            old = old_final_stage(trainer, trained, out / "runs" / preset / "with_old_pca.safetensors")
            record(f"DenserNet small, trained + {OLD_PCA_DIM}-D PCA whitening (the old final stage)",
                   evaluate("small trained+PCA", checkpoint_describer(old, args.device), data_dir), time.time() - t0,
                   "fitted on the 300 training images: below the 10-per-dimension rule")
    save()
    table = machine_line(host) + "\n\n" + format_rows(rows, size) + "\n\n" + checkpoint_lines(rows)
    (out / "table.md").write_text(table + "\n")
    plot_rows(rows, out / "recall.png")
    print(table)
    print(f"wrote {out / 'results.json'}, {out / 'table.md'}, {out / 'recall.png'}")
    return 0


def checkpoint_lines(rows: list[dict]) -> str:
    """Each trained checkpoint's sha256: equal on two machines means the training repeated byte for byte."""
    return "\n".join(f"- {r['method']}: checkpoint sha256 `{r['checkpoint_sha256']}`"
                     for r in rows if r.get("checkpoint_sha256"))


def ensemble(per_seed: list[dict]) -> dict:
    """Each seed's unit descriptors concatenated and scaled by 1/sqrt(n): unit norm again, and its inner
    product the seeds' mean cosine similarity."""
    import numpy as np

    scale = 1.0 / np.sqrt(len(per_seed))
    return {split: {t: np.concatenate([d[split][t] for d in per_seed], axis=1) * scale for t in per_seed[0][split]}
            for split in per_seed[0]}


def old_final_stage(trainer: Trainer, source: Path, out: Path) -> Path:
    """The trained model with the final stage this benchmark used before: a PCA whitening fitted on
    the training images' VLADs (bypassing the rule that now refuses it), for the side-by-side row."""
    from densernet_core.model.checkpoint import save_checkpoint
    from densernet_core.model.pca import fit_pca_whitening
    from densernet_core.training.trainer import TrainingHead

    if out.is_file():
        return out
    model = load_model(source, str(trainer.device))
    trainer._caches(model)
    vlads = trainer.describe_rows(TrainingHead(model), trainer.data.train_rows)
    model.pca = fit_pca_whitening(vlads, OLD_PCA_DIM).to(trainer.device)
    return save_checkpoint(model, out, {"stage": "old-final-stage"})


def seed_summary(method: str, rows: list[dict]) -> dict:
    """Mean and sample sd (n-1) of every recall over the seeds' rows."""
    import numpy as np

    def stats(key: str) -> tuple[dict, dict]:
        mean, sd = {}, {}
        for name in rows[0][key]:
            mean[name], sd[name] = {}, {}
            for k in rows[0][key][name]:
                s = spread([r[key][name][k] for r in rows])
                mean[name][k], sd[name][k] = s["mean"], s["sd"]
        return mean, sd

    held, held_sd = stats("protocols")
    fit, fit_sd = stats("fit_set")
    return {"method": method, "note": f"seeds {[r['seed'] for r in rows]}", "seeds": len(rows),
            "seconds": round(float(np.mean([r["seconds"] for r in rows])), 1), "seed": None,
            "protocols": held, "protocols_sd": held_sd, "fit_set": fit, "fit_set_sd": fit_sd}


def format_rows(rows: list[dict], size: tuple[int, int]) -> str:
    names = [f"{q}->{db}" for q, db in PROTOCOLS]
    head = ("| method | " + " | ".join(f"{n} R@1 / R@5" for n in names)
            + " | fit set (0-99) R@1: " + " / ".join(n.replace("_right", "R").replace("_left", "L") for n in names)
            + " | seconds |")
    lines = [f"Input {size[0]}x{size[1]}, held-out frames {EVAL_FRAMES[0]}-{EVAL_FRAMES[1] - 1} (fit set: frames "
             f"{FIT_FRAMES[0]}-{FIT_FRAMES[1] - 1}), correct when |i-j| <= 2.", "",
             head, "|---|" + "---|" * len(names) + "---|---|"]
    for r in rows:
        if "protocols_sd" in r:  # a seed summary: mean ± sd
            sd, fsd = r["protocols_sd"], r["fit_set_sd"]
            cells = [f"**{r['protocols'][n]['1']:.3f} ± {sd[n]['1']:.3f}** / {r['protocols'][n]['5']:.3f} ± "
                     f"{sd[n]['5']:.3f}" for n in names]
            fit = " / ".join(f"{r['fit_set'][n]['1']:.2f} ± {fsd[n]['1']:.2f}" for n in names)
            lines.append(f"| {r['method']} | " + " | ".join(cells) + f" | {fit} | {r['seconds']} (mean) |")
            continue
        cells = [f"{r['protocols'][n]['1']:.3f} / {r['protocols'][n]['5']:.3f}" for n in names]
        fit = " / ".join(f"{r['fit_set'][n]['1']:.2f}" for n in names)
        secs = "—" if r["seconds"] is None else r["seconds"]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + f" | {fit} | {secs} |")
    return "\n".join(lines)


def plot_rows(rows: list[dict], png: Path) -> None:
    plt = pyplot()
    import numpy as np

    names = [f"{q}->{db}" for q, db in PROTOCOLS]
    fig, ax = plt.subplots(figsize=(9, 6))
    if any("protocols_sd" in r for r in rows):  # one bar per method: the seeds' mean, not each seed
        rows = [r for r in rows if r.get("seed") is None]
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        sd = [r["protocols_sd"][n]["1"] for n in names] if "protocols_sd" in r else None
        ax.bar(np.arange(len(names)) + i * width, [r["protocols"][n]["1"] for n in names], width, yerr=sd,
               capsize=2, label=r["method"][:60])
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
    ax.set_xticklabels(names)
    ax.set_ylabel("Recall@1")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)  # below: bars reach 1.0
    ax.set_title("Gardens Point, frames 100-199 (trained on 0-99)")
    save_figure(fig, png, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
