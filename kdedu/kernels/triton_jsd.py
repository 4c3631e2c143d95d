"""The fused generalized JSD (GKD) as one Triton kernel: value and gradient for a block of rows in one program.

The same design as the KD kernel of :mod:`kdedu.kernels.triton_kd` (whose tiles, block sizes and loading
it reuses), with one more sweep. With ``a = s / T``, ``b = t / T`` and ``m = beta p_b + (1 - beta) p_a``::

    JSD_beta = beta KL(p_b || m) + (1 - beta) KL(p_a || m)
    d JSD / d s = (1 - beta) / T * p_a * (rho - K_a),   rho = log p_a - log m,   K_a = KL(p_a || m)
    d JSD / d t = beta / T * p_b * (sigma - K_b),        sigma = log p_b - log m, K_b = KL(p_b || m)

(derivation: :mod:`kdedu.kernels.reference`). The forward and reverse KL fit in one online sweep because
their log-ratio ``log p_b - log p_a`` is a difference of logits minus a per-row constant: the running sums
can be shifted when a maximum grows. ``log m_i = log(beta e^{b_i} / d_b + (1 - beta) e^{a_i} / d_a)`` mixes
the two rows *inside* a logarithm: it is known only once both normalisers are final, so no running sum gives
``sum p_a log m``. The kernel therefore sweeps each row three times:

1. the online log-sum-exp of ``a`` and of ``b`` (the running maxima and sums of the KD kernel, no ``acc``);
2. ``log m`` and the two divergences ``K_a``, ``K_b`` (the loss);
3. the gradient, written in the forward pass as in the KD kernel (it needs ``K_a`` and ``K_b``, one number
   per row each, which exist only after sweep 2).

When a row fits in one tile (``V <= BLOCK_V``) it is loaded once and the three sweeps run on registers;
otherwise each logit is read three times instead of the KD kernel's two. Everything is float32.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kdedu.kernels.triton_kd import _load_block, _on_device, block_sizes

__all__ = ["jsd_rows_triton"]


@triton.jit
def _lse_update(m, d, x):
    """Fold one tile ``x`` (BLOCK_N, BLOCK_V) into the running ``m = max x``, ``d = sum exp(x - m)``."""
    m_new = tl.maximum(m, tl.max(x, axis=1))
    c = tl.where(m_new == float("-inf"), 0.0, m_new)  # all -inf so far: shift by 0, never -inf - (-inf)
    d = d * tl.exp(m - c) + tl.sum(tl.exp(x - c[:, None]), axis=1)
    return m_new, d


@triton.jit
def _jsd_terms(a, b, m_a, log_d_a, m_b, log_d_b, log_beta, log_1m_beta):
    """For one tile: ``p_a``, ``p_b``, ``rho = log p_a - log m`` and ``sigma = log p_b - log m``, the last two
    0 where their probability is 0 (a ``-inf`` logit: ``x log x -> 0``)."""
    log_pa = (a - m_a[:, None]) - log_d_a[:, None]
    log_pb = (b - m_b[:, None]) - log_d_b[:, None]
    # log m = logaddexp(log beta + log p_b, log(1 - beta) + log p_a) = hi + log(1 + exp(lo - hi)); where
    # both are -inf (a padded class) hi is replaced by 0, so log m = 0 there, finite and never used
    x_a = log_pa + log_1m_beta
    x_b = log_pb + log_beta
    hi = tl.maximum(x_a, x_b)
    lo = tl.minimum(x_a, x_b)
    hi = tl.where(hi == float("-inf"), 0.0, hi)
    log_m = hi + tl.log(1.0 + tl.exp(lo - hi))
    p_a = tl.exp(log_pa)
    p_b = tl.exp(log_pb)
    rho = tl.where(p_a > 0, log_pa - log_m, 0.0)
    sigma = tl.where(p_b > 0, log_pb - log_m, 0.0)
    return p_a, p_b, rho, sigma


@triton.jit
def _store_jsd_grads(p_a, p_b, rho, sigma, k_a, k_b, m, out_m, gs_ptrs, gt_ptrs, scale_s, scale_t,
                     GRAD_S: tl.constexpr, GRAD_T: tl.constexpr):
    """Write ``(1 - beta)/T p_a (rho - K_a)`` and ``beta/T p_b (sigma - K_b)`` for one tile."""
    if GRAD_S:
        g_s = tl.where(m, scale_s * p_a * (rho - k_a[:, None]), 0.0)
        tl.store(gs_ptrs, g_s.to(gs_ptrs.dtype.element_ty), mask=out_m)
    if GRAD_T:
        g_t = tl.where(m, scale_t * p_b * (sigma - k_b[:, None]), 0.0)
        tl.store(gt_ptrs, g_t.to(gt_ptrs.dtype.element_ty), mask=out_m)


@triton.jit
def _jsd_fwd_bwd_kernel(
    s_ptr, t_ptr, keep_ptr, loss_ptr, gs_ptr, gt_ptr,
    n_rows, n_cols, s_stride, t_stride, gs_stride, gt_stride,
    inv_temp, beta, log_beta, log_1m_beta,
    HAS_KEEP: tl.constexpr, GRAD_S: tl.constexpr, GRAD_T: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, SINGLE_BLOCK: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)             # (BLOCK_N,)
    in_range = rows < n_rows
    if HAS_KEEP:
        keep = (tl.load(keep_ptr + rows, mask=in_range, other=0) != 0) & in_range
    else:
        keep = in_range
    rows64 = rows.to(tl.int64)                                            # N * V may exceed 2**31
    s_rows = s_ptr + rows64 * s_stride
    t_rows = t_ptr + rows64 * t_stride
    gs_rows = gs_ptr + rows64 * gs_stride
    gt_rows = gt_ptr + rows64 * gt_stride
    offs = tl.arange(0, BLOCK_V)

    # ---- sweep 1: the normalisers of a = s/T and b = t/T (online log-sum-exp) -----------------------
    m_a = tl.full([BLOCK_N], float("-inf"), tl.float32)
    d_a = tl.zeros([BLOCK_N], tl.float32)
    m_b = tl.full([BLOCK_N], float("-inf"), tl.float32)
    d_b = tl.zeros([BLOCK_N], tl.float32)
    if SINGLE_BLOCK:  # the whole row fits in one tile: load it once, keep it for sweeps 2 and 3
        m = keep[:, None] & (offs < n_cols)[None, :]
        a, b = _load_block(s_rows, t_rows, offs, m, inv_temp)
        m_a, d_a = _lse_update(m_a, d_a, a)
        m_b, d_b = _lse_update(m_b, d_b, b)
    else:
        for start in range(0, n_cols, BLOCK_V):
            cols = start + offs
            m = keep[:, None] & (cols < n_cols)[None, :]
            a, b = _load_block(s_rows, t_rows, cols, m, inv_temp)
            m_a, d_a = _lse_update(m_a, d_a, a)
            m_b, d_b = _lse_update(m_b, d_b, b)
    # skipped rows (keep = False) have d = 0, m = -inf: give them harmless values; their outputs are 0
    log_d_a = tl.log(tl.where(keep, d_a, 1.0))
    log_d_b = tl.log(tl.where(keep, d_b, 1.0))
    m_a = tl.where(keep, m_a, 0.0)
    m_b = tl.where(keep, m_b, 0.0)

    # ---- sweep 2: log m, K_a = KL(p_a || m) and K_b = KL(p_b || m) ----------------------------------
    k_a = tl.zeros([BLOCK_N], tl.float32)
    k_b = tl.zeros([BLOCK_N], tl.float32)
    if SINGLE_BLOCK:
        p_a, p_b, rho, sigma = _jsd_terms(a, b, m_a, log_d_a, m_b, log_d_b, log_beta, log_1m_beta)
        k_a += tl.sum(p_a * rho, axis=1)
        k_b += tl.sum(p_b * sigma, axis=1)
    else:
        for start in range(0, n_cols, BLOCK_V):
            cols = start + offs
            m = keep[:, None] & (cols < n_cols)[None, :]
            a, b = _load_block(s_rows, t_rows, cols, m, inv_temp)
            p_a, p_b, rho, sigma = _jsd_terms(a, b, m_a, log_d_a, m_b, log_d_b, log_beta, log_1m_beta)
            k_a += tl.sum(p_a * rho, axis=1)
            k_b += tl.sum(p_b * sigma, axis=1)
    k_a = tl.where(keep, k_a, 0.0)
    k_b = tl.where(keep, k_b, 0.0)
    tl.store(loss_ptr + rows, beta * k_b + (1.0 - beta) * k_a, mask=in_range)

    # ---- sweep 3: the gradient, written now; the backward pass only scales it ----------------------
    if GRAD_S or GRAD_T:
        scale_s = (1.0 - beta) * inv_temp
        scale_t = beta * inv_temp
        if SINGLE_BLOCK:
            out_m = in_range[:, None] & (offs < n_cols)[None, :]
            _store_jsd_grads(p_a, p_b, rho, sigma, k_a, k_b, m, out_m, gs_rows[:, None] + offs[None, :],
                             gt_rows[:, None] + offs[None, :], scale_s, scale_t, GRAD_S, GRAD_T)
        else:
            for start in range(0, n_cols, BLOCK_V):
                cols = start + offs
                col_ok = (cols < n_cols)[None, :]
                m = keep[:, None] & col_ok
                a, b = _load_block(s_rows, t_rows, cols, m, inv_temp)
                p_a, p_b, rho, sigma = _jsd_terms(a, b, m_a, log_d_a, m_b, log_d_b, log_beta, log_1m_beta)
                _store_jsd_grads(p_a, p_b, rho, sigma, k_a, k_b, m, in_range[:, None] & col_ok,
                                 gs_rows[:, None] + cols[None, :], gt_rows[:, None] + cols[None, :],
                                 scale_s, scale_t, GRAD_S, GRAD_T)


def jsd_rows_triton(student: torch.Tensor, teacher: torch.Tensor, keep: torch.Tensor | None, beta: float,
                    temperature: float, grad_student: bool = True, grad_teacher: bool = False):
    """Launch the fused JSD kernel on ``[N, V]`` logits (unit stride along V), ``0 < beta < 1``. Same
    contract as :func:`kdedu.kernels.reference.jsd_rows_reference`; the loss is float32."""
    n, v = student.shape
    loss = torch.empty(n, dtype=torch.float32, device=student.device)
    grad_s = torch.empty_like(student) if grad_student else student.new_empty(0)
    grad_t = torch.empty_like(teacher) if grad_teacher else teacher.new_empty(0)
    if n == 0:
        return loss, grad_s, grad_t
    block_n, block_v, num_warps = block_sizes(n, v)
    keep_arg = keep.to(torch.int8) if keep is not None else loss  # any pointer: unused without HAS_KEEP
    grid = (triton.cdiv(n, block_n),)
    with _on_device(student):
        _jsd_fwd_bwd_kernel[grid](
            student, teacher, keep_arg, loss,
            grad_s if grad_student else student, grad_t if grad_teacher else teacher,
            n, v, student.stride(0), teacher.stride(0),
            grad_s.stride(0) if grad_student else 0, grad_t.stride(0) if grad_teacher else 0,
            1.0 / temperature, beta, math.log(beta), math.log1p(-beta),
            HAS_KEEP=keep is not None, GRAD_S=grad_student, GRAD_T=grad_teacher,
            BLOCK_N=block_n, BLOCK_V=block_v, SINGLE_BLOCK=block_v >= v, num_warps=num_warps,
        )
    return loss, grad_s, grad_t
