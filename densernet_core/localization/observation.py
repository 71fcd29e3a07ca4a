"""How likely a frame shows a mapped place, against showing no mapped place at all.

A retrieval always has a best match, even for a frame from a city the map has never seen, and
measured in units of the query's own spread that best match always looks decisive (docs/POSE_MODEL.md,
*Why an absolute model*). This module gives each place an absolute likelihood ratio instead:

    LR_j = p(g_j | the frame shows place j) / p(g_j | the frame shows no mapped place)
    log LR_j = slope * (g_j - margin_gap)

where g_j = s(q, j) - median_k s(q, k) is the *similarity gap*: how much more the frame resembles place
j than it resembles the map's places at large (the median over the map's fixed background sample,
`placemap.background_statistics`). The gap is kept in the descriptor's own units, not divided by the query's
spread: a frame taken inside the mapped area spreads its similarities over the map more than one from
elsewhere, and dividing by that spread threw the difference away (Gardens Point: in-map night frames
against out-of-map ones, AUC 0.51 with the spread-normalised score, 0.85 with the gap).

Both numbers are fitted from the map itself (`fit_observation_model`), so a map carries its own
calibration (`observation.json`):
- positives: each sampled place against its nearest mapped neighbour (another view of the same place,
  one spacing away); negatives: the same place against background places farther than
  `exclusion_spacings` (what a frame from elsewhere scores).
- `slope` is the logistic regression of positive against negative on the gap (balanced classes, so
  the fitted logit estimates the log density ratio).
- `margin_gap` is where a place's evidence turns positive (LR = 1). The map only shows its own
  condition (its images against each other), and a frame at night or in another season scores far
  lower at its true place; so the margin is `recognition_margin` times the map's own median positive
  gap, not the crossing of the same-condition fit (which would call every night frame unrecognisable).
  recognition_margin = 0.25 was chosen on Gardens Point frames 0-99 (docs/POSE_MODEL.md).
- held-out: the places are split into alternate stretches; a model fitted on one half is scored on
  the other (AUC, share of positives and negatives with LR > 1) and the figures stored with the model.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from ..config import ConfigError

OBSERVATION_FILE = "observation.json"
FORMAT_VERSION = 1
HELD_OUT_BLOCK = 10  # places per stretch when splitting the map into fit / held-out halves
MIN_PLACES = 8  # fewer places cannot show both a neighbour and a distant place for most of them
MIN_FAR = 3  # background places beyond the exclusion radius a sampled place needs (its median and negatives)
NEWTON_STEPS = 50


class ObservationError(ValueError):
    """An observation model file is missing a field, corrupt, or of another format."""


@dataclass(frozen=True)
class ObservationConfig:
    """How a map's observation model is fitted (at `densernet-map build`, `add` and `calibrate`)."""

    recognition_margin: float = 0.25      # LR = 1 at this fraction of the map's own neighbour gap
    positive_spacings: float = 1.5        # a positive is the nearest place within this many spacings
    exclusion_spacings: float = 5.0       # negatives lie farther than this many spacings
    max_queries: int = 1000               # sampled places used as queries (the fit's cost)
    regularization: float = 1e-3          # L2 on the standardised slope (keeps it finite when classes separate)
    miss_rate: float = 0.05               # the least likelihood ratio an unscored place is given

    def __post_init__(self) -> None:
        checks = {"recognition_margin": 0 < self.recognition_margin <= 1,
                  "positive_spacings": self.positive_spacings > 0,
                  "exclusion_spacings": self.exclusion_spacings > self.positive_spacings,
                  "max_queries": self.max_queries >= 20, "regularization": self.regularization >= 0,
                  "miss_rate": 0 < self.miss_rate < 1}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"observation model: invalid {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")


@dataclass(frozen=True)
class ObservationModel:
    slope: float                  # d log LR / d gap
    margin_gap: float             # gap at which LR = 1
    positive_gap_median: float    # the map's own neighbour gap (what a same-condition view scores)
    recognition_margin: float
    miss_rate: float              # likelihood ratio of a place that was not scored (not among the candidates)
    neighbour_similarity: float   # median similarity of neighbouring places: what one spacing of motion changes
    fit: dict = field(default_factory=dict)  # provenance and held-out figures

    def evidence_weight(self, similarity_to_previous: float | None, least: float) -> float:
        """How much of a full frame's evidence a frame adds, given its similarity to the frame before: a frame
        that changed as much as one place spacing does (or more), all of it; a repeat of the last view
        (a robot standing still, a fast camera), that share of it, down to `least`. Repeated views are not
        independent evidence."""
        if similarity_to_previous is None:
            return 1.0
        change = (1.0 - similarity_to_previous) / max(1.0 - self.neighbour_similarity, 1e-6)
        return float(min(max(change, least), 1.0))

    def log_ratio(self, gaps: np.ndarray) -> np.ndarray:
        return self.slope * (np.asarray(gaps, dtype=np.float64) - self.margin_gap)

    def ratio(self, gaps: np.ndarray, floor: float = 0.0) -> np.ndarray:
        """Likelihood ratio of each place against "no mapped place" (never below `floor`)."""
        return np.maximum(np.exp(np.minimum(self.log_ratio(gaps), 700.0)), floor)

    # ---- io ---------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / OBSERVATION_FILE
        path.write_text(json.dumps({"format_version": FORMAT_VERSION, **asdict(self)}, indent=2))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "ObservationModel | None":
        """The map's model, or None when the map predates it (fit one with `densernet-map calibrate`)."""
        path = Path(folder) / OBSERVATION_FILE
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text())
            version = raw.pop("format_version")
            model = cls(**raw)
        except (json.JSONDecodeError, TypeError, KeyError) as exc:
            raise ObservationError(f"{path}: corrupt observation model ({exc})") from exc
        if version != FORMAT_VERSION:
            raise ObservationError(f"{path}: observation model format {version}, this densernet reads {FORMAT_VERSION}")
        if not (math.isfinite(model.slope) and model.slope > 0 and math.isfinite(model.margin_gap)):
            raise ObservationError(f"{path}: slope {model.slope} / margin {model.margin_gap} out of range")
        return model

    def describe(self) -> str:
        held = self.fit.get("held_out", {})
        text = (f"observation model: LR = exp({self.slope:.1f} * (gap - {self.margin_gap:.4f})), margin "
                f"{self.recognition_margin:g} x the map's neighbour gap {self.positive_gap_median:.4f}; "
                f"fitted on {self.fit.get('positives', '?')} positives / {self.fit.get('negatives', '?')} negatives")
        if held:
            text += (f"; held-out AUC {held['auc']:.3f}, positives recognised {100 * held['positives_above_margin']:.0f} %, "
                     f"negatives above margin {100 * held['negatives_above_margin']:.2f} %")
        return text


def median_spacing(positions: np.ndarray) -> float:
    """Median distance from a place to its nearest mapped neighbour (1.0 for a single place)."""
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    if len(positions) < 2:
        return 1.0
    d, _ = cKDTree(positions).query(positions, k=2)
    spacing = float(np.median(d[:, 1]))
    return spacing if spacing > 0 else 1.0


def fit_observation_model(descriptors: np.ndarray, positions: np.ndarray, background: np.ndarray,
                          config: ObservationConfig = ObservationConfig(), seed: int = 0) -> ObservationModel:
    """Fit from the map's own descriptors. `background`: the rows of the map's background sample (the
    places a query's median similarity is measured against at run time)."""
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    n = len(positions)
    if n < MIN_PLACES:
        raise ObservationError(f"an observation model needs at least {MIN_PLACES} mapped places, the map has {n}")
    background = np.asarray(background, dtype=np.int64)
    spacing = median_spacing(positions)
    tree = cKDTree(positions)
    queries = np.sort(np.random.default_rng(seed).choice(n, min(n, config.max_queries), replace=False))
    pos_gap, neg_gap, pos_query, neg_query, pos_sim = _samples(descriptors, positions, tree, background, queries,
                                                               spacing, config)
    if len(pos_gap) < MIN_PLACES // 2:
        raise ObservationError(f"only {len(pos_gap)} places have a mapped neighbour within "
                               f"{config.positive_spacings:g} spacings ({spacing:.3g} map units): too sparse a map "
                               "to fit an observation model")
    if len(neg_gap) < 10:
        raise ObservationError(f"only {len(neg_gap)} background places lie farther than {config.exclusion_spacings:g} "
                               "spacings from the sampled places: the map is too small to fit an observation model")
    # Held out: alternate stretches of places, fitted on one half and scored on the other.
    half = (queries // HELD_OUT_BLOCK) % 2 == 0
    fit_half = set(queries[half].tolist())
    pos_fit = np.isin(pos_query, list(fit_half))
    neg_fit = np.isin(neg_query, list(fit_half))
    held_out = {}
    if pos_fit.sum() >= 5 and (~pos_fit).sum() >= 5 and neg_fit.any() and (~neg_fit).any():
        part = _model(pos_gap[pos_fit], neg_gap[neg_fit], config, {}, float(np.median(pos_sim)))
        held_out = _scores(part, pos_gap[~pos_fit], neg_gap[~neg_fit])
    fit = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "places": n, "queries": int(len(queries)),
           "positives": int(len(pos_gap)), "negatives": int(len(neg_gap)), "spacing": spacing,
           "positive_radius": config.positive_spacings * spacing, "exclusion_radius": config.exclusion_spacings * spacing,
           "background_places": int(len(background)), "held_out": held_out}
    model = _model(pos_gap, neg_gap, config, fit, float(np.median(pos_sim)))
    model.fit["in_sample"] = _scores(model, pos_gap, neg_gap)
    return model


def _samples(descriptors, positions, tree, background, queries, spacing, config):
    """Positive gaps (each query against its nearest neighbour) and negative ones (against far
    background places), with the query each came from."""
    pos_r, excl_r = config.positive_spacings * spacing, config.exclusion_spacings * spacing
    bg = np.asarray(descriptors[background], dtype=np.float32)
    pos_gap, neg_gap, pos_query, neg_query, pos_sim = [], [], [], [], []
    for start in range(0, len(queries), 256):
        chunk = queries[start:start + 256]
        q = np.asarray(descriptors[chunk], dtype=np.float32)
        s = q @ bg.T
        far = np.linalg.norm(positions[chunk][:, None, :] - positions[background][None, :, :], axis=2) > excl_r
        for r, i in enumerate(chunk):
            if far[r].sum() < MIN_FAR:
                continue
            median = float(np.median(s[r, far[r]]))
            dist, j = tree.query(positions[i], k=2)
            j = int(j[1]) if dist[1] <= pos_r else -1
            if j >= 0:
                sim = float(q[r] @ np.asarray(descriptors[j], dtype=np.float32))
                pos_gap.append(sim - median)
                pos_sim.append(sim)
                pos_query.append(i)
            neg = s[r, far[r]] - median
            neg_gap.append(neg)
            neg_query.append(np.full(len(neg), i))
    neg = np.concatenate(neg_gap) if neg_gap else np.zeros(0)
    negq = np.concatenate(neg_query) if neg_query else np.zeros(0, np.int64)
    return np.array(pos_gap), neg, np.array(pos_query, dtype=np.int64), negq, np.array(pos_sim)


def _model(pos_gap: np.ndarray, neg_gap: np.ndarray, config: ObservationConfig, fit: dict,
           neighbour_similarity: float) -> ObservationModel:
    slope = logistic_slope(pos_gap, neg_gap, config.regularization)
    median_pos = float(np.median(pos_gap))
    if not median_pos > 0:
        raise ObservationError(f"the map's places resemble their neighbours no more than distant places "
                               f"(median neighbour gap {median_pos:.4f}): the descriptor carries no place information")
    return ObservationModel(slope, config.recognition_margin * median_pos, median_pos, config.recognition_margin,
                            config.miss_rate, neighbour_similarity, dict(fit))


def logistic_slope(pos: np.ndarray, neg: np.ndarray, regularization: float) -> float:
    """Slope of a 1-D logistic regression, positives against negatives with equal total weight (so the
    logit estimates the log density ratio), by Newton's method on the standardised gap."""
    x = np.concatenate([pos, neg]).astype(np.float64)
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    w = np.concatenate([np.full(len(pos), 0.5 / len(pos)), np.full(len(neg), 0.5 / len(neg))])
    mu, sd = float(x.mean()), float(x.std()) or 1.0
    z = (x - mu) / sd
    a = b = 0.0
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-(a + b * z)))
        r = w * (p - y)
        grad = np.array([r.sum(), (r * z).sum() + regularization * b])
        h = w * p * (1 - p)
        hess = np.array([[h.sum(), (h * z).sum()], [(h * z).sum(), (h * z * z).sum() + regularization]])
        step = np.linalg.solve(hess + 1e-12 * np.eye(2), grad)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-9:
            break
    if not (math.isfinite(b) and b > 0):
        raise ObservationError(f"the map's neighbours do not score above its distant places (slope {b:.3g}): "
                               "the descriptor carries no place information")
    return float(b / sd)


def _scores(model: ObservationModel, pos: np.ndarray, neg: np.ndarray) -> dict:
    return {"auc": auc(pos, neg), "positives": int(len(pos)), "negatives": int(len(neg)),
            "positives_above_margin": float(np.mean(pos > model.margin_gap)),
            "negatives_above_margin": float(np.mean(neg > model.margin_gap))}


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Area under the ROC curve: P(a positive scores above a negative), ties counting half."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="stable")
    ranks = np.empty(len(order))
    values = np.concatenate([pos, neg])[order]
    # average ranks of ties
    _, start, counts = np.unique(values, return_index=True, return_counts=True)
    avg = start + (counts - 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) - 1) / 2) / (len(pos) * len(neg)))


def place_posterior(ratios: np.ndarray, n_places: int, prior_out: float, miss_rate: float
                    ) -> tuple[np.ndarray, float, float]:
    """One frame alone, every place equally likely a priori: the probability of each scored place, of
    all unscored places together, and of "no mapped place". `ratios`: LR of the scored places."""
    ratios = np.asarray(ratios, dtype=np.float64)
    share = (1.0 - prior_out) / n_places
    scored = share * ratios
    rest = share * max(n_places - len(ratios), 0) * miss_rate
    total = scored.sum() + rest + prior_out
    return scored / total, rest / total, prior_out / total
