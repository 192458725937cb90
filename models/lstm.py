"""A two-layer LSTM language model (Figure 2: WikiText-2), in the form of PyTorch's
word_language_model example: embedding → dropout → 2-layer LSTM (dropout between the layers) →
dropout → linear decoder over the vocabulary.

Sizes. Two layers is the paper's; the paper follows Merity et al. (2017) for the setup, but its
hidden size and dropout rate were lost from our copy of the text. The defaults here are **chosen
here**: embedding = hidden = 650 with dropout 0.5 — the "medium" two-layer LSTM of Zaremba et al.
(2014) and of the word_language_model example, the standard two-layer WikiText-2 model — with
the embedding and decoder weights tied (Press & Wolf 2017; Inan et al. 2017), as Merity et al.
do. With WikiText-2's 33,278-word vocabulary that is 28.4 M parameters (21.6 M of them the
embedding). Configs that change a size say where the value comes from.

Layout: inputs are sequence-first token ids ``[T, B]``, the word_language_model convention that
``data/wikitext.py`` (``batchify``, ``get_batch``) produces; logits are ``[T, B, vocab_size]``.
The engines stack workers on a new leading axis (``[K, T, B]``), which does not disturb this.
The hidden state is nn.LSTM's ``(h, c)``, each ``[num_layers, B, hidden_size]``; carry it across
BPTT windows with ``repackage_hidden``.

Tied weights are tied *at call time* — the decoder reads ``encoder.weight`` in ``forward`` —
rather than by aliasing one Parameter under two names: ``torch.func.functional_call`` as the
virtual-worker engine calls it (``tie_weights=False``) replaces only the name it is given, so an
aliased decoder would silently keep the unstacked tensor and lose its gradient.

Virtual workers: nn.LSTM's fused kernel has no ``torch.func`` batching rule ("Batching rule not
implemented for aten::lstm.input. We could not generate a fallback.", torch 2.13), so the batched
virtual engine cannot run this model; its loop path (``make_engine("virtual", K, batched=False)``)
and the processes and single engines can.

Initialisation (the example's): embedding and decoder weights U(−0.1, 0.1), decoder bias 0,
LSTM weights PyTorch's default U(−1/√H, 1/√H).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LSTMLanguageModel", "TiedDecoder", "repackage_hidden"]

Hidden = tuple[Tensor, Tensor]


class TiedDecoder(nn.Module):
    """The output layer of a tied model: its own bias, the embedding's weight passed in."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.linear(x, weight, self.bias)


class LSTMLanguageModel(nn.Module):
    """``forward(tokens [T, B], hidden=None) -> (logits [T, B, vocab_size], hidden)``."""

    # torch.func.vmap has no batching rule for the fused LSTM kernel (aten::lstm): virtual
    # workers run this model by their per-worker loop
    vmap_compatible = False

    def __init__(self, vocab_size: int, embed_size: int = 650, hidden_size: int = 650,
                 num_layers: int = 2, dropout: float = 0.5, tie_weights: bool = True):
        super().__init__()
        if tie_weights and embed_size != hidden_size:
            raise ValueError(f"tie_weights: requires embed_size == hidden_size, got "
                             f"{embed_size} and {hidden_size}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout: expected in [0, 1), got {dropout}")
        self.vocab_size, self.hidden_size, self.num_layers = vocab_size, hidden_size, num_layers
        self.tie_weights = tie_weights
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(vocab_size, embed_size)
        self.rnn = nn.LSTM(embed_size, hidden_size, num_layers, dropout=dropout)
        self.decoder = TiedDecoder(vocab_size) if tie_weights else nn.Linear(hidden_size, vocab_size)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        if not tie_weights:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    @property
    def decoder_weight(self) -> Tensor:
        """The matrix the decoder multiplies by: the embedding's own tensor when tied."""
        return self.encoder.weight if self.tie_weights else self.decoder.weight

    def init_hidden(self, batch_size: int) -> Hidden:
        """Zero ``(h, c)`` for ``batch_size`` sequences, on the model's device and dtype."""
        w = self.encoder.weight
        shape = (self.num_layers, batch_size, self.hidden_size)
        return w.new_zeros(shape), w.new_zeros(shape)

    def forward(self, tokens: Tensor | tuple, hidden: Hidden | None = None) -> tuple[Tensor, Hidden]:
        if isinstance(tokens, (tuple, list)):  # the engines pass one input: (tokens, hidden)
            tokens, hidden = tokens
        emb = self.drop(self.encoder(tokens))
        out, hidden = self.rnn(emb, hidden)
        out = self.drop(out)
        logits = self.decoder(out, self.encoder.weight) if self.tie_weights else self.decoder(out)
        return logits, hidden


def repackage_hidden(hidden: Hidden) -> Hidden:
    """Detach the hidden state from the previous window's graph (truncated BPTT)."""
    return tuple(h.detach() for h in hidden)
