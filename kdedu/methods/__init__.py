"""One module per method: the procedure around a loss, as a small :class:`~kdedu.train.Distiller`."""

from kdedu.methods.alp import ALPKD
from kdedu.methods.annealing import AnnealingKD
from kdedu.methods.born_again import born_again, ensemble_logits
from kdedu.methods.ckd import CKD, contiguous_groups
from kdedu.methods.costs import CountedTeacher, run_cost
from kdedu.methods.distilbert import DistilBERTKD
from kdedu.methods.domain import AlternationResult, DomainAlternation
from kdedu.methods.ensemble import EnsembleKD, EnsembleTeacher
from kdedu.methods.gkd import GKD
from kdedu.methods.imitation import BlackBox, Imitation
from kdedu.methods.imitkd import ImitKD, teacher_rollin_schedule
from kdedu.methods.kd import KD, Supervised
from kdedu.methods.mate_kd import MATEKD, AdversarialKD, gumbel_softmax
from kdedu.methods.metadistil import MetaDistil, TeacherTop, quiz_split
from kdedu.methods.minimax_knn import MinimaxKNN, NeighbourKD, TeacherRows, index_loader, most_divergent, teacher_rows
from kdedu.methods.mlm import MaskedLMTraining
from kdedu.methods.mobilebert import LayerTransfer
from kdedu.methods.multi_teacher import MultiTeacher, Retokenized, average_stores, average_teachers
from kdedu.methods.nat import NATLoss
from kdedu.methods.pkd import PKD
from kdedu.methods.selective import SelectiveMultilingualKD, VocabularyBridge, distillation_switches
from kdedu.methods.seqkd import (
    SeqInter,
    SeqKD,
    WordKD,
    seq_inter_choice,
    seq_kd_dataset,
    sequence_kl,
    teacher_beams,
)
from kdedu.methods.shrink import ShrinkResult, shrink_and_fine_tune
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
           "skip_map", "uniform_map", "DistilBERTKD", "PKD", "TinyBERTKD", "CKD", "contiguous_groups", "ALPKD",
           "LayerTransfer",
           "MATEKD", "AdversarialKD", "gumbel_softmax", "MaskedLMTraining", "MetaDistil", "TeacherTop", "quiz_split",
           "MultiTeacher", "average_teachers", "Retokenized", "average_stores", "WordKD", "SeqKD", "SeqInter",
           "seq_kd_dataset", "teacher_beams", "seq_inter_choice", "sequence_kl", "NATLoss", "NeighbourKD",
           "MinimaxKNN", "TeacherRows", "teacher_rows", "most_divergent", "index_loader", "CountedTeacher",
           "run_cost", "EnsembleTeacher", "EnsembleKD", "SelectiveMultilingualKD", "VocabularyBridge",
           "distillation_switches", "DomainAlternation", "AlternationResult", "BlackBox", "Imitation", "ImitKD",
           "teacher_rollin_schedule", "GKD", "shrink_and_fine_tune", "ShrinkResult"]
