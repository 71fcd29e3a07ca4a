"""Weakly supervised training: NetVLAD k-means init, tuple mining from positions, triplet/SARE loss.

Steps chain through files in one run folder (hloc style): `cluster()` writes `init.safetensors`,
`train()` writes `last.safetensors` + `last_state.safetensors` every epoch, `best.safetensors`
by validation recall, `log.csv` and `curves.png` (with `optim.average_from`, `average_state.safetensors`
every epoch and `average.safetensors` at the end), and finally `model.safetensors` with PCA
whitening fitted on the training descriptors. Rerunning continues where it stopped.
"""
from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from tqdm import tqdm

from .allocator import keep_freed_memory
from .augment import crop_windows, night_weather
from .averaging import WeightAverage
from ..config import ConfigError
from ..model.checkpoint import load_model, save_checkpoint
from ..model.ensemble import merge_checkpoints
from ..tensor_files import write_safetensors
from ..distributed import DistContext, init_distributed
from .evaluation import EvalResult, evaluate_descriptors
from ..images import normalise, read_image, resize
from .losses import create as create_loss, similarity_distillation
from .mining import TupleMiner, negative_pools, positives
from ..model.network import DenserNet, build_from_config, sample_locations, sample_tap_locations
from ..model.pca import check_pca_fit_size, fit_pca_whitening
from .sources import Split, load_database_and_queries
from .tap_cache import TapCache, trunk_fingerprint, stored_taps, trunk_taps
from .train_config import TrainConfig
from ..plots import pyplot, save_figure

LOG = logging.getLogger("densernet")
LOG_FIELDS = ("epoch", "iterations", "loss", "lr", "val_r1", "val_r5", "val_r10", "seconds")
DESCRIBE_BATCH = 16


class TrainingHead(nn.Module):
    """What trains: from cached taps (dict) or from images (tensor) to the VLAD (PCA comes last)."""

    def __init__(self, model: DenserNet) -> None:
        super().__init__()
        self.model = model

    def taps(self, batch: torch.Tensor | dict[int, torch.Tensor]) -> list[torch.Tensor | None]:
        return trunk_taps(self.model, batch) if isinstance(batch, dict) else self.model.trunk(batch)

    def dense(self, batch: torch.Tensor | dict[int, torch.Tensor]) -> torch.Tensor:
        return self.model.fuse(self.taps(batch))

    def forward(self, batch: torch.Tensor | dict[int, torch.Tensor],
                crop: tuple[tuple[float, float], np.random.Generator] | None = None) -> torch.Tensor:
        """`crop`: (share, rng) for `crop_windows` on the fused map before NetVLAD; None: the whole map."""
        dense = self.dense(batch)
        if crop is not None:
            dense = crop_windows(dense, *crop)
        return self.model.netvlad(dense.float())


@dataclass
class Data:
    """Everything a run reads, indexed once: unique images and where each split points into them."""

    paths: list[Path]
    db: Split
    queries: Split
    db_rows: np.ndarray  # row in `paths` of each database image
    q_rows: np.ndarray
    val_db_rows: np.ndarray | None = None
    val_q_rows: np.ndarray | None = None
    val_db: Split | None = None
    val_q: Split | None = None

    @property
    def train_rows(self) -> np.ndarray:
        return np.unique(np.concatenate([self.db_rows, self.q_rows]))


def load_data(cfg: TrainConfig) -> Data:
    db, queries = load_database_and_queries(cfg.train.database, cfg.train.queries, "data.train")
    val_db, val_q = (load_database_and_queries(cfg.val.database, cfg.val.queries, "data.val") if cfg.val
                     else (None, None))
    paths: list[Path] = []
    row_of: dict[Path, int] = {}

    def rows(split: Split | None) -> np.ndarray | None:
        if split is None:
            return None
        out = []
        for p in split.data.images:
            key = Path(p).resolve()
            if key not in row_of:
                row_of[key] = len(paths)
                paths.append(Path(p))
            out.append(row_of[key])
        return np.array(out, dtype=np.int64)

    return Data(paths, db, queries, rows(db), rows(queries), rows(val_db), rows(val_q), val_db, val_q)


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: str | Path, cache_dir: str | Path | None = None,
                 ctx: DistContext | None = None, progress: bool = True) -> None:
        if cfg.model.heads > 1:
            raise ConfigError(f"model.heads {cfg.model.heads}: a Trainer trains one head; run_training trains "
                              "an ensemble head by head and merges them")
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.cache_dir = Path(cache_dir) if cache_dir else self.run_dir / "cache"
        self.ctx = ctx or init_distributed(cfg.device)
        self.device = self.ctx.device
        self.progress = progress and self.ctx.is_main
        self.run_dir.mkdir(parents=True, exist_ok=True)
        keep_freed_memory()
        torch.manual_seed(cfg.seed)
        self.data = load_data(cfg)
        check_pca_fit_size(len(self.data.train_rows), cfg.model.pca_dim)  # fail now, not after training
        self.loss_fn = create_loss(cfg.optim.loss)
        self.cache: TapCache | None = None  # covers train and val images alike

    # ---- images and taps ----------------------------------------------------------------------
    def _caches(self, model: DenserNet) -> None:
        """Build (rank 0 first, then everyone reads) the frozen-trunk caches, once per run."""
        if not self.cfg.uses_tap_cache or self.cache is not None:
            return
        aug = self.cfg.augment
        for rank_turn in (True, False):
            if self.ctx.is_main == rank_turn:
                self.cache = TapCache(model, self.data.paths, self.cache_dir, aug.copies, aug, self.cfg.seed, self.progress)
            self.ctx.barrier()

    def _batch(self, model: DenserNet, rows: Sequence[int], rng: np.random.Generator | None
               ) -> torch.Tensor | dict[int, torch.Tensor]:
        """Images (or their cached taps) for these rows; with `rng`, augmented variants as configured."""
        aug = self.cfg.augment
        use_aug = rng is not None and aug.enabled
        if self.cache is not None:
            variants = [int(rng.integers(1, self.cache.variants)) if use_aug and self.cache.variants > 1
                        and rng.random() < aug.probability else 0 for _ in rows]
            return self.cache.get(rows, variants, self.device)
        imgs = []
        for r in rows:
            rgb = resize(read_image(self.data.paths[r]), model.config.image_size)
            if use_aug and rng.random() < aug.probability:
                rgb = night_weather(rgb, rng, aug)
            imgs.append(rgb)
        return normalise(np.stack(imgs), model.config.preprocessing).to(self.device)

    @torch.no_grad()
    def describe_rows(self, head: TrainingHead, rows: Sequence[int]) -> np.ndarray:
        """Current VLAD descriptors (no PCA) of these images, clean variant."""
        was = head.training
        head.eval()
        out = []
        try:
            for s in range(0, len(rows), DESCRIBE_BATCH):
                with self._autocast():
                    out.append(head(self._batch(head.model, rows[s:s + DESCRIBE_BATCH], None)).float().cpu())
        finally:
            head.train(was)
        return torch.cat(out).numpy()

    def _autocast(self) -> torch.autocast:
        return torch.autocast(device_type="cuda", dtype=torch.float16,
                              enabled=self.device.type == "cuda" and self.cfg.optim.amp)

    # ---- step 1: NetVLAD initialisation -------------------------------------------------------
    def cluster(self) -> Path:
        """k-means over dense descriptors of training images -> `init.safetensors` (skipped if present)."""
        out = self.run_dir / "init.safetensors"
        if out.is_file():
            LOG.info("NetVLAD init found: %s", out)
            return out
        c = self.cfg.cluster
        seed = self.cfg.seed if c.seed is None else c.seed
        with torch.random.fork_rng(enabled=c.seed is not None):  # the run's own torch stream stays as it was
            if c.seed is not None:
                torch.manual_seed(c.seed)
            model = build_from_config(self.cfg.model, str(self.device))
        self._caches(model)
        if self.ctx.is_main:
            rng = np.random.default_rng(seed)
            rows = self.data.train_rows
            if len(rows) > c.max_images:
                rows = np.sort(rng.choice(rows, c.max_images, replace=False))
            head = TrainingHead(model).eval()
            if c.branch_init == "pca":
                self._init_branches_pca(head, rows, rng)
            samples = []
            with torch.no_grad():
                for s in tqdm(range(0, len(rows), DESCRIBE_BATCH), desc="cluster samples", disable=not self.progress):
                    samples.append(sample_locations(head.dense(self._batch(model, rows[s:s + DESCRIBE_BATCH], None)),
                                                    c.descriptors_per_image, rng))
            alpha = model.init_netvlad_from_samples(np.concatenate(samples), c.iterations, seed)
            LOG.info("NetVLAD initialised from %d images (alpha %.1f)", len(rows), alpha)
            save_checkpoint(model, out, {"stage": "init"})
        self.ctx.barrier()
        return out

    @torch.no_grad()
    def _init_branches_pca(self, head: TrainingHead, rows: np.ndarray, rng: np.random.Generator) -> None:
        model = head.model
        batches = (head.taps(self._batch(model, rows[s:s + DESCRIBE_BATCH], None))
                   for s in range(0, len(rows), DESCRIBE_BATCH))
        model.init_branches_from_samples(sample_tap_locations(batches, model.used_taps,
                                                              self.cfg.cluster.descriptors_per_image, rng))

    # ---- distillation targets --------------------------------------------------------------------
    @torch.no_grad()
    def teacher_similarities(self) -> tuple[torch.Tensor, np.ndarray] | None:
        """The teachers' mean cosine between every pair of training images (the concatenated ensemble's),
        and each image row's index into it; None without teachers. Computed once per run: 300 images
        make a 300 x 300 table, whatever the number of teachers."""
        teachers = self.cfg.distill.teachers
        if not teachers:
            return None
        rows = self.data.train_rows
        total = torch.zeros(len(rows), len(rows))
        for path in teachers:
            teacher = load_model(path, str(self.device))
            self._check_teacher(teacher, path)
            desc = torch.from_numpy(self.describe_rows(TrainingHead(teacher), rows))
            total += desc @ desc.T
            LOG.info("distillation teacher %s described %d training images", path, len(rows))
        where = np.full(len(self.data.paths), -1, dtype=np.int64)
        where[rows] = np.arange(len(rows))
        return total / len(teachers), where

    def _check_teacher(self, teacher: DenserNet, path: str) -> None:
        """Cached taps come from the student's trunk: a teacher read through them must share it."""
        if self.cache is None:
            return
        mine, theirs = self.cfg.model, teacher.config
        differs = [name for name, a, b in (
            ("image_size", tuple(mine.image_size), tuple(theirs.image_size)),
            ("preprocessing", mine.preprocessing, theirs.preprocessing),
            ("taps", self.cache.taps, stored_taps(teacher)),
            ("trunk weights", self.cache.trunk, trunk_fingerprint(teacher))) if a != b]
        if differs:
            raise ValueError(f"distillation teacher {path}: its {', '.join(differs)} differ from the student's, "
                             "so it cannot be read through the student's cached trunk taps; "
                             "set cache_taps: off or use a teacher trained with the same model settings")

    # ---- step 2: training ---------------------------------------------------------------------
    def _optimizer(self, model: DenserNet) -> tuple[torch.optim.Optimizer, object]:
        o = self.cfg.optim
        params = [p for p in model.parameters() if p.requires_grad]
        if o.lr_scale == "relative":
            params = relative_rate_groups(model, o.lr)
            LOG.info("rates relative to each tensor's RMS: %s", ", ".join(f"{g['name']} {g['lr']:.2e}" for g in params))
        elif o.lr_netvlad > 0:
            own = {id(p) for p in model.netvlad.parameters()}
            params = [{"params": [p for p in params if id(p) not in own], "lr": o.lr, "name": "rest"},
                      {"params": [p for p in params if id(p) in own], "lr": o.lr_netvlad, "name": "netvlad"}]
            params = [g for g in params if g["params"]]
        if o.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        if o.scheduler == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=o.step_size, gamma=o.gamma)
        elif o.scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=o.epochs)
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        return opt, sched

    def _miner(self) -> TupleMiner:
        t, d = self.cfg.train, self.data
        db_index = {int(r): i for i, r in enumerate(d.db_rows)}
        q_db = np.array([db_index.get(int(r), -1) for r in d.q_rows])
        db_groups = _group_keys(d.db)
        pos = positives(d.queries.data.positions, d.db.data.positions, t.pos_radius,
                        _group_keys(d.queries), db_groups, t.positives_from_other_source, q_db)
        pools = negative_pools(d.queries.data.positions, d.db.data.positions, t.neg_radius)
        m = self.cfg.mining
        return TupleMiner(pos, pools, m.num_negatives, m.negative_samples, self.cfg.seed, m.positive, db_groups)

    def _refresh(self, head: TrainingHead) -> tuple[np.ndarray, np.ndarray]:
        """Descriptors of the database and queries with the current weights (shared images once)."""
        rows = self.data.train_rows
        desc = self.describe_rows(head, rows)
        where = {int(r): i for i, r in enumerate(rows)}
        return (desc[[where[int(r)] for r in self.data.db_rows]], desc[[where[int(r)] for r in self.data.q_rows]])

    def validate(self, head: TrainingHead) -> EvalResult | None:
        d, v = self.data, self.cfg.val
        if v is None or d.val_db is None or d.val_q is None:
            return None
        return evaluate_descriptors(v.name or "val", self.describe_rows(head, d.val_db_rows),
                                    self.describe_rows(head, d.val_q_rows), d.val_db.data.positions,
                                    d.val_q.data.positions, v.tolerance)

    def train(self) -> Path:
        """Train to the configured epochs (resuming from `last_state.safetensors`), then fit PCA."""
        final = self.run_dir / "model.safetensors"
        if final.is_file():
            LOG.info("training already finished: %s", final)
            return final
        init = self.cluster()
        last, state_file = self.run_dir / "last.safetensors", self.run_dir / "last_state.safetensors"
        resume = last.is_file() and state_file.is_file()
        model = load_model(last if resume else init, str(self.device))
        model.trunk.set_trainable(self.cfg.model.train_layers)
        for part in self.cfg.optim.frozen:
            getattr(model, part).requires_grad_(False)
        self._caches(model)
        head = TrainingHead(model).train()
        opt, sched = self._optimizer(model)
        start_epoch, iteration, best = 0, 0, -1.0
        if resume:
            start_epoch, iteration, best = _load_train_state(state_file, opt, sched)
            LOG.info("resuming after epoch %d (iteration %d)", start_epoch, iteration)
        o, m = self.cfg.optim, self.cfg.mining
        average, average_file = (WeightAverage(model) if o.average_from else None), self.run_dir / "average_state.safetensors"
        if average is not None and resume and average_file.is_file():
            average.load(average_file)
        trainable = head
        if self.ctx.enabled:
            trainable = nn.parallel.DistributedDataParallel(
                head, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        teacher = self.teacher_similarities()
        miner = self._miner()
        usable = miner.usable()
        if len(usable) == 0:
            raise ValueError("no training query has both a positive within pos_radius and enough negatives "
                             "beyond neg_radius; check the radii and the positions' units")
        LOG.info("%d of %d training queries have positives and negatives", len(usable), len(miner.pos))
        scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda" and self.cfg.optim.amp)
        for epoch in range(start_epoch, o.epochs):
            t0 = time.time()
            rng = np.random.default_rng([self.cfg.seed, epoch, self.ctx.rank])
            crop = (self.cfg.augment.crop, rng) if self.cfg.augment.crop != (1.0, 1.0) else None
            order = np.random.default_rng([self.cfg.seed, epoch]).permutation(usable)
            per_rank = len(order) // self.ctx.world_size
            mine = order[self.ctx.rank * per_rank:(self.ctx.rank + 1) * per_rank]
            steps = max(1, len(mine) // o.batch_size)
            losses: list[float] = []
            db_desc = q_desc = None
            bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{o.epochs}", disable=not self.progress, unit="step")
            for step in bar:
                if db_desc is None or iteration % m.refresh_every == 0:
                    db_desc, q_desc = self._refresh(head)
                queries = mine[step * o.batch_size:(step + 1) * o.batch_size]
                rows = []
                for q in queries:
                    p, negs = miner.mine(int(q), q_desc[q], db_desc, epoch)
                    rows += [self.data.q_rows[q], self.data.db_rows[p], *self.data.db_rows[negs]]
                with self._autocast():
                    out = trainable(self._batch(model, rows, rng), crop).float()
                out = out.view(len(queries), 2 + m.num_negatives, -1)
                loss = self.loss_fn(out[:, 0], out[:, 1], out[:, 2:], margin=o.margin)
                if teacher is not None:
                    loss = loss + self._distillation(out, rows, teacher)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if o.grad_clip > 0:
                    scaler.unscale_(opt)
                    nn.utils.clip_grad_norm_(head.parameters(), o.grad_clip)
                scaler.step(opt)
                scaler.update()
                iteration += 1
                if average is not None and epoch + 1 >= o.average_from:
                    average.update()
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            sched.step()
            mean_loss = float(np.mean(self.ctx.all_gather_object(float(np.mean(losses)))))
            if self.ctx.is_main:
                val = self.validate(head)
                r = val.recalls if val else {}
                row = {"epoch": epoch + 1, "iterations": iteration, "loss": round(mean_loss, 6),
                       "lr": opt.param_groups[0]["lr"], "val_r1": r.get(1, ""), "val_r5": r.get(5, ""),
                       "val_r10": r.get(10, ""), "seconds": round(time.time() - t0, 1)}
                LOG.info("epoch %d: loss %.4f%s", epoch + 1, mean_loss,
                         f", val R@1 {r[1]:.3f} R@5 {r[5]:.3f}" if val else "")
                save_checkpoint(model, last, {"stage": "train", "epoch": str(epoch + 1)})
                if average is not None and average.count:
                    average.save(average_file)
                score = r.get(1, -1.0) + 1e-3 * r.get(5, 0.0) if val else -1.0
                if val and score > best:
                    best = score
                    save_checkpoint(model, self.run_dir / "best.safetensors", {"stage": "best", "epoch": str(epoch + 1)})
                _save_train_state(state_file, opt, sched, epoch + 1, iteration, best)
                _append_log(self.run_dir / "log.csv", row)
                plot_log(self.run_dir / "log.csv", self.run_dir / "curves.png")
            self.ctx.barrier()
        _check_replicas_agree(self.ctx, model)
        if self.ctx.is_main:  # the deliverable: the weight average, else the best (or last) epoch; plus PCA whitening
            source = self.run_dir / "best.safetensors"
            if average is not None:
                source = self.run_dir / "average.safetensors"
                save_checkpoint(average.apply_to(load_model(last, str(self.device))), source,
                                {"stage": "average", "steps": str(average.count), "from_epoch": str(o.average_from)})
            self.whiten(source if source.is_file() else last, final)
        self.ctx.barrier()
        return final

    def _distillation(self, out: torch.Tensor, rows: Sequence[int], teacher: tuple[torch.Tensor, np.ndarray]
                      ) -> torch.Tensor:
        """The weighted KL term: each tuple's candidates ranked as the teachers rank them."""
        table, where = teacher
        idx = torch.as_tensor(where[np.asarray(rows, dtype=np.int64)]).view(out.shape[0], out.shape[1])
        target = table[idx[:, :1], idx[:, 1:]].to(out.device)  # B x (1 + negatives)
        d = self.cfg.distill
        return d.weight * similarity_distillation(out[:, 0], out[:, 1:], target, d.temperature)

    # ---- step 3: PCA whitening ------------------------------------------------------------------
    def whiten(self, source: Path, out: Path) -> Path:
        """`source` plus PCA whitening fitted on the training images' descriptors, saved as `out`."""
        model = load_model(source, str(self.device))
        self._caches(model)
        if self.cfg.model.pca_dim:
            vlads = self.describe_rows(TrainingHead(model), self.data.train_rows)
            model.pca = fit_pca_whitening(vlads, self.cfg.model.pca_dim).to(self.device)
            LOG.info("PCA whitening fitted on %d training descriptors -> %d-D", len(vlads), model.pca.out_dim)
        save_checkpoint(model, out, {"stage": "final", "from": source.name})
        LOG.info("final model: %s (from %s)", out, source.name)
        return out


def _group_keys(split: Split) -> np.ndarray:
    """Group names per image, so the same traversal in the database and the queries compares equal."""
    return np.array([split.group_names[g] for g in split.groups])


def _check_replicas_agree(ctx: DistContext, model: DenserNet) -> None:
    """DDP keeps replicas identical; verify before writing the one checkpoint everyone shares."""
    if not ctx.enabled:
        return
    sums = ctx.all_gather_object(float(sum(p.detach().double().sum() for p in model.parameters() if p.requires_grad)))
    if max(sums) - min(sums) > 1e-6 * max(1.0, abs(sums[0])):
        raise RuntimeError(f"distributed replicas diverged: parameter sums {sums}")
    LOG.info("all %d replicas hold identical weights", ctx.world_size)


def relative_rate_groups(model: nn.Module, lr: float) -> list[dict]:
    """One optimizer group per trainable tensor, its rate lr x the tensor's RMS (`optim.lr_scale: relative`).

    Adam moves every weight by about lr per step whatever its size, so with one rate the PCA branches (RMS
    1e-4 to 4e-3: whitened Caffe-scale maps) are rewritten while NetVLAD (RMS 0.03 to 2.3) barely moves. A
    tensor that is all zeros has no size to scale by and keeps lr itself."""
    groups = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            rms = float(p.detach().float().pow(2).mean().sqrt())
            groups.append({"params": [p], "lr": lr * rms if rms > 0 else lr, "name": name})
    return groups


# ---- resumable optimizer state without pickle -------------------------------------------------
def _save_train_state(path: Path, opt: torch.optim.Optimizer, sched: object, epoch: int, iteration: int,
                      best: float) -> None:
    sd = opt.state_dict()
    tensors = {f"state.{pid}.{name}": v.detach().cpu().contiguous()
               for pid, st in sd["state"].items() for name, v in st.items() if isinstance(v, torch.Tensor)}
    meta = {"epoch": epoch, "iteration": iteration, "best": best, "param_groups": sd["param_groups"],
            "scheduler": {k: v for k, v in sched.state_dict().items() if _jsonable(v)}}
    write_safetensors(tensors, path, {"train_state": json.dumps(meta)})


def _load_train_state(path: Path, opt: torch.optim.Optimizer, sched: object) -> tuple[int, int, float]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {})["train_state"])
    tensors = load_file(str(path))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    sched_state = sched.state_dict()
    sched_state.update(meta["scheduler"])
    sched.load_state_dict(sched_state)
    return int(meta["epoch"]), int(meta["iteration"]), float(meta["best"])


def _jsonable(value: object) -> bool:
    try:
        json.dumps(value)
        return True
    except TypeError:
        return False


# ---- log and plot -------------------------------------------------------------------------------
def _append_log(path: Path, row: dict) -> None:
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def plot_log(log_csv: Path, png: Path) -> Path:
    plt = pyplot()

    with open(log_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    epochs = [int(r["epoch"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [float(r["loss"]) for r in rows], "o-", color="tab:red", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss", color="tab:red")
    vals = [(e, r) for e, r in zip(epochs, rows) if r["val_r1"] not in ("", None)]
    if vals:
        ax2 = ax.twinx()
        for key, style in (("val_r1", "o-"), ("val_r5", "s--")):
            ax2.plot([e for e, _ in vals], [float(r[key]) for _, r in vals], style, label=key.replace("val_r", "val R@"))
        ax2.set_ylim(0, 1.02)
        ax2.set_ylabel("validation recall")
        ax2.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("training")
    return save_figure(fig, png, dpi=110)


def run_training(cfg: TrainConfig, run_dir: str | Path, cache_dir: str | Path | None = None,
                 progress: bool = True) -> Path:
    """cluster -> train -> PCA, distributed when launched by torchrun; with `model.heads` M > 1, head k as its
    own run of seed `seed * M + k` in <run_dir>/head<k> (sharing the tap cache), then merged."""
    ctx = init_distributed(cfg.device)
    try:
        if cfg.model.heads == 1:
            return Trainer(cfg, run_dir, cache_dir, ctx, progress).train()
        return train_ensemble(cfg, Path(run_dir), Path(cache_dir) if cache_dir else None, ctx, progress)
    finally:
        ctx.close()


def train_ensemble(cfg: TrainConfig, run_dir: Path, cache_dir: Path | None, ctx: DistContext, progress: bool) -> Path:
    """`model.heads` seeds of the recipe, one head each over the frozen trunk, in one checkpoint."""
    final = run_dir / "model.safetensors"
    if final.is_file():
        LOG.info("training already finished: %s", final)
        return final
    members = []
    for k in range(cfg.model.heads):
        # seeds s*M .. s*M + M-1: ensembles of different seeds share no member
        member = replace(cfg, model=cfg.model.replace(heads=1), seed=cfg.seed * cfg.model.heads + k)
        LOG.info("ensemble head %d of %d: seed %d", k + 1, cfg.model.heads, member.seed)
        members.append(Trainer(member, run_dir / f"head{k}", cache_dir or run_dir / "cache", ctx, progress).train())
    if ctx.is_main:
        merge_checkpoints(members, final)
    ctx.barrier()
    return final

