"""extrap's benchmarks: one script per measurement, each with what it measures, how to run it and
what a healthy result looks like in its header. They run from the checkout (not installed with
``extrap``); ``python -m bench`` (``make bench``) runs them all and writes ``docs/bench.md``.

- ``train_step``: a training step of extrap-SGD ÷ one of mini-batch SGD, one process;
- ``optimizer_step``: the optimizer step alone ÷ ``torch.optim.SGD``;
- ``allreduce``: all-reduce calls and bytes per step against DDP (2 processes);
- ``virtual_workers``: batched ÷ per-worker loop ÷ one big model, and the training state held;
- ``processes``: a training step of extrap-SGD ÷ one of SGD on 2 processes;
- ``gpu``: ResNet-20 at B = 4096 on one GPU;
- ``train_loop``: ``extrap.train.train`` phase by phase, from its profiler ranges;
- ``data_throughput``: the CIFAR data path ÷ the model's training step.

``common`` holds what they share; ``host_syncs`` counts the host's reads of device tensors (the
train loop's ``--host-reads``, and ``tests/test_host_syncs.py``).
"""
