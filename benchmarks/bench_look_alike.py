"""A look-alike among a million: the node's filter on the 1M-place haystack, frame by frame, before and after.

    .venv/bin/python benchmarks/bench_look_alike.py [--map bench_out/haystack/gardens_point_1000000]
        [--frames 40] [--out bench_out/look_alike]

The node's localizer path without ROS (mode filtered, the node's defaults): the map of
benchmarks/bench_haystack.py (Gardens Point day_left 0-199, then distractors), the camera night_right
100-(100 + frames) at 320x180 as bench_big_map_node.py sends it, one frame a second. Side by side in one
run, the same descriptors: the filter as it is (a mode that stays on one place while the view changes is
not published: `dwell_frames`, the default) and without that check (0, the earlier filter).
Per frame: the published place, right when within 2 frames of the camera's (as bench_big_map_node.py).
For the place fixed on most wrongly: its likelihood ratio per frame, in how many
frames it scores above the true place, and the night_right frames 0-99 it resembles most (the
distractors are mixed from such pool frames). Writes <out>/results.json, table.md and look_alike.png.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from densernet_core.datasets import load_traverse  # noqa: E402
from densernet_core.images import read_image, resize  # noqa: E402
from densernet_core.localization.belief import BeliefConfig, Motion, PlaceBelief  # noqa: E402
from densernet_core.localization.localizer import Localizer  # noqa: E402
from benchmarks.bench_big_map_node import CAMERA_SIZE, FIRST_FRAME, right  # noqa: E402
from benchmarks.report import save_report  # noqa: E402

FRAME_DT = 1.0  # s between camera frames (bench_big_map_node.py's --rate 1)
POOL_FRAMES = range(0, 100)  # night_right frames the haystack's pool holds
DWELL = BeliefConfig().dwell_frames
VARIANTS = {f"now (dwell_frames {DWELL})": DWELL, "before (dwell_frames 0)": 0}


def replay(loc: Localizer, descriptors: np.ndarray, config: BeliefConfig) -> list[dict]:
    """The localizer's per-frame path, as the node runs it, from a fresh belief."""
    places = loc.map.places
    loc.filter = PlaceBelief(places.positions, places.orientations if places.has_orientation else None, config,
                             loc.map.observation, places.place_sources)
    loc.reset()
    rows = []
    for k, d in enumerate(descriptors):
        r = loc.localize_descriptor(d[None], Motion(dt=FRAME_DT) if k else Motion())
        f, truth = r.filtered, FIRST_FRAME + k
        rows.append({"frame": truth, "fix": bool(f.fix), "place": int(f.place_id), "mass": float(f.mass),
                     "out_of_map": float(f.out_of_map), "right": bool(f.fix and right(int(f.place_id), truth)),
                     "median": r.retrieval.score_median, "unscored_ratio": loc.unscored_ratio(r.retrieval)})
    return rows


def summary(rows: list[dict]) -> dict:
    fixes = [r for r in rows if r["fix"]]
    wrong = Counter(r["place"] for r in fixes if not r["right"])
    return {"frames": len(rows), "fixes": len(fixes), "right": sum(r["right"] for r in fixes),
            "wrong": len(fixes) - sum(r["right"] for r in fixes), "wrong_places": dict(wrong)}


def look_alike(loc: Localizer, descriptors: np.ndarray, rows: list[dict], place: int, pool: np.ndarray) -> dict:
    """What makes `place` win: its score and likelihood ratio per frame against the true place's."""
    obs = loc.map.observation
    def score(ids: list[int]) -> np.ndarray:
        return np.array([float(loc.map.similarities(d[None], np.array([i]))[0]) for d, i in zip(descriptors, ids)])
    s, truth = score([place] * len(descriptors)), score([FIRST_FRAME + k for k in range(len(descriptors))])
    ratio = obs.ratio(s - np.array([r["median"] for r in rows]))
    place_desc = np.asarray(loc.map.descriptors[place], dtype=np.float32)
    sims = pool @ place_desc
    near = np.argsort(-sims)[:2]
    return {"place": place, "score_mean": float(s.mean()), "truth_score_mean": float(truth.mean()),
            "frames_above_truth": int((s > truth).sum()), "ratio_p50": float(np.median(ratio)),
            "ratio_max": float(ratio.max()), "ratio_per_frame": ratio.round(2).tolist(),
            "nearest_pool_frames": [int(POOL_FRAMES[i]) for i in near],
            "nearest_pool_similarity": [round(float(sims[i]), 3) for i in near]}


def table(results: dict) -> str:
    lines = ["| filter | frames | fixes | right | wrong | wrong fixes on |", "|---|---|---|---|---|---|"]
    for name, v in results["variants"].items():
        s = v["summary"]
        on = ", ".join(f"{p} ({n})" for p, n in s["wrong_places"].items()) or "-"
        lines.append(f"| {name} | {s['frames']} | {s['fixes']} | {s['right']} | {s['wrong']} | {on} |")
    if results.get("look_alike"):
        a = results["look_alike"]
        lines += ["", f"Place {a['place']}: mean score {a['score_mean']:.3f} against the true place's "
                  f"{a['truth_score_mean']:.3f}, above it in {a['frames_above_truth']} of {results['frames']} frames; "
                  f"likelihood ratio p50 {a['ratio_p50']:.1f}, max {a['ratio_max']:.0f}; most like night_right "
                  f"frames {a['nearest_pool_frames']} (cosine {a['nearest_pool_similarity']})."]
    return "\n".join(lines)


def plot(results: dict, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for (name, v), mark in zip(results["variants"].items(), ("o", "x")):
        rows = [r for r in v["rows"] if r["fix"]]
        ax.scatter([r["frame"] for r in rows], [r["place"] if r["place"] < 1000 else 90 for r in rows],
                   marker=mark, label=f"{name}: fixes (a distractor drawn at 90)")
    frames = [r["frame"] for r in next(iter(results["variants"].values()))["rows"]]
    ax.plot(frames, frames, "k:", lw=1, label="camera's place")
    ax.set_xlabel("camera frame (night_right)")
    ax.set_ylabel("published place")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--map", default="bench_out/haystack/gardens_point_1000000")
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/gardens_point"))
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--out", default="bench_out/look_alike")
    args = p.parse_args(argv)
    if not (Path(args.map) / "manifest.json").is_file():
        print(f"no map at {args.map}: build it with benchmarks/bench_haystack.py --sizes 1000000 "
              "--datasets gardens_point --keep-maps", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loc = Localizer.from_paths(args.map, device="cpu", belief=BeliefConfig(), mode="filtered", metric=None)
    night = Path(args.data) / "night_right"
    camera = [resize(read_image(f), CAMERA_SIZE)
              for f in load_traverse(night, list(range(FIRST_FRAME, FIRST_FRAME + args.frames))).images]
    descriptors = np.concatenate([loc.model.describe([im], color="rgb") for im in camera])
    results = {"map": str(Path(args.map).resolve()), "frames": args.frames, "variants": {}}
    for name, frames in VARIANTS.items():
        rows = replay(loc, descriptors, dataclasses.replace(BeliefConfig(), dwell_frames=frames))
        results["variants"][name] = {"summary": summary(rows), "rows": rows}
    wrong = Counter()
    for v in results["variants"].values():
        wrong.update(v["summary"]["wrong_places"])
    if wrong:
        pool = loc.model.describe([read_image(f) for f in load_traverse(night, list(POOL_FRAMES)).images])
        results["look_alike"] = look_alike(loc, descriptors, results["variants"]["before (dwell_frames 0)"]["rows"],
                                           wrong.most_common(1)[0][0], np.asarray(pool, np.float32))
    plot(results, out / "look_alike.png")
    save_report(out, results, table(results), out / "look_alike.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
