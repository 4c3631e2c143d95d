"""Other divergences between a student's and a teacher's soft targets: reverse KL, GKD's generalized
Jensen-Shannon divergence, and KD from the teacher's top-k logits only.

Same conventions as :mod:`kdedu.losses.logits` (logits ``[..., C]``, every leading dimension a row,
``mask``, ``reduction``). :func:`~kdedu.losses.kd_loss` is the forward KL ``KL(p_t || p_s)``: it makes
the student cover every class the teacher gives mass to ("mean-seeking"). The reverse KL makes it put
its mass where the teacher's is ("mode-seeking"); the generalized JSD moves between the two with ``beta``.
"""

from __future__ import annotations

import math

import torch

from kdedu._validate import (
    check_indices,
    check_logits,
    check_mask,
    check_reduction,
    check_temperature,
    check_unit_interval,
)
from kdedu.losses.logits import _check_kd_args, _kl_rows, _log_soft, _reduce

__all__ = ["reverse_kd_loss", "generalized_jsd_loss", "topk_kd_loss"]


def reverse_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""The reverse KD loss: ``T**2`` times the KL divergence from the student's to the teacher's soft targets.

    .. math:: \mathcal{L}_{RKL} = T^2 \, \mathrm{KL}\big(p^s(T) \,\|\, p^t(T)\big)
              = T^2 \sum_i p^s_i(T) \big(\log p^s_i(T) - \log p^t_i(T)\big)

    The reverse KL is mode-seeking: a student that cannot represent every mode of the teacher puts its
    mass on the teacher's largest ones instead of spreading it (MiniLLM, Gu et al. 2024, for language
    models; GKD, Agarwal et al. 2024). ``T**2`` as in :func:`~kdedu.losses.kd_loss`. Classes where the
    student's probability is 0 contribute 0.

    **CUDA tensors go to the fused kernel**, as in :func:`~kdedu.losses.kd_loss`:
    :func:`kdedu.kernels.fused_reverse_kd_loss` (the KD kernel with the two logits exchanged; same value
    and gradients to float tolerance). CPU tensors use the code below.
    """
    t, mask = _check_kd_args(student_logits, teacher_logits, temperature, reduction, mask)
    if student_logits.is_cuda:
        from kdedu.kernels import fused_reverse_kd_loss  # lazy: kdedu.kernels does not import kdedu.losses

        return fused_reverse_kd_loss(student_logits, teacher_logits, t, reduction, mask=mask)
    log_p_s, log_p_t = _log_soft(student_logits, t, mask), _log_soft(teacher_logits, t, mask)
    return _reduce(t * t * _kl_rows(log_p_s, log_p_t), reduction, mask)


def _finite(log_p: torch.Tensor) -> torch.Tensor:
    """``-inf`` log-probabilities (padded classes) clamped to the dtype's lowest float: ``logaddexp`` of two
    ``-inf`` has a nan gradient (``exp(-inf + inf)``), of two huge negatives a zero one."""
    return log_p.clamp(min=torch.finfo(log_p.dtype).min)


def generalized_jsd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""GKD's generalized Jensen-Shannon divergence between the teacher's and the student's soft targets.

    .. math:: \mathrm{JSD}_\beta = \beta\, \mathrm{KL}\big(p^t \,\|\, m\big)
              + (1 - \beta)\, \mathrm{KL}\big(p^s \,\|\, m\big), \qquad m = \beta\, p^t + (1 - \beta)\, p^s

    with ``p = softmax(z / T)``, for ``0 < beta < 1``. Agarwal et al. (2024), "On-Policy Distillation of
    Language Models: Learning from Self-Generated Mistakes" (GKD), eq. 1, in the convention of TRL's
    ``GKDTrainer.generalized_jsd_loss``: ``beta`` weighs the teacher's term, the logits are divided by ``T``
    and there is **no** ``T**2`` factor. The formula itself vanishes at both ends (``m`` becomes one of the
    two distributions); like TRL, ``beta = 0`` is defined as the forward KL ``KL(p_t || p_s)``
    (:func:`~kdedu.losses.kd_loss` divided by ``T**2``) and ``beta = 1`` as the reverse KL
    ``KL(p_s || p_t)`` (:func:`reverse_kd_loss` divided by ``T**2``): the limits of ``JSD_beta / beta`` as
    ``beta -> 0`` and of ``JSD_beta / (1 - beta)`` as ``beta -> 1`` (Huszár 2015). ``beta = 0.5`` is the
    symmetric JSD, bounded by ``log 2``.

    Computed in log space: ``log m = logsumexp(log beta + log p_t, log(1 - beta) + log p_s)``.

    **CUDA tensors go to the fused kernel**, as in :func:`~kdedu.losses.kd_loss`:
    :func:`kdedu.kernels.fused_generalized_jsd_loss` (same value and gradients to float tolerance). CPU
    tensors use the code below.
    """
    b = check_unit_interval("beta", beta)
    t, mask = _check_kd_args(student_logits, teacher_logits, temperature, reduction, mask)
    if student_logits.is_cuda:
        from kdedu.kernels import fused_generalized_jsd_loss  # lazy: kdedu.kernels does not import kdedu.losses

        return fused_generalized_jsd_loss(student_logits, teacher_logits, b, t, reduction, mask=mask)
    log_p_s, log_p_t = _log_soft(student_logits, t, mask), _log_soft(teacher_logits, t, mask)
    if b == 0.0:
        per_row = _kl_rows(log_p_t, log_p_s)
    elif b == 1.0:
        per_row = _kl_rows(log_p_s, log_p_t)
    else:
        log_m = torch.logaddexp(_finite(log_p_t) + math.log(b), _finite(log_p_s) + math.log1p(-b))
        per_row = b * _kl_rows(log_p_t, log_m) + (1.0 - b) * _kl_rows(log_p_s, log_m)
    return _reduce(per_row, reduction, mask)


def topk_kd_loss(
    student_logits: torch.Tensor,
    teacher_topk_logits: torch.Tensor,
    teacher_topk_indices: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""The KD loss against a teacher of which only the top-k logits per row were kept.

    .. math:: \mathcal{L} = T^2 \sum_{j=1}^{k} q_j \big(\log q_j - \log p^s_{\mathrm{idx}_j}(T)\big),
              \qquad q = \mathrm{softmax}(z^t_{\mathrm{top}k} / T)

    ``teacher_topk_logits`` and ``teacher_topk_indices`` are ``[..., k]`` (what ``torch.topk`` returns for
    the teacher's ``[..., C]`` logits; indices in a row should be distinct): ``q`` is the teacher's softmax
    renormalised over its ``k`` kept classes, ``p^s`` the student's softmax over all ``C`` classes. Storing
    ``k`` logits per token instead of the whole vocabulary is how teacher outputs are cached for language
    models; the truncation biases the target towards the teacher's top classes (Anshumann et al. 2025,
    "Sparse Logit Sampling"). With ``k = C`` it is :func:`~kdedu.losses.kd_loss`. ``T**2`` as there.
    """
    check_logits("student_logits", student_logits)
    check_logits("teacher_topk_logits", teacher_topk_logits)
    lead, c, k = tuple(student_logits.shape[:-1]), student_logits.shape[-1], teacher_topk_logits.shape[-1]
    if tuple(teacher_topk_logits.shape[:-1]) != lead or k > c:
        raise ValueError(f"teacher_topk_logits must have shape [..., k] with the leading shape {lead} of "
                         f"student_logits and k <= C = {c}, got {tuple(teacher_topk_logits.shape)}")
    check_indices("teacher_topk_indices", teacher_topk_indices, tuple(teacher_topk_logits.shape), c,
                  shape_of="the shape of teacher_topk_logits", device=student_logits.device)
    t = check_temperature(temperature)
    check_reduction(reduction)
    mask = check_mask(mask, lead, device=student_logits.device)
    log_q = _log_soft(teacher_topk_logits, t, mask)                                     # (..., k)
    log_p_s = _log_soft(student_logits, t, mask).gather(-1, teacher_topk_indices.long())  # (..., k)
    return _reduce(t * t * _kl_rows(log_q, log_p_s), reduction, mask)
