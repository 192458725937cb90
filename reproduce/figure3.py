"""Figure 3 — a down-scaled Transformer on Multi30k English→German at two global batch sizes:
Adam against extrap-Adam (Algorithm 3).

What the paper shows: extrap-Adam reaches the same BLEU in fewer epochs than Adam, and the gap
widens with the batch (and the number of workers).

Protocol (``reproduce/configs/figure3.yaml``): K = 16, B = 1024 and 2048 sentences; Adam
(0.9, 0.98, ε 1e-9) with the inverse-square-root schedule, 4000 warmup steps at batch 128
scaled down by B/128, peak rate 5e-4·√(B/128); label smoothing 0.1; extrap-Adam extrapolates
with each worker's past gradient through Adam's preconditioner; greedy-decoding BLEU
(sacrebleu) on the validation set; 100 epochs, 3 seeds.

Expected runtime: ``--scale paper`` 4 cells × 3 seeds ≈ 6 hours on 16 GPUs. ``--scale smoke``
(a 1-layer d=64 model, 6,400 pairs, 1 epoch, BLEU on 100 sentences): about 2 minutes on 2 CPU
cores. ``--scale laptop`` (a 2-layer d=128 model on all 29,000 pairs, B = 512 and 1,024,
3 epochs): the tuning protocol (Adam's rate, then extrap-Adam's gamma_factor at it, one tuning
seed), then 8 confirmation seeds: about 44 runs of 6 to 8.5 minutes on 2 CPU cores (docs/laptop/).
"""

import sys

from reproduce.runner import main

if __name__ == "__main__":
    sys.exit(main("figure3"))
