"""The exercise checkers of chapter 07 (teacher assistants).

For every checker: a correct answer passes, plausible wrong answers fail (with a message), and
``None`` as "not answered yet" is checked for every exercise in tests/test_check.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from kdedu import check


def _verdict(exercise_id, answer):
    return check.exercise(exercise_id, answer, verbose=False)


# ------------------------------------------------------------------------------------------
# 07.assistant-size
# ------------------------------------------------------------------------------------------
def pick_log(p_teacher, p_student, candidates):
    middle = math.sqrt(p_teacher * p_student)
    return min(candidates, key=lambda p: abs(math.log(p / middle)))


def pick_log_tensor(p_teacher, p_student, candidates):  # the same rule, in torch, returning a 0-d tensor
    c = torch.tensor(candidates, dtype=torch.float64)
    d = (c.log() - 0.5 * (math.log(p_teacher) + math.log(p_student))).abs()
    return c[d.argmin()]


def pick_linear(p_teacher, p_student, candidates):  # geometric mean, but the distance on a linear scale
    middle = math.sqrt(p_teacher * p_student)
    return min(candidates, key=lambda p: abs(p - middle))


def pick_arithmetic(p_teacher, p_student, candidates):
    middle = (p_teacher + p_student) / 2
    return min(candidates, key=lambda p: abs(math.log(p / middle)))


def pick_geometric_mean_itself(p_teacher, p_student, candidates):  # not one of the candidates
    return math.sqrt(p_teacher * p_student)


@pytest.mark.parametrize("answer", [pick_log, pick_log_tensor])
def test_07_assistant_size_correct(answer):
    assert _verdict("07.assistant-size", answer)


@pytest.mark.parametrize("answer, words", [(pick_linear, "log scale"), (pick_arithmetic, "arithmetic"),
                                           (pick_geometric_mean_itself, "not one of the candidates"),
                                           (4810, "function")])
def test_07_assistant_size_wrong(answer, words):
    result = _verdict("07.assistant-size", answer)
    assert not result and words in result.message


# ------------------------------------------------------------------------------------------
# 07.inherited-share
# ------------------------------------------------------------------------------------------
def share(upper, lower, labels):
    wrong = lower != labels
    return ((lower == upper) & wrong).sum().item() / max(wrong.sum().item(), 1)


def share_tensor(upper, lower, labels):  # returns a 0-d tensor; nan-free when there is no error
    wrong = lower != labels
    return ((lower == upper) & wrong).float().sum() / wrong.float().sum().clamp_min(1)


def share_over_upper(upper, lower, labels):  # the chapter's `repeated`
    wrong = upper != labels
    return ((lower == upper) & wrong).sum().item() / max(wrong.sum().item(), 1)


def share_any_wrong(upper, lower, labels):  # counts a different wrong class as inherited
    wrong = lower != labels
    return (wrong & (upper != labels)).sum().item() / max(wrong.sum().item(), 1)


def share_percent(upper, lower, labels):
    return 100 * share(upper, lower, labels)


def share_nan_without_errors(upper, lower, labels):
    wrong = lower != labels
    return ((lower == upper) & wrong).float().sum().item() / wrong.float().sum().item() if wrong.any() else float("nan")


@pytest.mark.parametrize("answer", [share, share_tensor])
def test_07_inherited_share_correct(answer):
    assert _verdict("07.inherited-share", answer)


@pytest.mark.parametrize("answer, words", [(share_over_upper, "upper network's errors"), (share_any_wrong, "same"),
                                           (share_percent, "percentage"), (share_nan_without_errors, "no error"),
                                           ("0.5", "function")])
def test_07_inherited_share_wrong(answer, words):
    result = _verdict("07.inherited-share", answer)
    assert not result and words in result.message


# ------------------------------------------------------------------------------------------
# 07.chain-epochs
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("answer", [lambda m, e: (m + 2) * e, lambda m, e: torch.tensor(float((m + 2) * e))])
def test_07_chain_epochs_correct(answer):
    assert _verdict("07.chain-epochs", answer)


@pytest.mark.parametrize("answer, words", [(lambda m, e: (m + 1) * e, "one network is missing"),
                                           (lambda m, e: m * e, "the teacher and the student"),
                                           (lambda m, e: (m + 2) * e + 1, "chain_epochs"),
                                           (600, "function")])
def test_07_chain_epochs_wrong(answer, words):
    result = _verdict("07.chain-epochs", answer)
    assert not result and words in result.message
