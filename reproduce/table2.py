"""Table 2 — ResNet-20 on CIFAR-10 and CIFAR-100: mini-batch SGD and extrap-SGD, alone and
followed by post-local SGD.

What the paper shows: post-local SGD after the first learning-rate decay improves both, and
extrap-SGD + post-local SGD is the best combination: extrap-SGD fixes the early optimisation,
post-local SGD the late generalisation.

Protocol (``reproduce/configs/table2.yaml``): K = 16 × b = 256 (B = 4096), linear scaling from
0.1 at batch 128, 5 warmup epochs, 300 epochs with ×0.1 at 50 % and 75 %, LARS, Nesterov 0.9,
weight decay 1e-4; post-local SGD from the first decay with H = 16 local steps and local
momentum (Algorithm 2 when extrapolating); 3 seeds.

Expected runtime: ``--scale paper`` 8 cells × 3 seeds × 300 epochs ≈ a day on 16 GPUs.
``--scale smoke`` (CIFAR-10 slice only, 2 workers, 2 epochs, 1 seed): about 3 minutes on
2 CPU cores.
"""

import sys

from reproduce.runner import main

if __name__ == "__main__":
    sys.exit(main("table2"))
