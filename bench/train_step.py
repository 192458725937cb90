"""1. A training step of extrap-SGD ÷ one of mini-batch SGD: ResNet-20, batch 128, one process.

    python -m bench.train_step [--tiny] [--device cpu|cuda] [--out FILE.json]

One model, stepped in turn by SGD, extrap-SGD and SGD again (25 alternating rounds, medians); the
SGD ÷ SGD pair shows this machine's timing noise.

Healthy: extrap-SGD ÷ SGD ≤ 1.03. Its extra work is four passes over the parameters (0.23 ms of
a 189 ms step on 2 CPU cores: 1.001 from the optimizer-step difference, ``bench.optimizer_step``),
so on a quiet machine the ratio sits within the SGD ÷ SGD noise of 1 (1.026 vs 1.022 measured
there; the rounds spread 0.84–1.27 on that noisy 2-core machine). About 20 s on 2 CPU cores.
"""

from __future__ import annotations

import torch

from bench.common import (SGD_KW, alternating, arguments, finish, fmt_ratio, images, medians, pick_device,
                          ratio, train_step)
from extrap import ExtrapolatedSGD
from extrap.engines import ModuleWorkers
from models import build_model

SIZES = {"full": dict(batch=128, rounds=25, steps=1), "tiny": dict(batch=8, rounds=2, steps=1)}
TARGET = 1.03


def measure(sz: dict, device) -> dict:
    x, y = images(sz["batch"], device)
    torch.manual_seed(0)
    workers = ModuleWorkers(build_model("resnet20").to(device).train())
    fns = {name: train_step(workers, ExtrapolatedSGD(workers.parameters(), lr=0.01, perturbation=kind, **SGD_KW),
                            x, y)
           for name, kind in (("sgd", "none"), ("extrap-sgd", "extrap"), ("sgd-again", "none"))}
    t = alternating(fns, sz["rounds"], sz["steps"], warmup=2, device=device)
    return {"what": f"ResNet-20 training step, batch {sz['batch']}, one process",
            "seconds": medians(t), **ratio(t, "extrap-sgd", "sgd"), "target": TARGET,
            "a_a": ratio(t, "sgd-again", "sgd")}


def row(r: dict, implied_step_ratio: float | None = None) -> str:
    implied = "" if implied_step_ratio is None else f"; from the optimizer-step difference {implied_step_ratio:.4f}"
    return (f"| 1 | extrap-SGD ÷ mini-batch SGD, {r['what']} | {fmt_ratio(r)}; "
            f"{r['seconds']['sgd'] * 1e3:.1f} vs {r['seconds']['extrap-sgd'] * 1e3:.1f} ms; "
            f"noise: SGD ÷ SGD {r['a_a']['ratio']:.3f}{implied} |")


def main(argv=None) -> None:
    args = arguments(__doc__).parse_args(argv)
    r = measure(SIZES["tiny" if args.tiny else "full"], pick_device(args.device))
    finish(r, args.out, f"train step: extrap-SGD ÷ SGD {r['ratio']:.3f} (target ≤ {TARGET}), "
                        f"SGD ÷ SGD {r['a_a']['ratio']:.3f}")


if __name__ == "__main__":
    main()
