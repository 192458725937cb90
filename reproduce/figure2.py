"""Figure 2 — a 2-layer LSTM on WikiText-2 at a large batch, no learning-rate decay:
mini-batch SGD against extrap-SGD (the appendix's Figure 6: the same runs' curves).

What the paper shows: extrap-SGD reaches a given validation perplexity in clearly fewer epochs
than mini-batch SGD with Nesterov momentum.

Protocol (``reproduce/configs/figure2.yaml``; the paper's sizes were lost, so most numbers are
chosen here and marked): K = 16 × 20 streams, BPTT 35, Nesterov 0.9 with a rate of 2 (linear
scaling, 5 warmup epochs), local gradient clipping at 0.25, 650-unit tied LSTM with dropout 0.5,
90 epochs, 3 seeds.

Expected runtime: ``--scale paper`` 2 cells × 3 seeds × 90 epochs ≈ 10 hours on 16 GPUs.
``--scale smoke`` trains on the first 40,000 tokens of WikiText-2 *valid* (the shared slice has no
training split) and evaluates on *test*: about 2 minutes on 2 CPU cores.
"""

import sys

from reproduce.runner import main

if __name__ == "__main__":
    sys.exit(main("figure2"))
