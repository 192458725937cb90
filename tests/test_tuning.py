"""The tuning protocol (reproduce.tuning): grids, their extension past an edge, the choice from
the tuning seeds' records, confirmation on other seeds, and resuming with the same command."""

import json

import pytest
import yaml

from conftest import ROOT
from results.protocol import point_label
from results.records import load_records
from results.study import choose, loss_area

CONFIG = {
    "about": {"title": "Tuning test"},
    "common": {"task": "digits", "model": "digits_cnn", "workers": 2, "local_batch": 32, "base_batch": 32,
               "epochs": 1, "schedule": "constant", "momentum": 0.9, "nesterov": True, "log_every": 2,
               "weight_decay": 0.0, "engine": "virtual", "target_loss": [2.0, 1.5]},
    "scales": {"laptop": {"seeds": 2, "tuning": {"seeds": [100], "extend": 1, "grids": {
        "sgd": {"base_lr": [0.02, 0.04]},
        "extrap-sgd": {"around": "sgd", "grid": {"gamma_factor": [0.5, 2.0]}}}}}},
    "cells": {"sgd": {"perturbation": "none"}, "extrap-sgd": {"perturbation": "extrap"}},
}


@pytest.fixture
def item(tmp_path, monkeypatch):
    import reproduce.config as config

    path = tmp_path / "tuned.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    monkeypatch.setattr(config, "config_path", lambda name: path)
    return "figure1"  # its script and --help; the config is the one above


def _run(item, out):
    from reproduce.runner import main

    return main(item, ["--scale", "laptop", "--out", str(out), "--no-progress"])


def test_tuning_extends_an_edge_then_confirms_the_choice_on_other_seeds(item, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(item, out) == 0
    records = load_records(out / "records.jsonl")
    tune = [r for r in records if r["stage"] == "tune"]
    confirm = [r for r in records if r["stage"] == "confirm"]
    assert {r["seed"] for r in tune} == {100} and {r["seed"] for r in confirm} == {0, 1}

    def by_point(cell):
        points = {}
        for r in tune:
            if r["cell"] == cell:
                points.setdefault(json.dumps(r["point"], sort_keys=True), []).append(r)
        return points

    sgd = by_point("sgd")
    rates = sorted(json.loads(k)["base_lr"] for k in sgd)
    assert len(rates) == 3 and rates[1:] == [0.02, 0.04] or rates[:2] == [0.02, 0.04]  # one step past an edge
    assert 0.01 in rates or 0.08 in rates
    chosen = {r["cell"]: r["point"] for r in confirm}
    assert chosen["sgd"] == json.loads(choose(sgd))  # the lowest mean area under the loss curve
    extrap = by_point("extrap-sgd")
    extrap_rates = {json.loads(k)["base_lr"] for k in extrap}
    i = rates.index(chosen["sgd"]["base_lr"])
    assert set(rates[max(0, i - 1):i + 2]) <= extrap_rates  # SGD's rate and its neighbours,
    assert len(extrap_rates - set(rates)) <= 1  # and one step past an edge where extrap's best lies there
    assert chosen["extrap-sgd"] == json.loads(choose(extrap))
    assert {"gamma_factor", "base_lr"} <= set(chosen["extrap-sgd"])
    for r in confirm:  # each confirmation run ran the chosen point
        assert all(r["config"][k] == v for k, v in r["point"].items())
        assert loss_area(r) is not None and all("gamma" in p and "lr" in p for p in r["trace"])
    said = capsys.readouterr().out
    assert "lies at an edge of its line; adding" in said and "chosen for sgd" in said
    before = (out / "records.jsonl").read_text()
    assert _run(item, out) == 0  # the same command: nothing new to run, the same choices
    assert (out / "records.jsonl").read_text() == before
    assert "chosen for sgd: " in capsys.readouterr().out


def test_a_point_is_chosen_only_inside_its_line_along_every_axis():
    """The grid SGD had in Figure 1's laptop study: η_base × τ, τ extended twice along η_base 0.05.
    The best point (0.05, 0.004) is inside the global τ and η_base axes, but on its own line
    along η_base (τ = 0.004) nothing else was tried: its neighbours 0.025 and 0.1 are added."""
    from reproduce.tuning import next_points

    grid = [(lr, t) for lr in (0.025, 0.05, 0.1, 0.2) for t in (0.02, 0.1)] + [(0.05, 0.004), (0.05, 0.0008)]
    points = [{"base_lr": lr, "trust": t} for lr, t in grid]
    axes = {"base_lr": [0.025, 0.05, 0.1, 0.2], "trust": [0.02, 0.1, 0.004, 0.0008]}
    extensions = {"base_lr": 0, "trust": 2}
    best = {"base_lr": 0.05, "trust": 0.004}
    assert next_points(points, axes, best, extensions, 2) == [{"base_lr": 0.025, "trust": 0.004},
                                                            {"base_lr": 0.1, "trust": 0.004}]
    assert extensions == {"base_lr": 0, "trust": 2}  # values the axis already had: no extension spent
    # the line filled and 0.1 best: 0.2 is next along η_base, and 0.0008 along τ (at η_base 0.1
    # the lowest τ tried is 0.004); 0.2 best: its τ line too, and one step past the axis (0.4)
    points += [{"base_lr": 0.025, "trust": 0.004}, {"base_lr": 0.1, "trust": 0.004}]
    assert next_points(points, axes, {"base_lr": 0.1, "trust": 0.004}, extensions, 2) == [
        {"base_lr": 0.2, "trust": 0.004}, {"base_lr": 0.1, "trust": 0.0008}]
    points += [{"base_lr": 0.2, "trust": 0.004}, {"base_lr": 0.1, "trust": 0.0008}]
    beyond, below = next_points(points, axes, {"base_lr": 0.2, "trust": 0.004}, extensions, 2)
    assert beyond == {"base_lr": pytest.approx(0.4), "trust": 0.004} and below == {"base_lr": 0.2, "trust": 0.0008}
    assert axes["base_lr"][-1] == beyond["base_lr"] and extensions["base_lr"] == 1
    # τ 0.0008 best: the τ axis has spent its two steps, so nothing goes beyond it; its η_base line
    # (0.05, 0.1, 0.2 tried) still lacks 0.025
    assert next_points(points, axes, {"base_lr": 0.05, "trust": 0.0008}, extensions, 2) == [
        {"base_lr": 0.025, "trust": 0.0008}]
    assert next_points(points, axes, {"base_lr": 0.05, "trust": 0.02}, extensions, 2) == []  # inside both lines


def test_an_unordered_axis_gets_its_missing_values_on_the_line():
    from reproduce.tuning import next_points

    points = [{"gamma_factor": g, "lars_lookahead": la} for g in (0.25, 1.0, 4.0) for la in (False, True)]
    points.append({"gamma_factor": 0.0625, "lars_lookahead": True})  # extended with the look-ahead trust on
    axes = {"gamma_factor": [0.25, 1.0, 4.0, 0.0625], "lars_lookahead": [False, True]}
    got = next_points(points, axes, {"gamma_factor": 0.0625, "lars_lookahead": True}, {"gamma_factor": 1,
                                                                                      "lars_lookahead": 0}, 1)
    assert got == [{"gamma_factor": 0.0625, "lars_lookahead": False}]  # the γ axis's one step is spent


def test_a_bad_tuning_section_is_one_line(item, tmp_path, capsys, monkeypatch):
    import reproduce.config as config

    bad = json.loads(json.dumps(CONFIG))
    bad["scales"]["laptop"]["tuning"]["grids"]["extrap-sgd"]["around"] = "nothing"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    monkeypatch.setattr(config, "config_path", lambda name: path)
    assert _run(item, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "tuning.grids.extrap-sgd.around" in err and len(err.strip().splitlines()) == 1


def _record(cell, seed, losses, stage, point, status="completed", every=2):
    return {"item": "figure1", "variant": json.dumps(point), "cell": cell, "seed": seed, "status": status, "stage": stage,
            "point": point, "panel": "default", "global_batch": 1024,
            "order": ["sgd", "extrap-sgd", "sgd-no-momentum"].index(cell),
            "config": {"target_loss": [1.5, 1.0]},
            "trace": [{"step": every * (i + 1), "batch_loss": x, "train_loss_subset": 9.9, "train_loss_bn": x}
                      for i, x in enumerate(losses)]}


def test_loss_area_choice_and_paired_difference_by_hand(tmp_path):
    from results.protocol import build_tuned_study

    r = _record("sgd", 0, [2.0, 1.0, 1.0], "tune", {"base_lr": 0.1})
    assert loss_area(r) == pytest.approx((2 * 1.5 + 2 * 1.0) / 4)  # trapezoids over steps 2..6, per step
    assert loss_area({**r, "status": "diverged"}) == float("inf")
    records = [
        _record("sgd", 100, [2.0, 1.0, 1.0], "tune", {"base_lr": 0.1}),  # area 1.25
        _record("sgd", 100, [2.0, 1.4, 0.8], "tune", {"base_lr": 0.2}),  # area 1.4
        _record("extrap-sgd", 100, [2.0, 0.8, 0.8], "tune", {"base_lr": 0.1, "gamma_factor": 1.0}),  # 1.1
        _record("extrap-sgd", 100, [2.0, 0.5, 0.5], "tune", {"base_lr": 0.1, "gamma_factor": 4.0}, "diverged"),
        *(_record("sgd", s, [2.0, 1.0, 1.0 - 0.1 * s], "confirm", {"base_lr": 0.1}) for s in (0, 1, 2)),
        *(_record("extrap-sgd", s, [2.0, 0.8, 0.8 + 0.1 * s], "confirm", {"base_lr": 0.1, "gamma_factor": 1.0})
          for s in (0, 1, 2)),
    ]
    study = build_tuned_study(records, "figure1")
    assert json.loads(study.chosen[("default", "sgd")]) == {"base_lr": 0.1}
    assert json.loads(study.chosen[("default", "extrap-sgd")]) == {"base_lr": 0.1, "gamma_factor": 1.0}
    # per seed s: extrap (2·1.4 + 2·(1.6 + 0.1 s)/2)/4 minus sgd (2·1.5 + 2·(2 − 0.1 s)/2)/4 = −0.15 + 0.05 s
    assert study.paired_difference("default", "extrap-sgd") == pytest.approx([-0.15, -0.1, -0.05])
    assert study.tuning_seeds == [100] and study.confirm_seeds == [0, 1, 2]
    md = study.to_markdown()
    assert "γ factor 1 ✓" in md and "— (1 diverged)" in md and "3/3" in md
    out = tmp_path / "study"
    out.mkdir()
    (out / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    import results

    written = {p.name for p in results.write_all(out)}
    assert {"figure1.study.md", "figure1.study.csv", "figure1.study.png", "figure1.gamma.png"} <= written


def test_the_study_reads_a_point_once_per_seed_and_confirms_only_the_chosen_point():
    """Records from a protocol rerun after its grid changed: the same rate written 0.2 and reached
    as 0.20000000000000004, with its keys in another order, is one point; a seed run twice counts
    once (its last record, as the runner keeps it); confirmation runs of an earlier choice are set
    apart, not averaged into the chosen point's."""
    from results.protocol import build_tuned_study, point_key, stage_runs

    assert point_key({"base_lr": 0.20000000000000004, "trust": 0.004}) == point_key({"trust": 0.004, "base_lr": 0.2})
    records = [
        _record("sgd", 100, [2.0, 1.0, 1.0], "tune", {"base_lr": 0.1}),  # area 1.25
        _record("sgd", 100, [2.0, 2.0, 2.0], "tune", {"trust": 0.004, "base_lr": 0.20000000000000004}),  # 2.0, replaced
        _record("sgd", 100, [2.0, 1.0, 0.6], "tune", {"base_lr": 0.2, "trust": 0.004}),  # area 1.15: chosen
        *(_record("sgd", s, [2.0, 1.0, 1.0], "confirm", {"base_lr": 0.1}) for s in (0, 1)),  # an earlier choice
        *(_record("sgd", s, [2.0, 1.0, 0.5], "confirm", {"base_lr": 0.2, "trust": 0.004}) for s in (0, 1, 2)),
    ]
    runs = stage_runs(records, "figure1", "tune")[("default", "sgd")]
    assert sorted(len(v) for v in runs.values()) == [1, 1]
    assert loss_area(runs[point_key({"base_lr": 0.2, "trust": 0.004})][0]) == pytest.approx((2 * 1.5 + 2 * 0.8) / 4)
    study = build_tuned_study(records, "figure1")
    assert json.loads(study.chosen[("default", "sgd")]) == {"base_lr": 0.2, "trust": 0.004}
    key, confirmed = study.confirm[("default", "sgd")]
    assert key == study.chosen[("default", "sgd")] and confirmed.seeds == [0, 1, 2]
    [(where, earlier)] = study.superseded.items()
    assert where == ("default", "sgd", point_key({"base_lr": 0.1})) and earlier.seeds == [0, 1]
    md = study.to_markdown()
    assert "| η_base 0.2, τ 0.004 ✓ | 1.150 |" in md and "| η_base 0.1 | 1.250 |" in md
    assert "not shown above" in md and "at η_base 0.1, 2 seeds" in md
    assert "superseded,default,sgd" in study.to_csv()


def test_the_later_methods_are_compared_with_each_other_too():
    """Figure 7's question is also extrap without momentum against its control without momentum:
    the study gives every pair of methods, paired by seed, not only each against the first."""
    from results.protocol import build_tuned_study

    records = [*(_record("sgd", s, [2.0, 1.0, 1.0], "confirm", {}) for s in (0, 1)),  # area 1.25
               *(_record("extrap-sgd", s, [2.0, 1.2, 1.2 + 0.2 * s], "confirm", {}) for s in (0, 1)),  # 1.4, 1.45
               *(_record("sgd-no-momentum", s, [2.0, 1.2, 1.0], "confirm", {}) for s in (0, 1))]  # 1.35
    study = build_tuned_study(records, "figure1")
    assert study.paired_difference("default", "sgd-no-momentum", "extrap-sgd") == pytest.approx([-0.05, -0.1])
    assert study.paired_difference("default", "sgd-no-momentum") == pytest.approx([0.1, 0.1])
    assert "- sgd-no-momentum − extrap-sgd (B = 1,024): -0.075 [" in study.to_markdown()


def test_a_cell_tuned_around_another_takes_that_cells_next_rate_before_stepping_past():
    """extrap-SGD tuned at SGD's rates 0.025, 0.05, 0.1 (SGD also tried 0.2): its best at 0.1 takes
    SGD's 0.2 (no extension spent, the exact value SGD ran); at 0.2, one step past: 0.4, not
    0.4000000000000001."""
    from reproduce.tuning import next_points

    axes = {"trust": [0.004], "base_lr": [0.025, 0.05, 0.1], "gamma_factor": [1.0]}
    points = [{"trust": 0.004, "base_lr": lr, "gamma_factor": 1.0} for lr in (0.025, 0.05, 0.1)]
    extensions = dict.fromkeys(axes, 0)
    known = {"base_lr": [0.025, 0.05, 0.1, 0.2]}
    best = {"base_lr": 0.1, "gamma_factor": 1.0, "trust": 0.004}  # as json.loads(sorted keys) gives it
    (added,) = next_points(points, axes, best, extensions, 2, known)
    assert added == {"trust": 0.004, "base_lr": 0.2, "gamma_factor": 1.0}
    assert extensions["base_lr"] == 0
    points.append(added)
    (beyond,) = next_points(points, axes, added, extensions, 2, known)
    assert beyond["base_lr"] == 0.4 and extensions["base_lr"] == 1


def test_a_rate_reached_by_arithmetic_is_the_same_run_as_the_rate_written():
    from reproduce import identity

    assert identity({"base_lr": 0.20000000000000004, "trust": 0.0007999999999999999, "betas": [0.9, 0.98]}) == \
        identity({"base_lr": 0.2, "trust": 0.0008, "betas": (0.9, 0.98)})
    assert identity({"base_lr": 0.2}) != identity({"base_lr": 0.2001})


@pytest.mark.parametrize("item", sorted(p.parent.name for p in (ROOT / "docs" / "laptop").glob("*/records.jsonl")
                                        if p.parent.name != "untuned"))
def test_the_collator_chooses_what_the_protocol_chose_in_the_committed_studies(item):
    """Tuning chooses among its grid; the collator among every tuning record of the study. Replayed
    on the committed records (nothing trains: every run the protocol asks for is looked up), each
    choice the protocol has made is the one its study table shows; a study still tuning (Figure 3)
    stops at its first missing run, and a finished one has every method chosen and confirmed."""
    from reproduce.config import parse_args, plan
    from reproduce.rundir import finished_runs
    from reproduce.tuning import run_protocol
    from results.protocol import build_tuned_study

    out = ROOT / "docs" / "laptop" / item
    args = parse_args(item, ["--scale", "laptop", "--out", str(out)])
    said: list[str] = []
    done = finished_runs(out / "records.jsonl")
    code = run_protocol(item, args, plan(item, args), out, lambda runs: 3 if any(r.key not in done for r in runs) else 0,
                        say=said.append)
    chosen = {line.split(": ", 1)[0].removeprefix("chosen for "): set(line.split(": ", 1)[1].split(", "))
              for line in said if line.startswith("chosen for ")}
    study = build_tuned_study(load_records(out / "records.jsonl"), item)
    shown = {(cell if panel == "default" else f"{cell} ({panel})"): set(point_label(json.loads(key)).split(", "))
             for (panel, cell), key in study.chosen.items() if key is not None}
    assert all(shown.get(name) == point for name, point in chosen.items()), (chosen, shown)
    if code == 0:  # a finished study: every method chosen, and confirmed
        assert chosen and set(shown) == set(chosen) and any(line.startswith("confirming") for line in said)


def test_a_best_point_at_an_edge_past_the_extension_limit_is_named():
    """η_base grown twice already (extend = 2) and the best still at its top: nothing is added, and
    the axis is named, so that the protocol can say the grid may not hold the best rate."""
    from reproduce.tuning import next_points

    points = [{"base_lr": v} for v in (0.00025, 0.0005, 0.001, 0.002, 0.004)]
    capped: list = []
    assert next_points(points, {"base_lr": [p["base_lr"] for p in points]}, {"base_lr": 0.004},
                       {"base_lr": 2}, 2, capped=capped) == []
    assert capped == ["base_lr"]
    inside: list = []
    assert next_points(points, {"base_lr": [p["base_lr"] for p in points]}, {"base_lr": 0.002},
                       {"base_lr": 2}, 2, capped=inside) == [] and inside == []
