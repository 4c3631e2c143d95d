"""Patient KD (Sun et al. 2019): KD on the logits + normalised [CLS] MSE over mapped intermediate layers."""

from __future__ import annotations

import torch
from torch import nn

from kdedu import losses
from kdedu._validate import check_nonnegative, check_temperature, check_unit_interval
from kdedu.methods.kd import cross_entropy
from kdedu.methods.teacher_outputs import TransformerDistiller, skip_map
from kdedu.outputs import num_layers


class PKD(TransformerDistiller):
    """PKD: ``{"ce": (1 - alpha) CE, "kd": alpha T^2 KL, "hidden": hidden_weight L_PT}`` (Sun et al. 2019, eq. 4,
    whose ``beta`` is our ``hidden_weight``).

    ``L_PT`` is :func:`kdedu.losses.pkd_loss` on the [CLS] vectors of the layers in ``layer_map``
    ``{student_layer: teacher_layer}`` (hidden-state indices: 1 = the first block's output). The default
    is PKD-Skip (:func:`skip_map`): every (N/M)-th teacher layer, the last layer left to the KD term,
    e.g. ``{1: 2, 2: 4}`` for 6 -> 3 layers; ``skip_map(3, 6, last=True)`` adds ``3: 6``. PKD-Last maps to
    the top teacher layers. The paper's ranges: ``T`` in {5, 10, 20}, ``alpha`` in [0.2, 0.7],
    ``hidden_weight`` in [10, 500] (the normalised states make ``L_PT`` small).
    Student and teacher: kdedu ``SequenceClassifier`` or Hugging Face ``...ForSequenceClassification`` models.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, num_teacher_layers: int | None = None,
                 layer_map: dict[int, int] | None = None, alpha: float = 0.5, temperature: float = 5.0,
                 hidden_weight: float = 100.0):
        super().__init__(student, teacher)
        self.alpha = check_unit_interval("alpha", alpha)
        self.temperature = check_temperature(temperature)
        self.hidden_weight = check_nonnegative("hidden_weight", hidden_weight)
        if layer_map is None:
            if num_teacher_layers is None and teacher is None:
                raise ValueError("give layer_map, or num_teacher_layers (or a teacher) for the default skip map")
            n = num_teacher_layers if num_teacher_layers is not None else num_layers(teacher, "teacher")
            layer_map = skip_map(self.num_student_layers, n)
        if not isinstance(layer_map, dict) or not layer_map:
            raise ValueError(f"layer_map must be a non-empty dict {{student_layer: teacher_layer}}, got {layer_map!r}")
        self.layer_map = dict(layer_map)
        self.teacher_needs = {"hidden_layers": tuple(self.layer_map.values()), "cls_only": True}

    def forward(self, x, y: torch.Tensor) -> dict[str, torch.Tensor]:
        b = self._batch(x)
        out = self._student(b)
        s_cls = [out.hidden_states[j][:, 0] for j in self.layer_map]             # each (B, H)
        t_cls = [b.cls_at(k) for k in self.layer_map.values()]                   # each (B, H)
        pairs = {i: i for i in range(len(s_cls))}
        return {"ce": (1 - self.alpha) * cross_entropy(out.logits, y),
                "kd": self.alpha * losses.kd_loss(out.logits, b.logits, self.temperature),
                "hidden": self.hidden_weight * losses.pkd_loss(s_cls, t_cls, pairs)}
