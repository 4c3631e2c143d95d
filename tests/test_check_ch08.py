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


def phi_line(T, tau_max, T_start):  # through (1, 1) and (tau_max, 1 / T_start)
    return 1 - (T - 1) / (tau_max - 1) * (1 - 1 / T_start)


CORRECT = {
    "08.phi": [phi_line, lambda T, tau_max, T_start: torch.tensor(phi_line(T, tau_max, T_start))],
    "08.schedule": [
        lambda tau_max, k: [1 / T for T in range(tau_max, 0, -1) for _ in range(k)],
        lambda tau_max, k: 1 / torch.arange(tau_max, 0, -1).repeat_interleave(k),  # a tensor is fine too
    ],
    "08.gradient": [lambda z_s, z_t, phi: 2 * (z_s - phi * z_t) / z_s.numel()],
    "08.effective-T": [6, 6.0, torch.tensor(6)],
}

WRONG = {
    "08.phi": [
        lambda T, tau_max, T_start: 1 - (T - 1) / tau_max,  # the deck's Phi, ignores T_start
        lambda T, tau_max, T_start: 1 / (1 + (T_start - 1) * (T - 1) / (tau_max - 1)),  # linear softmax temperature
        lambda T, tau_max, T_start: 1 - (T - 1) / (tau_max - 1) * (1 - T_start),  # T_start instead of 1 / T_start
        lambda T, tau_max, T_start: phi_line(tau_max - T + 1, tau_max, T_start),  # runs the wrong way
        "not a function",
    ],
    "08.schedule": [
        lambda tau_max, k: [1 - (T - 1) / tau_max for T in range(tau_max, 0, -1) for _ in range(k)],  # the deck's
        lambda tau_max, k: [T for T in range(tau_max, 0, -1) for _ in range(k)],  # temperatures, not Phi
        lambda tau_max, k: [1 / T for T in range(1, tau_max + 1) for _ in range(k)],  # upwards
        lambda tau_max, k: [1 / T for T in range(tau_max, 0, -1)] * k,  # interleaved instead of held
        lambda tau_max, k: [1 / T for T in range(tau_max, 0, -1)],  # ignores k
    ],
    "08.gradient": [
        lambda z_s, z_t, phi: 2 * (z_s - phi * z_t),  # the deck's sum, not kdedu's mean
        lambda z_s, z_t, phi: (z_s - phi * z_t) / z_s.numel(),  # no factor 2
        lambda z_s, z_t, phi: 2 * (phi * z_t - z_s) / z_s.numel(),  # sign
        lambda z_s, z_t, phi: 2 * (z_s - phi * z_t) / len(z_s),  # mean over rows only
        lambda z_s, z_t, phi: 2 * (z_s - z_t) / z_s.numel(),  # ignores phi
    ],
    "08.effective-T": [3, 5, 8, 4, 14, "six"],
}

test_correct_answers_pass, test_wrong_answers_fail = answer_tests(CORRECT, WRONG)


def test_every_chapter_08_exercise_is_tested():
    ours = {k for k in check.EXERCISES if k.startswith("08.")}
    assert ours == set(CORRECT) == set(WRONG)


def test_targeted_messages():
    assert "deck's Phi" in _verdict("08.phi", WRONG["08.phi"][0]).message
    assert "softmax temperature 1 / Phi is linear" in _verdict("08.phi", WRONG["08.phi"][1]).message
    assert "deck's schedule" in _verdict("08.schedule", WRONG["08.schedule"][0]).message
    assert "temperatures" in _verdict("08.schedule", WRONG["08.schedule"][1]).message
    assert "backwards" in _verdict("08.schedule", WRONG["08.schedule"][2]).message
    assert "consecutive" in _verdict("08.schedule", WRONG["08.schedule"][3]).message
    assert "squared norm" in _verdict("08.gradient", WRONG["08.gradient"][0]).message
    assert "steps" in _verdict("08.effective-T", 3).message
    assert "tau_max = 10" in _verdict("08.effective-T", 5).message
    assert "one step too many" in _verdict("08.effective-T", 8).message
