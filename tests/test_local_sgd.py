"""Post-local SGD and the paper's Algorithm 2 on virtual workers."""

import pytest
import torch

from data import DigitsTask
from extrap import ExtrapolatedSGD, PostLocalSGD
from extrap.engines import CountingComm, make_engine
from models import build_model


def train(k, steps, *, post_local, switch=0, local_steps=1, momentum=0.0, perturbation="none", check=None):
    torch.manual_seed(0)
    engine = make_engine("virtual", k, batched=True)  # vmap: see test_beta0_h1_equals_minibatch_sgd
    task = DigitsTask()
    workers = engine.prepare(build_model("digits_cnn"))
    comm = CountingComm(engine.comm)
    opt = ExtrapolatedSGD(workers.parameters(), lr=0.05, momentum=momentum, nesterov=momentum > 0,
                          weight_decay=1e-4, perturbation=perturbation, gamma=0.02, comm=comm)
    stepper = PostLocalSGD(opt, switch_step=switch, local_steps=local_steps) if post_local else opt
    for t in range(steps):
        x, y = engine.worker_batch(task.train_batches(engine.worker_ids, 0, t, 16, k))
        stepper.zero_grad()
        stepper.perturb()
        workers.forward_backward(task.loss, x, y)
        averaged = stepper.step()
        if check is not None:
            check(t, averaged, list(workers.points().values()))  # each worker's model, [K, ...]
    return workers.parameters(), comm


def test_beta0_h1_equals_minibatch_sgd():
    local, _ = train(2, 20, post_local=True, local_steps=1)
    sync, _ = train(2, 20, post_local=False)
    for p, q in zip(local, sync):  # p: the two workers' models [2, ...]; q: their one shared x_t
        q = q.expand_as(p)
        assert ((p - q).norm() / q.norm()).item() <= 1e-6  # equal up to float rounding
    # (by the per-worker loop, float32 rounding grows to about 4e-4 over these 20 steps)


def test_the_switch_keeps_that_steps_gradients_without_perturb():
    """A loop that never calls perturb() (perturbation none): the workers split inside step() at
    the switch, and that step still uses the gradients taken at x_t."""
    def run(post_local):
        torch.manual_seed(0)
        engine, task = make_engine("virtual", 2), DigitsTask()
        workers = engine.prepare(build_model("digits_cnn"))
        opt = ExtrapolatedSGD(workers.parameters(), lr=0.05, momentum=0.0, nesterov=False, perturbation="none",
                              comm=engine.comm)
        stepper = PostLocalSGD(opt, switch_step=2, local_steps=1) if post_local else opt
        for t in range(3):
            x, y = engine.worker_batch(task.train_batches(engine.worker_ids, 0, t, 16, 2))
            stepper.zero_grad()
            workers.forward_backward(task.loss, x, y)
            stepper.step()
        return workers.parameters()

    for p, q in zip(run(True), run(False)):  # H = 1, β = 0: mini-batch SGD
        assert ((p - q.expand_as(p)).norm() / q.norm()).item() <= 1e-6


@pytest.mark.parametrize("perturbation", ["none", "extrap"])
def test_workers_differ_between_averagings_and_agree_after_one(perturbation):
    h, switch = 4, 3
    seen = {"differ": 0, "agree": 0}

    def check(t, averaged, params):
        same = all(torch.equal(p[0], p[1]) and torch.equal(p[1], p[2]) for p in params)
        if t < switch or averaged:
            assert same, f"step {t}: workers should hold one model"
            seen["agree"] += averaged
        else:
            assert not same, f"step {t}: local steps should separate the workers"
            seen["differ"] += 1

    _, comm = train(3, 15, post_local=True, switch=switch, local_steps=h, momentum=0.9,
                    perturbation=perturbation, check=check)
    assert seen == {"differ": 9, "agree": 3}
    # synchronous steps average gradients; the local phase averages only models, every H steps
    assert comm.calls == {"gradients": switch, "parameters": 3}


def test_momentum_stays_local_after_the_switch():
    torch.manual_seed(0)
    engine = make_engine("virtual", 2)
    p = torch.zeros(2, 5, requires_grad=True)
    opt = ExtrapolatedSGD([p], lr=0.1, momentum=0.9, perturbation="none", comm=engine.comm)
    stepper = PostLocalSGD(opt, switch_step=1, local_steps=2)
    for t in range(3):
        stepper.zero_grad()
        p.grad = torch.randn(2, 5)
        stepper.step()
    buf = opt.state[p]["momentum_buffer"]
    assert not torch.equal(buf[0], buf[1])
    assert torch.equal(p[0], p[1])  # averaged at the second local step


def test_post_local_arguments():
    opt = ExtrapolatedSGD([torch.zeros(2, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="^optimizer:"):
        PostLocalSGD(opt, switch_step=0)
    opt.comm = make_engine("virtual", 2).comm
    with pytest.raises(ValueError, match="^local_steps:"):
        PostLocalSGD(opt, switch_step=0, local_steps=0)
    with pytest.raises(ValueError, match="^switch_step:"):
        PostLocalSGD(opt, switch_step=-1)
