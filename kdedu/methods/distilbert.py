"""DistilBERT's triple loss for a classifier (Sanh et al. 2019), reading precomputed teacher outputs."""

from __future__ import annotations

import torch
from torch import nn

from kdedu import losses
from kdedu._validate import check_nonnegative, check_temperature, check_unit_interval
from kdedu.methods.kd import cross_entropy
from kdedu.methods.teacher_outputs import TransformerDistiller


class DistilBERTKD(TransformerDistiller):
    """DistilBERT: ``{"ce": (1 - alpha) CE(z_s, y), "kd": alpha T^2 KL(p_t(T) || p_s(T)),
    "cosine": cosine_weight L_cos}``.

    The paper's hard loss is masked language modelling during *pre-training* distillation; here the student
    is distilled while fine-tuning a classifier, so the hard loss is the cross-entropy on the labels (the form
    DistilBERT's task-specific distillation takes). ``L_cos`` = :func:`kdedu.losses.cosine_hidden_loss`
    between the last hidden states of student and teacher over the non-padding tokens (same width needed:
    initialise the student with :func:`kdedu.models.student_from_teacher`).

    DistilBERT's training command weights soft-target CE, MLM and cosine ``5 : 2 : 1``; the defaults
    ``alpha = 5/7``, ``cosine_weight = 1/7`` are that recipe divided by 7 (a constant factor on the loss,
    which Adam's updates do not feel), and ``temperature = 2`` is the command's.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, temperature: float = 2.0,
                 alpha: float = 5 / 7, cosine_weight: float = 1 / 7):
        super().__init__(student, teacher)
        self.temperature = check_temperature(temperature)
        self.alpha = check_unit_interval("alpha", alpha)
        self.cosine_weight = check_nonnegative("cosine_weight", cosine_weight)
        self.teacher_needs = {"hidden_layers": (-1,) if self.cosine_weight > 0 else (), "cls_only": False}

    def forward(self, x, y: torch.Tensor) -> dict[str, torch.Tensor]:
        b = self._batch(x)
        out = self._student(b)
        terms = {"ce": (1 - self.alpha) * cross_entropy(out.logits, y),
                 "kd": self.alpha * losses.kd_loss(out.logits, b.logits, self.temperature)}
        if self.cosine_weight > 0:
            terms["cosine"] = self.cosine_weight * losses.cosine_hidden_loss(out.hidden_states[-1], b.hidden_at(-1),
                                                                             b.attention_mask)
        return terms
