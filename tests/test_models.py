"""The paper's models: sizes, shapes and gradients, the LSTM's tied weights and hidden state, the
Transformer's masks, loss and decoding, the no-decay rule, and the virtual-worker engine."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from extrap import weight_decay_groups
from extrap.engines import make_engine
from models import MODELS, build_model, greedy_decode, label_smoothed_loss

PAD, BOS, EOS = 0, 1, 2
SMALL_LSTM = dict(vocab_size=50, embed_size=16, hidden_size=16)
SMALL_TRANSFORMER = dict(src_vocab=40, tgt_vocab=30, d_model=16, nhead=2, num_layers=2, dim_feedforward=32)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tokens(low, high, shape, pad_tail=0):
    """Random ids in [low, high) with the last ``pad_tail`` positions of row 0 set to PAD."""
    t = torch.randint(low, high, shape)
    if pad_tail:
        t[0, -pad_tail:] = PAD
    return t


def sample(name):
    """(model, inputs, expected output shape): the image models at their defaults, the sequence
    models small."""
    if name == "resnet20":
        return build_model("resnet20"), torch.randn(2, 3, 32, 32), (2, 10)
    if name == "vgg11":
        return build_model("vgg11"), torch.randn(2, 3, 32, 32), (2, 10)
    if name == "lstm":
        return build_model("lstm", **SMALL_LSTM), tokens(0, 50, (7, 3)), (7, 3, 50)  # [T, B]
    src, tgt = tokens(3, 40, (3, 6), pad_tail=2), tokens(3, 30, (3, 5), pad_tail=1)
    return build_model("transformer", **SMALL_TRANSFORMER), (src, tgt), (3, 5, 30)


def test_build_model_registers_the_papers_models_and_rejects_unknown_names():
    assert {"resnet20", "vgg11", "lstm", "transformer"} <= set(MODELS)
    with pytest.raises(ValueError, match="^model: expected one of .*resnet20.*got 'nope'"):
        build_model("nope")


def test_resnet20_has_he_et_al_0_27m_parameters():
    count = n_params(build_model("resnet20", num_classes=10))
    print(f"ResNet-20 (CIFAR-10 head): {count:,} parameters")
    assert abs(count - 270_000) / 270_000 < 0.01
    assert count == 269_722  # option-A shortcuts: no parameters outside the 19 convs, BNs and head
    assert n_params(build_model("resnet20", num_classes=100)) == 269_722 + 90 * 65


@pytest.mark.parametrize("name, kwargs, count", [
    ("vgg11", {}, 2_310_186),                                    # width 0.5
    ("vgg11", {"width": 1.0}, 9_228_362),                        # the full VGG-11 (BN, CIFAR head)
    ("lstm", {"vocab_size": 33_278}, 28_434_378),                # WikiText-2 vocabulary, tied
    ("lstm", {"vocab_size": 33_278, "tie_weights": False}, 28_434_378 + 33_278 * 650),
])
def test_documented_default_sizes(name, kwargs, count):
    assert n_params(build_model(name, **kwargs)) == count


@pytest.mark.parametrize("name", ["resnet20", "vgg11", "lstm", "transformer"])
def test_forward_shape_and_finite_gradient_for_every_parameter(name):
    torch.manual_seed(0)
    model, inputs, shape = sample(name)
    model.train()
    out = model(*inputs) if isinstance(inputs, tuple) else model(inputs)
    logits = out[0] if name == "lstm" else out
    assert logits.shape == shape and torch.isfinite(logits).all()
    if name == "lstm":
        h, c = out[1]
        assert h.shape == c.shape == (2, 3, SMALL_LSTM["hidden_size"])
    flat = logits.reshape(-1, shape[-1])
    F.cross_entropy(flat, torch.randint(1, shape[-1], flat.shape[:1])).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, n
        assert torch.isfinite(p.grad).all(), n
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


def test_vgg11_width_scales_every_channel_count():
    convs = [m for m in build_model("vgg11", width=0.25).modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 64, 128, 128, 128, 128]
    with pytest.raises(ValueError, match="^width:"):
        build_model("vgg11", width=0)


def test_lstm_tie_weights_shares_the_embedding_tensor():
    torch.manual_seed(0)
    tied = build_model("lstm", **SMALL_LSTM).eval()
    untied = build_model("lstm", **SMALL_LSTM, tie_weights=False)
    assert tied.decoder_weight is tied.encoder.weight
    assert untied.decoder_weight is not untied.encoder.weight
    assert n_params(untied) - n_params(tied) == 50 * 16
    # token 49 is not in the input: its embedding row reaches the output only through the decoder
    x = torch.randint(0, 40, (5, 2))
    before, _ = tied(x)
    with torch.no_grad():
        tied.encoder.weight[49] += 1.0
    after, _ = tied(x)
    assert torch.equal(before[..., :49], after[..., :49])
    assert not torch.allclose(before[..., 49], after[..., 49])
    with pytest.raises(ValueError, match="^tie_weights:"):
        build_model("lstm", vocab_size=50, embed_size=16, hidden_size=32)


def test_lstm_hidden_state_carries_across_windows():
    torch.manual_seed(0)
    model = build_model("lstm", **SMALL_LSTM).eval()
    x = torch.randint(0, 50, (8, 3))  # [T, B]
    h0 = model.init_hidden(3)
    assert all(t.shape == (2, 3, 16) and not t.any() for t in h0)
    full, _ = model(x)
    first, hidden = model(x[:5], h0)
    second, _ = model(x[5:], hidden)
    torch.testing.assert_close(torch.cat([first, second]), full)
    # the batch axis is axis 1: a column's logits depend on that column alone
    torch.testing.assert_close(model(x[:, 1:2])[0], full[:, 1:2])


def test_transformer_target_is_causal_and_padding_is_masked():
    torch.manual_seed(0)
    model = build_model("transformer", **SMALL_TRANSFORMER).eval()
    src, tgt = tokens(3, 40, (2, 6)), tokens(3, 30, (2, 7))
    with torch.no_grad():
        ref = model(src, tgt)
        changed = tgt.clone()
        changed[:, 4] = (tgt[:, 4] + 1 - 3) % 27 + 3
        got = model(src, changed)
        torch.testing.assert_close(got[:, :4], ref[:, :4], rtol=0, atol=1e-6)
        assert not torch.allclose(got[:, 4:], ref[:, 4:])
        # padding the source (a longer batch) changes nothing: padded keys are masked
        padded = torch.cat([src, torch.full((2, 3), PAD)], dim=1)
        torch.testing.assert_close(model(padded, tgt), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model((src, tgt)), ref)  # the engines' one-input form


def test_label_smoothed_loss_equals_torch_and_ignores_padding():
    torch.manual_seed(0)
    logits = torch.randn(4, 9, 30)
    target = torch.randint(3, 30, (4, 9))
    target[1, 5:] = PAD
    target[3, 2:] = PAD
    for eps in (0.0, 0.1, 0.3):
        ref = F.cross_entropy(logits.reshape(-1, 30), target.reshape(-1), ignore_index=PAD,
                              label_smoothing=eps)
        torch.testing.assert_close(label_smoothed_loss(logits, target, smoothing=eps, pad_idx=PAD), ref)
    noisy = logits.clone()
    noisy[target == PAD] = 100 * torch.randn_like(noisy[target == PAD])
    torch.testing.assert_close(label_smoothed_loss(noisy, target), label_smoothed_loss(logits, target))


def test_greedy_decode_is_the_models_argmax_and_stops_at_eos():
    torch.manual_seed(0)
    model = build_model("transformer", **SMALL_TRANSFORMER).eval()
    src = tokens(3, 40, (3, 6), pad_tail=2)
    ids = greedy_decode(model, src, BOS, EOS, max_len=8)
    assert ids.dtype == torch.long and ids.shape[0] == 3 and 1 <= ids.shape[1] <= 8
    # teacher-forcing the decoded prefix reproduces every decoded token up to the row's EOS
    with torch.no_grad():
        again = model(src, torch.cat([torch.full((3, 1), BOS), ids[:, :-1]], dim=1)).argmax(-1)
    for row, pred in zip(ids, again):
        end = (row == EOS).nonzero()
        n = int(end[0]) + 1 if len(end) else len(row)
        assert torch.equal(row[:n], pred[:n])
        assert (row[n:] == PAD).all()

    # a decoder that emits EOS at step 2 (row 0) and step 4 (row 1): rows end there, decoding stops
    def decode(ys, memory, src_pad):
        logits = torch.zeros(ys.shape[0], ys.shape[1], 30)
        step = ys.shape[1]
        logits[:, -1, 5] = 1.0
        logits[0, -1, EOS] = 2.0 * (step == 2)
        logits[1, -1, EOS] = 2.0 * (step == 4)
        return logits

    model.decode = decode
    ids = greedy_decode(model, src[:2], BOS, EOS, max_len=10)
    assert ids.tolist() == [[5, EOS, PAD, PAD], [5, 5, 5, EOS]]


def is_norm(module):
    return isinstance(module, (nn.BatchNorm2d, nn.LayerNorm))


@pytest.mark.parametrize("name", ["resnet20", "vgg11", "lstm", "transformer"])
def test_norm_and_bias_parameters_take_no_weight_decay(name):
    model = sample(name)[0]
    decay, plain = weight_decay_groups(model, 5e-4, log=None)
    no_decay = {id(p) for p in plain["params"]}
    assert plain["weight_decay"] == 0.0 and decay["weight_decay"] == 5e-4
    norms = [p for m in model.modules() if is_norm(m) for p in m.parameters(recurse=False)]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias") or ".bias_" in n]
    assert (norms or name == "lstm") and biases
    assert all(id(p) in no_decay for p in norms + biases)
    # in these models the rule is exactly "vectors take no decay, matrices and kernels do"
    assert no_decay == {id(p) for p in model.parameters() if p.dim() == 1}
    assert {id(p) for p in decay["params"]} == {id(p) for p in model.parameters() if p.dim() > 1}


def worker_gradients_match_one_model(name, model, x, y, loss_fn, batched=True):
    """Worker k's gradient through the virtual engine equals a plain backward of worker k alone."""
    workers = make_engine("virtual", 2, batched=batched).prepare(model)
    workers.train()
    losses, _ = workers.forward_backward(loss_fn, x, y)
    assert losses.shape == (2,) and torch.isfinite(losses).all()
    for k in range(2):
        ref = copy.deepcopy(model).train()
        loss = loss_fn(ref(tuple(t[k] for t in x) if isinstance(x, tuple) else x[k]), y[k])
        torch.testing.assert_close(losses[k], loss.detach(), rtol=1e-5, atol=1e-6)
        loss.backward()
        for n, p in ref.named_parameters():
            err = (workers.points()[n].grad[k] - p.grad).abs().max().item()
            assert err <= 1e-5, f"{name} worker {k} {n}: {err:.2e}"
    return workers


@pytest.mark.parametrize("name", ["resnet20", "vgg11"])
def test_image_models_run_as_batched_virtual_workers(name):
    torch.manual_seed(0)
    model = build_model(name)
    x, y = torch.randn(2, 4, 3, 32, 32), torch.randint(0, 10, (2, 4))
    workers = worker_gradients_match_one_model(name, model, x, y, F.cross_entropy)
    mean = next(b for n, b in workers.buffers.items() if n.endswith("running_mean"))
    assert not torch.allclose(mean[0], mean[1])  # each worker keeps its own BatchNorm statistics


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # SDPA falls back to a loop
def test_transformer_runs_as_batched_virtual_workers():
    torch.manual_seed(0)
    model = build_model("transformer", **SMALL_TRANSFORMER, dropout=0.0)
    src = torch.stack([tokens(3, 40, (3, 6), pad_tail=k + 1) for k in range(2)])
    tgt = torch.stack([tokens(3, 30, (3, 6), pad_tail=k + 1) for k in range(2)])
    tgt_in, tgt_out = tgt[..., :-1], tgt[..., 1:]
    worker_gradients_match_one_model("transformer", model, (src, tgt_in), tgt_out, label_smoothed_loss)


def lstm_case():
    torch.manual_seed(0)
    model = build_model("lstm", **SMALL_LSTM, dropout=0.0)
    x, y = torch.randint(0, 50, (2, 7, 3)), torch.randint(0, 50, (2, 7, 3))  # [K, T, B]
    loss_fn = lambda out, y: F.cross_entropy(out[0].reshape(-1, 50), y.reshape(-1))  # noqa: E731
    return model, x, y, loss_fn


def test_lstm_runs_as_virtual_workers_in_the_loop_path():
    model, x, y, loss_fn = lstm_case()
    worker_gradients_match_one_model("lstm", model, x, y, loss_fn, batched=False)


def test_lstm_is_marked_not_vmap_compatible_and_virtual_workers_loop():
    """torch.func has no batching rule for the fused LSTM kernel (aten::lstm), so the model says
    so and the virtual engine runs its workers by the loop even when asked for the batched path."""
    model, x, y, loss_fn = lstm_case()
    with pytest.raises(RuntimeError, match="aten::lstm"):
        torch.func.vmap(lambda inp: model(inp)[0])(x)
    assert model.vmap_compatible is False
    workers = make_engine("virtual", 2, batched=True).prepare(model)
    assert workers.batched is False
