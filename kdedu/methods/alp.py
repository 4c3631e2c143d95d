"""ALP-KD (Passban et al. 2021): each student layer attends over all teacher layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdedu import losses
from kdedu.methods.teacher_outputs import TransformerDistiller


class ALPKD(TransformerDistiller):
    """ALP-KD: ``{"ce": beta CE, "kd": eta T^2 KL, "alp": lam L_ALP}`` (the paper's beta, eta, lambda).

    ``L_ALP`` is :func:`kdedu.losses.alp_loss` on the [CLS] vectors: every student layer ``j`` (1..M)
    matches ``c_j = sum_k alpha_jk h_T^k``, its per-example attention-weighted mix of *all* teacher layers
    1..N, so no layer is skipped and no map is searched for. ``scale`` multiplies the dot products
    (the paper: 1; ``1/sqrt(H)`` softens nearly one-hot attention). Same widths needed. "KD" here is
    regular KD on the logits ("RKD" in the paper's tables, not relational KD).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, num_teacher_layers: int | None = None,
                 beta: float = 0.5, eta: float = 0.5, lam: float = 1.0, temperature: float = 5.0,
                 scale: float = 1.0):
        super().__init__(student, teacher)
        if teacher is not None:
            num_teacher_layers = teacher.encoder.config.num_hidden_layers
        if isinstance(num_teacher_layers, bool) or not isinstance(num_teacher_layers, int) or num_teacher_layers < 1:
            raise ValueError(f"give num_teacher_layers (a positive integer) or a live teacher, "
                             f"got {num_teacher_layers!r}")
        for name, v in (("beta", beta), ("eta", eta), ("lam", lam)):
            if not v >= 0:
                raise ValueError(f"{name} must be >= 0, got {v!r}")
        self.temperature = float(losses._check_temperature(temperature))
        self.beta, self.eta, self.lam, self.scale = float(beta), float(eta), float(lam), float(scale)
        self.teacher_needs = {"hidden_layers": tuple(range(1, num_teacher_layers + 1)), "cls_only": True}

    def forward(self, x, y: torch.Tensor) -> dict[str, torch.Tensor]:
        b = self._batch(x)
        out = self._student(b)
        s_cls = [h[:, 0] for h in out.hidden_states[1:]]                       # M of (B, H)
        t_cls = [b.cls_at(k) for k in self.teacher_needs["hidden_layers"]]  # N of (B, H)
        return {"ce": self.beta * F.cross_entropy(out.logits, y),
                "kd": self.eta * losses.kd_loss(out.logits, b.logits, self.temperature),
                "alp": self.lam * losses.alp_loss(s_cls, t_cls, self.scale)}
