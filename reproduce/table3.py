"""Table 3 — ResNet-20 on CIFAR-10 at a fixed global batch, split into K workers × local batch b.

What the paper shows: at the same B, extrap-SGD's benefit grows with the number of workers
(each worker extrapolates with its own, noisier local gradient), which is how large-batch
training is scaled in practice.

Protocol (``reproduce/configs/table3.yaml``): B = 4096 as K × b ∈ {4 × 1024, 8 × 512,
16 × 256, 32 × 128}; otherwise Table 1's protocol (LARS, step decay, 300 epochs, 3 seeds).
Each K is its own launch under ``mpirun`` (``mpirun -np K ... --only ...`` runs the variants
with that K and says which it skips); virtual workers run all four in one process.

Expected runtime: ``--scale paper`` 8 cells × 3 seeds ≈ a day on 16 GPUs. ``--scale smoke``
(K × b ∈ {2 × 64, 4 × 32} on the slice, 1 epoch): about 2 minutes on 2 CPU cores.
"""

import sys

from reproduce.runner import main

if __name__ == "__main__":
    sys.exit(main("table3"))
