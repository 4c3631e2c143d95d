"""A small encoder–decoder Transformer (Vaswani et al. 2017) for the translation chapters of Part V.

Built from ``torch.nn``'s own layers (pre-norm), with learned positions and the output layer tied to the
(shared source/target) word embeddings. Shapes: ``B`` batch, ``S`` source length, ``T`` target length, ``D``
model width, ``V`` vocabulary. Decoding (:mod:`kdedu.models.decoding`) encodes the source once with
:meth:`Seq2Seq.encode` and re-runs the decoder on each longer prefix (no key/value cache: readable, and fast
enough at this size).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Seq2Seq", "TokenEmbedding"]


def _check_ids(name: str, x) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.is_floating_point():
        got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{name} must be a (B, L) integer tensor of token ids, got {got}")


class TokenEmbedding(nn.Module):
    """Word embedding plus a learned position embedding: (B, L) ids -> (B, L, D). Both start at N(0, 0.02^2),
    as in GPT-2, so the tied output layer starts with small logits (a near-uniform first prediction)."""

    def __init__(self, vocab_size: int, d_model: int, max_length: int, pad_id: int):
        super().__init__()
        self.words = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.positions = nn.Embedding(max_length, d_model)
        for table in (self.words, self.positions):
            nn.init.normal_(table.weight, std=0.02)
        with torch.no_grad():
            self.words.weight[pad_id].zero_()
        self.max_length = max_length

    def forward(self, ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        if ids.shape[1] > self.max_length:
            raise ValueError(f"sequences of {ids.shape[1]} tokens are longer than max_length={self.max_length}")
        pos = torch.arange(ids.shape[1], device=ids.device) if positions is None else positions
        return self.words(ids) + self.positions(pos)                             # (B, L, D)


class Seq2Seq(nn.Module):
    """Encoder–decoder Transformer: ``forward(input_ids, attention_mask, decoder_input_ids) -> logits (B, T, V)``.

    ``input_ids`` (B, S) is the source (right-padded with ``pad_id``), ``attention_mask`` (B, S) 1 on real
    tokens (rebuilt from ``pad_id`` if omitted), ``decoder_input_ids`` (B, T) the target shifted right (BOS
    first). Logit ``t`` is the distribution of target token ``t`` given the source and tokens ``< t`` (a causal
    mask). The defaults give about 0.7 M parameters with a vocabulary of ~100 words.
    """

    def __init__(self, vocab_size: int, d_model: int = 128, num_heads: int = 4, num_encoder_layers: int = 2,
                 num_decoder_layers: int = 2, dim_feedforward: int = 256, dropout: float = 0.1,
                 max_length: int = 64, pad_id: int = 0):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        self.settings = dict(vocab_size=vocab_size, d_model=d_model, num_heads=num_heads,
                           num_encoder_layers=num_encoder_layers, num_decoder_layers=num_decoder_layers,
                           dim_feedforward=dim_feedforward, dropout=dropout, max_length=max_length, pad_id=pad_id)
        self.pad_id, self.vocab_size = pad_id, vocab_size
        self.embed = TokenEmbedding(vocab_size, d_model, max_length, pad_id)   # shared by source and target
        enc = nn.TransformerEncoderLayer(d_model, num_heads, dim_feedforward, dropout, batch_first=True,
                                         norm_first=True)
        dec = nn.TransformerDecoderLayer(d_model, num_heads, dim_feedforward, dropout, batch_first=True,
                                         norm_first=True)
        self.encoder = nn.TransformerEncoder(enc, num_encoder_layers, norm=nn.LayerNorm(d_model),
                                             enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(dec, num_decoder_layers, norm=nn.LayerNorm(d_model))
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.embed.words.weight                            # tied output layer

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """``(memory (B, S, D), padding (B, S) bool, True on padding)``: the encoder's output, computed once."""
        _check_ids("input_ids", input_ids)
        if attention_mask is None:
            attention_mask = input_ids != self.pad_id
        padding = ~attention_mask.bool()                                          # (B, S)
        memory = self.encoder(self.embed(input_ids), src_key_padding_mask=padding)  # (B, S, D)
        return memory, padding

    def decode(self, decoder_input_ids: torch.Tensor, memory: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) of the next token after each prefix of ``decoder_input_ids`` (B, T)."""
        _check_ids("decoder_input_ids", decoder_input_ids)
        t = decoder_input_ids.shape[1]
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=memory.device), 1)  # (T, T) True = hidden
        h = self.decoder(self.embed(decoder_input_ids), memory, tgt_mask=causal,
                         memory_key_padding_mask=padding)                        # (B, T, D)
        return self.lm_head(h)                                                   # (B, T, V)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                decoder_input_ids: torch.Tensor | None = None,
                decoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits (B, T, V). ``decoder_attention_mask`` is accepted and not needed: targets are
        right-padded and the causal mask keeps every real position from seeing the padding after it."""
        if decoder_input_ids is None:
            raise ValueError("decoder_input_ids is required: the target shifted right, BOS first (see "
                             "kdedu.data.translation_loader)")
        memory, padding = self.encode(input_ids, attention_mask)
        return self.decode(decoder_input_ids, memory, padding)

    def prefix_scorer(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """The decoding protocol of :mod:`kdedu.models.decoding`: encode the sources once and return
        ``step(prefixes (N, t), rows (N,)) -> next-token log-probabilities (N, V)``, where ``rows[n]`` is the
        source that prefix ``n`` continues."""
        memory, padding = self.encode(input_ids, attention_mask)                 # (B, S, D), (B, S)

        def step(prefixes: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            logits = self.decode(prefixes, memory[rows], padding[rows])          # (N, t, V)
            return torch.log_softmax(logits[:, -1].float(), dim=-1)             # (N, V)

        return step
