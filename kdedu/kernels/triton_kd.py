"""The fused KD loss as one Triton kernel: forward and backward for a block of rows in one program.

Imported lazily by :mod:`kdedu.kernels.ops` the first time a CUDA tensor (or, with ``TRITON_INTERPRET=1``
set before this module is imported, a CPU tensor) reaches the fused loss. Triton decides at import time
whether ``@triton.jit`` compiles for the GPU or runs in its Python interpreter: :data:`INTERPRET` records
which.

One program handles ``BLOCK_N`` rows and sweeps the vocabulary in blocks of ``BLOCK_V`` columns twice:

1. the **online softmax** (Milakov & Gimelshein 2018): running maxima ``m`` and sums ``d = sum exp(x - m)``
   for the student (``a = s / T``) and the teacher (``b = t / T``), rescaled whenever the maximum grows,
   and the running ``acc = sum exp(b - m_b) ((b - m_b) - (a - m_a))``, so that after one sweep

       KL = sum_i p_b,i (log p_b,i - log p_a,i) = acc / d_b - log d_b + log d_a;

2. the **gradient, written in the forward pass**: with both normalisers known, a second sweep writes
   ``d loss / d s = T (p_a - p_b)`` (and ``d loss / d t`` if asked). The backward pass only scales it
   by the incoming gradient (:func:`scale_rows`).

When a row fits in one tile (``V <= BLOCK_V``) it is loaded once and kept in registers for the second
sweep; otherwise each logit is read twice (the second time often from the L2 cache). The gradient is
written once. Every intermediate lives in registers, in float32 whatever the input dtype (half-precision
values are cast right after loading).
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

__all__ = ["INTERPRET", "kd_rows_triton", "scale_rows_triton", "block_sizes", "forced_blocks"]

try:  # Triton >= 3.4 reads its settings through triton.knobs; older versions read the variable directly
    from triton import knobs

    INTERPRET: bool = bool(knobs.runtime.interpret)
except ImportError:
    INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# test hook: force small blocks so that the multi-block paths run on small inputs (see forced_blocks)
_FORCED: dict[str, int | None] = {"block_n": None, "block_v": None}


@contextlib.contextmanager
def forced_blocks(block_n: int | None = None, block_v: int | None = None):
    """Within this block, launch the kernels with these block sizes (powers of two), e.g. to test the
    multi-block paths on small inputs."""
    old = dict(_FORCED)
    _FORCED.update(block_n=block_n, block_v=block_v)
    try:
        yield
    finally:
        _FORCED.update(old)


def block_sizes(n_rows: int, n_cols: int) -> tuple[int, int, int]:
    """``(BLOCK_N, BLOCK_V, num_warps)`` for a ``[n_rows, n_cols]`` problem.

    A tile of up to 4096 elements (16 KiB of float32 per operand) per sweep step: large vocabularies get
    one row per program and several column blocks; small ones (10 classes) pack many rows per program.
    The interpreter gets bigger tiles (each tile is one numpy call there, so fewer is faster).
    """
    tile = 16384 if INTERPRET else 4096
    block_v = _FORCED["block_v"] or min(triton.next_power_of_2(max(n_cols, 1)), tile)
    block_n = _FORCED["block_n"] or max(1, min(triton.next_power_of_2(max(n_rows, 1)), tile // block_v, 64))
    num_warps = 8 if block_n * block_v >= 2048 else 4
    return block_n, block_v, num_warps


@triton.jit
def _load_block(s_rows, t_rows, cols, m, inv_temp):
    """The student and teacher logits of one (BLOCK_N, BLOCK_V) tile, divided by T, in float32.
    Half precision is cast right after loading (in the interpreter, bf16 arithmetic is wrong)."""
    a = tl.load(s_rows[:, None] + cols[None, :], mask=m, other=float("-inf")).to(tl.float32) * inv_temp
    b = tl.load(t_rows[:, None] + cols[None, :], mask=m, other=float("-inf")).to(tl.float32) * inv_temp
    return a, b


@triton.jit
def _online_update(m_a, d_a, m_b, d_b, acc, a, b):
    """Fold one tile into the running state of each row:

    m = max x, d = sum exp(x - m) for x = a and x = b, and acc = sum exp(b - m_b) ((b - m_b) - (a - m_a)).

    Everything is kept relative to the running maxima, so logits of size 1e5 (1e4 at T = 0.1) lose no
    precision; when a maximum grows, the old sums are rescaled and the old log-ratios shifted.
    """
    neg_inf = float("-inf")
    m_a_new = tl.maximum(m_a, tl.max(a, axis=1))
    m_b_new = tl.maximum(m_b, tl.max(b, axis=1))
    # a row that is all -inf so far keeps m = -inf: shift it by 0 instead, never forming -inf - (-inf)
    c_a = tl.where(m_a_new == neg_inf, 0.0, m_a_new)
    c_b = tl.where(m_b_new == neg_inf, 0.0, m_b_new)
    rescale_b = tl.exp(m_b - c_b)
    # old terms (b - m_b) - (a - m_a) move by (m_a_new - m_a) - (m_b_new - m_b). They exist only once the
    # teacher has shown mass (d_b > 0, so m_b is finite); m_a = -inf there means an infinite KL, kept so
    grown_a = (d_b > 0) & (m_a_new != m_a)
    seen = d_b > 0
    grow_a = tl.where(grown_a, m_a_new - tl.where(grown_a, m_a, 0.0), 0.0)
    grow_b = tl.where(seen, m_b_new - tl.where(seen, m_b, 0.0), 0.0)
    acc = rescale_b * (acc + tl.where(seen, (grow_a - grow_b) * d_b, 0.0))
    d_a = d_a * tl.exp(m_a - c_a) + tl.sum(tl.exp(a - c_a[:, None]), axis=1)
    d_b = d_b * rescale_b
    # this tile's terms; where exp(b - m_b) = 0 (a -inf teacher logit) the term is 0, not 0 * inf
    e_b = tl.exp(b - c_b[:, None])
    live = e_b > 0
    ratio = tl.where(live, (b - c_b[:, None]) - (tl.where(live, a, 0.0) - c_a[:, None]), 0.0)
    d_b += tl.sum(e_b, axis=1)
    acc += tl.sum(e_b * ratio, axis=1)
    return m_a_new, d_a, m_b_new, d_b, acc


@triton.jit
def _store_grads(a, b, m_a, log_d_a, m_b, log_d_b, kl, m, out_m, gs_ptrs, gt_ptrs, temp,
                 GRAD_S: tl.constexpr, GRAD_T: tl.constexpr):
    """Write d loss/d s = T (p_a - p_b) and d loss/d t = T p_b (log p_b - log p_a - KL) for one tile."""
    log_pa = (a - m_a[:, None]) - log_d_a[:, None]
    log_pb = (b - m_b[:, None]) - log_d_b[:, None]
    p_b = tl.exp(log_pb)
    if GRAD_S:
        g_s = tl.where(m, temp * (tl.exp(log_pa) - p_b), 0.0)
        tl.store(gs_ptrs, g_s.to(gs_ptrs.dtype.element_ty), mask=out_m)
    if GRAD_T:
        live = p_b > 0
        ratio = tl.where(live, log_pb - tl.where(live, log_pa, 0.0), 0.0)
        g_t = tl.where(m, temp * p_b * (ratio - kl[:, None]), 0.0)
        tl.store(gt_ptrs, g_t.to(gt_ptrs.dtype.element_ty), mask=out_m)


@triton.jit
def _kd_fwd_bwd_kernel(
    s_ptr, t_ptr, keep_ptr, loss_ptr, gs_ptr, gt_ptr,
    n_rows, n_cols, s_stride, t_stride, gs_stride, gt_stride,
    inv_temp, temp,
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

    # ---- sweep 1: online log-sum-exp of a = s/T and b = t/T, and sum exp(b - m_b) (b - a) -----------
    m_a = tl.full([BLOCK_N], float("-inf"), tl.float32)
    d_a = tl.zeros([BLOCK_N], tl.float32)
    m_b = tl.full([BLOCK_N], float("-inf"), tl.float32)
    d_b = tl.zeros([BLOCK_N], tl.float32)
    acc = tl.zeros([BLOCK_N], tl.float32)
    if SINGLE_BLOCK:  # the whole row fits in one tile: load it once, keep it for the gradient
        m = keep[:, None] & (offs < n_cols)[None, :]
        a, b = _load_block(s_rows, t_rows, offs, m, inv_temp)
        m_a, d_a, m_b, d_b, acc = _online_update(m_a, d_a, m_b, d_b, acc, a, b)
    else:
        for start in range(0, n_cols, BLOCK_V):
            cols = start + offs
            m = keep[:, None] & (cols < n_cols)[None, :]
            a, b = _load_block(s_rows, t_rows, cols, m, inv_temp)
            m_a, d_a, m_b, d_b, acc = _online_update(m_a, d_a, m_b, d_b, acc, a, b)

    # KL = sum_i p_b,i ((b_i - m_b - log d_b) - (a_i - m_a - log d_a)) = acc / d_b - log d_b + log d_a.
    # Skipped rows (keep = False) have d = 0, m = -inf: give them harmless values; their outputs are 0
    d_b = tl.where(keep, d_b, 1.0)
    log_d_a = tl.log(tl.where(keep, d_a, 1.0))
    log_d_b = tl.log(d_b)
    m_a = tl.where(keep, m_a, 0.0)
    m_b = tl.where(keep, m_b, 0.0)
    kl = tl.where(keep, acc / d_b - log_d_b + log_d_a, 0.0)              # (BLOCK_N,)
    tl.store(loss_ptr + rows, kl * temp * temp, mask=in_range)

    # ---- sweep 2: the gradient, written now; the backward pass only scales it ----------------------
    if GRAD_S or GRAD_T:
        if SINGLE_BLOCK:
            out_m = in_range[:, None] & (offs < n_cols)[None, :]
            _store_grads(a, b, m_a, log_d_a, m_b, log_d_b, kl, m, out_m, gs_rows[:, None] + offs[None, :],
                         gt_rows[:, None] + offs[None, :], temp, GRAD_S, GRAD_T)
        else:
            for start in range(0, n_cols, BLOCK_V):
                cols = start + offs
                col_ok = (cols < n_cols)[None, :]
                m = keep[:, None] & col_ok
                a, b = _load_block(s_rows, t_rows, cols, m, inv_temp)
                _store_grads(a, b, m_a, log_d_a, m_b, log_d_b, kl, m, in_range[:, None] & col_ok,
                             gs_rows[:, None] + cols[None, :], gt_rows[:, None] + cols[None, :], temp,
                             GRAD_S, GRAD_T)


@triton.jit
def _scale_rows_kernel(g_ptr, scale_ptr, out_ptr, n_rows, n_cols, g_stride, out_stride,
                       BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = rows < n_rows
    m = row_ok[:, None] & (cols < n_cols)[None, :]
    rows64 = rows.to(tl.int64)
    scale = tl.load(scale_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + rows64[:, None] * g_stride + cols[None, :], mask=m, other=0.0).to(tl.float32)
    out = g * scale[:, None]
    tl.store(out_ptr + rows64[:, None] * out_stride + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=m)


def _on_device(x: torch.Tensor):
    """Launch on the tensor's GPU (Triton launches on the current device), or do nothing on the CPU."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def kd_rows_triton(student: torch.Tensor, teacher: torch.Tensor, keep: torch.Tensor | None,
                   temperature: float, grad_student: bool = True, grad_teacher: bool = False):
    """Launch the fused kernel on ``[N, V]`` logits (unit stride along V). Same contract as
    :func:`kdedu.kernels.reference.kd_rows_reference`; the loss is float32."""
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
        _kd_fwd_bwd_kernel[grid](
            student, teacher, keep_arg, loss,
            grad_s if grad_student else student, grad_t if grad_teacher else teacher,
            n, v, student.stride(0), teacher.stride(0),
            grad_s.stride(0) if grad_student else 0, grad_t.stride(0) if grad_teacher else 0,
            1.0 / temperature, temperature,
            HAS_KEEP=keep is not None, GRAD_S=grad_student, GRAD_T=grad_teacher,
            BLOCK_N=block_n, BLOCK_V=block_v, SINGLE_BLOCK=block_v >= v, num_warps=num_warps,
        )
    return loss, grad_s, grad_t


def scale_rows_triton(grad: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``grad * scale[:, None]`` in float32, stored in ``grad``'s dtype: one read and one write per element."""
    n, v = grad.shape
    out = torch.empty_like(grad)
    if grad.numel() == 0:
        return out
    block_n, block_v, num_warps = block_sizes(n, v)
    grid = (triton.cdiv(n, block_n), triton.cdiv(v, block_v))
    with _on_device(grad):
        _scale_rows_kernel[grid](grad, scale.to(torch.float32).contiguous(), out, n, v, grad.stride(0),
                                 out.stride(0), BLOCK_N=block_n, BLOCK_V=block_v, num_warps=num_warps)
    return out
