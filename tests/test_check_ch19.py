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


def online_logsumexp(x, block_size):
    """The reference answer: a running max and a rescaled running sum, one block at a time."""
    m = torch.full(x.shape[:-1], float("-inf"), dtype=x.dtype)
    d = torch.zeros(x.shape[:-1], dtype=x.dtype)
    for start in range(0, x.shape[-1], block_size):
        block = x[..., start:start + block_size]
        m_new = torch.maximum(m, block.max(dim=-1).values)
        shift = torch.where(m_new == float("-inf"), torch.zeros_like(m_new), m_new)
        d = d * torch.exp(m - shift) + torch.exp(block - shift[..., None]).sum(dim=-1)
        m = m_new
    return m + torch.log(d)


def naive_online_logsumexp(x, block_size):
    """Rescales by exp(m - m_new) without the -inf guard: nan after a block of -inf."""
    m = torch.full(x.shape[:-1], float("-inf"), dtype=x.dtype)
    d = torch.zeros(x.shape[:-1], dtype=x.dtype)
    for start in range(0, x.shape[-1], block_size):
        block = x[..., start:start + block_size]
        m_new = torch.maximum(m, block.max(dim=-1).values)
        d = d * torch.exp(m - m_new) + torch.exp(block - m_new[..., None]).sum(dim=-1)
        m = m_new
    return m + torch.log(d)


def unshifted_logsumexp(x, block_size):
    """No maximum at all: overflows for large logits."""
    total = torch.zeros(x.shape[:-1], dtype=x.dtype)
    for start in range(0, x.shape[-1], block_size):
        total = total + torch.exp(x[..., start:start + block_size]).sum(dim=-1)
    return torch.log(total)


def first_block_only(x, block_size):
    return torch.logsumexp(x[..., :block_size], dim=-1)


CORRECT = {
    "19.fused-bytes": [10, 10.0, torch.tensor(10.0)],
    "19.eager-memory": [2 * 2 * 8192 * 128256 / 2**30, 3.91],
    "19.online-logsumexp": [online_logsumexp, lambda x, b: torch.logsumexp(x, dim=-1)],
}

WRONG = {
    "19.fused-bytes": [6, 20, 126, 14.5, "ten"],
    "19.eager-memory": [2 * 2 * 8192 * 128256 / 1e9, 7.83, 1.96, 0.5],
    "19.online-logsumexp": [naive_online_logsumexp, unshifted_logsumexp, first_block_only, "not a function"],
}

test_correct_answers_pass, test_wrong_answers_fail = answer_tests(CORRECT, WRONG)


def test_every_chapter_19_exercise_is_tested():
    ours = {k for k in check.EXERCISES if k.startswith("19.")}
    assert ours == set(CORRECT) == set(WRONG)


def test_specific_messages():
    """The usual mistakes get a message that names them."""
    assert "forward pass only" in _verdict("19.fused-bytes", 6).message
    assert "float32" in _verdict("19.fused-bytes", 20).message
    assert "GB" in _verdict("19.eager-memory", 2 * 2 * 8192 * 128256 / 1e9).message
    assert "one copy" in _verdict("19.eager-memory", 1.96).message
    assert "nan" in _verdict("19.online-logsumexp", naive_online_logsumexp).message
    assert "overflow" in _verdict("19.online-logsumexp", unshifted_logsumexp).message
