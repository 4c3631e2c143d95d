"""The exercise checkers of chapter 19 (fused kernels).

For every checker: a correct answer passes, plausible wrong answers fail (with a message that names the
mistake), and ``None`` is reported as "not answered yet" without raising.
"""

from __future__ import annotations

import torch
from checks import answer_tests

from kdedu import check


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


GIB_UPCAST = 2 * 4 * 8192 * 128256 / 2**30  # two float32 log-probability tensors of [8192, 128256]

CORRECT = {
    "19.fused-bytes": [14, 14.0, torch.tensor(14.0)],
    "19.eager-memory": [GIB_UPCAST, 7.83],
    "19.merge-logsumexp": [merge_lse, merge_lse_where],
}

WRONG = {
    "19.fused-bytes": [10, 12, 28, 4, 22, "fourteen"],
    "19.eager-memory": [GIB_UPCAST * 2**30 / 1e9, GIB_UPCAST / 2, GIB_UPCAST / 4, 2 * GIB_UPCAST, 0.5],
    "19.merge-logsumexp": [merge_lse_no_guard, merge_lse_overflow, merge_lse_unscaled, merge_lse_logsumexp,
                           "not a function"],
}

test_correct_answers_pass, test_wrong_answers_fail = answer_tests(CORRECT, WRONG)


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
