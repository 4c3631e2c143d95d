"""Masked language modelling (BERT's pre-training task) as a method for :func:`kdedu.train.fit`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdedu.models.mlm import MaskedLM, mask_tokens
from kdedu.outputs import attention_mask_of, input_ids_of
from kdedu.train import Distiller


class MaskedLMTraining(Distiller):
    """Train a :class:`~kdedu.models.MaskedLM` to fill masks: ``{"mlm": CE}``.

    Each batch is masked afresh (dynamic masking, as RoBERTa does): every real token is replaced by ``[MASK]``
    with probability ``rate`` (:func:`kdedu.models.mlm.mask_tokens`, torch's global RNG, which ``fit`` seeds), and
    the loss is the mean cross-entropy of the original tokens at the masked positions; the vocabulary projection
    runs at those positions only. Batches are ``(input_ids, anything)`` pairs, e.g. from
    :func:`kdedu.data.text_loader` (the labels are ignored) or dicts with ``input_ids``. There is no teacher: the
    model is the distiller's ``student``.
    """

    def __init__(self, model: MaskedLM, rate: float = 0.15):
        if not isinstance(model, MaskedLM):
            raise TypeError(f"model must be a kdedu.models.MaskedLM, got {type(model).__name__}")
        super().__init__(model)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < rate <= 1.0:
            raise ValueError(f"rate must be in (0, 1], got {rate!r}")
        self.rate = float(rate)

    def forward(self, x, y=None) -> dict[str, torch.Tensor]:
        ids = input_ids_of(x)
        if ids is None:
            raise TypeError(f"MaskedLMTraining needs token ids: (input_ids, y) batches or dicts with 'input_ids', got "
                            f"{type(x).__name__}")
        model = self.student
        mask = attention_mask_of(x, model)
        masked, positions = mask_tokens(ids, model.mask_token_id, model.special_ids + (model.pad_token_id,), self.rate)
        logits = model(masked, mask, positions=positions)                           # (n, V)
        if logits.shape[0] == 0:                                                    # no token drawn in this batch
            return {"mlm": logits.sum()}                                            # 0, with a zero gradient
        return {"mlm": F.cross_entropy(logits, ids[positions])}


@torch.no_grad()
def fill_in_accuracy(model: MaskedLM, loader, rate: float, majority_token: int | None = None, seed: int = 0) -> dict:
    """How well ``model`` fills masks on ``loader``'s sentences, ``rate`` of their tokens masked with a fixed ``seed``.

    Returns ``{"mlm_acc", "mlm_loss", "majority_acc"}``: the share of masked tokens predicted exactly, their mean
    cross-entropy, and (to compare) the share equal to ``majority_token`` (e.g. the most frequent training token;
    0 when None)."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    hits = base = loss = n = 0
    for ids, _ in loader:
        masked, pos = mask_tokens(ids, model.mask_token_id, model.special_ids, rate, generator=g)
        logits, target = model(masked, positions=pos), ids[pos]                  # (n, V), (n,)
        hits += (logits.argmax(-1) == target).sum().item()
        base += (target == majority_token).sum().item() if majority_token is not None else 0
        loss += F.cross_entropy(logits, target, reduction="sum").item()
        n += len(target)
    return {"mlm_acc": hits / max(n, 1), "mlm_loss": loss / max(n, 1), "majority_acc": base / max(n, 1)}
