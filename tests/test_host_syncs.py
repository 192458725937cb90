"""No host–device synchronisation inside a training step in steady state, trace points
(``log_every``) included.

``bench.host_syncs.HostSyncCounter`` counts every read of a tensor's value by the host (``.item()``,
``bool``/``float``/``int`` of a tensor, device-to-host copies, data-dependent output sizes,
``tolist``/``numpy``). On the CPU none of them waits for anything, but each would on a GPU, so
counting them here holds the GPU path to zero. The tasks read fabricated files in their own
formats, so these tests need nothing beside the project.
"""

import random

import pytest
import torch

from bench.host_syncs import HostSyncCounter
from extrap.engines import make_engine
from extrap.train import TrainConfig, setup, train_one_epoch
from models import build_model


def counts_per_step(cfg, engine, model, task) -> list[dict]:
    """Run one epoch of ``train``'s loop under the counter; the counts between optimizer steps."""
    run = setup(cfg, engine, model, task, say=lambda _: None)
    per_step, step = [], run.optimizer.step

    def counted_step(*args, **kwargs):
        out = step(*args, **kwargs)
        per_step.append(dict(syncs.counts))
        syncs.counts.clear()
        return out

    run.optimizer.step = counted_step
    run.workers.train()
    with HostSyncCounter(run.optimizer) as syncs:
        train_one_epoch(run, 0)
    assert len(per_step) == run.steps_per_epoch
    return per_step


def assert_steady_state_free(per_step: list[dict], warm: int = 1) -> None:
    """The first ``warm`` steps may build the epoch's caches; every step after reads nothing."""
    assert len(per_step) > warm + 1
    assert per_step[warm:] == [{}] * (len(per_step) - warm), per_step


def test_the_counter_sees_each_kind_of_host_read():
    t = torch.arange(6.0)
    with HostSyncCounter() as syncs:
        t.sum().item()
        bool(t[0] > 0)
        t[t > 2]
        t.nonzero()
        t.tolist()
        (t + 1).mul_(2)  # no read
    assert syncs.counts == {"item": 2, "boolean index": 1, "nonzero": 1, "tolist": 1}
    assert syncs.total == 5


@pytest.mark.parametrize("engine_kind, batched", [("virtual", True), ("virtual", False), ("single", None)])
def test_cifar_step_reads_nothing_from_the_device(monkeypatch, engine_kind, batched):
    import data.tasks
    from data import CifarTask

    gen = torch.Generator().manual_seed(0)
    fake = {split: (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen),
                    torch.randint(0, 10, (n,), generator=gen)) for split, n in (("train", 192), ("test", 20))}
    monkeypatch.setattr(data.tasks, "load_cifar", lambda root, name, split, download=False: fake[split])
    task = CifarTask("fabricated", eval_train_samples=20)
    k = 16 if engine_kind == "virtual" else 1
    cfg = TrainConfig(perturbation="extrap", local_batch=3, epochs=1, lars=True, weight_decay=1e-4, log_every=2)
    per_step = counts_per_step(cfg, make_engine(engine_kind, k, batched=batched), build_model("resnet20"), task)
    assert_steady_state_free(per_step)


def write_wikitext(folder, n_words=3000, seed=0):
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(40)]
    folder.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        lines = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(n_words // 12)]
        (folder / f"wiki.{split}.tokens").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_language_model_step_reads_nothing_from_the_device(tmp_path):
    from data import LanguageModelTask

    write_wikitext(tmp_path / "wikitext-2")
    task = LanguageModelTask(tmp_path / "wikitext-2", num_layers=2, hidden_size=16, bptt=8)
    model = build_model("lstm", vocab_size=task.vocab_size, embed_size=16, hidden_size=16, num_layers=2)
    cfg = TrainConfig(perturbation="extrap", local_batch=4, epochs=1, base_lr=1.0, clip_norm=0.25, log_every=2)
    assert_steady_state_free(counts_per_step(cfg, make_engine("virtual", 4), model, task))


def write_multi30k(folder, pairs=400, seed=0):
    rng = random.Random(seed)
    en, de = [f"e{i}" for i in range(30)], [f"d{i}" for i in range(30)]
    folder.mkdir(parents=True)
    for split, n in (("train", pairs), ("val", 20)):
        lengths = [rng.randint(3, 12) for _ in range(n)]
        (folder / f"{split}.en").write_text("\n".join(" ".join(rng.choice(en) for _ in range(m)) for m in lengths) + "\n")
        (folder / f"{split}.de").write_text("\n".join(" ".join(rng.choice(de) for _ in range(m + 1)) for m in lengths) + "\n")


@pytest.mark.parametrize("batched", [True, False])  # vmap, or the per-worker loop
def test_translation_step_reads_nothing_from_the_device(tmp_path, batched):
    from data import TranslationTask

    write_multi30k(tmp_path / "multi30k")
    task = TranslationTask(tmp_path / "multi30k", eval_samples=8)
    model = build_model("transformer", src_vocab=task.src_vocab_size, tgt_vocab=task.tgt_vocab_size, d_model=16,
                        nhead=2, num_layers=1, dim_feedforward=32)
    cfg = TrainConfig(optimizer="adam", perturbation="extrap", local_batch=8, epochs=1, base_lr=1e-3,
                      schedule="inverse-sqrt", warmup_steps=4, log_every=2)
    assert_steady_state_free(counts_per_step(cfg, make_engine("virtual", 4, batched=batched), model, task))
