"""Training end to end on a tiny generated two-traversal route (ImageNet trunk, 64x64 images)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from densernet_core.config import ConfigError
from densernet_core.training.augment import crop_windows, night_weather
from densernet_core.training.averaging import WeightAverage
from densernet_core.model.checkpoint import load_model
from densernet_core.images import prepare_batch
from densernet_core.training.train_config import AugmentConfig, load_train_config
from densernet_core.training.trainer import Trainer, TrainingHead, relative_rate_groups

ROOT = Path(__file__).resolve().parents[1]
PLACES = 10


@pytest.fixture(scope="module")
def route(tmp_path_factory, caffe_weights_ready) -> Path:
    """Two traversals of 10 places: 'day' textures, and 'dusk' views shifted, darker and noisier."""
    root = tmp_path_factory.mktemp("route")
    rng = np.random.default_rng(0)
    for name in ("day", "dusk"):
        (root / name).mkdir()
    for i in range(PLACES):
        base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        day = cv2.resize(base, (72, 64), interpolation=cv2.INTER_NEAREST)
        dusk = np.roll(day, 6, axis=1).astype(np.float32) * 0.35 + rng.normal(0, 10, day.shape)
        cv2.imwrite(str(root / "day" / f"Image{i:03d}.jpg"), day[:, :64])
        cv2.imwrite(str(root / "dusk" / f"Image{i:03d}.jpg"), np.clip(dusk, 0, 255).astype(np.uint8)[:, :64])
    return root


def write_config(route: Path, path: Path, **changes) -> Path:
    sources = [{"type": "traverse", "path": str(route / "day")}, {"type": "traverse", "path": str(route / "dusk")}]
    raw = {"seed": 0, "device": "cpu",
           "model": {"preset": "small", "weights": "caffe-vgg16", "image_size": [64, 64], "num_clusters": 4, "pca_dim": 2,
                     "branch_dims": [16, 16, 16]},
           "data": {"train": {"database": sources, "queries": sources, "pos_radius": 1, "neg_radius": 3,
                              "positives_from_other_source": True},
                    "val": {"database": sources[:1], "queries": sources[1:], "tolerance": 1, "name": "dusk->day"}},
           "cluster": {"descriptors_per_image": 20},
           "mining": {"num_negatives": 3, "negative_samples": 8, "refresh_every": 4},
           "optim": {"lr": 0.0001, "epochs": 3, "batch_size": 2, "step_size": 2}}
    for dotted, value in changes.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(raw))
    return path


def tuple_loss(trainer: Trainer, checkpoint: Path, negatives: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
    """Triplet loss of each dusk query against its day place and 3 negatives.

    Without `negatives`, they are chosen as the 3 hardest under this checkpoint and returned,
    so the same tuples can be scored again with other weights.
    """
    model = load_model(checkpoint)
    head = TrainingHead(model).eval()
    images = prepare_batch(trainer.data.paths, model.config.image_size, model.config.preprocessing)
    with torch.no_grad():
        v = head(images)
    day, dusk = v[:PLACES], v[PLACES:]  # rows follow the order the sources are listed
    if negatives is None:
        sims = dusk @ day.T
        far = (torch.arange(PLACES)[:, None] - torch.arange(PLACES)[None, :]).abs() >= 3  # beyond neg_radius
        negatives = sims.masked_fill(~far, -2).topk(3, dim=1).indices
    return float(trainer.loss_fn(dusk, day, day[negatives], margin=0.1)), negatives


def test_few_steps_reduce_loss_and_round_trip(route, tmp_path):
    cfg = load_train_config(write_config(route, tmp_path / "exp.yaml"))
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    final = trainer.train()
    before, hard = tuple_loss(trainer, tmp_path / "run" / "init.safetensors")
    after, _ = tuple_loss(trainer, tmp_path / "run" / "last.safetensors", hard)
    assert before > 0 and after < before * 0.7, (before, after)
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,iterations,loss") and len(rows) == 4
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    assert (tmp_path / "run" / "best.safetensors").is_file()
    model = load_model(final)
    assert model.pca is not None and model.netvlad_init == "kmeans"
    desc = model.describe([str(p) for p in trainer.data.paths])
    np.testing.assert_allclose(np.linalg.norm(desc, axis=1), 1.0, atol=1e-5)
    again = load_model(final).describe([str(p) for p in trainer.data.paths])
    np.testing.assert_array_equal(desc, again)


def test_resume_continues_epochs_and_optimizer_state(route, tmp_path):
    run = tmp_path / "run"
    Trainer(load_train_config(write_config(route, tmp_path / "a.yaml", **{"optim.epochs": 1})), run, progress=False).train()
    (run / "model.safetensors").unlink()  # as if interrupted after the first epoch
    Trainer(load_train_config(write_config(route, tmp_path / "b.yaml", **{"optim.epochs": 2})), run, progress=False).train()
    rows = [r.split(",") for r in (run / "log.csv").read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == ["1", "2"]
    assert int(rows[1][1]) == 2 * int(rows[0][1])  # iterations carried on
    with safe_open(str(run / "last_state.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["train_state"])
        step = f.get_tensor("state.0.step")
    assert meta["epoch"] == 2 and int(step) == int(rows[1][1])  # Adam's step counter was restored, not reset


@pytest.mark.parametrize("train_layers", ["none", "conv5"])
def test_cached_taps_give_the_same_descriptors_as_images(route, tmp_path, train_layers):
    cfg = load_train_config(write_config(route, tmp_path / "exp.yaml", **{"model.train_layers": train_layers}))
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    model = load_model(trainer.cluster())
    model.trunk.set_trainable(train_layers)
    trainer._caches(model)
    head = TrainingHead(model).eval()
    rows = list(range(6))
    with torch.no_grad():
        cached = head(trainer.cache.get(rows))
        direct = head(prepare_batch([trainer.data.paths[r] for r in rows], (64, 64), model.config.preprocessing))
    assert torch.allclose(cached, direct, atol=2e-3)  # taps are stored in float16
    assert trainer.cache.taps == ((0, 1, 2) if train_layers == "none" else (0, 1))


def test_augmentation_darkens_and_trains_from_variants(route, tmp_path):
    cfg = AugmentConfig(enabled=True)
    img = cv2.imread(str(route / "day" / "Image000.jpg"))
    a = night_weather(img, np.random.default_rng(1), cfg)
    b = night_weather(img, np.random.default_rng(1), cfg)
    np.testing.assert_array_equal(a, b)
    assert a.shape == img.shape and a.dtype == np.uint8 and a.mean() < img.mean()
    exp = write_config(route, tmp_path / "exp.yaml", **{"augment.enabled": True, "augment.copies": 2,
                                                          "augment.probability": 1.0, "optim.epochs": 1})
    trainer = Trainer(load_train_config(exp), tmp_path / "run", progress=False)
    assert trainer.train().is_file()
    assert trainer.cache.variants == 3


def test_crop_windows_keep_one_size_and_a_different_part_of_each_view():
    dense = torch.arange(6 * 2 * 10 * 20, dtype=torch.float32).view(6, 2, 10, 20)
    out = crop_windows(dense, (0.6, 0.6), np.random.default_rng(0))
    assert out.shape == (6, 2, 6, 12)
    starts = []
    for i in range(6):  # each window is a slice of its own image, whole channels, at the drawn place
        y, x = divmod(int(out[i, 0, 0, 0]) - i * 400, 20)
        torch.testing.assert_close(out[i], dense[i, :, y:y + 6, x:x + 12])
        starts.append((y, x))
    assert len(set(starts)) > 1  # placed per image, not once per batch
    assert crop_windows(dense, (1.0, 1.0), np.random.default_rng(0)) is dense


def test_crop_augmentation_reaches_training_and_is_off_by_default(route, tmp_path):
    """A run with `augment.crop` trains on windows (other weights than without, the same on a rerun); the
    default leaves the step's random stream and the weights as they were."""
    def trained(name: str, **changes) -> dict:
        exp = write_config(route, tmp_path / f"{name}.yaml", **{"optim.epochs": 1, **changes})
        Trainer(load_train_config(exp), tmp_path / name, progress=False).train()
        return load_file(tmp_path / name / "last.safetensors")

    plain, whole = trained("plain"), trained("whole", **{"augment.crop": [1.0, 1.0]})
    crop, again = trained("crop", **{"augment.crop": [0.5, 0.5]}), trained("again", **{"augment.crop": [0.5, 0.5]})
    for key in plain:
        torch.testing.assert_close(whole[key], plain[key], rtol=0, atol=0)
        torch.testing.assert_close(again[key], crop[key], rtol=0, atol=0)
    assert any(not torch.equal(crop[k], plain[k]) for k in plain if k.startswith("netvlad"))
    with pytest.raises(ConfigError, match="augment.crop"):
        load_train_config(write_config(route, tmp_path / "bad.yaml", **{"augment.crop": [0.0, 1.0]}))


def test_ddp_two_cpu_processes_with_gloo(route, tmp_path):
    exp = write_config(route, tmp_path / "exp.yaml", **{"optim.epochs": 2})
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(29500 + os.getpid() % 1000), str(ROOT / "training" / "train.py"), "--config", str(exp),
                           "--run-dir", str(tmp_path / "run"), "--no-progress"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "all 2 replicas hold identical weights" in proc.stderr
    assert load_model(tmp_path / "run" / "model.safetensors").pca is not None
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert len(rows) == 3  # one writer: rank 0


def test_evaluate_script_json_png_deterministic(route, tmp_path):
    run = tmp_path / "run"
    Trainer(load_train_config(write_config(route, tmp_path / "exp.yaml", **{"optim.epochs": 1})), run, progress=False).train()
    protocols = tmp_path / "protocols.yaml"
    protocols.write_text(yaml.safe_dump({"protocols": [
        {"name": "dusk->day", "database": [{"type": "traverse", "path": str(route / "day")}],
         "queries": [{"type": "traverse", "path": str(route / "dusk")}], "tolerance": 1}]}))
    outs = []
    for k in range(2):
        proc = subprocess.run([sys.executable, str(ROOT / "training" / "evaluate.py"), "--checkpoint",
                               str(run / "model.safetensors"), "--protocols", str(protocols), "--out",
                               str(tmp_path / f"eval{k}"), "--device", "cpu"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "| dusk->day |" in proc.stdout
        outs.append(json.loads((tmp_path / f"eval{k}.json").read_text()))
    assert outs[0] == outs[1]
    assert set(outs[0][0]["recalls"]) == {"1", "5", "10"} and len(outs[0][0]["curve"]) == PLACES
    assert (tmp_path / "eval0.png").stat().st_size > 1000
    bad = subprocess.run([sys.executable, str(ROOT / "training" / "evaluate.py"), "--checkpoint",
                          str(tmp_path / "nope.safetensors"), "--protocols", str(protocols), "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "checkpoint not found" in bad.stderr


def test_pca_branch_init_whitens_every_used_branch(route, tmp_path):
    exp = write_config(route, tmp_path / "exp.yaml", **{"cluster.branch_init": "pca", "cluster.descriptors_per_image": 64})
    trainer = Trainer(load_train_config(exp), tmp_path / "run", progress=False)
    model = load_model(trainer.cluster())
    head = TrainingHead(model).eval()
    with torch.no_grad():
        taps = head.taps(prepare_batch(trainer.data.paths, (64, 64), model.config.preprocessing))
        for i in model.used_taps:
            y = model.branches[i](taps[i]).flatten(2).transpose(1, 2).reshape(-1, model.config.branch_dims[i])
            cov = torch.cov(y.T)
            # Whitened on the sampled locations: unit variances, no correlation (up to sampling).
            assert 0.6 < float(cov.diagonal().mean()) < 1.6, (i, cov.diagonal())
            off = cov - torch.diag(cov.diagonal())
            assert float(off.abs().mean()) < 0.1


def test_training_is_byte_for_byte_repeatable(route, tmp_path):
    """Same config and seed, two runs from a clean state: identical checkpoints (so identical maps and
    reports), which the published figures rely on."""
    import hashlib

    cfg = load_train_config(write_config(route, tmp_path / "exp.yaml", **{"optim.epochs": 2}))
    digests = []
    for run in ("a", "b"):
        final = Trainer(cfg, tmp_path / run, progress=False).train()
        digests.append(hashlib.sha256(final.read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_pca_stage_refused_before_training_when_too_few_images(route, tmp_path):
    from densernet_core.config import ConfigError

    cfg = load_train_config(write_config(route, tmp_path / "exp.yaml", **{"model.pca_dim": 8}))
    with pytest.raises(ConfigError, match=r"pca_dim 8 needs at least 80 images .* got 20"):
        Trainer(cfg, tmp_path / "run", progress=False)


def test_weight_average_is_the_running_mean_and_survives_a_resume(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    net[1].requires_grad_(False)  # frozen: never averaged, never overwritten
    avg = WeightAverage(net)
    for value in (1.0, 2.0, 3.0):
        with torch.no_grad():
            net[0].weight.fill_(value)
        avg.update()
    avg.save(tmp_path / "avg.safetensors")
    again = WeightAverage(net)
    again.load(tmp_path / "avg.safetensors")
    with torch.no_grad():
        net[0].weight.fill_(6.0)
    again.update()
    copy = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    frozen = copy[1].weight.detach().clone()
    again.apply_to(copy)
    assert again.count == 4 and torch.allclose(copy[0].weight, torch.full((2, 2), 3.0))  # (1 + 2 + 3 + 6) / 4
    assert torch.equal(copy[1].weight, frozen) and set(again.mean) == {"0.weight", "0.bias"}
    with pytest.raises(RuntimeError, match="average_from"):
        WeightAverage(net).apply_to(copy)


def test_uniform_soup_is_the_mean_of_the_members_weights_and_refuses_other_shapes():
    from densernet_core.training.averaging import uniform_soup

    torch.manual_seed(0)
    members = [torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)) for _ in range(3)]
    for i, m in enumerate(members):
        m[1].num_batches_tracked.fill_(i + 1)  # an integer buffer: kept from the first member, not averaged
    expected = torch.stack([m[0].weight.detach().clone() for m in members]).mean(0)
    soup = uniform_soup(members)
    assert soup is members[0] and torch.allclose(soup[0].weight, expected, atol=1e-7)
    assert int(soup[1].num_batches_tracked) == 1
    with pytest.raises(ValueError, match="model 1 of the soup"):
        uniform_soup([torch.nn.Linear(3, 2), torch.nn.Linear(4, 2)])
    with pytest.raises(ValueError, match="at least one"):
        uniform_soup([])


def test_average_from_makes_the_model_the_mean_of_the_late_steps(route, tmp_path):
    run = tmp_path / "run"
    cfg = load_train_config(write_config(route, tmp_path / "avg.yaml", **{"optim.epochs": 2, "optim.average_from": 2}))
    final = Trainer(cfg, run, progress=False).train()
    rows = [r.split(",") for r in (run / "log.csv").read_text().splitlines()[1:]]
    with safe_open(str(run / "average.safetensors"), "pt") as f:
        assert int(f.metadata()["steps"]) == int(rows[1][1]) - int(rows[0][1])  # every step of epoch 2, none of 1
    key = "netvlad.conv.weight"
    average, last, model = (load_file(str(run / n))[key] for n in ("average.safetensors", "last.safetensors", final.name))
    assert torch.equal(model, average) and not torch.equal(average, last)
    with pytest.raises(ConfigError, match="average_from"):
        load_train_config(write_config(route, tmp_path / "bad.yaml", **{"optim.epochs": 2, "optim.average_from": 3}))


def test_recipe_overrides_apply_and_bad_ones_are_named(route, tmp_path):
    path = write_config(route, tmp_path / "exp.yaml")
    cfg = load_train_config(path, ["optim.average_from=2", "optim.lr=2e-5", "seed=3", "mining.positive=each_source"])
    assert (cfg.optim.average_from, cfg.optim.lr, cfg.seed, cfg.mining.positive) == (2, 2e-5, 3, "each_source")
    for bad, named in ((["optim.lr"], "KEY=VALUE"), (["seed.x=1"], "not a section"), (["optim.nosuch=1"], "nosuch"),
                       (["mining.positive=furthest"], "mining.positive 'furthest' unknown"),
                       (["optim.lr=fast"], "lr must be a number"), (["optim.epochs=2.5"], "epochs must be an integer")):
        with pytest.raises(ConfigError, match=named):
            load_train_config(path, bad)


def test_train_script_takes_overrides_and_refuses_other_ones_on_resume(route, tmp_path, caplog):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_script", ROOT / "training" / "train.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    path, run = write_config(route, tmp_path / "exp.yaml"), tmp_path / "run"
    base = ["--config", str(path), "--run-dir", str(run), "--no-progress"]
    assert script.main(base + ["--set", "optim.epochs=1", "--set", "model.pca_dim=0"]) == 0
    assert len((run / "log.csv").read_text().splitlines()) == 2  # header + the one epoch the override asked for
    assert (run / "overrides.txt").read_text() == "optim.epochs=1\nmodel.pca_dim=0\n"
    assert load_model(run / "model.safetensors").pca is None
    assert script.main(base + ["--set", "optim.epochs=2"]) == 1  # resuming with other overrides is refused
    assert "different config" in caplog.text and "overrides.txt" in caplog.text
    assert script.main(base + ["--set", "optim.epochs"]) == 1  # a malformed override is named
    assert "KEY=VALUE" in caplog.text


def test_cluster_seed_gives_every_run_seed_the_same_initialisation(route, tmp_path):
    """`cluster.seed` fixes what a run starts from (images sampled, branches, k-means), so seeds differ only
    in training: how much of the spread between seeds the initialisation makes can be measured."""
    def init(name: str, **changes) -> bytes:
        cfg = load_train_config(write_config(route, tmp_path / f"{name}.yaml", **changes))
        return (Trainer(cfg, tmp_path / name, progress=False).cluster()).read_bytes()

    for branch_init in ("random", "pca"):
        fixed = init(f"s0{branch_init}", **{"seed": 0, "cluster.seed": 0, "cluster.branch_init": branch_init})
        assert init(f"s1fixed{branch_init}", **{"seed": 1, "cluster.seed": 0, "cluster.branch_init": branch_init}) == fixed
        assert init(f"s1{branch_init}", **{"seed": 1, "cluster.branch_init": branch_init}) != fixed
    for bad, named in (("-1", r"cluster\.seed must be >= 0 or null, got -1"),
                       ("x", "cluster: seed must be an integer or null, got 'x'"),
                       ("1.5", "cluster: seed must be an integer or null, got 1.5"),
                       ("true", "cluster: seed must be an integer or null, got True")):
        with pytest.raises(ConfigError, match=named):
            load_train_config(write_config(route, tmp_path / "bad.yaml"), [f"cluster.seed={bad}"])
    assert load_train_config(write_config(route, tmp_path / "null.yaml"), ["cluster.seed=null"]).cluster.seed is None


def test_each_source_positives_take_every_traversal_in_turn_while_training(route, tmp_path, monkeypatch):
    """The trainer hands the miner each image's traversal and the epoch: with positives allowed from the
    query's own traversal too, a query's positive comes from both over two epochs, not from the nearer only."""
    from densernet_core.training import mining

    chosen: dict[tuple[int, int], int] = {}
    mine = mining.TupleMiner.mine

    def spy(self, query, q_desc, db_desc, epoch=0):
        p, negs = mine(self, query, q_desc, db_desc, epoch)
        chosen[query, epoch] = str(self.db_groups[p])
        return p, negs

    monkeypatch.setattr(mining.TupleMiner, "mine", spy)
    changes = {"optim.epochs": 2, "data.train.positives_from_other_source": False, "mining.positive": "each_source"}
    Trainer(load_train_config(write_config(route, tmp_path / "each.yaml", **changes)), tmp_path / "run",
            progress=False).train()
    queries = {q for q, _ in chosen}
    both = [q for q in queries if (q, 0) in chosen and (q, 1) in chosen]
    assert both and all(chosen[q, 0] != chosen[q, 1] for q in both)


def test_weight_average_continues_across_a_resume(route, tmp_path):
    run = tmp_path / "run"
    one = write_config(route, tmp_path / "a.yaml", **{"optim.epochs": 1, "optim.average_from": 1})
    Trainer(load_train_config(one), run, progress=False).train()
    (run / "model.safetensors").unlink()  # as if interrupted after the first epoch
    two = write_config(route, tmp_path / "b.yaml", **{"optim.epochs": 2, "optim.average_from": 1})
    Trainer(load_train_config(two), run, progress=False).train()
    rows = [r.split(",") for r in (run / "log.csv").read_text().splitlines()[1:]]
    with safe_open(str(run / "average.safetensors"), "pt") as f:
        assert int(f.metadata()["steps"]) == int(rows[1][1])  # both epochs' steps, not only the resumed one's


def similarity_table(checkpoint: Path, trainer: Trainer) -> torch.Tensor:
    model = load_model(checkpoint)
    images = prepare_batch(trainer.data.paths, model.config.image_size, model.config.preprocessing)
    with torch.no_grad():
        v = TrainingHead(model).eval()(images)
    return v @ v.T


def listwise_kl(teacher: torch.Tensor, student: torch.Tensor, temperature: float) -> float:
    """Mean over images of KL(teacher || student) between their softmaxes over the other images."""
    off = ~torch.eye(len(teacher), dtype=torch.bool)
    t, s = (x[off].view(len(x), -1) / temperature for x in (teacher, student))
    return float(torch.nn.functional.kl_div(s.log_softmax(1), t.softmax(1), reduction="batchmean"))


def test_distillation_pulls_the_student_towards_the_teachers_similarities(route, tmp_path):
    teachers = []
    for seed in (0, 1):
        cfg = load_train_config(write_config(route, tmp_path / f"t{seed}.yaml", seed=seed, **{"model.pca_dim": 0}))
        teachers.append(str(Trainer(cfg, tmp_path / f"teacher{seed}", progress=False).train()))
    plain = load_train_config(write_config(route, tmp_path / "plain.yaml", seed=2, **{"model.pca_dim": 0}))
    distilled = load_train_config(write_config(route, tmp_path / "student.yaml", seed=2, **{
        "model.pca_dim": 0, "distill.teachers": teachers, "distill.weight": 20.0}))
    trainer = Trainer(distilled, tmp_path / "student", progress=False)
    table, where = trainer.teacher_similarities()
    # The ensemble's table: the mean of each teacher's cosines (its concatenated descriptors / sqrt(2)).
    by_hand = (similarity_table(Path(teachers[0]), trainer) + similarity_table(Path(teachers[1]), trainer)) / 2
    rows = trainer.data.train_rows
    assert torch.allclose(table, by_hand[rows][:, rows], atol=5e-3)  # taps cached in float16
    assert (where[rows] == np.arange(len(rows))).all()
    student = trainer.train()
    baseline = Trainer(plain, tmp_path / "plain", progress=False).train()
    gap_student, gap_plain = (listwise_kl(by_hand, similarity_table(c, trainer), 0.05) for c in (student, baseline))
    assert gap_student < 0.8 * gap_plain, (gap_student, gap_plain)


def test_distillation_refuses_missing_or_incompatible_teachers(route, tmp_path):
    with pytest.raises(ConfigError, match=r"distill.teachers\[0\]: no such checkpoint file"):
        load_train_config(write_config(route, tmp_path / "a.yaml", **{"distill.teachers": [str(tmp_path / "nope")]}))
    with pytest.raises(ConfigError, match="temperature"):
        load_train_config(write_config(route, tmp_path / "b.yaml", **{"distill.temperature": 0}))
    other = load_train_config(write_config(route, tmp_path / "c.yaml", **{"model.image_size": [48, 48], "optim.epochs": 1}))
    teacher = Trainer(other, tmp_path / "other", progress=False).cluster()
    cfg = load_train_config(write_config(route, tmp_path / "d.yaml", **{"distill.teachers": [str(teacher)]}))
    with pytest.raises(ValueError, match="image_size differ"):
        Trainer(cfg, tmp_path / "student", progress=False).train()


def test_frozen_head_parts_keep_their_initialisation_and_the_rest_trains(route, tmp_path):
    """`optim.frozen` holds a head part at its label-free initialisation (PCA branches, k-means NetVLAD), so
    a recipe trial can fit fewer weights to few places; what is not frozen must still move."""
    for part, other in (("branches", "netvlad"), ("netvlad", "branches")):
        run = tmp_path / part
        cfg = load_train_config(write_config(route, tmp_path / f"{part}.yaml", **{"optim.epochs": 1}), [f"optim.frozen=[{part}]"])
        assert cfg.optim.frozen == (part,)
        final = Trainer(cfg, run, progress=False).train()
        init, last = load_file(str(run / "init.safetensors")), load_file(str(run / "last.safetensors"))
        held = [k for k in init if k.startswith(part + ".")]
        moved = [k for k in init if k.startswith(other + ".") and init[k].is_floating_point()]
        assert held and all(torch.equal(init[k], last[k]) for k in held)
        assert moved and any(not torch.equal(init[k], last[k]) for k in moved)
        assert final.is_file()
    path = write_config(route, tmp_path / "bad.yaml")
    for bad, named in ((["optim.frozen=[trunk]"], "optim.frozen"), (["optim.frozen=branches"], "a list of head parts"),
                       (["optim.frozen=[branches,netvlad]"], "nothing of the head would train")):
        with pytest.raises(ConfigError, match=named):
            load_train_config(path, bad)


def test_relative_rates_scale_each_tensor_and_survive_a_resume(route, tmp_path):
    """`optim.lr_scale: relative` gives each tensor lr x its RMS, so the tiny PCA branch weights are not
    rewritten by Adam's unit-size steps; the rates must come back with the optimizer state on a resume."""
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.fill_(-3.0), net[0].bias.zero_(), net[1].weight.copy_(torch.tensor([[1.0, -1.0], [7.0, 1.0]]))
    net[1].bias.requires_grad_(False)
    groups = relative_rate_groups(net, 0.01)
    assert [g["name"] for g in groups] == ["0.weight", "0.bias", "1.weight"]
    assert [g["lr"] for g in groups] == pytest.approx([0.03, 0.01, 0.01 * 13 ** 0.5])  # zeros keep lr itself
    change = {}
    for scale in ("absolute", "relative"):
        run = tmp_path / scale
        cfg = load_train_config(write_config(route, tmp_path / f"{scale}.yaml", **{"optim.epochs": 1}), [f"optim.lr_scale={scale}"])
        Trainer(cfg, run, progress=False).train()
        init, last = load_file(str(run / "init.safetensors")), load_file(str(run / "last.safetensors"))
        change[scale] = {k: float((last[k] - init[k]).norm() / init[k].norm()) for k in init
                         if k.startswith(("branches.", "netvlad.")) and k.endswith("weight")}
    start = load_file(str(tmp_path / "absolute" / "init.safetensors"))  # both runs start from the same clustering
    assert all(torch.equal(start[k], v) for k, v in load_file(str(tmp_path / "relative" / "init.safetensors")).items())
    sizes = {k: float(start[k].float().pow(2).mean().sqrt()) for k in change["absolute"]}
    smallest = min(sizes, key=sizes.get)  # a PCA branch: the tensor one absolute rate rewrites most
    assert change["relative"][smallest] < 0.5 * change["absolute"][smallest]
    assert any(change["relative"][k] > 0 for k in change["relative"])
    run = tmp_path / "relative"
    (run / "model.safetensors").unlink()  # as if interrupted after the first epoch
    cfg = load_train_config(write_config(route, tmp_path / "again.yaml", **{"optim.epochs": 2}), ["optim.lr_scale=relative"])
    Trainer(cfg, run, progress=False).train()
    with safe_open(str(run / "last_state.safetensors"), "pt") as f:
        groups = json.loads(f.metadata()["train_state"])["param_groups"]
    init = load_file(str(run / "init.safetensors"))
    assert {g["name"]: g["initial_lr"] for g in groups} == pytest.approx(
        {k: 1e-4 * float(init[k].float().pow(2).mean().sqrt()) for k in (g["name"] for g in groups)}, rel=1e-5)
    with pytest.raises(ConfigError, match="optim.lr_scale"):
        load_train_config(write_config(route, tmp_path / "bad.yaml"), ["optim.lr_scale=per_layer"])


def test_netvlad_rate_applies_to_netvlad_only(route, tmp_path):
    """`optim.lr_netvlad` gives NetVLAD its own rate while the branches keep `optim.lr` (a recipe trial: the
    assignment weights barely move at the branches' rate); it is refused beside relative rates."""
    path = write_config(route, tmp_path / "a.yaml", **{"optim.epochs": 1})
    cfg = load_train_config(path, ["optim.lr_netvlad=0.01"])
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    model = load_model(trainer.cluster())
    opt, _ = trainer._optimizer(model)
    rates = {g["name"]: (g["lr"], {id(p) for p in g["params"]}) for g in opt.param_groups}
    assert rates["netvlad"] == (0.01, {id(p) for p in model.netvlad.parameters()})
    assert rates["rest"][0] == 1e-4 and {id(p) for p in model.branches.parameters()} <= rates["rest"][1]
    base, _ = Trainer(load_train_config(path), tmp_path / "run", progress=False)._optimizer(model)
    assert len(base.param_groups) == 1 and base.param_groups[0]["lr"] == 1e-4
    for bad in (["optim.lr_netvlad=-1"], ["optim.lr_netvlad=0.01", "optim.lr_scale=relative"]):
        with pytest.raises(ConfigError, match="optim.lr_netvlad"):
            load_train_config(path, bad)
