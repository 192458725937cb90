"""Bad input to a reproduce script: a malformed or unknown setting, a bad command-line value, an
out-of-range hyperparameter, a missing or unusable data folder, an unusable output folder, a
malformed config file. Each exits with status 2 and one line on stderr naming the key or path,
before any training, with nothing written. Hypothesis draws the inputs (well over 30)."""

import contextlib
import io
import string
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reproduce
from extrap import PERTURBATIONS
from reproduce import config, runner

ITEM = "table1"
KNOWN = set(config.RUN_KEYS) | set(config._train_fields())


def call(argv: list[str], out: Path) -> tuple[int, str, str]:
    """runner.main in this process: (exit status, stdout, stderr)."""
    def no_training(*args, **kwargs):
        raise AssertionError(f"{argv}: accepted, and training started")

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), \
            mock.patch.object(runner, "execute", no_training):
        try:
            code = runner.main(ITEM, ["--scale", "smoke", "--no-progress", "--out", str(out), *argv])
        except SystemExit as e:  # argparse
            code = e.code
    return code, stdout.getvalue(), stderr.getvalue()


def check_refused(argv: list[str], tmp: Path, names: str) -> None:
    out = tmp / "out"
    code, stdout, stderr = call(argv, out)
    lines = stderr.strip().splitlines()
    assert code == 2, (argv, stdout[-500:], stderr[-500:])
    assert len(lines) == 1 and names in lines[0] and "Traceback" not in stderr, (argv, stderr)
    assert not out.exists()  # nothing written


# what a wrong value looks like for each kind of setting
NOT_A_NUMBER = st.sampled_from(["abc", "[1, 2]", "{a: 1}", "true", "''", "null"])
NEGATIVE = st.floats(min_value=-1e6, max_value=-1e-6, allow_nan=False).map(repr)
BAD_VALUES = {
    "base_lr": st.one_of(NOT_A_NUMBER, NEGATIVE),
    "momentum": st.one_of(NOT_A_NUMBER, NEGATIVE, st.floats(min_value=1.0, max_value=1e3).map(repr)),
    "weight_decay": st.one_of(NOT_A_NUMBER, NEGATIVE),
    "epochs": st.one_of(NOT_A_NUMBER, st.integers(max_value=0).map(str)),
    "local_batch": st.one_of(NOT_A_NUMBER, st.integers(max_value=0).map(str)),
    "log_every": st.one_of(NOT_A_NUMBER, st.integers(max_value=-1).map(str)),
    "gamma": st.one_of(st.sampled_from(["abc", "[1]"]), NEGATIVE),
    "trust": st.one_of(NOT_A_NUMBER, st.sampled_from(["0", "-1.0"])),
    "perturbation": st.text(string.ascii_lowercase + "-", min_size=1, max_size=12).filter(
        lambda s: s not in PERTURBATIONS),
    "lr_scaling": st.sampled_from(["quadratic", "cubic", "3", "Linear"]),
    "schedule": st.sampled_from(["cosine", "exp", "steps", "1"]),
    "workers": st.one_of(NOT_A_NUMBER, st.integers(max_value=0).map(str)),
    "seeds": st.one_of(NOT_A_NUMBER, st.integers(max_value=0).map(str)),
    "task": st.sampled_from(["imagenet", "mnist", "1"]),
    "model_kwargs": st.sampled_from(["3", "abc", "[1, 2]", "{widht: 2}", "{num_classes: -1, depth: 3}"]),
    # checked before any output, where they once failed inside training
    "milestones": st.one_of(NOT_A_NUMBER, st.sampled_from(["[0.75, 0.5]", "[0.5, 1.5]", "[0, 0.5]", "[a]"])),
    "warmup_epochs": st.one_of(NOT_A_NUMBER, NEGATIVE, st.just(".inf")),
    "warmup_steps": st.one_of(st.sampled_from(["abc", "1.5"]), st.integers(max_value=-1).map(str)),
    "switch_epoch": st.one_of(st.sampled_from(["abc", ".inf"]), NEGATIVE),
    "loss_bound": st.one_of(NOT_A_NUMBER, NEGATIVE, st.sampled_from(["0", ".inf"])),
    "probe_every": st.one_of(NOT_A_NUMBER, st.integers(max_value=-1).map(str)),
    "model": st.sampled_from(["resnet21", "vgg", "gpt2", "1"]),
    "dataset": st.sampled_from(["cifar1000", "imagenet", "1"]),
    "data_subdir": st.sampled_from(["1", "[a]", "{a: 1}"]),
    "task_kwargs": st.sampled_from(["{bptt: 35}", "{eval_train_samples: -1}", "{eval_train_samples: -5}",
                                    "{download: maybe}", "{root: /tmp}", "3"]),
    "seed": st.integers(min_value=0, max_value=100).map(str),
    "target_loss": st.one_of(NEGATIVE, st.sampled_from(["abc", "[1, -2]", "[]", "[a]", "true", "''", "0", ".inf"])),  # null: none
    "gamma_factor": st.one_of(NOT_A_NUMBER, NEGATIVE, st.just(".inf")),
    "gamma_rule": st.sampled_from(["base", "local", "paper", "1"]),
    "lars_lookahead": st.sampled_from(["maybe", "2", "[true]", "abc"]),
}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(sorted(BAD_VALUES)), data=st.data())
def test_out_of_range_or_mistyped_settings(tmp_path_factory, key, data):
    value = data.draw(BAD_VALUES[key])
    check_refused([f"{key}={value}"], tmp_path_factory.mktemp("bad"), key)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.text(string.ascii_lowercase + "_", min_size=2, max_size=16).filter(lambda k: k not in KNOWN))
def test_unknown_keys(tmp_path_factory, key):
    check_refused([f"{key}=1"], tmp_path_factory.mktemp("bad"), f"{key}: unknown key")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag_value=st.one_of(
    st.tuples(st.sampled_from(["--workers", "--seeds"]), st.sampled_from(["abc", "1.5", "", "two"])),
    st.tuples(st.sampled_from(["--workers", "--seeds"]), st.integers(max_value=0).map(str)),
    st.tuples(st.just("--data-dir"), st.text(string.ascii_lowercase, min_size=1, max_size=8).map(
        lambda s: f"/nonexistent/{s}")),
    st.tuples(st.just("--scale"), st.text(string.ascii_lowercase, min_size=1, max_size=8).filter(
        lambda s: s not in config.SCALES)),
    st.tuples(st.just("--engine"), st.sampled_from(["gpu", "mpi", "ddp", "threads"])),
    st.tuples(st.just("--only"), st.text(string.ascii_lowercase, min_size=1, max_size=10).filter(
        lambda s: s not in config.load_config(ITEM)["cells"])),
))
def test_bad_command_line_values(tmp_path_factory, flag_value):
    flag, value = flag_value
    check_refused([flag, value], tmp_path_factory.mktemp("bad"), flag)


@pytest.mark.parametrize("pair", ["momentum=[0.9", "epochs={", "novalue", "=3"])
def test_malformed_key_value_pairs(tmp_path, pair):
    check_refused([pair], tmp_path, pair.split("=")[0] or pair)


def test_unusable_data_and_output_folders(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    check_refused(["--data-dir", str(tmp_path / "missing")], tmp_path, str(tmp_path / "missing"))
    check_refused(["--data-dir", str(a_file)], tmp_path, str(a_file))
    # an output folder below a file cannot be made (a permission test would not bite as root);
    # the data folder is one that exists, in a clone without ../shared as well
    data = tmp_path / "data"
    (data / "cifar10-subset").mkdir(parents=True)
    code, _, stderr = call(["--data-dir", str(data)], a_file / "out")
    assert code == 2 and stderr.strip() == f"reproduce.{ITEM}: --out: {a_file} is not a directory"


@pytest.mark.parametrize("where", ["/proc/forbidden", "/sys/extrap-out", "dangling", "dangling/below"])
def test_output_folders_that_cannot_be_made(tmp_path, where):
    """Places where no folder can be made, also as root (who passes every permission check):
    /proc and /sys, and a path through a symbolic link to nowhere. One line, exit 2, nothing made."""
    if where.startswith("/") and not Path(where).parent.is_dir():
        pytest.skip(f"{Path(where).parent} does not exist here")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    data = tmp_path / "data"
    (data / "cifar10-subset").mkdir(parents=True)
    out = Path(where) if where.startswith("/") else tmp_path / where
    code, stdout, stderr = call(["--data-dir", str(data)], out)
    assert code == 2 and len(stderr.strip().splitlines()) == 1, (stdout, stderr)
    assert stderr.startswith(f"reproduce.{ITEM}: --out: ") and "Traceback" not in stderr
    assert not (tmp_path / "nowhere").exists() and not out.exists()


def test_a_malformed_config_file(tmp_path, monkeypatch):
    configs = tmp_path / "configs"
    configs.mkdir()
    monkeypatch.setattr(reproduce, "CONFIGS", configs)  # where reproduce.config_path looks
    for text, message in (("common: [unclosed", "not valid YAML"), ("- a list", "expected a mapping"),
                          ("common: 3", "common: expected a mapping")):
        (configs / f"{ITEM}.yaml").write_text(text)
        check_refused([], tmp_path, message)
