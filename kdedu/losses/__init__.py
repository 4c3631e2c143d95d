"""Every distillation objective in kdedu, as a pure function of tensors.

* :mod:`kdedu.losses.logits`: losses on output logits (Hinton's KD, logit regression, label smoothing,
  teacher-free KD, Annealing KD) and the input checks every loss shares;
* :mod:`kdedu.losses.layers`: losses on intermediate layers of transformers (DistilBERT, PKD, TinyBERT,
  CKD, ALP-KD).

Everything is importable from here: ``from kdedu.losses import kd_loss``.
"""

from kdedu.losses import layers, logits
from kdedu.losses.layers import *  # noqa: F403
from kdedu.losses.logits import *  # noqa: F403
from kdedu.losses.logits import (  # noqa: F401  (shared input checks, used by kdedu.methods and kdedu.kernels)
    _check_logits,
    _check_pair,
    _check_reduction,
    _check_targets,
    _check_temperature,
    _check_unit_interval,
)

__all__ = logits.__all__ + layers.__all__
