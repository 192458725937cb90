"""6. ResNet-20 at B = 4096 on one GPU: 16 virtual workers × batch 256, extrap-SGD, float32,
batched (vmap); images/s and peak memory.

    python -m bench.gpu [--tiny] [--out FILE.json]

Needs CUDA: elsewhere it says so and writes ``{"skipped": ...}``. Timing: 3 rounds of 20 steps
after 3 warm-up steps, the median round; peak memory is ``torch.cuda.max_memory_allocated``.

Healthy: ≥ 50,000 img/s on a data-centre GPU (the paper's setting fits B = 4096 on one device);
peak memory a few GiB (activations of 4,096 images dominate). Under a minute.
"""

from __future__ import annotations

import torch

from bench.common import alternating, arguments, finish, medians, virtual_step, worker_images

SIZES = {"full": dict(workers=16, batch=256, steps=20), "tiny": dict(workers=2, batch=8, steps=2)}
TARGET = 50_000


def measure(sz: dict) -> dict:
    if not torch.cuda.is_available():
        return {"skipped": "no GPU on this machine"}
    device = torch.device("cuda")
    k, b = sz["workers"], sz["batch"]
    _, _, xs, ys = worker_images(k, b, device)
    step = virtual_step(k, device, xs, ys, batched=True)
    torch.cuda.reset_peak_memory_stats(device)
    t = medians(alternating({"virtual": step}, 3, sz["steps"], warmup=3, device=device))["virtual"]
    return {"what": f"ResNet-20, B = {k * b} as {k} virtual workers × {b}, float32, one GPU",
            "device": torch.cuda.get_device_name(device), "seconds": t, "images_per_s": k * b / t,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30, "target": TARGET}


def row(r: dict) -> str:
    if "skipped" in r:
        return f"| 6 | GPU throughput | not measured: {r['skipped']} |"
    return (f"| 6 | {r['what']} on {r['device']} | {r['images_per_s']:,.0f} img/s (target ≥ {TARGET:,}), "
            f"peak {r['peak_memory_gib']:.1f} GiB |")


def main(argv=None) -> None:
    args = arguments(__doc__, device=False).parse_args(argv)
    r = measure(SIZES["tiny" if args.tiny else "full"])
    finish(r, args.out, f"GPU: {r['skipped']}" if "skipped" in r else
           f"GPU: {r['images_per_s']:,.0f} img/s (target ≥ {TARGET:,}), peak {r['peak_memory_gib']:.1f} GiB")


if __name__ == "__main__":
    main()
