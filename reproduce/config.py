"""A run's settings: the command line, the item's config, and the checks that run before any work.

A config (``reproduce/configs/<item>.yaml``) holds how its item is shown (``about``, and the
``figures`` its records draw: ``results.specs``), ``common`` settings, one section per ``scale``,
the ``variants`` (the table's columns or the figure's panels) and the ``cells`` (the methods). ``plan`` resolves each run's settings in that order — common < scale < variant < cell
< ``key=value`` on the command line — and checks them: a bad value is a ``ConfigError``, one
line naming the key (exit status 2).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import inspect
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from data import TASKS
from extrap.engines import ENGINES
from reproduce import DEMO, ITEMS, config_path
from results.records import presentation
from results.specs import read_figures

SCALES = ("paper", "laptop", "smoke")


# keys of a run besides extrap.train.TrainConfig's fields
RUN_KEYS = {
    "task": "one of " + ", ".join(TASKS),
    "dataset": "cifar10 or cifar100 (task cifar)",
    "data_subdir": "the dataset's folder under --data-dir",
    "data_dir": "the datasets' root (--data-dir)",
    "model": "a name for models.build_model",
    "model_kwargs": "a mapping of keyword arguments for the model",
    "task_kwargs": "a mapping of keyword arguments for the task",
    "workers": "the number of workers K",
    "engine": "auto, processes, horovod, virtual or single",
    "seeds": "the number of seeds",
    "label": "a human label for the cell",
    "color": "the colour of the cell's curves (a matplotlib colour)",
    "target_loss": "training-loss targets (a number or a list): results/ reports each method's steps to reach them (results.study)",
    "tensorboard": "true: TensorBoard event files in each run's folder (--tensorboard; reproduce.tensorboard)",
}


DATA_DIR_ENV = "EXTRAP_DATA_DIR"  # the datasets' root where --data-dir is not given (default: the config's)


DOWNLOAD_ENV = "EXTRAP_DOWNLOAD"  # 0: never fetch a missing dataset, say where to get it (the tests)


class ConfigError(ValueError):
    """A bad configuration or argument: reported as one line, exit status 2."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none), for a one-line report."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _train_fields() -> dict[str, dataclasses.Field]:
    from extrap.train import TrainConfig

    return {f.name: f for f in dataclasses.fields(TrainConfig)}


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``prog: message`` (exit status 2), like the runner's own."""

    def error(self, message: str):
        self.exit(2, f"{self.prog.split()[-1]}: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def parse_args(item: str | None, argv=None) -> argparse.Namespace:
    # the item's script describes it (under ``python -m`` it runs as __main__: import it by name)
    doc = OWN_ITEM_DOC if item is None else importlib.import_module(f"reproduce.{item}").__doc__
    ap = _OneLineParser(prog="python -m reproduce" if item is None else f"python -m reproduce.{item}", description=doc,
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="key=value arguments override any setting of the config")
    ap.add_argument("--scale", choices=SCALES, default="paper")
    ap.add_argument("--engine", choices=ENGINES, default=None)
    ap.add_argument("--workers", type=_positive_int, default=None, help="K (default: the config's)")
    ap.add_argument("--only", default=None, help="cells to run, comma-separated (default: all)")
    ap.add_argument("--variants", default=None,
                    help="variants to run, comma-separated (default: the scale's run_variants, else all)")
    ap.add_argument("--seeds", type=_positive_int, default=None, help="seeds 0..N-1 (default: the config's)")
    ap.add_argument("--jobs", type=_positive_int, default=1,
                    help="runs at once, each in a process of its own with its share of the CPU threads and its "
                         "output in its folder's log.txt (default 1; not under a launcher)")
    ap.add_argument("--data-dir", default=None, help=f"the datasets' root (default: ${DATA_DIR_ENV}, else the config's: datasets/)")
    ap.add_argument("--out", default=None, help="results folder (default: runs/<scale>)")
    ap.add_argument("--config", default=None, metavar="FILE",
                    help="your own item file, in the shipped configs' form (the item is named by its stem)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--cpu-ok", action="store_true", help="run the paper scale on a machine without a GPU all the same")
    ap.add_argument("--tensorboard", action="store_true",
                    help="TensorBoard event files in each run's folder (tensorboard --logdir OUT)")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    return ap.parse_intermixed_args(argv)  # overrides before, between or after the flags


def parse_overrides(pairs: list[str]) -> dict:
    """``key=value`` strings to a dict, values read as YAML scalars (numbers, booleans, lists); a
    dotted key reaches into a mapping (``task_kwargs.eval_train_samples=1000``)."""
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        path = key.split(".")
        if not sep or not all(path):
            raise ConfigError(f"{pair}: expected key=value")
        try:
            parsed = yaml.safe_load(value) if value else None
        except yaml.YAMLError as e:
            raise ConfigError(f"{key}: cannot read {value!r} ({e.__class__.__name__})") from None
        node = out
        for i, part in enumerate(path[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {'.'.join(path[:i + 1])} is given a value of its own too")
        last = path[-1]
        if isinstance(node.get(last), dict):  # a mapping that dotted keys began: merge into it, or refuse
            if not isinstance(parsed, dict):
                raise ConfigError(f"{key}: given a value of its own and dotted keys too")
            parsed = _merge(node[last], parsed)
        node[last] = parsed
    return out


# what a newcomer may write for a setting, and the setting's name here
ALIASES = {"lr": "base_lr", "learning_rate": "base_lr", "batch_size": "local_batch", "batch": "local_batch",
           "wd": "weight_decay", "epoch": "epochs", "k": "workers", "gamma_multiplier": "gamma_factor"}


def closest(key: str, known) -> str:
    """`` (did you mean X?)`` for an unknown key: an alias, or the most similar known name."""
    import difflib

    known = list(known)
    alias = ALIASES.get(key.lower())
    match = alias if alias in known else next(iter(difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)), None)
    return f" (did you mean {match}?)" if match else ""


@dataclass
class Run:
    item: str
    variant: str
    cell: str
    seed: int
    settings: dict
    shown: dict = dataclasses.field(default_factory=dict)  # how results/ shows it (``presentation``)
    protocol: dict = dataclasses.field(default_factory=dict)  # a tuned study's stage, point, panel (reproduce.tuning)

    @property
    def key(self) -> tuple:
        return (self.item, self.variant, self.cell, self.seed)


def load_config(item: str) -> dict:
    path = config_path(item)
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:  # one line: where, and what
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where} ({getattr(e, 'problem', None) or type(e).__name__})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    for section in ("about", "figures", "common", "scales", "variants", "cells"):
        if not isinstance(cfg.get(section, {}), dict):
            raise ConfigError(f"{section}: expected a mapping in {path.name}")
    try:
        read_figures(cfg)  # what results/ draws from the item's records
    except ValueError as e:
        raise ConfigError(f"{e} ({path.name})") from None
    return cfg


def check_settings(settings: dict, where: str) -> None:
    """Unknown keys and bad values, named."""
    fields = _train_fields()
    if "seed" in settings:
        raise ConfigError(f"seed: not a setting; --seeds N runs seeds 0..N-1 ({where})")
    for key in settings:
        if key not in fields and key not in RUN_KEYS:
            raise ConfigError(f"{key}: unknown key{closest(key, [*fields, *RUN_KEYS])} ({where})")
    for key, value in settings.items():
        if key in fields and not _type_ok(fields[key].type, value):
            raise ConfigError(f"{key}: expected {fields[key].type}, got {value!r} ({where})")
    try:
        train_config(settings)  # TrainConfig checks every range, the optimizer's included
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{e} ({where})") from None
    for key in ("workers", "seeds"):
        value = settings.get(key, 1)
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise ConfigError(f"{key}: expected an integer >= 1, got {settings[key]!r} ({where})")
    if not isinstance(settings.get("tensorboard", False), bool):
        raise ConfigError(f"tensorboard: expected true or false, got {settings['tensorboard']!r} ({where})")
    if settings.get("tensorboard"):
        from reproduce.tensorboard import available

        if not available():
            raise ConfigError("tensorboard: the tensorboard package is not installed; pip install 'extrap[tensorboard]'")
    for key in ("model_kwargs", "task_kwargs"):
        if not isinstance(settings.get(key, {}), dict):
            raise ConfigError(f"{key}: expected a mapping, got {settings[key]!r} ({where})")
    accepted = TASKS[settings["task"]].keywords() if settings.get("task") in TASKS else None
    for key in settings.get("task_kwargs", {}):
        if accepted is not None and key not in accepted:
            raise ConfigError(f"task_kwargs.{key}: unknown key for the {settings['task']} task"
                              f"{closest(key, accepted)} ({where})")
    target = settings.get("target_loss")
    targets = target if isinstance(target, list) else [target]
    if target is not None and not (targets and all(_type_ok("float", t) and 0 < t < float("inf") for t in targets)):
        raise ConfigError(f"target_loss: expected a positive number or a list of them, got {target!r} ({where})")
    if settings.get("task") not in TASKS:
        raise ConfigError(f"task: expected one of {', '.join(TASKS)}, got {settings.get('task')!r} ({where})")
    _check_task_and_model(settings, where)


def _check_task_and_model(settings: dict, where: str) -> None:
    """The task's keyword arguments against its signature, the dataset's name, and the model built
    on the meta device (no memory, no data): before any output, not inside training."""
    from models import build_model

    task = settings["task"]
    for key in ("data_dir", "data_subdir"):
        if key in settings and not isinstance(settings[key], str):
            raise ConfigError(f"{key}: expected a folder name, got {settings[key]!r} ({where})")
    if task == "cifar" and settings.get("dataset", "cifar10") not in ("cifar10", "cifar100"):
        raise ConfigError(f"dataset: expected cifar10 or cifar100, got {settings.get('dataset')!r} ({where})")
    cls = TASKS[task]
    params, keywords = inspect.signature(cls).parameters, cls.keywords()
    for key, value in settings.get("task_kwargs", {}).items():
        if key not in keywords:
            raise ConfigError(f"task_kwargs: {cls.__name__} takes no {key!r} (it takes {', '.join(keywords) or 'none'}) "
                              f"({where})")
        annotation = str(params[key].annotation)
        least = 0 if key == "eval_train_samples" else 1  # 0 (or None): every training image
        if not _type_ok(annotation, value) or (annotation.startswith("int") and value is not None and value < least) \
                or (key == "label_smoothing" and not 0 <= value < 1):
            raise ConfigError(f"task_kwargs: {key} expected {f'an integer >= {least}' if annotation.startswith('int') else annotation}"
                              f"{' or None' if 'None' in annotation else ''}, got {value!r} ({where})")
    if settings.get("probe_every") and not cls.smoothness_probe:
        probing = ", ".join(name for name, t in TASKS.items() if t.smoothness_probe)
        raise ConfigError(f"probe_every: the smoothness probe needs a classification task ({probing}), "
                          f"not {task} ({where})")
    try:
        with torch.device("meta"):
            build_model(settings.get("model"), **{**cls.stand_in_model_kwargs(settings), **settings.get("model_kwargs", {})})
    except (TypeError, ValueError, RuntimeError, NotImplementedError) as e:  # e.g. a negative size
        message = first_line(e)
        prefix = "" if message.startswith("model:") else "model_kwargs: "
        raise ConfigError(f"{prefix}{message} ({where})") from None


def _type_ok(annotation: str, value) -> bool:
    """Does ``value`` fit a TrainConfig field's annotation (``float``, ``int | None``, ...)?"""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = {"float": number, "int": isinstance(value, int) and not isinstance(value, bool),
          "bool": isinstance(value, bool), "str": isinstance(value, str), "None": value is None}
    options = [a.strip() for a in annotation.split("|")]
    return any(ok.get(a, isinstance(value, (list, tuple)) if a.startswith("tuple") else True)
               for a in options)


def _merge(*layers: dict) -> dict:
    """The layers' settings, later ones first; mappings merge key by key, at any depth."""
    out: dict = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = _merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def plan(item: str, args: argparse.Namespace) -> list[Run]:
    """Every (variant, cell, seed) of the item at this scale, with its resolved settings."""
    cfg = load_config(item)
    scale = cfg.get("scales", {}).get(args.scale)
    if not isinstance(scale, dict):
        raise ConfigError(f"scale: {item} has no {args.scale!r} section")
    scale = dict(scale)
    variant_overrides = scale.pop("variants", {}) or {}
    cell_overrides = scale.pop("cells", {}) or {}
    run_variants = scale.pop("run_variants", None)  # a scale may run only some variants
    run_cells = scale.pop("run_cells", None)  # ... and only some cells
    scale.pop("tuning", None)  # the tuning protocol's grids (reproduce.tuning), not a run's setting
    cli = parse_overrides(args.overrides)
    for flag, key in (("workers", "workers"), ("seeds", "seeds"), ("engine", "engine"), ("data_dir", "data_dir")):
        if getattr(args, flag) is not None:
            cli[key] = getattr(args, flag)
    if getattr(args, "data_dir", None) is None and os.environ.get(DATA_DIR_ENV):  # the tests' and CI's data
        cli["data_dir"] = os.environ[DATA_DIR_ENV]
    if getattr(args, "tensorboard", False):
        cli["tensorboard"] = True
    variants = cfg.get("variants") or {"default": {}}
    chosen = getattr(args, "variants", None)
    if chosen is not None:
        run_variants = [v.strip() for v in chosen.split(",") if v.strip()]
        known = list(dict.fromkeys([*variants, *variant_overrides]))
        unknown = [v for v in run_variants if v not in known]
        if unknown or not run_variants:
            raise ConfigError(f"--variants: unknown variant {unknown[0] if unknown else chosen!r}; "
                              f"{item} has {', '.join(known)}")
    if run_variants is not None:
        variants = {v: variants.get(v, {}) for v in run_variants}
    cells = cfg.get("cells") or {}
    if run_cells is not None:
        unknown = [c for c in run_cells if c not in cells]
        if unknown:
            raise ConfigError(f"run_cells: {item}'s {args.scale} scale names unknown cell {unknown[0]!r}")
        cells = {c: cells[c] for c in run_cells}
    only = None if args.only is None else [c.strip() for c in args.only.split(",") if c.strip()]
    if only is not None:
        unknown = [c for c in only if c not in cells]
        if unknown or not only:
            raise ConfigError(f"--only: unknown cell {unknown[0] if unknown else args.only!r}; "
                              f"{item} has {', '.join(cells)}")
    runs = []
    for variant, v_settings in variants.items():
        for cell, c_settings in cells.items():
            if only is not None and cell not in only:
                continue
            settings = _merge(cfg.get("common"), scale, v_settings, variant_overrides.get(variant),
                              c_settings, cell_overrides.get(cell), cli)
            check_settings(settings, f"{item} {variant}/{cell}")
            for seed in range(settings.get("seeds", 1)):
                runs.append(Run(item, variant, cell, seed, {**settings, "seed": seed},
                                presentation(cfg, list(variants), variant, cell)))
    return runs


class DataError(ConfigError):
    """A dataset that cannot serve a run (a missing, corrupt or too small file): one line, exit 2."""


def load_task(settings: dict, device):
    """The run's task (``data.TASKS``: ``from_settings``) and the model's keyword arguments that
    follow from its data, with its data errors (a missing, corrupt, empty or too small file, each
    named) as one ``DataError``, and the workers' batches checked against the training data
    (each task's ``steps_per_epoch`` refuses a batch the data cannot fill)."""
    try:
        task = TASKS[settings["task"]].from_settings(settings, device)
        workers, local_batch = settings.get("workers", 1), settings.get("local_batch", 32)
        task.steps_per_epoch(workers, local_batch)  # raises when the data hold no full step
    except (ValueError, OSError, EOFError) as e:
        raise DataError(first_line(e)) from None
    return task, task.model_kwargs()


def train_config(settings: dict):
    from extrap.train import TrainConfig

    fields = _train_fields()
    values = {k: v for k, v in settings.items() if k in fields}
    for key in ("milestones", "betas"):
        if key in values:
            values[key] = tuple(values[key])
    return TrainConfig(**values)


OWN_ITEM_DOC = """Run your own item: a config file in the form of reproduce/configs/*.yaml (about, common,
scales, variants, cells), checked as the shipped ones are; its records name the item by the file's
stem. With ``target_loss`` set, ``python -m results OUT`` then writes its study: steps to each
target and the area under the loss curve, per cell and seed (``results.study``)."""


def own_item(path: str) -> str:
    """A user's item file (``--config``) registered as its item; refused in one line when it is
    missing or its stem is not a usable item name."""
    from reproduce import use_config

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config: {path}: no such file")
    if not re.fullmatch(r"[A-Za-z0-9][\w-]*", file.stem) or file.stem == DEMO:
        raise ConfigError(f"--config: {path}: name the file after the item (letters, digits, - and _), e.g. my_study.yaml")
    if file.stem in ITEMS:
        raise ConfigError(f"--config: {path}: {file.stem} is one of the paper's items; give your file another name")
    return use_config(file)


RESNET20_CPU = 740  # img/s, ResNet-20 training on 2 CPU cores (docs/performance.md, item 4: 737)


def paper_on_cpu(runs: list[Run]) -> str:
    """The refusal of the paper scale on a machine without a GPU: what it would cost, and the
    scales that ask the same questions smaller."""
    passes: dict[str, float] = {}
    for r in runs:
        size, unit = TASKS[r.settings["task"]].epoch_size  # the paper's training sets
        passes[unit] = passes.get(unit, 0) + size * r.settings.get("epochs", 1)
    amount = ", ".join(f"{n / 1e6:,.0f} million {unit}" for unit, n in passes.items())
    days = passes.get("images", 0) / RESNET20_CPU / 86400
    pace = (f" (even at the {RESNET20_CPU} img/s ResNet-20 trains at on 2 CPU cores, {days:,.0f} days)"
            if days >= 1 else "")
    return (f"--scale paper: {len(runs)} runs, {amount} through the model{pace}, and no GPU here; --scale smoke "
            "asks the same in minutes (--scale laptop, where an item has it: hours), or add --cpu-ok to start anyway")


def prepare_data(runs: list[Run]) -> None:
    """Each dataset the runs read is in its folder, or fetched there with its checksum
    (``data.prepare``); offline, one line says what to download and where to put it."""
    from data.prepare import ensure_dataset

    fetch = os.environ.get(DOWNLOAD_ENV, "1") != "0"
    seen = set()
    for run in runs:
        s = run.settings
        key = (s.get("task"), s.get("dataset"), s.get("data_dir"), s.get("data_subdir"))
        if not TASKS[s["task"]].reads_data or key in seen:
            continue
        seen.add(key)
        if not fetch and not Path(s.get("data_dir") or ".").is_dir():
            continue  # nothing to look in and nothing to fetch: _check_data_paths names the folder
        try:
            ensure_dataset(s, fetch=fetch)
        except (FileNotFoundError, ValueError) as e:
            raise DataError(first_line(e)) from None


def check_data_paths(runs: list[Run]) -> None:
    """The data folders exist and can be read, before any work."""
    for root in {Path(r.settings.get("data_dir", ".")) / r.settings.get("data_subdir", "") for r in runs
                 if TASKS[r.settings["task"]].reads_data}:
        if not root.is_dir():
            raise ConfigError(f"--data-dir: {root} is not a directory (see docs/reproducing.md: Datasets)")
        if not os.access(root, os.R_OK | os.X_OK):
            raise ConfigError(f"--data-dir: {root} is not readable")
