"""A small masked language model (MLM): the text generator of MATE-KD (chapter 12) and of word replacement.

A masked LM reads a sentence in which some tokens were replaced by ``[MASK]`` and predicts, at every
position, a distribution over the vocabulary (BERT's pre-training task, Devlin et al. 2019). Filling the
masked positions with samples from it rewrites part of the sentence: MATE-KD's generator "rewrites about 30 %
of the tokens" this way (Rashid et al. 2021), and TinyBERT's word replacement proposes substitutes with it.

* :class:`MaskedLM` is an encoder (a ``transformers`` BERT) plus BERT's MLM head: a dense layer, GELU and
  LayerNorm, then a projection onto the vocabulary **tied** to the encoder's word-embedding matrix (the logit of
  token ``v`` is ``h · E_v + b_v``), so the head adds only ``H^2 + 3H + V`` parameters.
  ``forward(input_ids, attention_mask)`` returns logits ``(B, L, V)``; ``positions=`` (a bool ``(B, L)`` mask)
  returns only the rows at those positions, ``(n, V)``, which is all a masked LM is trained on and all a
  generator fills (the ``V``-wide projection is most of the cost: 30,522 x 384 multiply-adds per row for MiniLM).
* :func:`mask_tokens` picks the positions to rewrite (each real token with probability ``rate``, never a special
  token or padding) and puts ``[MASK]`` there.
* :func:`load_masked_lm` loads a Hugging Face ``...ForMaskedLM`` checkpoint (the `full` profile: DistilRoBERTa).

The book's pretrained generator is :func:`kdedu.zoo.masked_lm`: MiniLM's word embeddings and its two lowest
blocks, trained to fill masks on the synthetic sentiment corpus and cached.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import nn

__all__ = ["MaskedLM", "mask_tokens", "special_token_ids", "load_masked_lm", "minilm_tokenizer"]


def special_token_ids(tokenizer) -> tuple[int, ...]:
    """The ids a generator must never mask nor write: the tokenizer's special tokens ([CLS], [SEP], [PAD], [MASK],
    [UNK], ...), read from ``all_special_ids`` (Hugging Face) or ``specials`` + ``vocab`` (a
    :class:`kdedu.data.WordTokenizer`)."""
    ids = getattr(tokenizer, "all_special_ids", None)
    if ids is None and hasattr(tokenizer, "specials") and hasattr(tokenizer, "vocab"):
        ids = [tokenizer.vocab[t] for t in tokenizer.specials]
    if ids is None:
        raise TypeError(f"tokenizer must be a Hugging Face tokenizer (with all_special_ids) or a kdedu WordTokenizer, "
                        f"got {type(tokenizer).__name__}")
    return tuple(sorted({int(i) for i in ids}))


@functools.lru_cache(maxsize=1)
def minilm_tokenizer():
    """MiniLM's WordPiece tokenizer alone (30,522 tokens, uncased), without loading the model's weights."""
    from transformers import AutoTokenizer

    from kdedu.models.transformer import minilm_path

    return AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)


def mask_tokens(input_ids: torch.Tensor, mask_token_id: int, special_ids=(), rate: float = 0.3,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose the tokens to rewrite and replace them by ``[MASK]``: ``(masked_ids, positions)``.

    Each token that is not in ``special_ids`` (which should include the padding id) is chosen independently with
    probability ``rate``, as in MATE-KD's official code (its ``p_value``, 0.3), where every chosen token becomes
    ``[MASK]`` (BERT's pre-training also keeps 10 % and randomises 10 %; MATE-KD does not). ``positions`` is the
    bool ``(B, L)`` mask of the chosen tokens; a short sentence may get none. ``generator`` makes the choice
    repeatable; the default draws from torch's global RNG (which :func:`kdedu.train.fit` seeds).
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
        raise ValueError(f"input_ids must be a (B, L) integer tensor, got "
                         f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids)}")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be a probability in [0, 1], got {rate!r}")
    special = torch.as_tensor(list(special_ids), dtype=input_ids.dtype, device=input_ids.device)
    allowed = ~torch.isin(input_ids, special)                                        # (B, L)
    u = torch.rand(input_ids.shape, generator=generator, device="cpu" if generator is not None else input_ids.device)
    positions = (u.to(input_ids.device) < rate) & allowed                            # (B, L) bool
    return input_ids.masked_fill(positions, int(mask_token_id)), positions


class MaskedLM(nn.Module):
    """A BERT encoder + BERT's MLM head with the output projection tied to the word embeddings.

    ``logits = LayerNorm(GELU(W h + c)) · E^T + b``: ``E`` (V, H) is the encoder's word-embedding matrix (shared,
    not copied), ``b`` a per-token bias. Keep ``E`` frozen (``encoder.get_input_embeddings().weight``) to share it
    with a teacher and student that were fine-tuned with frozen word embeddings, as the book's MiniLM models are:
    then a generator's soft token ``p`` (a distribution over the vocabulary) means the same input vector ``p · E``
    to all three models.

    Args:
        encoder: a ``transformers`` BERT-like model (``small_bert``, ``student_from_teacher(minilm, ...)``).
        mask_token_id: the id of ``[MASK]`` in the encoder's tokenizer.
        special_ids: ids never to be predicted as fills (:func:`special_token_ids`); stored for generators.
    """

    def __init__(self, encoder: nn.Module, mask_token_id: int, special_ids=()):
        super().__init__()
        config = getattr(encoder, "config", None)
        if config is None or not hasattr(encoder, "get_input_embeddings"):
            raise TypeError(f"encoder must be a transformers model with a config, got {type(encoder).__name__}")
        vocab, hidden = encoder.get_input_embeddings().weight.shape
        if isinstance(mask_token_id, bool) or not isinstance(mask_token_id, int) or not 0 <= mask_token_id < vocab:
            raise ValueError(f"mask_token_id must be a token id in [0, {vocab}), got {mask_token_id!r}")
        self.encoder = encoder
        self.mask_token_id = mask_token_id
        self.special_ids = tuple(int(i) for i in special_ids)
        self.pad_token_id = config.pad_token_id if config.pad_token_id is not None else 0
        self.transform = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(),
                                       nn.LayerNorm(hidden, eps=getattr(config, "layer_norm_eps", 1e-12)))
        self.bias = nn.Parameter(torch.zeros(vocab))

    @property
    def vocab_size(self) -> int:
        return self.bias.shape[0]

    def get_input_embeddings(self) -> nn.Embedding:
        """The word-embedding table, which is also the output projection."""
        return self.encoder.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = (input_ids != self.pad_token_id).long()                  # (B, L)
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, H)
        if positions is not None:
            if positions.shape != input_ids.shape or positions.dtype != torch.bool:
                raise ValueError(f"positions must be a bool tensor of input_ids' shape {tuple(input_ids.shape)}, "
                                 f"got {positions.dtype} {tuple(positions.shape)}")
            h = h[positions]                                                         # (n, H)
        h = self.transform(h)                                                        # (..., H)
        return h @ self.get_input_embeddings().weight.T + self.bias                  # (B, L, V) or (n, V)


def load_masked_lm(name_or_path: str | os.PathLike, eval_mode: bool = True, timeout_s: float = 3.0):
    """A Hugging Face masked LM (``AutoModelForMaskedLM``, e.g. ``"distilroberta-base"``, MATE-KD's generator) with
    its tokenizer attached as ``model.tokenizer``; offline it loads a local folder or the Hugging Face cache, and
    fails at once with what to do when neither has it (see :func:`kdedu.models.load_encoder`)."""
    from kdedu.models.transformer import load_encoder

    model, tokenizer = load_encoder(name_or_path, attn_implementation="eager", eval_mode=eval_mode,
                                    timeout_s=timeout_s, auto_class="AutoModelForMaskedLM")
    model.tokenizer = tokenizer
    return model
