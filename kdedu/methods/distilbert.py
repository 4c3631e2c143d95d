"""DistilBERT's triple loss for a classifier (Sanh et al. 2019), reading precomputed teacher outputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdedu import losses
from kdedu.losses.layers import _check_weights
from kdedu.methods.teacher_outputs import TransformerDistiller


class DistilBERTKD(TransformerDistiller):
    """DistilBERT: ``{"kd": a_ce T^2 KL(p_t(T) || p_s(T)), "ce": a_mlm CE(z_s, y), "cos": a_cos L_cos}``.

    The sum is :func:`kdedu.losses.distilbert_loss` with the class labels in the hard-loss slot. The
    paper's hard loss is masked language modelling during *pre-training* distillation; here the student
    is distilled while fine-tuning a classifier, so the MLM term is omitted and the hard loss is the
    cross-entropy on the labels (the form DistilBERT's task-specific distillation takes).
    ``L_cos`` = :func:`kdedu.losses.cosine_hidden_loss` between the last hidden states of student
    and teacher over the non-padding tokens (same width needed: initialise the student with
    :func:`kdedu.models.student_from_teacher`). Defaults ``T = 2``, ``weights = (5, 2, 1)`` are the
    DistilBERT training command's.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, temperature: float = 2.0,
                 weights: tuple[float, float, float] = (5.0, 2.0, 1.0)):
        super().__init__(student, teacher)
        self.temperature = float(losses._check_temperature(temperature))
        self.weights = _check_weights(weights, 3)
        self.teacher_needs = {"hidden_layers": (-1,) if self.weights[2] > 0 else (), "cls_only": False}

    def forward(self, x, y: torch.Tensor) -> dict[str, torch.Tensor]:
        b = self._batch(x)
        a_ce, a_mlm, a_cos = self.weights
        out = self._student(b)
        terms = {"kd": a_ce * losses.kd_loss(out.logits, b.logits, self.temperature),
                 "ce": a_mlm * F.cross_entropy(out.logits, y)}
        if a_cos > 0:
            terms["cos"] = a_cos * losses.cosine_hidden_loss(out.hidden_states[-1], b.hidden_at(-1), b.attention_mask)
        return terms
