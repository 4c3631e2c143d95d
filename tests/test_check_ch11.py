"""The exercise checkers of chapter 11: correct answers pass, typical wrong answers fail (tests/checks.py).

11.temperature's correct answers are also checked against the library's own selection, most_divergent.

11.gap re-distils the one-dimensional student (a fraction of a second per run), so its answers are built lazily.
"""

from __future__ import annotations

import functools

import torch
from checks import LazyAnswer, answer_tests

from kdedu import experiment
from kdedu.data.gap import distill_gap
from kdedu.methods import most_divergent

SEEDS = [0, 1, 2, 3, 4]


def _kept(answer, T):
    """The positions the chapter's most_divergent keeps at temperature T (the library, not the checker's float64)."""
    t, s = torch.as_tensor(answer["teacher"], dtype=torch.float32), torch.as_tensor(answer["student"],
                                                                                    dtype=torch.float32)
    return set(most_divergent(t[None], s[None], answer["k1"], T)[0].tolist())


# two neighbours: one on which both models pick class 0 with different confidence, one mild disagreement
TEMPERATURE = {"teacher": [[10.0, 0.0], [1.0, 0.0]], "student": [[6.0, 0.0], [0.0, 0.0]], "k1": 1,
               "temperatures": (1.0, 10.0)}
THREE = {"teacher": torch.tensor([[10.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 3.0, 0.0]]),
         "student": torch.tensor([[6.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 3.0, 0.0]]), "k1": 1,
         "temperatures": [0.5, 8]}


def test_correct_temperature_answers_really_flip():
    """Independent of the checker: the library's selection differs at the two temperatures."""
    for answer in (TEMPERATURE, THREE):
        T1, T2 = answer["temperatures"]
        assert _kept(answer, T1) != _kept(answer, T2)


@functools.lru_cache(maxsize=1)  # the ten runs, once per test session
def _gap_answer():
    n8 = [float(distill_gap(8, s)["kl"].mean()) for s in SEEDS]
    n16 = [float(distill_gap(16, s)["kl"].mean()) for s in SEEDS]
    return {"seeds": SEEDS, "n8": n8, "n16": n16, "verdict": experiment.compare(n8, n16)["verdict"]}


def _flip_verdict(a):
    a["verdict"] = next(v for v in ("better", "worse", "no clear difference") if v != a["verdict"])
    return a


def _shift_one(a):
    a["n16"] = [v * 1.1 for v in a["n16"]]  # every seed off by 10 %, so the re-trained seed differs
    a["verdict"] = experiment.compare(a["n8"], a["n16"])["verdict"]
    return a


CORRECT = {
    "11.temperature": [TEMPERATURE, THREE, {**TEMPERATURE, "temperatures": (10.0, 1.0)}],
    "11.gap": [LazyAnswer(_gap_answer, "the chapter's experiment")],
}

WRONG = {
    "11.temperature": [
        {**TEMPERATURE, "temperatures": (1.0, 1.5)},          # the same neighbour kept at both temperatures
        {**TEMPERATURE, "temperatures": (2.0, 2.0)},          # one temperature twice
        {**TEMPERATURE, "k1": 2},                             # k1 = K: everything is kept
        {**TEMPERATURE, "temperatures": (0.0, 10.0)},         # not a temperature
        {**TEMPERATURE, "student": [[6.0, 0.0]]},             # shapes differ
        {**TEMPERATURE, "teacher": [[1.0, 0.0], [1.0, 0.0]], "student": [[0.0, 0.0], [0.0, 0.0]]},  # a tie
        {k: v for k, v in TEMPERATURE.items() if k != "k1"},  # a key missing
        "not a dict",
    ],
    "11.gap": [
        LazyAnswer(_gap_answer, "a wrong verdict", _flip_verdict),
        LazyAnswer(_gap_answer, "16-point values that do not reproduce", _shift_one),
        LazyAnswer(_gap_answer, "the lists swapped", lambda a: {**a, "n8": a["n16"], "n16": a["n8"],
                                                                "verdict": experiment.compare(a["n16"], a["n8"])[
                                                                    "verdict"]}),
        LazyAnswer(_gap_answer, "one seed", lambda a: {**a, "seeds": [0], "n8": a["n8"][:1], "n16": a["n16"][:1]}),
        LazyAnswer(_gap_answer, "a list too short", lambda a: {**a, "n16": a["n16"][:4]}),
        LazyAnswer(_gap_answer, "negative divergences", lambda a: {**a, "n8": [-v for v in a["n8"]]}),
        {"seeds": SEEDS, "n8": [0.1] * 5},
        [0.1, 0.2],
    ],
}

test_correct_answers_pass, test_wrong_answers_fail = answer_tests(CORRECT, WRONG)
