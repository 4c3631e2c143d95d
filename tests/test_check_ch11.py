"""The exercise checkers of chapter 11: correct answers pass, typical wrong answers fail (tests/checks.py).

11.gap re-distils the one-dimensional student (a fraction of a second per run), so its answers are built lazily.
"""

from __future__ import annotations

import functools

import torch
from checks import LazyAnswer, answer_tests

from kdedu import experiment, losses
from kdedu.data.gap import distill_gap
from kdedu.methods import most_divergent

SEEDS = [0, 1, 2, 3, 4]


def _select_by_hand(t, s, k1, T):
    d = (torch.softmax(t / T, -1) * (torch.log_softmax(t / T, -1) - torch.log_softmax(s / T, -1))).sum(-1)  # (b, K)
    return torch.argsort(d, dim=1, descending=True)[:, :k1]


@functools.lru_cache(maxsize=1)  # the ten runs, once per test session
def _gap_answer():
    n8 = [float(distill_gap(8, s)["kl"].mean()) for s in SEEDS]
    n16 = [float(distill_gap(16, s)["kl"].mean()) for s in SEEDS]
    return {"seeds": SEEDS, "n8": n8, "n16": n16, "verdict": experiment.compare(n16, n8)["verdict"]}


def _flip_verdict(a):
    a["verdict"] = next(v for v in ("better", "worse", "no clear difference") if v != a["verdict"])
    return a


def _shift_one(a):
    a["n16"] = [v * 1.1 for v in a["n16"]]  # every seed off by 10 %, so the re-trained seed differs
    a["verdict"] = experiment.compare(a["n16"], a["n8"])["verdict"]
    return a


CORRECT = {
    "11.select": [lambda t, s, k1, T: most_divergent(t, s, k1, T), _select_by_hand,
                  lambda t, s, k1, T: _select_by_hand(t, s, k1, T).flip(1).tolist()],  # any order, as a list
    "11.gap": [LazyAnswer(_gap_answer, "the chapter's experiment")],
}

WRONG = {
    "11.select": [
        lambda t, s, k1, T: _select_by_hand(s, t, k1, T),                             # reverse KL
        lambda t, s, k1, T: torch.argsort(losses.kd_loss(s, t, T, reduction="none"), 1)[:, :k1],  # most agreeing
        lambda t, s, k1, T: _select_by_hand(t, s, k1, 1.0),                           # no temperature
        lambda t, s, k1, T: _select_by_hand(t, s, k1, T)[:, :1],                      # one neighbour only
        lambda t, s, k1, T: _select_by_hand(t, s, k1, T)[:, :1].repeat(1, k1),        # the same one k1 times
        "not a function",
    ],
    "11.gap": [
        LazyAnswer(_gap_answer, "a wrong verdict", _flip_verdict),
        LazyAnswer(_gap_answer, "16-point values that do not reproduce", _shift_one),
        LazyAnswer(_gap_answer, "the lists swapped", lambda a: {**a, "n8": a["n16"], "n16": a["n8"],
                                                                "verdict": experiment.compare(a["n8"], a["n16"])[
                                                                    "verdict"]}),
        LazyAnswer(_gap_answer, "one seed", lambda a: {**a, "seeds": [0], "n8": a["n8"][:1], "n16": a["n16"][:1]}),
        LazyAnswer(_gap_answer, "a list too short", lambda a: {**a, "n16": a["n16"][:4]}),
        LazyAnswer(_gap_answer, "negative divergences", lambda a: {**a, "n8": [-v for v in a["n8"]]}),
        {"seeds": SEEDS, "n8": [0.1] * 5},
        [0.1, 0.2],
    ],
}

test_correct_answers_pass, test_wrong_answers_fail = answer_tests(CORRECT, WRONG)
