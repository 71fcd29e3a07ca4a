"""Model soups against the seed-to-seed spread: runs from one initialisation, their weights averaged.

    .venv/bin/python benchmarks/bench_soup.py [--inits 0 1 2] [--offsets 0 10 20] [--sizes 3] [--out bench_out/gp_soup]

For each initialisation k (`cluster.seed=k`: the images' locations sampled, branch PCA and k-means of the
recipe's seed k), the Gardens Point recipe is trained once per offset o with training seed k + o (only
the tuple order differs; offset 0 is the recipe's own seed k), and the first n members' weights are averaged into
one model for each n of --sizes (`averaging.uniform_soup`; default: all members), so soups of 3 and of 5
members are compared over the same runs. Every member and every soup is evaluated on the held-out frames
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

from densernet_core.plots import pyplot, save_figure  # noqa: E402
from benchmarks.bench_gardens_point import PROTOCOLS, checkpoint_describer, evaluate  # noqa: E402
from benchmarks.report import fmt_spread, save_report, spread  # noqa: E402
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


def stats(rows: list[dict[str, float]]) -> dict[str, dict]:
    return {n: spread([r[n] for r in rows]) for n in NAMES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "training/configs/gardens_point_small.yaml"))
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/gardens_point"))
    parser.add_argument("--inits", type=int, nargs="+", default=[0, 1, 2], help="initialisation seeds")
    parser.add_argument("--offsets", type=int, nargs="+", default=[0, 10, 20],
                        help="training seed = init + offset, one member each")
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="soup sizes n: the first n members of each initialisation (default: all of them)")
    parser.add_argument("--out", default="bench_out/gp_soup")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if len(set(args.offsets)) != len(args.offsets) or any(o < 0 for o in args.offsets):
        parser.error("--offsets must be distinct and >= 0")
    sizes = sorted(set(args.sizes or [len(args.offsets)]))
    if sizes[0] < 2 or sizes[-1] > len(args.offsets):
        parser.error(f"--sizes must lie in 2..{len(args.offsets)} (the number of --offsets)")
    setup_logging()
    data, out = Path(args.data), Path(args.out)
    if not all((data / t).is_dir() for t in ("day_left", "day_right", "night_right")):
        print(f"Gardens Point not found at {data} (see ../shared/data/README.md); nothing to benchmark")
        return 2
    out.mkdir(parents=True, exist_ok=True)
    store = out / "evaluations.json"
    inits, members_all = [], []
    soups: dict[int, list[dict[str, float]]] = {n: [] for n in sizes}
    for k in args.inits:
        members = []
        for o in args.offsets:
            cfg = load_train_config(args.config, [f"cluster.seed={k}", f"seed={k + o}"])
            path = Trainer(cfg, out / "runs" / f"init{k}_order{k + o}", out / "cache").train()
            members.append((k + o, path, held_out_r1(path, data, args.device, store)))
        soup_r1 = {}
        for n in sizes:
            # Named by its members' seeds, so a rerun with other --offsets never reuses a soup of other runs.
            soup_path = out / "runs" / f"soup_init{k}_seeds{'-'.join(str(s) for s, _, _ in members[:n])}.safetensors"
            if not soup_path.is_file():
                soup = uniform_soup([load_model(p, "cpu") for _, p, _ in members[:n]])
                save_checkpoint(soup, soup_path, {"stage": "soup",
                                                  "members": ",".join(str(p) for _, p, _ in members[:n])})
            soup_r1[n] = held_out_r1(soup_path, data, args.device, store)
        inits.append({"init": k, "members": [{"seed": s, "r1": r} for s, _, r in members],
                      "soups": {str(n): r for n, r in soup_r1.items()}})
        members_all += [r for _, _, r in members]
        for n in sizes:
            soups[n].append(soup_r1[n])
    results = {"protocols": NAMES, "offsets": args.offsets, "sizes": sizes, "inits": inits,
               "members": stats(members_all), "soups": {str(n): stats(soups[n]) for n in sizes}}
    lines = ["R@1 on Gardens Point frames 100-199 (trained on 0-99), correct when |i-j| <= 2. "
             f"Soups of the first {' / '.join(map(str, sizes))} members.", "",
             "| initialisation | training seeds | " + " | ".join(f"{n}: members / soups" for n in NAMES) + " |",
             "|---|---|" + "---|" * len(NAMES)]
    for row in inits:
        cells = [" ".join(f"{m['r1'][n]:.2f}" for m in row["members"]) + " / **"
                 + " ".join(f"{row['soups'][str(k)][n]:.2f}" for k in sizes) + "**" for n in NAMES]
        lines.append(f"| {row['init']} | {', '.join(str(m['seed']) for m in row['members'])} | " + " | ".join(cells) + " |")
    summary = [("every member", results["members"], len(members_all))]
    summary += [(f"soups of {k}", results["soups"][str(k)], len(soups[k])) for k in sizes]
    for label, s, count in summary:
        lines.append(f"| {label}: mean ± sd over {count} | | " + " | ".join(fmt_spread(s[n], digits=3) for n in NAMES)
                     + " |")
    plot(results, out / "soup.png")
    save_report(out, results, "\n".join(lines), out / "soup.png")
    return 0


def plot(results: dict, png: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(8, 5))
    x = np.arange(len(NAMES))
    bars = [("single runs", results["members"])]
    bars += [(f"soups of {k} (one per initialisation)", results["soups"][str(k)]) for k in results["sizes"]]
    width = 0.8 / len(bars)
    for i, (label, s) in enumerate(bars):
        ax.bar(x + (i - (len(bars) - 1) / 2) * width, [s[n]["mean"] for n in NAMES], width,
               yerr=[s[n]["sd"] or 0.0 for n in NAMES],
               capsize=3, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(NAMES)
    ax.set_ylabel("Recall@1, mean ± sd")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("Gardens Point 100-199: runs from one initialisation, weights averaged")
    save_figure(fig, png, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
