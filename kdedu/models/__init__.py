"""Small readable models for the book, and helpers to measure them."""

from kdedu.models.cnn import SmallCNN
from kdedu.models.mlp import MLP
from kdedu.models.resnet import ResNet, resnet
from kdedu.models.transformer import (
    BiLSTMStudent,
    SequenceClassifier,
    load_encoder,
    load_minilm,
    small_bert,
    student_from_teacher,
)
from kdedu.models.utils import count_parameters, cpu_latency

__all__ = ["MLP", "SmallCNN", "ResNet", "resnet", "count_parameters", "cpu_latency",
           "load_minilm", "load_encoder", "student_from_teacher", "small_bert", "BiLSTMStudent",
           "SequenceClassifier"]
