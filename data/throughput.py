"""Throughput of the CIFAR data path (shard → gather → crop/flip/normalise on the device)
against ResNet-20's training step on the same device, in images/s.

    python -m data.throughput --data-dir datasets/cifar10-subset [--device cuda] [--batch 128]

The data path must be far faster than the model, or it would bound training speed.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def _rate(fn, images_per_call: int, seconds: float, device: torch.device) -> float:
    fn()  # warm up
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    sync()
    return calls * images_per_call / (time.perf_counter() - start)


def measure(data_dir, device="cpu", batch: int = 128, seconds: float = 3.0) -> dict:
    """{'data_img_s', 'model_img_s', 'ratio'} for one worker at ``batch``."""
    from data import CifarTask
    from extrap import ExtrapolatedSGD
    from models import build_model

    device = torch.device(device)
    task = CifarTask(data_dir, device=device)
    steps = task.steps_per_epoch(1, batch)
    state = {"step": 0}

    def data_step():
        s = state["step"] = state["step"] + 1
        x, y = task.train_batch(0, s // steps, s % steps, batch, 1)
        return x, y

    model = build_model("resnet20").to(device)
    opt = ExtrapolatedSGD(model.parameters(), lr=0.1, perturbation="extrap")
    x, y = data_step()

    def model_step():
        opt.zero_grad()
        opt.perturb()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    data_rate = _rate(data_step, batch, seconds, device)
    model_rate = _rate(model_step, batch, seconds, device)
    return {"device": str(device), "batch": batch, "data_img_s": data_rate, "model_img_s": model_rate,
            "ratio": data_rate / model_rate}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", required=True, help="a CIFAR-10 folder (python pickle layout)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args(argv)
    r = measure(args.data_dir, args.device, args.batch, args.seconds)
    print(f"{r['device']}, batch {r['batch']}: data path {r['data_img_s']:,.0f} img/s, "
          f"ResNet-20 extrap-SGD training step {r['model_img_s']:,.0f} img/s, ratio {r['ratio']:.0f}×")


if __name__ == "__main__":
    main()
