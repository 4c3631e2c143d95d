"""The exercise checkers of chapters 03 (temperature) and 04 (KD as label smoothing).

For every checker: a correct answer passes, plausible wrong answers fail (with a message), and
``None`` as "not answered yet" is checked for every exercise in tests/test_check.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from checks import answer_tests

from kdedu import check


def _verdict(exercise_id, answer):
    return check.exercise(exercise_id, answer, verbose=False)


# ------------------------------------------------------------------------------------------
# chapter 03
# ------------------------------------------------------------------------------------------
def stable_soft_targets(logits, T):
    z = logits / T
    e = torch.exp(z - z.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def naive_soft_targets(logits, T):  # right values, but exp overflows for large logits
    e = torch.exp(logits / T)
    return e / e.sum(dim=-1, keepdim=True)


def centred_kd_limit(z_s, z_t):
    d = (z_s - z_s.mean(-1, keepdim=True)) - (z_t - z_t.mean(-1, keepdim=True))
    return d.pow(2).sum(-1) / (2 * z_s.shape[-1])


CORRECT = {
    "03.soft-targets": [stable_soft_targets, lambda z, T: torch.softmax(z / T, dim=-1)],
    "03.uniform-entropy": [math.log(10), 2.3026, torch.tensor(math.log(10))],
    "03.grad-exponent": [-2, -2.0],
    "03.kd-limit": [centred_kd_limit],
    "04.smoothed-targets": [lambda y, C, eps: (1 - eps) * F.one_hot(y, C).float() + eps / C],
    "04.ls-constant": [0.2 * math.log(10), 0.4605],
    "04.virtual-teacher": [
        lambda y, C, a: torch.full((len(y), C), (1 - a) / (C - 1)).scatter(1, y[:, None], a),
    ],
    "04.matching-a": [0.91, 1 - 0.1 + 0.1 / 10],
}

WRONG = {
    "03.soft-targets": [
        naive_soft_targets,  # overflows on [1000, 0]
        lambda z, T: torch.softmax(z * T, dim=-1),  # multiplies instead of dividing
        lambda z, T: torch.softmax(z, dim=-1),  # ignores T
        lambda z, T: torch.softmax(z / T, dim=0),  # wrong dimension
        "not a function",
    ],
    "03.uniform-entropy": [math.log2(10), 1.0, 0.0, "log 10"],
    "03.grad-exponent": [2, -1, -3, 0],
    "03.kd-limit": [
        lambda s, t: (s - t).pow(2).sum(-1) / (2 * s.shape[-1]),  # not centred
        lambda s, t: 2 * centred_kd_limit(s, t),  # 1/C instead of 1/(2C)
        lambda s, t: centred_kd_limit(s, t).mean(),  # one number instead of one per row
    ],
    "04.smoothed-targets": [
        lambda y, C, eps: (1 - eps) * F.one_hot(y, C).float()
        + eps / (C - 1) * (1 - F.one_hot(y, C).float()),  # eps spread over the wrong classes only
        lambda y, C, eps: F.one_hot(y, C).float(),  # no smoothing
        lambda y, C, eps: (1 - eps) * F.one_hot(y, C).float() + eps,  # does not sum to 1
    ],
    "04.ls-constant": [math.log(10), 0.2, 0.0, 0.2 * math.log2(10)],
    "04.virtual-teacher": [
        lambda y, C, a: torch.full((len(y), C), (1 - a) / C).scatter(1, y[:, None], a),  # divides by C
        lambda y, C, a: (1 - a) * F.one_hot(y, C).float() + a / C,  # swaps the roles
    ],
    "04.matching-a": [0.9, 0.99, 1.0],
}

test_correct_answers_pass, test_wrong_answers_fail = answer_tests(CORRECT, WRONG)


def test_every_chapter_03_04_exercise_is_tested():
    ours = {k for k in check.EXERCISES if k.startswith(("03.", "04."))}
    assert ours == set(CORRECT) == set(WRONG)


def test_specific_messages():
    """The most common mistakes get a message that names them, not just 'wrong'."""
    assert "overflow" in _verdict("03.soft-targets", naive_soft_targets).message
    assert "bits" in _verdict("03.uniform-entropy", math.log2(10)).message
    assert "sign" in _verdict("03.grad-exponent", 2).message
    assert "C - 1" in _verdict("04.smoothed-targets", WRONG["04.smoothed-targets"][0]).message
    assert "eps / C" in _verdict("04.matching-a", 0.9).message
