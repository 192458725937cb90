"""One training run: a config in, a record out — the same loop under every engine.

The task object supplies the data and the evaluation (``extrap`` imports nothing from ``data/``
or ``models/``); it needs:

- ``loss(outputs, targets) -> Tensor``
- ``steps_per_epoch(num_workers, local_batch) -> int``
- ``train_batch(worker, epoch, step, local_batch, num_workers) -> (inputs, targets)``: worker's
  batch from its own shard
- ``evaluate(module) -> dict`` with ``train_loss`` and the task's metric (``task.metric``)
- ``probe_batch() -> (inputs, targets)``, only for the smoothness probe;
- optionally ``after_step(aux, worker_ids, stacked)``: receives what ``loss`` returned beside the loss
  (``loss`` may return ``(loss, aux)``, e.g. an LSTM's next hidden state), and ``metric_higher``
  (True when the metric improves upwards).

Checkpoints (one file per rank: a rank's workers, optimizer, RNG and curve) are written
atomically at the end of every ``checkpoint_every`` epochs, with a checksum, keeping the previous
one (``extrap.checkpoint``); ``train`` resumes from the newest that every rank can verify, so
rerunning an interrupted run continues it and ends with the same record.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import checkpoint as checkpoint_io
from .local_sgd import PostLocalSGD
from .optim import _FRESH_GRADIENT, PERTURBATIONS, ExtrapolatedAdam, ExtrapolatedSGD
from .param_groups import weight_decay_groups
from .schedules import KINDS, SCALINGS, Schedule, scaled_lr
from .smoothness import SmoothnessProbe

__all__ = ["TrainConfig", "train"]

# perturbations whose γ is a step size and so follows the unscaled learning-rate schedule
_STEP_SIZE = frozenset({"extrap", "stochastic", "extragradient"})


@dataclass
class TrainConfig:
    """Hyperparameters of one run (one cell and seed).

    ``base_lr`` is the small-batch rate for ``base_batch``; the run's rate is scaled to the global
    batch K·``local_batch`` by ``lr_scaling`` and warmed up over ``warmup_epochs``. ``gamma=None``
    lets γ follow the unscaled schedule (× ``gamma_multiplier``) for step-size perturbations.
    """

    perturbation: str = "none"
    gamma: float | None = None
    gamma_multiplier: float = 1.0
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
    post_local: bool = False
    switch_epoch: float | None = None  # None: the first learning-rate decay
    local_steps: int = 16
    seed: int = 0
    eval_every: int = 1  # epochs
    loss_bound: float = 1e3  # a mean training loss above this is divergence
    probe_every: int = 0  # steps; 0: no smoothness probe
    optimizer: str = "sgd"  # "sgd": ExtrapolatedSGD; "adam": ExtrapolatedAdam
    betas: tuple[float, float] = (0.9, 0.999)  # adam
    eps: float = 1e-8  # adam
    clip_norm: float | None = None  # clip each worker's local gradient to this norm
    checkpoint_every: int = 1  # epochs
    dtype: str = "float32"  # float64: engine-equivalence and numerics checks

    def __post_init__(self):
        checks = {
            "perturbation": (self.perturbation in PERTURBATIONS, "one of " + ", ".join(PERTURBATIONS)),
            "lr_scaling": (self.lr_scaling in SCALINGS, "one of " + ", ".join(SCALINGS)),
            "schedule": (self.schedule in KINDS, "one of " + ", ".join(KINDS)),
            "base_lr": (self.base_lr > 0, "a number > 0"),
            "weight_decay": (self.weight_decay >= 0, "a number >= 0"),
            "local_batch": (self.local_batch >= 1, "an integer >= 1"),
            "base_batch": (self.base_batch >= 1, "an integer >= 1"),
            "epochs": (self.epochs >= 1, "an integer >= 1"),
            "eval_every": (self.eval_every >= 1, "an integer >= 1"),
            "warmup_epochs": (self.warmup_epochs >= 0, "a number >= 0"),
            "local_steps": (self.local_steps >= 1, "an integer >= 1"),
            "optimizer": (self.optimizer in ("sgd", "adam"), "sgd or adam"),
            "checkpoint_every": (self.checkpoint_every >= 1, "an integer >= 1"),
            "clip_norm": (self.clip_norm is None or self.clip_norm > 0, "None or a number > 0"),
            "dtype": (self.dtype in ("float32", "float64"), "float32 or float64"),
        }
        for key, (ok, expected) in checks.items():
            if not ok:
                raise ValueError(f"{key}: expected {expected}, got {getattr(self, key)!r}")


def _clip_local_(params: list, max_norm: float, stacked: bool) -> None:
    """Clip each worker's local gradient to ``max_norm`` (per worker when stacked)."""
    grads = [p.grad for p in params if p.grad is not None]
    if stacked:
        norms = torch.stack([g.reshape(g.shape[0], -1).norm(dim=1) for g in grads]).norm(dim=0)
    else:
        norms = torch.stack([g.norm() for g in grads]).norm()
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.reshape(-1, *[1] * (g.dim() - 1)) if stacked else scale)


def _use_dtype(model: nn.Module, dtype: torch.dtype) -> None:
    """Convert the model and cast its floating inputs on the way in (tasks produce float32)."""
    from torch.utils._pytree import tree_map

    cast = lambda t: t.to(dtype) if torch.is_tensor(t) and t.is_floating_point() else t  # noqa: E731
    model.to(dtype)
    model.register_forward_pre_hook(lambda module, args: tree_map(cast, args))


def _resume_point(engine, ckpt: Path) -> tuple[Path, dict] | None:
    """The newest checkpoint every rank holds and can verify (current or previous), or None.

    Ranks agree on its epoch, so one corrupt file (reported) makes all ranks step back together.
    """
    rank = getattr(engine, "rank", 0)
    found = {state["epoch"]: (path, state) for path, state in
             checkpoint_io.load_latest(ckpt, warn=lambda m: print(f"rank {rank}: {m}", file=sys.stderr, flush=True))}
    epoch = engine.min_over_ranks(max(found, default=0))
    if epoch > 0 and engine.min_over_ranks(int(epoch in found)) == 0:
        epoch = 0  # some rank lacks that epoch's checkpoint: start over rather than mix epochs
    return found[epoch] if epoch > 0 else None


def build_optimizer(cfg: TrainConfig, groups, lr: float, lr_scale: float, comm):
    """ExtrapolatedSGD or ExtrapolatedAdam from the run's config."""
    if cfg.optimizer == "adam":
        return ExtrapolatedAdam(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                perturbation=cfg.perturbation, gamma=cfg.gamma, comm=comm,
                                lr_scale=lr_scale, seed=cfg.seed)
    return ExtrapolatedSGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           perturbation=cfg.perturbation, gamma=cfg.gamma, lr_scale=lr_scale,
                           lars=cfg.lars, trust=cfg.trust, comm=comm, seed=cfg.seed)


def train(cfg: TrainConfig, engine, model: nn.Module, task, log: Callable[[str], None] | None = None,
          on_eval: Callable[[dict], None] | None = None, checkpoint: str | Path | None = None,
          progress: bool = False, desc: str = "") -> dict:
    """Train ``model`` with ``cfg`` on ``engine``'s K workers; return the run's record.

    The record holds ``status`` (``completed`` or ``diverged``, with ``diverged_at``), ``steps``,
    ``final`` (the last evaluation), ``curve`` (one dict per evaluation: epoch, step, lr,
    train_loss at x_t, batch_loss — the mean mini-batch loss at the workers' x̃ — and the task's
    metric), ``smoothness`` when probed, and timing. Every rank returns it; rank 0 writes it.

    ``checkpoint``: a path prefix; rank r keeps ``<prefix>.rank<r>.pt`` and resumes from it.
    ``progress``: a tqdm bar on rank 0.
    """
    say = log if (log is not None and engine.is_main) else (lambda _: None)
    k = engine.world_size
    if cfg.dtype != "float32":
        _use_dtype(model, getattr(torch, cfg.dtype))
    workers = engine.prepare(model)
    global_batch = k * cfg.local_batch
    peak_lr, lr_scale = scaled_lr(cfg.base_lr, global_batch, cfg.base_batch, cfg.lr_scaling)
    steps_per_epoch = task.steps_per_epoch(k, cfg.local_batch)
    total = cfg.epochs * steps_per_epoch
    warmup = (round(cfg.warmup_epochs * steps_per_epoch) if cfg.warmup_steps is None
              else round(cfg.warmup_steps * cfg.base_batch / global_batch))  # fewer, larger steps
    schedule = Schedule(cfg.base_lr, lr_scale, total, cfg.schedule,
                        warmup_steps=max(warmup, int(cfg.schedule == "inverse-sqrt")),
                        milestones=tuple(cfg.milestones), gamma_multiplier=cfg.gamma_multiplier)
    groups = weight_decay_groups(model, cfg.weight_decay, workers.named_parameters(), log=say)
    opt = build_optimizer(cfg, groups, peak_lr, lr_scale, engine.comm)
    stepper = opt
    if cfg.post_local:
        switch = (round(cfg.switch_epoch * steps_per_epoch) if cfg.switch_epoch is not None
                  else round(min(cfg.milestones, default=1.0) * total))
        stepper = PostLocalSGD(opt, switch_step=switch, local_steps=cfg.local_steps)
    scheduled_gamma = cfg.gamma is None and cfg.perturbation in _STEP_SIZE
    probe = SmoothnessProbe(task.loss, task.probe_batch(), cfg.probe_every) if cfg.probe_every else None
    params = workers.parameters()

    curve, status, start_epoch, elapsed = [], "completed", 0, 0.0
    ckpt = None if checkpoint is None else Path(f"{checkpoint}.rank{getattr(engine, 'rank', 0)}.pt")
    resume = _resume_point(engine, ckpt) if ckpt is not None else None
    if resume is not None:
        path, state = resume
        workers.load_state_dict(state["workers"])
        stepper.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        curve, start_epoch, elapsed = state["curve"], state["epoch"], state["elapsed"]
        if probe is not None:
            probe.history, probe._pending = state["probe"]
        say(f"resumed from {path} at epoch {start_epoch}")
    say(f"{engine.kind} engine, K={k} workers × b={cfg.local_batch} = B={global_batch}; "
        f"η={peak_lr:g} (η_base={cfg.base_lr:g} × {lr_scale:g}), {total} steps, "
        f"{cfg.optimizer} perturbation={cfg.perturbation}{' + post-local SGD' if cfg.post_local else ''}")

    bar = None
    if progress and engine.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=start_epoch * steps_per_epoch, desc=desc, unit="step",
                   dynamic_ncols=True, leave=False)
    started = time.perf_counter() - elapsed
    workers.train()
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, cfg.epochs):
        loss_sum = torch.zeros((), device=engine.device)
        for i in range(steps_per_epoch):
            step = epoch * steps_per_epoch + i
            lr = schedule.apply(opt, step, gamma=scheduled_gamma)
            inputs, targets = engine.stack([task.train_batch(w, epoch, i, cfg.local_batch, k)
                                            for w in engine.worker_ids])

            def closure():
                stepper.zero_grad()
                out = workers.forward_backward(task.loss, inputs, targets)
                return out[0] if isinstance(out, tuple) else out

            stepper.zero_grad()
            stepper.perturb(closure if cfg.perturbation in _FRESH_GRADIENT else None)
            out = workers.forward_backward(task.loss, inputs, targets)
            if isinstance(out, tuple):
                out, aux = out
                task.after_step(aux, engine.worker_ids, opt.stacked)
            loss_sum += out.sum()
            if cfg.clip_norm is not None:
                _clip_local_(params, cfg.clip_norm, opt.stacked)
            stepper.step()
            if probe is not None:
                probe.observe(step + 1, workers.eval_module(0))
            if bar is not None:
                bar.update(1)
        step = (epoch + 1) * steps_per_epoch
        batch_loss = float(engine.mean_over_workers(loss_sum / (steps_per_epoch * len(engine.worker_ids))))
        if not math.isfinite(batch_loss) or batch_loss > cfg.loss_bound:
            status = "diverged"
            curve.append({"epoch": epoch + 1, "step": step, "lr": lr, "batch_loss": batch_loss})
            say(f"diverged at step {step} (mean mini-batch loss {batch_loss:g} > bound {cfg.loss_bound:g})")
            break
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            point = {"epoch": epoch + 1, "step": step, "lr": lr, "batch_loss": batch_loss,
                     **task.evaluate(workers.eval_module(0))}
            point.setdefault("train_loss", batch_loss)
            point["time_s"] = time.perf_counter() - started
            curve.append(point)
            if on_eval is not None and engine.is_main:
                on_eval(point)
            if bar is not None:
                bar.set_postfix({key: f"{v:.4g}" for key, v in point.items()
                                 if key in ("epoch", "train_loss", getattr(task, "metric", ""))})
        if ckpt is not None and ((epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs):
            checkpoint_io.save({"epoch": epoch + 1, "workers": workers.state_dict(),
                                "optimizer": stepper.state_dict(), "rng": torch.get_rng_state(),
                                "curve": curve, "elapsed": time.perf_counter() - started,
                                "probe": (probe.history, probe._pending) if probe is not None else None}, ckpt)
    if bar is not None:
        bar.close()
    final = {key: v for key, v in curve[-1].items() if key not in ("epoch", "step", "lr", "time_s")} if curve else {}
    record = {
        "status": status,
        "steps": step,
        "workers": k,
        "local_batch": cfg.local_batch,
        "global_batch": global_batch,
        "engine": engine.kind,
        "final": final,
        "curve": curve,
        "config": asdict(cfg),
        "time_s": time.perf_counter() - started,
    }
    if status == "diverged":
        record["diverged_at"] = step
    if probe is not None:
        record["smoothness"] = probe.history
    return record


def steps_to_target(curve: list[dict], target: float, key: str = "train_loss") -> int | None:
    """The first evaluated step at which ``key`` is at or below ``target`` (None: never)."""
    for point in curve:
        if key in point and point[key] <= target:
            return point["step"]
    return None
