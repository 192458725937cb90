"""Figure 1 — ResNet-20 on CIFAR-10 at a large batch, no learning-rate decay: (a) training
curves of every member of the extrapolated-SGD framework, (b) the smoothness of the loss
landscape along each trajectory.

What the paper shows: extrap-SGD (and, less, the noise variants) reaches low training loss in
markedly fewer steps than mini-batch SGD, and its trajectory has a smaller local gradient-
Lipschitz estimate ‖∇f(x_{t+1}) − ∇f(x_t)‖/‖x_{t+1} − x_t‖ — a smoother landscape.

Protocol (``reproduce/configs/figure1.yaml``): K = 16 × b = 256, linear scaling from 0.1 at 128
with 5 warmup epochs, then constant; LARS, Nesterov 0.9, weight decay 1e-4; cells: mini-batch
SGD, extrap-SGD, stochastic, Gaussian, uniform, filter-wise Gaussian and SmoothOut noise,
extragradient (fresh gradient, 2× compute) and SAM (beyond the paper); the probe on a fixed
batch every 100 steps; 3 seeds. The momentum study of the appendix (Figures 7–8) reruns cells
with ``momentum=…`` (and ``nesterov=false momentum=0`` for none), e.g.
``python -m reproduce.figure1 --only sgd,extrap-sgd momentum=0.5 --out runs/momentum-0.5``.

Expected runtime: ``--scale paper`` 9 cells × 3 seeds × 300 epochs ≈ 1.5 days on 16 GPUs.
``--scale smoke`` (2 workers, 1 epoch on the slice): about 3 minutes on 2 CPU cores.
``--scale laptop`` (K = 16 × b = 64, 80 steps): the tuning protocol (``reproduce.tuning``) —
mini-batch SGD over η_base × LARS trust, extrap-SGD over gamma_factor × lars_lookahead at SGD's
rate and its neighbours, 2 tuning seeds, then 8 confirmation seeds each: about 70 runs of 2.5
minutes on 2 CPU cores (docs/laptop/).
"""

import sys

from reproduce.runner import main

if __name__ == "__main__":
    sys.exit(main("figure1"))
