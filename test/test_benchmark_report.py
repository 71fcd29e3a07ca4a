"""What every benchmark report carries: the machine a figure came from, and figures over seeds as mean ± sd
(issue 22: trained checkpoints and times differ between CPUs, and one seed is one draw)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from benchmarks.bench_ensemble import combine, projected
from benchmarks.bench_weight_change import weight_change
from benchmarks.report import fmt_spread, machine, machine_line, save_report, spread, spread_rows

ZEN5 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16
processor\t: 1
model name\t: another
flags\t\t: fpu
"""
ZEN3 = """processor\t: 0
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx2 fma
"""


def test_machine_names_the_cpu_generation_and_its_int8_paths(tmp_path: Path) -> None:
    (tmp_path / "zen5").write_text(ZEN5)
    (tmp_path / "zen3").write_text(ZEN3)
    new, old = machine(tmp_path / "zen5"), machine(tmp_path / "zen3")
    # a VM's bare "AMD EPYC" is told apart by family and model; the first processor's entry counts
    assert new["cpu"] == "AMD EPYC, family 26 model 2" and old["cpu"] == "AMD EPYC 7B13, family 25 model 1"
    assert new["simd"] == ["avx512_vnni", "avx512_bf16", "avx512f", "avx2"] and new["vnni"] is True
    assert old["simd"] == ["avx2"] and old["vnni"] is False
    line = machine_line(old)
    assert "AMD EPYC 7B13, family 25 model 1" in line and "avx2" in line and "threads" in line
    assert machine(tmp_path / "absent")["cpu"]  # not Linux: the platform's name, not an error


def test_spread_is_the_sample_sd_and_counts_checkpoints_without_a_value() -> None:
    s = spread([79, 70, None, 74])
    assert s["n"] == 3 and s["of"] == 4
    assert s["mean"] == np.mean([79, 70, 74]) and abs(s["sd"] - np.std([79, 70, 74], ddof=1)) < 1e-12
    assert fmt_spread(s, digits=1) == "74.3 ± 4.5 (3 of 4)"
    assert fmt_spread(spread([0.94, 0.90]), 100, 0, " %") == "92 ± 3 %"
    assert fmt_spread(spread([0.5]), digits=2) == "0.50"  # one value: no sd to give
    assert fmt_spread(spread([None, None])) == "-"


def test_spread_rows_takes_each_figure_of_each_row_across_runs() -> None:
    runs = [{"forward": {"single": {"fixes": 4, "median": 1.1}, "filtered": {"fixes": 79, "median": 0.68}}},
            {"forward": {"single": {"fixes": 0, "median": None}, "filtered": {"fixes": 70, "median": 0.70}}}]
    rows = spread_rows(runs, ["forward"], ("fixes", "median"))
    assert rows["forward"]["filtered"]["fixes"] == spread([79, 70])
    assert rows["forward"]["single"]["median"] == spread([1.1, None])  # the run without a fix is counted apart
    assert rows["forward"]["single"]["fixes"]["mean"] == 2.0


def test_a_saved_report_names_its_machine(tmp_path: Path, capsys) -> None:
    save_report(tmp_path, {"rows": [1]}, "| a |\n|---|\n| 1 |")
    table = (tmp_path / "table.md").read_text()
    assert table.startswith("Machine: ") and table.rstrip().endswith("| 1 |")
    assert json.loads((tmp_path / "machine.json").read_text())["cores"] >= 1
    assert json.loads((tmp_path / "results.json").read_text()) == {"rows": [1]}
    assert capsys.readouterr().out.startswith("Machine: ")


def test_weight_change_is_relative_to_the_start_and_skips_an_unchanged_trunk(tmp_path: Path) -> None:
    """bench_weight_change's figures (docs/TRAINING.md quotes them): ||w - w0|| / ||w0|| and the norm ratio per
    tensor; trunk tensors only where training moved them; a folder without both checkpoints named."""
    start = {"netvlad.centroids": torch.tensor([3.0, 4.0]), "trunk.a": torch.ones(2), "trunk.b": torch.ones(2),
             "branches.0.bias": torch.zeros(2)}
    trained = {"netvlad.centroids": torch.tensor([3.0, 4.0]) * 2, "trunk.a": torch.ones(2),
               "trunk.b": torch.tensor([1.0, 2.0]), "branches.0.bias": torch.ones(2)}
    save_file(start, str(tmp_path / "init.safetensors"))
    save_file(trained, str(tmp_path / "model.safetensors"))
    rows = weight_change(tmp_path)
    assert set(rows) == {"netvlad.centroids", "trunk.b", "branches.0.bias"}
    c = rows["netvlad.centroids"]
    assert (c["relative_change"], c["norm_ratio"]) == pytest.approx((1.0, 2.0))
    assert c["rms_start"] == pytest.approx((12.5) ** 0.5) and c["rms_change"] == pytest.approx((12.5) ** 0.5)
    assert rows["trunk.b"]["relative_change"] == pytest.approx(1 / 2 ** 0.5)
    assert np.isnan(rows["branches.0.bias"]["relative_change"])  # no starting norm to compare with
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        weight_change(tmp_path)


def test_an_ensemble_scores_the_members_mean_cosine_and_its_projection_keeps_each_member_apart() -> None:
    rng = np.random.default_rng(0)

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    members = [{"a": unit(rng.standard_normal((4, 64))), "b": unit(rng.standard_normal((3, 64)))} for _ in range(3)]
    both = combine(members, (0, 2))
    assert both["a"].shape == (4, 128)
    np.testing.assert_allclose(both["a"] @ both["b"].T,
                               (members[0]["a"] @ members[0]["b"].T + members[2]["a"] @ members[2]["b"].T) / 2,
                               rtol=1e-5, atol=1e-6)
    small = projected(members, 32)
    assert small[0]["a"].shape == (4, 32)
    for k in range(3):  # each member through its own orthogonal matrix, the same in every group that holds it
        np.testing.assert_allclose(small[k]["a"], members[k]["a"] @ _member_matrix(64, 32, k), rtol=1e-5, atol=1e-6)
    assert not np.allclose(_member_matrix(64, 32, 0), _member_matrix(64, 32, 1))


def _member_matrix(d: int, k: int, member: int) -> np.ndarray:
    from benchmarks.bench_ensemble import PROJECTION_SEED
    from densernet_core.mapping.index import random_orthogonal

    q = random_orthogonal(d, k, PROJECTION_SEED + member)
    np.testing.assert_allclose(q.T @ q, np.eye(k), atol=1e-5)
    return q


def test_ensemble_group_sample_keeps_the_disjoint_groups_and_its_size():
    import itertools

    from benchmarks.bench_ensemble import sample_groups

    every = list(itertools.combinations(range(15), 5))
    disjoint = [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9), (10, 11, 12, 13, 14)]
    picked = sample_groups(every, disjoint, 40)
    assert len(picked) == len(set(picked)) == 40 and set(disjoint) <= set(picked) and set(picked) <= set(every)
    assert picked == sample_groups(every, disjoint, 40)  # seeded: a rerun scores the same groups
    assert sample_groups(every[:30], disjoint, 40) == every[:30]  # under the cap: every group


def test_running_centring_is_causal_and_starts_from_the_maps_mean() -> None:
    """Query t is centred with what a robot has at t: later frames must not move it."""
    from benchmarks.bench_posthoc import centred_offline, centred_running

    rng = np.random.default_rng(0)
    q, db = rng.normal(size=(12, 8)) + 3.0, rng.normal(size=(20, 8)) + 3.0
    full, mapped = centred_running(q, db, prior=2.0)
    changed = q.copy()
    changed[6:] = rng.normal(size=(6, 8)) - 5.0
    part, _ = centred_running(changed, db, prior=2.0)
    np.testing.assert_allclose(part[:6], full[:6])
    assert not np.allclose(part[6:], full[6:])
    # frame 0: its own descriptor and the map's mean, weighted 1 : prior
    expected = q[0] - (2.0 * db.mean(axis=0) + q[0]) / 3.0
    np.testing.assert_allclose(full[0], expected / np.linalg.norm(expected))
    np.testing.assert_allclose(np.linalg.norm(mapped, axis=1), 1.0)
    # the offline bound is not causal: later frames move frame 0
    assert not np.allclose(centred_offline(changed, db)[0][0], centred_offline(q, db)[0][0])


def test_nuisance_removal_takes_out_the_shift_between_traversals_and_keeps_the_places() -> None:
    from benchmarks.bench_posthoc import nuisance_basis, without

    rng = np.random.default_rng(1)
    places = rng.normal(size=(40, 16))
    light = np.zeros(16)
    light[3] = 4.0  # night moves every place the same way
    fit = {"day": places, "night": places + light + 0.01 * rng.normal(size=(40, 16))}
    basis = nuisance_basis(fit, 1)
    assert abs(abs(basis[0, 3]) - 1.0) < 1e-3
    drop = without(basis)
    day, night = drop(places), drop(places + light)
    np.testing.assert_allclose(np.linalg.norm(day, axis=1), 1.0)
    assert np.all(np.sum(day * night, axis=1) > 0.999)  # the same place matches again
    assert np.mean(np.abs(day @ day.T - np.eye(40))) > 0.05  # and the places stay apart
    with pytest.raises(ValueError, match="fewer than 10 per direction"):
        nuisance_basis(fit, 5)


def test_light_shift_is_the_mean_night_excess_and_the_running_version_scales_it_causally() -> None:
    """The shift holds light only (places and the side of the path do not count); a run shows it in proportion,
    later frames do not count."""
    from benchmarks.bench_final_stage import unit
    from benchmarks.bench_posthoc import light_shift, shift_removed, shifted_running

    rng = np.random.default_rng(2)
    places = rng.normal(size=(30, 16))
    light, side = np.zeros(16), np.zeros(16)
    light[5], side[9] = 3.0, 1.0
    fit = {"day_left": places - side, "day_right": places + side, "night_right": places + side + light}
    np.testing.assert_allclose(light_shift(fit), light, atol=1e-12)
    desc = {"day_left": places, "night_right": places + light}
    known = shift_removed(desc, light)
    np.testing.assert_allclose(known["night_right"], places / np.linalg.norm(places, axis=1, keepdims=True))
    assert known["day_left"] is desc["day_left"]
    # a run that shows the whole shift has it taken out (once the map's prior is outweighed), a day run keeps its queries
    db = rng.normal(size=(200, 16))
    db -= db.mean(axis=0)
    night_q = db[:100] + light
    out_night, mapped = shifted_running(night_q, db, light, prior=1.0)
    assert mapped is db
    alpha_last = (night_q.sum(axis=0) / 101) @ light / (light @ light)  # the running mean's excess (map mean 0), on the shift
    assert 0.9 < alpha_last < 1.1
    expected = night_q[-1] - alpha_last * light
    np.testing.assert_allclose(out_night[-1], expected / np.linalg.norm(expected), atol=1e-9)
    out_day = shifted_running(db, db, light)[0]  # a day run over the whole map: its mean is the map's, nothing taken out
    np.testing.assert_allclose(out_day[-1], unit(db)[-1], atol=1e-9)
    changed = night_q.copy()
    changed[50:] -= light
    np.testing.assert_allclose(shifted_running(changed, db, light)[0][:50], out_night[:50])


def test_first_stage_settings_parse_and_refuse_by_name():
    """`bench_first_stage.py --settings`: the re-rank depth is optional, and a malformed setting names itself."""
    import argparse

    from benchmarks.bench_first_stage import setting

    assert setting("map:256:2000:64") == ("map", 256, 2000, 64)
    assert setting("sq8@1024/alone:128:32") == ("sq8@1024/alone", 128, 32)
    for bad in ("map:256", "map:x:2000", ":1:2", "map:0:1000", "map:1:2:3:4"):
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(repr(bad))):
            setting(bad)
