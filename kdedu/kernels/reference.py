"""The PyTorch reference of the fused losses: the same formulas as the Triton kernels, chunked over rows.

Used for CPU tensors (and wherever Triton is missing). It computes, for a ``[N, V]`` pair of logits,
the per-row KD loss and, in the same pass, its gradients, one chunk of rows at a time, so that it never
holds more than one chunk of float32 intermediates (``chunk_rows x V``), however large ``N`` is.

Per row, with ``a = s / T`` (student) and ``b = t / T`` (teacher)::

    loss = T^2 * KL(softmax(b) || softmax(a)) = T^2 * sum_i p_b,i (log p_b,i - log p_a,i)
    d loss / d s = T * (p_a - p_b)
    d loss / d t = T * p_b * (log p_b - log p_a - KL)

Terms where the teacher's probability is 0 (a ``-inf`` logit, e.g. a padded vocabulary) contribute 0.
The reverse KL ``T^2 KL(p_a || p_b)`` is this with the two logits swapped (no code of its own).

GKD's generalized Jensen-Shannon divergence (no ``T^2``), for ``0 < beta < 1``, with ``m = beta p_b +
(1 - beta) p_a``, ``rho = log p_a - log m`` and ``sigma = log p_b - log m``::

    loss = beta K_b + (1 - beta) K_a,   K_a = KL(p_a || m) = sum_i p_a,i rho_i,   K_b = KL(p_b || m)
    d loss / d s = (1 - beta) / T * p_a * (rho - K_a)
    d loss / d t = beta / T * p_b * (sigma - K_b)

(``JSD = beta sum p_b log p_b + (1 - beta) sum p_a log p_a - sum m log m``: its derivative with respect to
``p_a`` is ``(1 - beta) rho``, and the softmax's Jacobian turns a vector ``g`` into ``p_a (g - sum p_a g)``.)
"""

from __future__ import annotations

import math

import torch

__all__ = ["kd_rows_reference", "jsd_rows_reference", "jsd_rows_chunk", "scale_rows_reference",
           "chunk_rows_for", "CHUNK_ELEMENTS"]

# the float32 working set of one chunk: 2**22 elements = 16 MiB per intermediate
CHUNK_ELEMENTS = 1 << 22


def chunk_rows_for(num_cols: int, chunk_elements: int = CHUNK_ELEMENTS) -> int:
    """How many rows of ``num_cols`` columns fit in one chunk of ``chunk_elements`` elements (at least 1)."""
    return max(1, chunk_elements // max(num_cols, 1))


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32 for half-precision and float32 inputs, float64 when any input is float64."""
    return torch.float64 if any(x.dtype == torch.float64 for x in tensors) else torch.float32


def _kd_rows_chunk(s: torch.Tensor, t: torch.Tensor, keep: torch.Tensor | None, temperature: float,
                   grad_student: bool, grad_teacher: bool):
    """One chunk: ``s, t`` are ``(n, V)``; returns the ``(n,)`` losses and the ``(n, V)`` gradients (or None)."""
    cd = _compute_dtype(s, t)
    a = s.to(cd) / temperature                      # (n, V) student logits at temperature T
    b = t.to(cd) / temperature                      # (n, V) teacher
    log_pa = torch.log_softmax(a, dim=-1)           # (x - max) - log sum exp(x - max): exact for large x
    log_pb = torch.log_softmax(b, dim=-1)
    p_b = log_pb.exp()
    # p_b = 0 terms are 0 (x log x -> 0): mask the log-ratio, never form 0 * inf
    ratio = torch.where(p_b > 0, log_pb - log_pa, torch.zeros((), dtype=cd))
    kl = (p_b * ratio).sum(dim=-1)                  # (n,)
    if keep is not None:
        kl = torch.where(keep, kl, torch.zeros((), dtype=cd))
    loss = kl * (temperature * temperature)
    grad_s = grad_t = None
    if grad_student:
        grad_s = temperature * (log_pa.exp() - p_b)
    if grad_teacher:
        grad_t = temperature * p_b * (ratio - kl[:, None])
    if keep is not None:  # skipped rows: gradient 0 (their logits may be anything, even all -inf)
        grad_s = None if grad_s is None else torch.where(keep[:, None], grad_s, torch.zeros((), dtype=cd))
        grad_t = None if grad_t is None else torch.where(keep[:, None], grad_t, torch.zeros((), dtype=cd))
    return loss, grad_s, grad_t


def jsd_rows_chunk(s: torch.Tensor, t: torch.Tensor, keep: torch.Tensor | None, beta: float,
                   temperature: float, grad_student: bool, grad_teacher: bool):
    """The generalized JSD of one chunk (``0 < beta < 1``): the ``(n,)`` losses and the ``(n, V)`` gradients
    (or None), by the closed forms of the module docstring. Written with differentiable PyTorch operations
    and with skipped rows replaced before the softmax, so it also serves the double backward pass."""
    cd = _compute_dtype(s, t)
    zero = torch.zeros((), dtype=cd, device=s.device)
    a = s.to(cd) / temperature                      # (n, V) student logits at temperature T
    b = t.to(cd) / temperature                      # (n, V) teacher
    if keep is not None:  # skipped rows may hold anything (-inf, nan): replace them, so no nan appears
        a, b = torch.where(keep[:, None], a, zero), torch.where(keep[:, None], b, zero)
    log_pa, log_pb = torch.log_softmax(a, dim=-1), torch.log_softmax(b, dim=-1)
    p_a, p_b = log_pa.exp(), log_pb.exp()
    # log m = logaddexp(log beta + log p_b, log(1 - beta) + log p_a), written so that a class with
    # p_a = p_b = 0 gets a finite log m (0) instead of -inf - (-inf); its terms are masked below anyway
    x_b, x_a = log_pb + math.log(beta), log_pa + math.log1p(-beta)
    hi, lo = torch.maximum(x_a, x_b), torch.minimum(x_a, x_b)
    hi = torch.where(hi == float("-inf"), zero, hi)
    log_m = hi + torch.log1p(torch.exp(lo - hi))
    rho = torch.where(p_a > 0, log_pa - log_m, zero)    # terms with p = 0 are 0 (x log x -> 0)
    sigma = torch.where(p_b > 0, log_pb - log_m, zero)
    k_a, k_b = (p_a * rho).sum(dim=-1), (p_b * sigma).sum(dim=-1)     # KL(p_a || m), KL(p_b || m)  (n,)
    loss = beta * k_b + (1.0 - beta) * k_a
    grad_s = (1.0 - beta) / temperature * p_a * (rho - k_a[:, None]) if grad_student else None
    grad_t = beta / temperature * p_b * (sigma - k_b[:, None]) if grad_teacher else None
    if keep is not None:
        loss = torch.where(keep, loss, zero)
        grad_s = None if grad_s is None else torch.where(keep[:, None], grad_s, zero)
        grad_t = None if grad_t is None else torch.where(keep[:, None], grad_t, zero)
    return loss, grad_s, grad_t


def _by_chunks(chunk_fn, params: tuple, student: torch.Tensor, teacher: torch.Tensor, keep: torch.Tensor | None,
               grad_student: bool, grad_teacher: bool, chunk_rows: int | None):
    """Run ``chunk_fn(s, t, keep, *params, grad_student, grad_teacher)`` over chunks of rows and gather its
    outputs: ``(loss, grad_student, grad_teacher)`` as described in :func:`kd_rows_reference`."""
    n, v = student.shape
    cd = _compute_dtype(student, teacher)
    loss = torch.empty(n, dtype=cd, device=student.device)
    grad_s = torch.empty_like(student) if grad_student else student.new_empty(0)
    grad_t = torch.empty_like(teacher) if grad_teacher else teacher.new_empty(0)
    step = chunk_rows or chunk_rows_for(v)
    for i in range(0, n, step):
        j = min(i + step, n)
        k = None if keep is None else keep[i:j]
        l_c, gs_c, gt_c = chunk_fn(student[i:j], teacher[i:j], k, *params, grad_student, grad_teacher)
        loss[i:j] = l_c
        if grad_student:
            grad_s[i:j] = gs_c
        if grad_teacher:
            grad_t[i:j] = gt_c
    return loss, grad_s, grad_t


def kd_rows_reference(student: torch.Tensor, teacher: torch.Tensor, keep: torch.Tensor | None,
                      temperature: float, grad_student: bool = True, grad_teacher: bool = False,
                      chunk_rows: int | None = None):
    """Per-row KD losses of ``[N, V]`` logits and their gradients, one chunk of rows at a time.

    Returns ``(loss, grad_student, grad_teacher)``: ``loss`` is ``(N,)`` float32 (float64 for float64
    inputs), the gradients are ``[N, V]`` in the dtype of their input, or empty ``(0,)`` tensors when
    not asked for. ``keep`` (bool ``(N,)`` or None) marks the rows to use; other rows give 0.
    """
    return _by_chunks(_kd_rows_chunk, (temperature,), student, teacher, keep, grad_student, grad_teacher,
                      chunk_rows)


def jsd_rows_reference(student: torch.Tensor, teacher: torch.Tensor, keep: torch.Tensor | None, beta: float,
                       temperature: float, grad_student: bool = True, grad_teacher: bool = False,
                       chunk_rows: int | None = None):
    """Per-row generalized JSD (``0 < beta < 1``, no ``T^2``) of ``[N, V]`` logits and its gradients, one
    chunk of rows at a time; outputs as in :func:`kd_rows_reference`."""
    return _by_chunks(jsd_rows_chunk, (beta, temperature), student, teacher, keep, grad_student, grad_teacher,
                      chunk_rows)


def scale_rows_reference(grad: torch.Tensor, scale: torch.Tensor, chunk_rows: int | None = None) -> torch.Tensor:
    """``grad * scale[:, None]``, computed in float32 (or float64) and stored in ``grad``'s dtype, by chunks."""
    n, v = grad.shape
    cd = _compute_dtype(grad, scale)
    if grad.dtype == cd:
        return grad * scale.to(cd)[:, None]
    out = torch.empty_like(grad)
    step = chunk_rows or chunk_rows_for(v)
    for i in range(0, n, step):
        j = min(i + step, n)
        out[i:j] = grad[i:j].to(cd) * scale[i:j].to(cd)[:, None]
    return out
