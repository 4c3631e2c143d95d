"""A small decoder-only Transformer language model (GPT; Radford et al. 2018), in the style of minGPT.

``forward(input_ids) -> logits (B, L, V)``: logit ``i`` is the distribution of token ``i + 1`` given tokens
``<= i`` (causal attention). It trains with ``kdedu.methods.Supervised(gpt, causal_lm=True)`` or
``kdedu.methods.KD(gpt, teacher, causal_lm=True)`` on the batches of
``kdedu.data.translation_loader(..., causal_lm=True)`` (``source BOS target EOS``, the source labelled -100),
and with ``kdedu.hf.DistillationTrainer(..., causal_lm=True)``. For translation it reads the source as a
prompt and continues it after BOS (:meth:`GPT.prefix_scorer`, used by :mod:`kdedu.models.decoding`).
"""

from __future__ import annotations

import torch
from torch import nn

from kdedu.models.seq2seq import TokenEmbedding, _check_ids

__all__ = ["GPT"]


class GPT(nn.Module):
    """Decoder-only Transformer LM. Sequences are right-padded: the causal mask keeps every real token from
    seeing the padding after it, so ``attention_mask`` is accepted and not needed."""

    def __init__(self, vocab_size: int, d_model: int = 128, num_heads: int = 4, num_layers: int = 4,
                 dim_feedforward: int = 256, dropout: float = 0.1, max_length: int = 64, pad_id: int = 0):
        super().__init__()
        self.settings = dict(vocab_size=vocab_size, d_model=d_model, num_heads=num_heads, num_layers=num_layers,
                           dim_feedforward=dim_feedforward, dropout=dropout, max_length=max_length, pad_id=pad_id)
        self.pad_id, self.vocab_size = pad_id, vocab_size
        self.embed = TokenEmbedding(vocab_size, d_model, max_length, pad_id)
        block = nn.TransformerEncoderLayer(d_model, num_heads, dim_feedforward, dropout, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(block, num_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.embed.words.weight                            # tied output layer

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed.words

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, L, V). ``labels`` is accepted (Hugging Face passes it) and ignored: the loss is the
        method's."""
        _check_ids("input_ids", input_ids)
        length = input_ids.shape[1]
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=input_ids.device), 1)  # (L, L)
        h = self.blocks(self.embed(input_ids), mask=causal, is_causal=True)       # (B, L, D)
        return self.lm_head(h)                                                    # (B, L, V)

    def prefix_scorer(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """The decoding protocol of :mod:`kdedu.models.decoding`: ``input_ids`` (B, P) are right-padded prompts
        (the sources); ``step(prefixes (N, t), rows (N,))`` appends each prefix (BOS first) to its row's prompt,
        runs the model on the whole sequence and returns the next-token log-probabilities (N, V)."""
        _check_ids("input_ids", input_ids)
        if attention_mask is None:
            attention_mask = input_ids != self.pad_id
        prompt_len = attention_mask.long().sum(1)                                 # (B,)

        def step(prefixes: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            n, t = prefixes.shape
            p = prompt_len[rows]                                                  # (N,)
            width = int(p.max()) + t
            j = torch.arange(width, device=prefixes.device).expand(n, width)      # (N, W) positions
            from_prompt = input_ids[rows].gather(1, j.clamp(max=input_ids.shape[1] - 1))
            from_prefix = prefixes.gather(1, (j - p[:, None]).clamp(0, t - 1))
            seq = torch.where(j < p[:, None], from_prompt, from_prefix)
            seq = torch.where(j < (p + t)[:, None], seq, torch.full_like(seq, self.pad_id))  # (N, W)
            logits = self(seq)                                                    # (N, W, V)
            last = logits[torch.arange(n, device=seq.device), p + t - 1]          # (N, V)
            return torch.log_softmax(last.float(), dim=-1)

        return step
