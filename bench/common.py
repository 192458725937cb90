"""What the benchmark scripts share: the command line (``--tiny``, ``--device``, ``--out``), stand-in
images, one training step, timing in alternating rounds, and the process's peak memory.

Timing: the variants of one measurement run in alternating rounds (A B, B A, ...) after a warm-up,
and each variant's time per step is the median over rounds, so a machine that slows down or
speeds up during the run biases none of them.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from extrap import ExtrapolatedSGD
from extrap.engines import make_engine
from models import build_model

SGD_KW = dict(momentum=0.9, nesterov=True, weight_decay=1e-4)
RESNET20_PARAMETERS = 269_722


def arguments(doc: str, device: bool = True) -> argparse.ArgumentParser:
    """A script's command line: ``--tiny`` (toy sizes: checks that it runs, its numbers mean
    nothing), ``--out FILE`` (the result as JSON), and ``--device`` where it has a choice."""
    ap = argparse.ArgumentParser(description=doc.strip().split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="toy sizes: checks that the script runs")
    ap.add_argument("--out", default=None, help="write the result to this JSON file (rank 0)")
    if device:
        ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    return ap


def pick_device(name: str | None) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def finish(result: dict, out: str | None, summary: str) -> None:
    """Print ``summary`` and write ``result`` to ``out`` (when given)."""
    print(summary, flush=True)
    if out is not None:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternating(fns: dict[str, Callable[[], None]], rounds: int, steps: int, warmup: int,
                device: torch.device, barrier: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each function in every round, the functions taking turns."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for name in (list(fns) if r % 2 == 0 else list(reversed(fns))):
            if barrier:
                barrier()
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                fns[name]()
            sync(device)
            times[name].append((time.perf_counter() - t0) / steps)
    return times


def medians(rounds: dict[str, list[float]]) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in rounds.items()}


def ratio(rounds: dict[str, list[float]], num: str, den: str) -> dict:
    """The ratio of the medians, and its range over the rounds (round i of each variant)."""
    per_round = [a / b for a, b in zip(rounds[num], rounds[den])]
    return {"ratio": statistics.median(rounds[num]) / statistics.median(rounds[den]),
            "round_min": min(per_round), "round_max": max(per_round)}


def fmt_ratio(m: dict) -> str:
    """A measured ratio against its target (at most), for the report."""
    r, target = m["ratio"], m["target"]
    return (f"**{r:.3f}** (rounds {m['round_min']:.3f}–{m['round_max']:.3f}; target ≤ {target}, "
            f"{'met' if r <= target else 'not met'})")


def images(n: int, device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` stand-in CIFAR images (Gaussian) and labels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (n,), generator=g).to(device)
    return x, y


def worker_images(k: int, b: int, device):
    """k·b images, and the same as k workers' batches ``[k, b, ...]``."""
    x, y = images(k * b, device)
    return x, y, x.view(k, b, *x.shape[1:]), y.view(k, b)


def train_step(workers, opt, x, y) -> Callable[[], None]:
    """One training step of ``workers`` (``engine.prepare``'s, or ``ModuleWorkers(model)``)."""
    def step():
        opt.zero_grad(set_to_none=True)
        opt.perturb()
        workers.forward_backward(F.cross_entropy, x, y)
        opt.step()
    return step


def virtual_step(k: int, device, xs, ys, batched: bool) -> Callable[[], None]:
    """A training step of k virtual ResNet-20 workers with extrap-SGD, on ``xs``, ``ys`` ``[k, b, ...]``."""
    torch.manual_seed(0)
    engine = make_engine("virtual", k, device=device, batched=batched)
    workers = engine.prepare(build_model("resnet20"))
    opt = ExtrapolatedSGD(workers.parameters(), lr=0.1, perturbation="extrap", comm=engine.comm, **SGD_KW)
    return train_step(workers, opt, xs, ys)


def peak_resident_bytes() -> int:
    """This process's peak resident set: Linux's VmHWM, which a new program starts afresh
    (``ru_maxrss`` carries the parent's peak across fork and exec), else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
