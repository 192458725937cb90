"""Disjoint per-worker shards, reshuffled by an epoch seed."""

from __future__ import annotations

import torch

__all__ = ["epoch_shards", "shard_indices"]


def epoch_shards(n: int, num_workers: int, epoch: int, seed: int = 0) -> torch.Tensor:
    """All K workers' indices for ``epoch``, [K, ⌊n/K⌋]: row k is a contiguous slice of one
    permutation of ``range(n)`` drawn from (seed, epoch). The rows are disjoint and equal in
    size (the remainder n mod K is dropped this epoch); the result depends on nothing but the
    arguments, so a process and a virtual worker with the same id read the same samples."""
    if n < num_workers:
        raise ValueError(f"n: {n} samples cannot be shared by {num_workers} workers")
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    per = n // num_workers
    return torch.randperm(n, generator=gen)[:num_workers * per].view(num_workers, per)


def shard_indices(n: int, num_workers: int, worker: int, epoch: int, seed: int = 0) -> torch.Tensor:
    """Worker ``worker``'s row of ``epoch_shards``."""
    if not 0 <= worker < num_workers:
        raise ValueError(f"worker: expected 0 <= worker < {num_workers}, got {worker}")
    return epoch_shards(n, num_workers, epoch, seed)[worker]
