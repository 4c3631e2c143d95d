"""Every distillation objective in kdedu, as a pure function of tensors.

* :mod:`kdedu.losses.logits`: losses on output logits (Hinton's KD, logit regression, label smoothing,
  teacher-free KD, Annealing KD);
* :mod:`kdedu.losses.divergences`: other divergences on logits (reverse KL, GKD's generalized JSD,
  top-k KD);
* :mod:`kdedu.losses.layers`: losses on intermediate layers of transformers (DistilBERT, PKD, TinyBERT,
  CKD, ALP-KD).

Everything is importable from here: ``from kdedu.losses import kd_loss``. The input checks they share
live in :mod:`kdedu._validate`.
"""

from kdedu.losses import divergences, layers, logits
from kdedu.losses.divergences import *  # noqa: F403
from kdedu.losses.layers import *  # noqa: F403
from kdedu.losses.logits import *  # noqa: F403

__all__ = logits.__all__ + divergences.__all__ + layers.__all__
