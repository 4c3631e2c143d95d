"""A non-autoregressive translation model (NAT; Gu et al. 2018), simplified.

An autoregressive decoder writes one token at a time, each conditioned on the ones before. A NAT writes all
target positions **at once**: it first predicts how long the output is, then fills every position in
parallel, each conditioned on the source only. Decoding is one pass instead of T, but the positions cannot
agree with each other: if the data allow several translations, position 3 may follow one and position 4
another. That is why NAT needs distilled (unimodal) training data (Gu et al. 2018; Zhou et al. 2020).

What this model keeps from Gu et al. (2018), and what it simplifies:

* the **encoder** is the encoder–decoder's (:class:`~kdedu.models.Seq2Seq`'s layers);
* **length**: Gu et al. predict a *fertility* per source word (how many target words it becomes, trained
  with an external aligner) and copy each source word that many times. Here a classifier on the mean of
  the encoder states predicts the target length directly (over ``0..max_length``), as later NATs do (Lee et
  al. 2018; Ghazvininejad et al. 2019): no aligner needed;
* **decoder inputs**: Gu et al.'s "uniform copy" baseline: target position ``j`` of ``T`` receives the embedding
  of source position ``floor(j * S / T)`` (plus a position embedding);
* the **decoder** has self-attention *without* a causal mask (over the non-padding positions) and
  cross-attention to the encoder; one linear layer gives the logits of every position;
* no noisy parallel decoding (sampling several lengths and rescoring with an AR teacher), no fine-tuning
  with a KD or policy-gradient loss: training is cross-entropy on the tokens plus the length loss
  (:class:`kdedu.methods.NATLoss`), on raw or distilled targets.

Lengths count the labels of :func:`kdedu.data.translation_loader`: the target words plus EOS, so the same
batches train both kinds of model and the NAT emits EOS at its last position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kdedu.models.seq2seq import TokenEmbedding, _check_ids

__all__ = ["NAT", "NATOutput", "uniform_copy_index"]


@dataclass
class NATOutput:
    """``logits`` (B, T, V) for every target position; ``length_logits`` (B, max_length + 1) over lengths."""

    logits: torch.Tensor
    length_logits: torch.Tensor


def uniform_copy_index(source_lengths: torch.Tensor, target_lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(B, width) source positions ``floor(j * S_b / T_b)`` for target position ``j`` (0 past ``T_b``)."""
    j = torch.arange(width, device=source_lengths.device)[None, :]              # (1, W)
    t = target_lengths.clamp(min=1)[:, None]                                     # (B, 1)
    idx = torch.div(j * source_lengths[:, None], t, rounding_mode="floor")      # (B, W)
    return torch.where(j < t, idx, torch.zeros_like(idx)).clamp(max=int(source_lengths.max()) - 1)


class NAT(nn.Module):
    """NAT: ``forward(input_ids, attention_mask, decoder_attention_mask) -> NATOutput``.

    When training, the target length of each row is the number of ones in ``decoder_attention_mask``
    (B, T) (the teacher-forced length; the token values of ``decoder_input_ids`` are never read);
    :meth:`generate` predicts it instead.
    """

    def __init__(self, vocab_size: int, d_model: int = 128, num_heads: int = 4, num_encoder_layers: int = 2,
                 num_decoder_layers: int = 2, dim_feedforward: int = 256, dropout: float = 0.1,
                 max_length: int = 64, pad_id: int = 0, eos_id: int = 2):
        super().__init__()
        self.settings = dict(vocab_size=vocab_size, d_model=d_model, num_heads=num_heads,
                           num_encoder_layers=num_encoder_layers, num_decoder_layers=num_decoder_layers,
                           dim_feedforward=dim_feedforward, dropout=dropout, max_length=max_length, pad_id=pad_id,
                           eos_id=eos_id)
        self.pad_id, self.eos_id, self.vocab_size, self.max_length = pad_id, eos_id, vocab_size, max_length
        self.embed = TokenEmbedding(vocab_size, d_model, max_length, pad_id)
        enc = nn.TransformerEncoderLayer(d_model, num_heads, dim_feedforward, dropout, batch_first=True,
                                         norm_first=True)
        dec = nn.TransformerDecoderLayer(d_model, num_heads, dim_feedforward, dropout, batch_first=True,
                                         norm_first=True)
        self.encoder = nn.TransformerEncoder(enc, num_encoder_layers, norm=nn.LayerNorm(d_model),
                                             enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(dec, num_decoder_layers, norm=nn.LayerNorm(d_model))
        self.length_head = nn.Linear(d_model, max_length + 1)                    # classes: lengths 0..max_length
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.embed.words.weight

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """``(memory (B, S, D), padding (B, S), length_logits (B, max_length + 1))``."""
        _check_ids("input_ids", input_ids)
        if attention_mask is None:
            attention_mask = input_ids != self.pad_id
        keep = attention_mask.bool()                                              # (B, S)
        memory = self.encoder(self.embed(input_ids), src_key_padding_mask=~keep)  # (B, S, D)
        pooled = (memory * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1)  # (B, D)
        return memory, ~keep, self.length_head(pooled)

    def decode(self, input_ids: torch.Tensor, memory: torch.Tensor, padding: torch.Tensor,
               target_lengths: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) of all ``T = max(target_lengths)`` positions at once."""
        width = int(target_lengths.max())
        src_len = (~padding).long().sum(1)                                        # (B,)
        idx = uniform_copy_index(src_len, target_lengths, width)                  # (B, T)
        copied = self.embed.words(input_ids.gather(1, idx))                       # (B, T, D) uniform copy
        queries = copied + self.embed.positions(torch.arange(width, device=idx.device))
        tgt_pad = torch.arange(width, device=idx.device)[None, :] >= target_lengths[:, None]  # (B, T)
        h = self.decoder(queries, memory, tgt_key_padding_mask=tgt_pad,          # no causal mask
                         memory_key_padding_mask=padding)                         # (B, T, D)
        return self.lm_head(h)                                                    # (B, T, V)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                decoder_input_ids: torch.Tensor | None = None,
                decoder_attention_mask: torch.Tensor | None = None) -> NATOutput:
        if decoder_attention_mask is None:
            if decoder_input_ids is None:
                raise ValueError("NAT.forward needs decoder_attention_mask (B, T) (or decoder_input_ids) to know the "
                                 "target lengths; to translate, use NAT.generate")
            decoder_attention_mask = decoder_input_ids != self.pad_id
        lengths = decoder_attention_mask.long().sum(1)                            # (B,)
        memory, padding, length_logits = self.encode(input_ids, attention_mask)
        return NATOutput(self.decode(input_ids, memory, padding, lengths), length_logits)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Parallel decoding: ``(tokens (B, T), lengths (B,))``: the argmax length (at least 1), then the argmax
        token at every position at once. Positions past a row's length are ``pad_id``."""
        was_training = self.training
        self.eval()
        memory, padding, length_logits = self.encode(input_ids, attention_mask)
        lengths = length_logits[:, 1:].argmax(-1) + 1                            # (B,) never 0
        tokens = self.decode(input_ids, memory, padding, lengths).argmax(-1)     # (B, T) all positions at once
        width = torch.arange(tokens.shape[1], device=tokens.device)[None, :]
        tokens = torch.where(width < lengths[:, None], tokens, torch.full_like(tokens, self.pad_id))
        self.train(was_training)
        return tokens, lengths
