"""ALP-KD (Passban et al. 2021): each student layer attends over all teacher layers."""

from __future__ import annotations

import torch
from torch import nn

from kdedu import losses
from kdedu._validate import check_nonnegative, check_temperature, check_unit_interval
from kdedu.methods.kd import cross_entropy
from kdedu.methods.teacher_outputs import TransformerDistiller
from kdedu.outputs import num_layers


class ALPKD(TransformerDistiller):
    """ALP-KD: ``{"ce": (1 - alpha) CE, "kd": alpha T^2 KL, "hidden": hidden_weight L_ALP}``.

    The paper weights the three terms ``beta``, ``eta`` and ``lambda``; its ``beta = eta = 0.5`` is our
    ``alpha = 0.5``, and ``lambda`` is ``hidden_weight``. ``L_ALP`` is :func:`kdedu.losses.alp_loss` on the
    [CLS] vectors: every student layer ``j`` (1..M) matches ``c_j = sum_k alpha_jk h_T^k``, its per-example
    attention-weighted mix of *all* teacher layers 1..N, so no layer is skipped and no map is searched for.
    ``scale`` multiplies the dot products (the paper: 1; ``1/sqrt(H)`` softens nearly one-hot attention).
    Same widths needed. "KD" here is regular KD on the logits ("RKD" in the paper's tables, not relational KD).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, num_teacher_layers: int | None = None,
                 alpha: float = 0.5, temperature: float = 5.0, hidden_weight: float = 1.0, scale: float = 1.0):
        super().__init__(student, teacher)
        if teacher is not None:
            num_teacher_layers = num_layers(teacher, "teacher")
        if isinstance(num_teacher_layers, bool) or not isinstance(num_teacher_layers, int) or num_teacher_layers < 1:
            raise ValueError(f"give num_teacher_layers (a positive integer) or a live teacher, "
                             f"got {num_teacher_layers!r}")
        self.alpha = check_unit_interval("alpha", alpha)
        self.temperature = check_temperature(temperature)
        self.hidden_weight = check_nonnegative("hidden_weight", hidden_weight)
        self.scale = float(scale)
        self.teacher_needs = {"hidden_layers": tuple(range(1, num_teacher_layers + 1)), "cls_only": True}

    def forward(self, x, y: torch.Tensor) -> dict[str, torch.Tensor]:
        b = self._batch(x)
        out = self._student(b)
        s_cls = [h[:, 0] for h in out.hidden_states[1:]]                         # M of (B, H)
        t_cls = [b.cls_at(k) for k in self.teacher_needs["hidden_layers"]]       # N of (B, H)
        return {"ce": (1 - self.alpha) * cross_entropy(out.logits, y),
                "kd": self.alpha * losses.kd_loss(out.logits, b.logits, self.temperature),
                "hidden": self.hidden_weight * losses.alp_loss(s_cls, t_cls, self.scale)}
