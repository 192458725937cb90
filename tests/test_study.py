"""The study collator (results/study.py) on records written by hand: steps to a training-loss
target from the trace, the Student-t interval against a hand computation, the tuned rate per
method, divergence, the Markdown/CSV renderings, the figure, and `python -m results` writing the
study beside the tables."""

import csv
import io
import json
import math
import statistics

import pytest

import results
from results.records import presentation
from results.figures import write_study_figure
from results.study import build_study, interval, steps_to_target, study_items
from reproduce import config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
T_975 = {2: 12.706204736, 3: 4.302652730, 5: 2.776445105}  # Student t quantiles (0.975, n-1) from tables


def record(cell, variant, seed, losses, base_lr, status="completed", target=1.0, every=2, probe=None, top1=50.0):
    """A figure1 record at one rate whose trace has ``losses`` at steps every, 2·every, ..."""
    cfg = config.load_config("figure1")  # its cells, with a rate grid's variant labels
    cfg["about"]["variant_labels"] = {f"lr{r}": f"η_base = {r}" for r in (0.1, 0.2, 0.4)}
    variants = ["lr0.1", "lr0.2", "lr0.4"]
    return {"item": "figure1", "variant": variant, "cell": cell, **presentation(cfg, variants, variant, cell),
            "seed": seed, "status": status, "workers": 16, "local_batch": 64, "global_batch": 1024,
            "config": {"seed": seed, "base_lr": base_lr, "target_loss": target},
            "trace": [{"step": every * (i + 1), "batch_loss": x, "train_loss_subset": x} for i, x in enumerate(losses)],
            "final": {"test_top1": top1}, "curve": [{"step": every * len(losses), "test_top1": top1}],
            **({"smoothness": [{"step": 4, "smoothness": p} for p in probe]} if probe else {})}


def grid_records():
    """sgd: at 0.1 slow (3 seeds reach at 8, 10, 12); at 0.2 fast but one seed of three diverges.
    extrap-sgd: at 0.2 all three reach (4, 6, 6); at 0.4 none does."""
    slow = [[2.0, 1.5, 1.2, 1.0], [2.0, 1.5, 1.2, 1.1, 0.9], [2.0, 1.5, 1.2, 1.1, 1.05, 0.99]]
    return [
        *(record("sgd", "lr0.1", s, losses, 0.1, probe=[3.0, 5.0]) for s, losses in enumerate(slow)),
        record("sgd", "lr0.2", 0, [1.5, 0.9], 0.2), record("sgd", "lr0.2", 1, [1.5, 0.8], 0.2),
        record("sgd", "lr0.2", 2, [1.5, float("nan")], 0.2, status="diverged"),
        record("extrap-sgd", "lr0.2", 0, [1.4, 0.95], 0.2, probe=[2.0]),
        record("extrap-sgd", "lr0.2", 1, [1.3, 1.2, 0.7], 0.2, probe=[4.0]),
        record("extrap-sgd", "lr0.2", 2, [1.1, 1.05, 1.0], 0.2, probe=[3.0]),
        *(record("extrap-sgd", "lr0.4", s, [3.0, 2.5], 0.4) for s in range(3)),
    ]


def test_steps_to_target_is_the_first_traced_step_at_or_below_it():
    r = record("sgd", "lr0.1", 0, [2.0, 1.0, 0.5], 0.1)
    assert steps_to_target(r, 1.0) == 4 and steps_to_target(r, 0.6) == 6 and steps_to_target(r, 0.1) is None
    assert steps_to_target({"trace": [{"step": 2, "train_loss_subset": None}]}, 1.0) is None


def test_the_interval_is_students_t_by_hand():
    for values in ([8.0, 10.0], [4.0, 6.0, 6.0], [1.0, 2.0, 4.0, 8.0, 16.0]):
        mean, lo, hi = interval(values)
        half = T_975[len(values)] * statistics.stdev(values) / math.sqrt(len(values))
        assert mean == pytest.approx(statistics.fmean(values))
        assert (lo, hi) == pytest.approx((mean - half, mean + half), rel=1e-8)
    assert interval([3.0]) is None and interval([]) is None


def test_arms_count_reached_and_diverged_seeds_and_each_method_gets_its_tuned_rate():
    study = build_study(grid_records(), "figure1")
    assert study.target == 1.0 and study.methods == ["sgd", "extrap-sgd"] and study.global_batch == [1024]
    slow, fast = study.arms["sgd", "lr0.1"], study.arms["sgd", "lr0.2"]
    assert (slow.n, slow.reached, slow.steps) == (3, 3, [8, 10, 12])
    assert (fast.n, fast.reached, fast.n_diverged, fast.steps) == (3, 2, 1, [4, 4])
    assert fast.final_loss == [0.9, 0.8]  # the diverged seed has no final loss
    assert slow.smoothness == [4.0, 4.0, 4.0]
    # sgd: 3/3 at 0.1 beats 2/3 at 0.2 though 0.2 is faster; extrap: 3/3 at 0.2, 0/3 at 0.4
    assert study.tuned("sgd") == "lr0.1" and study.tuned("extrap-sgd") == "lr0.2"
    assert study.arms["extrap-sgd", "lr0.2"].steps == [4, 6, 6]


def test_the_target_is_the_newest_records_so_it_can_be_set_after_a_first_run():
    first = record("sgd", "lr0.1", 0, [2.0, 1.5, 1.2], 0.1, target=1.0)
    later = [record("sgd", "lr0.1", s, [2.0, 1.5, 1.2], 0.1, target=1.5) for s in (1, 2)]
    study = build_study([first, *later], "figure1")
    assert study.target == 1.5 and study.arms["sgd", "lr0.1"].steps == [4, 4, 4]  # the first run too, at 1.5
    assert build_study([*later, first], "figure1").target == 1.0


def test_markdown_and_csv_show_the_grid_and_the_tuned_rates():
    study = build_study(grid_records(), "figure1")
    md = study.to_markdown()
    assert "at most 1" in md and "global batch B = 1024" in md
    mean, lo, hi = interval([4.0, 6.0, 6.0])
    extrap_row = next(line for line in md.splitlines() if line.startswith("| extrap-SGD | η_base = 0.2 |"))
    assert f"3/3 | {mean:.1f} [{lo:.1f}, {hi:.1f}]" in extrap_row
    grid_row = next(line for line in md.splitlines() if line.startswith("| mini-batch SGD |") and "diverged" in line)
    assert "2/3, 1 diverged: 4.0" in grid_row and "| — |" in grid_row  # sgd never ran at 0.4
    rows = list(csv.DictReader(io.StringIO(study.to_csv())))
    tuned = {(r["method"], r["variant"]) for r in rows if r["shown"] == "1"}
    assert tuned == {("sgd", "lr0.1"), ("extrap-sgd", "lr0.2")}
    sgd_fast = next(r for r in rows if (r["method"], r["variant"]) == ("sgd", "lr0.2"))
    assert (sgd_fast["n"], sgd_fast["reached"], sgd_fast["n_diverged"], sgd_fast["steps"]) == ("3", "2", "1", "4;4")


def test_results_writes_the_study_and_its_figure(tmp_path):
    records = grid_records()
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    written = {p.name for p in results.write_all(tmp_path)}
    assert {"figure1.study.md", "figure1.study.csv", "figure1.study.png", "figure1.png"} <= written
    assert (tmp_path / "figure1.study.png").read_bytes()[:8] == PNG_SIGNATURE
    assert study_items(records) == ["figure1"]
    assert study_items([{**r, "config": {}} for r in records]) == []  # no target: not a study
    path = write_study_figure(records, "figure1", tmp_path / "again.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_variants_other_than_rates_are_each_shown_not_tuned():
    """Figure 3's variants are batch sizes: every (method, variant) is its own row."""
    records = [{**r, "config": {**r["config"], "local_batch": 32 if r["variant"] == "lr0.1" else 64}}
               for r in grid_records()]
    study = build_study(records, "figure1")
    assert not study.rate_grid
    assert study.shown() == [("sgd", "lr0.1"), ("sgd", "lr0.2"), ("extrap-sgd", "lr0.2"), ("extrap-sgd", "lr0.4")]
    md = study.to_markdown()
    assert "tuned rate" not in md and "| method | variant |" in md and md.count("| mini-batch SGD |") == 2
    assert build_study(grid_records(), "figure1").rate_grid


def test_settings_that_change_no_computation_keep_a_rate_grid():
    """Runs of one grid resumed with another --data-dir spelling (or engine, or labels) are still
    tuned over their rates: the study compares what the runs computed, as the runner does."""
    records = [{**r, "config": {**r["config"], "data_dir": f"/data/{r['seed']}", "engine": "virtual",
                                "label": str(r["seed"])}} for r in grid_records()]
    assert build_study(records, "figure1").rate_grid
    assert build_study(records, "figure1").shown() == [("sgd", "lr0.1"), ("extrap-sgd", "lr0.2")]


def test_the_figure_has_the_smoothness_panel_when_the_runs_probed_it(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    drawn = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: drawn.append(
        [ax.get_title() for ax in self.axes]))
    write_study_figure(grid_records(), "figure1", tmp_path / "a.png")
    unprobed = [{k: v for k, v in r.items() if k != "smoothness"} for r in grid_records()]
    write_study_figure(unprobed, "figure1", tmp_path / "b.png")
    assert [t.split(" ", 1)[1] for t in drawn[0]] == [
        "training loss, each method at its tuned rate, band ± 1 std", "smoothness along the path", "the rate grid"]
    assert [t.split(" ", 1)[1] for t in drawn[1]] == [
        "training loss, each method at its tuned rate, band ± 1 std", "the rate grid"]
