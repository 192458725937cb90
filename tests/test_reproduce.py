"""The per-item scripts at smoke scale on the real slices: Makefile targets, records, the
collator, engine equivalence, resume after a kill, and bad input (exit status 2)."""

import json
import math
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, SHARED_DATA, launcher_env
from run_records import records, strip_times

needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} not present: the "
                                "real dataset slices ship beside the project in CI only")

# Shortened smoke runs that test the same path: 512 training images (4 steps at B = 128),
# the training loss on 256. The smoke scale as configured is what users run; these tests check
# the pipeline on it, whose cost is the number of steps.
SHORT = "task_kwargs={max_train_images: 512, eval_train_samples: 256}"

TABLE1_CELLS = ["sgd-nolars", "extrap-sgd-nolars", "sgd", "smoothout", "uniform-noise",
                "stochastic-noise", "extrap-sgd"]


def run(cmd, timeout=1200, check=True):
    proc = subprocess.run(cmd, cwd=ROOT, env=launcher_env(), capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def item(name, *args):
    return [sys.executable, "-m", f"reproduce.{name}", "--scale", "smoke", "--no-progress", *args]


@needs_data
@pytest.mark.slow
def test_make_reproduce_table1_at_smoke_scale(tmp_path):
    out = tmp_path / "smoke"
    start = time.perf_counter()
    run(["make", "-o", "install", "-o", ".venv/.installed", "reproduce-table1", "SCALE=smoke", "WORKERS=2",
         f"DATA_DIR={SHARED_DATA}", f"OUT={out}", f"PY={sys.executable}", f"ARGS=epochs=1 '{SHORT}'"])
    elapsed = time.perf_counter() - start
    recs = records(out)
    assert sorted((r["variant"], r["cell"]) for r in recs) == sorted(
        (v, c) for v in ("resnet20", "vgg11") for c in TABLE1_CELLS)
    # its cost is counted, not timed (a slow machine is no failure): the shortened settings reach
    # every run, which makes 512 images / B = 128 = 4 steps and 1 evaluation in its one epoch
    for r in recs:
        assert r["status"] == "completed" and r["workers"] == 2 and r["global_batch"] == 128
        assert r["steps"] == 4 and len(r["curve"]) == 1, (r["variant"], r["cell"], r["steps"], len(r["curve"]))
        assert 0 <= r["final"]["test_top1"] <= 100 and r["curve"] and r["git"]["commit"]
        run_dir = out / "table1" / r["variant"] / r["cell"] / "seed0"
        provenance = json.loads((run_dir / "provenance.json").read_text())
        assert provenance["world_size"] == 2 and provenance["engine"] == "virtual"
        assert {"torch", "python", "extrap"} <= set(provenance["versions"])
        assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == len(r["curve"])
    table = (out / "table1.md").read_text()
    assert "ResNet-20" in table and "extrap-SGD" in table and "(n=1)" in table
    assert (out / "table1.tex").exists() and (out / "table1.csv").exists()
    print(f"make reproduce-table1 SCALE=smoke WORKERS=2 ARGS=...: {elapsed:.0f} s")


@needs_data
@pytest.mark.slow
def test_figure1_at_smoke_scale_with_the_smoothness_probe(tmp_path):
    out = tmp_path / "fig"
    start = time.perf_counter()
    run(item("figure1", "--out", str(out), "task_kwargs={max_train_images: 1280, eval_train_samples: 256}",
             "log_every=2", "probe_every=4"))  # 10 steps: 5 trace points, probes at steps 4 and 8
    recs = records(out)
    assert len(recs) == 9 and all(r["status"] == "completed" for r in recs)
    assert all(len(r["smoothness"]) >= 2 and all(p["smoothness"] > 0 for p in r["smoothness"]) for r in recs)
    assert all(len(r["trace"]) == 5 and r["steps"] == 10 for r in recs)
    run([sys.executable, "-m", "results", str(out)])
    assert (out / "figure1.png").read_bytes()[:4] == b"\x89PNG"
    print(f"figure1 smoke: {time.perf_counter() - start:.0f} s")


@needs_data
@pytest.mark.slow
def test_mpirun_and_virtual_workers_end_the_same_cell_alike(tmp_path, mpirun):
    """In float64 at η = 0.02 the two engines end bit-identical here. In float32 they (and equally
    the batched and the loop virtual paths, in one process) drift apart by about 1 % in 36
    ResNet-20 steps: rounding in a different reduction order is amplified by the ill-conditioned
    gradients of BatchNorm shifts; at the config's η = 0.1 with LARS even float64 runs drift
    (1 vs 2 threads: 2 %), the early trajectory being chaotic there."""
    args = ["--only", "extrap-sgd", "epochs=1", "task_kwargs={max_train_images: 768, eval_train_samples: 256}",
            "dtype=float64", "base_lr=0.02"]  # 6 steps
    run([mpirun, "-np", "2", *item("figure1", "--out", str(tmp_path / "mpi"), *args)])
    run(item("figure1", "--engine", "virtual", "--workers", "2", "--out", str(tmp_path / "virtual"), *args))
    (a,), (b,) = records(tmp_path / "mpi"), records(tmp_path / "virtual")
    assert a["engine"] == "processes" and b["engine"] == "virtual"
    assert a["steps"] == b["steps"]
    assert abs(a["final"]["train_loss"] - b["final"]["train_loss"]) <= 1e-3 * abs(b["final"]["train_loss"])


@needs_data
@pytest.mark.slow
def test_killed_run_resumes_to_the_same_record(tmp_path):
    args = ["--only", "extrap-sgd", "epochs=3", "task_kwargs={max_train_images: 1536, eval_train_samples: 256}",
            "probe_every=0"]  # 12 steps an epoch
    whole = tmp_path / "whole"
    run(item("figure1", "--out", str(whole), *args))
    killed = tmp_path / "killed"
    cmd = item("figure1", "--out", str(killed), *args)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=launcher_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = killed / "figure1" / "default" / "extrap-sgd" / "seed0" / "checkpoint.rank0.pt"
    deadline = time.time() + 600
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert ckpt.exists(), "no checkpoint was written"
    proc.send_signal(signal.SIGKILL)  # mid-cell: after the first epoch's checkpoint
    proc.wait()
    assert not (killed / "records.jsonl").exists() or not records(killed)
    resumed = run(cmd)
    assert "resumed from" in resumed.stdout
    (a,), (b,) = records(whole), records(killed)
    assert strip_times(a) == strip_times(b)  # the same final record, bit for bit on CPU
    rerun = run(cmd)  # a finished cell is skipped
    assert "skip default/extrap-sgd seed 0" in rerun.stdout and len(records(killed)) == 1


@pytest.mark.parametrize("args, message", [
    (["epochs=0"], "epochs: expected"),
    (["bogus_key=1"], "bogus_key: unknown key"),
    (["perturbation=extrapolate"], "perturbation: expected"),
    (["--only", "nope"], "--only: unknown cell 'nope'"),
    (["--data-dir", "/nonexistent/data"], "--data-dir: /nonexistent/data"),
    (["momentum=abc"], "momentum"),
    (["novalue"], "novalue: expected key=value"),
    (["lr=0.1"], "lr: unknown key (did you mean base_lr?)"),
    (["gama_factor=0.5"], "gama_factor: unknown key (did you mean gamma_factor?)"),
    (["task_kwargs.eval_train_sample=10"], "task_kwargs.eval_train_sample: unknown key for the cifar task (did you "
                                            "mean eval_train_samples?)"),
    (["task_kwargs=3", "task_kwargs.x=1"], "task_kwargs.x: task_kwargs is given a value of its own too"),
    (["tensorboard=maybe"], "tensorboard: expected true or false"),
    (["--scale", "paper"], "--scale paper: 42 runs, 630 million images through the model (even at"),
])
def test_bad_input_exits_2_with_one_line_naming_it(tmp_path, args, message):
    proc = run(item("table1", "--out", str(tmp_path / "out"), *args), check=False, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_dotted_override_reaches_into_a_mapping_and_keeps_its_other_keys():
    from reproduce.config import parse_args, parse_overrides, plan

    assert parse_overrides(["task_kwargs.max_train_images=512", "a.b.c=[1, 2]", "x=y"]) == {
        "task_kwargs": {"max_train_images": 512}, "a": {"b": {"c": [1, 2]}}, "x": "y"}
    # in either order, a mapping and dotted keys into it merge; a scalar and dotted keys do not
    assert parse_overrides(["t.a=1", "t={b: 2}"]) == parse_overrides(["t={b: 2}", "t.a=1"]) == {"t": {"a": 1, "b": 2}}
    from reproduce.config import ConfigError, closest

    for pairs in (["t.a=1", "t=5"], ["t=5", "t.a=1"]):
        with pytest.raises(ConfigError, match="a value of its own"):
            parse_overrides(pairs)
    assert closest("lr", ["base_lr"]) == " (did you mean base_lr?)"
    assert closest("lr", ["eval_batch"]) == ""  # an alias only where its target is a key here
    runs = plan("figure1", parse_args("figure1", ["--scale", "smoke", "task_kwargs.max_train_images=512"]))
    kwargs = runs[0].settings["task_kwargs"]
    assert kwargs["max_train_images"] == 512 and "eval_train_samples" in kwargs  # merged into the config's


@needs_data
def test_a_smoke_run_draws_curves_of_at_least_10_points():
    """Every item's smoke runs, as configured, log at least 10 trace points (the figures' curves)."""
    from reproduce.config import ITEMS, load_task, parse_args, plan

    for name in ITEMS:
        for r in plan(name, parse_args(name, ["--scale", "smoke", "--data-dir", str(SHARED_DATA)])):
            if "log_every" not in r.settings:
                assert not name.startswith("figure"), name  # a table's item need not trace
                continue
            task, _ = load_task(r.settings, "cpu")
            steps = r.settings["epochs"] * task.steps_per_epoch(r.settings["workers"], r.settings["local_batch"])
            assert steps // r.settings["log_every"] >= 10, (name, r.variant, r.cell, steps)


def test_overrides_may_come_before_between_and_after_the_flags():
    """As `make reproduce-<item> ARGS=...` appends them to the Makefile's own flags."""
    from reproduce.config import parse_args

    args = parse_args("figure1", ["epochs=1", "--scale", "smoke", "momentum=0.5", "--only", "sgd",
                                  "task_kwargs={max_train_images: 512}"])
    assert args.scale == "smoke" and args.only == "sgd"
    assert args.overrides == ["epochs=1", "momentum=0.5", "task_kwargs={max_train_images: 512}"]


def test_every_item_resolves_at_both_scales():
    from reproduce.config import ITEMS, load_config, parse_args, plan

    assert {"table1", "table2", "table3", "figure1", "figure2", "figure3", "figure4", "figure7"} <= set(ITEMS)
    for name in ITEMS:
        for scale in ("paper", "smoke", *(["laptop"] if "laptop" in load_config(name)["scales"] else [])):
            runs = plan(name, parse_args(name, ["--scale", scale]))
            assert runs, (name, scale)
            for r in runs:
                assert {"task", "model", "workers", "local_batch", "epochs", "data_dir"} <= set(r.settings)
            if scale == "paper":
                assert {r.settings["workers"] for r in runs} == ({4, 8, 16, 32} if name == "table3" else {16})


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize("name, metric, vocab", [("figure2", "val_ppl", 13_777), ("figure3", "bleu", 7_856)])
def test_language_items_at_smoke_scale(tmp_path, name, metric, vocab):
    run(item(name, "--out", str(tmp_path)))
    recs = records(tmp_path)
    assert len(recs) == 2 and all(r["status"] == "completed" and metric in r["final"] for r in recs)
    for r in recs:  # learned something: below a uniform guess over the vocabulary
        assert r["final"]["val_loss"] < 0.9 * math.log(vocab)
    run([sys.executable, "-m", "results", str(tmp_path)])
    assert (tmp_path / f"{name}.png").exists()


# each laptop config as it is, but on few enough data for a few steps (CIFAR-10: 4 steps at B = 1,024)
LAPTOP_ITEMS = {"figure1": [], "figure7": [],
                "figure3": ["task_kwargs={max_train_pairs: 2048, eval_samples: 50, decode_max_len: 10}"]}


def _one_point_grids(cfg: dict) -> dict:
    """The config with a tuned laptop scale cut to one tuning seed, one confirmation seed and the
    first value of every grid axis: the protocol's structure, at the cost of a few runs."""
    scale = cfg["scales"]["laptop"]
    tuning = scale.get("tuning")
    if tuning:
        tuning["seeds"] = tuning["seeds"][:1]
        for grid in tuning["grids"].values():
            axes = grid.get("grid", grid) if "around" in grid else grid
            for key in axes:
                axes[key] = axes[key][:1]
    return cfg


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LAPTOP_ITEMS))
def test_laptop_configs_run_a_few_steps_and_collate_as_a_study(tmp_path, name, monkeypatch):
    """The laptop study's configs as they are (K = 16, the batch sizes, the tuning protocol, cut to
    the first point of each grid), one confirmation seed of the first cell for one epoch: they
    run, and results/ writes the study's table and figure."""
    import yaml

    import reproduce
    from reproduce.config import load_config
    from reproduce.runner import main

    cfg = _one_point_grids(load_config(name))
    scale = cfg["scales"]["laptop"]
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / f"{name}.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")
    monkeypatch.setattr(reproduce, "CONFIGS", configs)
    grids = scale.get("tuning", {}).get("grids", {})  # a cell tuned around another, where the scale tunes
    cell = next((c for c, g in grids.items() if "around" in g), scale.get("run_cells", list(cfg["cells"]))[-1])
    out = tmp_path / "out"
    overrides = ["epochs=1", "log_every=1", "eval_every=1", *LAPTOP_ITEMS[name]]
    assert main(name, ["--scale", "laptop", "--no-progress", "--seeds", "1", "--only", cell, "--out", str(out),
                       *overrides]) == 0
    recs = records(out)
    tuned = "tuning" in scale
    panels = scale.get("run_variants", ["default"])
    assert len([r for r in recs if r["cell"] == cell]) == len(panels) * (2 if tuned else 1)
    if tuned:  # the cell it is tuned around ran on the tuning seed too, and was not confirmed
        assert {(r["cell"] == cell, r["stage"]) for r in recs} >= {(True, "tune"), (True, "confirm"), (False, "tune")}
        assert {r["seed"] for r in recs if r["stage"] == "tune"} == set(scale["tuning"]["seeds"])
    for r in recs:
        assert r["status"] == "completed" and r["workers"] == 16 and r["global_batch"] in (512, 1024)
        assert r["config"]["target_loss"] == scale["target_loss"] and len(r["trace"]) == r["steps"] >= 2
        assert all("lr" in p and "gamma" in p for p in r["trace"])
        if r["config"]["task"] == "cifar":
            assert r["global_batch"] == 1024 and r["steps"] == 4 and all("train_loss_bn" in p for p in r["trace"])
    run([sys.executable, "-m", "results", str(out)])
    table = (out / f"{name}.study.md").read_text()
    targets = scale["target_loss"] if isinstance(scale["target_loss"], list) else [scale["target_loss"]]
    assert all(f"{t:g}" in table for t in targets) and (out / f"{name}.study.png").exists()


def test_the_items_are_the_configs_and_each_script_describes_itself():
    from reproduce import CONFIGS, ITEMS

    assert set(ITEMS) == {p.stem for p in CONFIGS.glob("*.yaml")} >= {"table1", "figure4"}
    planned = run(["make", "-n", "reproduce-all"]).stdout  # the Makefile's items are the same
    assert {name for name in ITEMS if f"-m reproduce.{name} " in planned} == set(ITEMS)
    help_text = run([sys.executable, "-m", "reproduce.figure4", "--help"]).stdout
    assert "Figure 4 — ResNet-20 on CIFAR-10" in help_text and "Expected runtime" in help_text


def test_every_run_carries_how_its_config_shows_it():
    """Labels, order, colours and the item's about: copied from the config into every run's record."""
    from reproduce.config import load_config, parse_args, plan

    runs = plan("table1", parse_args("table1", ["--scale", "smoke"]))
    cells = list(load_config("table1")["cells"])
    for run in runs:
        cell = load_config("table1")["cells"][run.cell]
        assert run.shown["method"] == cell["label"] and run.shown["color"] == cell["color"]
        assert run.shown["order"] == cells.index(run.cell)
        assert run.shown["about"]["title"] == "Table 1" and run.shown["about"]["rows"] == "cells"
    assert {r.variant: r.shown["variant_label"] for r in runs} == {"resnet20": "ResNet-20",
                                                                    "vgg11": "VGG-11 (down-scaled)"}
