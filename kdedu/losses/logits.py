"""Losses on logits: Hinton's KD, logit regression, label smoothing, teacher-free KD, Annealing KD.

Conventions (DESIGN.md, "Contracts"):

* logits are ``[..., C]``: the last dimension holds the classes and every leading dimension is a
  row (a batch, or batch x sequence);
* ``mask`` (optional) is a bool tensor of the rows' shape: rows where it is False contribute nothing,
  whatever their logits hold (even ``-inf`` or ``nan``: they are replaced before any softmax);
* ``temperature`` is written ``T`` in the book; the "KD loss" always includes the ``T**2`` factor;
* ``reduction`` is ``"batchmean"`` (sum over the kept rows divided by their number; 0, with a zero
  gradient, when no row is kept), ``"sum"`` or ``"none"`` (one value per row, shaped like the leading
  dimensions, 0 for masked rows);
* bad input raises ``TypeError``/``ValueError`` naming the argument (:mod:`kdedu._validate`); nothing is
  silently broadcast.

The row helpers at the top (``_log_soft``, ``_kl_rows``, ``_reduce``) are shared with
:mod:`kdedu.losses.divergences`.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from kdedu._validate import (
    check_indices,
    check_integer,
    check_logits,
    check_mask,
    check_pair,
    check_reduction,
    check_targets,
    check_temperature,
    check_unit_interval,
)

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


# --------------------------------------------------------------------------------------------
# rows: masking, per-row KL, reduction
# --------------------------------------------------------------------------------------------
def _drop(mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """``x`` ``[..., C]`` with the rows that ``mask`` drops set to 0, so whatever they held (-inf, nan) never
    reaches a softmax, a loss or a gradient (``torch.where``, not a product: ``0 * nan`` is nan)."""
    return x if mask is None else torch.where(mask.unsqueeze(-1), x, x.new_zeros(()))


def _log_soft(logits: torch.Tensor, temperature: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``log softmax(z / T)`` over the classes, masked rows replaced first (see :func:`_drop`)."""
    return F.log_softmax(_drop(mask, logits) / temperature, dim=-1)


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``KL(p || q) = sum_i p_i (log p_i - log q_i)`` per row. Classes with ``p_i = 0`` (a ``-inf`` logit in a
    padded vocabulary) add 0 (``x log x -> 0``): the log-ratio is masked, not the product, so no ``0 * inf``
    is ever formed, in the forward or the backward pass."""
    p = log_p.exp()
    return (p * torch.where(p > 0, log_p - log_q, torch.zeros_like(p))).sum(dim=-1)


def _reduce(per_row: torch.Tensor, reduction: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``"none"``: ``per_row`` with masked rows 0; ``"sum"``; ``"batchmean"``: sum / number of kept rows."""
    if mask is not None:
        per_row = torch.where(mask, per_row, per_row.new_zeros(()))
    if reduction == "none":
        return per_row
    total = per_row.sum()
    if reduction == "sum":
        return total
    kept = mask.sum().clamp(min=1) if mask is not None else max(per_row.numel(), 1)  # no host sync
    return total / kept


def _check_kd_args(student_logits, teacher_logits, temperature, reduction, mask):
    """The checks every student-vs-teacher loss shares; returns ``(T, mask)``."""
    check_pair(student_logits, teacher_logits)
    t = check_temperature(temperature)
    check_reduction(reduction)
    return t, check_mask(mask, tuple(student_logits.shape[:-1]), device=student_logits.device)


def _label_rows(logits, targets, ignore_index, mask) -> torch.Tensor:
    """The rows a hard-label loss uses (bool, the rows' shape): ``targets != ignore_index``, and ``mask``."""
    ignore_index = check_integer("ignore_index", ignore_index)
    check_targets(targets, logits, ignore_index)
    mask = check_mask(mask, tuple(logits.shape[:-1]), device=logits.device)
    keep = targets != ignore_index
    return keep if mask is None else keep & mask


def _nll_rows(log_p: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``-log p[y]`` per row; rows not kept give 0 (``ignore_index`` is not a class: replaced by 0 first)."""
    y = torch.where(keep, targets, torch.zeros_like(targets)).long()
    return -log_p.gather(-1, y.unsqueeze(-1)).squeeze(-1)


# --------------------------------------------------------------------------------------------
# Hinton et al. 2015
# --------------------------------------------------------------------------------------------
def soft_targets(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    r"""Soft targets: the softmax of the logits at temperature ``T``.

    .. math:: p_i(T) = \frac{\exp(z_i / T)}{\sum_j \exp(z_j / T)}

    Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network", eq. 1.
    ``T -> 0`` gives the one-hot argmax, ``T -> inf`` the uniform distribution.
    """
    check_logits("logits", logits)
    t = check_temperature(temperature)
    return torch.softmax(logits / t, dim=-1)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""The KD loss: ``T**2`` times the KL divergence from the teacher's to the student's soft targets.

    .. math:: \mathcal{L}_{KD} = T^2 \, \mathrm{KL}\big(p^t(T) \,\|\, p^s(T)\big)
              = T^2 \sum_i p^t_i(T) \big(\log p^t_i(T) - \log p^s_i(T)\big)

    Hinton et al. (2015), section 2: the soft-target gradients scale as ``1/T**2``, so the loss is
    multiplied by ``T**2`` to keep its contribution comparable across temperatures. Terms where the
    teacher gives a class probability 0 (e.g. a ``-inf`` logit in a padded vocabulary) contribute 0.
    ``mask`` and ``reduction``: see the module docstring.

    **CUDA tensors go to the fused kernel.** When ``student_logits`` is on a CUDA device, ``kd_loss``
    returns :func:`kdedu.kernels.fused_kd_loss` with the same arguments (chapter 19; imported inside this
    function, so that :mod:`kdedu.kernels` never needs :mod:`kdedu.losses`). The value and the gradients
    (to both logits, second-order ones included) are this formula's to float tolerance. For float32,
    float16 and bfloat16 logits one Triton kernel per block of rows computes them in float32, without ever
    storing the ``[N, C]`` probabilities; float64 logits, or ``KDEDU_KERNELS=pytorch`` in the environment
    (read by :func:`kdedu.kernels.backend` at each call), use the kernels' chunked PyTorch reference
    instead: this formula, a block of rows at a time. CPU tensors always use the code below.
    """
    t, mask = _check_kd_args(student_logits, teacher_logits, temperature, reduction, mask)
    if student_logits.is_cuda:
        from kdedu.kernels import fused_kd_loss  # lazy: kdedu.kernels does not import kdedu.losses

        return fused_kd_loss(student_logits, teacher_logits, t, reduction, mask=mask)
    log_p_s, log_p_t = _log_soft(student_logits, t, mask), _log_soft(teacher_logits, t, mask)
    return _reduce(t * t * _kl_rows(log_p_t, log_p_s), reduction, mask)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.5,
    temperature: float = 4.0,
    ignore_index: int = -100,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Hinton's mixture of the hard-label and the soft-target loss.

    .. math:: \mathcal{L} = (1 - \alpha)\, \mathrm{CE}(z_s, y) + \alpha\, T^2\,
              \mathrm{KL}\big(p^t(T) \,\|\, p^s(T)\big)

    Hinton et al. (2015); the form on the MATE-KD slide of seed deck 000. Both terms are averaged over
    the same rows: those whose target is not ``ignore_index`` (the Hugging Face ``-100`` for padding) and,
    if ``mask`` is given, where it is True. So ``alpha=0`` is plain cross-entropy and ``alpha=1`` is
    :func:`kd_loss` on those rows; with no row kept the loss is 0 (zero gradient).
    """
    check_pair(student_logits, teacher_logits)
    a = check_unit_interval("alpha", alpha)
    t = check_temperature(temperature)
    keep = _label_rows(student_logits, targets, ignore_index, mask)
    ce = _reduce(_nll_rows(_log_soft(student_logits, 1.0, keep), targets, keep), "batchmean", keep)
    return (1.0 - a) * ce + a * kd_loss(student_logits, teacher_logits, t, mask=keep)


def logit_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""Logit regression: the mean squared error over all elements (of the rows ``mask`` keeps).

    .. math:: \mathcal{L} = \frac{1}{N C} \sum_{n, i} (z^s_{n,i} - z^t_{n,i})^2

    Ba & Caruana (2014), "Do Deep Nets Really Need to be Deep?"; Bucila et al. (2006) also regress
    the ensemble's outputs. It is the ``T -> inf`` limit of :func:`kd_loss` for zero-mean logits
    (Hinton et al. 2015, section 2.1): ``kd_loss -> sum_i (z_s - z_t)_i**2 / (2 C)`` per row.
    """
    _, mask = _check_kd_args(student_logits, teacher_logits, 1.0, "batchmean", mask)
    return _reduce(_squared_error_rows(student_logits, teacher_logits, mask), "batchmean", mask)


def _squared_error_rows(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``mean_i (a_i - b_i)^2`` per row: with every row holding C elements, the batchmean of these is the
    mean over all elements of the kept rows."""
    return (_drop(mask, a) - _drop(mask, b)).pow(2).mean(dim=-1)


# --------------------------------------------------------------------------------------------
# Label smoothing and teacher-free KD (Szegedy et al. 2016; Yuan et al. 2020)
# --------------------------------------------------------------------------------------------
def label_smoothing_loss(logits: torch.Tensor, targets: torch.Tensor, epsilon: float = 0.1,
                         ignore_index: int = -100, mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""Cross-entropy with the label-smoothed target ``q' = (1 - eps) q + eps u``, ``u`` uniform.

    .. math:: H(q', p) = (1 - \epsilon)\, H(q, p) + \epsilon\, H(u, p)
              = (1 - \epsilon)\, H(q, p) + \epsilon \big(\mathrm{KL}(u \,\|\, p) + \log C\big)

    Szegedy et al. (2016), section 7; seed deck 000 ("How does KD help?") writes it with the
    weight on the labels called ``alpha = 1 - eps``. It equals :func:`distillation_loss` with a
    uniform teacher, ``alpha = eps`` and ``T = 1``, plus the constant ``eps * log C`` (Yuan et al. 2020).
    Averaged over the rows whose target is not ``ignore_index`` (and that ``mask`` keeps).
    """
    check_logits("logits", logits)
    eps = check_unit_interval("epsilon", epsilon)
    keep = _label_rows(logits, targets, ignore_index, mask)
    log_p = _log_soft(logits, 1.0, keep)
    per_row = (1.0 - eps) * _nll_rows(log_p, targets, keep) - eps * log_p.mean(dim=-1)  # H(q, p), H(u, p)
    return _reduce(per_row, "batchmean", keep)


def virtual_teacher_probs(targets: torch.Tensor, num_classes: int, correct_prob: float = 0.9) -> torch.Tensor:
    r"""The hand-designed "virtual teacher" of teacher-free KD (Yuan et al. 2020, eq. 9).

    .. math:: p^d(k) = a \text{ if } k = y, \quad \frac{1 - a}{C - 1} \text{ otherwise}

    with ``a = correct_prob`` (the paper uses ``a >= 0.9``): a teacher that is always right and
    spreads the rest of its mass uniformly. Returns ``[..., C]`` probabilities.
    """
    if not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    a = check_unit_interval("correct_prob", correct_prob)
    check_indices("targets", targets, None, num_classes)
    probs = torch.full((*targets.shape, num_classes), (1.0 - a) / (num_classes - 1), device=targets.device)
    return probs.scatter(-1, targets.unsqueeze(-1), a)


def virtual_teacher_loss(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.5,
    temperature: float = 1.0,
    correct_prob: float = 0.9,
    ignore_index: int = -100,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Teacher-free KD with a virtual teacher (Tf-KD\ :sub:`reg`, Yuan et al. 2020, eq. 10).

    .. math:: \mathcal{L} = (1 - \alpha)\, \mathrm{CE}(z_s, y) + \alpha\, T^2\,
              \mathrm{KL}\big(p^d(T) \,\|\, p^s(T)\big), \qquad p^d(T) \propto (p^d)^{1/T}

    ``p^d`` is :func:`virtual_teacher_probs`. We soften it as a distribution (its log-probabilities
    play the role of logits), so ``T = 1`` uses ``p^d`` itself. (The authors' code applies a softmax
    to ``p^d / T`` instead, which is much flatter; the idea is the same.) The other teacher-free
    variant, Tf-KD\ :sub:`self`, is :func:`distillation_loss` with a trained copy of the student as
    the teacher: see :mod:`kdedu.methods.teacher_free`. Rows are kept as in :func:`distillation_loss`.
    """
    check_logits("student_logits", student_logits)
    a = check_unit_interval("alpha", alpha)
    t = check_temperature(temperature)
    keep = _label_rows(student_logits, targets, ignore_index, mask)
    y = torch.where(keep, targets, torch.zeros_like(targets))  # ignore_index is not a class
    teacher_logits = virtual_teacher_probs(y, student_logits.shape[-1], correct_prob).log().to(student_logits)
    ce = _reduce(_nll_rows(_log_soft(student_logits, 1.0, keep), y, keep), "batchmean", keep)
    return (1.0 - a) * ce + a * kd_loss(student_logits, teacher_logits, t, mask=keep)


# --------------------------------------------------------------------------------------------
# Annealing KD (Jafari et al. 2021; seed deck 000, "Training: Annealing KD")
# --------------------------------------------------------------------------------------------
def annealing_phi(T: int, tau_max: int) -> float:
    r"""The annealing factor of stage I: :math:`\Phi(T) = 1 - (T - 1) / \tau_{max}`, integers ``1 <= T <= tau_max``.

    ``T = tau_max`` (the first epochs) gives the smallest factor ``1/tau_max``, a heavily damped, soft
    teacher; ``T = 1`` (the last epochs of stage I) gives 1, the teacher's logits themselves.
    Jafari et al. (2021), "Annealing Knowledge Distillation", eq. 4; seed deck 000.
    """
    T, tau_max = check_integer("T", T), check_integer("tau_max", tau_max)
    if tau_max < 1:
        raise ValueError(f"tau_max must be an integer >= 1, got {tau_max}")
    if not 1 <= T <= tau_max:
        raise ValueError(f"T must be an integer in [1, tau_max={tau_max}], got {T}")
    return 1.0 - (T - 1) / tau_max


def annealing_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, phi: float,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""Stage I of Annealing KD: regress the student's logits on the teacher's, scaled by ``phi``.

    .. math:: \mathcal{L}^{Annealing}_{KD} = \frac{1}{N C} \sum_{n, i} \big(z^s_{n,i} - \Phi(T)\, z^t_{n,i}\big)^2

    The deck writes the squared L2 norm :math:`\|z_s - \Phi(T) z_t\|_2^2`; kdedu averages over
    elements (like :func:`logit_mse`, over the rows ``mask`` keeps), which only rescales the learning
    rate. ``phi`` usually comes from :func:`annealing_phi`; ``phi = 1`` is :func:`logit_mse`.
    Jafari et al. (2021), eq. 3.
    """
    _, mask = _check_kd_args(student_logits, teacher_logits, 1.0, "batchmean", mask)
    if isinstance(phi, bool) or not isinstance(phi, numbers.Real):
        raise TypeError(f"phi must be a finite number, got {type(phi).__name__}")
    if not math.isfinite(phi):
        raise ValueError(f"phi must be a finite number, got {phi!r}")
    return _reduce(_squared_error_rows(student_logits, phi * teacher_logits, mask), "batchmean", mask)
