"""A down-scaled Transformer encoder–decoder for translation (Vaswani et al. 2017), the model of
Figure 3 (Multi30k en→de, Adam vs extrap-Adam).

The architecture is the base Transformer's: token embeddings scaled by √d_model plus sinusoidal
positional encodings, post-LayerNorm encoder and decoder layers (self-attention, cross-attention,
ReLU feed-forward), dropout on the embedding sums and inside every sublayer, and a pre-softmax
projection that shares the target embedding matrix (Vaswani et al. §3.4; the source embedding is
separate, since Multi30k's vocabularies are).

Sizes. The paper down-scales the base model (d_model 512, 8 heads, 6 + 6 layers, feed-forward
2048, dropout 0.1) "by a factor of …"; the factor was lost from our copy of the text. The
defaults here are **chosen here**: a factor of 2 throughout — d_model 256, 4 heads (keeping the
base model's 64 dimensions per head), 3 + 3 layers, feed-forward 1024 — with the base model's
dropout 0.1. Configs that use another size say where it comes from.

Initialisation: Xavier-uniform for every attention and feed-forward matrix (tensor2tensor, as
``nn.Transformer`` does); embeddings N(0, d_model^-1/2), so that after the √d_model scaling
they have unit scale (tensor2tensor/fairseq), with the padding row zero.

The shared output projection is applied at call time from ``tgt_embed.weight`` rather than by
aliasing one Parameter under two names, because ``torch.func.functional_call`` as the virtual
engine calls it (``tie_weights=False``) replaces only the name it is given. In training mode the
model runs under ``torch.func.vmap`` (the batched virtual engine); in eval mode with gradients on,
PyTorch's fused attention fast path has no derivative under vmap, so evaluate one worker's module.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Seq2SeqTransformer", "sinusoidal_positions", "label_smoothed_loss", "greedy_decode"]


def sinusoidal_positions(length: int, d_model: int, device=None, dtype=torch.float32) -> Tensor:
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d)),
    shape ``[length, d_model]`` (Vaswani et al. §3.5)."""
    pos = torch.arange(length, device=device, dtype=dtype).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d_model, 2, device=device, dtype=dtype) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model, device=device, dtype=dtype)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe


class Seq2SeqTransformer(nn.Module):
    """``forward(src [B, S], tgt_in [B, T]) -> logits [B, T, tgt_vocab]``.

    Padding (``pad_idx``) is masked as a key in every attention; the decoder's self-attention is
    causal. ``forward((src, tgt_in))`` — the pair as one argument — is accepted too, because the
    engines call ``model(inputs)`` with one input per worker.
    """

    def __init__(self, src_vocab: int, tgt_vocab: int, d_model: int = 256, nhead: int = 4,
                 num_layers: int = 3, dim_feedforward: int = 1024, dropout: float = 0.1,
                 pad_idx: int = 0, tie_embeddings: bool = True):
        super().__init__()
        if d_model % nhead:
            raise ValueError(f"nhead: must divide d_model={d_model}, got {nhead}")
        if d_model % 2:
            raise ValueError(f"d_model: must be even for the sinusoidal encoding, got {d_model}")
        self.d_model, self.pad_idx, self.tie_embeddings = d_model, pad_idx, tie_embeddings
        self.src_embed = nn.Embedding(src_vocab, d_model, padding_idx=pad_idx)
        self.tgt_embed = nn.Embedding(tgt_vocab, d_model, padding_idx=pad_idx)
        self.drop = nn.Dropout(dropout)
        enc_layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, batch_first=True)
        dec_layer = nn.TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, batch_first=True)
        # post-LN layers end in a LayerNorm already, so no extra final norm; no nested tensors,
        # which neither torch.func nor the padding-mask path of training needs
        self.encoder = nn.TransformerEncoder(enc_layer, num_layers, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(dec_layer, num_layers)
        self.out_proj = None if tie_embeddings else nn.Linear(d_model, tgt_vocab, bias=False)
        for name, p in self.named_parameters():
            if p.dim() > 1 and "embed" not in name:
                nn.init.xavier_uniform_(p)
        for emb in (self.src_embed, self.tgt_embed):
            nn.init.normal_(emb.weight, 0.0, d_model ** -0.5)
            with torch.no_grad():
                emb.weight[pad_idx].zero_()

    def _embed(self, embedding: nn.Embedding, tokens: Tensor) -> Tensor:
        x = embedding(tokens) * math.sqrt(self.d_model)
        return self.drop(x + sinusoidal_positions(tokens.shape[-1], self.d_model, x.device, x.dtype))

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder output ``[B, S, d_model]`` and the source padding mask ``[B, S]`` (True = pad)."""
        src_pad = src == self.pad_idx
        return self.encoder(self._embed(self.src_embed, src), src_key_padding_mask=src_pad), src_pad

    def decode(self, tgt_in: Tensor, memory: Tensor, src_pad: Tensor) -> Tensor:
        """Logits ``[B, T, tgt_vocab]`` of the next token at every target position."""
        t = tgt_in.shape[-1]
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=tgt_in.device), diagonal=1)
        h = self.decoder(self._embed(self.tgt_embed, tgt_in), memory, tgt_mask=causal,
                         tgt_key_padding_mask=tgt_in == self.pad_idx,
                         memory_key_padding_mask=src_pad, tgt_is_causal=True)
        return F.linear(h, self.tgt_embed.weight) if self.tie_embeddings else self.out_proj(h)

    def forward(self, src: Tensor | tuple[Tensor, Tensor], tgt_in: Tensor | None = None) -> Tensor:
        if tgt_in is None:
            src, tgt_in = src
        memory, src_pad = self.encode(src)
        return self.decode(tgt_in, memory, src_pad)


def label_smoothed_loss(logits: Tensor, target: Tensor, smoothing: float = 0.1, pad_idx: int = 0) -> Tensor:
    """Label-smoothed cross-entropy (Szegedy et al. 2016) averaged over non-pad target tokens:

        loss_i = (1 − ε) · (−log p_i[y_i]) + ε · mean_v(−log p_i[v])

    over all V classes — the definition of ``F.cross_entropy(label_smoothing=ε,
    ignore_index=pad_idx)``, written out so its parts stay visible. ``logits [..., V]``,
    ``target [...]``.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    smooth = -logp.mean(dim=-1)
    keep = (target != pad_idx).to(logp.dtype)
    per_token = (1.0 - smoothing) * nll + smoothing * smooth
    return (per_token * keep).sum() / keep.sum()


@torch.no_grad()
def greedy_decode(model: Seq2SeqTransformer, src: Tensor, bos: int, eos: int, max_len: int,
                  early_stop: bool = True) -> Tensor:
    """Greedy translations of ``src [B, S]``: token ids ``[B, L]`` (L ≤ max_len), BOS not
    included, each row ending with its EOS and padded with ``model.pad_idx`` after it. Stops
    once every row has produced EOS, unless ``early_stop=False``: then it decodes all
    ``max_len`` tokens (the same rows, padded further) without reading the device each token.
    Call in eval mode."""
    memory, src_pad = model.encode(src)
    ys = torch.full((src.shape[0], 1), bos, dtype=torch.long, device=src.device)
    done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
    for _ in range(max_len):
        # the whole prefix is re-decoded each step: O(L²) but no key/value cache to keep right
        nxt = model.decode(ys, memory, src_pad)[:, -1].argmax(-1)
        nxt = nxt.masked_fill(done, model.pad_idx)
        ys = torch.cat([ys, nxt.unsqueeze(1)], dim=1)
        done |= nxt == eos
        if early_stop and done.all():
            break
    return ys[:, 1:]
