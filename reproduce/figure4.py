"""Figure 4 — ResNet-20 on CIFAR-10 at an extreme batch with several epoch budgets: mini-batch
SGD and extrap-SGD, each with and without post-local SGD.

What the paper shows: mini-batch SGD's poor early optimisation leaves a generalisation gap that
neither post-local SGD nor more epochs close; extrap-SGD avoids it, and extrap-SGD + post-local
SGD is best at every budget.

Protocol (``reproduce/configs/figure4.yaml``): K = 16 × b = 512 (B = 8192), Table 1's schedule
and LARS, post-local SGD from the first decay with H = 16; budgets of 150, 300 and 450 epochs;
3 seeds.

Expected runtime: ``--scale paper`` 12 cells × 3 seeds ≈ 2 days on 16 GPUs. ``--scale smoke``
(budgets of 1 and 2 epochs on the slice, 2 workers): about 4 minutes on 2 CPU cores.
"""

import sys

from reproduce.runner import main

if __name__ == "__main__":
    sys.exit(main("figure4"))
