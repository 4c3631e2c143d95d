"""Tests of the fused reverse KL and generalized JSD (kdedu.kernels.fused_reverse_kd_loss,
fused_generalized_jsd_loss), on CPU, in the same two parts as tests/test_kernels.py:

* in this process: the chunked PyTorch path that CPU tensors use, against float64 autograd through the pure
  losses (``reverse_kd_loss``, ``generalized_jsd_loss``), finite differences (gradcheck, gradgradcheck),
  TRL's ``GKDTrainer.generalized_jsd_loss`` (labels with ``-100``), known limits and symmetries of the JSD,
  the custom operator (``opcheck``, ``torch.compile``), validation, the CUDA dispatch of the two losses, and
  an ahead-of-time compilation of the JSD kernel for sm_80/sm_90;
* in a subprocess with ``TRITON_INTERPRET=1``: the Triton kernels themselves (the JSD kernel, and the KD
  kernel run with the logits exchanged for the reverse KL) on small cases that take every path.
  ``TRITON_INTERPRET=1 python tests/test_kernels_divergences.py GROUP`` prints one JSON line.

Tolerances (float32 logits against the float64 loss of the same values) are those of tests/test_kernels.py
for the reverse KL (a KD loss with the roles swapped, ``T**2`` included). The JSD has no ``T**2`` and its
gradient is of size ``1/T``: relative 1e-5 plus absolute 1e-6 on the loss, relative 1e-4 plus absolute
1e-6 on the gradients (1e-4 and 1e-5 with logits of size 1e4, whose float32 spacing is 1e-3). Half
precision: as in tests/test_kernels.py (half an ulp on the loss, twice that on the gradients, 2**-6 for
bf16 in the interpreter, whose float32 -> bf16 store truncates).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from test_kernels import _Allocations, assert_close, check_in_interpreter, interpreter_main, logits

from kdedu import kernels, losses
from kdedu.kernels import fused_generalized_jsd_loss, fused_kd_loss, fused_reverse_kd_loss
from kdedu.kernels.reference import jsd_rows_reference

HERE = Path(__file__).resolve()


# ------------------------------------------------------------------------------------------------
# references and helpers (shared by the in-process tests and the interpreter subprocess)
# ------------------------------------------------------------------------------------------------
def call(kind, fn, s, t, T, beta, reduction="batchmean", **kw):
    """``fn`` is a reverse-KL or a JSD loss (fused or pure); the JSD takes ``beta`` before ``T``."""
    return fn(s, t, T, reduction, **kw) if kind == "reverse" else fn(s, t, beta, T, reduction, **kw)


PURE = {"reverse": losses.reverse_kd_loss, "jsd": losses.generalized_jsd_loss}
FUSED = {"reverse": fused_reverse_kd_loss, "jsd": fused_generalized_jsd_loss}


def reference(kind, s, t, T, beta=0.5, reduction="batchmean", keep=None):
    """The loss and its gradients in float64, by autograd through the pure loss, on the kept rows."""
    s64 = s.detach().double().requires_grad_(True)
    t64 = t.detach().double().requires_grad_(True)
    if keep is None:
        loss = call(kind, PURE[kind], s64, t64, T, beta, reduction)
    else:
        rows = call(kind, PURE[kind], s64[keep], t64[keep], T, beta, "none")
        full = torch.zeros(s.shape[0], dtype=torch.float64).index_put((keep,), rows)
        loss = {"none": full, "sum": rows.sum(), "batchmean": rows.sum() / max(int(keep.sum()), 1)}[reduction]
    gs, gt = torch.autograd.grad(loss.sum(), (s64, t64))
    return loss.detach(), gs, gt


def run_fused(kind, s, t, T, beta=0.5, reduction="batchmean", **kw):
    s = s.detach().clone().requires_grad_(True)
    t = t.detach().clone().requires_grad_(True)
    loss = call(kind, FUSED[kind], s, t, T, beta, reduction, **kw)
    gs, gt = torch.autograd.grad(loss.sum(), (s, t))
    return loss.detach(), gs, gt


def check(kind, s, t, T, beta=0.5, reduction="batchmean", keep_rows=None, **kw):
    """The fused loss against the float64 reference, with the tolerances of the module docstring."""
    keep = kw.get("mask") if keep_rows is None else keep_rows
    loss, gs, gt = run_fused(kind, s, t, T, beta, reduction, **kw)
    r_loss, r_gs, r_gt = reference(kind, s, t, T, beta, reduction, keep)
    big = max(s.abs().max().item(), 1.0) >= 1e3
    rev = kind == "reverse"
    # the reverse KL's gradients are differences of terms of size |t - s| (its student gradient is the KD
    # loss's teacher gradient): their float32 rounding scales with that
    spread = (t.double() - s.double()).abs().nan_to_num(0.0, 0.0, 0.0).max().item() if rev else 0.0
    if s.dtype == torch.float32:
        rtol = 1e-4 if big else 1e-5
        atol = 1e-6 * max(T * T, 1.0) if rev else 1e-6
        g_rtol, g_atol = 1e-4, (1e-5 * max(T, 1.0) if rev else (1e-5 if big else 1e-6))
    else:
        rtol = 2.0**-8 if s.dtype == torch.bfloat16 else 2.0**-11
        atol = 1e-6 * max(T * T, 1.0) if rev else 1e-6
        g_rtol = 2 * rtol
        if s.dtype == torch.bfloat16 and kernels.backend(s) == "triton-interpreter":
            g_rtol = 2.0**-6  # the interpreter's float32 -> bf16 store truncates (a GPU rounds to nearest)
        g_atol = 1e-6 * max(T, 1.0) if rev else 1e-6
    assert loss.dtype == s.dtype
    assert_close(f"{kind} loss", loss, r_loss, rtol, atol)
    assert_close(f"{kind} grad student", gs, r_gs, g_rtol, g_atol + 1e-7 * spread)
    assert_close(f"{kind} grad teacher", gt, r_gt, g_rtol, g_atol + 1e-7 * spread)
    return f"{kind} loss {float(loss.double().sum()):.6g}"


def check_both(s, t, T, betas=(0.1, 0.5, 0.9), **kw) -> str:
    out = [check("reverse", s, t, T, **kw)]
    out += [check("jsd", s, t, T, beta, **kw) for beta in betas]
    return "; ".join(out)


def _edge_shapes():
    """1-D logits (one row, no batch dimension) and zero rows: the same results as the pure losses."""
    for shape in ((7,), (0, 5), (2, 0, 5)):
        s = torch.randn(*shape, requires_grad=True)
        t = torch.randn(*shape)
        for kind in ("reverse", "jsd"):
            for reduction in ("batchmean", "sum", "none"):
                got = call(kind, FUSED[kind], s, t, 2.0, 0.3, reduction)
                want = call(kind, PURE[kind], s, t, 2.0, 0.3, reduction)
                assert got.shape == want.shape, (kind, shape, reduction)
                assert_close(f"{kind} loss {shape} {reduction}", got, want, 1e-5, 1e-6)
            (g,) = torch.autograd.grad(call(kind, FUSED[kind], s, t, 2.0, 0.3), s)
            (g_want,) = torch.autograd.grad(call(kind, PURE[kind], s, t, 2.0, 0.3), s)
            assert_close(f"{kind} grad {shape}", g, g_want, 1e-4, 1e-6)
    return "1-D and empty logits"


def _beta_limits():
    """beta = 0 is KL(p_t || p_s) and beta = 1 is KL(p_s || p_t), without T^2 (values and both gradients)."""
    s, t = logits(4, 40, seed=60), logits(4, 40, seed=61)
    out = []
    for beta, pure, name in ((0.0, losses.kd_loss, "forward"), (1.0, losses.reverse_kd_loss, "reverse")):
        for T in (0.5, 2.0):
            loss, gs, gt = run_fused("jsd", s, t, T, beta)
            s64, t64 = s.double().requires_grad_(True), t.double().requires_grad_(True)
            want = pure(s64, t64, T) / (T * T)
            w_s, w_t = torch.autograd.grad(want, (s64, t64))
            assert_close(f"beta={beta} loss", loss, want.detach(), 1e-5, 1e-6)
            assert_close(f"beta={beta} grad student", gs, w_s, 1e-4, 1e-6)
            assert_close(f"beta={beta} grad teacher", gt, w_t, 1e-4, 1e-6)
        out.append(f"beta={beta:g}: {name} KL / T^2")
    return "; ".join(out)


def _masks_labels_all_masked():
    s, t = logits(5, 40, seed=35), logits(5, 40, seed=36)
    mask = torch.tensor([True, False, True, False, True])
    s[1], t[1] = float("nan"), float("-inf")  # skipped rows may hold anything
    out = []
    for reduction in ("batchmean", "sum", "none"):
        out.append(check_both(s, t, 2.0, betas=(0.3,), reduction=reduction, mask=mask))
    labels = torch.tensor([1, -100, -100, 3, 4])
    out.append(check_both(s, t, 2.0, betas=(0.7,), keep_rows=torch.tensor([True, False, False, True, True]),
                          labels=labels))
    out.append(check_both(s, t, 2.0, betas=(0.5,), keep_rows=mask & (labels != -100), labels=labels, mask=mask))
    for kind in ("reverse", "jsd"):
        loss, gs, gt = run_fused(kind, logits(3, 40), logits(3, 40, seed=1), 2.0, 0.5,
                                 mask=torch.zeros(3, dtype=torch.bool))
        assert loss.item() == 0.0 and gs.abs().max().item() == 0.0 and gt.abs().max().item() == 0.0, kind
    return "; ".join(out)


def _padded_vocabulary(real=40, padded=70):
    """-inf in both models on the padded classes: the loss on the real classes, 0 gradients on the others.
    Then -inf in the FIRST blocks (the running maxima start at -inf): the teacher alone for the JSD (a
    filtered teacher), the student alone for the reverse KL (whose classes with p_s = 0 add 0)."""
    s, t = logits(3, padded, seed=37), logits(3, padded, seed=38)
    s[:, real:], t[:, real:] = float("-inf"), float("-inf")
    for kind in ("reverse", "jsd"):
        loss, gs, gt = run_fused(kind, s, t, 2.0, 0.4)
        r_loss, r_gs, r_gt = reference(kind, s[:, :real], t[:, :real], 2.0, 0.4)
        assert_close(f"{kind} loss", loss, r_loss, 1e-5, 1e-6)
        assert_close(f"{kind} grad student", gs[:, :real], r_gs, 1e-4, 1e-5)
        assert_close(f"{kind} grad teacher", gt[:, :real], r_gt, 1e-4, 1e-5)
        assert gs[:, real:].abs().max().item() == 0.0 and gt[:, real:].abs().max().item() == 0.0
    s2, t2 = logits(3, padded, seed=39), logits(3, padded, seed=40)
    t_cut, s_cut = t2.clone(), s2.clone()
    t_cut[:, :32] = float("-inf")
    s_cut[:, :32] = float("-inf")
    out = [check("jsd", s2, t_cut, 1.5, beta) for beta in (0.2, 0.8)]
    out += [check("jsd", s_cut, t2, 1.5, 0.5), check("reverse", s_cut, t2, 1.5)]
    return "; ".join(out)


def _half_precision(blocks):
    out = []
    for dtype in (torch.bfloat16, torch.float16):
        s, t = logits(3, 100, seed=45, dtype=dtype), logits(3, 100, seed=46, dtype=dtype)
        with blocks():
            out.append(check_both(s, t, 2.0, betas=(0.5,)))
    return "; ".join(out)


def _directional_finite_difference(blocks):
    """The gradients the kernels write against a central difference of their own loss, along a random
    direction whose signs follow the gradient's (so that the float32 loss difference does not cancel)."""
    s, t = logits(3, 60, seed=47), logits(3, 60, seed=48)
    r_s, r_t = logits(3, 60, 1.0, seed=49).abs(), logits(3, 60, 1.0, seed=50).abs()
    eps, out = 1e-2, []
    for kind, beta in (("reverse", None), ("jsd", 0.3)):
        with blocks():
            _, gs, gt = run_fused(kind, s, t, 2.0, beta)
            d_s, d_t = r_s * gs.sign(), r_t * gt.sign()
            up = call(kind, FUSED[kind], s + eps * d_s, t + eps * d_t, 2.0, beta).double()
            down = call(kind, FUSED[kind], s - eps * d_s, t - eps * d_t, 2.0, beta).double()
        fd = ((up - down) / (2 * eps)).item()
        analytic = ((gs.double() * d_s.double()).sum() + (gt.double() * d_t.double()).sum()).item()
        assert math.isclose(fd, analytic, rel_tol=2e-3, abs_tol=1e-5), (kind, fd, analytic)
        out.append(f"{kind}: finite difference {fd:.6g} vs gradient {analytic:.6g}")
    return "; ".join(out)


def _no_blocks():
    from contextlib import nullcontext
    return nullcontext()


# ------------------------------------------------------------------------------------------------
# the chunked PyTorch path (what CPU tensors use)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("v", [1, 7, 37, 1000])
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
def test_matches_float64_reference(v, reduction):
    check_both(logits(6, v, seed=1), logits(6, v, seed=2), 2.0, reduction=reduction)


@pytest.mark.parametrize("T", [0.1, 1.0, 4.0, 100.0])
def test_temperatures(T):
    check_both(logits(5, 33, seed=5), logits(5, 33, seed=6), T)


@pytest.mark.parametrize("T", [0.1, 100.0])
def test_logits_up_to_1e4(T):
    s, t = logits(4, 64, scale=4e3, seed=7).clamp(-1e4, 1e4), logits(4, 64, scale=4e3, seed=8).clamp(-1e4, 1e4)
    s[0, 0], t[1, 3] = 1e4, -1e4
    check_both(s, t, T)


def test_leading_dims_and_non_contiguous_logits():
    s, t = logits(24, 50, seed=3).reshape(2, 3, 4, 50), logits(24, 50, seed=4).reshape(2, 3, 4, 50)
    for a, b in ((s, t), (s.transpose(0, 1), t.transpose(0, 1)), (s[..., ::2], t[..., ::2])):
        for kind in ("reverse", "jsd"):
            got = call(kind, FUSED[kind], a, b, 3.0, 0.7, "none")
            assert got.shape == a.shape[:-1]
            want = call(kind, PURE[kind], a.double(), b.double(), 3.0, 0.7, "none")
            assert_close(f"{kind} per-row loss", got, want, 1e-5, 1e-6)


def test_one_dimensional_and_empty_logits():
    _edge_shapes()


def test_masked_rows_labels_and_ignore_index():
    _masks_labels_all_masked()


def test_padded_vocabulary_with_minus_inf():
    _padded_vocabulary()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(dtype):
    check_both(logits(6, 300, seed=19, dtype=dtype), logits(6, 300, seed=20, dtype=dtype), 2.0, betas=(0.5,))


def test_beta_limits():
    _beta_limits()


def test_jsd_near_the_beta_limits():
    """The conventions at the ends are limits: JSD_beta / beta -> KL(p_t || p_s) as beta -> 0 and
    JSD_beta / (1 - beta) -> KL(p_s || p_t) as beta -> 1, with an error O(beta) (float64: the reference path)."""
    s, t = logits(4, 40, seed=60, dtype=torch.float64), logits(4, 40, seed=61, dtype=torch.float64)
    eps = 1e-7
    near0 = fused_generalized_jsd_loss(s, t, eps, 1.5, "none") / eps
    near1 = fused_generalized_jsd_loss(s, t, 1 - eps, 1.5, "none") / eps
    assert_close("JSD_beta / beta near 0", near0, losses.kd_loss(s, t, 1.5, "none") / 1.5**2, 1e-4, 0.0)
    assert_close("JSD_beta / (1 - beta) near 1", near1, losses.reverse_kd_loss(s, t, 1.5, "none") / 1.5**2, 1e-4, 0.0)


def test_jsd_symmetry_and_bound():
    """JSD_beta(s, t) = JSD_(1 - beta)(t, s), with the gradients exchanged; 0 against itself; the symmetric
    JSD (beta = 1/2) is at most log 2."""
    s, t = logits(5, 30, seed=62), logits(5, 30, seed=63)
    for beta in (0.2, 0.5):
        a, ga_s, ga_t = run_fused("jsd", s, t, 1.5, beta, "none")
        b, gb_t, gb_s = run_fused("jsd", t, s, 1.5, 1 - beta, "none")
        assert_close("swapped loss", a, b, 1e-6, 1e-7)
        assert_close("swapped grad student", ga_s, gb_s, 1e-5, 1e-7)
        assert_close("swapped grad teacher", ga_t, gb_t, 1e-5, 1e-7)
    assert fused_generalized_jsd_loss(s, s, 0.3, 2.0, "none").abs().max().item() < 1e-6
    far = fused_generalized_jsd_loss(100 * s, 100 * t, 0.5, 1.0, "none")
    assert far.max().item() <= math.log(2) + 1e-6


def test_gradcheck_finite_differences():
    s = logits(3, 11, seed=11, dtype=torch.float64).requires_grad_(True)
    t = logits(3, 11, seed=12, dtype=torch.float64).requires_grad_(True)
    keep = torch.tensor([True, False, True])
    for kw in ({}, {"mask": keep}):
        for fn in (lambda a, b, kw=kw: fused_reverse_kd_loss(a, b, 1.7, **kw),
                   lambda a, b, kw=kw: fused_generalized_jsd_loss(a, b, 0.3, 1.7, **kw)):
            assert torch.autograd.gradcheck(fn, (s, t))
            assert torch.autograd.gradgradcheck(fn, (s, t))


def test_double_backward_matches_the_losses():
    """Second derivatives (create_graph=True, e.g. MetaDistil) in float32, against the pure losses',
    padded classes included."""
    s, t = logits(5, 17, seed=28), logits(5, 17, seed=29)
    s[:, 14:], t[:, 14:] = float("-inf"), float("-inf")
    s.requires_grad_(True)
    t.requires_grad_(True)
    w = logits(5, 17, seed=30)
    for kind, beta in (("reverse", None), ("jsd", 0.4), ("jsd", 0.0), ("jsd", 1.0)):
        results = []
        for fn in (FUSED[kind], PURE[kind]):
            (g,) = torch.autograd.grad(call(kind, fn, s, t, 3.0, beta), s, create_graph=True)
            results.append(torch.autograd.grad((g[:, :14] * w[:, :14]).sum(), (s, t)))
        for a, b in zip(*results, strict=True):
            assert_close(f"{kind} {beta} second derivative", a[:, :14], b[:, :14], 1e-4, 1e-6)
            assert torch.isfinite(a).all()
    with pytest.raises(RuntimeError, match="double_backward=False"):
        torch.autograd.grad(fused_generalized_jsd_loss(s, t, 0.5, double_backward=False), s, create_graph=True)


def test_matches_trl_with_labels():
    """TRL's GKDTrainer.generalized_jsd_loss, whose ``labels`` (-100 = ignored) are the fused loss's."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from trl.experimental.gkd import GKDTrainer
        except (ImportError, RuntimeError):
            pytest.skip("trl's GKDTrainer cannot be imported")
    s, t = logits(10, 8, seed=64).reshape(2, 5, 8), logits(10, 8, seed=65).reshape(2, 5, 8)
    labels = torch.tensor([[1, 2, 3, -100, -100], [-100, -100, 4, 5, 6]])
    for beta in (0.0, 0.5, 0.9, 1.0):
        ours = fused_generalized_jsd_loss(s, t, beta, 1.5, labels=labels)
        theirs = GKDTrainer.generalized_jsd_loss(s, t, labels=labels, beta=beta, temperature=1.5)
        assert_close(f"beta={beta}", ours, theirs, 1e-5, 1e-7)


def test_chunked_reference_is_chunk_independent_and_bounded():
    s, t = logits(10, 30, seed=21), logits(10, 30, seed=22)
    keep = torch.arange(10) % 3 != 0
    whole = jsd_rows_reference(s, t, keep, 0.3, 2.0, True, True)
    chunked = jsd_rows_reference(s, t, keep, 0.3, 2.0, True, True, chunk_rows=3)
    for a, b in zip(whole, chunked, strict=True):
        assert torch.equal(a, b)
    n, v, chunk = 64, 300, 8
    sb, tb = logits(n, v, dtype=torch.bfloat16), logits(n, v, seed=1, dtype=torch.bfloat16)
    with _Allocations() as watch:
        jsd_rows_reference(sb, tb, None, 0.5, 2.0, True, True, chunk_rows=chunk)
    wide = [o for o in watch.outputs if o[1] in (torch.float32, torch.float64) and o[2] > chunk * v]
    assert not wide, wide  # bf16 gradients: no float32 tensor beyond one chunk
    assert any(o[1] == torch.float32 and o[2] == chunk * v for o in watch.outputs), "it did not chunk"


def test_opcheck_and_torch_compile():
    s = logits(6, 21, seed=23).requires_grad_(True)
    t = logits(6, 21, seed=24).requires_grad_(True)
    keep = torch.tensor([True, False, True, True, False, True])
    for args in ((s, t.detach(), None, 0.5, 2.0, True, False, True), (s, t, keep, 0.2, 0.5, True, True, False)):
        torch.library.opcheck(torch.ops.kdedu.jsd_rows.default, args)
    for fn in (lambda a, b, m: fused_generalized_jsd_loss(a, b, 0.3, 2.0, mask=m),
               lambda a, b, m: fused_reverse_kd_loss(a, b, 2.0, mask=m)):
        got = torch.compile(fn, backend="aot_eager", fullgraph=True)(s, t, keep)
        want = fn(s, t, keep)
        assert torch.equal(got, want)
        for a, b in zip(torch.autograd.grad(got, (s, t)), torch.autograd.grad(want, (s, t)), strict=True):
            assert torch.equal(a, b)


def test_no_grad_and_frozen_teacher():
    s, t = logits(4, 10).requires_grad_(True), logits(4, 10, seed=1)
    for kind in ("reverse", "jsd"):
        with torch.no_grad():
            loss = call(kind, FUSED[kind], s, t, 2.0, 0.5)
        assert not loss.requires_grad
        (g,) = torch.autograd.grad(call(kind, FUSED[kind], s, t, 2.0, 0.5), s)  # only the student's gradient
        (want,) = torch.autograd.grad(call(kind, PURE[kind], s, t, 2.0, 0.5), s)
        assert_close(f"{kind} grad", g, want, 1e-4, 1e-6)


def test_memory_traffic_and_held_memory():
    """Counted by kdedu.kernels.bench (every ATen call, saved tensors): the two fused divergences move the
    5 elements per logit of the fused KD loss and hold one gradient; their eager forms (which agree with
    the pure losses) hold more."""
    from kdedu.kernels import bench

    n, v = 8, 500
    s64, t64 = logits(n, v, seed=66, dtype=torch.float64), logits(n, v, seed=67, dtype=torch.float64)
    assert_close("eager reverse", bench.eager_reverse_kd_loss(s64, t64, 2.0), losses.reverse_kd_loss(s64, t64, 2.0),
                 1e-12, 0.0)
    assert_close("eager JSD", bench.eager_generalized_jsd_loss(s64, t64, 0.3, 2.0),
                 losses.generalized_jsd_loss(s64, t64, 0.3, 2.0), 1e-12, 0.0)
    s = s64.to(torch.bfloat16).requires_grad_(True)
    t = t64.to(torch.bfloat16)
    for fused, eager in ((lambda a, b: fused_reverse_kd_loss(a, b, 2.0),
                          lambda a, b: bench.eager_reverse_kd_loss(a, b, 2.0)),
                         (lambda a, b: fused_generalized_jsd_loss(a, b, 0.3, 2.0),
                          lambda a, b: bench.eager_generalized_jsd_loss(a, b, 0.3, 2.0))):
        big = [op for op in bench.traffic(fused, s, t) if op.largest >= n * v]
        assert [op.name for op in big] in (["kd_rows", "scale_rows"], ["jsd_rows", "scale_rows"]), big
        # + a few bytes per row: the per-row losses and the incoming gradient
        assert round(sum(op.bytes for op in big) / (n * v)) == bench.fused_bytes_per_logit(2)
        s.grad = None
        assert bench.held_bytes(fused, s, t) == 2 * n * v  # the bf16 gradient
        assert bench.held_bytes(eager, s, t) >= 2 * 2 * n * v
    assert bench.fused_bytes_per_logit(2, second_read=True, sweeps=3) == 2 * (6 + 1 + 2)


# ------------------------------------------------------------------------------------------------
# validation and dispatch
# ------------------------------------------------------------------------------------------------
def test_bad_input_raises_clear_errors():
    s, t = logits(3, 5), logits(3, 5, seed=1)
    for fn in (fused_reverse_kd_loss, lambda a, b, *r, **k: fused_generalized_jsd_loss(a, b, 0.5, *r, **k)):
        with pytest.raises(ValueError, match="class counts"):
            fn(s, t[:, :4])
        with pytest.raises(ValueError, match="shapes"):
            fn(s, t[:2])
        with pytest.raises(ValueError, match="temperature"):
            fn(s, t, 0.0)
        with pytest.raises(ValueError, match="reduction"):
            fn(s, t, 1.0, "mean")
        with pytest.raises(TypeError, match="floating-point"):
            fn(s.long(), t.long())
        with pytest.raises(TypeError, match="mask"):
            fn(s, t, mask=torch.ones(3))
        with pytest.raises(ValueError, match="mask"):
            fn(s, t, mask=torch.ones(4, dtype=torch.bool))
        with pytest.raises(TypeError, match="labels"):
            fn(s, t, labels=torch.ones(3))
        with pytest.raises(ValueError, match="labels"):
            fn(s, t, labels=torch.ones(2, dtype=torch.long))
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="beta"):
            fused_generalized_jsd_loss(s, t, bad)
    with pytest.raises(TypeError, match="beta"):
        fused_generalized_jsd_loss(s, t, "0.5")


class _LooksLikeCuda(torch.Tensor):
    """A CPU tensor that reports is_cuda = True: enough to test the losses' dispatch without a GPU."""

    @property
    def is_cuda(self):
        return True


def test_losses_dispatch_cuda_tensors_to_the_fused_losses(monkeypatch):
    calls = []
    monkeypatch.setattr(kernels, "fused_reverse_kd_loss",
                        lambda s, t, T, reduction, mask=None: calls.append(("reverse", T, reduction, mask)))
    monkeypatch.setattr(kernels, "fused_generalized_jsd_loss",
                        lambda s, t, b, T, reduction, mask=None: calls.append(("jsd", b, T, reduction, mask)))
    s, t = logits(3, 5), logits(3, 5, seed=1)
    losses.reverse_kd_loss(s, t, 2.0)  # CPU: the eager formulas, as before
    losses.generalized_jsd_loss(s, t, 0.5, 2.0)
    assert calls == []
    cs, ct = s.as_subclass(_LooksLikeCuda), t.as_subclass(_LooksLikeCuda)
    keep = torch.tensor([True, False, True])
    losses.reverse_kd_loss(cs, ct, 3, "sum", mask=keep)
    losses.generalized_jsd_loss(cs, ct, 1, 2, "none")
    assert calls[0] == ("reverse", 3.0, "sum", keep) and calls[0][-1] is keep
    assert calls[1] == ("jsd", 1.0, 2.0, "none", None)
    with pytest.raises(ValueError, match="beta"):  # validation still comes first
        losses.generalized_jsd_loss(cs, ct, 2.0)
    with pytest.raises(ValueError, match="temperature"):
        losses.reverse_kd_loss(cs, ct, -1.0)


# ------------------------------------------------------------------------------------------------
# the JSD kernel compiles for real GPUs (ahead of time, no GPU needed)
# ------------------------------------------------------------------------------------------------
def test_jsd_kernel_compiles_for_sm80_and_sm90():
    triton = pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("TRITON_INTERPRET is set in this process")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kdedu.kernels import triton_jsd

    common = {"n_rows": "i32", "n_cols": "i32", "s_stride": "i32", "t_stride": "i32", "gs_stride": "i32",
              "gt_stride": "i32", "inv_temp": "fp32", "beta": "fp32", "log_beta": "fp32", "log_1m_beta": "fp32"}
    for dt, block_n, block_v, single, arch, grad_t in [("bf16", 1, 4096, False, 90, True),
                                                        ("fp32", 16, 16, True, 90, False),
                                                        ("fp16", 2, 1024, False, 80, False)]:
        sig = {"s_ptr": f"*{dt}", "t_ptr": f"*{dt}", "keep_ptr": "*i8", "loss_ptr": "*fp32", "gs_ptr": f"*{dt}",
               "gt_ptr": f"*{dt}", **common, **dict.fromkeys(
                   ("HAS_KEEP", "GRAD_S", "GRAD_T", "BLOCK_N", "BLOCK_V", "SINGLE_BLOCK"), "constexpr")}
        const = {"HAS_KEEP": True, "GRAD_S": True, "GRAD_T": grad_t, "BLOCK_N": block_n, "BLOCK_V": block_v,
                 "SINGLE_BLOCK": single}
        try:
            compiled = triton.compile(ASTSource(fn=triton_jsd._jsd_fwd_bwd_kernel, signature=sig, constexprs=const),
                                      target=GPUTarget("cuda", arch, 32), options={"num_warps": 8})
        except Exception as err:  # a Triton build without its bundled ptxas/LLVM: nothing to check here
            if "ptxas" in str(err).lower() and "not found" in str(err).lower():
                pytest.skip(f"Triton cannot compile ahead of time here: {err}")
            raise
        assert "cubin" in compiled.asm


# ------------------------------------------------------------------------------------------------
# the Triton kernels in Triton's interpreter (a subprocess with TRITON_INTERPRET=1)
# ------------------------------------------------------------------------------------------------
CASES: dict[str, tuple[str, object]] = {}


def case(group: str):
    def deco(fn):
        CASES[fn.__name__] = (group, fn)
        return fn
    return deco


def _blocks(block_n=None, block_v=None):
    from kdedu.kernels import triton_kd
    return lambda: triton_kd.forced_blocks(block_n, block_v)


@case("a")
def one_block_many_rows_per_program():
    out = []
    for v in (1, 10, 37):
        s, t = logits(5, v, seed=v), logits(5, v, seed=v + 1)
        for reduction in ("batchmean", "none"):
            out.append(check_both(s, t, 2.0, betas=(0.3,), reduction=reduction))
    return "; ".join(out)


@case("a")
def many_blocks_forced_small():
    with _blocks(2, 16)():  # V = 100: 7 blocks of 16, 2 rows per program, last block partial
        a = check_both(logits(3, 100, seed=31), logits(3, 100, seed=32), 2.0, reduction="sum")
    with _blocks(None, 16)():  # one row
        b = check_both(logits(1, 50, seed=33), logits(1, 50, seed=34), 1.0, betas=(0.5,))
    return f"{a}; {b}"


@case("a")
def masks_labels_and_all_masked():
    with _blocks(2, 16)():
        return _masks_labels_all_masked()


@case("a")
def padded_vocabulary_minus_inf():
    with _blocks(2, 16)():  # with blocks of 16, the last two blocks are entirely padding
        return _padded_vocabulary()


@case("a")
def edge_shapes_and_beta_limits():
    with _blocks(2, 16)():
        return f"{_edge_shapes()}; {_beta_limits()}"


@case("b")
def extreme_logits_and_temperatures():
    out = []
    s = logits(3, 48, scale=4e3, seed=41).clamp(-1e4, 1e4)
    t = logits(3, 48, scale=4e3, seed=42).clamp(-1e4, 1e4)
    s[0, 0], t[1, 5] = 1e4, -1e4
    with _blocks(2, 16)():
        for T in (0.1, 100.0):
            out.append(check_both(s, t, T, betas=(0.5,)))
            out.append(check_both(logits(3, 48, seed=43), logits(3, 48, seed=44), T, betas=(0.1, 0.9)))
    return "; ".join(out)


@case("b")
def bf16_and_fp16():
    return _half_precision(_blocks(2, 32)) + "; " + _half_precision(_no_blocks)


@case("b")
def directional_finite_difference():
    return _directional_finite_difference(_blocks(2, 16))


@case("b")
def dispatch_and_compile():
    assert kernels.backend(torch.zeros(2, 2)) == "triton-interpreter", kernels.backend(torch.zeros(2, 2))
    s, t = logits(4, 30, seed=52).requires_grad_(True), logits(4, 30, seed=53)
    compiled = torch.compile(lambda a, b: fused_generalized_jsd_loss(a, b, 0.3, 2.0), backend="aot_eager",
                             fullgraph=True)
    got = compiled(s, t)
    (g,) = torch.autograd.grad(got, s)
    r_loss, r_gs, _ = reference("jsd", s, t, 2.0, 0.3)
    assert_close("loss", got, r_loss, 1e-5, 1e-6)
    assert_close("grad", g, r_gs, 1e-4, 1e-6)
    # the reverse KL is the KD kernel with the logits exchanged
    assert torch.equal(fused_reverse_kd_loss(s, t, 2.0, "none"), fused_kd_loss(t, s, 2.0, "none"))
    return kernels.triton_status()


@pytest.mark.parametrize("group", ["a", "b"])
def test_triton_kernels_in_the_interpreter(group):
    check_in_interpreter(HERE, CASES, group)


if __name__ == "__main__":  # TRITON_INTERPRET=1 python tests/test_kernels_divergences.py GROUP
    interpreter_main(CASES)
