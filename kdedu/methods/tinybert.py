"""TinyBERT (Jiao et al. 2020): embedding, attention, hidden-state and prediction-layer distillation."""

from __future__ import annotations

import torch
from torch import nn

from kdedu import losses
from kdedu.losses.layers import _check_weights
from kdedu.methods.teacher_outputs import TransformerDistiller, uniform_map


class TinyBERTKD(TransformerDistiller):
    """TinyBERT: ``{"embd": w_e L_embd, "attn": w_a L_attn, "hidn": w_h L_hidn, "pred": w_p L_pred}``.

    With the uniform map ``g(m) = m N / M`` (:func:`uniform_map`; ``layer_map`` overrides it):

    * ``L_embd`` = MSE(E^S W_e, E^T)  (:func:`kdedu.losses.tinybert_embedding_loss`, eq. 10);
    * ``L_attn`` = sum_m MSE(A^S_m, A^T_g(m)) over the attention maps (eq. 7-8; softmax maps, same
      number of heads needed);
    * ``L_hidn`` = sum_m MSE(H^S_m W_h, H^T_g(m))  (eq. 9);
    * ``L_pred`` = :func:`kdedu.losses.kd_loss` at ``T`` (eq. 11 is the soft cross-entropy; the KL differs
      by the teacher's entropy, a constant, and by the T^2 factor, which is 1 at the paper's ``T = 1``).

    ``W_e`` (``self.proj_embd``) and ``W_h`` (``self.proj_hidden``, shared by all layers as in the paper)
    are ``nn.Linear(d_student, d_teacher)`` owned by the distiller, so :func:`kdedu.train.fit` trains them
    with the student. TinyBERT trains in two stages, intermediate layers first, then the prediction
    layer: run ``fit`` twice with ``weights=(1, 1, 1, 0)`` then ``(0, 0, 0, 1)``, or once with all four.
    The losses include padding positions, like TinyBERT's code.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, teacher_width: int | None = None,
                 num_teacher_layers: int | None = None, layer_map: dict[int, int] | None = None,
                 temperature: float = 1.0, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)):
        super().__init__(student, teacher)
        if teacher is not None:
            teacher_width = teacher.encoder.config.hidden_size
            num_teacher_layers = teacher.encoder.config.num_hidden_layers
        if teacher_width is None or (layer_map is None and num_teacher_layers is None):
            raise ValueError("without a live teacher, give teacher_width and num_teacher_layers (or layer_map)")
        self.temperature = float(losses._check_temperature(temperature))
        self.weights = _check_weights(weights, 4)
        self.layer_map = dict(layer_map) if layer_map is not None else uniform_map(self.num_student_layers,
                                                                                  num_teacher_layers)
        self.layer_map.setdefault(0, 0)
        d_s = student.encoder.config.hidden_size
        self.proj_embd = nn.Linear(d_s, teacher_width)                         # W_e
        self.proj_hidden = nn.Linear(d_s, teacher_width)                       # W_h
        self.blocks = {j: k for j, k in self.layer_map.items() if j > 0}       # student block -> teacher block
        self.teacher_needs = {"hidden_layers": (0, *self.blocks.values()), "cls_only": False,
                              "attention_layers": tuple(self.blocks.values()) if self.weights[1] > 0 else ()}

    def forward(self, x, y: torch.Tensor) -> dict[str, torch.Tensor]:
        b = self._batch(x)
        w_e, w_a, w_h, w_p = self.weights
        out = self._student(b, attentions=w_a > 0)
        hs = out.hidden_states                                                 # M+1 of (B, L, d_s)
        terms = {"embd": w_e * losses.tinybert_embedding_loss(hs[0], b.hidden_at(0), self.proj_embd)}
        if w_a > 0:
            terms["attn"] = w_a * losses.tinybert_attention_loss([out.attentions[j - 1] for j in self.blocks],
                                                                 [b.attention_at(k) for k in self.blocks.values()])
        terms["hidn"] = w_h * losses.tinybert_hidden_loss([hs[j] for j in self.blocks],
                                                          [b.hidden_at(k) for k in self.blocks.values()],
                                                          self.proj_hidden)
        terms["pred"] = w_p * losses.kd_loss(out.logits, b.logits, self.temperature)
        return terms
