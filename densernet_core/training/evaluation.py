"""Recall@N of a descriptor set against positions, and its JSON/PNG outputs."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .mining import within
from .recall import DEFAULT_NS, recall_at_n, recall_curve, search
from ..plots import pyplot, save_figure

CURVE_MAX_N = 25


@dataclass
class EvalResult:
    name: str
    recalls: dict[int, float]
    curve: list[float]  # recall@1..len(curve)
    num_queries: int
    num_database: int
    num_evaluated: int  # queries with at least one true match in the database
    tolerance: float


def evaluate_descriptors(name: str, db_desc: np.ndarray, q_desc: np.ndarray, db_pos: np.ndarray, q_pos: np.ndarray,
                         tolerance: float, ns: Sequence[int] = DEFAULT_NS) -> EvalResult:
    """A retrieval is correct when the database image lies within `tolerance` (m or frames) of the query."""
    if db_desc.shape[1] != q_desc.shape[1]:
        raise ValueError(f"{name}: descriptor size mismatch, database {db_desc.shape[1]} vs queries {q_desc.shape[1]}")
    k = min(max(max(ns), CURVE_MAX_N), len(db_desc))
    _, ranked = search(db_desc, q_desc, k)
    truth = within(q_pos, db_pos, tolerance)
    ns_ok = [n for n in ns if n <= k]
    return EvalResult(name, recall_at_n(ranked, truth, ns_ok), recall_curve(ranked, truth).round(6).tolist(),
                      len(q_desc), len(db_desc), sum(1 for t in truth if len(t)), tolerance)


def format_table(results: Sequence[EvalResult]) -> str:
    ns = sorted({n for r in results for n in r.recalls})
    lines = ["| protocol | queries | " + " | ".join(f"R@{n}" for n in ns) + " |",
             "|---|---|" + "---|" * len(ns)]
    for r in results:
        lines.append(f"| {r.name} | {r.num_evaluated} | " + " | ".join(f"{r.recalls.get(n, float('nan')):.3f}" for n in ns) + " |")
    return "\n".join(lines)


def save_results(results: Sequence[EvalResult], out: str | Path, title: str = "") -> tuple[Path, Path]:
    """`<out>.json` with every number and `<out>.png` with the recall curves."""
    plt = pyplot()

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out.with_suffix(".json"), out.with_suffix(".png")
    json_path.write_text(json.dumps([{**asdict(r), "recalls": {str(k): v for k, v in r.recalls.items()}}
                                     for r in results], indent=2))
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        ax.plot(range(1, len(r.curve) + 1), r.curve, marker=".", label=f"{r.name} (R@1 {r.recalls[1]:.2f})")
    ax.set_xlabel("N (retrieved)")
    ax.set_ylabel("Recall@N")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "Recall@N")
    save_figure(fig, png_path, dpi=110)
    return json_path, png_path
