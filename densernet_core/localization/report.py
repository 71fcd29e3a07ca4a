"""Position-error statistics, their spread over seeds, and trajectory plots (localize CLI, demo, benchmarks)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from ..plots import pyplot, save_figure


def error_stats(errors: np.ndarray, thresholds: Sequence[float] = (5.0, 10.0, 25.0)) -> dict[str, float]:
    e = np.asarray(errors, float)
    if e.size == 0:
        return {"n": 0}
    out = {"n": int(e.size), "median": float(np.median(e)), "p90": float(np.percentile(e, 90)), "mean": float(e.mean())}
    for t in thresholds:
        out[f"within_{t:g}"] = float(np.mean(e <= t))
    return out


def format_stats(stats: dict[str, float], unit: str = "m") -> str:
    if not stats.get("n"):
        return "no fixes to evaluate"
    within = ", ".join(f"{100 * v:.0f}% <= {k[7:]} {unit}" for k, v in stats.items() if k.startswith("within_"))
    return f"{stats['n']} fixes: median {stats['median']:.2f} {unit}, p90 {stats['p90']:.2f} {unit}; {within}"


def spread(values: list[float | None]) -> dict:
    """Mean and sample sd (n-1) of one figure over checkpoints or seeds; None values (a checkpoint with no
    fix has no median error) are left out and counted."""
    vals = [float(v) for v in values if v is not None]
    return {"mean": float(np.mean(vals)) if vals else None, "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
            "n": len(vals), "of": len(values)}


def fmt_spread(v: dict, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    """'mean ± sd' (scaled, e.g. 100 for a share in %), noting when some checkpoints had no value."""
    if v["mean"] is None:
        return "-"
    sd = "" if v["sd"] is None else f" ± {scale * v['sd']:.{digits}f}"
    partial = "" if v["n"] == v["of"] else f" ({v['n']} of {v['of']})"
    return f"{scale * v['mean']:.{digits}f}{sd}{unit}{partial}"


def plot_trajectory(path: str | Path, true_xy: np.ndarray | None, est_xy: np.ndarray, fix: np.ndarray,
                    map_xy: np.ndarray | None = None, title: str = "", pairs: Sequence[tuple] = (),
                    along_track: bool = False, others: Sequence[tuple[str, np.ndarray, np.ndarray]] = (),
                    label: str = "estimate") -> Path:
    """True vs estimated positions (and, optionally, query/retrieved image pairs beneath).

    `along_track`: positions are distances along one line (index-aligned traverses), so plot the
    estimate against the truth instead of a map view of a line. `others`: more (label, positions,
    fix flags) series drawn beside the main one (e.g. single-frame beside filtered).
    """
    plt = pyplot()

    fig = plt.figure(figsize=(10, 7 if pairs else 5))
    grid = fig.add_gridspec(2 if pairs else 1, max(1, 2 * len(pairs)), height_ratios=[2.5, 1] if pairs else None)
    ax = fig.add_subplot(grid[0, :])
    fix = np.asarray(fix, bool)
    if along_track and true_xy is not None:
        for (name, xy, f), colour in zip(others, ("tab:orange", "tab:purple")):
            f = np.asarray(f, bool)
            ax.plot(true_xy[f, 0], xy[f, 0], ".", color=colour, ms=4, alpha=0.7, label=f"{name} (fix)")
        _along_track(ax, true_xy[:, 0], est_xy[:, 0], fix, map_xy, label)
    else:
        ref = true_xy if true_xy is not None else est_xy[fix]
        extent = np.nanmax(ref, axis=0) - np.nanmin(ref, axis=0) if len(ref) else np.ones(2)
        if map_xy is not None:
            ax.plot(map_xy[:, 0], map_xy[:, 1], ".", color="0.8", ms=3, label="map places")
        if true_xy is not None:
            ax.plot(true_xy[:, 0], true_xy[:, 1], "-", color="tab:green", lw=2, label="ground truth")
            for t, e, f in zip(true_xy, est_xy, fix):
                if f:
                    ax.plot([t[0], e[0]], [t[1], e[1]], "-", color="tab:red", lw=0.5, alpha=0.5)
        for (name, xy, f), colour in zip(others, ("tab:orange", "tab:purple")):
            f = np.asarray(f, bool)
            ax.plot(xy[f, 0], xy[f, 1], ".", color=colour, ms=4, alpha=0.7, label=f"{name} (fix)")
        ax.plot(est_xy[fix, 0], est_xy[fix, 1], "o", color="tab:blue", ms=4, label=f"{label} (fix)")
        if min(extent) > 0.1 * max(extent):  # equal axes only where the route is not a thin line
            ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    ax.legend(loc="best")
    ax.set_title(title)
    for j, (query, retrieved, caption) in enumerate(pairs):
        for k, img in enumerate((query, retrieved)):
            sub = fig.add_subplot(grid[1, 2 * j + k])
            sub.imshow(img)
            sub.set_axis_off()
            sub.set_title(("query " if k == 0 else "retrieved ") + caption, fontsize=7)
    return save_figure(fig, path, dpi=90)


def _along_track(ax, true_x: np.ndarray, est_x: np.ndarray, fix: np.ndarray, map_xy: np.ndarray | None,
                 label: str = "estimate") -> None:
    """A straight route (index-aligned traverses): estimated vs true position, the diagonal is perfect."""
    lo, hi = float(np.nanmin(true_x)), float(np.nanmax(true_x))
    ax.plot([lo, hi], [lo, hi], "-", color="tab:green", lw=2, label="ground truth")
    if map_xy is not None:
        ax.plot(map_xy[:, 0], np.full(len(map_xy), lo), "|", color="0.6", ms=6, label="map places")
    ax.plot(true_x[fix], est_x[fix], "o", color="tab:blue", ms=4, label=f"{label} (fix)")
    ax.plot(true_x[~fix], np.full(int((~fix).sum()), lo), "x", color="tab:red", ms=4, label="no fix")
    ax.set_xlabel("true position along the route")
    ax.set_ylabel("estimated position")


# ---- open-set metrics: does the confidence know when the answer is right? ------------------------------
def precision_recall(confidence: np.ndarray, correct: np.ndarray, positives: int) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall as the confidence threshold falls, one point per distinct confidence (VPR-Bench's
    open-set curve). `correct`: the frame's answer is right; `positives`: frames whose place is in the map
    (a frame from outside the map can only be a false positive). Ties enter the curve together."""
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, bool)
    if positives <= 0 or not len(confidence):
        return np.zeros(0), np.zeros(0)
    order = np.argsort(-confidence, kind="stable")
    c, ok = confidence[order], correct[order]
    tp, n = np.cumsum(ok), np.arange(1, len(ok) + 1)
    last = np.r_[c[1:] != c[:-1], True]  # the end of each group of equal confidences
    return tp[last] / n[last], tp[last] / positives


def open_set_summary(confidence: np.ndarray, correct: np.ndarray, positives: int) -> dict:
    """Area under the precision-recall curve (step-wise, recall from 0), and the recall reachable at 100 %
    and at 99 % precision: the share of in-map frames a robot could localize without (or with 1 %) wrong fixes."""
    precision, recall = precision_recall(confidence, correct, positives)
    if not len(precision):
        return {"auc": None, "recall_at_100p": None, "recall_at_99p": None, "positives": int(positives)}
    # Interpolated precision (the best precision at this recall or beyond), as VPR-Bench plots it.
    interp = np.maximum.accumulate(precision[::-1])[::-1]
    auc = float(np.sum(np.diff(np.r_[0.0, recall]) * interp))

    def recall_at(p: float) -> float:
        ok = precision >= p - 1e-12
        return float(recall[ok].max()) if ok.any() else 0.0

    return {"auc": auc, "recall_at_100p": recall_at(1.0), "recall_at_99p": recall_at(0.99), "positives": int(positives)}


RELIABILITY_BINS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0 + 1e-9)


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: Sequence[float] = RELIABILITY_BINS) -> list[dict]:
    """Published fixes grouped by confidence: per bin, how many, their mean confidence, and how many were right.
    A calibrated estimator has accuracy == confidence in every bin."""
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, bool)
    out = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        sel = (confidence >= lo) & (confidence < hi)
        n = int(sel.sum())
        out.append({"low": float(lo), "high": float(min(hi, 1.0)), "fixes": n,
                    "confidence": float(confidence[sel].mean()) if n else None,
                    "accuracy": float(correct[sel].mean()) if n else None})
    return out


def plot_open_set(path: str | Path, curves: Sequence[tuple[str, np.ndarray, np.ndarray]],
                  diagrams: Sequence[tuple[str, list[dict]]], title: str = "", min_fixes: int = 10) -> Path:
    """Precision-recall curves (left) and reliability diagrams (right: accuracy against confidence per bin,
    bins with fewer than `min_fixes` fixes drawn hollow)."""
    plt = pyplot()

    fig, (pr, rel) = plt.subplots(1, 2, figsize=(12, 5))
    for label, precision, recall in curves:
        pr.step(np.r_[0.0, recall], np.r_[precision[:1] if len(precision) else [1.0], precision], where="post",
                label=label)
    pr.set_xlabel("recall (share of in-map frames fixed right)")
    pr.set_ylabel("precision (share of fixes that are right)")
    pr.set_xlim(0, 1)
    pr.set_ylim(0, 1.02)
    pr.legend(loc="lower left", fontsize=7)
    pr.set_title("precision-recall")
    rel.plot([0.5, 1.0], [0.5, 1.0], "--", color="0.6", label="calibrated")
    for k, (label, bins) in enumerate(diagrams):
        x = np.array([b["confidence"] if b["confidence"] is not None else np.nan for b in bins])
        y = np.array([b["accuracy"] if b["accuracy"] is not None else np.nan for b in bins])
        n = np.array([b["fixes"] for b in bins])
        line, = rel.plot(x, y, "-", lw=1, alpha=0.6, label=label)
        full = n >= min_fixes
        rel.plot(x[full], y[full], "o", color=line.get_color())
        rel.plot(x[~full], y[~full], "o", mfc="none", color=line.get_color())
    rel.set_xlabel("published confidence (bin mean)")
    rel.set_ylabel("share of those fixes that are right")
    rel.set_xlim(0.45, 1.02)
    rel.set_ylim(-0.02, 1.02)
    rel.legend(loc="upper left", fontsize=7)
    rel.set_title(f"reliability (filled: >= {min_fixes} fixes)")
    fig.suptitle(title)
    return save_figure(fig, path, dpi=90)
