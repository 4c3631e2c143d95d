"""The exercise checkers of chapter 10 (intermediate layers).

For every checker: a correct answer passes, plausible wrong answers fail (with a message), and
``None`` as "not answered yet" is checked for every exercise in tests/test_check.py.
"""

from __future__ import annotations

import torch
from checks import answer_tests

from kdedu import check, losses
from kdedu.methods.ckd import contiguous_groups


def _verdict(exercise_id, answer):
    return check.exercise(exercise_id, answer, verbose=False)


def _entropy_with_kdedu(h_s, h_t, scale):
    teacher = list(h_t.unbind(1))
    a = torch.stack([losses.alp_attention(h_s[:, j], teacher, scale) for j in range(h_s.shape[1])], 1)  # (B, M, N)
    return -(a * a.clamp_min(1e-30).log()).sum(-1)


def _entropy(h_s, h_t, scale):
    log_a = torch.log_softmax(scale * h_s @ h_t.transpose(1, 2), -1)  # (B, M, N)
    return -(log_a.exp() * log_a).sum(-1)


CORRECT = {
    "10.last-map": [lambda M, N: {j: N - M + j for j in range(1, M)},
                    lambda M, N: dict(zip(range(1, M), range(N - M + 1, N), strict=True))],
    "10.alp-entropy": [_entropy, _entropy_with_kdedu],
    "10.ckd-groups": [contiguous_groups,
                      lambda M, N: [list(range(round(i * N / M) + 1, round((i + 1) * N / M) + 1)) for i in range(M)]],
}

WRONG = {
    "10.last-map": [
        lambda M, N: {j: N - M + j for j in range(1, M + 1)},  # maps the last layer too
        lambda M, N: {j: j * (N // M) for j in range(1, M)},  # PKD-Skip
        lambda M, N: {j: N - M + j + 1 for j in range(1, M)},  # includes the teacher's last layer
        lambda M, N: {j: N - M + j - 1 for j in range(1, M)},  # 0-based teacher layers
        lambda M, N: [N - M + j for j in range(1, M)],  # not a dict
        "not a function",
    ],
    "10.alp-entropy": [
        lambda h_s, h_t, scale: _entropy(h_s.transpose(0, 1), h_t.transpose(0, 1), scale).T,  # nonsense axes
        lambda h_s, h_t, scale: -(torch.softmax(scale * h_s @ h_t.transpose(1, 2), -1)
                                  * torch.softmax(scale * h_s @ h_t.transpose(1, 2), -1).log()).sum(-1),  # nan at 0
        lambda h_s, h_t, scale: _entropy(h_s, h_t, 1.0),  # ignores the scale
        lambda h_s, h_t, scale: torch.log_softmax(scale * h_s @ h_t.transpose(1, 2), -1).max(-1).values,  # not H
        lambda h_s, h_t, scale: _entropy(h_s, h_t, scale).sum(-1),  # summed over student layers
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
    assert "last student layer" in _verdict("10.last-map", WRONG["10.last-map"][0]).message
    assert "PKD-Skip" in _verdict("10.last-map", WRONG["10.last-map"][1]).message
    assert "nan or inf" in _verdict("10.alp-entropy", WRONG["10.alp-entropy"][1]).message
    assert "exactly once" in _verdict("10.ckd-groups", WRONG["10.ckd-groups"][0]).message
    assert "contiguous" in _verdict("10.ckd-groups", WRONG["10.ckd-groups"][2]).message
