"""Small readable models for the book, and helpers to measure them."""

from kdedu.models.cnn import SmallCNN
from kdedu.models.mlp import MLP
from kdedu.models.resnet import ResNet, resnet
from kdedu.models.utils import count_parameters, cpu_latency

__all__ = ["MLP", "SmallCNN", "ResNet", "resnet", "count_parameters", "cpu_latency"]
