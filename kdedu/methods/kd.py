"""The first two methods: training on labels alone, and Hinton's knowledge distillation.

Both work with any model and batch that :mod:`kdedu.outputs` understands: a classifier on ``(x, y)``
batches, a Hugging Face classifier on dict batches, or a language model on padded token batches, where
labels equal to ``-100`` (Hugging Face's ``ignore_index``) are skipped.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from kdedu import losses
from kdedu._validate import check_temperature, check_unit_interval
from kdedu.outputs import attention_mask_of, run
from kdedu.train import IGNORE_INDEX, Distiller


def keep_rows(labels: torch.Tensor | None, attention_mask: torch.Tensor | None, causal_lm: bool = False,
              rows_shape: tuple | None = None):
    """Which rows a loss counts: ``(labels, keep)``, labels shifted for a causal LM.

    For a causal LM (``causal_lm=True``) position ``i`` predicts token ``i + 1``: the labels and the attention
    mask lose their first position, the usual one-position shift. ``keep`` (bool) is ``labels != -100`` and,
    where the mask has the rows' shape (``rows_shape``, default the labels' shape), also the attention mask;
    with no labels it is the attention mask alone, or None (every row).
    """
    if causal_lm:
        labels = labels[:, 1:] if labels is not None else None                   # (B, L-1)
        attention_mask = attention_mask[:, 1:] if attention_mask is not None else None
    keep = labels != IGNORE_INDEX if labels is not None else None
    shape = rows_shape if rows_shape is not None else (tuple(keep.shape) if keep is not None else None)
    if attention_mask is not None and (shape is None or tuple(attention_mask.shape) == tuple(shape)):
        keep = attention_mask.bool() if keep is None else keep & attention_mask.bool()
    return labels, keep


def token_rows(logits: torch.Tensor, labels: torch.Tensor | None, inputs=None, causal_lm: bool = False,
               model: nn.Module | None = None):
    """Line up logits and labels row by row, and say which rows count (:func:`keep_rows`).

    Returns ``(logits, labels, keep)``; for a causal LM the logits lose their last position. The attention mask
    counts for token-level logits only (its shape must be the rows'). For an encoder-decoder batch (one with
    ``decoder_input_ids``) the rows are target positions: the source's ``attention_mask`` says nothing about
    them, so only ``decoder_attention_mask`` (if given) and the labels decide.
    """
    if isinstance(inputs, Mapping) and inputs.get("decoder_input_ids") is not None:
        mask = inputs.get("decoder_attention_mask")
    else:
        mask = attention_mask_of(inputs, model) if inputs is not None else None
    if causal_lm:
        if logits.dim() != 3:
            raise ValueError(f"a causal LM's logits must be (B, L, V), got {tuple(logits.shape)}")
        logits = logits[:, :-1]                                                  # (B, L-1, V)
    labels, keep = keep_rows(labels, mask, causal_lm, tuple(logits.shape[:-1]))
    return logits, labels, keep


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over the rows in ``keep`` (all rows if None): ``[..., C]`` logits, ``[...]`` labels.
    0 (with a zero gradient) when no row is kept."""
    c = logits.shape[-1]
    if keep is None:
        return F.cross_entropy(logits.reshape(-1, c), labels.reshape(-1))
    safe = torch.where(keep, labels, torch.zeros_like(labels))                   # -100 is no class index
    per_row = F.cross_entropy(logits.reshape(-1, c), safe.reshape(-1), reduction="none")
    per_row = torch.where(keep.reshape(-1), per_row, torch.zeros_like(per_row))
    return per_row.sum() / keep.sum().clamp(min=1)


class Supervised(Distiller):
    """No teacher: cross-entropy on the hard labels, ``{"ce": CE(student(x), y)}`` (rows labelled -100
    are skipped; ``causal_lm=True`` shifts the labels by one position)."""

    def __init__(self, student: nn.Module, causal_lm: bool = False):
        super().__init__(student)
        self.causal_lm = bool(causal_lm)

    def forward(self, x, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if y is None:
            raise ValueError("Supervised needs labels: the batch has none (no y, no 'labels' entry)")
        z = run(self.student, x).require_logits("the student")
        z, y, keep = token_rows(z, y, x, self.causal_lm, self.student)
        return {"ce": cross_entropy(z, y, keep)}


class KD(Distiller):
    """Vanilla KD (Hinton et al. 2015): ``(1 - alpha) CE(z_s, y) + alpha T^2 KL(p_t(T) || p_s(T))``.

    The two terms are returned separately (``"ce"``, ``"kd"``), already weighted, so their sum is
    :func:`kdedu.losses.distillation_loss` (rows labelled ``-100`` skipped in both). ``alpha=1`` trains on the
    teacher alone, and then needs no labels: without them there is no ``"ce"`` term, and for token batches the
    attention mask says which rows count.
    The teacher can be any frozen module, including a trained copy of the student (born-again, Tf-KD self).
    ``causal_lm=True``: logits are ``(B, L, V)`` and position ``i`` is scored against token ``i + 1``.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, alpha: float = 0.5, temperature: float = 4.0,
                 causal_lm: bool = False):
        if teacher is None:
            raise TypeError("teacher must be a torch.nn.Module; for no teacher use Supervised")
        super().__init__(student, teacher)
        self.alpha = check_unit_interval("alpha", alpha)
        self.temperature = check_temperature(temperature)
        self.causal_lm = bool(causal_lm)

    def forward(self, x, y: torch.Tensor | None) -> dict[str, torch.Tensor]:
        if y is None and self.alpha < 1:
            raise ValueError(f"KD with alpha={self.alpha} < 1 needs labels for its cross-entropy term; the batch "
                             f"has none (use alpha=1 to distil from the teacher alone)")
        z_s = run(self.student, x).require_logits("the student")
        z_t = self.teacher_logits(x)
        if z_s.shape != z_t.shape:
            raise ValueError(f"the student's logits {tuple(z_s.shape)} and the teacher's {tuple(z_t.shape)} differ "
                             f"in shape (different vocabularies or class counts?)")
        z_s, y, keep = token_rows(z_s, y, x, self.causal_lm, self.student)
        z_t = z_t[:, :-1] if self.causal_lm else z_t
        terms = {"ce": (1 - self.alpha) * cross_entropy(z_s, y, keep)} if y is not None else {}
        terms["kd"] = self.alpha * losses.kd_loss(z_s, z_t, self.temperature, mask=keep)
        return terms
