"""Layer losses for transformers (Part III): DistilBERT, PKD, TinyBERT, CKD, ALP-KD.

Hidden states are ``[..., H]`` float tensors: (B, L, H) token states or (B, H) [CLS] vectors. A list
of layers is a sequence of such tensors, e.g. ``outputs.hidden_states`` of a transformers model
(index 0 = the embedding output, index k = the output of layer k). Names in the seed deck 000's
tables: "RKD" there is *regular* KD (Hinton's kd_loss on the logits), not relational KD (Park et al.
2019, which matches distances between examples); the losses below match *intermediate* layers.
Like the losses on logits, they are pure functions; a learned projection is passed in, never created.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from kdedu._validate import check_indices, check_integer, check_logits, check_temperature
from kdedu.losses.logits import kd_loss

__all__ = [
    "cosine_hidden_loss",
    "distilbert_loss",
    "pkd_loss",
    "tinybert_attention_loss",
    "tinybert_hidden_loss",
    "tinybert_embedding_loss",
    "ckd_loss",
    "alp_attention",
    "alp_loss",
]


def _check_hidden(name: str, x, min_dim: int = 2) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of hidden states, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < min_dim or x.shape[-1] < 1:
        raise ValueError(f"{name} must have at least {min_dim} dimensions [..., H], got {tuple(x.shape)}")


def _check_same_shape(a_name: str, a: torch.Tensor, b_name: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{a_name} and {b_name} must have the same shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)} (kdedu never broadcasts; project one side first)")


def _as_layers(name: str, layers) -> list[torch.Tensor]:
    """A tensor (one layer) or a non-empty sequence of tensors -> a list of tensors, each checked."""
    if isinstance(layers, torch.Tensor):
        layers = [layers]
    if not isinstance(layers, (list, tuple)) or len(layers) == 0:
        raise TypeError(f"{name} must be a tensor or a non-empty list/tuple of tensors, got {type(layers).__name__}")
    for i, h in enumerate(layers):
        _check_hidden(f"{name}[{i}]", h)
    return list(layers)


def _check_mask(attention_mask, shape: tuple) -> torch.Tensor | None:
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a torch.Tensor of 0/1, got {type(attention_mask).__name__}")
    if tuple(attention_mask.shape) != shape:
        raise ValueError(f"attention_mask must have shape {shape} (the hidden states without H), "
                         f"got {tuple(attention_mask.shape)}")
    mask = attention_mask.bool()
    if not mask.any():
        raise ValueError("attention_mask selects no token")
    return mask


def cosine_hidden_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                       attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""DistilBERT's cosine embedding loss: align the *directions* of student and teacher hidden states.

    .. math:: \mathcal{L}_{cos} = \frac{1}{|M|} \sum_{(b, l) \in M} \big(1 - \cos(h^s_{b,l}, h^t_{b,l})\big)

    averaged over the tokens ``M`` where ``attention_mask`` is 1 (all tokens when it is ``None``).
    Sanh et al. (2019), "DistilBERT", section 3 (``L_cos``); their code applies
    ``nn.CosineEmbeddingLoss(target=1)`` to the last hidden states of the non-padding tokens. Both
    states must have the same width (DistilBERT's student keeps the teacher's width).

    Shapes: ``student_hidden``, ``teacher_hidden`` ``[..., H]``; ``attention_mask`` ``[...]`` of 0/1.
    """
    _check_hidden("student_hidden", student_hidden, 1)
    _check_hidden("teacher_hidden", teacher_hidden, 1)
    _check_same_shape("student_hidden", student_hidden, "teacher_hidden", teacher_hidden)
    mask = _check_mask(attention_mask, tuple(student_hidden.shape[:-1]))
    per_token = 1.0 - F.cosine_similarity(student_hidden, teacher_hidden, dim=-1, eps=1e-8)  # [...]
    return per_token.mean() if mask is None else per_token[mask].mean()


def _check_weights(weights, n: int) -> tuple[float, ...]:
    if not isinstance(weights, (list, tuple)) or len(weights) != n:
        raise ValueError(f"weights must be a tuple of {n} numbers, got {weights!r}")
    out = []
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w) or w < 0:
            raise ValueError(f"weights must be finite numbers >= 0, got {weights!r}")
        out.append(float(w))
    return tuple(out)


def distilbert_loss(
    student_logits: torch.Tensor | None,
    teacher_logits: torch.Tensor | None,
    mlm_logits: torch.Tensor | None,
    mlm_labels: torch.Tensor | None,
    student_hidden: torch.Tensor | None,
    teacher_hidden: torch.Tensor | None,
    temperature: float = 2.0,
    weights: tuple[float, float, float] = (5.0, 2.0, 1.0),
    attention_mask: torch.Tensor | None = None,
    ignore_index: int = -100,
) -> torch.Tensor:
    r"""DistilBERT's triple loss: soft-target KD + the (masked-LM) hard loss + the cosine hidden loss.

    .. math:: \mathcal{L} = \alpha_{ce}\, T^2\, \mathrm{KL}\big(p^t(T) \,\|\, p^s(T)\big)
              + \alpha_{mlm}\, \mathrm{CE}(z_{mlm}, y_{mlm}) + \alpha_{cos}\, \mathcal{L}_{cos}(h^s, h^t)

    Sanh et al. (2019), section 3, and the DistilBERT slide of seed deck 001. The paper calls the first
    term ``L_ce`` = :math:`-\sum_i t_i \log s_i` (a cross-entropy with the teacher's soft targets); it
    differs from the KL here only by the teacher's entropy, a constant, so the gradients are the same.
    The terms are :func:`kd_loss` (batchmean over rows), ``F.cross_entropy`` over the positions whose
    label is not ``ignore_index`` (the masked tokens in pre-training; the class labels when fine-tuning)
    and :func:`cosine_hidden_loss`. ``weights = (alpha_ce, alpha_mlm, alpha_cos)``; the default
    ``(5, 2, 1)`` and ``T = 2`` are the DistilBERT training command's. One-hot weights give each part
    alone; the inputs of a part whose weight is 0 may be ``None``. (The paper's ablation, seed deck 001:
    dropping L_ce costs most, L_mlm least.)
    """
    a_ce, a_mlm, a_cos = _check_weights(weights, 3)
    t = check_temperature(temperature)
    total = None

    def add(term):
        nonlocal total
        total = term if total is None else total + term

    parts = {"ce": (a_ce, ("student_logits", student_logits), ("teacher_logits", teacher_logits)),
             "mlm": (a_mlm, ("mlm_logits", mlm_logits), ("mlm_labels", mlm_labels)),
             "cos": (a_cos, ("student_hidden", student_hidden), ("teacher_hidden", teacher_hidden))}
    for part, (w, (n1, v1), (n2, v2)) in parts.items():
        if w > 0 and (v1 is None or v2 is None):
            raise ValueError(f"{n1 if v1 is None else n2} is None but the weight of the {part!r} term is {w}")
    if a_ce > 0:
        add(a_ce * kd_loss(student_logits, teacher_logits, t))
    if a_mlm > 0:
        check_logits("mlm_logits", mlm_logits)
        ignore_index = check_integer("ignore_index", ignore_index)
        check_indices("mlm_labels", mlm_labels, tuple(mlm_logits.shape[:-1]), mlm_logits.shape[-1], ignore_index,
                      shape_of="mlm_logits without the class dimension", device=mlm_logits.device)
        if not (mlm_labels != ignore_index).any():
            raise ValueError(f"mlm_labels has no position to predict (all equal ignore_index={ignore_index})")
        c = mlm_logits.shape[-1]
        add(a_mlm * F.cross_entropy(mlm_logits.reshape(-1, c), mlm_labels.reshape(-1), ignore_index=ignore_index))
    if a_cos > 0:
        add(a_cos * cosine_hidden_loss(student_hidden, teacher_hidden, attention_mask))
    if total is None:
        raise ValueError(f"weights must not all be 0, got {weights!r}")
    return total


def _pairs(layer_map, n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """``{student_index: teacher_index}`` or ``[(j, k), ...]`` -> a checked list of pairs."""
    items = list(layer_map.items()) if isinstance(layer_map, dict) else layer_map
    if not isinstance(items, (list, tuple)) or len(items) == 0:
        raise ValueError(f"layer_map must be a non-empty dict {{student_layer: teacher_layer}} or list of pairs, "
                         f"got {layer_map!r}")
    pairs = []
    for item in items:
        if not (isinstance(item, (list, tuple)) and len(item) == 2
                and all(isinstance(i, int) and not isinstance(i, bool) for i in item)):
            raise ValueError(f"layer_map entries must be (student_layer, teacher_layer) integer pairs, got {item!r}")
        j, k = item
        if not (0 <= j < n_student and 0 <= k < n_teacher):
            raise ValueError(f"layer_map pair {item!r} is out of range: {n_student} student and {n_teacher} "
                             f"teacher layers were given")
        pairs.append((j, k))
    return pairs


def pkd_loss(student_cls, teacher_cls, layer_map) -> torch.Tensor:
    r"""Patient KD's intermediate loss: MSE between *normalised* [CLS] states of mapped layers.

    .. math:: \mathcal{L}_{PT} = \sum_{(j, k) \in \text{layer\_map}} \frac{1}{B} \sum_{b=1}^{B}
              \Big\| \frac{h^{s}_{b,j}}{\|h^{s}_{b,j}\|_2} - \frac{h^{t}_{b,k}}{\|h^{t}_{b,k}\|_2} \Big\|_2^2

    Sun et al. (2019), "Patient Knowledge Distillation for BERT Model Compression", eq. 3 (summed over
    examples there, averaged over the batch here). ``student_cls`` / ``teacher_cls``: lists of (B, H)
    [CLS] vectors, one per layer (e.g. ``[h[:, 0] for h in outputs.hidden_states]``); ``layer_map``
    ``{j: k}`` pairs student layer ``j`` with teacher layer ``k``: PKD-Skip takes every other teacher
    layer, PKD-Last the last ones. Choosing the map *is* the "search" problem and the unmapped
    teacher layers the "skip" problem (seed deck 000, "Structure"), which CKD and ALP-KD address.
    The final layer is usually left to the KD loss on the logits.
    """
    s_layers, t_layers = _as_layers("student_cls", student_cls), _as_layers("teacher_cls", teacher_cls)
    total = 0.0
    for j, k in _pairs(layer_map, len(s_layers), len(t_layers)):
        hs, ht = s_layers[j], t_layers[k]
        _check_same_shape(f"student_cls[{j}]", hs, f"teacher_cls[{k}]", ht)
        diff = F.normalize(hs, dim=-1) - F.normalize(ht, dim=-1)                 # (B, H)
        total = total + diff.pow(2).sum(-1).mean()
    return total


def _apply_projection(name: str, projection, x: torch.Tensor, target_shape: tuple) -> torch.Tensor:
    if projection is None:
        y = x
    elif callable(projection):
        y = projection(x)
    else:
        raise TypeError(f"{name} must be a callable (e.g. nn.Linear(d_student, d_teacher)) or None, "
                        f"got {type(projection).__name__}")
    if tuple(y.shape) != target_shape:
        raise ValueError(f"{name} maps the student's {tuple(x.shape)} to {tuple(y.shape)}, but the teacher's "
                         f"states are {target_shape}: use nn.Linear(d_student={x.shape[-1]}, "
                         f"d_teacher={target_shape[-1]})")
    return y


def tinybert_attention_loss(student_attentions, teacher_attentions) -> torch.Tensor:
    r"""TinyBERT's attention loss: MSE between the attention maps of paired layers, averaged over heads.

    .. math:: \mathcal{L}_{attn} = \sum_{m} \frac{1}{h} \sum_{i=1}^{h} \mathrm{MSE}\big(A^S_{m,i}, A^T_{g(m),i}\big)

    Jiao et al. (2020), "TinyBERT", eq. 7-8. Pass the layers already paired by the mapping ``g``
    (TinyBERT's uniform ``g(m) = m \cdot N / M``): ``student_attentions[m]`` and
    ``teacher_attentions[m]`` are (B, heads, L, L) maps with the same number of heads. MSE is the
    mean over all elements, so the ``1/h`` is included. TinyBERT's code matches the *unnormalised*
    scores (masked entries set to 0); transformers returns softmax probabilities (``output_attentions``,
    eager attention), which is what most re-implementations match; either works with this function.
    """
    s_layers, t_layers = _as_layers("student_attentions", student_attentions), _as_layers(
        "teacher_attentions", teacher_attentions)
    if len(s_layers) != len(t_layers):
        raise ValueError(f"student_attentions and teacher_attentions must pair up layer by layer, got "
                         f"{len(s_layers)} and {len(t_layers)} layers (select the teacher layers g(m) first)")
    total = 0.0
    for m, (a_s, a_t) in enumerate(zip(s_layers, t_layers, strict=True)):
        if a_s.dim() != 4:
            raise ValueError(f"student_attentions[{m}] must be (B, heads, L, L), got {tuple(a_s.shape)}")
        _check_same_shape(f"student_attentions[{m}]", a_s, f"teacher_attentions[{m}]", a_t)
        total = total + F.mse_loss(a_s, a_t)
    return total


def tinybert_hidden_loss(student_hidden, teacher_hidden, projection=None) -> torch.Tensor:
    r"""TinyBERT's hidden-state loss: MSE between the projected student states and the teacher's.

    .. math:: \mathcal{L}_{hidn} = \sum_m \mathrm{MSE}\big(H^S_m W_h,\; H^T_{g(m)}\big)

    Jiao et al. (2020), eq. 9. ``W_h`` (d_student x d_teacher) is *learned* with the student: pass the
    same ``nn.Linear(d_student, d_teacher)`` at every step (one shared projection, as in the paper; a
    list/tuple of callables gives one per layer). It lets a narrow student learn from a wide teacher;
    ``projection=None`` needs equal widths. ``student_hidden``/``teacher_hidden``: one (B, L, H) tensor
    or lists paired layer by layer.
    """
    s_layers, t_layers = _as_layers("student_hidden", student_hidden), _as_layers("teacher_hidden", teacher_hidden)
    if len(s_layers) != len(t_layers):
        raise ValueError(f"student_hidden and teacher_hidden must pair up layer by layer, got {len(s_layers)} "
                         f"and {len(t_layers)} layers")
    if isinstance(projection, (list, tuple)):
        if len(projection) != len(s_layers):
            raise ValueError(f"projection: got {len(projection)} projections for {len(s_layers)} layers")
        projections = list(projection)
    else:
        projections = [projection] * len(s_layers)
    total = 0.0
    for m, (h_s, h_t, w) in enumerate(zip(s_layers, t_layers, projections, strict=True)):
        if tuple(h_s.shape[:-1]) != tuple(h_t.shape[:-1]):
            raise ValueError(f"student_hidden[{m}] and teacher_hidden[{m}] must agree except in width, got "
                             f"{tuple(h_s.shape)} and {tuple(h_t.shape)}")
        total = total + F.mse_loss(_apply_projection("projection", w, h_s, tuple(h_t.shape)), h_t)
    return total


def tinybert_embedding_loss(student_embeddings: torch.Tensor, teacher_embeddings: torch.Tensor,
                            projection=None) -> torch.Tensor:
    r"""TinyBERT's embedding-layer loss: :math:`\mathcal{L}_{embd} = \mathrm{MSE}(E^S W_e, E^T)`.

    Jiao et al. (2020), eq. 10. ``E`` are the embedding-layer outputs (B, L, H) (``hidden_states[0]``
    of a transformers model) and ``W_e`` a learned ``nn.Linear(d_student, d_teacher)``, separate from
    the hidden-state projection ``W_h``. The prediction-layer loss (eq. 11) is :func:`kd_loss`.
    """
    _check_hidden("student_embeddings", student_embeddings)
    _check_hidden("teacher_embeddings", teacher_embeddings)
    if tuple(student_embeddings.shape[:-1]) != tuple(teacher_embeddings.shape[:-1]):
        raise ValueError(f"student_embeddings and teacher_embeddings must agree except in width, got "
                         f"{tuple(student_embeddings.shape)} and {tuple(teacher_embeddings.shape)}")
    projected = _apply_projection("projection", projection, student_embeddings, tuple(teacher_embeddings.shape))
    return F.mse_loss(projected, teacher_embeddings)


def ckd_loss(student_hidden, teacher_hidden, groups, combine: str = "mean", projections=None) -> torch.Tensor:
    r"""Combinatorial KD: each student layer learns from a fixed *combination* of a group of teacher layers.

    .. math:: \mathcal{L}_{CKD} = \sum_{j} \mathrm{MSE}\big(h^S_j,\; f_j(\{h^T_k : k \in G_j\})\big)

    Wu et al. (2020), "Why Skip If You Can Combine: A Simple Knowledge Distillation Technique for
    Intermediate Layers" (EMNLP). Every teacher layer can sit in some group, which solves the *skip*
    problem; the groups are fixed by hand, which leaves the *search* problem (seed deck 000).
    ``combine="mean"``: ``f_j`` is the average of the group (same widths needed); ``combine="concat"``:
    ``f_j = W_j [h^T_{k_1}; ...; h^T_{k_r}]``, the concatenation mapped to the student's width by
    ``projections[j]`` (learned ``nn.Linear(r * d_teacher, d_student)``), as in the paper.

    Args:
        student_hidden: list of m tensors [..., d_student] (one per student layer).
        teacher_hidden: list of n tensors [..., d_teacher].
        groups: m lists of teacher indices; ``groups[j]`` feeds student layer ``j``.
    """
    s_layers, t_layers = _as_layers("student_hidden", student_hidden), _as_layers("teacher_hidden", teacher_hidden)
    if combine not in ("mean", "concat"):
        raise ValueError(f"combine must be 'mean' or 'concat', got {combine!r}")
    if not isinstance(groups, (list, tuple)) or len(groups) != len(s_layers):
        raise ValueError(f"groups must hold one list of teacher layers per student layer ({len(s_layers)}), "
                         f"got {groups!r}")
    if combine == "concat" and (not isinstance(projections, (list, tuple)) or len(projections) != len(s_layers)):
        raise ValueError(f"projections must give one callable per student layer ({len(s_layers)}) "
                         f"when combine='concat'")
    total = 0.0
    for j, group in enumerate(groups):
        if (not isinstance(group, (list, tuple)) or len(group) == 0
                or not all(isinstance(k, int) and not isinstance(k, bool) and 0 <= k < len(t_layers) for k in group)):
            raise ValueError(f"groups[{j}] must be a non-empty list of teacher indices in [0, {len(t_layers) - 1}], "
                             f"got {group!r}")
        members = [t_layers[k] for k in group]
        for k, h in zip(group, members, strict=True):
            if h.shape != members[0].shape:
                raise ValueError(f"teacher_hidden[{k}] has shape {tuple(h.shape)}, unlike the rest of groups[{j}]")
        if combine == "mean":
            fused = torch.stack(members).mean(0)                                  # [..., d_teacher]
            _check_same_shape(f"student_hidden[{j}]", s_layers[j], f"the mean of teacher groups[{j}]", fused)
        else:
            cat = torch.cat(members, dim=-1)                                      # [..., r * d_teacher]
            fused = _apply_projection(f"projections[{j}]", projections[j], cat, tuple(s_layers[j].shape))
        total = total + F.mse_loss(s_layers[j], fused)
    return total


def _stack_teacher(teacher_hiddens) -> torch.Tensor:
    layers = _as_layers("teacher_hiddens", teacher_hiddens)
    for k, h in enumerate(layers):
        if h.shape != layers[0].shape:
            raise ValueError(f"teacher_hiddens[{k}] has shape {tuple(h.shape)}, unlike teacher_hiddens[0] "
                             f"{tuple(layers[0].shape)}")
    return torch.stack(layers, dim=-2)                                            # (B, n, H)


def alp_attention(student_hidden_j: torch.Tensor, teacher_hiddens, scale: float = 1.0) -> torch.Tensor:
    r"""ALP-KD's attention of one student layer over all teacher layers, per example.

    .. math:: \alpha_{jk} = \frac{\exp(h_S^j \cdot h_T^k)}{\sum_{k'} \exp(h_S^j \cdot h_T^{k'})}

    Passban et al. (2021), "ALP-KD: Attention-Based Layer Projection for Knowledge Distillation" (AAAI),
    seed deck 000, "Our Solution". Like PKD, ALP-KD works on the [CLS] vector of each layer: pass
    ``student_hidden_j`` (B, H) and ``teacher_hiddens`` a list of n (B, H) tensors (mean-pooled
    states work the same way). Returns ``alpha`` (B, n): each row sums to 1. The paper uses the raw
    dot product (``scale=1``); with wide states it is nearly one-hot, and ``scale = 1/sqrt(H)`` (as in
    Transformer attention) softens it. Gradients flow through both sides.
    """
    _check_hidden("student_hidden_j", student_hidden_j)
    teacher = _stack_teacher(teacher_hiddens)                                     # (B, n, H)
    if student_hidden_j.dim() != 2:
        raise ValueError(f"student_hidden_j must be (B, H) [CLS] vectors, got {tuple(student_hidden_j.shape)}")
    if teacher.shape[0] != student_hidden_j.shape[0] or teacher.shape[-1] != student_hidden_j.shape[-1]:
        raise ValueError(f"student_hidden_j {tuple(student_hidden_j.shape)} and teacher_hiddens (each "
                         f"{tuple(teacher.shape[::2])}) must have the same batch size and width")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    scores = torch.einsum("bh,bnh->bn", student_hidden_j, teacher) * scale         # (B, n)
    return torch.softmax(scores, dim=-1)


def alp_loss(student_hiddens, teacher_hiddens, scale: float = 1.0) -> torch.Tensor:
    r"""ALP-KD's layer loss: every student layer matches its own attention-weighted mix of *all* teacher layers.

    .. math:: c^j = \sum_k \alpha_{jk} h_T^k, \qquad
              \mathcal{L}_{ALP} = \sum_{j=1}^{m} \mathrm{MSE}(h_S^j, c^j)

    with :math:`\alpha_{jk}` from :func:`alp_attention`, computed per example. Passban et al. (2021);
    seed deck 000. No teacher layer is skipped and no mapping is searched for: the attention decides
    which teacher layers matter for each student layer. The full objective is
    :math:`\beta \mathcal{L}_{ce} + \eta \mathcal{L}_{KD} + \lambda \mathcal{L}_{ALP}`, where
    :math:`\mathcal{L}_{KD}` is regular KD (:func:`kd_loss`; "RKD" in the paper's tables).
    ``MSE`` is the mean over batch and width (the paper sums over examples).

    Shapes: ``student_hiddens`` m tensors (B, H); ``teacher_hiddens`` n tensors (B, H).
    """
    s_layers = _as_layers("student_hiddens", student_hiddens)
    teacher = _stack_teacher(teacher_hiddens)                                     # (B, n, H)
    total = 0.0
    for j, h_s in enumerate(s_layers):
        if h_s.dim() != 2:
            raise ValueError(f"student_hiddens[{j}] must be (B, H) [CLS] vectors, got {tuple(h_s.shape)}")
        alpha = alp_attention(h_s, teacher_hiddens, scale)                        # (B, n)
        c_j = torch.einsum("bn,bnh->bh", alpha, teacher)                          # (B, H)
        total = total + F.mse_loss(h_s, c_j)
    return total
