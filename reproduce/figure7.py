"""Figure 7 (appendix) — ResNet-20 on CIFAR-10 at a large batch, early in training: extrap-SGD
without momentum against mini-batch SGD with momentum (and without, for reference).

What the paper shows: extrapolating each worker's gradient along its own last gradient is a
look-ahead like Nesterov momentum's, and early in training extrap-SGD *without* momentum keeps
pace with mini-batch SGD *with* momentum, while mini-batch SGD without momentum falls behind.

Protocol (``reproduce/configs/figure7.yaml``): Figure 1's set-up — K = 16 × b = 256, linear
scaling from 0.1 at 128 with 5 warmup epochs, then constant; LARS, weight decay 1e-4 — for the
first 50 epochs; cells: mini-batch SGD with Nesterov momentum 0.9, extrap-SGD with no momentum,
mini-batch SGD with no momentum; 3 seeds. Drawn as training loss at x_t and test accuracy
against steps.

Expected runtime: ``--scale paper`` 3 cells × 3 seeds × 50 epochs ≈ 3 hours on 16 GPUs.
``--scale smoke`` (2 workers, 1 epoch on the slice): about a minute on 2 CPU cores.
``--scale laptop`` (K = 16 × b = 64, 40 steps): the tuning protocol (each arm's rate and trust,
extrap's gamma_factor at the control's rate), then 8 confirmation seeds: about 90 runs of a minute
on 2 CPU cores (docs/laptop/).
"""

import sys

from reproduce.runner import main

if __name__ == "__main__":
    sys.exit(main("figure7"))
