"""The loop rule, measured: extrap changes only where the gradient is computed; what the loop does
to the gradient between backward and step (accumulation under ``no_sync()``, clipping,
GradScaler's ``unscale_`` and skipped steps, a scheduler) keeps its plain meaning.

Every check trains a small float64 model for a few steps, once with extrap and once with a
reference, in one process or, under ``torchrun --nproc_per_node 2``, under DDP with 2 Gloo ranks:

    torchrun --standalone --nproc_per_node 2 tests/loop_rule.py OUT.json

writes {check: number} (rank 0), which tests/test_loop_rule.py reads; the same functions run in
one process there.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys

import torch
import torch.distributed as dist
from torch import nn

import extrap

LR, WD, GAMMA, STEPS, SKIP_AT = 0.1, 1e-4, 0.05, 8, 3
CLIP_NORM, CLIP_VALUE = 0.05, 0.002  # both bind on this model
SCALE = 2.0 ** 8  # a power of two: scaling and unscaling are exact
# the loop features, alone and together (skip: a step whose loss is inf, which GradScaler skips)
LOOPS = {
    "accumulate": {"accumulate"},
    "clip_norm": {"clip_norm"},
    "clip_value": {"clip_value"},
    "scaler": {"scaler"},
    "scaler_unscale_clip": {"scaler", "unscale", "clip_norm"},
    "scaler_skip": {"scaler", "skip"},
    "schedule": {"schedule"},
    "all": {"accumulate", "scaler", "unscale", "clip_norm", "skip", "schedule"},
}


def world() -> tuple[int, int]:
    """(rank, K): the process group's, or (0, 1) in one process."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).double()


def batch(step: int, micro: int):
    """This rank's micro-batch ``micro`` of step ``step``."""
    g = torch.Generator().manual_seed(1000 * world()[0] + 10 * step + micro)
    return torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)


def rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """‖a − b‖/‖b‖ over all tensors."""
    num = sum(float((x - y).square().sum()) for x, y in zip(a, b))
    return math.sqrt(num / sum(float(y.square().sum()) for y in b))


def build(optimizer: str, perturbation: str | None, params):
    """torch's optimizer (``perturbation=None``) or extrap's with the same settings."""
    if optimizer == "adam":
        if perturbation is None:
            return torch.optim.Adam(params, lr=LR / 10, weight_decay=WD)
        return extrap.ExtrapolatedAdam(params, lr=LR / 10, weight_decay=WD, perturbation=perturbation, gamma=GAMMA)
    if perturbation is None:
        return torch.optim.SGD(params, lr=LR, momentum=0.9, nesterov=True, weight_decay=WD)
    return extrap.ExtrapolatedSGD(params, lr=LR, weight_decay=WD, perturbation=perturbation, gamma=GAMMA)


def train(optimizer: str, perturbation: str | None, features: set[str], *, tell_scaler: bool = True,
          attach: bool = False, watch=None) -> list[torch.Tensor]:
    """The usual loop with ``features``, under DDP where a process group is up; returns x after
    ``STEPS`` steps. ``attach``: extrap.attach instead of perturb() by hand. ``watch(t, opt,
    before, after)``: called after each step with the parameters before the step's forward and
    after its step."""
    module = make_model()
    ddp = dist.is_initialized()
    model = nn.parallel.DistributedDataParallel(module) if ddp else module
    opt = build(optimizer, perturbation, module.parameters())
    extrapolated = perturbation is not None
    if extrapolated and attach:
        extrap.attach(model, opt)
    elif extrapolated and ddp:
        extrap.register_ddp(model, opt)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE, growth_interval=10**6) if "scaler" in features else None
    if scaler is not None and extrapolated and tell_scaler:
        opt.grad_scaler = scaler
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.8 ** t) if "schedule" in features else None
    micro = 2 if "accumulate" in features else 1
    for t in range(STEPS):
        before = [p.detach().clone() for p in module.parameters()]
        opt.zero_grad()
        if extrapolated and not attach:
            opt.perturb()
        for m in range(micro):
            with model.no_sync() if ddp and m < micro - 1 else contextlib.nullcontext():
                x, y = batch(t, m)
                loss = nn.functional.cross_entropy(model(x), y) / micro
                if "skip" in features and t == SKIP_AT and world()[0] == world()[1] - 1:
                    loss = loss * math.inf  # on the last rank only: the average is inf on every rank
                (loss if scaler is None else scaler.scale(loss)).backward()
        if "unscale" in features:
            scaler.unscale_(opt)
        if "clip_norm" in features:
            nn.utils.clip_grad_norm_(module.parameters(), CLIP_NORM)
        if "clip_value" in features:
            nn.utils.clip_grad_value_(module.parameters(), CLIP_VALUE)
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)
            scaler.update()
        if schedule is not None:
            schedule.step()
        if watch is not None:
            watch(t, opt, before, [p.detach().clone() for p in module.parameters()])
    return [p.detach().clone() for p in module.parameters()]


def hand_extrap(features: set[str]) -> list[torch.Tensor]:
    """extrap-SGD written out, the reference: each rank moves to x_t − γ g_{t-1}^k with its own raw
    local gradient (accumulated over micro-batches), the mean over ranks is clipped, x_t comes
    back and torch's SGD steps on the clipped mean."""
    _, k = world()
    model = make_model()
    params = list(model.parameters())
    sgd = torch.optim.SGD(params, lr=LR, momentum=0.9, nesterov=True, weight_decay=WD)
    past = [torch.zeros_like(p) for p in params]
    micro = 2 if "accumulate" in features else 1
    for t in range(STEPS):
        x_t = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, g in zip(params, past):
                p.sub_(GAMMA * g)
        sgd.zero_grad()
        for m in range(micro):
            x, y = batch(t, m)
            (nn.functional.cross_entropy(model(x), y) / micro).backward()
        past = [p.grad.clone() for p in params]  # raw, before averaging and clipping
        if k > 1:
            for p in params:
                dist.all_reduce(p.grad)
                p.grad.div_(k)
        if "clip_norm" in features:
            nn.utils.clip_grad_norm_(params, CLIP_NORM)
        if "clip_value" in features:
            nn.utils.clip_grad_value_(params, CLIP_VALUE)
        with torch.no_grad():
            for p, x0 in zip(params, x_t):
                p.copy_(x0)
        sgd.step()
    return [p.detach().clone() for p in params]


def skipped_step(perturbation: str = "extrap") -> dict:
    """A step GradScaler skips: x and the kept local gradient bitwise as before it; the run goes
    on and ends finite."""
    seen = {}

    def watch(t, opt, before, after):
        if t == SKIP_AT - 1:
            seen["local"] = [opt.state[p]["local_grad"].clone() for g in opt.param_groups for p in g["params"]]
        if t == SKIP_AT:
            seen["x_unchanged"] = all(torch.equal(a, b) for a, b in zip(before, after))
            local = [opt.state[p]["local_grad"] for g in opt.param_groups for p in g["params"]]
            seen["local_unchanged"] = all(torch.equal(a, b) for a, b in zip(seen["local"], local))

    final = train("sgd", perturbation, {"scaler", "skip"}, watch=watch)
    return {"x_unchanged": seen["x_unchanged"], "local_unchanged": seen["local_unchanged"],
            "finite": all(bool(p.isfinite().all()) for p in final)}


def checks() -> dict:
    """Every number the tests compare, under the current process group (or none)."""
    out = {}
    for optimizer in ("sgd", "adam"):
        for name, features in LOOPS.items():
            out[f"none_vs_torch/{optimizer}/{name}"] = rel(train(optimizer, "none", features),
                                                          train(optimizer, None, features))
    for name in ("accumulate", "clip_norm", "clip_value"):
        features = {"accumulate", name}
        out[f"extrap_vs_hand/{name}"] = rel(train("sgd", "extrap", features), hand_extrap(features))
    for optimizer in ("sgd", "adam"):
        out[f"scaled_vs_unscaled/{optimizer}"] = rel(train(optimizer, "extrap", {"scaler"}),
                                                     train(optimizer, "extrap", set()))
        out[f"scaled_vs_unscaled/{optimizer}/unscale_clip"] = rel(
            train(optimizer, "extrap", {"scaler", "unscale", "clip_norm"}), train(optimizer, "extrap", {"clip_norm"}))
    out["stochastic_scaled_vs_unscaled"] = rel(train("sgd", "stochastic", {"scaler", "accumulate"}),
                                               train("sgd", "stochastic", {"accumulate"}))
    out["attach_vs_by_hand"] = rel(train("sgd", "extrap", LOOPS["all"], attach=True),
                                   train("sgd", "extrap", LOOPS["all"]))
    for key, value in skipped_step().items():
        out[f"skipped/{key}"] = value
    return out


if __name__ == "__main__":
    dist.init_process_group("gloo")
    results = checks()
    if dist.get_rank() == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(results, f, indent=1)
    dist.destroy_process_group()
