"""The exercise checkers of chapter 19 (fused kernels).

For every checker: a correct answer passes, plausible wrong answers fail (with a message that names the
mistake), and ``None`` is reported as "not answered yet" without raising.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from checks import answer_tests

from kdedu import check, losses


def _verdict(exercise_id, answer):
    return check.exercise(exercise_id, answer, verbose=False)


def merge_lse(m_a, d_a, m_b, d_b):
    """The reference answer: rescale both sums to the larger maximum (shift by 0 while it is -inf)."""
    m = torch.maximum(m_a, m_b)
    shift = torch.where(m == float("-inf"), torch.zeros_like(m), m)
    return m, d_a * torch.exp(m_a - shift) + d_b * torch.exp(m_b - shift)


def merge_lse_where(m_a, d_a, m_b, d_b):
    """Another correct answer: the part with the smaller maximum is rescaled, the other kept as it is."""
    a_top = m_a >= m_b
    m = torch.where(a_top, m_a, m_b)
    small_m, small_d, big_d = torch.where(a_top, m_b, m_a), torch.where(a_top, d_b, d_a), torch.where(a_top, d_a, d_b)
    factor = torch.where(small_d > 0, torch.exp(small_m - torch.where(torch.isinf(m), torch.zeros_like(m), m)), 0.0)
    return m, big_d + small_d * factor


def merge_lse_no_guard(m_a, d_a, m_b, d_b):
    """Rescales by exp(m_a - m) without the guard: nan when both maxima are -inf."""
    m = torch.maximum(m_a, m_b)
    return m, d_a * torch.exp(m_a - m) + d_b * torch.exp(m_b - m)


def merge_lse_overflow(m_a, d_a, m_b, d_b):
    """Exponentiates the maxima themselves: inf / inf for logits of size 1e4."""
    m = torch.maximum(m_a, m_b)
    return m, (d_a * torch.exp(m_a) + d_b * torch.exp(m_b)) / torch.exp(m)


def merge_lse_unscaled(m_a, d_a, m_b, d_b):
    """Adds the sums as they are: each is relative to its own maximum."""
    return torch.maximum(m_a, m_b), d_a + d_b


def merge_lse_logsumexp(m_a, d_a, m_b, d_b):
    """Returns the log-sum-exp of the union instead of its state."""
    m, d = merge_lse(m_a, d_a, m_b, d_b)
    return m + torch.log(d)


REVERSE_MISTAKES = {  # how -> what the checker's message says
    "forward KL": "forward KL",
    "sum": "sum over the rows",
    "no K": "rows do not sum to zero",
    "ignores upstream": "ignores the incoming gradient",
    "float32": "more than one gradient",
    "log-probs": "more than one gradient",
    "attribute": "ctx.save_for_backward",
    "recompute": "recomputes",
}

GIB_UPCAST = 2 * 4 * 8192 * 256000 / 2**30  # two float32 log-probability tensors of [8192, 256000]


class ReverseKD(torch.autograd.Function):
    """The reference answer: the reverse KL and its gradient T p_s (r - K) / N, computed in forward; only the
    gradient (in the logits' dtype) is saved. ``how`` makes the usual mistakes."""

    @staticmethod
    def forward(ctx, s, t, T, how="right"):
        log_ps = torch.log_softmax(s.float() / T, dim=-1)
        log_pt = torch.log_softmax(t.float() / T, dim=-1)
        p_s, r = log_ps.exp(), log_ps - log_pt
        K = (p_s * r).sum(-1, keepdim=True)
        n = 1 if how == "sum" else s.shape[0]
        grad = T * p_s * (r - (0 if how == "no K" else K)) / n
        loss = T * T * K.sum() / n
        if how == "forward KL":
            grad = T * (p_s - log_pt.exp()) / n
            loss = T * T * (log_pt.exp() * (log_pt - log_ps)).sum() / n
        ctx.how = how
        if how == "attribute":
            ctx.grad = grad.to(s.dtype)
        elif how == "float32":
            ctx.save_for_backward(grad)
        elif how == "recompute":
            ctx.T = T
            ctx.save_for_backward(s, t)
        elif how == "log-probs":
            ctx.save_for_backward(grad.to(s.dtype), log_ps, log_pt)
        else:
            ctx.save_for_backward(grad.to(s.dtype))
        return loss.to(s.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.how == "attribute":
            grad = ctx.grad
        elif ctx.how == "recompute":
            s, t = ctx.saved_tensors
            log_ps = torch.log_softmax(s.float() / ctx.T, dim=-1)
            r = log_ps - torch.log_softmax(t.float() / ctx.T, dim=-1)
            p_s = log_ps.exp()
            grad = (ctx.T * p_s * (r - (p_s * r).sum(-1, keepdim=True)) / s.shape[0]).to(s.dtype)
        else:
            grad = ctx.saved_tensors[0]
        if ctx.how == "ignores upstream":
            return grad, None, None, None
        return grad * grad_out, None, None, None


def reverse(how="right"):
    return lambda s, t, T: ReverseKD.apply(s, t, T, how)


def reverse_float64(s, t, T):
    """Another correct answer: the same design computed in the logits' own precision where that is above float32."""
    dtype = torch.promote_types(s.dtype, torch.float32)
    with torch.no_grad():  # no graph here: the Function below carries the gradient
        log_ps, log_pt = torch.log_softmax(s.to(dtype) / T, -1), torch.log_softmax(t.to(dtype) / T, -1)
    return _Exact.apply(s, log_ps, log_pt, T)


class _Exact(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s, log_ps, log_pt, T):
        p_s, r = log_ps.exp(), log_ps - log_pt
        K = (p_s * r).sum(-1, keepdim=True)
        ctx.save_for_backward((T * p_s * (r - K) / s.shape[0]).to(s.dtype))
        return (T * T * K.sum() / s.shape[0]).to(s.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        return ctx.saved_tensors[0] * grad_out, None, None, None


HELD = 2.0  # bf16: one gradient; the eager loss's count is measured (it depends on the torch version)


@functools.cache
def _eager_held():
    from kdedu.kernels import bench

    s = (3 * torch.randn(64, 1000)).to(torch.bfloat16).requires_grad_(True)
    t = (3 * torch.randn(64, 1000)).to(torch.bfloat16)
    return bench.held_bytes(lambda a, b: losses.reverse_kd_loss(a, b, 2.0), s, t) / s.numel()


def _reverse_answer(loss=None, **changes):
    return {"loss": loss or reverse(), "held": HELD, "eager_held": _eager_held(), **changes}

CORRECT = {
    "19.fused-bytes": [14, 14.0, torch.tensor(14.0)],
    "19.eager-memory": [GIB_UPCAST, 15.63],
    "19.merge-logsumexp": [merge_lse, merge_lse_where],
    "19.reverse-kl": [_reverse_answer(), _reverse_answer(reverse_float64),
                      _reverse_answer(held=torch.tensor(2.0), eager_held=np.float64(_eager_held()))],
}

WRONG = {
    "19.fused-bytes": [10, 12, 28, 4, 22, "fourteen"],
    "19.eager-memory": [GIB_UPCAST * 2**30 / 1e9, GIB_UPCAST / 2, GIB_UPCAST / 4, 2 * GIB_UPCAST, 0.5],
    "19.merge-logsumexp": [merge_lse_no_guard, merge_lse_overflow, merge_lse_unscaled, merge_lse_logsumexp,
                           "not a function"],
    "19.reverse-kl": [_reverse_answer(reverse(how)) for how in REVERSE_MISTAKES] + [
        _reverse_answer(losses.reverse_kd_loss),  # plain eager: the right numbers, but no fusion
        _reverse_answer(held=4.0), _reverse_answer(held=_eager_held(), eager_held=HELD),
        _reverse_answer(held=HELD * 64000), {"loss": reverse(), "held": 2.0}, _reverse_answer("not a function"),
    ],
}

test_correct_answers_pass, test_wrong_answers_fail = answer_tests(CORRECT, WRONG)


def test_reverse_kl_messages():
    """Each usual mistake of 19.reverse-kl gets a message that names it."""
    for how, needle in REVERSE_MISTAKES.items():
        message = _verdict("19.reverse-kl", _reverse_answer(reverse(how))).message
        assert needle in message, (how, message)
    eager = _verdict("19.reverse-kl", _reverse_answer(losses.reverse_kd_loss)).message
    assert "more than one gradient" in eager
    assert "measures 2.00" in _verdict("19.reverse-kl", _reverse_answer(held=4.0)).message
    assert "swapped" in _verdict("19.reverse-kl", _reverse_answer(held=_eager_held(), eager_held=HELD)).message
    assert "total in bytes" in _verdict("19.reverse-kl", _reverse_answer(held=HELD * 64000)).message
    assert "lacks the key(s) eager_held" in _verdict("19.reverse-kl", {"loss": reverse(), "held": 2.0}).message
    assert "should be a function" in _verdict("19.reverse-kl", _reverse_answer("not a function")).message


def test_reverse_kl_hint_gives_no_answer():
    hint = check.hint("19.reverse-kl", verbose=False)
    assert hint and not any(word in hint for word in ("r - K", "(r - K)", "p_a *", "save_for_backward(grad", "2.0"))


def test_every_chapter_19_exercise_is_tested():
    ours = {k for k in check.EXERCISES if k.startswith("19.")}
    assert ours == set(CORRECT) == set(WRONG)


def test_specific_messages():
    """The usual mistakes get a message that names them."""
    assert "served by the cache" in _verdict("19.fused-bytes", 10).message
    assert "both probabilities" in _verdict("19.fused-bytes", 12).message
    assert "float32" in _verdict("19.fused-bytes", 28).message
    assert "backward pass alone" in _verdict("19.fused-bytes", 4).message
    assert "GB" in _verdict("19.eager-memory", GIB_UPCAST * 2**30 / 1e9).message
    assert "after the cast" in _verdict("19.eager-memory", GIB_UPCAST / 2).message
    assert "one bf16 copy" in _verdict("19.eager-memory", GIB_UPCAST / 4).message
    assert "copies of the logits" in _verdict("19.eager-memory", 2 * GIB_UPCAST).message
    assert "nan" in _verdict("19.merge-logsumexp", merge_lse_no_guard).message
    assert "overflow" in _verdict("19.merge-logsumexp", merge_lse_overflow).message
    assert "pair of tensors" in _verdict("19.merge-logsumexp", merge_lse_logsumexp).message
