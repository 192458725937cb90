"""8. The CIFAR data path (shard → gather → crop/flip/normalise on the device) against ResNet-20's
extrap-SGD training step on the same device, in images/s, one worker at batch 128.

    python -m bench.data_throughput [--data-dir datasets/cifar10-subset] [--tiny] [--device cpu|cuda]
                                    [--batch 128] [--out FILE.json]

Without ``--data-dir`` the task holds 10,000 stand-in images in CIFAR's format (the path's cost
does not depend on what the pixels are). Timing: 5 alternating rounds of 50 data batches against
one training step, after a warm-up, medians; the counts of batches each side produced are in the
result.

Healthy: the data path far faster than the model (212,662 vs 573 img/s on 2 CPU cores, 371×),
so it never bounds training speed; below 10× it would. A few seconds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.common import alternating, arguments, finish, medians, pick_device
from data import CifarTask
from extrap import ExtrapolatedSGD
from models import build_model

SIZES = {"full": dict(batch=128, rounds=5, data_calls=50), "tiny": dict(batch=16, rounds=2, data_calls=5)}
STAND_IN_IMAGES = 10_000


def _stand_in_task(device) -> CifarTask:
    g = torch.Generator().manual_seed(0)
    images = tuple(t for n in (STAND_IN_IMAGES, 1000) for t in (
        torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g)))
    return CifarTask(None, device=device, tensors=images)


def measure(data_dir=None, device="cpu", batch: int = 128, rounds: int = 5, data_calls: int = 50) -> dict:
    """Images/s of the data path and of the model step for one worker at ``batch``, and their
    ratio; ``batches``: how many each side produced (warm-up included)."""
    device = torch.device(device)
    task = CifarTask(data_dir, device=device) if data_dir is not None else _stand_in_task(device)
    steps = task.steps_per_epoch(1, batch)
    count = {"data": 0, "model": 0}

    def data_batch():
        s = count["data"]
        count["data"] += 1
        return task.train_batch(0, s // steps, s % steps, batch, 1)

    def data_batches():
        for _ in range(data_calls):
            data_batch()

    model = build_model("resnet20").to(device)
    opt = ExtrapolatedSGD(model.parameters(), lr=0.1, perturbation="extrap")
    x, y = data_batch()

    def model_step():
        count["model"] += 1
        opt.zero_grad()
        opt.perturb()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    t = medians(alternating({"data": data_batches, "model": model_step}, rounds, 1, warmup=1, device=device))
    data_rate, model_rate = data_calls * batch / t["data"], batch / t["model"]
    return {"what": f"CIFAR data path vs ResNet-20 extrap-SGD step, batch {batch}, one worker",
            "device": str(device), "batch": batch, "data_img_s": data_rate, "model_img_s": model_rate,
            "ratio": data_rate / model_rate, "batches": count, "stand_in": data_dir is None}


def row(r: dict) -> str:
    return (f"| 8 | {r['what']}{' (stand-in images)' if r['stand_in'] else ''} | data path "
            f"{r['data_img_s']:,.0f} img/s, model {r['model_img_s']:,.0f} img/s: **{r['ratio']:.0f}×** "
            f"(healthy ≫ 10) |")


def main(argv=None) -> None:
    ap = arguments(__doc__)
    ap.add_argument("--data-dir", default=None, help="a CIFAR-10 folder (python pickle layout); default: stand-in images")
    ap.add_argument("--batch", type=int, default=None, help="default 128 (--tiny: 16)")
    args = ap.parse_args(argv)
    sz = SIZES["tiny" if args.tiny else "full"]
    r = measure(args.data_dir, pick_device(args.device), args.batch or sz["batch"], sz["rounds"], sz["data_calls"])
    finish(r, args.out, f"{r['device']}, batch {r['batch']}: data path {r['data_img_s']:,.0f} img/s, "
                        f"ResNet-20 extrap-SGD training step {r['model_img_s']:,.0f} img/s, ratio {r['ratio']:.0f}×")


if __name__ == "__main__":
    main()
