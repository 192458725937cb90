"""ExtrapolatedSGD / ExtrapolatedAdam against torch.optim and against the method (docs/method.md) written out by hand."""

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from extrap import PERTURBATIONS, REGISTRY, ExtrapolatedAdam, ExtrapolatedSGD, weight_decay_groups
from extrap.engines import CountingComm, LocalComm, VirtualComm

FRESH = tuple(name for name, kind in REGISTRY.items() if kind.closure)  # extragradient, sam


def small_model(seed=0):
    torch.manual_seed(seed)
    # no conv bias before BatchNorm: its gradient would be rounding noise, which Adam amplifies
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def batches(n, size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 1, 6, 6, generator=g), torch.randint(0, 3, (size,), generator=g))
            for _ in range(n)]


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


def max_rel(ps, qs):
    return max(rel(p.detach(), q.detach()) for p, q in zip(ps, qs))


def perturb(model, opt, x, y):
    """opt.perturb(), with the closure the fresh-gradient perturbations need."""
    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss
    opt.perturb(closure if opt.perturbation in FRESH else None)


def run(model, opt, data):
    """The README's loop for one worker."""
    for x, y in data:
        opt.zero_grad()
        perturb(model, opt, x, y)
        F.cross_entropy(model(x), y).backward()
        opt.step()


def run_plain(model, opt, data):
    """The usual torch.optim loop, for the reference optimizers."""
    for x, y in data:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


# -- equal to torch.optim when the perturbation is zero ----------------------------------------

# the SGD update's three kernels: torch's fused one (the default), foreach, the reference loop
KERNELS = {"fused": dict(fused=True), "foreach": dict(foreach=True), "loop": dict(foreach=False)}


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("perturbation", ["none", "extrap"])
def test_sgd_matches_torch_nesterov(perturbation, kernel):
    data = batches(50)
    a, b = small_model(), small_model()
    ours = ExtrapolatedSGD(a.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4,
                           perturbation=perturbation, gamma=0.0, **KERNELS[kernel])
    ref = torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    run(a, ours, data)
    run_plain(b, ref, data)
    assert max_rel(a.parameters(), b.parameters()) <= 1e-6
    assert max_rel(a.buffers(), b.buffers()) <= 1e-6  # BatchNorm statistics too


@pytest.mark.parametrize("foreach", [True, False])
def test_adam_gamma_zero_matches_torch_adam(foreach):
    data = batches(50)
    a, b = small_model(), small_model()
    ours = ExtrapolatedAdam(a.parameters(), lr=1e-2, weight_decay=1e-3, gamma=0.0, foreach=foreach)
    ref = torch.optim.Adam(b.parameters(), lr=1e-2, weight_decay=1e-3)
    run(a, ours, data)
    run_plain(b, ref, data)
    assert max_rel(a.parameters(), b.parameters()) <= 1e-6


# -- against Algorithm 1 written out------------------------------------------------------------

def reference_extrap_sgd(model, data, lr, gamma, beta, wd):
    """K = 1 extrap-SGD from Algorithm 1 (docs/method.md): x̃ = x − γ g_{t-1}; g = ∇f(x̃); d = g + λx;
    m = βm + d (m_0 = d_0); x ← x − η(d + βm)."""
    model = copy.deepcopy(model)
    names = [n for n, _ in model.named_parameters()]
    x = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    m, g_prev = None, None
    for xb, yb in data:
        x_tilde = {n: x[n] - gamma * g_prev[n] for n in names} if g_prev else dict(x)
        leaf = {n: t.clone().requires_grad_() for n, t in x_tilde.items()}
        loss = F.cross_entropy(functional_call(model, {**leaf, **buffers}, (xb,)), yb)
        g = dict(zip(names, torch.autograd.grad(loss, [leaf[n] for n in names])))
        d = {n: g[n] + wd * x[n] for n in names}
        m = d if m is None else {n: beta * m[n] + d[n] for n in names}
        x = {n: x[n] - lr * (d[n] + beta * m[n]) for n in names}
        g_prev = g
    return [x[n] for n in names]


@pytest.mark.parametrize("foreach", [True, False])
def test_extrap_sgd_k1_matches_spec_reference(foreach):
    data = batches(30)
    model = small_model()
    expected = reference_extrap_sgd(model, data, lr=0.05, gamma=0.02, beta=0.9, wd=1e-3)
    ours = copy.deepcopy(model)
    opt = ExtrapolatedSGD(ours.parameters(), lr=0.05, weight_decay=1e-3, perturbation="extrap",
                          gamma=0.02, foreach=foreach)
    run(ours, opt, data)
    assert max_rel(ours.parameters(), expected) <= 1e-6


def test_gamma_defaults_to_unscaled_rate():
    model = small_model()
    opt = ExtrapolatedSGD(model.parameters(), lr=0.08, lr_scale=8.0, gamma=None, perturbation="extrap")
    expected = reference_extrap_sgd(model, batches(5), lr=0.08, gamma=0.01, beta=0.9, wd=0.0)
    run(model, opt, batches(5))
    assert max_rel(model.parameters(), expected) <= 1e-6


def test_extrap_adam_matches_algorithm3_reference():
    data = batches(20)
    model = small_model()
    ours = copy.deepcopy(model)
    opt = ExtrapolatedAdam(ours.parameters(), lr=1e-2, gamma=1e-3, perturbation="extrap")
    run(ours, opt, data)
    # Algorithm 3: x̃ = x − γ g_{t-1}/(√v̂_t + ε), Adam on g(x̃)
    ref = copy.deepcopy(model)
    params = list(ref.parameters())
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    g_prev = None
    for t, (xb, yb) in enumerate(data, start=1):
        x_t = [p.detach().clone() for p in params]
        if g_prev is not None:
            with torch.no_grad():
                for p, g, vi in zip(params, g_prev, v):
                    p.sub_(1e-3 * g / ((vi / (1 - 0.999 ** (t - 1))).sqrt() + 1e-8))
        ref.zero_grad()
        F.cross_entropy(ref(xb), yb).backward()
        g_prev = [p.grad.clone() for p in params]
        with torch.no_grad():
            for p, x0, g, mi, vi in zip(params, x_t, g_prev, m, v):
                mi.mul_(0.9).add_(0.1 * g)
                vi.mul_(0.999).add_(0.001 * g * g)
                p.copy_(x0 - 1e-2 * (mi / (1 - 0.9**t)) / ((vi / (1 - 0.999**t)).sqrt() + 1e-8))
    assert max_rel(ours.parameters(), params) <= 1e-5


def test_fresh_gradient_perturbations_follow_their_definitions():
    model = small_model()
    x, y = batches(1)[0]
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    g = [p.grad.clone() for p in model.parameters()]
    norm = torch.sqrt(sum((t**2).sum() for t in g))
    x0 = [p.detach().clone() for p in model.parameters()]
    for kind, expected_u in (("extragradient", [0.1 * t for t in g]),
                             ("sam", [-0.05 * t / norm for t in g])):
        m = copy.deepcopy(model)
        opt = ExtrapolatedSGD(m.parameters(), lr=0.1, perturbation=kind,
                              gamma=0.1 if kind == "extragradient" else 0.05)

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            return loss
        opt.perturb(closure)
        for p, p0, u in zip(m.parameters(), x0, expected_u):
            torch.testing.assert_close(p0 - p.detach(), u, rtol=1e-5, atol=1e-7)
        assert all(p.grad is None for p in m.parameters())  # the user's backward starts clean


def test_fresh_gradient_needs_closure():
    opt = ExtrapolatedSGD(small_model().parameters(), lr=0.1, perturbation="sam")
    with pytest.raises(ValueError, match="closure"):
        opt.perturb()


# -- kernels ------------------------------------------------------------------------------------

@pytest.mark.parametrize("lars", [False, True])
@pytest.mark.parametrize("perturbation", PERTURBATIONS)
def test_foreach_and_single_tensor_kernels_agree(perturbation, lars):
    data = batches(8)
    finals = []
    for kernel in KERNELS.values():
        model = small_model()
        groups = weight_decay_groups(model, 5e-4, log=None)
        opt = ExtrapolatedSGD(groups, lr=0.05, perturbation=perturbation, gamma=0.01, lars=lars,
                              seed=3, **kernel)
        run(model, opt, data)
        finals.append([p.detach().clone() for p in model.parameters()])
    assert max_rel(finals[0], finals[2]) <= 1e-6 and max_rel(finals[1], finals[2]) <= 1e-6


def test_foreach_and_single_tensor_agree_for_stacked_workers():
    finals = []
    for kernel in KERNELS.values():
        torch.manual_seed(0)
        w = torch.randn(3, 4, 5, requires_grad=True)
        b = torch.randn(3, 4, requires_grad=True)
        opt = ExtrapolatedSGD([w, b], lr=0.1, perturbation="filter-gaussian", gamma=0.1, lars=True,
                              comm=VirtualComm(3), **kernel)
        for _ in range(4):
            opt.zero_grad()
            opt.perturb()
            ((w**2).sum() + (w.sum((1, 2)) * b.sum(1)).sum()).backward()
            opt.step()
        finals.append([w.detach().clone(), b.detach().clone()])
    assert max_rel(finals[0], finals[2]) <= 1e-6 and max_rel(finals[1], finals[2]) <= 1e-6


# -- perturbations: restore, distributions, workers ---------------------------------------------

@pytest.mark.parametrize("perturbation", PERTURBATIONS)
def test_every_perturbation_restores_x_t_bit_for_bit(perturbation):
    model = small_model()
    opt = ExtrapolatedSGD(model.parameters(), lr=0.05, weight_decay=1e-4, perturbation=perturbation,
                          gamma=0.05, lars=True)
    data = batches(3)
    run(model, opt, data[:2])  # so the past-gradient buffers are filled
    x_t = [p.detach().clone() for p in model.parameters()]
    x, y = data[2]
    opt.zero_grad()
    perturb(model, opt, x, y)
    moved = any(not torch.equal(p, q) for p, q in zip(model.parameters(), x_t))
    assert moved == (perturbation not in ("none", "stochastic"))  # stochastic: 0 for one worker
    F.cross_entropy(model(x), y).backward()
    for group in opt.param_groups:
        group["lr"] = 0.0  # then step() only restores: x_t + (−0)·d == x_t exactly
    opt.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), x_t))


def _noise(kind, gamma, shape, workers=2, seed=0):
    """u = x_t − x̃ for stacked virtual workers on a tensor of the given per-worker shape."""
    torch.manual_seed(5)
    base = torch.randn(*shape) * torch.arange(1, shape[0] + 1).reshape(-1, *[1] * (len(shape) - 1))
    p = base.unsqueeze(0).repeat(workers, *[1] * len(shape)).requires_grad_()
    opt = ExtrapolatedSGD([p], lr=0.1, perturbation=kind, gamma=gamma, comm=VirtualComm(workers), seed=seed)
    x_t = p.detach().clone()
    opt.perturb()
    return (x_t - p).detach(), base


@pytest.mark.parametrize("kind", ["gaussian", "uniform"])
def test_isotropic_noise_mean_scale_and_independence(kind):
    u, _ = _noise(kind, 0.03, (64, 32, 3, 3))
    n = u[0].numel()
    std = 0.03 if kind == "gaussian" else 0.03 / math.sqrt(3)
    for k in range(2):
        assert abs(u[k].mean().item()) < 5 * std / math.sqrt(n)
        assert u[k].std().item() == pytest.approx(std, rel=0.02)
    if kind == "uniform":
        assert u.abs().max().item() <= 0.03
    corr = torch.corrcoef(torch.stack([u[0].flatten(), u[1].flatten()]))[0, 1].item()
    assert abs(corr) < 0.02  # each worker draws its own noise


@pytest.mark.parametrize("kind", ["filter-gaussian", "filter-uniform"])
def test_filter_noise_scales_with_each_filter_norm(kind):
    u, base = _noise(kind, 0.1, (8, 16, 5, 5))
    for j in range(8):
        rms = base[j].norm().item() / math.sqrt(base[j].numel())
        scale = 0.1 * rms
        std = scale if kind == "filter-gaussian" else scale / math.sqrt(3)
        assert u[0, j].std().item() == pytest.approx(std, rel=0.2)
        if kind == "filter-uniform":
            assert u[0, j].abs().max().item() <= scale * (1 + 1e-6)
    # a 1-D tensor is one filter
    u1, base1 = _noise(kind, 0.1, (4000,))
    scale = 0.1 * base1.norm().item() / math.sqrt(4000)
    assert u1[0].std().item() == pytest.approx(scale if kind == "filter-gaussian" else scale / math.sqrt(3), rel=0.1)


def test_noise_stream_is_the_workers_not_the_engines():
    """Worker 1 draws the same noise as a process (LocalComm(1)) and as virtual worker 1."""
    stacked, _ = _noise("gaussian", 0.1, (10, 7), workers=2, seed=4)
    p = torch.zeros(10, 7, requires_grad=True)
    opt = ExtrapolatedSGD([p], lr=0.1, perturbation="gaussian", gamma=0.1, comm=LocalComm(1), seed=4)
    opt.perturb()
    torch.testing.assert_close(-p.detach(), stacked[1], rtol=0, atol=1e-5)  # x − γn rounding
    assert not torch.allclose(stacked[0], stacked[1])


@pytest.mark.parametrize("perturbation", ["gaussian", "filter-uniform"])
def test_a_resumed_optimizer_draws_the_noise_an_uninterrupted_one_would(perturbation):
    """The noise streams' positions are optimizer state: saved, reloaded (weights only), continued."""
    p = torch.ones(50, requires_grad=True)
    opt = ExtrapolatedSGD([p], lr=0.1, momentum=0.0, nesterov=False, perturbation=perturbation, gamma=0.05)
    draws = []
    for _ in range(2):  # the stream moves on from step to step
        opt.perturb()
        draws.append(p.detach().clone())
        p.grad = torch.zeros_like(p)
        opt.step()
    assert not torch.equal(*draws)
    data = batches(4)
    whole, first = small_model(), small_model()
    make = lambda m: ExtrapolatedSGD(m.parameters(), lr=0.1, perturbation=perturbation, gamma=0.05, seed=3)
    run(whole, make(whole), data)
    opt = make(first)
    run(first, opt, data[:2])
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed = small_model(seed=5)
    resumed.load_state_dict(saved["model"])
    opt = make(resumed)
    opt.load_state_dict(saved["opt"])
    run(resumed, opt, data[2:])
    assert max_rel(resumed.parameters(), whole.parameters()) == 0.0


def test_stochastic_perturbation_sums_to_zero_across_workers():
    k = 3
    p = torch.randn(k, 6, 5).requires_grad_()
    with torch.no_grad():
        p.copy_(p[0:1].expand_as(p))  # synchronous: all workers at x_t
    opt = ExtrapolatedSGD([p], lr=0.1, perturbation="stochastic", gamma=0.5, comm=VirtualComm(k))
    g = torch.randn(k, 6, 5)
    opt.perturb()
    p.grad = g.clone()
    opt.step()
    x_t = p.detach().clone()
    opt.perturb()
    u = (x_t - p).detach()
    torch.testing.assert_close(u, 0.5 * (g - g.mean(0, keepdim=True)), rtol=1e-5, atol=1e-6)
    assert u.sum(0).abs().max().item() < 1e-5


def test_extrap_uses_each_workers_own_local_gradient():
    k = 2
    p = torch.zeros(k, 3, requires_grad=True)
    opt = ExtrapolatedSGD([p], lr=0.0, perturbation="extrap", gamma=0.5, comm=VirtualComm(k))
    opt.perturb()
    p.grad = torch.tensor([[1.0, 2.0, 3.0], [5.0, 6.0, 7.0]])
    opt.step()
    opt.perturb()
    torch.testing.assert_close(p.detach(), -0.5 * torch.tensor([[1.0, 2.0, 3.0], [5.0, 6.0, 7.0]]))


@pytest.mark.parametrize("perturbation", PERTURBATIONS)
def test_one_gradient_all_reduce_per_step(perturbation):
    k = 2
    model = small_model()
    numel = sum(p.numel() for p in model.parameters())
    params = [p.detach().unsqueeze(0).repeat(k, *[1] * p.dim()).requires_grad_() for p in model.parameters()]
    comm = CountingComm(VirtualComm(k))
    opt = ExtrapolatedSGD(params, lr=0.01, perturbation=perturbation, gamma=0.01, comm=comm)
    steps = 5
    for _ in range(steps):
        def closure():
            opt.zero_grad()
            loss = sum((q**2).sum() for q in params)
            loss.backward()
            return loss
        opt.zero_grad()
        opt.perturb(closure if perturbation in FRESH else None)
        sum((q**2).sum() for q in params).backward()
        opt.step()
    assert comm.calls == {"gradients": steps}
    assert comm.values["gradients"] == steps * numel


# -- LARS ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [100.0, 1.0])  # trust ratio clipped at 1 / below 1
def test_lars_matches_larc_by_hand(scale):
    torch.manual_seed(0)
    w = (torch.randn(4, 3) * scale).requires_grad_()
    b = torch.randn(4).requires_grad_()
    g_w, g_b = torch.randn(4, 3), torch.randn(4)
    w0, b0 = w.detach().clone(), b.detach().clone()
    lr, wd, trust = 0.5, 1e-3, 0.02
    opt = ExtrapolatedSGD([w, b], lr=lr, momentum=0.0, nesterov=False, weight_decay=wd,
                          perturbation="none", lars=True, trust=trust)
    w.grad, b.grad = g_w.clone(), g_b.clone()
    opt.step()
    ratio = trust * w0.norm() / (g_w.norm() + wd * w0.norm() + 1e-8) / lr
    factor = min(ratio.item(), 1.0)
    assert (factor < 1.0) == (scale < 10)
    torch.testing.assert_close(w.detach(), w0 - lr * factor * (g_w + wd * w0))
    torch.testing.assert_close(b.detach(), b0 - lr * (g_b + wd * b0))  # 1-D: not adapted


# -- state ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda ps: ExtrapolatedSGD(ps, lr=0.05, weight_decay=1e-4, perturbation="extrap", gamma=0.02),
    lambda ps: ExtrapolatedSGD(ps, lr=0.05, perturbation="gaussian", gamma=0.01, seed=7),
    lambda ps: ExtrapolatedSGD(ps, lr=0.05, perturbation="sam", gamma=0.05, lars=True),
    lambda ps: ExtrapolatedAdam(ps, lr=1e-2, perturbation="extrap", gamma=1e-3),
], ids=["extrap", "gaussian", "sam-lars", "adam"])
def test_state_dict_mid_run_continues_identically(make):
    data = batches(10)
    model = small_model()
    opt = make(model.parameters())
    run(model, opt, data[:5])
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    run(model, opt, data[5:])

    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed = small_model(seed=99)
    resumed.load_state_dict(saved["model"])
    opt2 = make(resumed.parameters())
    opt2.load_state_dict(saved["opt"])
    run(resumed, opt2, data[5:])
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), resumed.parameters()))


def test_works_with_torch_lr_scheduler():
    model = small_model()
    opt = ExtrapolatedSGD(model.parameters(), lr=0.4, lr_scale=4.0, perturbation="extrap")
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    for _ in range(3):
        run(model, opt, batches(1))
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.04)  # 0.4 × 0.1^(3 // 2)
    assert opt.gamma(opt.param_groups[0]) == pytest.approx(0.01)  # γ = η_t / lr_scale


# -- arguments --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, name", [
    (dict(lr=-0.1), "lr"),
    (dict(lr=0.1, momentum=1.0), "momentum"),
    (dict(lr=0.1, momentum=0.0, nesterov=True), "nesterov"),
    (dict(lr=0.1, weight_decay=-1e-4), "weight_decay"),
    (dict(lr=0.1, perturbation="extrapolate"), "perturbation"),
    (dict(lr=0.1, gamma=-1.0), "gamma"),
    (dict(lr=0.1, lr_scale=0.0), "lr_scale"),
    (dict(lr=0.1, trust=0.0), "trust"),
    (dict(lr=0.1, direction="sideways"), "direction"),
    (dict(lr=0.1, seed=1.5), "seed"),
    (dict(lr=0.1, comm=object()), "comm"),
])
def test_invalid_sgd_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        ExtrapolatedSGD(small_model().parameters(), **kwargs)


@pytest.mark.parametrize("kwargs, name", [
    (dict(lr=-1.0), "lr"), (dict(betas=(1.0, 0.9)), "betas"), (dict(eps=-1.0), "eps"),
    (dict(weight_decay=-1.0), "weight_decay"), (dict(gamma=-1.0), "gamma"),
    (dict(perturbation="adam"), "perturbation"),
])
def test_invalid_adam_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        ExtrapolatedAdam(small_model().parameters(), **kwargs)


def test_weight_decay_groups_exclude_batchnorm_and_biases():
    model = small_model()
    lines = []
    decay, plain = weight_decay_groups(model, 5e-4, log=lines.append)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 1, 3, 3]), torch.Size([3, 144])]
    assert len(plain["params"]) == 3 and plain["weight_decay"] == 0.0 and plain["lars"] is False
    assert "2 tensors" in lines[0] and "3 BatchNorm/bias tensors" in lines[0]


# -- torch's optimizers underneath -----------------------------------------------------------------

@pytest.mark.parametrize("kwargs, fused, foreach", [
    (dict(fused=True), True, None), (dict(foreach=True), False, True), (dict(foreach=False), False, False),
    (dict(), True, None),  # the default where torch has a fused kernel: one worker per tensor
])
def test_fused_and_foreach_reach_torch(kwargs, fused, foreach):
    opt = ExtrapolatedSGD(small_model().parameters(), lr=0.1, **kwargs)
    assert bool(opt.param_groups[0]["fused"]) == fused and opt.param_groups[0]["foreach"] == foreach


def test_virtual_workers_default_to_foreach_and_stay_bitwise_equal():
    """K workers side by side in one tensor: torch's fused kernel rounds its vector body and its
    scalar tail differently, so synchronous workers at different offsets would drift apart."""
    k = 3
    p = torch.randn(1, 37, 5).repeat(k, 1, 1).requires_grad_()
    opt = ExtrapolatedSGD([p], lr=0.05, weight_decay=1e-4, perturbation="none", comm=VirtualComm(k))
    assert opt.param_groups[0]["foreach"] is True and not opt.param_groups[0]["fused"]
    for _ in range(5):
        opt.zero_grad()
        (p.sin() * torch.arange(p[0].numel()).reshape(p[0].shape)).sum().backward()
        opt.step()
    assert torch.equal(p[0], p[1]) and torch.equal(p[1], p[2])


def test_checkpoint_holds_no_copy_of_x_t():
    """ResNet-20 with extrap-SGD: the optimizer's state is the momentum and the local gradient,
    2 × 269,722 float32 values = 2.16 MB, and no x_t backup (which would make it 3.24 MB)."""
    from models import build_model

    model = build_model("resnet20")
    numel = sum(p.numel() for p in model.parameters())
    assert numel == 269_722
    opt = ExtrapolatedSGD(model.parameters(), lr=0.1, weight_decay=5e-4, perturbation="extrap", lars=True)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    for _ in range(2):
        opt.zero_grad()
        opt.perturb()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    opt.zero_grad()
    opt.perturb()  # mid-step, parameters at x̃: still nothing of x_t in the state
    state = opt.state_dict()
    assert {key for s in state["state"].values() for key in s} == {"momentum_buffer", "local_grad"}
    buf = io.BytesIO()
    torch.save(state, buf)
    size = buf.getbuffer().nbytes
    assert 2 * 4 * numel < size < 2 * 4 * numel + 100_000  # 2.16 MB + the groups and noise streams


# -- γ: one definition ----------------------------------------------------------------------------

@pytest.mark.parametrize("gamma_warmup", [True, False])
def test_gamma_follows_the_rate_under_a_torch_scheduler(gamma_warmup):
    """lr = 0.8 = η_base·8, warmed up from η_base over 5 steps and decayed ×0.1 at step 10 by a
    torch scheduler, lr_scale = B/b = 8: γ_t = gamma_factor · η_t / 8 at every step. The earlier
    rule (``gamma_warmup=False``) stays at 0.8/8 = 0.1 through the warmup and drops with the decay."""
    from extrap import Schedule

    model = small_model()
    opt = ExtrapolatedSGD(model.parameters(), lr=0.8, lr_scale=8.0, perturbation="extrap", gamma_factor=0.5,
                          gamma_warmup=gamma_warmup)
    warmup_then_decay = lambda t: (1 + 7 * min(t, 5) / 5) / 8 * (0.1 if t >= 10 else 1.0)  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_then_decay)
    closed = Schedule(base_lr=0.1, scale=8.0, total_steps=20, kind="step", warmup_steps=5, milestones=(0.5,))
    for t, (x, y) in enumerate(batches(20)):
        assert opt.param_groups[0]["lr"] == pytest.approx(closed.lr(t))
        run(model, opt, [(x, y)])
        expected = 0.5 * closed.lr(t) / 8 if gamma_warmup else 0.5 * 0.1 * (0.1 if t >= 10 else 1.0)
        assert opt.gamma(opt.param_groups[0]) == pytest.approx(expected)
        sched.step()


# -- the look-ahead under LARS --------------------------------------------------------------------

@pytest.mark.parametrize("engine", ["one process", "virtual workers"])
def test_lars_lookahead_bounds_each_tensors_lookahead_by_the_trust_ratio(engine):
    """With ``lars_lookahead``, each adapted tensor's look-ahead is LARC's step at rate γ along d:
    γ·min(τ‖x‖/(‖d‖ + λ‖x‖ + ε)/γ, 1)·d, so ‖x̃ − x_t‖ ≤ τ‖x_t‖ for every tensor and worker; the
    BatchNorm and bias tensors look ahead by γ·d as before. Without it, at this rate, the look-ahead
    of some tensor is longer than τ‖x_t‖ (what the option exists for)."""
    from extrap.engines import make_engine
    from extrap.param_groups import weight_decay_groups

    trust, wd, lr = 0.02, 1e-4, 4.0

    def lookaheads(lars_lookahead):
        """Per step: {name: (x_t [W, ...], x̃ − x_t [W, ...], d [W, ...], γ)} of every tensor."""
        model = small_model()
        k = 1 if engine == "one process" else 3
        eng = make_engine("virtual", k) if k > 1 else None
        workers = eng.prepare(model) if eng else None
        named = list(workers.named_parameters()) if workers else list(model.named_parameters())
        groups = weight_decay_groups(model, wd, named, log=None)
        opt = ExtrapolatedSGD(groups, lr=lr, lr_scale=float(k), weight_decay=wd, lars=True, trust=trust,
                              lars_lookahead=lars_lookahead, comm=eng.comm if eng else None)
        if eng:
            eng.attach(opt)
        seen = []
        for i, (x, y) in enumerate(batches(6, size=12)):
            xs = x.view(k, -1, *x.shape[1:]) if eng else x
            ys = y.view(k, -1) if eng else y
            at = {n: (opt.point(p).detach().clone() if eng else p.detach().clone().unsqueeze(0)) for n, p in named}
            d = {n: opt.state[p]["local_grad"].clone() for n, p in named if "local_grad" in opt.state[p]}
            opt.zero_grad()
            opt.perturb()
            moved = {n: (opt.point(p).detach() if eng else p.detach().unsqueeze(0)) - at[n] for n, p in named}
            if d:
                gamma = opt.gamma(opt.param_groups[0])
                seen.append({n: (at[n], moved[n], d[n] if eng else d[n].unsqueeze(0), gamma) for n in d})
            if eng:
                workers.forward_backward(F.cross_entropy, xs, ys)
            else:
                F.cross_entropy(model(xs), ys).backward()
            opt.step()
        return seen

    seen = lookaheads(True)
    assert len(seen) == 5
    adapted = {"0.weight", "4.weight"}
    for step in seen:
        for name, (x, u, d, gamma) in step.items():
            for w in range(x.shape[0]):
                xn, un, dn = x[w].norm(), u[w].norm(), d[w].norm()
                if name in adapted:  # up to apex's ε and float rounding
                    assert un <= trust * xn * (1 + 1e-5), (name, w, un / xn)
                    factor = min(float(trust * xn / (dn + wd * xn + 1e-8) / gamma), 1.0)
                    torch.testing.assert_close(u[w], -gamma * factor * d[w], rtol=1e-4, atol=1e-7)
                else:
                    torch.testing.assert_close(u[w], -gamma * d[w], rtol=1e-4, atol=1e-7)
    unbounded = lookaheads(False)
    assert any(u[w].norm() > 2 * trust * x[w].norm() for step in unbounded for name, (x, u, _, _) in step.items()
               if name in adapted for w in range(x.shape[0]))
