"""The exercise checkers of chapter 10 (intermediate layers).

For every checker: a correct answer passes, plausible wrong answers fail (with a message), and
``None`` as "not answered yet" is checked for every exercise in tests/test_check.py.
"""

from __future__ import annotations

import torch
from checks import answer_tests

from kdedu import check, losses
from kdedu.methods.ckd import contiguous_groups
from kdedu.methods.teacher_outputs import skip_map


def _verdict(exercise_id, answer):
    return check.exercise(exercise_id, answer, verbose=False)


def _alp_with_kdedu(h_s, h_t):
    teacher = list(h_t.unbind(1))
    return torch.stack([losses.alp_attention(h_s[:, j], teacher) for j in range(h_s.shape[1])], 1)


CORRECT = {
    "10.skip-map": [lambda M, N: {j: j * (N // M) for j in range(1, M)},
                    lambda M, N: skip_map(M, N) if M > 1 else {}],
    "10.alp-attention": [lambda h_s, h_t: torch.softmax(h_s @ h_t.transpose(1, 2), -1), _alp_with_kdedu],
    "10.ckd-groups": [contiguous_groups,
                      lambda M, N: [list(range(round(i * N / M) + 1, round((i + 1) * N / M) + 1)) for i in range(M)]],
}

WRONG = {
    "10.skip-map": [
        lambda M, N: {j: j * (N // M) for j in range(1, M + 1)},  # maps the last layer too
        lambda M, N: {j: j for j in range(1, M)},  # the bottom layers
        lambda M, N: {j: j * (N // M) - 1 for j in range(1, M)},  # 0-based teacher layers
        lambda M, N: [j * (N // M) for j in range(1, M)],  # not a dict
        "not a function",
    ],
    "10.alp-attention": [
        lambda h_s, h_t: torch.softmax(h_s @ h_t.transpose(1, 2), 1),  # softmax over the student layers
        lambda h_s, h_t: h_s @ h_t.transpose(1, 2),  # no softmax
        lambda h_s, h_t: torch.softmax(h_s @ h_t.transpose(1, 2) / h_s.shape[-1] ** 0.5, -1),  # scaled
        lambda h_s, h_t: torch.softmax(h_t @ h_s.transpose(1, 2), -1),  # transposed: (B, N, M)
    ],
    "10.ckd-groups": [
        lambda M, N: [list(range(i * (N // M), (i + 1) * (N // M))) for i in range(M)],  # 0-based, drops layers
        lambda M, N: [list(range(i * (N // M) + 1, (i + 1) * (N // M) + 1)) for i in range(M)],  # floor: skips
        lambda M, N: [list(range(1, N + 1))[i::M] for i in range(M)],  # interleaved, not contiguous
        lambda M, N: [[k] for k in range(1, N + 1)],  # one group per teacher layer
    ],
}

test_correct_answers_pass, test_wrong_answers_fail = answer_tests(CORRECT, WRONG)




def test_targeted_messages():
    assert "last student layer" in _verdict("10.skip-map", WRONG["10.skip-map"][0]).message
    assert "over the student layers" in _verdict("10.alp-attention", WRONG["10.alp-attention"][0]).message
    assert "exactly once" in _verdict("10.ckd-groups", WRONG["10.ckd-groups"][0]).message
    assert "contiguous" in _verdict("10.ckd-groups", WRONG["10.ckd-groups"][2]).message
