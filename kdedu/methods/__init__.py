"""One module per method: the procedure around a loss, as a small :class:`~kdedu.train.Distiller`."""

from kdedu.methods.annealing import AnnealingKD
from kdedu.methods.born_again import born_again, ensemble_logits
from kdedu.methods.kd import KD, Supervised
from kdedu.methods.takd import TAKDResult, takd
from kdedu.methods.teacher_free import LabelSmoothing, VirtualTeacherKD

__all__ = ["Supervised", "KD", "LabelSmoothing", "VirtualTeacherKD", "born_again", "ensemble_logits", "AnnealingKD",
           "takd", "TAKDResult"]
