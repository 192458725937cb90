"""The training loss at x_t with BatchNorm statistics re-estimated at x_t, against a hand computation."""

import torch
import torch.nn.functional as F
from torch import nn

from data.tasks import ClassificationTask
from extrap.batchnorm import has_batch_norm, reestimated_batch_norm


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 5 * 5, 3))


def _by_hand(model, x, y, batch):
    """Per batch, the channel means and unbiased variances of the conv's output; their means over
    the batches are the statistics; then the network in eval mode with them, the mean loss."""
    conv, bn, fc = model[0], model[1], model[4]
    with torch.no_grad():
        means, variances = [], []
        for i in range(0, len(x), batch):
            h = conv(x[i:i + batch]).double()
            means.append(h.mean((0, 2, 3)))
            variances.append(h.permute(1, 0, 2, 3).flatten(1).var(1, unbiased=True))
        mean, var = torch.stack(means).mean(0), torch.stack(variances).mean(0)
        h = conv(x).double()
        h = (h - mean[:, None, None]) / torch.sqrt(var[:, None, None] + bn.eps)
        h = h * bn.weight.double()[:, None, None] + bn.bias.double()[:, None, None]
        logits = fc.double()(h.relu().flatten(1))
        fc.float()
        return F.cross_entropy(logits, y).item()


def test_reestimated_loss_equals_a_hand_computation_and_leaves_training_statistics_alone():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 3, 5, 5, generator=g) * 2 + 1, torch.randint(0, 3, (40,), generator=g)
    model = _model()
    model.train()
    for _ in range(3):  # running statistics of other points: what training at x̃ leaves behind
        model(torch.randn(8, 3, 5, 5, generator=g) * 5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    task = ClassificationTask(x, y, x[:8], y[:8])
    biased = task.subset_loss(model, size=40).item()
    measured = task.subset_loss(model, size=40, reestimate_bn=True, bn_batch=16).item()  # batches 16, 16, 8
    expected = _by_hand(model, x, y, 16)
    assert abs(measured - expected) <= 1e-5 * abs(expected)
    assert abs(biased - expected) > 0.05  # the running statistics were of other points
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # training's statistics put back
    assert model.training  # and its mode


def test_no_batch_norm_is_a_plain_evaluation():
    model = nn.Sequential(nn.Flatten(), nn.Linear(75, 3))
    assert not has_batch_norm(model) and has_batch_norm(_model())
    x = torch.randn(4, 3, 5, 5)
    with reestimated_batch_norm(model, [x]):
        out = model(x)
    assert out.shape == (4, 3)


def test_the_statistics_are_torchs_update_bn():
    """The re-estimated statistics are those of ``torch.optim.swa_utils.update_bn`` (cumulative
    mean), reached without reading the batch counter back from the device."""
    from torch.optim.swa_utils import update_bn

    g = torch.Generator().manual_seed(2)
    batches = [torch.randn(n, 3, 5, 5, generator=g) * 3 - 1 for n in (16, 16, 8)]
    ours, theirs = _model(), _model()
    ours.eval()
    with reestimated_batch_norm(ours, batches):
        inside = {k: v.clone() for k, v in ours.state_dict().items()}
        assert not ours.training and ours[1].momentum == 0.1  # the caller's mode and momentum inside
    update_bn(batches, theirs)
    for k in ("1.running_mean", "1.running_var"):
        assert torch.allclose(inside[k], theirs.state_dict()[k], rtol=1e-6, atol=1e-7), k
