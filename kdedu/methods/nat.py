"""Training a non-autoregressive model (:class:`kdedu.models.NAT`): token cross-entropy plus a length loss.

A NAT is trained like Gu et al. (2018) without their fertility model: cross-entropy on every target token,
all positions predicted in parallel from the source (the decoder is told the true length while training),
plus the cross-entropy of the length classifier. Whether the targets are the raw references or a
teacher's beam outputs (:meth:`kdedu.methods.SeqKD.transfer_set`) is the whole experiment of Zhou et al.
(2020): NAT on raw multimodal data mixes translations; on distilled data it does not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdedu._validate import check_nonnegative
from kdedu.methods.kd import cross_entropy
from kdedu.train import IGNORE_INDEX, Distiller

__all__ = ["NATLoss"]


class NATLoss(Distiller):
    """``{"ce": CE over the target tokens, "length": length_weight * CE(length logits, true length)}``; the
    true length of a row is its number of labels that are not ``-100`` (the words + EOS)."""

    def __init__(self, student: nn.Module, length_weight: float = 0.1):
        super().__init__(student)
        self.length_weight = check_nonnegative("length_weight", length_weight)

    def forward(self, x, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if y is None or not isinstance(x, dict):
            raise ValueError("NATLoss needs dict batches with labels (kdedu.data.translation_loader)")
        out = self.student(**x)
        keep = y != IGNORE_INDEX                                                  # (B, T)
        if out.logits.shape[:-1] != y.shape:
            raise ValueError(f"the NAT's logits {tuple(out.logits.shape)} do not line up with the labels "
                             f"{tuple(y.shape)}: pass decoder_attention_mask of the labels' width")
        lengths = keep.sum(1)                                                     # (B,)
        return {"ce": cross_entropy(out.logits, y, keep),
                "length": self.length_weight * F.cross_entropy(out.length_logits, lengths)}
