"""kdedu.losses against independent float64 references, finite differences and known identities.

The references below are written with plain Python ``math`` loops over rows (never with
``torch.nn.functional``), so a mistake in kdedu's use of ``log_softmax``/``kl_div``/``cross_entropy``
cannot be repeated in the reference.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdedu import losses

F64 = torch.float64


# ------------------------------------------------------------------------------------------
# independent references (pure Python, float64)
# ------------------------------------------------------------------------------------------
def _rows(x: torch.Tensor) -> list[list[float]]:
    """The rows of a [..., C] tensor as Python floats."""
    return x.detach().to(F64).reshape(-1, x.shape[-1]).tolist()


def ref_log_softmax_row(row: list[float], T: float = 1.0) -> list[float]:
    z = [v / T for v in row]
    m = max(z)
    lse = m + math.log(sum(math.exp(v - m) for v in z))
    return [v - lse for v in z]


def ref_softmax(x: torch.Tensor, T: float = 1.0) -> np.ndarray:
    out = [[math.exp(v) for v in ref_log_softmax_row(r, T)] for r in _rows(x)]
    return np.array(out).reshape(tuple(x.shape))


def ref_kd_rows(s: torch.Tensor, t: torch.Tensor, T: float) -> np.ndarray:
    """T^2 * sum_i p_t,i (log p_t,i - log p_s,i) per row; classes with p_t = 0 contribute 0."""
    out = []
    for rs, rt in zip(_rows(s), _rows(t), strict=True):
        ls, lt = ref_log_softmax_row(rs, T), ref_log_softmax_row(rt, T)
        acc = 0.0
        for a, b in zip(lt, ls, strict=True):
            if a == -math.inf:
                continue
            acc += math.exp(a) * (a - b)
        out.append(T * T * acc)
    return np.array(out).reshape(tuple(s.shape[:-1]))


def ref_ce_rows(s: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    ys = y.reshape(-1).tolist()
    return np.array([-ref_log_softmax_row(r)[k] for r, k in zip(_rows(s), ys, strict=True)]).reshape(tuple(y.shape))


def ref_entropy_rows(p: np.ndarray) -> np.ndarray:
    """-sum p log p per row (0 log 0 = 0)."""
    flat = p.reshape(-1, p.shape[-1])
    return np.array([-sum(v * math.log(v) for v in r if v > 0) for r in flat]).reshape(p.shape[:-1])


def ref_cross_entropy_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """H(p, q) = -sum p log q per row."""
    fp, fq = p.reshape(-1, p.shape[-1]), q.reshape(-1, q.shape[-1])
    rows = zip(fp, fq, strict=True)
    return np.array([-sum(a * math.log(b) for a, b in zip(rp, rq, strict=True) if a > 0) for rp, rq in rows])


def randn(*shape, seed=0, dtype=F64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype) * scale


def randint(high, *shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, shape, generator=g)


def assert_close(got, expected, rtol=1e-9, atol=1e-12):
    got = np.asarray(got.detach().to(F64).numpy() if isinstance(got, torch.Tensor) else got, dtype=np.float64)
    np.testing.assert_allclose(got, np.asarray(expected, dtype=np.float64), rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------------
# soft_targets
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [0.5, 1.0, 3.0, 20.0])
def test_soft_targets_matches_reference(T):
    z = randn(4, 3, 7, seed=1, scale=3.0)
    p = losses.soft_targets(z, T)
    assert p.shape == z.shape and p.dtype == z.dtype
    assert_close(p, ref_softmax(z, T))
    assert_close(p.sum(-1), np.ones((4, 3)))


def test_soft_targets_limits():
    z = torch.tensor([[1.0, 3.0, 2.0, -1.0], [0.5, -2.0, 0.4, 0.0]], dtype=F64)
    cold = losses.soft_targets(z, 1e-4)  # T -> 0: one-hot argmax
    assert torch.equal(cold, torch.nn.functional.one_hot(z.argmax(-1), 4).to(F64))
    hot = losses.soft_targets(z, 1e6)  # T -> inf: uniform
    assert_close(hot, np.full((2, 4), 0.25), rtol=1e-5)
    # lower temperature = sharper: the top probability grows as T falls
    tops = [losses.soft_targets(z, T).max(-1).values for T in (8.0, 4.0, 2.0, 1.0, 0.5)]
    for a, b in itertools.pairwise(tops):
        assert torch.all(b > a)


@settings(max_examples=50, deadline=None, database=None)
@given(lead=st.lists(st.integers(1, 4), min_size=0, max_size=3), C=st.integers(1, 9),
       T=st.floats(0.05, 100.0), seed=st.integers(0, 2**16))
def test_soft_targets_property(lead, C, T, seed):
    z = randn(*lead, C, seed=seed, scale=4.0)
    p = losses.soft_targets(z, T)
    assert p.shape == z.shape
    assert_close(p, ref_softmax(z, T), rtol=1e-9, atol=1e-15)
    assert_close(p.sum(-1), np.ones(tuple(lead)), rtol=1e-12)
    # invariant to adding a constant to every logit of a row; the order of the classes is kept
    assert_close(losses.soft_targets(z + 7.5, T), p.numpy(), rtol=1e-9, atol=1e-15)
    assert torch.equal(p.argmax(-1), z.argmax(-1))


def test_soft_targets_gradcheck():
    z = randn(3, 5, seed=2).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: losses.soft_targets(x, 2.5), (z,))


# ------------------------------------------------------------------------------------------
# kd_loss
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 4), (7,), (1, 1, 1, 3)])
@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 0.3])
def test_kd_loss_matches_reference_all_reductions(shape, T):
    s, t = randn(*shape, seed=3, scale=2.0), randn(*shape, seed=4, scale=2.0)
    per_row = ref_kd_rows(s, t, T)
    rows = int(np.prod(shape[:-1]))
    none = losses.kd_loss(s, t, T, reduction="none")
    assert none.shape == shape[:-1]  # one value per row, shaped like the leading dims
    assert_close(none, per_row)
    assert_close(losses.kd_loss(s, t, T, reduction="sum"), per_row.sum())
    assert_close(losses.kd_loss(s, t, T, reduction="batchmean"), per_row.sum() / rows)
    assert_close(losses.kd_loss(s, t, T), per_row.sum() / rows)  # default reduction is batchmean


def test_kd_loss_leading_dims_are_rows():
    s, t = randn(3, 4, 6, seed=5), randn(3, 4, 6, seed=6)
    flat = losses.kd_loss(s.reshape(12, 6), t.reshape(12, 6), 2.0)
    assert_close(losses.kd_loss(s, t, 2.0), flat.item())  # batchmean over B*L = 12 rows, not B = 3
    assert_close(losses.kd_loss(s, t, 2.0, "none").reshape(12), losses.kd_loss(s.reshape(12, 6),
                                                                                t.reshape(12, 6), 2.0, "none"))
    # and a permutation of the rows permutes the "none" output
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    none = losses.kd_loss(s.reshape(12, 6), t.reshape(12, 6), 2.0, "none")
    assert_close(losses.kd_loss(s.reshape(12, 6)[perm], t.reshape(12, 6)[perm], 2.0, "none"), none[perm])


def test_kd_loss_float32_agrees_with_float64():
    s, t = randn(8, 10, seed=7, scale=3.0), randn(8, 10, seed=8, scale=3.0)
    got = losses.kd_loss(s.float(), t.float(), 4.0)
    assert got.dtype == torch.float32
    assert_close(got, losses.kd_loss(s, t, 4.0).item(), rtol=1e-5)


@pytest.mark.parametrize("T", [1.0, 3.0])
def test_kl_equals_cross_entropy_minus_teacher_entropy(T):
    s, t = randn(5, 6, seed=9, scale=2.0), randn(5, 6, seed=10, scale=2.0)
    p_s, p_t = ref_softmax(s, T), ref_softmax(t, T)
    kl = ref_cross_entropy_rows(p_t, p_s) - ref_entropy_rows(p_t)  # H(p_t, p_s) - H(p_t)
    assert_close(losses.kd_loss(s, t, T, "none"), T * T * kl, rtol=1e-8)
    assert np.all(kl >= 0)


def test_kd_loss_gradcheck_both_arguments():
    s = randn(4, 5, seed=11).requires_grad_()
    t = randn(4, 5, seed=12).requires_grad_()
    for reduction in ("batchmean", "sum", "none"):
        assert torch.autograd.gradcheck(lambda a, b, r=reduction: losses.kd_loss(a, b, 2.0, r), (s, t))
    s3 = randn(2, 3, 4, seed=13).requires_grad_()
    t3 = randn(2, 3, 4, seed=14).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: losses.kd_loss(a, b, 0.7), (s3, t3))


@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 4)])
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_loss_analytic_gradient(shape, T):
    """d kd_loss / d z_s = T (p_s(T) - p_t(T)) per row; batchmean divides by the number of rows."""
    s, t = randn(*shape, seed=15, scale=2.0).requires_grad_(), randn(*shape, seed=16, scale=2.0)
    rows = int(np.prod(shape[:-1]))
    expected = T * (ref_softmax(s, T) - ref_softmax(t, T))
    (g_mean,) = torch.autograd.grad(losses.kd_loss(s, t, T), s)
    assert_close(g_mean, expected / rows, rtol=1e-8, atol=1e-12)
    (g_sum,) = torch.autograd.grad(losses.kd_loss(s, t, T, "sum"), s)
    assert_close(g_sum, expected, rtol=1e-8, atol=1e-12)


def test_kd_loss_high_temperature_limit_is_half_logit_mse():
    """Hinton et al. 2.1: for zero-mean logits, T^2 KL -> sum_i (z_s - z_t)_i^2 / (2C) per row.

    Averaged over rows that is mean_rows sum_i d_i^2 / (2C) = logit_mse / 2 (logit_mse averages
    over all N*C elements), not logit_mse * C / 2.
    """
    C = 10
    s, t = randn(8, C, seed=17), randn(8, C, seed=18)
    s, t = s - s.mean(-1, keepdim=True), t - t.mean(-1, keepdim=True)
    per_row_limit = ((s - t) ** 2).sum(-1) / (2 * C)
    assert_close(losses.logit_mse(s, t) / 2, per_row_limit.mean().item())
    errors = []
    for T in (10.0, 100.0, 1000.0):
        got = losses.kd_loss(s, t, T, "none")
        errors.append(((got - per_row_limit).abs() / per_row_limit).max().item())
    assert errors[0] > errors[1] > errors[2]  # the error shrinks as T grows (about as 1/T)
    assert errors[1] < errors[0] / 5 and errors[2] < errors[1] / 5
    assert errors[2] < 1e-3
    rel = (losses.kd_loss(s, t, 1000.0) / (losses.logit_mse(s, t) / 2) - 1).abs().item()
    assert rel < 1e-3


def test_kd_loss_zero_iff_logits_differ_by_row_constant():
    t = randn(6, 5, seed=19, scale=2.0)
    shift = randn(6, 1, seed=20, scale=10.0)
    assert_close(losses.kd_loss(t + shift, t, 3.0, "none"), np.zeros(6), atol=1e-12)
    # a change that is not a per-row constant makes every row strictly positive
    other = t + shift + 0.1 * randn(6, 5, seed=21)
    assert torch.all(losses.kd_loss(other, t, 3.0, "none") > 1e-8)


@settings(max_examples=50, deadline=None, database=None)
@given(lead=st.lists(st.integers(1, 4), min_size=0, max_size=3), C=st.integers(1, 8),
       T=st.floats(0.05, 50.0), seed=st.integers(0, 2**16), scale=st.sampled_from([0.1, 1.0, 5.0]))
def test_kd_loss_property_matches_reference(lead, C, T, seed, scale):
    shape = (*lead, C)
    s, t = randn(*shape, seed=seed, scale=scale), randn(*shape, seed=seed + 1, scale=scale)
    none = losses.kd_loss(s, t, T, "none")
    assert none.shape == tuple(lead)
    ref = ref_kd_rows(s, t, T)
    assert_close(none, ref, rtol=1e-7, atol=1e-9 * T * T)
    assert torch.all(none >= -1e-9 * T * T)  # KL >= 0
    rows = int(np.prod(lead)) if lead else 1
    assert_close(losses.kd_loss(s, t, T), ref.sum() / rows, rtol=1e-7, atol=1e-9 * T * T)
    assert_close(losses.kd_loss(s, t, T, "sum"), none.sum().item(), rtol=1e-12, atol=1e-12)
    if C == 1:
        assert torch.all(none == 0)


@settings(max_examples=50, deadline=None, database=None)
@given(rows=st.integers(1, 5), C=st.integers(2, 6), T=st.floats(0.1, 20.0), seed=st.integers(0, 2**16))
def test_kd_loss_property_invariant_to_row_shifts(rows, C, T, seed):
    s, t = randn(rows, C, seed=seed), randn(rows, C, seed=seed + 7)
    cs, ct = randn(rows, 1, seed=seed + 1, scale=5.0), randn(rows, 1, seed=seed + 2, scale=5.0)
    assert_close(losses.kd_loss(s + cs, t + ct, T, "none"), losses.kd_loss(s, t, T, "none"), rtol=1e-7, atol=1e-9)
    assert_close(losses.kd_loss(t, t + ct, T, "none"), np.zeros(rows), atol=1e-9)


def test_kd_loss_padded_teacher_classes_finite_loss_and_student_gradients():
    """-inf teacher logits (a padded vocabulary) have p_t = 0 and contribute nothing."""
    s = randn(4, 6, seed=22).requires_grad_()
    t = randn(4, 6, seed=23)
    t[:, 4:] = -math.inf
    loss = losses.kd_loss(s, t, 2.0, "none")
    assert torch.isfinite(loss).all()
    assert_close(loss, ref_kd_rows(s, t, 2.0))
    (g,) = torch.autograd.grad(loss.sum(), s)
    assert torch.isfinite(g).all()
    assert_close(g, 2.0 * (ref_softmax(s, 2.0) - ref_softmax(t, 2.0)), rtol=1e-8, atol=1e-12)
    # the student may be padded the same way
    s_pad = s.detach().clone()
    s_pad[:, 4:] = -math.inf
    s_pad.requires_grad_()
    loss = losses.kd_loss(s_pad, t, 2.0)
    assert torch.isfinite(loss)
    assert_close(loss, ref_kd_rows(s_pad, t, 2.0).mean())
    (g,) = torch.autograd.grad(loss, s_pad)
    assert torch.isfinite(g).all() and torch.all(g[:, 4:] == 0)


def test_kd_loss_padded_teacher_classes_finite_teacher_gradients():
    """Gradients w.r.t. a padded teacher's logits (online/mutual distillation) must be finite too:
    d loss / d z_t = T (p_t (log p_t - log p_s) - p_t KL) per row, 0 on the padded classes."""
    T = 2.0
    s = randn(3, 5, seed=24)
    t = randn(3, 5, seed=25)
    t[:, 3:] = -math.inf
    t.requires_grad_()
    (g,) = torch.autograd.grad(losses.kd_loss(s, t, T, "sum"), t)
    assert torch.isfinite(g).all(), f"non-finite gradient w.r.t. padded teacher logits: {g}"
    p_t, p_s = ref_softmax(t, T), ref_softmax(s, T)
    with np.errstate(divide="ignore", invalid="ignore"):
        term = np.where(p_t > 0, p_t * (np.log(np.where(p_t > 0, p_t, 1.0)) - np.log(p_s)), 0.0)
    kl = term.sum(-1, keepdims=True)
    assert_close(g, T * (term - p_t * kl), rtol=1e-8, atol=1e-12)


# ------------------------------------------------------------------------------------------
# distillation_loss
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("shape", [(8, 5), (2, 3, 4)])
def test_distillation_loss_matches_reference(alpha, shape):
    T = 4.0
    s, t = randn(*shape, seed=26, scale=2.0), randn(*shape, seed=27, scale=2.0)
    y = randint(shape[-1], *shape[:-1], seed=28)
    ce = ref_ce_rows(s, y).mean()  # averaged over all B*L rows
    kd = ref_kd_rows(s, t, T).mean()
    assert_close(losses.distillation_loss(s, t, y, alpha=alpha, temperature=T), (1 - alpha) * ce + alpha * kd)


def test_distillation_loss_endpoints():
    s, t = randn(6, 7, seed=29), randn(6, 7, seed=30)
    y = randint(7, 6, seed=31)
    assert_close(losses.distillation_loss(s, t, y, alpha=0.0, temperature=3.0), ref_ce_rows(s, y).mean())
    assert_close(losses.distillation_loss(s, t, y, alpha=1.0, temperature=3.0), losses.kd_loss(s, t, 3.0).item())
    # defaults: alpha=0.5, T=4
    expected = 0.5 * ref_ce_rows(s, y).mean() + 0.5 * ref_kd_rows(s, t, 4.0).mean()
    assert_close(losses.distillation_loss(s, t, y), expected)


def test_distillation_loss_gradcheck():
    s, t = randn(4, 5, seed=32).requires_grad_(), randn(4, 5, seed=33).requires_grad_()
    y = randint(5, 4, seed=34)
    assert torch.autograd.gradcheck(lambda a, b: losses.distillation_loss(a, b, y, 0.3, 2.0), (s, t))


# ------------------------------------------------------------------------------------------
# logit_mse
# ------------------------------------------------------------------------------------------
def test_logit_mse_matches_reference():
    s, t = randn(3, 4, 5, seed=35), randn(3, 4, 5, seed=36)
    flat_s, flat_t = s.reshape(-1).tolist(), t.reshape(-1).tolist()
    expected = sum((a - b) ** 2 for a, b in zip(flat_s, flat_t, strict=True)) / len(flat_s)
    assert_close(losses.logit_mse(s, t), expected)
    assert torch.autograd.gradcheck(losses.logit_mse, (s.clone().requires_grad_(), t.clone().requires_grad_()))


# ------------------------------------------------------------------------------------------
# label smoothing
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5, 1.0])
def test_label_smoothing_matches_reference(eps):
    C = 6
    z, y = randn(7, C, seed=37, scale=2.0), randint(C, 7, seed=38)
    expected = []
    for row, k in zip(_rows(z), y.tolist(), strict=True):
        lp = ref_log_softmax_row(row)
        q = [(1 - eps) * (i == k) + eps / C for i in range(C)]  # the smoothed target
        expected.append(-sum(qi * li for qi, li in zip(q, lp, strict=True)))
    assert_close(losses.label_smoothing_loss(z, y, eps), np.mean(expected))


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.35, 1.0])
@pytest.mark.parametrize("shape", [(9, 5), (2, 3, 4)])
def test_label_smoothing_is_kd_from_a_uniform_teacher(eps, shape):
    """Yuan et al. 2020: LS(z, y, eps) = distillation_loss(z, uniform teacher, y, alpha=eps, T=1) + eps log C."""
    z = randn(*shape, seed=39, scale=2.0)
    y = randint(shape[-1], *shape[:-1], seed=40)
    uniform_teacher = torch.zeros_like(z)
    kd_form = losses.distillation_loss(z, uniform_teacher, y, alpha=eps, temperature=1.0) + eps * math.log(shape[-1])
    assert_close(losses.label_smoothing_loss(z, y, eps), kd_form.item())


@settings(max_examples=50, deadline=None, database=None)
@given(lead=st.lists(st.integers(1, 4), min_size=1, max_size=3), C=st.integers(2, 9),
       eps=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_label_smoothing_identity_property(lead, C, eps, seed):
    z = randn(*lead, C, seed=seed, scale=3.0)
    y = randint(C, *lead, seed=seed + 1)
    kd_form = losses.distillation_loss(z, torch.zeros_like(z), y, alpha=eps, temperature=1.0) + eps * math.log(C)
    assert_close(losses.label_smoothing_loss(z, y, eps), kd_form.item(), rtol=1e-9, atol=1e-12)


def test_label_smoothing_gradcheck():
    z = randn(4, 6, seed=41).requires_grad_()
    y = randint(6, 4, seed=42)
    assert torch.autograd.gradcheck(lambda a: losses.label_smoothing_loss(a, y, 0.2), (z,))


# ------------------------------------------------------------------------------------------
# teacher-free KD: the virtual teacher
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("a", [0.9, 0.5, 1.0, 0.05])
def test_virtual_teacher_probs(a):
    C = 7
    y = randint(C, 3, 4, seed=43)
    p = losses.virtual_teacher_probs(y, C, correct_prob=a)
    assert p.shape == (3, 4, C)
    assert_close(p.sum(-1), np.ones((3, 4)), rtol=1e-6)
    for idx in np.ndindex(3, 4):
        k = int(y[idx])
        for i in range(C):
            want = a if i == k else (1 - a) / (C - 1)
            assert math.isclose(p[idx][i].item(), want, rel_tol=1e-6, abs_tol=1e-7)


def test_virtual_teacher_probs_default_is_09():
    p = losses.virtual_teacher_probs(torch.tensor([2, 0]), 5)
    assert p[0, 2].item() == pytest.approx(0.9) and p[1, 0].item() == pytest.approx(0.9)
    assert p[0, 0].item() == pytest.approx(0.1 / 4)


def _ref_virtual_teacher_loss(z, y, alpha, T, a):
    C = z.shape[-1]
    total = []
    for row, k in zip(_rows(z), y.reshape(-1).tolist(), strict=True):
        p_d = [a if i == k else (1 - a) / (C - 1) for i in range(C)]
        w = [pi ** (1 / T) for pi in p_d]  # p_d(T) proportional to p_d^(1/T)
        p_dT = [wi / sum(w) for wi in w]
        lp_s = ref_log_softmax_row(row, T)
        kl = sum(q * (math.log(q) - ls) for q, ls in zip(p_dT, lp_s, strict=True) if q > 0)
        ce = -ref_log_softmax_row(row)[k]
        total.append((1 - alpha) * ce + alpha * T * T * kl)
    return np.mean(total)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_virtual_teacher_loss_at_T1_is_ce_plus_kl(alpha):
    z, y = randn(6, 5, seed=44, scale=2.0), randint(5, 6, seed=45)
    # (1 - alpha) CE + alpha KL(p_d || p_s), by hand
    assert_close(losses.virtual_teacher_loss(z, y, alpha=alpha, temperature=1.0, correct_prob=0.9),
                 _ref_virtual_teacher_loss(z, y, alpha, 1.0, 0.9), rtol=1e-6)


@pytest.mark.parametrize("T", [2.0, 5.0])
@pytest.mark.parametrize("a", [0.9, 0.6, 1.0])
def test_virtual_teacher_loss_tempered(T, a):
    z, y = randn(2, 3, 4, seed=46, scale=2.0), randint(4, 2, 3, seed=47)
    got = losses.virtual_teacher_loss(z, y, alpha=0.7, temperature=T, correct_prob=a)
    assert torch.isfinite(got)
    assert_close(got, _ref_virtual_teacher_loss(z, y, 0.7, T, a), rtol=1e-6)


def test_virtual_teacher_loss_gradcheck():
    z = randn(3, 4, seed=48).requires_grad_()
    y = randint(4, 3, seed=49)
    assert torch.autograd.gradcheck(lambda x: losses.virtual_teacher_loss(x, y, 0.5, 2.0, 0.9), (z,), atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_virtual_teacher_on_cuda():
    y = torch.tensor([1, 2, 0], device="cuda")
    p = losses.virtual_teacher_probs(y, 4)
    assert p.device == y.device
    z = torch.randn(3, 4, device="cuda")
    assert losses.virtual_teacher_loss(z, y).device == z.device


# ------------------------------------------------------------------------------------------
# bad input: a TypeError/ValueError that names the argument, never a silent broadcast
# ------------------------------------------------------------------------------------------
S = randn(4, 10, seed=50, dtype=torch.float32)
Y = randint(10, 4, seed=51)


def _pair_fns():
    return {
        "kd_loss": lambda s, t: losses.kd_loss(s, t, 2.0),
        "distillation_loss": lambda s, t: losses.distillation_loss(s, t, Y),
        "logit_mse": losses.logit_mse,
    }


@pytest.mark.parametrize("fn", ["kd_loss", "distillation_loss", "logit_mse"])
@pytest.mark.parametrize("other_shape", [(1, 10), (4, 9), (10,), (4, 1), (2, 2, 10), (4, 10, 1)])
def test_mismatched_shapes_raise(fn, other_shape):
    t = torch.zeros(other_shape)
    with pytest.raises(ValueError, match="teacher_logits"):
        _pair_fns()[fn](S, t)
    with pytest.raises(ValueError, match="student_logits"):
        _pair_fns()[fn](S, t)


def test_mismatched_class_count_message():
    with pytest.raises(ValueError, match="class count"):
        losses.kd_loss(S, torch.zeros(4, 9))
    with pytest.raises(ValueError, match="shape"):
        losses.kd_loss(S, torch.zeros(1, 10))


TEMPERATURE_FNS = {
    "soft_targets": lambda T: losses.soft_targets(S, T),
    "kd_loss": lambda T: losses.kd_loss(S, S, T),
    "distillation_loss": lambda T: losses.distillation_loss(S, S, Y, temperature=T),
    "virtual_teacher_loss": lambda T: losses.virtual_teacher_loss(S, Y, temperature=T),
}


@pytest.mark.parametrize("fn", sorted(TEMPERATURE_FNS))
@pytest.mark.parametrize("T,exc", [(0.0, ValueError), (-1.0, ValueError), (0, ValueError), (math.nan, ValueError),
                                   (math.inf, ValueError), (-math.inf, ValueError), (True, TypeError),
                                   ("2", TypeError), (None, TypeError), (torch.tensor([2.0, 3.0]), TypeError)])
def test_bad_temperature_raises(fn, T, exc):
    with pytest.raises(exc, match="temperature"):
        TEMPERATURE_FNS[fn](T)


ALPHA_FNS = {
    "distillation_loss.alpha": lambda v: losses.distillation_loss(S, S, Y, alpha=v),
    "virtual_teacher_loss.alpha": lambda v: losses.virtual_teacher_loss(S, Y, alpha=v),
    "label_smoothing_loss.epsilon": lambda v: losses.label_smoothing_loss(S, Y, epsilon=v),
    "virtual_teacher_loss.correct_prob": lambda v: losses.virtual_teacher_loss(S, Y, correct_prob=v),
    "virtual_teacher_probs.correct_prob": lambda v: losses.virtual_teacher_probs(Y, 10, correct_prob=v),
}


@pytest.mark.parametrize("fn", sorted(ALPHA_FNS))
@pytest.mark.parametrize("v,exc", [(-0.1, ValueError), (1.1, ValueError), (math.nan, ValueError), (2, ValueError),
                                   (True, TypeError), ("0.5", TypeError), (None, TypeError)])
def test_unit_interval_arguments(fn, v, exc):
    name = fn.split(".")[1]
    with pytest.raises(exc, match=name):
        ALPHA_FNS[fn](v)


@pytest.mark.parametrize("reduction", ["mean", "BATCHMEAN", "", None, "elementwise_mean"])
def test_unknown_reduction_raises(reduction):
    with pytest.raises(ValueError, match="reduction"):
        losses.kd_loss(S, S, reduction=reduction)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8])
def test_integer_logits_raise(dtype):
    z = torch.ones(4, 10, dtype=dtype)
    with pytest.raises(TypeError, match="student_logits"):
        losses.kd_loss(z, S)
    with pytest.raises(TypeError, match="teacher_logits"):
        losses.kd_loss(S, z)
    with pytest.raises(TypeError, match="student_logits"):
        losses.distillation_loss(z, S, Y)
    with pytest.raises(TypeError, match="logits"):
        losses.soft_targets(z)
    with pytest.raises(TypeError, match="logits"):
        losses.label_smoothing_loss(z, Y)
    with pytest.raises(TypeError, match="student_logits"):
        losses.virtual_teacher_loss(z, Y)
    with pytest.raises(TypeError, match="logits"):
        losses.logit_mse(z, S)


def test_non_tensor_logits_raise():
    with pytest.raises(TypeError, match="student_logits"):
        losses.kd_loss(S.tolist(), S)
    with pytest.raises(TypeError, match="logits"):
        losses.soft_targets(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="logits"):
        losses.soft_targets(torch.tensor(1.0))  # a scalar has no class dimension


TARGET_FNS = {
    "distillation_loss": lambda y: losses.distillation_loss(S, S, y),
    "label_smoothing_loss": lambda y: losses.label_smoothing_loss(S, y),
    "virtual_teacher_loss": lambda y: losses.virtual_teacher_loss(S, y),
}


@pytest.mark.parametrize("fn", sorted(TARGET_FNS))
@pytest.mark.parametrize("y,exc", [
    (Y.float(), TypeError),                    # float targets (e.g. probabilities by mistake)
    (Y.bool(), TypeError),
    (Y.tolist(), TypeError),
    (Y[:1], ValueError),                       # [1] would broadcast against 4 rows
    (Y[:3], ValueError),
    (Y.view(4, 1), ValueError),
    (torch.zeros(4, 10, dtype=torch.int64), ValueError),  # one-hot instead of indices
    (torch.tensor([0, 1, 10, 2]), ValueError),  # out of range (C = 10)
    (torch.tensor([0, -1, 2, 3]), ValueError),
])
def test_bad_targets_raise(fn, y, exc):
    with pytest.raises(exc, match="targets"):
        TARGET_FNS[fn](y)


def test_targets_shape_follows_leading_dims():
    z = randn(2, 3, 5, seed=52)
    losses.distillation_loss(z, z, randint(5, 2, 3, seed=53))  # fine
    with pytest.raises(ValueError, match="targets"):
        losses.distillation_loss(z, z, randint(5, 6, seed=53))  # flattened targets are not accepted silently


@pytest.mark.parametrize("C", [1, 0, -3, 2.5, "10"])
def test_virtual_teacher_probs_bad_num_classes(C):
    with pytest.raises((ValueError, TypeError), match="num_classes"):
        losses.virtual_teacher_probs(torch.tensor([0, 0]), C)


def test_virtual_teacher_probs_targets_out_of_range():
    with pytest.raises(ValueError, match="targets"):
        losses.virtual_teacher_probs(torch.tensor([0, 5]), 5)
    with pytest.raises(TypeError, match="targets"):
        losses.virtual_teacher_probs(torch.tensor([0.0, 1.0]), 5)


# ------------------------------------------------------------------------------------------
# masks, reverse KL, GKD's generalized JSD, top-k KD: float64 references written with explicit
# sums over the classes of each row (probabilities from ref_softmax; the GJSD mixture in
# probability space, where kdedu works in log space)
# ------------------------------------------------------------------------------------------
def ref_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) = sum_i p_i (log p_i - log q_i) per row (0 log 0 = 0), by loops over rows and classes."""
    fp, fq = p.reshape(-1, p.shape[-1]), q.reshape(-1, q.shape[-1])
    out = [sum(a * (math.log(a) - math.log(b)) for a, b in zip(rp, rq, strict=True) if a > 0)
           for rp, rq in zip(fp, fq, strict=True)]
    return np.array(out).reshape(p.shape[:-1])


def ref_reverse_rows(s, t, T):
    return T * T * ref_kl(ref_softmax(s, T), ref_softmax(t, T))


def ref_gjsd_rows(s, t, beta, T):
    """GKD eq. 1 with TRL's endpoints; no T^2."""
    p_s, p_t = ref_softmax(s, T), ref_softmax(t, T)
    if beta == 0:
        return ref_kl(p_t, p_s)
    if beta == 1:
        return ref_kl(p_s, p_t)
    m = beta * p_t + (1 - beta) * p_s
    return beta * ref_kl(p_t, m) + (1 - beta) * ref_kl(p_s, m)


def ref_topk_rows(s, vals, idx, T):
    """T^2 sum_j q_j (log q_j - log p_s[idx_j]), q the softmax of the k kept teacher logits."""
    out = []
    for rs, rv, ri in zip(_rows(s), _rows(vals), idx.reshape(-1, idx.shape[-1]).tolist(), strict=True):
        log_p_s, log_q = ref_log_softmax_row(rs, T), ref_log_softmax_row(rv, T)
        out.append(T * T * sum(math.exp(lq) * (lq - log_p_s[j]) for lq, j in zip(log_q, ri, strict=True)))
    return np.array(out).reshape(tuple(s.shape[:-1]))


def ref_reduce(per_row, mask: torch.Tensor, reduction: str):
    """The contract's reductions over the rows the mask keeps, by a loop."""
    values, keep = np.asarray(per_row, dtype=np.float64).reshape(-1), mask.reshape(-1).tolist()
    if reduction == "none":
        return np.array([v if k else 0.0 for v, k in zip(values, keep, strict=True)]).reshape(np.shape(per_row))
    kept = [v for v, k in zip(values, keep, strict=True) if k]
    return sum(kept) / (max(len(kept), 1) if reduction == "batchmean" else 1)


def garbage_rows(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A copy of x whose dropped rows hold nan, -inf and +inf (nothing of them may leak)."""
    x = x.detach().clone()
    bad = torch.tensor([math.nan, -math.inf, math.inf], dtype=x.dtype).repeat(x.shape[-1])[: x.shape[-1]]
    x[~mask] = bad
    return x


def _topk_fn(k):
    def fn(s, t, T, reduction, mask):
        vals, idx = t.topk(k, dim=-1)
        return losses.topk_kd_loss(s, vals, idx, T, reduction, mask)

    def ref(s, t, T):
        vals, idx = t.topk(k, dim=-1)
        return ref_topk_rows(s, vals, idx, T)

    return fn, ref


MASKED = {  # name -> (kdedu loss (s, t, T, reduction, mask), float64 reference per row (s, t, T))
    "kd_loss": (losses.kd_loss, ref_kd_rows),
    "reverse_kd_loss": (losses.reverse_kd_loss, ref_reverse_rows),
    **{f"gjsd_beta{b}": (lambda s, t, T, r, m, b=b: losses.generalized_jsd_loss(s, t, b, T, r, m),
                         lambda s, t, T, b=b: ref_gjsd_rows(s, t, b, T)) for b in (0.0, 0.3, 1.0)},
    "topk_k2": _topk_fn(2),
}


@pytest.mark.parametrize("name", sorted(MASKED))
@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 4), (5,)])
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
def test_masked_divergences_match_reference(name, shape, reduction):
    fn, ref = MASKED[name]
    T = 2.0
    s, t = randn(*shape, seed=60, scale=2.0), randn(*shape, seed=61, scale=2.0)
    mask = randn(*shape[:-1], seed=62) > -0.4 if len(shape) > 1 else torch.tensor(True)
    assert mask.any() and (len(shape) == 1 or not mask.all())
    s_bad = garbage_rows(s, mask).requires_grad_()
    t_bad = garbage_rows(t, mask).requires_grad_()
    got = fn(s_bad, t_bad, T, reduction, mask)
    assert got.shape == (shape[:-1] if reduction == "none" else ())
    assert_close(got, ref_reduce(ref(s, t, T), mask, reduction), rtol=1e-9, atol=1e-12)
    for g in torch.autograd.grad(got.sum(), (s_bad, t_bad), allow_unused=True):
        if g is not None:
            assert torch.isfinite(g).all() and torch.all(g[~mask] == 0)


ALL_MASKED = {  # every loss that takes a mask, on rows that are all dropped (and hold garbage)
    **{n: (lambda s, t, m, fn=fn: fn(s, t, 2.0, "batchmean", m)) for n, (fn, _) in MASKED.items()},
    "distillation_loss": lambda s, t, m: losses.distillation_loss(s, t, randint(5, *m.shape), mask=m),
    "distillation_loss(all -100)": lambda s, t, m: losses.distillation_loss(s, t, torch.full(m.shape, -100)),
    "logit_mse": lambda s, t, m: losses.logit_mse(s, t, mask=m),
    "annealing_kd_loss": lambda s, t, m: losses.annealing_kd_loss(s, t, 0.5, mask=m),
    "label_smoothing_loss": lambda s, t, m: losses.label_smoothing_loss(s, randint(5, *m.shape), mask=m),
    "virtual_teacher_loss": lambda s, t, m: losses.virtual_teacher_loss(s, torch.full(m.shape, -100), mask=m),
}


@pytest.mark.parametrize("name", sorted(ALL_MASKED))
@pytest.mark.parametrize("shape", [(3, 5), (2, 2, 5)])
def test_no_row_kept_gives_zero_and_zero_gradient(name, shape):
    mask = torch.zeros(shape[:-1], dtype=torch.bool)
    s = garbage_rows(randn(*shape, seed=63), mask).requires_grad_()
    t = garbage_rows(randn(*shape, seed=64), mask).requires_grad_()
    loss = ALL_MASKED[name](s, t, mask)
    assert loss.item() == 0.0
    for g in torch.autograd.grad(loss, (s, t), allow_unused=True):
        assert g is None or (torch.isfinite(g).all() and g.abs().max().item() == 0.0)


MASK_FNS = {
    "kd_loss": lambda m: losses.kd_loss(S, S, mask=m),
    "reverse_kd_loss": lambda m: losses.reverse_kd_loss(S, S, mask=m),
    "generalized_jsd_loss": lambda m: losses.generalized_jsd_loss(S, S, mask=m),
    "topk_kd_loss": lambda m: losses.topk_kd_loss(S, *S.topk(3), mask=m),
    "distillation_loss": lambda m: losses.distillation_loss(S, S, Y, mask=m),
    "logit_mse": lambda m: losses.logit_mse(S, S, mask=m),
    "annealing_kd_loss": lambda m: losses.annealing_kd_loss(S, S, 0.5, mask=m),
    "label_smoothing_loss": lambda m: losses.label_smoothing_loss(S, Y, mask=m),
    "virtual_teacher_loss": lambda m: losses.virtual_teacher_loss(S, Y, mask=m),
}


@pytest.mark.parametrize("fn", sorted(MASK_FNS))
@pytest.mark.parametrize("mask,exc", [
    (torch.ones(4), TypeError),                          # float 0/1 instead of bool
    (torch.ones(4, dtype=torch.int64), TypeError),       # an attention mask as ints: say .bool()
    ([True] * 4, TypeError),
    (torch.ones(1, dtype=torch.bool), ValueError),       # would broadcast over the 4 rows
    (torch.ones((), dtype=torch.bool), ValueError),
    (torch.ones(4, 1, dtype=torch.bool), ValueError),
    (torch.ones(4, 10, dtype=torch.bool), ValueError),   # per class, not per row
    (torch.ones(4, dtype=torch.bool, device="meta"), ValueError),  # another device than the logits
])
def test_bad_mask_raises(fn, mask, exc):
    with pytest.raises(exc, match="mask"):
        MASK_FNS[fn](mask)


def test_kernels_fused_kd_loss_agrees_with_kd_loss_under_a_mask():
    from kdedu.kernels import fused_kd_loss

    mask = torch.tensor([[True, False, True], [True, True, False]])
    for dtype, rtol in ((F64, 1e-10), (torch.float32, 1e-5)):
        s = garbage_rows(randn(2, 3, 9, seed=65, scale=3.0), mask).to(dtype).requires_grad_()
        t = garbage_rows(randn(2, 3, 9, seed=66, scale=3.0), mask).to(dtype).requires_grad_()
        for reduction in ("batchmean", "sum", "none"):
            a, b = fused_kd_loss(s, t, 2.0, reduction, mask=mask), losses.kd_loss(s, t, 2.0, reduction, mask)
            assert_close(a, b.detach().double().numpy(), rtol=rtol, atol=1e-7)
            for ga, gb in zip(torch.autograd.grad(a.sum(), (s, t)), torch.autograd.grad(b.sum(), (s, t)), strict=True):
                assert_close(ga, gb.double().numpy(), rtol=rtol, atol=1e-6)


# ------------------------------------------------------------------------------------------
# reverse_kd_loss and generalized_jsd_loss
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [1.0, 3.0, 0.5])
def test_gjsd_endpoints_are_forward_and_reverse_kl_without_t2(T):
    s, t = randn(2, 4, 7, seed=67, scale=2.0), randn(2, 4, 7, seed=68, scale=2.0)
    fwd, rev = losses.kd_loss(s, t, T, "none"), losses.reverse_kd_loss(s, t, T, "none")
    assert_close(losses.generalized_jsd_loss(s, t, 0.0, T, "none") * T * T, fwd)
    assert_close(losses.generalized_jsd_loss(s, t, 1.0, T, "none") * T * T, rev)
    assert_close(rev, ref_reverse_rows(s, t, T))
    assert not torch.allclose(fwd, rev)  # the two directions differ


def test_gjsd_tends_to_the_kls_near_its_ends():
    """Huszar 2015, GKD: JSD_beta / beta -> KL(p_t || p_s) as beta -> 0, JSD_beta / (1 - beta) -> KL(p_s || p_t)."""
    s, t = randn(5, 6, seed=69, scale=2.0), randn(5, 6, seed=70, scale=2.0)
    eps = 1e-6
    p_s, p_t = ref_softmax(s), ref_softmax(t)
    assert_close(losses.generalized_jsd_loss(s, t, eps, reduction="none") / eps, ref_kl(p_t, p_s), rtol=1e-4)
    assert_close(losses.generalized_jsd_loss(s, t, 1 - eps, reduction="none") / eps, ref_kl(p_s, p_t), rtol=1e-4)


@settings(max_examples=40, deadline=None, database=None)
@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=2), C=st.integers(1, 7), beta=st.floats(0.0, 1.0),
       T=st.floats(0.2, 10.0), seed=st.integers(0, 2**16))
def test_gjsd_property_reference_and_symmetries(lead, C, beta, T, seed):
    s, t = randn(*lead, C, seed=seed, scale=3.0), randn(*lead, C, seed=seed + 1, scale=3.0)
    got = losses.generalized_jsd_loss(s, t, beta, T, "none")
    assert_close(got, ref_gjsd_rows(s, t, beta, T), rtol=1e-7, atol=1e-12)
    # swapping the two models swaps the weights (unless 1 - beta rounds to an endpoint that beta is not:
    # the endpoints are conventions, not limits); 0 against oneself; the symmetric JSD is at most log 2
    if (beta in (0.0, 1.0)) == ((1 - beta) in (0.0, 1.0)):
        assert_close(losses.generalized_jsd_loss(t, s, 1 - beta, T, "none"), got.numpy(), rtol=1e-7, atol=1e-12)
    assert_close(losses.generalized_jsd_loss(s, s, beta, T, "none"), np.zeros(tuple(lead)), atol=1e-12)
    assert torch.all(losses.generalized_jsd_loss(s, t, 0.5, T, "none") <= math.log(2) + 1e-12)


@pytest.fixture(scope="module")
def trl_gjsd():
    """TRL's GKDTrainer.generalized_jsd_loss: the reference for GKD's convention (a test-only dependency)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TRL warns that trl.experimental is experimental
        try:
            from trl.experimental.gkd import GKDTrainer
        except (ImportError, RuntimeError):
            try:
                from trl import GKDTrainer  # trl < 0.24
            except (ImportError, RuntimeError) as err:
                pytest.skip(f"trl's GKDTrainer cannot be imported ({type(err).__name__}: {err}); pip install trl")
    return GKDTrainer.generalized_jsd_loss


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("T", [0.5, 1.0, 2.0])
def test_gjsd_matches_trl(trl_gjsd, beta, T):
    s = randn(6, 11, seed=71, scale=2.0).requires_grad_()
    t = randn(6, 11, seed=72, scale=2.0).requires_grad_()
    for reduction in ("batchmean", "sum"):
        ours = losses.generalized_jsd_loss(s, t, beta, T, reduction)
        theirs = trl_gjsd(s, t, beta=beta, temperature=T, reduction=reduction)
        assert_close(ours, theirs.item())
        for a, b in zip(torch.autograd.grad(ours, (s, t)), torch.autograd.grad(theirs, (s, t)), strict=True):
            assert_close(a, b.numpy(), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_gjsd_matches_trl_on_tokens_with_ignored_labels(trl_gjsd, beta):
    """TRL's labels (-100 = ignored) are kdedu's mask; both average over the kept tokens."""
    s, t = randn(2, 5, 8, seed=73, scale=2.0), randn(2, 5, 8, seed=74, scale=2.0)
    labels = randint(8, 2, 5, seed=75)
    labels[0, 3:] = labels[1, :2] = -100
    ours = losses.generalized_jsd_loss(s, t, beta, 1.5, mask=labels != -100)
    assert_close(ours, trl_gjsd(s, t, labels=labels, beta=beta, temperature=1.5).item())


def test_reverse_and_gjsd_padded_vocabulary_finite():
    """Classes padded with -inf in both models add nothing: equal to the loss on the real classes, finite gradients."""
    real, padded = 5, 8
    s, t = randn(4, padded, seed=76), randn(4, padded, seed=77)
    s[:, real:] = t[:, real:] = -math.inf
    for fn, ref in ((lambda a, b: losses.reverse_kd_loss(a, b, 2.0, "none"), lambda a, b: ref_reverse_rows(a, b, 2.0)),
                    (lambda a, b: losses.generalized_jsd_loss(a, b, 0.4, 2.0, "none"),
                     lambda a, b: ref_gjsd_rows(a, b, 0.4, 2.0))):
        a, b = s.clone().requires_grad_(), t.clone().requires_grad_()
        loss = fn(a, b)
        assert_close(loss, ref(s[:, :real], t[:, :real]))
        for g in torch.autograd.grad(loss.sum(), (a, b)):
            assert torch.isfinite(g).all() and torch.all(g[:, real:] == 0)
    # only the teacher padded: the mixture keeps the student's mass there, the JSD stays finite
    s_full = randn(4, padded, seed=76).requires_grad_()
    loss = losses.generalized_jsd_loss(s_full, t, 0.4, 1.0, "none")
    assert_close(loss, ref_gjsd_rows(s_full, t, 0.4, 1.0))
    assert torch.isfinite(torch.autograd.grad(loss.sum(), s_full)[0]).all()


@pytest.mark.parametrize("beta,exc", [(-0.1, ValueError), (1.5, ValueError), (math.nan, ValueError),
                                      (True, TypeError), ("0.5", TypeError), (None, TypeError)])
def test_gjsd_bad_beta_raises(beta, exc):
    with pytest.raises(exc, match="beta"):
        losses.generalized_jsd_loss(S, S, beta)


def test_reverse_and_gjsd_validate_like_kd_loss():
    for fn in (losses.reverse_kd_loss, losses.generalized_jsd_loss):
        with pytest.raises(ValueError, match="class count"):
            fn(S, torch.zeros(4, 9))
        with pytest.raises(TypeError, match="teacher_logits"):
            fn(S, torch.zeros(4, 10, dtype=torch.int64))
        with pytest.raises(ValueError, match="temperature"):
            fn(S, S, temperature=0.0)
        with pytest.raises(ValueError, match="reduction"):
            fn(S, S, reduction="mean")


# ------------------------------------------------------------------------------------------
# topk_kd_loss
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
@pytest.mark.parametrize("T", [1.0, 2.5])
def test_topk_with_all_classes_is_kd_loss(reduction, T):
    s, t = randn(2, 3, 6, seed=78, scale=2.0), randn(2, 3, 6, seed=79, scale=2.0)
    mask = torch.tensor([[True, False, True], [True, True, True]])
    want = losses.kd_loss(s, t, T, reduction, mask)
    assert_close(losses.topk_kd_loss(s, *t.topk(6), T, reduction, mask), want.numpy())
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0)).expand(2, 3, 6)  # any order of the C classes
    assert_close(losses.topk_kd_loss(s, t.gather(-1, perm), perm, T, reduction, mask), want.numpy())


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("T", [1.0, 3.0])
def test_topk_matches_brute_force(k, T):
    s, t = randn(3, 4, 7, seed=80, scale=2.0), randn(3, 4, 7, seed=81, scale=2.0)
    vals, idx = t.topk(k)
    got = losses.topk_kd_loss(s, vals, idx, T, "none")
    assert_close(got, ref_topk_rows(s, vals, idx, T))
    assert_close(losses.topk_kd_loss(s, vals, idx, T), ref_topk_rows(s, vals, idx, T).mean())
    # any k distinct classes, not only the teacher's largest: the last k classes, in int32
    last = torch.arange(7 - k, 7, dtype=torch.int32).expand(3, 4, k)
    assert_close(losses.topk_kd_loss(s, vals, last, T, "none"), ref_topk_rows(s, vals, last, T))


@pytest.mark.parametrize("bad,exc,name", [
    (lambda v, i: (v, i + 1), ValueError, "teacher_topk_indices"),          # index C is out of range
    (lambda v, i: (v, i - i - 1), ValueError, "teacher_topk_indices"),      # -1
    (lambda v, i: (v, i.double()), TypeError, "teacher_topk_indices"),
    (lambda v, i: (v, i.tolist()), TypeError, "teacher_topk_indices"),
    (lambda v, i: (v, i[:, :2]), ValueError, "teacher_topk_indices"),       # k mismatch with the logits
    (lambda v, i: (v[:2], i[:2]), ValueError, "teacher_topk_logits"),       # leading shape mismatch
    (lambda v, i: (v.long(), i), TypeError, "teacher_topk_logits"),
    (lambda v, i: (torch.zeros(4, 11), torch.zeros(4, 11, dtype=torch.long)), ValueError, "teacher_topk_logits"),
])
def test_topk_bad_input_raises(bad, exc, name):
    vals, idx = S.topk(3)
    idx[0, 0] = 9  # the largest valid index (C = 10), so that idx + 1 is out of range
    with pytest.raises(exc, match=name):
        losses.topk_kd_loss(S, *bad(vals, idx))


# ------------------------------------------------------------------------------------------
# distillation_loss with ignore_index and mask; the other hard-label losses
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_distillation_loss_ignored_targets_equal_the_kept_rows(alpha):
    T = 3.0
    s, t = randn(2, 5, 6, seed=82, scale=2.0), randn(2, 5, 6, seed=83, scale=2.0)
    y = randint(6, 2, 5, seed=84)
    y[0, 3:] = y[1, 0] = -100
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 4] = False
    for m in (None, mask):
        keep = (y != -100) if m is None else (y != -100) & m
        s_bad = garbage_rows(s, keep).requires_grad_()
        got = losses.distillation_loss(s_bad, t, y, alpha, T, mask=m)
        want = (1 - alpha) * ref_ce_rows(s[keep], y[keep]).mean() + alpha * ref_kd_rows(s[keep], t[keep], T).mean()
        assert_close(got, want)
        assert_close(got, losses.distillation_loss(s[keep], t[keep], y[keep], alpha, T).item())
        (g,) = torch.autograd.grad(got, s_bad)
        assert torch.isfinite(g).all() and torch.all(g[~keep] == 0)


def test_distillation_loss_other_ignore_index_and_bad_values():
    s, t, y = randn(6, 4, seed=85), randn(6, 4, seed=86), torch.tensor([0, 1, 2, 3, 2, 1])
    keep = y != 2
    assert_close(losses.distillation_loss(s, t, y, ignore_index=2),
                 losses.distillation_loss(s[keep], t[keep], y[keep]).item())
    with pytest.raises(ValueError, match="targets"):  # -100 is a class index unless it is ignore_index
        losses.distillation_loss(s, t, torch.tensor([0, 1, 2, 3, 2, -100]), ignore_index=2)
    for bad in ("-100", 1.5, None, True):
        with pytest.raises(TypeError, match="ignore_index"):
            losses.distillation_loss(s, t, y, ignore_index=bad)


def test_label_smoothing_and_virtual_teacher_skip_ignored_rows():
    z, y = randn(2, 4, 5, seed=87, scale=2.0), randint(5, 2, 4, seed=88)
    y[1, 1:3] = -100
    keep = y != -100
    z_bad = garbage_rows(z, keep)
    assert_close(losses.label_smoothing_loss(z_bad, y, 0.2), losses.label_smoothing_loss(z[keep], y[keep], 0.2).item())
    assert_close(losses.virtual_teacher_loss(z_bad, y, 0.6, 2.0),
                 _ref_virtual_teacher_loss(z[keep], y[keep], 0.6, 2.0, 0.9), rtol=1e-6)
    mask = keep.clone()
    mask[0, 0] = False
    assert_close(losses.label_smoothing_loss(z, y, 0.2, mask=mask),
                 losses.label_smoothing_loss(z[mask], y[mask], 0.2).item())


def test_logit_mse_and_annealing_masked_average_over_kept_elements():
    s, t = randn(3, 4, 5, seed=89), randn(3, 4, 5, seed=90)
    mask = randn(3, 4, seed=91) > 0
    sq = [(a - 0.7 * b) ** 2 for rs, rt, k in zip(_rows(s), _rows(t), mask.reshape(-1).tolist(), strict=True) if k
          for a, b in zip(rs, rt, strict=True)]
    s_bad, t_bad = garbage_rows(s, mask), garbage_rows(t, mask)
    assert_close(losses.annealing_kd_loss(s_bad, t_bad, 0.7, mask=mask), sum(sq) / len(sq))
    assert_close(losses.logit_mse(s_bad, t_bad, mask=mask), losses.logit_mse(s[mask], t[mask]).item())


# ------------------------------------------------------------------------------------------
# finite differences (float64) for the new losses, with a dropped row
# ------------------------------------------------------------------------------------------
def test_new_losses_gradcheck():
    s, t = randn(3, 2, 5, seed=92).requires_grad_(), randn(3, 2, 5, seed=93).requires_grad_()
    mask = torch.tensor([[True, True], [False, True], [True, True]])
    for r in ("batchmean", "sum", "none"):
        assert torch.autograd.gradcheck(lambda a, b, r=r: losses.reverse_kd_loss(a, b, 1.7, r, mask), (s, t))
        for beta in (0.0, 0.4, 1.0):
            assert torch.autograd.gradcheck(
                lambda a, b, r=r, beta=beta: losses.generalized_jsd_loss(a, b, beta, 1.7, r, mask), (s, t))
    vals, idx = t.detach().topk(3)
    assert torch.autograd.gradcheck(lambda a, v: losses.topk_kd_loss(a, v, idx, 2.0, "none", mask),
                                    (s, vals.clone().requires_grad_()))
    y = torch.tensor([[1, -100], [2, 3], [-100, 0]])
    assert torch.autograd.gradcheck(lambda a, b: losses.distillation_loss(a, b, y, 0.4, 2.0, mask=mask), (s, t))
    assert torch.autograd.gradcheck(lambda a, b: losses.logit_mse(a, b, mask), (s, t))
