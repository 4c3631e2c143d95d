"""Losses on logits: Hinton's KD, logit regression, label smoothing, teacher-free KD, Annealing KD.

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
