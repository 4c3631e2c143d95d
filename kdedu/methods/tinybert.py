"""TinyBERT (Jiao et al. 2020): embedding, attention, hidden-state and prediction-layer distillation."""

from __future__ import annotations

import torch
from torch import nn

from kdedu import losses
from kdedu._validate import check_nonnegative, check_temperature, check_unit_interval
from kdedu.methods.kd import cross_entropy
from kdedu.methods.teacher_outputs import TransformerDistiller, uniform_map
from kdedu.outputs import hidden_size, num_layers

STAGES = ("both", "intermediate", "prediction")


class TinyBERTKD(TransformerDistiller):
    """TinyBERT: ``{"embedding", "attention", "hidden"}`` (intermediate layers) and ``{"ce", "kd"}`` (prediction).

    With the uniform map ``g(m) = m N / M`` (:func:`uniform_map`; ``layer_map`` overrides it):

    * ``"embedding"`` = ``embedding_weight`` MSE(E^S W_e, E^T)  (:func:`kdedu.losses.tinybert_embedding_loss`,
      eq. 10);
    * ``"attention"`` = ``attention_weight`` sum_m MSE(A^S_m, A^T_g(m)) over the attention maps (eq. 7-8;
      the post-softmax maps that HF models return, where the paper fits the unnormalised scores QK^T/sqrt(d);
      same number of heads needed);
    * ``"hidden"`` = ``hidden_weight`` sum_m MSE(H^S_m W_h, H^T_g(m))  (eq. 9);
    * ``"kd"`` = ``alpha`` :func:`kdedu.losses.kd_loss` at ``T`` (eq. 11 is the soft cross-entropy; the KL
      differs by the teacher's entropy, a constant, and by the T^2 factor, which is 1 at the paper's
      ``T = 1``), and ``"ce"`` = ``(1 - alpha)`` CE on the labels, absent at the paper's ``alpha = 1``.

    ``W_e`` (``self.proj_embd``) and ``W_h`` (``self.proj_hidden``, shared by all layers as in the paper)
    are ``nn.Linear(d_student, d_teacher)`` owned by the distiller, so :func:`kdedu.train.fit` trains them
    with the student. TinyBERT trains in two stages, intermediate layers first, then the prediction layer:
    run ``fit`` with ``stage="intermediate"`` then with ``stage="prediction"``, or once with ``"both"``.
    The losses include padding positions, like TinyBERT's code.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, teacher_width: int | None = None,
                 num_teacher_layers: int | None = None, layer_map: dict[int, int] | None = None,
                 temperature: float = 1.0, alpha: float = 1.0, embedding_weight: float = 1.0,
                 attention_weight: float = 1.0, hidden_weight: float = 1.0, stage: str = "both"):
        super().__init__(student, teacher)
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        teacher_width = self._width(teacher, teacher_width, "teacher")
        if teacher is not None:
            num_teacher_layers = num_layers(teacher, "teacher")
        if layer_map is None and num_teacher_layers is None:
            raise ValueError("without a live teacher, give num_teacher_layers (or layer_map)")
        self.temperature = check_temperature(temperature)
        self.alpha = check_unit_interval("alpha", alpha)
        self.embedding_weight = check_nonnegative("embedding_weight", embedding_weight)
        self.attention_weight = check_nonnegative("attention_weight", attention_weight)
        self.hidden_weight = check_nonnegative("hidden_weight", hidden_weight)
        self.stage = stage
        self.layer_map = dict(layer_map) if layer_map is not None else uniform_map(self.num_student_layers,
                                                                                  num_teacher_layers)
        self.layer_map.setdefault(0, 0)
        d_s = hidden_size(student, "student")
        self.proj_embd = nn.Linear(d_s, teacher_width)                         # W_e
        self.proj_hidden = nn.Linear(d_s, teacher_width)                       # W_h
        self.blocks = {j: k for j, k in self.layer_map.items() if j > 0}       # student block -> teacher block
        intermediate = stage != "prediction"
        self.teacher_needs = {"hidden_layers": (0, *self.blocks.values()) if intermediate else (), "cls_only": False,
                              "attention_layers": tuple(self.blocks.values())
                              if intermediate and self.attention_weight > 0 else ()}

    def forward(self, x, y: torch.Tensor) -> dict[str, torch.Tensor]:
        b = self._batch(x)
        terms = {}
        if self.stage == "prediction":
            out = self._student(b)
        else:
            out = self._student(b, attentions=self.attention_weight > 0)
            hs = out.hidden_states                                             # M+1 of (B, L, d_s)
            terms["embedding"] = self.embedding_weight * losses.tinybert_embedding_loss(
                hs[0], b.hidden_at(0), self.proj_embd)
            if self.attention_weight > 0:
                terms["attention"] = self.attention_weight * losses.tinybert_attention_loss(
                    [out.attentions[j - 1] for j in self.blocks], [b.attention_at(k) for k in self.blocks.values()])
            terms["hidden"] = self.hidden_weight * losses.tinybert_hidden_loss(
                [hs[j] for j in self.blocks], [b.hidden_at(k) for k in self.blocks.values()], self.proj_hidden)
        if self.stage != "intermediate":
            if self.alpha < 1:
                terms["ce"] = (1 - self.alpha) * cross_entropy(out.logits, y)
            terms["kd"] = self.alpha * losses.kd_loss(out.logits, b.logits, self.temperature)
        return terms
