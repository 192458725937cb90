"""The smoothness probe on a quadratic, where the answer is known: ‖AΔx‖/‖Δx‖."""

import pytest
import torch
from torch import nn

from extrap import ExtrapolatedSGD, SmoothnessProbe


def test_probe_on_a_quadratic_matches_the_hessian():
    torch.manual_seed(0)
    x = torch.randn(256, 5)
    y = torch.zeros(256, 1)
    model = nn.Linear(5, 1, bias=False)
    loss = lambda out, target: 0.5 * ((out - target) ** 2).mean()  # noqa: E731
    hessian = x.T @ x / 256  # f(w) = ½ wᵀ H w: ∇f(w₁) − ∇f(w₀) = H (w₁ − w₀)
    probe = SmoothnessProbe(loss, (x, y), every=3)
    opt = ExtrapolatedSGD(model.parameters(), lr=0.1, perturbation="none")
    values = []
    for step in range(1, 10):
        w0 = model.weight.detach().clone()
        opt.zero_grad()
        loss(model(x), y).backward()
        opt.step()
        v = probe.observe(step, model)
        if v is not None:
            dw = (model.weight.detach() - w0).reshape(-1).double()
            values.append((v, (hessian.double() @ dw).norm().item() / dw.norm().item()))
    assert [h["step"] for h in probe.history] == [3, 6]
    assert len(values) == 2
    eig = torch.linalg.eigvalsh(hessian)
    for got, expected in values:
        assert got == pytest.approx(expected, rel=1e-4)
        assert eig[0] - 1e-6 <= got <= eig[-1] + 1e-6
