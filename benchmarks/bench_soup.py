"""Model soups against the seed-to-seed spread: runs from one initialisation, their weights averaged.

    .venv/bin/python benchmarks/bench_soup.py [--inits 0 1 2] [--offsets 0 10 20] [--out bench_out/gp_soup]

For each initialisation k (`cluster.seed=k`: the images' locations sampled, branch PCA and k-means of the
recipe's seed k), the Gardens Point recipe is trained once per offset o with training seed k + o (only
the tuple order differs; offset 0 is the recipe's own seed k), and the members' weights are averaged into
one model (`averaging.uniform_soup`). Every member and every soup is evaluated on the held-out frames
100-199 as `bench_gardens_point.py` evaluates (its protocols and tolerance). Reported: each member, each
soup, and over all members and over the soups the mean +- sd (n-1). Training is resumable (each run
folder), and evaluations are kept by checkpoint hash in <out>/evaluations.json, so a rerun repeats
nothing. Writes <out>/results.json, table.md and soup.png.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_gardens_point import PROTOCOLS, checkpoint_describer, evaluate  # noqa: E402
from benchmarks.report import save_report  # noqa: E402
from densernet_core.cli import setup_logging  # noqa: E402
from densernet_core.model.checkpoint import checkpoint_hash, load_model, save_checkpoint  # noqa: E402
from densernet_core.training.averaging import uniform_soup  # noqa: E402
from densernet_core.training.train_config import load_train_config  # noqa: E402
from densernet_core.training.trainer import Trainer  # noqa: E402

NAMES = [f"{q}->{db}" for q, db in PROTOCOLS]


def held_out_r1(path: Path, data: Path, device: str, store: Path) -> dict[str, float]:
    """R@1 per protocol on frames 100-199, evaluated once per checkpoint (kept by hash in `store`)."""
    done = json.loads(store.read_text()) if store.is_file() else {}
    key = checkpoint_hash(path)
    if key not in done:
        res = evaluate(path.parent.name if path.name == "model.safetensors" else path.stem,
                       checkpoint_describer(path, device), data, splits=("held_out",))
        done[key] = {r.name: r.recalls[1] for r in res["held_out"]}
        store.write_text(json.dumps(done, indent=2))
    return done[key]


def stats(rows: list[dict[str, float]]) -> dict[str, list[float]]:
    return {n: [float(np.mean([r[n] for r in rows])), float(np.std([r[n] for r in rows], ddof=1)) if len(rows) > 1
                else 0.0] for n in NAMES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "training/configs/gardens_point_small.yaml"))
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/gardens_point"))
    parser.add_argument("--inits", type=int, nargs="+", default=[0, 1, 2], help="initialisation seeds")
    parser.add_argument("--offsets", type=int, nargs="+", default=[0, 10, 20],
                        help="training seed = init + offset, one member each")
    parser.add_argument("--out", default="bench_out/gp_soup")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if len(set(args.offsets)) != len(args.offsets) or any(o < 0 for o in args.offsets):
        parser.error("--offsets must be distinct and >= 0")
    setup_logging()
    data, out = Path(args.data), Path(args.out)
    if not all((data / t).is_dir() for t in ("day_left", "day_right", "night_right")):
        print(f"Gardens Point not found at {data} (see ../shared/data/README.md); nothing to benchmark")
        return 2
    out.mkdir(parents=True, exist_ok=True)
    store = out / "evaluations.json"
    inits, members_all, soups = [], [], []
    for k in args.inits:
        members = []
        for o in args.offsets:
            cfg = load_train_config(args.config, [f"cluster.seed={k}", f"seed={k + o}"])
            path = Trainer(cfg, out / "runs" / f"init{k}_order{k + o}", out / "cache").train()
            members.append((k + o, path, held_out_r1(path, data, args.device, store)))
        soup_path = out / "runs" / f"soup_init{k}.safetensors"
        if not soup_path.is_file():
            soup = uniform_soup([load_model(p, "cpu") for _, p, _ in members])
            save_checkpoint(soup, soup_path, {"stage": "soup", "members": ",".join(str(p) for _, p, _ in members)})
        soup_r1 = held_out_r1(soup_path, data, args.device, store)
        inits.append({"init": k, "members": [{"seed": s, "r1": r} for s, _, r in members], "soup": soup_r1})
        members_all += [r for _, _, r in members]
        soups.append(soup_r1)
    results = {"protocols": NAMES, "offsets": args.offsets, "inits": inits,
               "members": stats(members_all), "soups": stats(soups)}
    lines = ["R@1 on Gardens Point frames 100-199 (trained on 0-99), correct when |i-j| <= 2.", "",
             "| initialisation | training seeds | " + " | ".join(f"{n}: members / soup" for n in NAMES) + " |",
             "|---|---|" + "---|" * len(NAMES)]
    for row in inits:
        cells = [" ".join(f"{m['r1'][n]:.2f}" for m in row["members"]) + f" / **{row['soup'][n]:.2f}**" for n in NAMES]
        lines.append(f"| {row['init']} | {', '.join(str(m['seed']) for m in row['members'])} | " + " | ".join(cells) + " |")
    for label, s, count in (("every member", results["members"], len(members_all)),
                            ("the soups", results["soups"], len(soups))):
        lines.append(f"| {label}: mean ± sd over {count} | | " + " | ".join(f"{s[n][0]:.3f} ± {s[n][1]:.3f}" for n in NAMES)
                     + " |")
    plot(results, out / "soup.png")
    save_report(out, results, "\n".join(lines), out / "soup.png")
    return 0


def plot(results: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    x = np.arange(len(NAMES))
    for i, (label, key) in enumerate((("single runs", "members"), ("soups (one per initialisation)", "soups"))):
        s = results[key]
        ax.bar(x + (i - 0.5) * 0.35, [s[n][0] for n in NAMES], 0.35, yerr=[s[n][1] for n in NAMES], capsize=3,
               label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(NAMES)
    ax.set_ylabel("Recall@1, mean ± sd")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("Gardens Point 100-199: runs from one initialisation, weights averaged")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
