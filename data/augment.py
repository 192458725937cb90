"""CIFAR augmentation on the training device: random crop 32 with zero padding 4, horizontal
flip, per-channel normalisation — one batch at a time with vectorised ops.

The crop and the flip are one gather: the batch is padded once, and each output pixel reads
the padded pixel at (oy + y, ox + x), or (oy + y, ox + 31 − x) for a flipped image. All random
numbers are drawn on the batch's device from a generator on that device, and the mean/std
constants are moved there once, so a GPU batch costs no host-to-device copy.

Determinism: the output depends only on the batch and the generator's state. ``step_seed``
gives each (seed, worker, epoch, step) its own seed, so a worker's augmentation is the same
under processes and virtual workers, and after resuming from a checkpoint.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["Augment", "random_crop_flip", "step_seed", "worker_generator",
           "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD"]

# Per-channel mean and std of the 50,000 training images, pixels scaled to [0, 1]. (The
# (0.2023, 0.1994, 0.2010) std found in many repositories is the mean of per-image stds.)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

_MASK64 = (1 << 64) - 1


def step_seed(seed: int, worker: int, epoch: int = 0, step: int = 0) -> int:
    """A 63-bit seed that is a pure function of its arguments (splitmix64 mixing), distinct
    for different workers, epochs and steps."""
    h = 0
    for v in (seed, worker, epoch, step):
        h = (h ^ (v & _MASK64)) * 0x9E3779B97F4A7C15 & _MASK64
        h ^= h >> 31
        h = h * 0xBF58476D1CE4E5B9 & _MASK64
        h ^= h >> 29
    return h >> 1


def worker_generator(seed: int, worker: int, device="cpu") -> torch.Generator:
    """A generator on ``device`` seeded for ``worker``; workers with different ids (or runs with
    different seeds) draw different crops and flips."""
    return torch.Generator(device=device).manual_seed(step_seed(seed, worker))


def random_crop_flip(batch: Tensor, generator: torch.Generator | Sequence[torch.Generator], padding: int = 4,
                     flip: bool = True) -> Tensor:
    """Each image of ``batch`` [B, C, H, W] zero-padded by ``padding``, cropped back to H×W at
    a uniform offset in [0, 2·padding]², and mirrored left-right with probability 1/2. Same
    dtype as the input (zero padding is black in pixel space, as torchvision's RandomCrop).

    ``generator`` may be a list of G generators, one per equal part of the batch (one per
    worker): part g's offsets and flips come from generator g, drawn as for that part alone,
    and all G parts are cropped in one gather."""
    if batch.dim() != 4:
        raise ValueError(f"batch: expected [B, C, H, W], got shape {tuple(batch.shape)}")
    gens = [generator] if isinstance(generator, torch.Generator) else list(generator)
    if len(batch) % len(gens):
        raise ValueError(f"generator: {len(gens)} generators cannot share a batch of {len(batch)} equally")
    for g in gens:
        if g.device != batch.device:
            raise ValueError(f"generator: on {g.device}, the batch is on {batch.device}; "
                             "draw the random numbers where the batch is")
    b, c, h, w = batch.shape
    part, dev, span = b // len(gens), batch.device, 2 * padding + 1
    hp, wp = h + 2 * padding, w + 2 * padding
    padded = torch.nn.functional.pad(batch, (padding,) * 4) if padding else batch
    draws = [(torch.randint(0, span, (part, 1), device=dev, generator=g),
              torch.randint(0, span, (part, 1), device=dev, generator=g),
              torch.randint(0, 2, (part, 1), device=dev, generator=g) if flip else None) for g in gens]
    oy, ox = (torch.cat([d[i] for d in draws]) for i in (0, 1))
    ys = oy + torch.arange(h, device=dev)                                   # [B, H]
    xs = torch.arange(w, device=dev)
    if flip:
        mirror = torch.cat([d[2] for d in draws]).bool()
        xs = ox + torch.where(mirror, w - 1 - xs, xs)                       # [B, W]
    else:
        xs = ox + xs
    index = (ys[:, :, None] * wp + xs[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    out = padded.reshape(b, c, hp * wp).gather(2, index)
    return out.view(b, c, h, w)


class Augment:
    """Training transform ``aug(batch, generator)`` and evaluation transform
    ``aug.normalize(batch)``, both returning float32 ``(x/255 − mean) / std`` per channel.

    ``batch`` is [B, 3, H, W], uint8 in 0..255 or float in [0, 1]. Example::

        aug = Augment(CIFAR10_MEAN, CIFAR10_STD)
        gen = torch.Generator(device=images.device).manual_seed(step_seed(seed, worker, epoch, step))
        x = aug(images[idx], gen)
    """

    def __init__(self, mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD,
                 padding: int = 4, flip: bool = True):
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"mean/std: need equal lengths and std > 0, got {mean}, {std}")
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.padding, self.flip = padding, flip
        self._affine: dict = {}

    def __call__(self, batch: Tensor, generator: torch.Generator | Sequence[torch.Generator]) -> Tensor:
        return self.normalize(random_crop_flip(batch, generator, self.padding, self.flip))

    def normalize(self, batch: Tensor) -> Tensor:
        """float32 (x/255 − mean)/std for uint8 input, (x − mean)/std for float input."""
        if batch.dim() != 4 or batch.shape[1] != len(self.mean):
            raise ValueError(f"batch: expected [B, {len(self.mean)}, H, W], got shape {tuple(batch.shape)}")
        scale, shift = self._constants(batch.device, batch.dtype == torch.uint8)
        return torch.addcmul(shift, batch.to(torch.float32), scale)

    def _constants(self, device: torch.device, from_uint8: bool) -> tuple[Tensor, Tensor]:
        """x·scale + shift with scale = 1/(k·std), shift = −mean/std; built once per device."""
        key = (device, from_uint8)
        if key not in self._affine:
            k = 255.0 if from_uint8 else 1.0
            scale = torch.tensor([1.0 / (k * s) for s in self.std], dtype=torch.float32)
            shift = torch.tensor([-m / s for m, s in zip(self.mean, self.std)], dtype=torch.float32)
            self._affine[key] = (scale.view(1, -1, 1, 1).to(device), shift.view(1, -1, 1, 1).to(device))
        return self._affine[key]
