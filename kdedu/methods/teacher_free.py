"""KD seen as label smoothing, and KD without a teacher (Yuan et al. 2020, "Revisiting KD via LSR").

Yuan et al. read KD as a *learned* label smoothing: replace the uniform distribution of label
smoothing by the teacher's soft targets and you get the KD loss. Two teacher-free variants follow:

* **Tf-KD self** ("self-teacher"): train the student normally, freeze a copy, and distill the
  copy into a fresh student. That is :class:`kdedu.methods.KD` with ``teacher = trained copy``;
  :func:`self_teacher` makes the copy.
* **Tf-KD reg** ("virtual teacher"): a hand-made teacher that puts ``a`` on the true class and
  spreads ``1 - a`` over the others: :class:`VirtualTeacherKD`, loss
  :func:`kdedu.losses.virtual_teacher_loss`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from kdedu import losses
from kdedu._validate import check_temperature, check_unit_interval
from kdedu.outputs import run
from kdedu.train import Distiller


class LabelSmoothing(Distiller):
    """Cross-entropy against ``(1 - epsilon) one_hot(y) + epsilon / C``: :func:`kdedu.losses.label_smoothing_loss`."""

    def __init__(self, student: nn.Module, epsilon: float = 0.1):
        super().__init__(student)
        self.epsilon = check_unit_interval("epsilon", epsilon)

    def forward(self, x, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"ls": losses.label_smoothing_loss(run(self.student, x).require_logits("the student"), y,
                                                   self.epsilon)}


class VirtualTeacherKD(Distiller):
    """Teacher-free KD with the virtual teacher (Tf-KD reg): :func:`kdedu.losses.virtual_teacher_loss`."""

    def __init__(self, student: nn.Module, alpha: float = 0.5, temperature: float = 1.0, correct_prob: float = 0.9):
        super().__init__(student)
        self.alpha = check_unit_interval("alpha", alpha)
        self.temperature = check_temperature(temperature)
        self.correct_prob = check_unit_interval("correct_prob", correct_prob)

    def forward(self, x, y: torch.Tensor) -> dict[str, torch.Tensor]:
        z_s = run(self.student, x).require_logits("the student")
        return {"tfkd": losses.virtual_teacher_loss(z_s, y, self.alpha, self.temperature, self.correct_prob)}


def self_teacher(trained_student: nn.Module) -> nn.Module:
    """A frozen copy of a trained student, to serve as its own teacher (Tf-KD self)."""
    teacher = copy.deepcopy(trained_student).eval()
    return teacher.requires_grad_(False)
