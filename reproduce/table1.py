"""Table 1 — ResNet-20 and VGG-11 on CIFAR-10 at a large batch with learning-rate decay.

What the paper shows: with the usual step decay, the seven methods (mini-batch SGD and
extrap-SGD without LARS; with LARS: mini-batch SGD, SmoothOut, uniform noise, stochastic noise,
extrap-SGD) end close together in top-1 test accuracy: decaying the learning rate erases most of
the optimisation advantage extrap-SGD has early on (Figure 1).

Protocol (``reproduce/configs/table1.yaml``, each number marked with its source): K = 16 workers
× b = 256 (B = 4096), linear scaling from 0.1 at batch 128 with 5 warmup epochs, 300 epochs,
×0.1 at 50 % and 75 %, Nesterov momentum 0.9, weight decay 1e-4 (not on BatchNorm/biases), LARS
(LARC, trust 0.02) except in the two "w/o LARS" cells, 3 seeds. Figure 5 of the appendix (the
curves of these runs) is drawn from the same records by ``python -m results``.

Expected runtime: ``--scale paper`` 14 cells × 3 seeds × 300 epochs: on 16 GPUs (one per worker)
roughly an hour per run, so about two days for the table; on one GPU with 16 virtual workers,
of the same order. ``--scale smoke`` (2 workers, 2 epochs on the 4,660-image slice, 1 seed) takes
about 6 minutes on 2 CPU cores.
"""

import sys

from reproduce.runner import main

if __name__ == "__main__":
    sys.exit(main("table1"))
