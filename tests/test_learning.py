"""Short CPU trainings on the real slices in ../shared/data learn (issue: models and data).

Each test prints what it measured; the figures in the README come from these runs.
"""

import math
import time

import pytest
import torch
import torch.nn.functional as F

from conftest import SHARED_DATA
from extrap import ExtrapolatedAdam, ExtrapolatedSGD, Schedule
from extrap.engines import make_engine
from extrap.train import TrainConfig, train
from models import build_model, greedy_decode, label_smoothed_loss

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} not present: the real "
                       "dataset slices ship beside the project in CI only"),
]


def test_resnet20_learns_on_the_cifar10_slice():
    from data import CifarTask

    torch.manual_seed(0)
    task = CifarTask(SHARED_DATA / "cifar10-subset", eval_train_samples=None)
    cfg = TrainConfig(perturbation="extrap", local_batch=64, base_batch=64, base_lr=0.1, epochs=3,
                      milestones=(0.67,), weight_decay=5e-4)
    start = time.perf_counter()
    record = train(cfg, make_engine("single"), build_model("resnet20"), task)
    top1 = [p["test_top1"] for p in record["curve"]]
    print(f"ResNet-20, CIFAR-10 slice (4,660 train / 846 test), 3 epochs extrap-SGD: "
          f"test top-1 per epoch {[round(t, 1) for t in top1]} in {time.perf_counter() - start:.0f} s")
    assert record["status"] == "completed"
    assert top1[-1] >= 30.0  # chance is 10 %
    assert record["curve"][-1]["train_loss"] < record["curve"][0]["train_loss"]


def lm_perplexity(model, source, bptt=35, max_windows=None):
    model.eval()
    total, count = 0.0, 0
    hidden = None
    with torch.no_grad():
        for n, i in enumerate(range(0, source.size(0) - 1, bptt)):
            if max_windows is not None and n >= max_windows:
                break
            x, y = source[i:i + bptt], source[i + 1:i + 1 + bptt]
            logits, hidden = model(x, hidden)
            total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
            count += y.numel()
    model.train()
    return math.exp(total / count)


def test_lstm_test_perplexity_falls_training_on_wikitext2_valid():
    """The slice has no training split: train on ``valid``, evaluate on ``test`` (said so)."""
    from data import batchify, get_batch, load_wikitext

    torch.manual_seed(0)
    wt = load_wikitext(SHARED_DATA / "wikitext-2", vocab_split="valid", splits=("valid", "test"))
    train_data, test_data = batchify(wt.ids["valid"], 20), batchify(wt.ids["test"], 10)
    model = build_model("lstm", vocab_size=len(wt.vocab), embed_size=128, hidden_size=128, dropout=0.2)
    opt = ExtrapolatedSGD(model.parameters(), lr=20.0, momentum=0.0, nesterov=False, perturbation="extrap",
                          gamma=1.0)
    before = lm_perplexity(model, test_data, max_windows=100)
    hidden, steps = None, 150
    for n, i in enumerate(range(0, steps * 35, 35)):
        x, y = get_batch(train_data, i, 35)
        hidden = None if hidden is None else tuple(h.detach() for h in hidden)
        opt.zero_grad()
        opt.perturb()
        logits, hidden = model(x, hidden)
        F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()
    after = lm_perplexity(model, test_data, max_windows=100)
    print(f"LSTM (128/128, tied), trained {steps} BPTT windows on WikiText-2 valid: test perplexity "
          f"{before:.0f} -> {after:.0f} (vocabulary {len(wt.vocab)} from valid)")
    assert after < before / 10


def test_transformer_loss_falls_and_bleu_is_positive_on_multi30k():
    from data import bleu, bucket_batches, collate, prepare_multi30k, shard_indices

    torch.manual_seed(0)
    data = prepare_multi30k(SHARED_DATA / "multi30k", splits=("train", "val"))
    src, tgt = data.ids["train"]
    model = build_model("transformer", src_vocab=len(data.src_vocab), tgt_vocab=len(data.tgt_vocab),
                        d_model=128, nhead=4, num_layers=2, dim_feedforward=256, dropout=0.1)
    steps = 300
    opt = ExtrapolatedAdam(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-9, perturbation="extrap")
    schedule = Schedule(base_lr=1.5e-3, total_steps=steps, kind="inverse-sqrt", warmup_steps=100)
    lengths = torch.tensor([len(s) for s in src])
    batches = bucket_batches(lengths, shard_indices(len(src), 1, 0, 0), 64,
                             generator=torch.Generator().manual_seed(0))
    losses = []
    for step in range(steps):
        x, y = collate(src, tgt, batches[step])
        schedule.apply(opt, step)
        opt.zero_grad()
        opt.perturb()
        loss = label_smoothed_loss(model(x, y[:, :-1]), y[:, 1:], smoothing=0.1)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    val_src, _ = data.ids["val"]
    refs = data.text["val"][1]
    n = 200
    with torch.no_grad():
        hyps = []
        for i in range(0, n, 50):
            x, _ = collate(val_src, val_src, torch.arange(i, i + 50))
            hyps.extend(greedy_decode(model, x, 2, 3, max_len=40).tolist())
    score = bleu(hyps, refs[:n], data.tgt_vocab)
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    print(f"Transformer (d=128, 2+2 layers), {steps} steps of 64 pairs, extrap-Adam: training loss "
          f"{first:.2f} -> {last:.2f}; greedy BLEU on the first {n} val sentences {score:.2f}")
    assert last < 0.7 * first
    assert score > 0.0


def test_data_path_outpaces_the_model():
    """Both rates from the same process, in alternating rounds of fixed counts: their ratio."""
    from bench.data_throughput import measure

    rounds, data_calls = 3, 20
    r = measure(SHARED_DATA / "cifar10-subset", "cpu", batch=128, rounds=rounds, data_calls=data_calls)
    print(f"data path {r['data_img_s']:,.0f} img/s vs ResNet-20 step {r['model_img_s']:,.0f} img/s")
    # one batch for the model's input, then a warm-up call and the rounds of each
    assert r["batches"] == {"data": 1 + (1 + rounds) * data_calls, "model": 1 + rounds}
    assert r["ratio"] > 10
