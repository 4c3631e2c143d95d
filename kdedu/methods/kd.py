"""The first two methods: training on labels alone, and Hinton's knowledge distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdedu import losses
from kdedu.train import Distiller


class Supervised(Distiller):
    """No teacher: cross-entropy on the hard labels. ``{"ce": CE(student(x), y)}``."""

    def __init__(self, student: nn.Module):
        super().__init__(student)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"ce": F.cross_entropy(self.student(x), y)}


class KD(Distiller):
    """Vanilla KD (Hinton et al. 2015): ``(1 - alpha) CE(z_s, y) + alpha T^2 KL(p_t(T) || p_s(T))``.

    The two terms are returned separately (``"ce"``, ``"kd"``), already weighted, so their sum is
    :func:`kdedu.losses.distillation_loss`. ``alpha=1`` trains on the teacher alone (no labels);
    the teacher can be any frozen module, including a trained copy of the student (born-again, Tf-KD self).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, alpha: float = 0.5, temperature: float = 4.0):
        if teacher is None:
            raise TypeError("teacher must be a torch.nn.Module; for no teacher use Supervised")
        super().__init__(student, teacher)
        losses._check_unit_interval("alpha", alpha)
        losses._check_temperature(temperature)
        self.alpha, self.temperature = float(alpha), float(temperature)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        z_s = self.student(x)
        z_t = self.teacher_logits(x)
        return {"ce": (1 - self.alpha) * F.cross_entropy(z_s, y),
                "kd": self.alpha * losses.kd_loss(z_s, z_t, self.temperature)}
