"""Small readable models for the book, and helpers to measure them."""

from kdedu.models.albert import FactorizedEmbedding, factorize_embeddings, share_layers
from kdedu.models.cnn import SmallCNN
from kdedu.models.decoding import HFSeq2Seq, Hypothesis, beam_search, greedy, sample, translate
from kdedu.models.gpt import GPT
from kdedu.models.mlm import MaskedLM, load_masked_lm, mask_tokens
from kdedu.models.mlp import MLP
from kdedu.models.nat import NAT, NATOutput
from kdedu.models.resnet import ResNet, resnet
from kdedu.models.seq2seq import Seq2Seq
from kdedu.models.shrink import layers_to_copy, shrink_decoder
from kdedu.models.transformer import (
    BiLSTMStudent,
    SequenceClassifier,
    load_encoder,
    load_minilm,
    small_bert,
    student_from_teacher,
)
from kdedu.models.utils import count_parameters, cpu_latency

__all__ = ["MLP", "SmallCNN", "ResNet", "resnet", "count_parameters", "cpu_latency", "load_minilm", "load_encoder",
           "student_from_teacher", "small_bert", "BiLSTMStudent", "SequenceClassifier", "MaskedLM", "mask_tokens",
           "load_masked_lm", "Seq2Seq", "GPT", "NAT", "NATOutput", "Hypothesis", "greedy", "beam_search", "sample",
           "translate", "HFSeq2Seq", "shrink_decoder", "layers_to_copy",
           "FactorizedEmbedding", "factorize_embeddings", "share_layers"]
