"""2. The optimizer step alone (perturb + step for extrap) ÷ ``torch.optim.SGD(foreach=True)``, on
ResNet-20's 269,722 parameters with fixed gradients; also against ``fused=True``.

    python -m bench.optimizer_step [--tiny] [--device cpu|cuda] [--out FILE.json]

Variants: torch's SGD (foreach, and fused where this torch has it), extrap-SGD, extrap-SGD with
``perturbation="none"`` (torch's fused update alone) and extrap-SGD forced onto foreach kernels
(what fusing gave); 9 alternating rounds of 50 steps, medians.

Healthy: extrap-SGD ÷ foreach SGD ≤ 1.1 (0.96 on 2 CPU cores: 0.37 vs 0.38 ms);
``perturbation="none"`` within a few hundredths of a millisecond of torch's fused SGD (0.14 vs
0.12 ms); ÷ fused SGD about 3, the save/restore of x_t and the kept local gradient being the
floor. A few seconds.
"""

from __future__ import annotations

import torch

from bench.common import SGD_KW, alternating, arguments, finish, fmt_ratio, medians, pick_device, ratio
from extrap import ExtrapolatedSGD
from models import build_model

SIZES = {"full": dict(rounds=9, steps=50), "tiny": dict(rounds=2, steps=2)}
TARGET = 1.1


def measure(sz: dict, device) -> dict:
    def fresh_params():
        torch.manual_seed(0)
        ps = [p.detach().clone().requires_grad_(True) for p in build_model("resnet20").to(device).parameters()]
        for p in ps:
            p.grad = torch.randn_like(p) * 1e-2
        return ps

    variants = {
        "torch-sgd-foreach": lambda ps: torch.optim.SGD(ps, lr=1e-3, foreach=True, **SGD_KW),
        "extrap-sgd": lambda ps: ExtrapolatedSGD(ps, lr=1e-3, perturbation="extrap", **SGD_KW),
        "extrap-none": lambda ps: ExtrapolatedSGD(ps, lr=1e-3, perturbation="none", **SGD_KW),
        "extrap-sgd-foreach": lambda ps: ExtrapolatedSGD(ps, lr=1e-3, perturbation="extrap", foreach=True, **SGD_KW),
    }
    try:  # the fused kernel exists on CPU from torch 2.4 on, on CUDA earlier
        torch.optim.SGD(fresh_params(), lr=1e-3, fused=True, **SGD_KW).step()
        variants["torch-sgd-fused"] = lambda ps: torch.optim.SGD(ps, lr=1e-3, fused=True, **SGD_KW)
    except (RuntimeError, TypeError):
        pass

    def step_of(opt):
        def step():
            if isinstance(opt, ExtrapolatedSGD):
                opt.perturb()
            opt.step()
        return step

    fns = {name: step_of(make(fresh_params())) for name, make in variants.items()}
    t = alternating(fns, sz["rounds"], sz["steps"], warmup=3, device=device)
    out = {"what": "optimizer step alone (perturb + step for extrap), ResNet-20's 269,722 parameters",
           "seconds": medians(t), **ratio(t, "extrap-sgd", "torch-sgd-foreach"), "target": TARGET}
    if "torch-sgd-fused" in t:
        out["ratio_vs_fused"] = ratio(t, "extrap-sgd", "torch-sgd-fused")["ratio"]
    return out


def row(r: dict) -> str:
    fused = f"; ÷ fused SGD {r['ratio_vs_fused']:.2f}" if "ratio_vs_fused" in r else ""
    return (f"| 2 | {r['what']} ÷ torch.optim.SGD(foreach=True) | {fmt_ratio(r)}{fused}; "
            + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in r["seconds"].items()) + " |")


def main(argv=None) -> None:
    args = arguments(__doc__).parse_args(argv)
    r = measure(SIZES["tiny" if args.tiny else "full"], pick_device(args.device))
    finish(r, args.out, f"optimizer step: extrap-SGD ÷ torch SGD (foreach) {r['ratio']:.3f} (target ≤ {TARGET}); "
                        + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in r["seconds"].items()))


if __name__ == "__main__":
    main()
