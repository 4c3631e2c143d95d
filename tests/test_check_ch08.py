"""The exercise checkers of chapter 08 (Annealing KD).

For every checker: a correct answer passes, plausible wrong answers fail (with a message), and
``None`` as "not answered yet" is checked for every exercise in tests/test_check.py.
"""

from __future__ import annotations

import torch
from checks import answer_tests

from kdedu import check


def _verdict(exercise_id, answer):
    return check.exercise(exercise_id, answer, verbose=False)


CORRECT = {
    "08.phi": [lambda T, tau_max: 1 - (T - 1) / tau_max, lambda T, tau_max: (tau_max - T + 1) / tau_max],
    "08.schedule": [
        lambda tau_max, k: [T for T in range(tau_max, 0, -1) for _ in range(k)],
        lambda tau_max, k: torch.arange(tau_max, 0, -1).repeat_interleave(k),  # a tensor is fine too
    ],
    "08.gradient": [lambda z_s, z_t, phi: 2 * (z_s - phi * z_t) / z_s.numel()],
    "08.effective-T": [6, 6.0, torch.tensor(6)],
}

WRONG = {
    "08.phi": [
        lambda T, tau_max: 1 - T / tau_max,  # forgets the - 1
        lambda T, tau_max: T / tau_max,  # grows with T
        lambda T, tau_max: 1 / T,  # a softmax-temperature reading
        "not a function",
    ],
    "08.schedule": [
        lambda tau_max, k: [T for T in range(1, tau_max + 1) for _ in range(k)],  # upwards
        lambda tau_max, k: list(range(tau_max, 0, -1)) * k,  # interleaved instead of held
        lambda tau_max, k: list(range(tau_max, 0, -1)),  # ignores k
        lambda tau_max, k: [T for T in range(tau_max, 1, -1) for _ in range(k)],  # stops at 2
    ],
    "08.gradient": [
        lambda z_s, z_t, phi: 2 * (z_s - phi * z_t),  # the deck's sum, not kdedu's mean
        lambda z_s, z_t, phi: (z_s - phi * z_t) / z_s.numel(),  # no factor 2
        lambda z_s, z_t, phi: 2 * (phi * z_t - z_s) / z_s.numel(),  # sign
        lambda z_s, z_t, phi: 2 * (z_s - phi * z_t) / len(z_s),  # mean over rows only
        lambda z_s, z_t, phi: 2 * (z_s - z_t) / z_s.numel(),  # ignores phi
    ],
    "08.effective-T": [2, 0.5, 5, "six"],
}

test_correct_answers_pass, test_wrong_answers_fail = answer_tests(CORRECT, WRONG)


def test_targeted_messages():
    assert "1 - T / tau_max" in _verdict("08.phi", WRONG["08.phi"][0]).message
    assert "consecutive" in _verdict("08.schedule", WRONG["08.schedule"][1]).message
    assert "squared norm" in _verdict("08.gradient", WRONG["08.gradient"][0]).message
    assert "schedule's step" in _verdict("08.effective-T", 2).message
