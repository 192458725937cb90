"""Learning-rate scaling, warmup and decays by hand, and γ_t = gamma_factor · η_t · b/B under them."""

import math

import pytest
import torch

from extrap import ExtrapolatedAdam, ExtrapolatedSGD, Schedule, scaled_lr


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
    # γ follows η_t through the warmup and the decays, at the local batch (lr_scale = B/b = 8)
    opt = ExtrapolatedSGD([torch.zeros(3, requires_grad=True)], lr=0.8, lr_scale=8.0, gamma_factor=0.5)
    gammas = []
    for t in (0, 5, 49, 50, 75):
        s.apply(opt, t)
        gammas.append(opt.gamma(opt.param_groups[0]))
    assert gammas == pytest.approx([0.5 * s.lr(t) / 8 for t in (0, 5, 49, 50, 75)])
    assert gammas == pytest.approx([0.00625, 0.028125, 0.05, 0.005, 0.0005])


def test_constant_and_inverse_sqrt():
    c = Schedule(base_lr=0.1, scale=4.0, total_steps=100, kind="constant")
    assert [c.lr(t) for t in (0, 50, 99)] == pytest.approx([0.4] * 3)
    w = 100 * 64 // 1024  # warmup steps scaled down by the global batch
    s = Schedule(base_lr=1e-3, scale=2.0, total_steps=1000, kind="inverse-sqrt", warmup_steps=w)
    peak = 2e-3
    assert s.lr(w - 1) == pytest.approx(peak)
    assert s.lr(0) == pytest.approx(peak / w)
    assert s.lr(4 * w - 1) == pytest.approx(peak / 2)
    opt = ExtrapolatedAdam([torch.zeros(3, requires_grad=True)], lr=peak, lr_scale=16.0)  # K = 16
    for t in (0, w - 1, 4 * w - 1):  # γ warms up and decays with η_t
        s.apply(opt, t)
        assert opt.gamma(opt.param_groups[0]) == pytest.approx(s.lr(t) / 16)


def test_apply_sets_lr_and_gamma_follows():
    opt = ExtrapolatedSGD([torch.zeros(3, requires_grad=True)], lr=1.0, perturbation="extrap", gamma_factor=2.0,
                          lr_scale=4.0)
    s = Schedule(base_lr=0.1, scale=8.0, total_steps=10, kind="step")
    s.apply(opt, 6)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.08)
    assert opt.param_groups[0]["gamma"] is None  # no second home for γ
    assert opt.gamma(opt.param_groups[0]) == pytest.approx(2.0 * 0.08 / 4.0)


@pytest.mark.parametrize("kwargs, name", [
    (dict(kind="cosine"), "kind"), (dict(total_steps=0), "total_steps"),
    (dict(warmup_steps=-1), "warmup_steps"), (dict(milestones=(1.5,)), "milestones"),
    (dict(base_lr=-0.1), "base_lr"), (dict(kind="inverse-sqrt", warmup_steps=0), "warmup_steps"),
])
def test_invalid_schedule(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        Schedule(**{"base_lr": 0.1, **kwargs})


@pytest.mark.parametrize("rule", ["local-batch", "base-batch"])
def test_gamma_under_train_is_the_optimizers(monkeypatch, rule):
    """train() leaves γ to the optimizer. By default, at every step γ_t = gamma_factor · η_t · b/B
    (K = 4), through the warmup from η_base = 0.1 to 0.4 and ×0.1 after each decay. The earlier
    rule (``gamma_rule="base-batch"``) keeps η_base = 0.1 through the warmup (not η_0/4 = 0.025)
    and ×0.1 after each decay."""
    from data import DigitsTask
    from extrap.engines import make_engine
    from extrap.train import TrainConfig, train
    from models import build_model

    seen = []
    gamma = ExtrapolatedSGD.gamma

    def spy(self, group):
        value = gamma(self, group)
        seen.append((group["lr"], value))
        return value

    monkeypatch.setattr(ExtrapolatedSGD, "gamma", spy)
    cfg = TrainConfig(perturbation="extrap", local_batch=16, base_batch=16, base_lr=0.1, warmup_epochs=1,
                      epochs=4, checkpoint_every=4, gamma_factor=0.5, gamma_rule=rule, log_every=1)
    task = DigitsTask()
    engine = make_engine("virtual", 4)
    record = train(cfg, engine, build_model("digits_cnn"), task)
    per_epoch = task.steps_per_epoch(4, 16)
    steps = cfg.epochs * per_epoch
    closed = Schedule(base_lr=0.1, scale=4.0, total_steps=steps, kind="step", warmup_steps=per_epoch)
    at_perturb = [g for _, g in seen[::3]]  # each step: two groups at perturb(), then the trace's one
    assert len(seen) == 3 * steps and [g for _, g in seen[1::3]] == at_perturb
    assert [lr for lr, _ in seen[::3]] == pytest.approx([closed.lr(t) for t in range(steps)])
    if rule == "local-batch":
        expected = [0.5 * closed.lr(t) / 4 for t in range(steps)]
        assert expected[0] == pytest.approx(0.0125) and expected[per_epoch] == pytest.approx(0.05)
    else:
        decays = [0.1 ** sum(t >= round(m * steps) for m in (0.5, 0.75)) for t in range(steps)]
        expected = [0.5 * 0.1 * d for d in decays]
    assert at_perturb == pytest.approx(expected)
    assert [p["gamma"] for p in record["trace"]] == pytest.approx(expected)  # the trace says what was used
    assert [p["lr"] for p in record["trace"]] == pytest.approx([closed.lr(t) for t in range(steps)])
