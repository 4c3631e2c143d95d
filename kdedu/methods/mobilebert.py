"""MobileBERT's progressive knowledge transfer (Sun et al. 2020, "MobileBERT: a Compact Task-Agnostic BERT for
Resource-Limited Devices"; seed deck 000, "Alternatives": "[MobileBERT] Progressive Knowledge Transfer").

MobileBERT trains its student's layers one at a time (*progressive* knowledge transfer): in stage ``l`` student layer
``l`` learns to match its teacher layer (feature maps and attention maps) while the layers below are frozen; a last
stage distils the predictions. :class:`LayerTransfer` is one such layer stage (``layer=l``), or, with ``layer=None``,
all layers' terms trained together before the same last stage (MobileBERT's *joint* knowledge transfer, which it
compares with the progressive one). The procedure is a loop a reader can follow::

    for l in range(1, M + 1):
        fit(LayerTransfer(student, layer_map=g, layer=l), store, num_epochs=k)
    fit(<a prediction-layer KD method>, store, num_epochs=p)

Two differences from MobileBERT, both to use what a Hugging Face model returns: the attention term is the mean squared
error of the post-softmax maps (:func:`kdedu.losses.tinybert_attention_loss`; MobileBERT uses the KL divergence, which
the student's maps after attention dropout, with zeroed entries, would make infinite), and student and teacher must have
the same width (MobileBERT's bottlenecks make them equal; no projection here).
"""

from __future__ import annotations

import torch
from torch import nn

from kdedu import losses
from kdedu._validate import check_nonnegative
from kdedu.methods.teacher_outputs import TransformerDistiller
from kdedu.models.transformer import _bert_of
from kdedu.outputs import hidden_size, num_layers

__all__ = ["LayerTransfer"]


def _detach(output):
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, tuple):
        return tuple(_detach(o) for o in output)
    return output


class LayerTransfer(TransformerDistiller):
    """MobileBERT's layer-wise transfer: ``{"hidden", "attention"}`` for one student layer or for all of them.

    With ``layer_map`` ``{j: g(j)}`` (student block ``j`` -> teacher block ``g(j)``, both 1-based):

    * ``"hidden"`` = ``hidden_weight`` sum_j MSE(H^S_j, H^T_g(j))  (MobileBERT's feature-map transfer);
    * ``"attention"`` = ``attention_weight`` sum_j MSE(A^S_j, A^T_g(j)) over the post-softmax maps (attention
      transfer; MobileBERT uses KL, see the module docstring); absent when ``attention_weight`` is 0.

    ``layer=l`` (1-based, a key of ``layer_map``) keeps only ``j = l`` and trains only student block ``l``:
    :meth:`trainable_parameters` yields that block's parameters alone, and the gradient is stopped at the block's
    input, so the embeddings and the blocks below get none ("the layers below are frozen") and the blocks above are
    not in the loss. ``layer=None`` sums all mapped layers and trains every parameter that requires grad. Neither
    has a prediction term: follow the layer stages with a KD method on the logits.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, layer_map: dict[int, int] | None = None,
                 layer: int | None = None, hidden_weight: float = 1.0, attention_weight: float = 1.0):
        super().__init__(student, teacher)
        m = self.num_student_layers
        if not isinstance(layer_map, dict) or not layer_map:
            raise ValueError(f"layer_map must be a non-empty dict {{student block: teacher block}}, got {layer_map!r}")
        for j, k in layer_map.items():
            if any(isinstance(v, bool) or not isinstance(v, int) for v in (j, k)) or not 1 <= j <= m or k < 1:
                raise ValueError(f"layer_map must map student blocks 1..{m} to teacher blocks >= 1, got {layer_map!r}")
            if teacher is not None and k > num_layers(teacher, "teacher"):
                raise ValueError(f"layer_map: teacher block {k} is out of range for a teacher with "
                                 f"{num_layers(teacher, 'teacher')} blocks")
        if layer is not None and (isinstance(layer, bool) or layer not in layer_map):
            raise ValueError(f"layer must be None (all layers) or a student block of layer_map {sorted(layer_map)}, "
                             f"got {layer!r}")
        if teacher is not None and hidden_size(teacher, "teacher") != hidden_size(student, "student"):
            raise ValueError(f"student and teacher must have the same hidden size, got "
                             f"{hidden_size(student, 'student')} and {hidden_size(teacher, 'teacher')}")
        self.hidden_weight = check_nonnegative("hidden_weight", hidden_weight)
        self.attention_weight = check_nonnegative("attention_weight", attention_weight)
        self.layer = layer
        self.blocks = {layer: layer_map[layer]} if layer is not None else dict(sorted(layer_map.items()))
        self.teacher_needs = {"hidden_layers": tuple(self.blocks.values()), "cls_only": False,
                              "attention_layers": tuple(self.blocks.values()) if self.attention_weight > 0 else ()}

    def _block(self, j: int) -> nn.Module:
        return _bert_of(self.student).encoder.layer[j - 1]

    def trainable_parameters(self):
        if self.layer is None:
            return super().trainable_parameters()
        return (p for p in self._block(self.layer).parameters() if p.requires_grad)

    def forward(self, x, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        b = self._batch(x)
        handle = None
        if self.layer is not None:  # stop the gradient at the input of block `layer`
            bert = _bert_of(self.student)
            below = bert.embeddings if self.layer == 1 else bert.encoder.layer[self.layer - 2]
            if below is self._block(self.layer):
                raise ValueError("layer: the block below is the same module (shared layers): it cannot be frozen "
                                 "separately")
            handle = below.register_forward_hook(lambda module, inputs, output: _detach(output))
        try:
            out = self._student(b, attentions=self.attention_weight > 0)
        finally:
            if handle is not None:
                handle.remove()
        hs = out.hidden_states                                                  # M+1 of (B, L, H)
        terms = {"hidden": self.hidden_weight * losses.tinybert_hidden_loss(
            [hs[j] for j in self.blocks], [b.hidden_at(k) for k in self.blocks.values()])}
        if self.attention_weight > 0:
            terms["attention"] = self.attention_weight * losses.tinybert_attention_loss(
                [out.attentions[j - 1] for j in self.blocks], [b.attention_at(k) for k in self.blocks.values()])
        return terms
