"""Combinatorial KD (Wu et al. 2020): each student layer learns from a combination of teacher layers."""

from __future__ import annotations

import torch
from torch import nn

from kdedu import losses
from kdedu._validate import check_nonnegative, check_temperature, check_unit_interval
from kdedu.methods.kd import cross_entropy
from kdedu.methods.teacher_outputs import TransformerDistiller
from kdedu.outputs import hidden_size, num_layers


def contiguous_groups(num_student: int, num_teacher: int) -> list[list[int]]:
    """Teacher layers 1..N cut into M contiguous groups, one per student layer (6 -> 3: [[1, 2], [3, 4], [5, 6]])."""
    if not 1 <= num_student <= num_teacher:
        raise ValueError(f"need 1 <= num_student <= num_teacher, got {num_student} and {num_teacher}")
    bounds = [round(i * num_teacher / num_student) for i in range(num_student + 1)]
    return [list(range(bounds[i] + 1, bounds[i + 1] + 1)) for i in range(num_student)]


class CKD(TransformerDistiller):
    """CKD: ``{"ce": (1 - alpha) CE, "kd": alpha T^2 KL, "hidden": hidden_weight L_CKD}``.

    ``L_CKD`` is :func:`kdedu.losses.ckd_loss` on the [CLS] vectors: student layer ``j`` (1..M) matches
    ``f_j`` of the teacher layers ``groups[j-1]`` (hidden-state indices 1..N; default
    :func:`contiguous_groups`, so no teacher layer is skipped). ``combine="mean"`` averages the group
    (same widths); ``combine="concat"`` maps the concatenation with a learned ``nn.Linear(r d_t, d_s)`` per
    student layer (``self.projections``, trained by :func:`kdedu.train.fit`), as in the paper.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, num_teacher_layers: int | None = None,
                 groups: list[list[int]] | None = None, combine: str = "mean", teacher_width: int | None = None,
                 alpha: float = 0.5, temperature: float = 5.0, hidden_weight: float = 1.0):
        super().__init__(student, teacher)
        self.alpha = check_unit_interval("alpha", alpha)
        self.temperature = check_temperature(temperature)
        self.hidden_weight = check_nonnegative("hidden_weight", hidden_weight)
        if teacher is not None:
            num_teacher_layers = num_layers(teacher, "teacher")
        if groups is None:
            if num_teacher_layers is None:
                raise ValueError("give groups, or num_teacher_layers (or a teacher) for contiguous groups")
            groups = contiguous_groups(self.num_student_layers, num_teacher_layers)
        if not isinstance(groups, (list, tuple)) or len(groups) != self.num_student_layers:
            raise ValueError(f"groups must hold one list of teacher layers per student layer "
                             f"({self.num_student_layers}), got {groups!r}")
        if combine not in ("mean", "concat"):
            raise ValueError(f"combine must be 'mean' or 'concat', got {combine!r}")
        self.groups, self.combine = [list(g) for g in groups], combine
        self.projections = None
        if combine == "concat":
            teacher_width = self._width(teacher, teacher_width, "teacher")
            d_s = hidden_size(student, "student")
            self.projections = nn.ModuleList(nn.Linear(len(g) * teacher_width, d_s) for g in self.groups)
        self.layers = sorted({k for g in self.groups for k in g})
        self.teacher_needs = {"hidden_layers": tuple(self.layers), "cls_only": True}

    def forward(self, x, y: torch.Tensor) -> dict[str, torch.Tensor]:
        b = self._batch(x)
        out = self._student(b)
        s_cls = [h[:, 0] for h in out.hidden_states[1:]]                       # M of (B, d_s)
        t_cls = [b.cls_at(k) for k in self.layers]                          # (B, d_t) each
        groups = [[self.layers.index(k) for k in g] for g in self.groups]      # positions in t_cls
        projections = list(self.projections) if self.projections is not None else None
        return {"ce": (1 - self.alpha) * cross_entropy(out.logits, y),
                "kd": self.alpha * losses.kd_loss(out.logits, b.logits, self.temperature),
                "hidden": self.hidden_weight * losses.ckd_loss(s_cls, t_cls, groups, self.combine, projections)}
