"""ALBERT's two ways to save parameters, applied to a BERT student (Lan et al. 2020, "ALBERT: A Lite BERT for
Self-supervised Learning of Language Representations"; seed deck 000, "Alternatives": "[ALBERT] Parameter sharing &
matrix factorization").

* **Factorised embeddings** (ALBERT section 3.1): the V x H word-embedding table becomes a V x E lookup followed by an
  E x H projection, ``V·H`` parameters -> ``V·E + E·H``. For MiniLM (V = 30,522, H = 384) and E = 64 that is
  11.7 M -> 2.0 M. :class:`FactorizedEmbedding` is the module; :meth:`FactorizedEmbedding.from_weight` initialises it
  from a trained table by truncated SVD, ``W ≈ (U_E Σ_E) V_E^T``, which by the Eckart-Young theorem is the best rank-E
  approximation of ``W`` in the Frobenius (and spectral) norm.
* **Cross-layer sharing** (ALBERT section 3.1): every transformer block of the encoder is one and the same module,
  so an n-block encoder holds the parameters of one block. :func:`share_layers` does it in place.

Both work on a ``transformers`` ``BertModel`` or a :class:`~kdedu.models.SequenceClassifier` around one (e.g. a student
from :func:`~kdedu.models.student_from_teacher`); :func:`~kdedu.models.count_parameters` counts a shared tensor once.
"""

from __future__ import annotations

import torch
from torch import nn

from kdedu._validate import check_positive_int
from kdedu.models.transformer import _bert_of

__all__ = ["FactorizedEmbedding", "factorize_embeddings", "share_layers"]


class FactorizedEmbedding(nn.Module):
    """ALBERT's factorised word embedding: ``ids -> lookup (V, E) -> project (E -> H, no bias)``.

    ``forward(ids)`` returns ``(..., H)`` vectors like ``nn.Embedding(V, H)``; the implied table is
    :attr:`weight` ``= lookup.weight @ project.weight.T`` (V, H), of rank at most ``rank``.

    Args:
        num_embeddings: V, the vocabulary size.
        embedding_dim: H, the width the encoder expects.
        rank: E, the factorisation's inner width (ALBERT's embedding size), ``1 <= E <= min(V, H)``.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, rank: int):
        super().__init__()
        v = check_positive_int("num_embeddings", num_embeddings)
        h = check_positive_int("embedding_dim", embedding_dim)
        rank = check_positive_int("rank", rank)
        if rank > min(v, h):
            raise ValueError(f"rank must be at most min(num_embeddings, embedding_dim) = {min(v, h)}, got {rank}")
        self.num_embeddings, self.embedding_dim, self.rank = v, h, rank
        self.lookup = nn.Embedding(v, rank)                # (V, E)
        self.project = nn.Linear(rank, h, bias=False)      # weight (H, E)

    @property
    def weight(self) -> torch.Tensor:
        """The implied (V, H) table ``lookup.weight @ project.weight.T``."""
        return self.lookup.weight @ self.project.weight.T

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.project(self.lookup(input_ids))       # (..., E) -> (..., H)

    @classmethod
    @torch.no_grad()
    def from_weight(cls, weight: torch.Tensor, rank: int) -> FactorizedEmbedding:
        """The factorisation of a trained (V, H) table by truncated SVD: ``W = U Σ V^T`` (singular values in
        decreasing order), ``lookup = U_E Σ_E`` (V, E), ``project = V_E^T`` (E, H). The product is the best rank-E
        approximation of ``W`` (Eckart-Young); its squared Frobenius error is the sum of the discarded ``σ_i²``."""
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
            raise TypeError(f"weight must be a 2-D floating-point (V, H) tensor, got "
                            f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
        v, h = weight.shape
        module = cls(v, h, rank).to(device=weight.device, dtype=weight.dtype)
        work = torch.float64 if weight.dtype == torch.float64 else torch.float32         # half types: in float32
        u, s, vh = torch.linalg.svd(weight.detach().to(work), full_matrices=False)       # (V, K), (K,), (K, H)
        module.lookup.weight.copy_((u[:, :rank] * s[:rank]).to(weight.dtype))
        module.project.weight.copy_(vh[:rank].T.to(weight.dtype))                   # (H, E)
        return module


def factorize_embeddings(model: nn.Module, rank: int, init: str = "svd") -> nn.Module:
    """Replace the word embeddings of ``model`` (a ``BertModel`` or a ``SequenceClassifier`` around one) by a
    :class:`FactorizedEmbedding` of inner width ``rank``, in place; returns ``model``.

    ``init="svd"`` starts from the truncated SVD of the current table (:meth:`FactorizedEmbedding.from_weight`: the
    best rank-``rank`` approximation), ``init="random"`` from ``nn.Embedding``/``nn.Linear``'s default initialisation.
    The new parameters require grad; freeze them as you would the table.
    """
    if init not in ("svd", "random"):
        raise ValueError(f"init must be 'svd' or 'random', got {init!r}")
    embeddings = _bert_of(model).embeddings
    old = embeddings.word_embeddings
    if not isinstance(old, nn.Embedding):
        raise TypeError(f"model's word embeddings must be an nn.Embedding (not yet factorised), got "
                        f"{type(old).__name__}")
    if init == "svd":
        new = FactorizedEmbedding.from_weight(old.weight, rank)
    else:
        new = FactorizedEmbedding(old.num_embeddings, old.embedding_dim, rank).to(old.weight.device)
    embeddings.word_embeddings = new
    return model


def share_layers(model: nn.Module, source: int = -1) -> nn.Module:
    """ALBERT's cross-layer sharing, in place: every block of ``model``'s encoder becomes block ``source`` (0-based;
    negative counts from the end), one module called n times. Returns ``model``.

    The encoder computes ``h_k = f(h_{k-1})`` with the same ``f`` at every depth; ``count_parameters`` then counts one
    block. Hidden states and attention maps are still returned per depth (n of each).
    """
    layers = _bert_of(model).encoder.layer
    n = len(layers)
    if isinstance(source, bool) or not isinstance(source, int) or not -n <= source < n:
        raise ValueError(f"source must be a block index in [-{n}, {n - 1}] (the encoder has {n} blocks), got "
                         f"{source!r}")
    block = layers[source]
    _bert_of(model).encoder.layer = nn.ModuleList([block] * n)
    return model
