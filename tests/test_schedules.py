"""Learning-rate scaling, warmup, decays and γ's unscaled schedule, by hand."""

import math

import pytest
import torch

from extrap import ExtrapolatedSGD, Schedule, scaled_lr


def test_linear_and_sqrt_scaling():
    assert scaled_lr(0.1, 4096, 128, "linear") == pytest.approx((3.2, 32.0))
    lr, s = scaled_lr(0.1, 4096, 128, "sqrt")
    assert s == pytest.approx(math.sqrt(32)) and lr == pytest.approx(0.1 * math.sqrt(32))
    with pytest.raises(ValueError, match="^rule:"):
        scaled_lr(0.1, 256, 32, "cubic")


def test_warmup_then_step_decay():
    s = Schedule(base_lr=0.1, scale=8.0, total_steps=100, kind="step", warmup_steps=10)
    assert s.lr(0) == pytest.approx(0.1)  # warmup starts from η_base
    assert s.lr(5) == pytest.approx(0.1 + 0.7 * 5 / 10)  # linear per iteration
    assert s.lr(10) == pytest.approx(0.8)
    assert s.lr(49) == pytest.approx(0.8)
    assert s.lr(50) == pytest.approx(0.08)  # ×0.1 at 50 %
    assert s.lr(75) == pytest.approx(0.008)  # and at 75 %
    # γ follows the unscaled small-batch schedule: η_base, same decays, no warmup
    assert [s.gamma(t) for t in (0, 5, 49, 50, 75)] == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.001])


def test_constant_and_inverse_sqrt():
    c = Schedule(base_lr=0.1, scale=4.0, total_steps=100, kind="constant")
    assert [c.lr(t) for t in (0, 50, 99)] == pytest.approx([0.4] * 3)
    w = 100 * 64 // 1024  # warmup steps scaled down by the global batch
    s = Schedule(base_lr=1e-3, scale=2.0, total_steps=1000, kind="inverse-sqrt", warmup_steps=w)
    peak = 2e-3
    assert s.lr(w - 1) == pytest.approx(peak)
    assert s.lr(0) == pytest.approx(peak / w)
    assert s.lr(4 * w - 1) == pytest.approx(peak / 2)
    assert s.gamma(4 * w - 1) == pytest.approx(peak / 2 / 2.0)


def test_apply_sets_lr_and_gamma():
    opt = ExtrapolatedSGD([torch.zeros(3, requires_grad=True)], lr=1.0, perturbation="extrap")
    s = Schedule(base_lr=0.1, scale=8.0, total_steps=10, kind="step", gamma_multiplier=2.0)
    s.apply(opt, 6)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.08)
    assert opt.param_groups[0]["gamma"] == pytest.approx(0.02)
    s.apply(opt, 0, gamma=False)
    assert opt.param_groups[0]["gamma"] == pytest.approx(0.02)  # left alone


@pytest.mark.parametrize("kwargs, name", [
    (dict(kind="cosine"), "kind"), (dict(total_steps=0), "total_steps"),
    (dict(warmup_steps=-1), "warmup_steps"), (dict(milestones=(1.5,)), "milestones"),
    (dict(base_lr=-0.1), "base_lr"), (dict(kind="inverse-sqrt", warmup_steps=0), "warmup_steps"),
])
def test_invalid_schedule(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        Schedule(**{"base_lr": 0.1, **kwargs})


def test_gamma_under_train_is_the_optimizers_and_the_schedules(monkeypatch):
    """train() leaves γ to the optimizer: at every step it equals Schedule.gamma(t), η_base = 0.1
    through the warmup (not η_0/lr_scale = 0.025) and ×0.1 after each decay."""
    from data import DigitsTask
    from extrap.engines import make_engine
    from extrap.train import TrainConfig, train
    from models import build_model

    seen = []
    gamma = ExtrapolatedSGD.gamma

    def spy(self, group):
        value = gamma(self, group)
        seen.append(value)
        return value

    monkeypatch.setattr(ExtrapolatedSGD, "gamma", spy)
    cfg = TrainConfig(perturbation="extrap", local_batch=16, base_batch=16, base_lr=0.1, warmup_epochs=1,
                      epochs=4, checkpoint_every=4)
    task = DigitsTask()
    engine = make_engine("virtual", 4)
    train(cfg, engine, build_model("digits_cnn"), task)
    steps = cfg.epochs * task.steps_per_epoch(4, 16)
    closed = Schedule(base_lr=0.1, scale=4.0, total_steps=steps, kind="step", warmup_steps=task.steps_per_epoch(4, 16))
    per_step = seen[::2]  # two parameter groups, one γ each
    assert len(seen) == 2 * steps and seen[::2] == seen[1::2]
    assert per_step == pytest.approx([closed.gamma(t) for t in range(steps)])
    assert per_step[0] == pytest.approx(0.1) and per_step[-1] == pytest.approx(0.001)
