"""The execution options (``TrainConfig.precision``, ``channels_last``, ``compile``) train under
the virtual engine and stay close to float32 eager: 20 steps of K = 16 ResNet-20 workers with
extrap-SGD and LARS, on random images, compared step by step."""

import pytest
import torch

from extrap.engines import Execution, make_engine
from extrap.train import TrainConfig, setup, train_one_epoch
from models import build_model

STEPS, K, B = 20, 16, 2


def losses_of(batched: bool, **options) -> tuple[list[float], object]:
    """The mean loss over the K workers at each of 20 steps (vmap, or the per-worker loop), and
    the run."""
    from data import ClassificationTask

    gen = torch.Generator().manual_seed(0)
    n = STEPS * K * B
    task = ClassificationTask(torch.randn(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen),
                              torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, 10, (4,), generator=gen))
    torch.manual_seed(0)
    # γ by the base-batch rule (η_base from step 1), the look-ahead unbounded by LARS: large enough
    # that the loss on random labels climbs and settles back, so the comparison follows real dynamics
    cfg = TrainConfig(perturbation="extrap", local_batch=B, epochs=1, lars=True, weight_decay=1e-4, base_lr=0.05,
                      gamma_rule="base-batch", lars_lookahead=False, **options)
    run = setup(cfg, make_engine("virtual", K, batched=batched), build_model("resnet20"), task, say=lambda _: None)
    losses, forward_backward = [], run.workers.forward_backward

    def recorded(*args):
        out = forward_backward(*args)
        losses.append(out[0].mean().item())
        return out

    run.workers.forward_backward = recorded
    run.workers.train()
    train_one_epoch(run, 0)
    assert len(losses) == STEPS
    return losses, run


@pytest.fixture(scope="module")
def float32_eager():
    """float32 eager's losses, by path (computed once per path)."""
    cache = {}
    return lambda batched: cache.setdefault(batched, losses_of(batched)[0])


@pytest.mark.parametrize("options, first_rtol", [
    (dict(precision="bf16"), 1e-2),  # bfloat16 keeps 8 bits of mantissa
    (dict(channels_last=True), 1e-5),  # the same arithmetic in another order
    pytest.param(dict(compile="aot_eager"), 1e-5, marks=pytest.mark.slow),  # vmap: the K workers as one graph
])
@pytest.mark.parametrize("batched", [True, False], ids=["vmap", "loop"])
def test_an_execution_option_trains_close_to_float32_eager(float32_eager, options, first_rtol, batched):
    """The first loss (same x_0) within ``first_rtol``; the rounding differences then grow
    along the trajectory, which stays within 3% of float32 eager's over 20 steps."""
    losses, run = losses_of(batched, **options)
    float32_eager = float32_eager(batched)
    assert losses[0] == pytest.approx(float32_eager[0], rel=first_rtol)
    assert losses == pytest.approx(float32_eager, rel=0.03)
    # on random labels the loss climbs (to about 4.3 at step 5) and settles back near ln 10; it
    # does so with the option as in float32 eager (whose last loss is not always below its first:
    # with 1 thread it ends at 2.3344 from 2.3327)
    assert losses[-1] < 0.7 * max(losses) and float32_eager[-1] < 0.7 * max(float32_eager)
    # parameters, gradients and BatchNorm statistics stay float32
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in run.workers.parameters())
    assert all(b.dtype == torch.float32 for n, b in run.workers.buffers.items() if b.is_floating_point())
    if options.get("channels_last"):
        conv = run.workers.points()["conv1.weight"]  # [K, out, in, 3, 3], channels innermost per worker
        assert conv.stride()[2] == 1 and conv[0].is_contiguous(memory_format=torch.channels_last)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="^precision: expected one of float32, bf16"):
        Execution(precision="fp8")
    with pytest.raises(ValueError, match="^precision:"):
        TrainConfig(precision="bf16", dtype="float64")
