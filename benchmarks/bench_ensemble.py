"""Seed ensembles over the recipe's trained heads, and what they keep at one model's descriptor size (issue 22).

    .venv/bin/python benchmarks/bench_ensemble.py --checkpoints bench_out/gp_recipe_seed0/runs/small*/model.safetensors \
        [--sizes 1 3 5] [--out bench_out/ensemble]

The recipe freezes the ImageNet trunk up to pool5 and trains only the head (the three branches and NetVLAD),
so checkpoints of different seeds share the trunk: M of them describe a frame for one trunk pass and M heads.
This asks whether such an ensemble is a recipe robust to the seed: on the held-out Gardens Point frames
(100-199, the headline protocols), for each ensemble size M,
- the checkpoints in order cut into disjoint groups of M (independent ensembles: their mean +- sd is the
  figure comparable to the single seeds'), and every one of the C(N, M) groups (they share members, so
  their sd is not that of independent draws; reported beside);
- three descriptors per ensemble: the members' unit VLADs concatenated (M times a model's dimension; its
  inner product is the members' mean cosine); summed, each reordered and signed (`network.sum_heads`,
  what a checkpoint merged by `densernet ensemble` describes: one model's dimension, so a map stores what
  it stores today); and each member projected by its own random orthogonal matrix to D/M dimensions
  before the concatenation, D a single model's dimension (`--dim`, default the checkpoints').
With more than `--max-groups` (300) groups of a size, a seeded sample of that many is scored, the disjoint ones
among them. Descriptors are computed once per checkpoint and kept in <out>. Writes <out>/results.json, table.md,
machine.json and ensemble.png.
"""
from __future__ import annotations

import argparse
import itertools
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from densernet_core.cli import setup_logging  # noqa: E402
from densernet_core.datasets import load_traverse  # noqa: E402
from densernet_core.mapping.index import random_orthogonal  # noqa: E402
from densernet_core.model.checkpoint import checkpoint_hash, load_model  # noqa: E402
from densernet_core.model.network import head_sketch, sum_heads  # noqa: E402
from densernet_core.plots import pyplot, save_figure  # noqa: E402
from densernet_core.training.evaluation import evaluate_descriptors  # noqa: E402
from benchmarks.bench_gardens_point import EVAL_FRAMES, PROTOCOLS, TOLERANCE  # noqa: E402
from benchmarks.report import fmt_spread, save_report, spread  # noqa: E402

BATCH = 8  # images per forward pass
PROJECTION_SEED = 0  # member k's projection uses PROJECTION_SEED + k
GROUP_SAMPLE_SEED = 0  # which groups are scored when there are more than --max-groups


def descriptors(ckpt: Path, sets: dict, out: Path) -> dict[str, np.ndarray]:
    """Each traverse's unit descriptors by this checkpoint, kept in `out` under its sha256."""
    sha = checkpoint_hash(ckpt)[:12]
    files = {t: out / f"desc_{sha}_{t}.npy" for t in sets}
    if not all(f.is_file() for f in files.values()):
        model = load_model(ckpt)
        for t, s in sets.items():
            np.save(files[t], model.describe(s.images, batch_size=BATCH).astype(np.float32), allow_pickle=False)
    return {t: np.load(f, allow_pickle=False) for t, f in files.items()}


def projected(members: list[dict[str, np.ndarray]], dim: int) -> list[dict[str, np.ndarray]]:
    """Each member through its own random orthogonal matrix to `dim` (seeded by its index), made once
    per ensemble size: a member projects the same way in every group that holds it."""
    out = []
    for k, member in enumerate(members):
        q = random_orthogonal(member_dim(member), dim, PROJECTION_SEED + k)
        out.append({t: x @ q for t, x in member.items()})
    return out


def combine(members: list[dict[str, np.ndarray]], ids: tuple[int, ...]) -> dict[str, np.ndarray]:
    """The members' descriptors concatenated, unit length after (its inner product: the members' mean
    cosine when they are unit length)."""
    out = {}
    for t in members[0]:
        cat = np.concatenate([members[k][t] for k in ids], axis=1)
        out[t] = cat / np.linalg.norm(cat, axis=1, keepdims=True)
    return out


def summed(members: list[dict[str, np.ndarray]], ids: tuple[int, ...]) -> dict[str, np.ndarray]:
    """What the merged checkpoint of these members in this order describes (the group's k-th member is its
    head k)."""
    import torch

    perm, sign = head_sketch(len(ids), member_dim(members[0]))
    return {t: sum_heads([torch.from_numpy(members[k][t]) for k in ids], perm, sign).numpy() for t in members[0]}


def recalls(desc: dict[str, np.ndarray], sets: dict) -> list[float]:
    return [evaluate_descriptors(f"{q}->{db}", desc[db], desc[q], sets[db].positions, sets[q].positions,
                                 TOLERANCE).recalls[1] for q, db in PROTOCOLS]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", nargs="+", required=True, help="trained checkpoints of one recipe, one per seed")
    p.add_argument("--sizes", nargs="+", type=int, default=[1, 3, 5], help="ensemble sizes M")
    p.add_argument("--max-groups", type=int, default=300,
                   help="score at most this many of the C(N, M) groups (a seeded sample, the disjoint ones always)")
    p.add_argument("--dim", type=int, default=0, help="the projected ensemble's dimension (0: a checkpoint's)")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "gardens_point"))
    p.add_argument("--out", default="bench_out/ensemble")
    args = p.parse_args(argv)
    setup_logging()
    ckpts = [Path(c) for c in args.checkpoints]
    missing = [str(c) for c in ckpts if not c.is_file()]
    if missing:
        p.error(f"no such checkpoint: {', '.join(missing)}")
    if any(m < 1 or m > len(ckpts) for m in args.sizes):
        p.error(f"--sizes must lie in 1..{len(ckpts)} (the checkpoints given)")
    data = Path(args.data)
    traverses = sorted({t for pr in PROTOCOLS for t in pr})
    if not all((data / t).is_dir() for t in traverses):
        print(f"Gardens Point not found at {data} (see ../shared/data/README.md); nothing to benchmark")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sets = {t: load_traverse(data / t, range(*EVAL_FRAMES)) for t in traverses}
    members = [descriptors(c, sets, out) for c in ckpts]
    dims = {m[traverses[0]].shape[1] for m in members}
    if len(dims) != 1:
        p.error(f"the checkpoints' descriptors differ in size ({sorted(dims)}): not one recipe")
    dim = args.dim or dims.pop()
    names = [f"{q}->{db}" for q, db in PROTOCOLS]
    rows = []
    for m in args.sizes:
        disjoint = [tuple(range(s, s + m)) for s in range(0, len(ckpts) - m + 1, m)]
        every = sample_groups(list(itertools.combinations(range(len(ckpts)), m)), disjoint, args.max_groups)
        total = math.comb(len(ckpts), m)
        for kind in ("concatenated", "summed", "projected"):
            if m == 1 and kind != "concatenated":
                continue
            if kind == "summed":
                each = {ids: recalls(summed(members, ids), sets) for ids in every}
                width = member_dim(members[0])
            else:
                source = members if kind == "concatenated" else projected(members, dim // m)
                each = {ids: recalls(combine(source, ids), sets) for ids in every}
                width = m * member_dim(source[0])
            row = {"size": m, "descriptor": kind, "dim": width,
                   "disjoint_groups": [list(g) for g in disjoint],
                   "disjoint": [each[g] for g in disjoint], "all_groups": len(every), "possible_groups": total,
                   "all_mean": np.mean(list(each.values()), axis=0).tolist(),
                   "all_sd": np.std(list(each.values()), axis=0, ddof=1).tolist() if len(every) > 1 else [0.0] * 3}
            rows.append(row)
            print(f"M={m} {kind}: disjoint " + "; ".join(fmt_spread(spread([r[i] for r in row["disjoint"]]), digits=3)
                                                          for i in range(3)), flush=True)
    results = {"checkpoints": [str(c) for c in ckpts], "sha256": [checkpoint_hash(c)[:12] for c in ckpts],
               "protocols": names, "frames": list(EVAL_FRAMES), "rows": rows}
    lines = [f"{len(ckpts)} checkpoints; held-out Gardens Point frames {EVAL_FRAMES[0]}-{EVAL_FRAMES[1] - 1}, R@1",
             "", "| members M | descriptor (dim) | independent ensembles (disjoint groups) | " + " | ".join(
                 f"{n}: mean ± sd, each" for n in names) + " | every C(N, M) group: " + " / ".join(names) + " |",
             "|---|---|---|" + "---|" * len(names) + "---|"]
    for row in rows:
        cells = []
        for i in range(len(names)):
            vals = [r[i] for r in row["disjoint"]]
            cells.append(f"{fmt_spread(spread(vals), digits=3)}, " + " ".join(f"{v:.2f}" for v in vals))
        every = " / ".join(f"{a:.3f} ± {s:.3f}" for a, s in zip(row["all_mean"], row["all_sd"]))
        count = row["all_groups"] if row["all_groups"] == row["possible_groups"] else \
            f"{row['all_groups']} of {row['possible_groups']}, sampled"
        lines.append(f"| {row['size']} | {row['descriptor']} ({row['dim']}) | {len(row['disjoint'])} | "
                     + " | ".join(cells) + f" | {every} ({count}) |")
    plot(rows, names, out / "ensemble.png")
    save_report(out, results, "\n".join(lines), out / "ensemble.png")
    return 0


def sample_groups(every: list[tuple[int, ...]], disjoint: list[tuple[int, ...]], cap: int) -> list[tuple[int, ...]]:
    """All groups, or a seeded sample of `cap` of them that always holds the disjoint ones."""
    if len(every) <= cap:
        return every
    kept = set(disjoint)
    rest = [g for g in every if g not in kept]
    picks = np.random.default_rng(GROUP_SAMPLE_SEED).choice(len(rest), max(0, cap - len(disjoint)), replace=False)
    return sorted(disjoint + [rest[i] for i in picks])


def member_dim(member: dict[str, np.ndarray]) -> int:
    """One member's descriptor dimension (every traverse of it has the same)."""
    return next(iter(member.values())).shape[1]


def plot(rows: list[dict], names: list[str], png: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), sharey=True)
    for i, (ax, name) in enumerate(zip(np.atleast_1d(axes), names)):
        for kind, marker in (("concatenated", "o"), ("summed", "^"), ("projected", "s")):
            sel = [r for r in rows if r["descriptor"] == kind or (r["size"] == 1 and kind != "concatenated")]
            if not sel:
                continue
            xs = [r["size"] for r in sel]
            vals = [[d[i] for d in r["disjoint"]] for r in sel]
            ax.errorbar(xs, [np.mean(v) for v in vals], yerr=[np.std(v, ddof=1) if len(v) > 1 else 0 for v in vals],
                        marker=marker, capsize=3, label=kind)
            for x, v in zip(xs, vals):
                ax.scatter([x] * len(v), v, s=8, alpha=0.4)
        ax.set_title(name)
        ax.set_xlabel("members M")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("R@1 (disjoint ensembles: mean ± sd)")
    np.atleast_1d(axes)[0].legend()
    save_figure(fig, png)


if __name__ == "__main__":
    raise SystemExit(main())
