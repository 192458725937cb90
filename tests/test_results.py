"""The results collator on records written by hand: table cells (mean ± std, n, diverged and
missing marks), last-wins dedup, a truncated line, the CSV/LaTeX/Markdown renderings, Table 3's
row order, the four figures as PNGs, and `python -m results DIR` as a user runs it."""

import csv
import io
import json
import math
import statistics
import subprocess
import sys

import pytest

import results
from conftest import ROOT, launcher_env
from reproduce import config, runner
from results.figures import _series, method_colors
from results.records import presentation

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def shown(item, variant, cell) -> dict:
    """What the runner copies into a record from the item's config (``config.presentation``); a
    cell or variant the config lacks gets no label or place of its own."""
    if item not in runner.ITEMS:
        return {}
    cfg = config.load_config(item)
    return presentation(cfg, [*(cfg.get("variants") or {"default": {}}), variant], variant, cell)


def record(item, variant, cell, seed, top1=None, status="completed", workers=16, local_batch=256,
           metric="test_top1", curve=None, **extra):
    return {"item": item, "variant": variant, "cell": cell, **shown(item, variant, cell), "seed": seed,
            "workers": workers, "local_batch": local_batch, "global_batch": workers * local_batch,
            "engine": "virtual", "status": status, "steps": 100,
            "final": {} if top1 is None else {"train_loss": 0.05, metric: top1},
            "curve": curve or [], "config": {"seed": seed}, "git": {"commit": "abc", "dirty": False}, **extra}


def capture_figures(monkeypatch, read) -> dict:
    """{file name: read(figure)} for every figure ``results`` saves, instead of the PNG."""
    from results import figures

    captured = {}
    monkeypatch.setattr(figures, "_save", lambda fig, path: captured.setdefault(path.name, read(fig)))
    return captured


def write_records(directory, records, tail=""):
    path = directory / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def table1_records():
    """resnet20: sgd 90/91/92; extrap-sgd 92.5 + one diverged; an unknown method; vgg11: sgd all
    diverged, sgd-nolars 88; extrap-sgd on vgg11 and everything else not run."""
    return [
        record("table1", "resnet20", "extrap-sgd", 0, 92.5),  # listed first: rows must not follow file order
        record("table1", "resnet20", "extrap-sgd", 1, status="diverged"),
        *(record("table1", "resnet20", "sgd", s, v) for s, v in enumerate([90.0, 91.0, 92.0])),
        record("table1", "resnet20", "my_method%", 0, 50.0),
        record("table1", "vgg11", "sgd", 0, status="diverged"),
        record("table1", "vgg11", "sgd", 1, float("nan"), status="diverged"),
        record("table1", "vgg11", "sgd-nolars", 0, 88.0),
        record("demo", "", "sgd", 0, 10.0),  # not a paper item: ignored
    ]


def test_table1_cells_orientation_and_marks():
    table = results.build_table(table1_records(), "table1")
    assert table.rows == ["sgd-nolars", "sgd", "extrap-sgd", "my_method%"]  # paper order, then others
    assert table.columns == ["resnet20", "vgg11"]
    assert [table.row_labels[r] for r in table.rows] == ["mini-batch SGD w/o LARS", "mini-batch SGD",
                                                         "extrap-SGD", "my_method%"]
    assert [table.column_labels[c] for c in table.columns] == ["ResNet-20", "VGG-11 (down-scaled)"]

    sgd = table.cell("sgd", "resnet20")
    assert sgd.mean == pytest.approx(91.0) and sgd.std == pytest.approx(1.0) and sgd.n == 3
    assert sgd.text() == "91.00 ± 1.00 (n=3)"
    extrap = table.cell("extrap-sgd", "resnet20")
    assert (extrap.values, extrap.n_diverged, extrap.std) == ([92.5], 1, None)
    assert extrap.text() == "92.50 (n=1, 1 diverged)"
    assert table.cell("sgd", "vgg11").text() == "diverged (n=2)"
    assert table.cell("extrap-sgd", "vgg11") is None  # not run

    md = table.to_markdown()
    caption, blank, header, rule, *rows = md.splitlines()
    assert caption.startswith("**Table 1.**") and "test top-1 accuracy (%)" in caption
    assert "global batch B = 4096" in caption and "Mean ± std over seeds" in caption and blank == ""
    assert header == "| method | ResNet-20 | VGG-11 (down-scaled) |"
    assert rows[1] == "| mini-batch SGD | 91.00 ± 1.00 (n=3) | diverged (n=2) |"
    assert rows[2] == "| extrap-SGD | 92.50 (n=1, 1 diverged) | — |"
    assert rows[0] == "| mini-batch SGD w/o LARS | — | 88.00 (n=1) |"


def test_failed_seeds_and_completed_without_metric_are_excluded():
    records = [record("table2", "cifar100", "sgd", 0, 70.0), record("table2", "cifar100", "sgd", 1, 72.0),
               record("table2", "cifar100", "sgd", 2, status="failed"),
               record("table2", "cifar100", "sgd", 3),  # completed, but no test_top1
               record("table2", "cifar10", "extrap-sgd+post-local", 0, status="failed"),
               record("table2", "cifar10", "sgd", 0, 93.0)]
    table = results.build_table(records, "table2")
    assert table.columns == ["cifar10", "cifar100"] and table.rows == ["sgd", "extrap-sgd+post-local"]
    assert [table.column_labels[c] for c in table.columns] == ["CIFAR-10", "CIFAR-100"]
    cell = table.cell("sgd", "cifar100")
    assert (cell.mean, cell.n, cell.n_failed) == (71.0, 2, 2)
    assert cell.text() == f"71.00 ± {statistics.stdev([70.0, 72.0]):.2f} (n=2, 2 failed)"
    assert table.cell("extrap-sgd+post-local", "cifar10").text() == "failed (n=1)"
    with pytest.raises(ValueError, match="^item:"):
        results.build_table(records, "table9")


def test_last_line_wins_and_truncated_line_is_skipped(tmp_path, capsys):
    records = [record("table1", "resnet20", "sgd", 0, 10.0), record("table1", "resnet20", "sgd", 1, 91.0),
               record("table1", "resnet20", "extrap-sgd", 0, 92.0),
               record("table1", "resnet20", "sgd", 0, 90.0)]  # the rerun of seed 0
    path = write_records(tmp_path, records, tail='{"item": "table1", "variant": "resnet20", "cell": "sg')
    loaded = results.load_records(path)
    err = capsys.readouterr().err
    assert f"{path}:5" in err and "skipped" in err  # the 5th line, named with its file
    assert [(r["cell"], r["seed"]) for r in loaded] == [("sgd", 0), ("sgd", 1), ("extrap-sgd", 0)]
    assert loaded[0]["final"]["test_top1"] == 90.0
    cell = results.build_table(loaded, "table1").cell("sgd", "resnet20")
    assert cell.values == [90.0, 91.0] and cell.mean == 90.5


def test_csv_parses_back_to_the_cells():
    table = results.build_table(table1_records(), "table1")
    rows = list(csv.DictReader(io.StringIO(table.to_csv())))
    assert list(rows[0]) == ["row", "column", "mean", "std", "n", "n_diverged", "n_failed", "values"]
    assert len(rows) == len(table.rows) * len(table.columns)  # one per (row, column), missing included
    for row in rows:
        cell = table.cell(row["row"], row["column"])
        values = [float(v) for v in row["values"].split(";")] if row["values"] else []
        if cell is None:
            assert (row["n"], row["mean"], values) == ("0", "", [])
            continue
        assert values == cell.values and int(row["n"]) == cell.n == len(values)
        assert int(row["n_diverged"]) == cell.n_diverged and int(row["n_failed"]) == cell.n_failed
        if values:
            assert float(row["mean"]) == cell.mean == statistics.mean(values)
    sgd = next(r for r in rows if (r["row"], r["column"]) == ("sgd", "resnet20"))
    assert (float(sgd["mean"]), float(sgd["std"]), sgd["n"]) == (91.0, 1.0, "3")


def test_latex_uses_booktabs_and_escapes():
    tex = results.build_table(table1_records(), "table1").to_latex()
    lines = tex.splitlines()
    for rule in ("\\toprule", "\\midrule", "\\bottomrule"):
        assert lines.count(rule) == 1
    assert lines.index("\\toprule") < lines.index("\\midrule") < lines.index("\\bottomrule")
    assert "\\begin{tabular}{lrr}" in lines
    assert "mini-batch SGD & 91.00 $\\pm$ 1.00 (n=3) & diverged (n=2) \\\\" in lines
    assert "my\\_method\\% & 50.00 (n=1) & --- \\\\" in lines
    assert "test top-1 accuracy (\\%)" in tex and "±" not in tex and "—" not in tex


def test_table3_rows_by_workers_then_local_batch():
    settings = [(16, 256), (4, 1024), (16, 128), (64, 64), (4, 512)]
    records = [record("table3", f"K={k},b={b}", cell, 0, 90.0 + k / 100 + b / 10000, workers=k, local_batch=b)
               for k, b in settings for cell in ("extrap-sgd", "sgd")]
    table = results.build_table(records, "table3")
    assert [table.row_labels[r] for r in table.rows] == ["K=4 × b=512", "K=4 × b=1024", "K=16 × b=128",
                                                         "K=16 × b=256", "K=64 × b=64"]
    assert table.columns == ["sgd", "extrap-sgd"]
    assert table.cell("K=64,b=64", "sgd").mean == pytest.approx(90.6464)
    assert "global batches B = " in table.caption  # two global batches in this made-up grid
    assert table.to_markdown().splitlines()[2] == "| K × b | mini-batch SGD | extrap-SGD |"


def curve(epochs, loss0, metric, value):
    return [{"epoch": e, "step": 10 * e, "lr": 0.1, "train_loss": loss0 * math.exp(-e / 4), "batch_loss": 1.0,
             metric: value(e)} for e in range(1, epochs + 1)]


def figure_records():
    rs = []
    for seed in range(2):
        for i, cell in enumerate(["sgd", "extrap-sgd", "smoothout", "sam", "gaussian-noise"]):
            rs.append(record("figure1", "", cell, seed, 90.0, curve=curve(8, 1 + i / 4 + seed / 10, "test_top1",
                                                                           lambda e: 50 + 5 * e),
                             smoothness=[{"step": 50 * j, "smoothness": 10.0 + i + j + seed} for j in range(6)]))
    rs.append(record("figure1", "", "extragradient", 0, status="diverged",
                     curve=[{"epoch": 1, "step": 10, "lr": 0.1, "batch_loss": float("inf")}]))
    for cell in ("sgd", "extrap-sgd"):
        rs.append(record("figure2", "", cell, 0, 120.0, metric="val_ppl",
                         curve=curve(6, 6.0, "val_ppl", lambda e: 500 / e + 100)))
    for batch in (4096, 512):
        for cell in ("adam", "extrap-adam"):
            rs.append(record("figure3", f"B={batch}", cell, 0, 30.0, workers=batch // 64, local_batch=64,
                             metric="bleu", curve=curve(6, 3.0, "bleu", lambda e: 5 * e)))
    for epochs in (50, 100, 200):
        for cell in ("sgd", "extrap-sgd", "sgd+post-local", "extrap-sgd+post-local"):
            for seed in range(2):
                rs.append(record("figure4", f"epochs={epochs}", cell, seed, 85 + epochs / 50 + seed,
                                 config={"seed": seed, "epochs": epochs}))
    return rs


def test_curves_average_completed_seeds_with_a_std_band():
    rs = [record("figure1", "", "sgd", s, 90.0, curve=[{"step": 10, "train_loss": 1.0 + s * s},
                                                       {"step": 20, "train_loss": 0.5 + s}]) for s in range(3)]
    rs.append(record("figure1", "", "sgd", 3, status="diverged", curve=[{"step": 10, "train_loss": 99.0}]))
    xs, mean, lo, hi, n, completed = _series(rs, "train_loss")  # seeds: 1, 2, 5 at step 10
    std = (((1 - 8 / 3) ** 2 + (2 - 8 / 3) ** 2 + (5 - 8 / 3) ** 2) / 2) ** 0.5  # the sample std, not min–max
    assert (xs, n, completed) == ([10, 20], 3, True)
    assert mean == pytest.approx([8 / 3, 1.5]) and lo == pytest.approx([8 / 3 - std, 0.5])
    assert hi == pytest.approx([8 / 3 + std, 2.5])
    assert _series(rs[3:], "train_loss")[-1] is False  # only diverged seeds: drawn, marked
    traced = [record("figure1", "", "sgd", 0, 90.0, curve=[{"step": 4, "train_loss": 2.0}])]
    traced[0]["trace"] = [{"step": 2, "batch_loss": 3.0, "train_loss_subset": 2.5}]
    assert _series(traced, "train_loss_subset", source="trace")[:2] == ([2], [2.5])
    assert method_colors([record("figure1", "", c, 0) for c in ("sgd", "zz")])["sgd"] == "#1f77b4"  # the config's
    spare = method_colors([record("x", "", c, 0) for c in ("zz", "aa")])  # no config: spare colours, by name
    assert spare == method_colors([record("x", "", c, 0) for c in ("aa", "zz")]) and spare["aa"] != spare["zz"]


def test_figure4_reads_the_budget_from_the_runs_config_not_the_variant_name():
    from functools import partial

    from results.figures import setting_of

    _budget = partial(setting_of, key="epochs")  # figure4's x, as its config declares it
    overridden = record("figure4", "epochs=150", "sgd", 0, 80.0, config={"seed": 0, "epochs": 5})  # epochs=5 given
    assert _budget(overridden) == 5
    assert _budget(record("figure4", "epochs=150", "sgd", 0, 80.0)) is None  # no config epochs: not drawn


def test_an_epochs_override_for_figure4_is_the_budget_the_figure_draws(tmp_path, monkeypatch):
    """``epochs=5`` on figure4's command line: the runner's settings carry it, and the figure puts
    the runs at 5 epochs whatever their variant is called."""
    runs = config.plan("figure4", config.parse_args("figure4", ["--scale", "smoke", "--only", "sgd", "epochs=5"]))
    assert runs and all(r.settings["epochs"] == 5 for r in runs) and any(r.variant != "epochs=5" for r in runs)
    write_records(tmp_path, [{**record("figure4", r.variant, r.cell, r.seed, 80.0), **r.shown, "config": r.settings}
                             for r in runs])
    drawn = capture_figures(monkeypatch, lambda fig: [list(line.get_xdata()) for ax in fig.axes
                                                      for line in ax.lines if len(line.get_xdata())])
    results.write_all(tmp_path)
    assert drawn["figure4.png"] and all(xs == [5] for xs in drawn["figure4.png"])


def test_all_four_figures_are_pngs(tmp_path):
    write_records(tmp_path, figure_records())
    written = results.write_all(tmp_path)
    assert [p.name for p in written] == ["figure1.png", "figure2.png", "figure3.png", "figure4.png"]
    from matplotlib.image import imread

    for path in written:
        data = path.read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 20_000, path
        image = imread(path)
        assert image.shape[0] > 400 and image.shape[1] > 800 and image.std() > 0.05, path


def test_the_figures_are_those_the_configs_declare(tmp_path, monkeypatch):
    """A figure declared in an item's config is drawn from that item's records as declared; one
    the runner cannot read is refused in one line naming the key, and the collator leaves it out."""
    import yaml

    import reproduce
    from results import configs

    cfg = runner.load_config("table2")
    cfg["figures"] = {"figure9": {"draw": "curves", "title": "{title}", "panels": [
        {"title": "accuracy", "y": {"key": "test_top1", "from": "curve", "label": "{split}-split top-1"}}]}}
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "table2.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    monkeypatch.setattr(configs, "CONFIGS", folder)  # where results reads the items' configs
    monkeypatch.setattr(reproduce, "CONFIGS", folder)  # and the runner
    write_records(tmp_path, [record("table2", "cifar10", "sgd", 0, 90.0, curve=curve(4, 2.0, "test_top1", lambda e: 80 + e))])
    labels = capture_figures(monkeypatch, lambda fig: [(ax.get_title(), ax.get_ylabel()) for ax in fig.axes])
    assert [p.name for p in results.write_all(tmp_path)] == ["table2.md", "table2.tex", "table2.csv", "figure9.png"]
    assert labels["figure9.png"] == [("accuracy", "evaluation-split top-1")]

    cfg["figures"]["figure9"]["panels"][0]["title"] = "{column}: accuracy"  # a placeholder curves does not fill
    (folder / "table2.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    with pytest.raises(runner.ConfigError, match=r"^figures\.figure9\.panels\[0\]\.title: \{column\}"):
        runner.load_config("table2")
    assert [p.name for p in results.write_all(tmp_path)] == ["table2.md", "table2.tex", "table2.csv"]


def test_command_line(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_records(run_dir, table1_records() + figure_records()[:3], tail='{"item": "tab')
    proc = subprocess.run([sys.executable, "-m", "results", str(run_dir)], cwd=ROOT, env=launcher_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    names = ["table1.md", "table1.tex", "table1.csv", "figure1.png", "figure5.png"]  # 5: Table 1's curves
    assert proc.stdout.splitlines() == [f"wrote {run_dir / n}" for n in names]
    assert "records.jsonl:14" in proc.stderr  # the partial last line, after 13 records
    assert "91.00 ± 1.00 (n=3)" in (run_dir / "table1.md").read_text()

    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([sys.executable, "-m", "results", str(empty)], cwd=ROOT, env=launcher_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and str(empty / "records.jsonl") in proc.stderr and proc.stdout == ""


def test_collating_imports_no_torch(tmp_path):
    # as Table 2 (Table 1 brings the appendix's Figure 5, drawn with matplotlib)
    write_records(tmp_path, [{**r, "item": "table2"} for r in table1_records()])
    code = ("import sys, results; written = results.write_all(sys.argv[1]); "
            "print(len(written), 'torch' in sys.modules, 'matplotlib' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, env=launcher_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["3", "False", "False"]  # tables alone need neither


def test_records_one_folder_per_job_are_merged(tmp_path):
    # as the Kubernetes jobs write them: <out>/<job>/records.jsonl, collated from <out>
    t3 = lambda k, seed, top1: record("table3", "", f"K={k},b={4096 // k}", seed, top1, workers=k,  # noqa: E731
                                      local_batch=4096 // k)
    for job, rs in (("table3-k4", [t3(4, 0, 90.0), t3(4, 1, 92.0)]), ("table3-k8", [t3(8, 0, 89.0)])):
        (tmp_path / job).mkdir()
        write_records(tmp_path / job, rs)
    write_records(tmp_path, [t3(4, 1, 80.0)])  # the top level is read first: the job's line wins
    assert results.records_files(tmp_path) == [tmp_path / "records.jsonl", tmp_path / "table3-k4" / "records.jsonl",
                                               tmp_path / "table3-k8" / "records.jsonl"]
    assert [p.name for p in results.write_all(tmp_path)] == ["table3.md", "table3.tex", "table3.csv"]
    text = (tmp_path / "table3.md").read_text()
    assert "91.00 ± 1.41 (n=2)" in text and "89.00 (n=1)" in text


def test_extreme_values_and_a_lone_surrogate_still_collate(tmp_path):
    """Records a crash or a hand could leave: ±1e308, the smallest subnormal, a cell named by a lone
    surrogate (JSON's \\ud800). Every file is written whole; huge numbers read in 3 digits."""
    recs = [record("table1", "resnet20", "sgd", s, v, curve=[{"step": 1, "test_top1": v, "train_loss": v}])
            for s, v in enumerate([1e308, -1e308, 5e-324])]
    recs.append(record("table1", "resnet20", "\ud800x", 0, 5.0))
    write_records(tmp_path, recs)
    proc = subprocess.run([sys.executable, "-m", "results", str(tmp_path)], cwd=ROOT, env=launcher_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    table = (tmp_path / "table1.md").read_text(encoding="utf-8")
    assert "± 1e+308 (n=3)" in table and "\ufffd" in table and table.endswith("|\n")
    assert (tmp_path / "figure5.png").read_bytes()[:8] == PNG_SIGNATURE


def test_an_unwritable_output_is_one_line_exit_2(tmp_path):
    write_records(tmp_path, table1_records())
    (tmp_path / "table1.md").mkdir()  # root passes permission checks: a folder where the file goes
    proc = subprocess.run([sys.executable, "-m", "results", str(tmp_path)], cwd=ROOT, env=launcher_env(),
                          capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "table1.md" in lines[0] and "Traceback" not in proc.stderr


def test_a_label_and_a_cell_order_changed_in_the_config_reach_the_table_and_the_figure(tmp_path, monkeypatch):
    """The config owns how results/ shows a run: figure1's config with extrap-SGD relabelled and
    moved before mini-batch SGD, its laptop runs planned by the runner (records carry what the
    runner copies from the config), then collated: the study's table and both figures follow."""
    import yaml

    import reproduce

    cfg = yaml.safe_load(reproduce.config_path("figure1").read_text(encoding="utf-8"))
    cells = cfg["cells"]
    cfg["cells"] = {"extrap-sgd": {**cells.pop("extrap-sgd"), "label": "look-ahead SGD"}, **cells}
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "figure1.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")
    monkeypatch.setattr(reproduce, "CONFIGS", configs)  # where the runner reads the item's config
    runs = config.plan("figure1", config.parse_args("figure1", ["--scale", "laptop", "--only", "sgd,extrap-sgd"]))
    assert {r.cell for r in runs} == {"sgd", "extrap-sgd"} and all(r.settings["target_loss"] for r in runs)
    losses = [2.2, 1.9, 1.6, 1.4]
    trace = [{"step": 2 * (i + 1), "batch_loss": x, "train_loss_subset": x} for i, x in enumerate(losses)]
    write_records(tmp_path, [
        {**record("figure1", r.variant, r.cell, r.seed, 30.0, local_batch=64, trace=trace,
                  curve=[{"step": 8, "train_loss": 1.4, "test_top1": 30.0}]), **r.shown, "config": r.settings}
        for r in sorted(runs, key=lambda r: r.cell != "sgd")])  # written sgd first: the order must be the config's
    legends = capture_figures(monkeypatch, lambda fig: [[t.get_text() for t in ax.get_legend().get_texts()]
                                                        for ax in fig.axes if ax.get_legend()])
    results.write_all(tmp_path)
    rows = [line.split(" | ")[0].strip("| ") for line in (tmp_path / "figure1.study.md").read_text().splitlines()
            if line.startswith("| ") and ("SGD" in line)]
    assert rows[:2] == ["look-ahead SGD", "mini-batch SGD"]  # the grid's rows, in the config's new order
    assert rows[-2:] == ["look-ahead SGD", "mini-batch SGD"]  # the tuned table's
    for name in ("figure1.png", "figure1.study.png"):  # legend entries: "<label> [variant] (n=…)" or "<label>, …"
        methods = [t for t in legends[name][0] if "SGD" in t]
        assert methods[0].startswith("look-ahead SGD") and methods[-1].startswith("mini-batch SGD"), (name, methods)
    assert not any("extrap-SGD" in t for panel in sum(legends.values(), []) for t in panel)
