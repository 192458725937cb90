"""One training run: a config in, a record out — the same loop under every engine.

``train`` reads top to bottom: ``setup`` (model on the engine, schedule, optimizer, probe),
``restart_from_checkpoint``, then per epoch ``train_one_epoch``, ``validate`` and
``save_checkpoint``. The task (a ``Task``: data and evaluation, so that ``extrap`` imports nothing
from ``data/`` or ``models/``) is the only thing that knows the dataset.

Checkpoints (one file per rank: a rank's workers, optimizer, RNG and curve) are written
atomically at the end of every ``checkpoint_every`` epochs (or, with ``checkpoint_minutes``, of
the first epoch that ends that long after the last one), with a checksum, keeping the previous
one (``extrap.checkpoint``). What a process's workers hold identically is stored once, and the
file is written in the background while training goes on. ``train`` resumes from the newest
checkpoint that every rank can verify, so rerunning an interrupted run continues it and ends
with the same record.

Each phase runs inside a ``torch.profiler.record_function`` range — ``extrap.prepare`` and
``extrap.build_optimizer`` once in ``setup``; per step ``extrap.data``, ``extrap.perturb``,
``extrap.forward_backward``, ``extrap.step``; ``extrap.evaluation`` and ``extrap.checkpoint`` —
so a ``torch.profiler.profile`` of a run shows where its time goes (``bench/train_loop.py``).
Without an active profiler a range costs a few microseconds (a step takes milliseconds).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn
from torch.profiler import record_function
from torch.utils._pytree import tree_map

from . import checkpoint as checkpoint_io
from .arguments import check_optimizer_arguments, require
from .engines.comm import Communicator, scale_per_worker_, total_worker_norms
from .engines import PRECISIONS, Engine, Execution, Workers
from .local_sgd import PostLocalSGD
from .optim import PERTURBATIONS, REGISTRY, ExtrapolatedAdam, ExtrapolatedSGD
from .param_groups import weight_decay_groups
from .schedules import KINDS, SCALINGS, Schedule, scaled_lr
from .batchnorm import has_batch_norm
from .smoothness import SmoothnessProbe

GAMMA_RULES = ("local-batch", "base-batch")

__all__ = ["Task", "TaskBase", "TrainConfig", "train", "setup", "train_one_epoch", "validate", "save_checkpoint",
           "restart_from_checkpoint", "build_optimizer"]


@runtime_checkable
class Task(Protocol):
    """The data and the evaluation of one experiment; ``TaskBase`` supplies the optional members."""

    metric: str  # the key of the task's test metric in ``evaluate``'s dict
    metric_higher: bool  # whether the metric improves upwards

    def loss(self, outputs: Any, targets: Any) -> Tensor | tuple[Tensor, Any]:
        """The loss of a batch; or ``(loss, aux)``, aux carried to ``after_step`` (an LSTM's next state)."""

    def steps_per_epoch(self, num_workers: int, local_batch: int) -> int: ...

    def train_batches(self, workers: Sequence[int], epoch: int, step: int, local_batch: int,
                      num_workers: int) -> tuple:
        """The batches ``(inputs, targets)`` of the workers ``workers``, each from its own shard,
        stacked: every tensor ``[len(workers), b, ...]``. One call for all the workers a process
        holds; in steady state it should not read the device (no host–device synchronisation)."""

    def evaluate(self, module: nn.Module) -> dict:
        """``train_loss`` and the task's metric, at x_t."""

    def after_step(self, aux: dict) -> None:
        """Where ``loss`` returns ``(loss, aux)``: {worker id: that worker's aux}, after each step."""

    def subset_loss(self, module: nn.Module, reestimate_bn: bool = False) -> Tensor | None:
        """The training loss at x_t on a fixed small subset, a device scalar, for the trace
        (``TrainConfig.log_every``); with ``reestimate_bn``, BatchNorm statistics re-estimated at
        x_t first. None where the task has no such subset."""

    def probe_batch(self) -> tuple:
        """``(inputs, targets)`` for the smoothness probe (``TrainConfig.probe_every``)."""


class TaskBase:
    """The defaults of a ``Task``'s optional members, one worker's batch for scripts, and how a
    task is built from a run's settings (``from_settings``, ``model_kwargs``), which a registry of
    tasks by ``name`` serves (``data.TASKS``)."""

    name = ""  # the task's name in configs
    metric_higher = True
    smoothness_probe = False  # whether probe_batch serves the smoothness probe
    reads_data = True  # whether it reads a dataset folder (``data_dir``/``data_subdir``)
    epoch_size = (0, "examples")  # what one epoch passes through the model at the paper's scale
    set_from_settings = frozenset({"root", "device", "seed"})  # keywords from_settings gives itself

    @classmethod
    def from_settings(cls, settings: dict, device) -> "TaskBase":
        """The task of a run's resolved settings (``task_kwargs`` passed on as keywords)."""
        return cls(Path(settings.get("data_dir", ".")) / settings.get("data_subdir", ""), device=device,
                   seed=settings["seed"], **settings.get("task_kwargs", {}))

    @classmethod
    def keywords(cls) -> list[str]:
        """The keywords a config's ``task_kwargs`` may give it."""
        import inspect

        return [k for k in inspect.signature(cls).parameters if k not in cls.set_from_settings]

    def model_kwargs(self) -> dict:
        """The model's keyword arguments that follow from the data (classes, vocabulary sizes)."""
        return {}

    @classmethod
    def stand_in_model_kwargs(cls, settings: dict) -> dict:
        """``model_kwargs`` before any data is read, to check a config's model on the meta device."""
        return {}

    def after_step(self, aux: dict) -> None:
        return None

    def subset_loss(self, module: nn.Module, reestimate_bn: bool = False) -> Tensor | None:
        return None

    def probe_batch(self) -> tuple:
        raise NotImplementedError(f"{type(self).__name__} has no probe batch: the smoothness probe is "
                                  "for image classification (Figure 1b)")

    def train_batch(self, worker: int, epoch: int, step: int, local_batch: int, num_workers: int) -> tuple:
        """One worker's batch ``(inputs, targets)`` of ``[b, ...]`` tensors (``train_batches`` of one)."""
        return tree_map(lambda t: t[0], self.train_batches((worker,), epoch, step, local_batch, num_workers))


@dataclass
class TrainConfig:
    """Hyperparameters of one run (one cell and seed).

    ``base_lr`` is the small-batch rate for ``base_batch``; the run's rate is scaled to the global
    batch K·``local_batch`` by ``lr_scaling`` and warmed up over ``warmup_epochs``. ``gamma=None``
    is the optimizer's default γ_t = ``gamma_factor`` · η_t · b/B, following η_t's warmup and decays;
    ``gamma_rule="base-batch"`` is the earlier rule (η_base = η/s through the warmup, then the
    decays; s the rate's scaling factor), kept to rerun old records. ``lars_lookahead``: under
    LARS the look-ahead takes the same trust ratio as the update (``ExtrapolatedSGD``).
    """

    perturbation: str = "none"
    gamma: float | None = None
    gamma_factor: float = 1.0  # γ_t = gamma_factor · η_t · b/B (the paper tunes this factor)
    gamma_rule: str = "local-batch"  # or "base-batch": the earlier rule, η_base held through the warmup
    local_batch: int = 32
    base_batch: int = 32
    base_lr: float = 0.1
    lr_scaling: str = "linear"
    schedule: str = "step"
    milestones: tuple[float, ...] = (0.5, 0.75)
    warmup_epochs: float = 0.0
    warmup_steps: int | None = None  # at base_batch; scaled by base_batch/B (Transformer), overrides warmup_epochs
    epochs: int = 10
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    lars: bool = False
    trust: float = 0.02
    lars_lookahead: bool = True
    post_local: bool = False
    switch_epoch: float | None = None  # None: the first learning-rate decay
    local_steps: int = 16
    seed: int = 0
    eval_every: int = 1  # epochs
    log_every: int = 0  # steps between trace points (mini-batch loss, loss at x_t on a subset); 0: none
    loss_bound: float = 1e3  # a mean training loss above this is divergence
    probe_every: int = 0  # steps; 0: no smoothness probe
    optimizer: str = "sgd"  # "sgd": ExtrapolatedSGD; "adam": ExtrapolatedAdam
    betas: tuple[float, float] = (0.9, 0.999)  # adam
    eps: float = 1e-8  # adam
    clip_norm: float | None = None  # clip each worker's local gradient to this norm
    checkpoint_every: int = 1  # epochs
    checkpoint_minutes: float | None = None  # instead: at the end of the first epoch this long after the last
    dtype: str = "float32"  # float64: engine-equivalence and numerics checks
    precision: str = "float32"  # "bf16": the forward under bfloat16 autocast (extrap.engines.Execution)
    channels_last: bool = False  # 4-D weights and images in channels-last memory order
    compile: str | None = None  # a torch.compile backend for the workers' forward and backward

    def __post_init__(self):
        require({key: (getattr(self, key), ok, expected) for key, (ok, expected) in {
            "perturbation": (self.perturbation in PERTURBATIONS, "one of " + ", ".join(PERTURBATIONS)),
            "lr_scaling": (self.lr_scaling in SCALINGS, "one of " + ", ".join(SCALINGS)),
            "schedule": (self.schedule in KINDS, "one of " + ", ".join(KINDS)),
            "base_lr": (0 < self.base_lr < math.inf, "a finite number > 0"),
            "gamma_factor": (0 <= self.gamma_factor < math.inf, "a finite number >= 0"),
            "gamma_rule": (self.gamma_rule in GAMMA_RULES, "one of " + ", ".join(GAMMA_RULES)),
            "weight_decay": (self.weight_decay >= 0, "a number >= 0"),
            "local_batch": (self.local_batch >= 1, "an integer >= 1"),
            "base_batch": (self.base_batch >= 1, "an integer >= 1"),
            "epochs": (self.epochs >= 1, "an integer >= 1"),
            "eval_every": (self.eval_every >= 1, "an integer >= 1"),
            "log_every": (self.log_every >= 0, "an integer >= 0"),
            "warmup_epochs": (0 <= self.warmup_epochs < math.inf, "a finite number >= 0"),
            "warmup_steps": (self.warmup_steps is None or self.warmup_steps >= 0, "None or an integer >= 0"),
            "milestones": (_increasing_fractions(self.milestones),
                           "increasing fractions of training in (0, 1), e.g. [0.5, 0.75]"),
            "switch_epoch": (self.switch_epoch is None or 0 <= self.switch_epoch < math.inf,
                             "None or a finite number >= 0"),
            "loss_bound": (0 < self.loss_bound < math.inf, "a finite number > 0"),
            "probe_every": (self.probe_every >= 0, "an integer >= 0"),
            "local_steps": (self.local_steps >= 1, "an integer >= 1"),
            "optimizer": (self.optimizer in ("sgd", "adam"), "sgd or adam"),
            "checkpoint_every": (self.checkpoint_every >= 1, "an integer >= 1"),
            "checkpoint_minutes": (self.checkpoint_minutes is None or self.checkpoint_minutes > 0,
                                   "None or a number > 0"),
            "clip_norm": (self.clip_norm is None or self.clip_norm > 0, "None or a number > 0"),
            "dtype": (self.dtype in ("float32", "float64"), "float32 or float64"),
            "precision": (self.precision in PRECISIONS and (self.precision == "float32" or self.dtype == "float32"),
                          f"one of {', '.join(PRECISIONS)} (bf16 with dtype float32)"),
        }.items()})
        # the optimizer's own ranges, as its constructor checks them (build_optimizer)
        check_optimizer_arguments(gamma=self.gamma, seed=self.seed, **(
            dict(betas=tuple(self.betas), eps=self.eps) if self.optimizer == "adam" else
            dict(momentum=self.momentum, trust=self.trust)))
        if self.optimizer == "sgd" and self.nesterov and self.momentum == 0:
            raise ValueError("nesterov: expected False when momentum is 0, got True")


def _increasing_fractions(values) -> bool:
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1]
    return len(numbers) == len(values) and all(a < b for a, b in zip(numbers, numbers[1:]))


def clip_local_grads_(points: list[Tensor], max_norm: float, comm: Communicator) -> None:
    """Clip each worker's local gradient (all its tensors together, on the tensors the workers
    compute at: ``workers.points()``) to norm ``max_norm``."""
    grads = [p.grad for p in points if p.grad is not None]
    total = total_worker_norms(comm, grads)  # [workers]
    scale_per_worker_(comm, grads, (max_norm / (total + 1e-6)).clamp(max=1.0))


def _use_dtype(model: nn.Module, dtype: torch.dtype) -> None:
    """Convert the model and cast its floating inputs on the way in (tasks produce float32)."""
    cast = lambda t: t.to(dtype) if torch.is_tensor(t) and t.is_floating_point() else t  # noqa: E731
    model.to(dtype)
    model.register_forward_pre_hook(lambda module, args: tree_map(cast, args))


def build_optimizer(cfg: TrainConfig, groups, lr: float, workers: int, rate_scale: float, comm):
    """ExtrapolatedSGD or ExtrapolatedAdam from the run's config: ``lr`` the peak rate, ``workers``
    K = B/b, ``rate_scale`` the rate's scaling factor s (the earlier γ rule divides by it)."""
    gamma = dict(gamma=cfg.gamma, gamma_factor=cfg.gamma_factor, lr_scale=float(workers), gamma_warmup=True)
    if cfg.gamma_rule == "base-batch":
        gamma.update(lr_scale=rate_scale, gamma_warmup=False)
    if cfg.optimizer == "adam":
        return ExtrapolatedAdam(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                perturbation=cfg.perturbation, comm=comm, seed=cfg.seed, **gamma)
    return ExtrapolatedSGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           perturbation=cfg.perturbation, lars=cfg.lars, trust=cfg.trust,
                           lars_lookahead=cfg.lars_lookahead, comm=comm, seed=cfg.seed, **gamma)


@dataclass
class Training:
    """What ``setup`` builds and the pieces of ``train`` share."""

    cfg: TrainConfig
    engine: Engine
    task: Task
    workers: Workers
    optimizer: ExtrapolatedSGD | ExtrapolatedAdam | PostLocalSGD
    schedule: Schedule
    steps_per_epoch: int
    peak_lr: float
    lr_scale: float
    probe: SmoothnessProbe | None = None
    curve: list = field(default_factory=list)
    trace: list = field(default_factory=list)

    @property
    def global_batch(self) -> int:
        return self.engine.world_size * self.cfg.local_batch


def setup(cfg: TrainConfig, engine: Engine, model: nn.Module, task: Task, say: Callable[[str], None]) -> Training:
    """The model on the engine's workers, the scaled and warmed-up schedule, the optimizer."""
    k = engine.world_size
    if cfg.clip_norm is not None and engine.use_ddp:
        raise ValueError("clip_norm: each worker's gradient is clipped before averaging, but under DDP the "
                         "average is formed during backward; use the processes engine without ddp=True")
    if cfg.dtype != "float32":
        _use_dtype(model, getattr(torch, cfg.dtype))
    with record_function("extrap.prepare"):
        workers = engine.prepare(model, Execution(cfg.precision, cfg.channels_last, cfg.compile))
    global_batch = k * cfg.local_batch
    peak_lr, lr_scale = scaled_lr(cfg.base_lr, global_batch, cfg.base_batch, cfg.lr_scaling)
    steps_per_epoch = task.steps_per_epoch(k, cfg.local_batch)
    total = cfg.epochs * steps_per_epoch
    warmup = (round(cfg.warmup_epochs * steps_per_epoch) if cfg.warmup_steps is None
              else round(cfg.warmup_steps * cfg.base_batch / global_batch))  # fewer, larger steps
    schedule = Schedule(cfg.base_lr, lr_scale, total, cfg.schedule,
                        warmup_steps=max(warmup, int(cfg.schedule == "inverse-sqrt")),
                        milestones=tuple(cfg.milestones))
    groups = weight_decay_groups(model, cfg.weight_decay, workers.named_parameters(), log=say)
    with record_function("extrap.build_optimizer"):
        optimizer = build_optimizer(cfg, groups, peak_lr, k, lr_scale, engine.comm)
        engine.attach(optimizer)
    if cfg.post_local:
        switch = (round(cfg.switch_epoch * steps_per_epoch) if cfg.switch_epoch is not None
                  else round(min(cfg.milestones, default=1.0) * total))
        optimizer = PostLocalSGD(optimizer, switch_step=switch, local_steps=cfg.local_steps)
    probe = SmoothnessProbe(task.loss, task.probe_batch(), cfg.probe_every) if cfg.probe_every else None
    return Training(cfg, engine, task, workers, optimizer, schedule, steps_per_epoch, peak_lr, lr_scale, probe)


def _gamma_used(run: Training) -> float:
    """γ of the step just taken (of the first parameter group); 0 where nothing perturbs."""
    opt = run.optimizer.optimizer if isinstance(run.optimizer, PostLocalSGD) else run.optimizer
    return opt.gamma(opt.param_groups[0]) if opt.kind.direction is not None else 0.0


def _trace_point(run: Training, step: int, batch_loss: Tensor, lr: float) -> dict:
    """A trace point after ``step``: its ``lr`` and ``gamma``; ``batch_loss``, this process's
    workers' mean mini-batch loss at x̃ since the last point; where the task has ``subset_loss``,
    the loss at x_t (worker 0's model) on its fixed subset, with the running BatchNorm statistics
    the forwards at x̃ gathered (``train_loss_subset``) and, where the model has BatchNorm, with
    statistics re-estimated at x_t (``train_loss_bn``); device tensors until the epoch ends."""
    point = {"step": step, "lr": lr, "gamma": _gamma_used(run), "batch_loss": batch_loss}
    module = run.workers.eval_module(0)
    loss = run.task.subset_loss(module)
    if loss is not None:
        point["train_loss_subset"] = loss
        if has_batch_norm(module):
            point["train_loss_bn"] = run.task.subset_loss(module, reestimate_bn=True)
    return point


def _read_trace(run: Training, points: list[dict]) -> list[dict]:
    """The epoch's trace points as numbers: mini-batch losses averaged over all workers."""
    out = []
    for p in points:
        point = {"step": p["step"], "lr": p["lr"], "gamma": p["gamma"],
                 "batch_loss": float(run.engine.mean_over_workers(p["batch_loss"]))}
        for key in ("train_loss_subset", "train_loss_bn"):
            if key in p:
                point[key] = float(p[key])
        out.append(point)
    return out


def train_one_epoch(run: Training, epoch: int, bar=None) -> tuple[float, float]:
    """One epoch of extrap steps; returns (mean mini-batch loss at the workers' x̃, last lr).
    Every ``log_every`` steps a point is added to ``run.trace`` (read from the device once, at
    the epoch's end)."""
    cfg, engine, task, workers, optimizer = run.cfg, run.engine, run.task, run.workers, run.optimizer
    k = engine.world_size
    fresh = REGISTRY[cfg.perturbation].closure
    loss_sum, lr = torch.zeros((), device=engine.device), 0.0
    points, last = [], (epoch * run.steps_per_epoch, loss_sum.clone())  # the last trace point: step, loss_sum
    for i in range(run.steps_per_epoch):
        step = epoch * run.steps_per_epoch + i
        lr = run.schedule.apply(optimizer, step)  # γ_t follows: the optimizer's gamma()
        with record_function("extrap.data"):
            inputs, targets = engine.worker_batch(task.train_batches(engine.worker_ids, epoch, i, cfg.local_batch, k))

        def closure():  # a gradient at x_t for extragradient and SAM
            optimizer.zero_grad()
            return workers.forward_backward(task.loss, inputs, targets)[0]

        optimizer.zero_grad()
        with record_function("extrap.perturb"):
            optimizer.perturb(closure if fresh else None)
        with record_function("extrap.forward_backward"):
            losses, aux = workers.forward_backward(task.loss, inputs, targets)
        if aux is not None:
            task.after_step(dict(zip(engine.worker_ids, aux)))
        loss_sum += losses.sum()
        if cfg.clip_norm is not None:
            clip_local_grads_(list(workers.points().values()), cfg.clip_norm, engine.comm)
        with record_function("extrap.step"):
            optimizer.step()
        if run.probe is not None and run.probe.due(step + 1):
            run.probe.observe(step + 1, workers.eval_module(0))
        if cfg.log_every and (step + 1) % cfg.log_every == 0:
            since, before = last
            mean = (loss_sum - before) / ((step + 1 - since) * len(engine.worker_ids))
            points.append(_trace_point(run, step + 1, mean, lr))
            last = (step + 1, loss_sum.clone())
        if bar is not None:
            bar.update(1)
    run.trace.extend(_read_trace(run, points))
    n = run.steps_per_epoch * len(engine.worker_ids)
    return float(engine.mean_over_workers(loss_sum / n)), lr


def validate(run: Training, epoch: int, batch_loss: float, lr: float, elapsed: float) -> dict:
    """The curve's point after ``epoch``: the task's evaluation at x_t (worker 0's model, which
    rank 0 evaluates for every rank)."""
    with record_function("extrap.evaluation"):
        metrics = run.engine.from_main(lambda: run.task.evaluate(run.workers.eval_module(0)))
    point = {"epoch": epoch + 1, "step": (epoch + 1) * run.steps_per_epoch, "lr": lr,
             "batch_loss": batch_loss, **metrics}
    point.setdefault("train_loss", batch_loss)
    point["time_s"] = elapsed
    return point


def _checkpoint_path(run: Training, prefix: str | Path) -> Path:
    return Path(f"{prefix}.rank{run.engine.rank}.pt")


def save_checkpoint(run: Training, prefix: str | Path, epoch: int, elapsed: float,
                    writer: checkpoint_io.Writer | None = None) -> None:
    """This rank's workers, optimizer, RNG, curve and probe after ``epoch`` epochs; what its
    workers hold identically, once. ``writer``: write the file in the background."""
    held = len(run.engine.worker_ids)
    state = {"epoch": epoch, "workers": checkpoint_io.pack_worker_copies(run.workers.state_dict(), held),
             "optimizer": checkpoint_io.pack_worker_copies(run.optimizer.state_dict(), held),
             "rng": torch.get_rng_state(), "curve": run.curve, "trace": run.trace, "elapsed": elapsed,
             "probe": run.probe.state_dict() if run.probe is not None else None}
    (writer or checkpoint_io).save(state, _checkpoint_path(run, prefix))


def _checkpoint_due(run: Training, epoch: int, last_saved: float) -> bool:
    """Whether to checkpoint after ``epoch``: every ``checkpoint_every`` epochs, or once
    ``checkpoint_minutes`` have passed on every rank's clock (so that all ranks agree)."""
    minutes = run.cfg.checkpoint_minutes
    if minutes is None:
        return (epoch + 1) % run.cfg.checkpoint_every == 0
    return run.engine.min_over_ranks(int(time.perf_counter() - last_saved >= 60 * minutes)) == 1


def restart_from_checkpoint(run: Training, prefix: str | Path, say: Callable[[str], None]) -> tuple[int, float]:
    """Load the newest checkpoint every rank holds and can verify (current or previous); returns
    (epochs done, seconds spent), (0, 0.0) when there is none.

    Ranks agree on its epoch, so one corrupt file (reported) makes all ranks step back together.
    """
    engine = run.engine
    rank = engine.rank
    warn = lambda m: warnings.warn(f"rank {rank}: {m}", stacklevel=3)  # noqa: E731
    found = {state["epoch"]: (path, state)
             for path, state in checkpoint_io.load_latest(_checkpoint_path(run, prefix), warn=warn)}
    epoch = engine.min_over_ranks(max(found, default=0))
    if epoch > 0 and engine.min_over_ranks(int(epoch in found)) == 0:
        epoch = 0  # some rank lacks that epoch's checkpoint: start over rather than mix epochs
    if epoch == 0:
        return 0, 0.0
    path, state = found[epoch]
    try:  # a checksum-valid file of another run (model, worker count, optimizer, perturbation) fails here
        run.workers.load_state_dict(checkpoint_io.unpack_worker_copies(state["workers"]))
        run.optimizer.load_state_dict(checkpoint_io.unpack_worker_copies(state["optimizer"]))
        torch.set_rng_state(state["rng"])
        run.curve, run.trace = state["curve"], state.get("trace", [])
        if run.probe is not None:
            run.probe.load_state_dict(state["probe"])
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise checkpoint_io.CheckpointError(
            f"{path}: holds another run's state ({first}); remove it (and its .prev) to start this run over"
        ) from None
    say(f"resumed from {path} at epoch {epoch}")
    return epoch, state["elapsed"]


def train(cfg: TrainConfig, engine: Engine, model: nn.Module, task: Task, log: Callable[[str], None] | None = None,
          on_eval: Callable[[dict], None] | None = None, checkpoint: str | Path | None = None,
          progress: bool = False, desc: str = "", on_trace: Callable[[dict], None] | None = None) -> dict:
    """Train ``model`` with ``cfg`` on ``engine``'s K workers; return the run's record.

    The record holds ``status`` (``completed`` or ``diverged``, with ``diverged_at``), ``steps``,
    ``final`` (the last evaluation), ``trace`` (every ``log_every`` steps: step, batch_loss over
    those steps, and train_loss_subset — the loss at x_t on the task's fixed subset — where the
    task has one), ``curve`` (one dict per evaluation: epoch, step, lr,
    train_loss at x_t, batch_loss — the mean mini-batch loss at the workers' x̃ — and the task's
    metric), ``smoothness`` when probed, and timing. Every rank returns it; rank 0 writes it.

    ``checkpoint``: a path prefix; rank r keeps ``<prefix>.rank<r>.pt`` and resumes from it.
    ``progress``: a tqdm bar on rank 0. ``on_eval(point)``, ``on_trace(point)``: on rank 0, each
    evaluation as it is made and each trace point as its epoch ends (when they are read).
    """
    say = log if (log is not None and engine.is_main) else (lambda _: None)
    run = setup(cfg, engine, model, task, say)
    start_epoch, elapsed = restart_from_checkpoint(run, checkpoint, say) if checkpoint is not None else (0, 0.0)
    total = cfg.epochs * run.steps_per_epoch
    say(f"{engine.kind} engine, K={engine.world_size} workers × b={cfg.local_batch} = B={run.global_batch}; "
        f"η={run.peak_lr:g} (η_base={cfg.base_lr:g} × {run.lr_scale:g}), {total} steps, "
        f"{cfg.optimizer} perturbation={cfg.perturbation}{' + post-local SGD' if cfg.post_local else ''}")
    bar = None
    if progress and engine.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=start_epoch * run.steps_per_epoch, desc=desc, unit="step",
                   dynamic_ncols=True, leave=False)
    started = time.perf_counter() - elapsed
    writer, last_saved = checkpoint_io.Writer(), time.perf_counter()
    status, step = "completed", start_epoch * run.steps_per_epoch
    run.workers.train()
    for epoch in range(start_epoch, cfg.epochs):
        traced = len(run.trace)
        batch_loss, lr = train_one_epoch(run, epoch, bar)
        if on_trace is not None and engine.is_main:
            for point in run.trace[traced:]:
                on_trace(point)
        step = (epoch + 1) * run.steps_per_epoch
        if not math.isfinite(batch_loss) or batch_loss > cfg.loss_bound:
            status = "diverged"
            run.curve.append({"epoch": epoch + 1, "step": step, "lr": lr, "batch_loss": batch_loss})
            say(f"diverged at step {step} (mean mini-batch loss {batch_loss:g} > bound {cfg.loss_bound:g})")
            break
        last = epoch + 1 == cfg.epochs
        if (epoch + 1) % cfg.eval_every == 0 or last:
            point = validate(run, epoch, batch_loss, lr, time.perf_counter() - started)
            run.curve.append(point)
            if on_eval is not None and engine.is_main:
                on_eval(point)
            if bar is not None:
                bar.set_postfix({key: f"{v:.4g}" for key, v in point.items()
                                 if key in ("epoch", "train_loss", task.metric)})
        if checkpoint is not None and (last or _checkpoint_due(run, epoch, last_saved)):
            with record_function("extrap.checkpoint"):
                save_checkpoint(run, checkpoint, epoch + 1, time.perf_counter() - started, writer)
            last_saved = time.perf_counter()
    writer.wait()
    if bar is not None:
        bar.close()
    curve = run.curve
    final = {key: v for key, v in curve[-1].items() if key not in ("epoch", "step", "lr", "time_s")} if curve else {}
    record = {
        "status": status,
        "steps": step,
        "workers": engine.world_size,
        "local_batch": cfg.local_batch,
        "global_batch": run.global_batch,
        "engine": engine.kind,
        "final": final,
        "curve": curve,
        "trace": run.trace,
        "config": asdict(cfg),
        "time_s": time.perf_counter() - started,
    }
    if status == "diverged":
        record["diverged_at"] = step
    if run.probe is not None:
        record["smoothness"] = run.probe.history
    return record
