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
    ``groups`` (one list of teacher layers 1..N per student layer) restricts each student layer's attention to its
    own bucket, the paper's NO (no overlap: the buckets partition the layers) and PO (partial overlap: neighbouring
    buckets share layers) configurations; ``None`` (the default) attends over all N layers, ALP-KD proper.
    Same widths needed. "KD" here is regular KD on the logits ("RKD" in the paper's tables, not relational KD).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, num_teacher_layers: int | None = None,
                 alpha: float = 0.5, temperature: float = 5.0, hidden_weight: float = 1.0, scale: float = 1.0,
                 groups: list[list[int]] | None = None):
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
        if groups is not None:
            if not isinstance(groups, (list, tuple)) or len(groups) != self.num_student_layers or not all(
                    isinstance(g, (list, tuple)) and g and all(
                        isinstance(k, int) and 1 <= k <= num_teacher_layers for k in g) for g in groups):
                raise ValueError(f"groups must hold one non-empty list of teacher layers 1..{num_teacher_layers} "
                                 f"per student layer ({self.num_student_layers}), got {groups!r}")
            groups = [list(g) for g in groups]
        self.groups = groups
        self.teacher_needs = {"hidden_layers": tuple(range(1, num_teacher_layers + 1)), "cls_only": True}

    def forward(self, x, y: torch.Tensor) -> dict[str, torch.Tensor]:
        b = self._batch(x)
        out = self._student(b)
        s_cls = [h[:, 0] for h in out.hidden_states[1:]]                         # M of (B, H)
        t_cls = [b.cls_at(k) for k in self.teacher_needs["hidden_layers"]]       # N of (B, H)
        return {"ce": (1 - self.alpha) * cross_entropy(out.logits, y),
                "kd": self.alpha * losses.kd_loss(out.logits, b.logits, self.temperature),
                "hidden": self.hidden_weight * self._layer_loss(s_cls, t_cls)}

    def _layer_loss(self, s_cls, t_cls):
        if self.groups is None:
            return losses.alp_loss(s_cls, t_cls, self.scale)
        return sum(losses.alp_loss([s_cls[j]], [t_cls[k - 1] for k in g], self.scale)      # bucket j only
                   for j, g in enumerate(self.groups))
