"""Every distillation objective in kdedu, as a pure function of tensors.

Conventions (DESIGN.md, "Contracts"):

* logits are ``[..., C]``: the last dimension holds the classes and every leading dimension is a
  row (a batch, or batch x sequence);
* ``temperature`` is written ``T`` in the book; the "KD loss" always includes the ``T**2`` factor;
* ``reduction`` is ``"batchmean"`` (sum divided by the number of rows), ``"sum"`` or ``"none"``
  (one value per row, shaped like the leading dimensions);
* bad input raises ``TypeError``/``ValueError`` naming the argument; nothing is silently broadcast.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

__all__ = [
    "soft_targets",
    "kd_loss",
    "distillation_loss",
    "logit_mse",
    "label_smoothing_loss",
    "virtual_teacher_probs",
    "virtual_teacher_loss",
    "annealing_phi",
    "annealing_kd_loss",
]

_REDUCTIONS = ("batchmean", "sum", "none")


# --------------------------------------------------------------------------------------------
# input validation (shared by every loss below)
# --------------------------------------------------------------------------------------------
def _check_logits(name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of logits, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (logits), got dtype {x.dtype}")
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"{name} must have shape [..., C] with C >= 1, got {tuple(x.shape)}")


def _check_pair(student_logits, teacher_logits) -> None:
    _check_logits("student_logits", student_logits)
    _check_logits("teacher_logits", teacher_logits)
    if student_logits.shape != teacher_logits.shape:
        s, t = tuple(student_logits.shape), tuple(teacher_logits.shape)
        what = "class counts" if s[:-1] == t[:-1] else "shapes"
        raise ValueError(
            f"student_logits and teacher_logits must have the same shape, got {s} and {t} "
            f"(mismatched {what}; kdedu never broadcasts)"
        )


def _check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a positive number, got {type(temperature).__name__}")
    t = float(temperature)
    if not (t > 0 and math.isfinite(t)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return t


def _check_unit_interval(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1], got {type(value).__name__}")
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return v


def _check_reduction(reduction) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _check_targets(targets, logits) -> None:
    _check_target_indices(targets, tuple(logits.shape[:-1]), logits.shape[-1])


def _check_target_indices(targets, shape: tuple, num_classes: int) -> None:
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor of class indices, got {type(targets).__name__}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"targets must be an integer tensor of class indices, got dtype {targets.dtype}")
    if tuple(targets.shape) != shape:
        raise ValueError(
            f"targets must have shape {shape} (the logits without the class "
            f"dimension), got {tuple(targets.shape)}"
        )
    if targets.numel() and (targets.min() < 0 or targets.max() >= num_classes):
        raise ValueError(f"targets must lie in [0, {num_classes - 1}], got values in "
                         f"[{int(targets.min())}, {int(targets.max())}]")


def _reduce(per_row: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_row
    total = per_row.sum()
    if reduction == "sum":
        return total
    return total / max(per_row.numel(), 1)  # "batchmean": divide by the number of rows


# --------------------------------------------------------------------------------------------
# Hinton et al. 2015
# --------------------------------------------------------------------------------------------
def soft_targets(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    r"""Soft targets: the softmax of the logits at temperature ``T``.

    .. math:: p_i(T) = \frac{\exp(z_i / T)}{\sum_j \exp(z_j / T)}

    Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network", eq. 1.
    ``T -> 0`` gives the one-hot argmax, ``T -> inf`` the uniform distribution.
    """
    _check_logits("logits", logits)
    t = _check_temperature(temperature)
    return torch.softmax(logits / t, dim=-1)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "batchmean",
) -> torch.Tensor:
    r"""The KD loss: ``T**2`` times the KL divergence from the teacher's to the student's soft targets.

    .. math:: \mathcal{L}_{KD} = T^2 \, \mathrm{KL}\big(p^t(T) \,\|\, p^s(T)\big)
              = T^2 \sum_i p^t_i(T) \big(\log p^t_i(T) - \log p^s_i(T)\big)

    Hinton et al. (2015), section 2: the soft-target gradients scale as ``1/T**2``, so the loss is
    multiplied by ``T**2`` to keep its contribution comparable across temperatures. Terms where the
    teacher gives a class probability 0 (e.g. a ``-inf`` logit in a padded vocabulary) contribute 0.
    """
    _check_pair(student_logits, teacher_logits)
    t = _check_temperature(temperature)
    _check_reduction(reduction)
    if student_logits.is_cuda:  # the fused Triton kernel: same value and gradient, far less memory traffic
        from kdedu.kernels import fused_kd_loss  # (chapter 19; imported here: kdedu.kernels imports this module)

        return fused_kd_loss(student_logits, teacher_logits, t, reduction)
    log_p_s = F.log_softmax(student_logits / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits / t, dim=-1)
    p_t = log_p_t.exp()
    # where p_t == 0 the term p_t * (log p_t - log p_s) is 0 (limit x log x -> 0), not nan; the log-ratio
    # is masked (not the product) so no 0 * inf is ever formed, in the forward or the backward pass
    terms = p_t * torch.where(p_t > 0, log_p_t - log_p_s, torch.zeros_like(p_t))
    return _reduce(terms.sum(dim=-1) * t * t, reduction)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.5,
    temperature: float = 4.0,
) -> torch.Tensor:
    r"""Hinton's mixture of the hard-label and the soft-target loss.

    .. math:: \mathcal{L} = (1 - \alpha)\, \mathrm{CE}(z_s, y) + \alpha\, T^2\,
              \mathrm{KL}\big(p^t(T) \,\|\, p^s(T)\big)

    Hinton et al. (2015); the form on the MATE-KD slide of seed deck 000. Both terms are averaged
    over rows, so ``alpha=0`` is plain cross-entropy and ``alpha=1`` is :func:`kd_loss`.
    """
    _check_pair(student_logits, teacher_logits)
    _check_targets(targets, student_logits)
    a = _check_unit_interval("alpha", alpha)
    t = _check_temperature(temperature)
    c = student_logits.shape[-1]
    ce = F.cross_entropy(student_logits.reshape(-1, c), targets.reshape(-1))
    return (1.0 - a) * ce + a * kd_loss(student_logits, teacher_logits, t)


def logit_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    r"""Logit regression: the mean squared error over all elements.

    .. math:: \mathcal{L} = \frac{1}{N C} \sum_{n, i} (z^s_{n,i} - z^t_{n,i})^2

    Ba & Caruana (2014), "Do Deep Nets Really Need to be Deep?"; Bucila et al. (2006) also regress
    the ensemble's outputs. It is the ``T -> inf`` limit of :func:`kd_loss` for zero-mean logits
    (Hinton et al. 2015, section 2.1): ``kd_loss -> sum_i (z_s - z_t)_i**2 / (2 C)`` per row.
    """
    _check_pair(student_logits, teacher_logits)
    return F.mse_loss(student_logits, teacher_logits, reduction="mean")


# --------------------------------------------------------------------------------------------
# Label smoothing and teacher-free KD (Szegedy et al. 2016; Yuan et al. 2020)
# --------------------------------------------------------------------------------------------
def label_smoothing_loss(logits: torch.Tensor, targets: torch.Tensor, epsilon: float = 0.1) -> torch.Tensor:
    r"""Cross-entropy with the label-smoothed target ``q' = (1 - eps) q + eps u``, ``u`` uniform.

    .. math:: H(q', p) = (1 - \epsilon)\, H(q, p) + \epsilon\, H(u, p)
              = (1 - \epsilon)\, H(q, p) + \epsilon \big(\mathrm{KL}(u \,\|\, p) + \log C\big)

    Szegedy et al. (2016), section 7; seed deck 000 ("How does KD help?") writes it with the
    weight on the labels called ``alpha = 1 - eps``. It equals :func:`distillation_loss` with a
    uniform teacher, ``alpha = eps`` and ``T = 1``, plus the constant ``eps * log C`` (Yuan et al. 2020).
    Averaged over rows.
    """
    _check_logits("logits", logits)
    _check_targets(targets, logits)
    eps = _check_unit_interval("epsilon", epsilon)
    c = logits.shape[-1]
    log_p = F.log_softmax(logits.reshape(-1, c), dim=-1)
    nll = -log_p.gather(1, targets.reshape(-1, 1)).squeeze(1)  # H(q, p) per row
    uniform_ce = -log_p.mean(dim=-1)  # H(u, p) per row
    return ((1.0 - eps) * nll + eps * uniform_ce).mean()


def virtual_teacher_probs(targets: torch.Tensor, num_classes: int, correct_prob: float = 0.9) -> torch.Tensor:
    r"""The hand-designed "virtual teacher" of teacher-free KD (Yuan et al. 2020, eq. 9).

    .. math:: p^d(k) = a \text{ if } k = y, \quad \frac{1 - a}{C - 1} \text{ otherwise}

    with ``a = correct_prob`` (the paper uses ``a >= 0.9``): a teacher that is always right and
    spreads the rest of its mass uniformly. Returns ``[..., C]`` probabilities.
    """
    if not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    a = _check_unit_interval("correct_prob", correct_prob)
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor of class indices, got {type(targets).__name__}")
    _check_target_indices(targets, tuple(targets.shape), num_classes)
    probs = torch.full((*targets.shape, num_classes), (1.0 - a) / (num_classes - 1), device=targets.device)
    return probs.scatter(-1, targets.unsqueeze(-1), a)


def virtual_teacher_loss(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.5,
    temperature: float = 1.0,
    correct_prob: float = 0.9,
) -> torch.Tensor:
    r"""Teacher-free KD with a virtual teacher (Tf-KD\ :sub:`reg`, Yuan et al. 2020, eq. 10).

    .. math:: \mathcal{L} = (1 - \alpha)\, \mathrm{CE}(z_s, y) + \alpha\, T^2\,
              \mathrm{KL}\big(p^d(T) \,\|\, p^s(T)\big), \qquad p^d(T) \propto (p^d)^{1/T}

    ``p^d`` is :func:`virtual_teacher_probs`. We soften it as a distribution (its log-probabilities
    play the role of logits), so ``T = 1`` uses ``p^d`` itself. (The authors' code applies a softmax
    to ``p^d / T`` instead, which is much flatter; the idea is the same.) The other teacher-free
    variant, Tf-KD\ :sub:`self`, is :func:`distillation_loss` with a trained copy of the student as
    the teacher: see :mod:`kdedu.methods.teacher_free`.
    """
    _check_logits("student_logits", student_logits)
    _check_targets(targets, student_logits)
    a = _check_unit_interval("alpha", alpha)
    t = _check_temperature(temperature)
    c = student_logits.shape[-1]
    teacher_logits = virtual_teacher_probs(targets, c, correct_prob).log().to(student_logits)
    ce = F.cross_entropy(student_logits.reshape(-1, c), targets.reshape(-1))
    return (1.0 - a) * ce + a * kd_loss(student_logits, teacher_logits, t)


# --------------------------------------------------------------------------------------------
# Annealing KD (Jafari et al. 2021; seed deck 000, "Training: Annealing KD")
# --------------------------------------------------------------------------------------------
def annealing_phi(T: int, tau_max: int) -> float:
    r"""The annealing factor of stage I: :math:`\Phi(T) = 1 - (T - 1) / \tau_{max}`, integers ``1 <= T <= tau_max``.

    ``T = tau_max`` (the first epochs) gives the smallest factor ``1/tau_max``, a heavily damped, soft
    teacher; ``T = 1`` (the last epochs of stage I) gives 1, the teacher's logits themselves.
    Jafari et al. (2021), "Annealing Knowledge Distillation", eq. 4; seed deck 000.
    """
    for name, v in (("T", T), ("tau_max", tau_max)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an integer, got {type(v).__name__}")
    if tau_max < 1:
        raise ValueError(f"tau_max must be an integer >= 1, got {tau_max}")
    if not 1 <= T <= tau_max:
        raise ValueError(f"T must be an integer in [1, tau_max={tau_max}], got {T}")
    return 1.0 - (T - 1) / tau_max


def annealing_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, phi: float) -> torch.Tensor:
    r"""Stage I of Annealing KD: regress the student's logits on the teacher's, scaled by ``phi``.

    .. math:: \mathcal{L}^{Annealing}_{KD} = \frac{1}{N C} \sum_{n, i} \big(z^s_{n,i} - \Phi(T)\, z^t_{n,i}\big)^2

    The deck writes the squared L2 norm :math:`\|z_s - \Phi(T) z_t\|_2^2`; kdedu averages over
    elements (like :func:`logit_mse`), which only rescales the learning rate. ``phi`` usually comes
    from :func:`annealing_phi`; ``phi = 1`` is :func:`logit_mse`. Jafari et al. (2021), eq. 3.
    """
    _check_pair(student_logits, teacher_logits)
    if isinstance(phi, bool) or not isinstance(phi, numbers.Real):
        raise TypeError(f"phi must be a finite number, got {type(phi).__name__}")
    if not math.isfinite(phi):
        raise ValueError(f"phi must be a finite number, got {phi!r}")
    return F.mse_loss(student_logits, phi * teacher_logits, reduction="mean")


# ============================================================================================
# Layer losses for transformers (Part III): DistilBERT, PKD, TinyBERT, CKD, ALP-KD
# ============================================================================================
# Hidden states are ``[..., H]`` float tensors: (B, L, H) token states or (B, H) [CLS] vectors. A list
# of layers is a sequence of such tensors, e.g. ``outputs.hidden_states`` of a transformers model
# (index 0 = the embedding output, index k = the output of layer k). Names in the seed deck 000's
# tables: "RKD" there is *regular* KD (Hinton's kd_loss on the logits), not relational KD (Park et al.
# 2019, which matches distances between examples); the losses below match *intermediate* layers.
# Like every loss above, they are pure functions; a learned projection is passed in, never created.
__all__ += [
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
    t = _check_temperature(temperature)
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
        _check_logits("mlm_logits", mlm_logits)
        if not isinstance(mlm_labels, torch.Tensor) or mlm_labels.is_floating_point():
            raise TypeError("mlm_labels must be an integer tensor of token/class ids (ignore_index to skip)")
        if tuple(mlm_labels.shape) != tuple(mlm_logits.shape[:-1]):
            raise ValueError(f"mlm_labels must have shape {tuple(mlm_logits.shape[:-1])} (mlm_logits without "
                             f"the class dimension), got {tuple(mlm_labels.shape)}")
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
