"""One module per method: the procedure around a loss, as a small :class:`~kdedu.train.Distiller`."""

from kdedu.methods.alp import ALPKD
from kdedu.methods.annealing import AnnealingKD
from kdedu.methods.born_again import born_again, ensemble_logits
from kdedu.methods.ckd import CKD, contiguous_groups
from kdedu.methods.distilbert import DistilBERTKD
from kdedu.methods.kd import KD, Supervised
from kdedu.methods.pkd import PKD
from kdedu.methods.takd import TAKDResult, takd
from kdedu.methods.teacher_free import LabelSmoothing, VirtualTeacherKD
from kdedu.methods.teacher_outputs import (
    TeacherBatch,
    TransformerDistiller,
    precompute_teacher,
    skip_map,
    teacher_outputs,
    uniform_map,
)
from kdedu.methods.tinybert import TinyBERTKD

__all__ = ["Supervised", "KD", "LabelSmoothing", "VirtualTeacherKD", "born_again", "ensemble_logits", "AnnealingKD",
           "takd", "TAKDResult", "TeacherBatch", "TransformerDistiller", "teacher_outputs", "precompute_teacher",
           "skip_map", "uniform_map", "DistilBERTKD", "PKD", "TinyBERTKD", "CKD", "contiguous_groups", "ALPKD"]
