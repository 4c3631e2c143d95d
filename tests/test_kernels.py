"""Tests of kdedu.kernels: the fused KD loss and the fused linear KD loss, on CPU.

Two parts:

* in this process: the chunked PyTorch path that CPU tensors use (against a float64 reference and finite
  differences), masks, padded vocabularies, extreme logits and temperatures, the custom operators
  (``opcheck``, ``torch.compile``), double backward, the memory bound of the chunked path, validation, and
  an ahead-of-time compilation of the Triton kernels for sm_80/sm_90 (no GPU needed: Triton ships ptxas);
* in a subprocess with ``TRITON_INTERPRET=1`` (it must be set before Triton is imported, and the pytest
  workers import it without): the Triton kernel itself, run by Triton's interpreter on the CPU, on small
  cases that still take every path (one block, many blocks, many rows per program). The subprocess runs
  this file as a script: ``TRITON_INTERPRET=1 python tests/test_kernels.py GROUP`` prints one JSON line.

Tolerances: float32 logits, compared with the float64 loss of the same values: relative 1e-5 on the loss
(1e-4 with logits of size 1e4), relative 1e-4 plus absolute 1e-5 * max(T, 1) on the gradients (plus
1e-7 * max|t - s| on the teacher's, a difference of terms of that size). bfloat16/float16: the kernel
computes in float32 and only rounds its outputs, so the loss is within half an ulp (2**-8 bf16, 2**-11
fp16, relative) of the float64 value of the rounded inputs, and the gradient, rounded twice (stored in the
forward pass, stored scaled in the backward pass), within twice that. In Triton's interpreter the
float32 -> bf16 store truncates instead of rounding (a GPU rounds to nearest): 2**-6 there.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kdedu import kernels, losses
from kdedu.kernels import fused_kd_loss, fused_linear_kd_loss
from kdedu.kernels import ops as kops
from kdedu.kernels.reference import kd_rows_reference

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]


# ------------------------------------------------------------------------------------------------
# references and helpers (shared by the in-process tests and the interpreter subprocess)
# ------------------------------------------------------------------------------------------------
def logits(n, v, scale=3.0, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, v, generator=g, dtype=torch.float64)).to(dtype)


def reference(s, t, T, reduction="batchmean", keep=None):
    """The KD loss and its gradients in float64 by autograd through kdedu.losses.kd_loss, on kept rows."""
    s64 = s.detach().double().requires_grad_(True)
    t64 = t.detach().double().requires_grad_(True)
    if keep is None:
        loss = losses.kd_loss(s64, t64, T, reduction)
    else:
        rows = losses.kd_loss(s64[keep], t64[keep], T, "none")
        full = torch.zeros(s.shape[0], dtype=torch.float64).index_put((keep,), rows)
        loss = {"none": full, "sum": rows.sum(), "batchmean": rows.sum() / max(int(keep.sum()), 1)}[reduction]
    gs, gt = torch.autograd.grad(loss.sum(), (s64, t64), allow_unused=True)
    return loss.detach(), gs, gt


def run_fused(s, t, T, reduction="batchmean", **kw):
    s = s.detach().clone().requires_grad_(True)
    t = t.detach().clone().requires_grad_(True)
    loss = fused_kd_loss(s, t, T, reduction, **kw)
    gs, gt = torch.autograd.grad(loss.sum(), (s, t))
    return loss.detach(), gs, gt


def assert_close(name, got, expected, rtol, atol):
    got, expected = got.double(), expected.double()
    if not torch.allclose(got, expected, rtol=rtol, atol=atol, equal_nan=False):
        err = (got - expected).abs().max().item() if got.shape == expected.shape else "shape"
        raise AssertionError(f"{name}: max error {err} (rtol={rtol}, atol={atol})")


def check_against_reference(s, t, T, reduction="batchmean", keep_rows=None, **kw):
    """fused_kd_loss vs the float64 reference, with the tolerances of the module docstring."""
    keep = kw.get("mask") if keep_rows is None else keep_rows
    loss, gs, gt = run_fused(s, t, T, reduction, **kw)
    r_loss, r_gs, r_gt = reference(s, t, T, reduction, keep)
    big = max(s.abs().max().item(), 1.0) >= 1e3
    if s.dtype == torch.float32:
        rtol, g_rtol, g_atol = (1e-4 if big else 1e-5), 1e-4, 1e-5 * max(T, 1.0)
    else:
        # one rounding of the float32 result for the loss (half an ulp); the gradient is rounded twice:
        # when the forward pass stores it, and when the backward pass stores it scaled
        rtol = 2.0**-8 if s.dtype == torch.bfloat16 else 2.0**-11
        g_rtol = 2 * rtol
        if s.dtype == torch.bfloat16 and kernels.backend(s) == "triton-interpreter":
            g_rtol = 2.0**-6  # the interpreter's float32 -> bf16 store truncates (a GPU rounds to nearest)
        g_atol = 1e-6 * max(T, 1.0)
    # d/dt = T p_t (log p_t - log p_s - KL) is a difference of terms of size |t - s| (T (b - a) = t - s):
    # its float32 rounding error scales with that, not with the result (exactly 0 for a one-hot teacher)
    spread = (t.double() - s.double()).abs().nan_to_num(0.0, 0.0, 0.0).max().item()
    assert loss.dtype == s.dtype
    assert_close("loss", loss, r_loss, rtol, 1e-6 * max(T * T, 1.0))
    assert_close("grad student", gs, r_gs, g_rtol, g_atol)
    assert_close("grad teacher", gt, r_gt, g_rtol, g_atol + 1e-7 * spread)
    return f"loss {float(loss.double().sum()):.6g}"


# ------------------------------------------------------------------------------------------------
# the chunked PyTorch path (what CPU tensors use)
# ------------------------------------------------------------------------------------------------
def test_cpu_tensors_use_the_pytorch_path():
    assert kernels.backend(torch.zeros(2, 3)) == "pytorch"
    assert kernels.backend(torch.zeros(2, 3, dtype=torch.float64)) == "pytorch"
    assert isinstance(kernels.triton_status(), str)


@pytest.mark.parametrize("v", [1, 7, 37, 1000, 4099])
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
def test_matches_float64_reference(v, reduction):
    s, t = logits(6, v, seed=1), logits(6, v, seed=2)
    check_against_reference(s, t, 2.0, reduction)


def test_leading_dims_and_non_contiguous_logits():
    s, t = logits(24, 50, seed=3).reshape(2, 3, 4, 50), logits(24, 50, seed=4).reshape(2, 3, 4, 50)
    for a, b in ((s, t), (s.transpose(0, 1), t.transpose(0, 1)), (s[..., ::2], t[..., ::2])):
        got = fused_kd_loss(a, b, 3.0, "none")
        assert got.shape == a.shape[:-1]
        assert_close("per-row loss", got, losses.kd_loss(a.double(), b.double(), 3.0, "none"), 1e-5, 1e-6)


@pytest.mark.parametrize("T", [0.1, 1.0, 4.0, 100.0])
def test_temperatures(T):
    s, t = logits(5, 33, seed=5), logits(5, 33, seed=6)
    check_against_reference(s, t, T)


@pytest.mark.parametrize("T", [0.1, 1.0, 100.0])
def test_logits_up_to_1e4(T):
    s, t = logits(4, 64, scale=4e3, seed=7).clamp(-1e4, 1e4), logits(4, 64, scale=4e3, seed=8).clamp(-1e4, 1e4)
    s[0, 0], t[1, 3] = 1e4, -1e4
    check_against_reference(s, t, T)
    loss = fused_kd_loss(s, t, T)
    assert torch.isfinite(loss)


def test_one_row_and_one_class():
    check_against_reference(logits(1, 13, seed=9), logits(1, 13, seed=10), 2.0)
    loss, gs, _ = run_fused(logits(4, 1), logits(4, 1, seed=3), 2.0)  # one class: p = 1, KL = 0
    assert loss.item() == 0.0 and gs.abs().max().item() == 0.0


def _edge_shapes():
    """1-D logits (one row, no batch dimension) and zero rows: the same results as kd_loss."""
    for shape in ((7,), (0, 5), (2, 0, 5)):
        s = torch.randn(*shape, requires_grad=True)
        t = torch.randn(*shape)
        for reduction in ("batchmean", "sum", "none"):
            got, want = fused_kd_loss(s, t, 2.0, reduction), losses.kd_loss(s, t, 2.0, reduction)
            assert got.shape == want.shape, (shape, reduction)
            assert_close(f"loss {shape} {reduction}", got, want, 1e-5, 1e-6)
        (g,) = torch.autograd.grad(fused_kd_loss(s, t, 2.0), s)
        (g_want,) = torch.autograd.grad(losses.kd_loss(s, t, 2.0), s)
        assert_close(f"grad {shape}", g, g_want, 1e-4, 1e-6)
    return "1-D and empty logits"


def test_one_dimensional_and_empty_logits():
    _edge_shapes()


def test_gradcheck_finite_differences():
    s = logits(3, 11, seed=11, dtype=torch.float64).requires_grad_(True)
    t = logits(3, 11, seed=12, dtype=torch.float64).requires_grad_(True)
    keep = torch.tensor([True, False, True])
    for kw in ({}, {"mask": keep}):
        def fn(a, b, kw=kw):
            return fused_kd_loss(a, b, 1.7, **kw)

        assert torch.autograd.gradcheck(fn, (s, t))
        assert torch.autograd.gradgradcheck(fn, (s, t))


def test_masked_rows_labels_and_ignore_index():
    s, t = logits(6, 20, seed=13), logits(6, 20, seed=14)
    mask = torch.tensor([True, False, True, True, False, True])
    s[1], t[4] = float("nan"), float("-inf")  # skipped rows may hold anything
    for reduction in ("batchmean", "sum", "none"):
        check_against_reference(s, t, 2.0, reduction, mask=mask)
    labels = torch.tensor([3, -100, 5, 0, -100, 1])
    check_against_reference(s, t, 2.0, keep_rows=mask, labels=labels)
    both = torch.tensor([True, True, False, True, True, True])
    check_against_reference(s, t, 2.0, keep_rows=mask & both, labels=labels, mask=both)


def test_all_rows_masked():
    s, t = logits(4, 9), logits(4, 9, seed=1)
    mask = torch.zeros(4, dtype=torch.bool)
    for reduction in ("batchmean", "sum"):
        loss, gs, gt = run_fused(s, t, 2.0, reduction, mask=mask)
        assert loss.item() == 0.0 and gs.abs().max().item() == 0.0 and gt.abs().max().item() == 0.0


def test_padded_vocabulary_with_minus_inf():
    real, padded = 40, 64
    s, t = logits(5, padded, seed=15), logits(5, padded, seed=16)
    s[:, real:], t[:, real:] = float("-inf"), float("-inf")
    loss, gs, gt = run_fused(s, t, 2.0)
    r_loss, r_gs, r_gt = reference(s[:, :real], t[:, :real], 2.0)
    assert_close("loss", loss, r_loss, 1e-5, 1e-6)
    assert_close("grad student (real classes)", gs[:, :real], r_gs, 1e-4, 1e-5)
    assert_close("grad teacher (real classes)", gt[:, :real], r_gt, 1e-4, 1e-5)
    assert gs[:, real:].abs().max().item() == 0.0 and gt[:, real:].abs().max().item() == 0.0
    # the teacher alone puts -inf on some classes (a filtered teacher): those terms contribute 0
    t2 = logits(5, padded, seed=17)
    t2[:, :10] = float("-inf")
    check_against_reference(logits(5, padded, seed=18), t2, 1.5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(dtype):
    s, t = logits(6, 300, seed=19, dtype=dtype), logits(6, 300, seed=20, dtype=dtype)
    check_against_reference(s, t, 2.0)


def test_chunked_reference_is_chunk_independent():
    s, t = logits(10, 30, seed=21), logits(10, 30, seed=22)
    keep = torch.arange(10) % 3 != 0
    whole = kd_rows_reference(s, t, keep, 2.0, True, True)
    chunked = kd_rows_reference(s, t, keep, 2.0, True, True, chunk_rows=3)
    for a, b in zip(whole, chunked, strict=True):
        assert torch.equal(a, b)


class _Allocations(TorchDispatchMode):
    """Records (op, dtype, numel) of every tensor an operator returns."""

    def __init__(self):
        super().__init__()
        self.outputs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(x, torch.Tensor):
                self.outputs.append((func.overloadpacket.__name__, x.dtype, x.numel()))
        return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cpu_path_never_allocates_a_full_float32_copy(dtype):
    n, v, chunk = 64, 300, 8
    s, t = logits(n, v, dtype=dtype), logits(n, v, seed=1, dtype=dtype)
    with _Allocations() as watch:
        kd_rows_reference(s, t, None, 2.0, True, True, chunk_rows=chunk)
    wide = [o for o in watch.outputs if o[1] in (torch.float32, torch.float64) and o[2] > chunk * v]
    if dtype == torch.bfloat16:  # the gradients are bf16: no float32 tensor beyond one chunk at all
        assert not wide, wide
    else:  # float32: only the two gradients themselves (allocated once, then filled chunk by chunk)
        assert [o[0] for o in wide] == ["empty_like", "empty_like"], wide
    assert any(o[1] == torch.float32 and o[2] == chunk * v for o in watch.outputs), "it did not chunk"


def test_fused_linear_never_builds_full_logits():
    n, hs, ht, v, chunk = 64, 8, 6, 300, 8
    xs, ws = logits(n, hs, 1.0, 1, torch.bfloat16), logits(v, hs, 0.3, 2, torch.bfloat16)
    xt, wt = logits(n, ht, 1.0, 3, torch.bfloat16), logits(v, ht, 0.3, 4, torch.bfloat16)
    with _Allocations() as watch:
        kops.linear_kd_impl(xs, ws, xt, wt, None, 2.0, chunk, True, True, False, False)
    assert max(o[2] for o in watch.outputs) <= max(chunk * v, v * hs, n * hs)
    assert all(o[2] < n * v for o in watch.outputs)


# ------------------------------------------------------------------------------------------------
# the fused linear loss
# ------------------------------------------------------------------------------------------------
def _linear_inputs(n, hs, ht, v, dtype, seed=0):
    xs, ws = logits(n, hs, 1.0, seed, dtype), logits(v, hs, 0.5, seed + 1, dtype)
    xt, wt = logits(n, ht, 1.0, seed + 2, dtype), logits(v, ht, 0.5, seed + 3, dtype)
    return [x.requires_grad_(True) for x in (xs, ws, xt, wt)]


def _unfused_linear(xs, ws, xt, wt, T, mask=None, reduction="batchmean"):
    zs, zt = xs.double() @ ws.double().T, xt.double() @ wt.double().T
    if mask is not None:
        rows = losses.kd_loss(zs[mask], zt[mask], T, "none")
        return rows.sum() / (max(int(mask.sum()), 1) if reduction == "batchmean" else 1)
    return losses.kd_loss(zs, zt, T, reduction)


@pytest.mark.parametrize("chunk", [3, 1024])
def test_fused_linear_matches_unfused(chunk):
    inputs = _linear_inputs(10, 16, 12, 37, torch.float32)
    mask = torch.tensor([True] * 7 + [False] * 3)
    for kw in ({}, {"mask": mask}):
        for reduction in ("batchmean", "sum"):
            got = fused_linear_kd_loss(*inputs, temperature=2.0, chunk_size=chunk, reduction=reduction, **kw)
            want = _unfused_linear(*inputs, 2.0, kw.get("mask"), reduction)
            assert_close("loss", got, want, 1e-5, 1e-6)
            g_got = torch.autograd.grad(got, inputs)
            g_want = torch.autograd.grad(want, inputs)
            for name, a, b in zip(("h_s", "W_s", "h_t", "W_t"), g_got, g_want, strict=True):
                assert a.dtype == torch.float32
                assert_close(f"grad {name}", a, b, 1e-4, 1e-5)


def test_fused_linear_bf16_and_frozen_teacher():
    xs, ws, xt, wt = _linear_inputs(12, 16, 8, 40, torch.bfloat16, seed=5)
    xt, wt = xt.detach(), wt.detach()
    got = fused_linear_kd_loss(xs, ws, xt, wt, temperature=1.5, chunk_size=5)
    want = _unfused_linear(xs, ws, xt, wt, 1.5)
    assert got.dtype == torch.bfloat16
    assert_close("loss", got, want, 2.0**-7, 1e-4)
    # the chunk's logits are bf16 matmul outputs (rounded, unlike the float64 reference's): compare the
    # gradients normwise, within 2**-6
    for name, a, b in zip(("h_s", "W_s"), torch.autograd.grad(got, (xs, ws)),
                          torch.autograd.grad(want, (xs, ws)), strict=True):
        assert a.dtype == torch.bfloat16
        rel = ((a.double() - b).norm() / b.norm()).item()
        assert rel < 2.0**-6, f"grad {name}: normwise relative error {rel:.3g}"


def test_fused_linear_rejects_double_backward_and_bad_input():
    xs, ws, xt, wt = _linear_inputs(4, 6, 6, 9, torch.float32)
    (g,) = torch.autograd.grad(fused_linear_kd_loss(xs, ws, xt, wt), xs)
    assert g.shape == xs.shape
    with pytest.raises(RuntimeError, match="differentiated twice"):
        (g,) = torch.autograd.grad(fused_linear_kd_loss(xs, ws, xt, wt), xs, create_graph=True)
    with pytest.raises(ValueError, match="chunk_size"):
        fused_linear_kd_loss(xs, ws, xt, wt, chunk_size=0)
    with pytest.raises(ValueError, match="reduction"):
        fused_linear_kd_loss(xs, ws, xt, wt, reduction="none")
    with pytest.raises(ValueError, match="student_hidden"):
        fused_linear_kd_loss(xs[:, :5], ws, xt, wt)
    with pytest.raises(ValueError, match="vocabulary"):
        fused_linear_kd_loss(xs, ws, xt, wt[:5])
    with pytest.raises(ValueError, match="leading"):
        fused_linear_kd_loss(xs, ws, xt[:3], wt)
    with pytest.raises(TypeError, match="same dtype"):
        fused_linear_kd_loss(xs, ws.double(), xt, wt)


# ------------------------------------------------------------------------------------------------
# custom operators, torch.compile, double backward
# ------------------------------------------------------------------------------------------------
def test_opcheck_custom_ops():
    s = logits(6, 21, seed=23).requires_grad_(True)
    t = logits(6, 21, seed=24)
    t_grad = logits(6, 21, seed=25).requires_grad_(True)
    keep = torch.tensor([True, False, True, True, False, True])
    for args in ((s, t, None, 2.0, True, False, True), (s, t, keep, 0.5, True, False, False),
                 (s, t_grad, keep, 3.0, True, True, True)):
        torch.library.opcheck(torch.ops.kdedu.kd_rows.default, args)
    torch.library.opcheck(torch.ops.kdedu.scale_rows.default, (logits(5, 7), torch.rand(5)))
    xs, ws, xt, wt = _linear_inputs(7, 5, 4, 11, torch.float32)
    torch.library.opcheck(torch.ops.kdedu.linear_kd.default, (xs, ws, xt, wt, None, 2.0, 3, True, True, True, True))


def test_torch_compile_gives_the_same_value_and_gradient():
    s, t = logits(8, 37, seed=26).requires_grad_(True), logits(8, 37, seed=27)
    mask = torch.tensor([True, True, False, True, True, True, False, True])
    compiled = torch.compile(lambda a, b, m: fused_kd_loss(a, b, 2.0, mask=m), backend="aot_eager", fullgraph=True)
    got = compiled(s, t, mask)
    (g_got,) = torch.autograd.grad(got, s)
    want = fused_kd_loss(s, t, 2.0, mask=mask)
    (g_want,) = torch.autograd.grad(want, s)
    assert torch.equal(got, want) and torch.equal(g_got, g_want)


def test_double_backward_matches_kd_loss():
    s, t = logits(5, 17, seed=28).requires_grad_(True), logits(5, 17, seed=29).requires_grad_(True)
    w = logits(5, 17, seed=30)
    results = []
    for fn in (fused_kd_loss, losses.kd_loss):
        (g,) = torch.autograd.grad(fn(s, t, 3.0), s, create_graph=True)
        results.append(torch.autograd.grad((g * w).sum(), (s, t)))
    for a, b in zip(*results, strict=True):
        assert_close("second derivative", a, b, 1e-4, 1e-6)
    with pytest.raises(RuntimeError, match="double_backward=False"):
        (g,) = torch.autograd.grad(fused_kd_loss(s, t, 3.0, double_backward=False), s, create_graph=True)
    (g,) = torch.autograd.grad(fused_kd_loss(s, t, 3.0, double_backward=False), s)  # a first derivative is fine
    assert torch.isfinite(g).all()


def test_no_grad_forward_only():
    s, t = logits(4, 10).requires_grad_(True), logits(4, 10, seed=1)
    with torch.no_grad():
        loss = fused_kd_loss(s, t, 2.0)
    assert not loss.requires_grad
    assert_close("loss", loss, losses.kd_loss(s.double(), t.double(), 2.0), 1e-5, 1e-7)


# ------------------------------------------------------------------------------------------------
# validation: kd_loss's errors, plus mask/labels
# ------------------------------------------------------------------------------------------------
def test_bad_input_raises_clear_errors():
    s, t = logits(3, 5), logits(3, 5, seed=1)
    with pytest.raises(ValueError, match="class counts"):
        fused_kd_loss(s, t[:, :4])
    with pytest.raises(ValueError, match="shapes"):
        fused_kd_loss(s, t[:2])
    with pytest.raises(ValueError, match="temperature"):
        fused_kd_loss(s, t, 0.0)
    with pytest.raises(ValueError, match="reduction"):
        fused_kd_loss(s, t, 1.0, "mean")
    with pytest.raises(TypeError, match="floating-point"):
        fused_kd_loss(s.long(), t.long())
    with pytest.raises(TypeError, match="mask"):
        fused_kd_loss(s, t, mask=torch.ones(3))
    with pytest.raises(ValueError, match="mask"):
        fused_kd_loss(s, t, mask=torch.ones(4, dtype=torch.bool))
    with pytest.raises(TypeError, match="labels"):
        fused_kd_loss(s, t, labels=torch.ones(3))
    with pytest.raises(ValueError, match="labels"):
        fused_kd_loss(s, t, labels=torch.ones(2, dtype=torch.long))


class _LooksLikeCuda(torch.Tensor):
    """A CPU tensor that reports is_cuda = True: enough to test kd_loss's dispatch without a GPU."""

    @property
    def is_cuda(self):
        return True


def test_kd_loss_dispatches_cuda_tensors_to_the_fused_loss(monkeypatch):
    calls = []

    def spy(s, t, temperature, reduction, mask=None):
        calls.append((type(s).__name__, temperature, reduction, mask))
        return torch.tensor(0.0)

    monkeypatch.setattr(kernels, "fused_kd_loss", spy)
    s, t = logits(3, 5), logits(3, 5, seed=1)
    losses.kd_loss(s, t, 2.0)  # CPU: the eager formula, as before
    assert calls == []
    losses.kd_loss(s.as_subclass(_LooksLikeCuda), t.as_subclass(_LooksLikeCuda), 3, "sum")
    assert calls == [("_LooksLikeCuda", 3.0, "sum", None)]
    keep = torch.tensor([True, False, True])
    losses.kd_loss(s.as_subclass(_LooksLikeCuda), t.as_subclass(_LooksLikeCuda), 2.0, mask=keep)
    assert calls[-1][-1] is keep  # the mask is passed on
    with pytest.raises(ValueError, match="temperature"):  # validation still comes first
        losses.kd_loss(s.as_subclass(_LooksLikeCuda), t.as_subclass(_LooksLikeCuda), -1.0)


def test_kernels_env_override(monkeypatch):
    monkeypatch.setenv("KDEDU_KERNELS", "pytorch")
    assert kernels.backend(torch.zeros(1, 2)) == "pytorch"


# ------------------------------------------------------------------------------------------------
# the Triton kernels compile for real GPUs (ahead of time, no GPU needed)
# ------------------------------------------------------------------------------------------------
def test_triton_kernels_compile_for_sm80_and_sm90():
    triton = pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("TRITON_INTERPRET is set in this process")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kdedu.kernels import triton_kd

    common = {"n_rows": "i32", "n_cols": "i32", "s_stride": "i32", "t_stride": "i32", "gs_stride": "i32",
              "gt_stride": "i32", "inv_temp": "fp32", "temp": "fp32"}
    variants = [("bf16", 1, 4096, False, 90, True), ("fp32", 16, 16, True, 90, False),
                ("fp16", 2, 1024, False, 80, True)]
    for dt, block_n, block_v, single, arch, grad_t in variants:
        sig = {"s_ptr": f"*{dt}", "t_ptr": f"*{dt}", "keep_ptr": "*i8", "loss_ptr": "*fp32", "gs_ptr": f"*{dt}",
               "gt_ptr": f"*{dt}", **common, **dict.fromkeys(
                   ("HAS_KEEP", "GRAD_S", "GRAD_T", "BLOCK_N", "BLOCK_V", "SINGLE_BLOCK"), "constexpr")}
        const = {"HAS_KEEP": True, "GRAD_S": True, "GRAD_T": grad_t, "BLOCK_N": block_n, "BLOCK_V": block_v,
                 "SINGLE_BLOCK": single}
        try:
            compiled = triton.compile(ASTSource(fn=triton_kd._kd_fwd_bwd_kernel, signature=sig, constexprs=const),
                                      target=GPUTarget("cuda", arch, 32), options={"num_warps": 8})
        except Exception as err:  # a Triton build without its bundled ptxas/LLVM: nothing to check here
            if "ptxas" in str(err).lower() and "not found" in str(err).lower():
                pytest.skip(f"Triton cannot compile ahead of time here: {err}")
            raise
        assert "cubin" in compiled.asm
    sig = {"g_ptr": "*bf16", "scale_ptr": "*fp32", "out_ptr": "*bf16", "n_rows": "i32", "n_cols": "i32",
           "g_stride": "i32", "out_stride": "i32", "BLOCK_N": "constexpr", "BLOCK_V": "constexpr"}
    compiled = triton.compile(ASTSource(fn=triton_kd._scale_rows_kernel, signature=sig,
                                        constexprs={"BLOCK_N": 1, "BLOCK_V": 4096}),
                              target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
    assert "cubin" in compiled.asm


# ------------------------------------------------------------------------------------------------
# the Triton kernel in Triton's interpreter (a subprocess with TRITON_INTERPRET=1)
# ------------------------------------------------------------------------------------------------
CASES: dict[str, tuple[str, object]] = {}


def case(group: str):
    def deco(fn):
        CASES[fn.__name__] = (group, fn)
        return fn
    return deco


def _blocks(block_n=None, block_v=None):
    from kdedu.kernels import triton_kd
    return triton_kd.forced_blocks(block_n, block_v)


@case("a")
def below_one_block_many_rows_per_program():
    out = []
    for v in (1, 10, 37):
        s, t = logits(5, v, seed=v), logits(5, v, seed=v + 1)
        for reduction in ("batchmean", "sum", "none"):
            out.append(check_against_reference(s, t, 2.0, reduction))
    return "; ".join(out)


@case("a")
def one_dimensional_and_empty_logits():
    return _edge_shapes()


@case("a")
def many_blocks_forced_small():
    with _blocks(2, 16):  # V = 100: 7 blocks of 16, 2 rows per program, last block partial
        return check_against_reference(logits(3, 100, seed=31), logits(3, 100, seed=32), 2.0)


@case("a")
def one_row():
    with _blocks(None, 16):
        return check_against_reference(logits(1, 50, seed=33), logits(1, 50, seed=34), 1.0)


@case("a")
def masks_labels_and_all_masked():
    s, t = logits(5, 40, seed=35), logits(5, 40, seed=36)
    mask = torch.tensor([True, False, True, False, True])
    s[1] = float("nan")
    with _blocks(2, 16):
        a = check_against_reference(s, t, 2.0, mask=mask)
        b = check_against_reference(s, t, 2.0, "none", mask=mask)
        c = check_against_reference(s, t, 2.0, keep_rows=torch.tensor([True, False, False, True, True]),
                                    labels=torch.tensor([1, -100, -100, 3, 4]))
        loss, gs, gt = run_fused(logits(3, 40), logits(3, 40, seed=1), 2.0, mask=torch.zeros(3, dtype=torch.bool))
    assert loss.item() == 0.0 and gs.abs().max().item() == 0.0 and gt.abs().max().item() == 0.0
    return f"{a}; {b}; {c}; all masked: 0"


@case("a")
def padded_vocabulary_minus_inf():
    real, padded = 40, 70  # with blocks of 16, the last two blocks are entirely padding
    s, t = logits(3, padded, seed=37), logits(3, padded, seed=38)
    s[:, real:], t[:, real:] = float("-inf"), float("-inf")
    with _blocks(2, 16):
        loss, gs, gt = run_fused(s, t, 2.0)
    r_loss, r_gs, r_gt = reference(s[:, :real], t[:, :real], 2.0)
    assert_close("loss", loss, r_loss, 1e-5, 1e-6)
    assert_close("grad student", gs[:, :real], r_gs, 1e-4, 1e-5)
    assert_close("grad teacher", gt[:, :real], r_gt, 1e-4, 1e-5)
    assert gs[:, real:].abs().max().item() == 0.0 and gt[:, real:].abs().max().item() == 0.0
    # -inf in the FIRST blocks (the running maximum starts at -inf for two blocks), teacher only
    t2, s2 = logits(3, padded, seed=39), logits(3, padded, seed=40)
    t2[:, :32] = float("-inf")
    with _blocks(2, 16):
        return check_against_reference(s2, t2, 1.5)


@case("b")
def extreme_logits_and_temperatures():
    out = []
    s = logits(3, 48, scale=4e3, seed=41).clamp(-1e4, 1e4)
    t = logits(3, 48, scale=4e3, seed=42).clamp(-1e4, 1e4)
    s[0, 0], t[1, 5] = 1e4, -1e4
    with _blocks(2, 16):
        for T in (0.1, 1.0, 100.0):
            out.append(check_against_reference(s, t, T))
        for T in (0.1, 100.0):
            out.append(check_against_reference(logits(3, 48, seed=43), logits(3, 48, seed=44), T))
    return "; ".join(out)


@case("b")
def bf16_and_fp16():
    out = []
    for dtype in (torch.bfloat16, torch.float16):
        s, t = logits(3, 100, seed=45, dtype=dtype), logits(3, 100, seed=46, dtype=dtype)
        with _blocks(2, 32):
            out.append(check_against_reference(s, t, 2.0))
        out.append(check_against_reference(s, t, 3.0))  # default blocks: one block per row
    return "; ".join(out)


@case("b")
def directional_finite_difference():
    s, t = logits(3, 60, seed=47), logits(3, 60, seed=48)
    d = logits(3, 60, 1.0, seed=49)
    eps = 1e-2
    with _blocks(2, 16):
        _, gs, _ = run_fused(s, t, 2.0)
        up = fused_kd_loss(s + eps * d, t, 2.0).double()
        down = fused_kd_loss(s - eps * d, t, 2.0).double()
    fd = ((up - down) / (2 * eps)).item()
    analytic = (gs.double() * d.double()).sum().item()
    assert math.isclose(fd, analytic, rel_tol=2e-3, abs_tol=1e-5), (fd, analytic)
    return f"finite difference {fd:.6g} vs gradient {analytic:.6g}"


@case("b")
def scale_rows_kernel():
    from kdedu.kernels import triton_kd
    scale = torch.rand(5, generator=torch.Generator().manual_seed(0))
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        g = logits(5, 70, seed=50, dtype=dtype)
        with _blocks(2, 16):
            out = triton_kd.scale_rows_triton(g, scale)
        want = g.float() * scale[:, None]  # float32 math, then rounded to the gradient's dtype
        if dtype == torch.bfloat16:  # the interpreter's float32 -> bf16 store truncates: 1 ulp
            assert_close("bf16 scaled gradient", out, want, 2.0**-7, 0.0)
        else:
            assert torch.equal(out, want.to(dtype)), dtype
    return "float32 and float16 exact, bf16 within 1 ulp"


@case("b")
def fused_linear_in_the_interpreter():
    inputs = _linear_inputs(6, 8, 6, 40, torch.float32, seed=51)
    with _blocks(2, 16):
        got = fused_linear_kd_loss(*inputs, temperature=2.0, chunk_size=4)
        g_got = torch.autograd.grad(got, inputs)
    want = _unfused_linear(*inputs, 2.0)
    assert_close("loss", got, want, 1e-5, 1e-6)
    for name, a, b in zip(("h_s", "W_s", "h_t", "W_t"), g_got, torch.autograd.grad(want, inputs), strict=True):
        assert_close(f"grad {name}", a, b, 1e-4, 1e-5)
    return f"loss {got.item():.6g}"


@case("b")
def dispatch_and_compile():
    assert kernels.backend(torch.zeros(2, 2)) == "triton-interpreter", kernels.backend(torch.zeros(2, 2))
    assert kernels.backend(torch.zeros(2, 2, dtype=torch.float64)) == "pytorch"
    s, t = logits(4, 30, seed=52).requires_grad_(True), logits(4, 30, seed=53)
    compiled = torch.compile(lambda a, b: fused_kd_loss(a, b, 2.0), backend="aot_eager", fullgraph=True)
    got = compiled(s, t)
    (g,) = torch.autograd.grad(got, s)
    r_loss, r_gs, _ = reference(s, t, 2.0)
    assert_close("loss", got, r_loss, 1e-5, 1e-6)
    assert_close("grad", g, r_gs, 1e-4, 1e-5)
    return kernels.triton_status()


def run_group(cases: dict, group: str) -> dict:
    """Run every case of ``group`` (in the interpreter subprocess), recording each outcome instead of stopping."""
    import time

    results = {}
    for name, (g, fn) in cases.items():
        if g != group:
            continue
        start = time.perf_counter()
        try:
            detail, ok = fn(), True
        except Exception as err:  # report every case, do not stop at the first failure
            detail, ok = f"{type(err).__name__}: {err}", False
        results[name] = {"ok": ok, "detail": str(detail)[:500], "seconds": round(time.perf_counter() - start, 2)}
    return results


def check_in_interpreter(script: Path, cases: dict, group: str) -> None:
    """Run ``script GROUP`` with ``TRITON_INTERPRET=1`` and assert that every case of ``group`` passed there."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "KDEDU_KERNELS": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), group], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, \
        f"the interpreter subprocess failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    results = json.loads(lines[-1])
    expected = sorted(n for n, (g, _) in cases.items() if g == group)
    assert sorted(results) == expected
    failed = {name: r["detail"] for name, r in results.items() if not r["ok"]}
    assert not failed, "Triton interpreter cases failed:\n" + "\n".join(f"  {k}: {v}" for k, v in failed.items())


def interpreter_main(cases: dict) -> None:
    """The interpreter subprocess: print the JSON results of the group named on the command line."""
    import warnings

    # numpy warns when the interpreted kernel forms a nan (inf - inf, 0 * inf) or takes log(0), even in a
    # branch that tl.where then discards: the kernels are written to never do that, so treat it as a failure
    warnings.simplefilter("error", RuntimeWarning)
    torch.set_num_threads(1)
    print(json.dumps(run_group(cases, sys.argv[1] if len(sys.argv) > 1 else "a")))


@pytest.mark.parametrize("group", ["a", "b"])
def test_triton_kernel_in_the_interpreter(group):
    check_in_interpreter(HERE, CASES, group)


if __name__ == "__main__":  # the interpreter subprocess: TRITON_INTERPRET=1 python tests/test_kernels.py GROUP
    interpreter_main(CASES)
