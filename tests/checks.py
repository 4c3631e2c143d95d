"""The two tests every chapter's exercise checkers share: correct answers pass, wrong answers fail.

A chapter's test file lists ``CORRECT`` and ``WRONG`` answers per exercise id and writes

    test_correct_answers_pass, test_wrong_answers_fail = answer_tests(CORRECT, WRONG)

(the unanswered placeholder is tested once for every exercise in tests/test_check.py).
"""

import copy
from collections.abc import Mapping

import pytest

from kdedu import check


def _cases(answers: dict) -> list:
    return [pytest.param(e, a, id=f"{e}-{i}") for e, some in answers.items() for i, a in enumerate(some)]


def answer_tests(correct: dict, wrong: dict):
    @pytest.mark.parametrize("exercise_id,answer", _cases(correct))
    def test_correct_answers_pass(exercise_id, answer):
        result = check.exercise(exercise_id, answer, verbose=False)
        assert result, f"{exercise_id}: a correct answer failed: {result.message}"
        assert "not answered" not in result.message

    @pytest.mark.parametrize("exercise_id,answer", _cases(wrong))
    def test_wrong_answers_fail(exercise_id, answer):
        result = check.exercise(exercise_id, answer, verbose=False)
        assert not result, f"{exercise_id}: the wrong answer {answer!r} passed"
        assert result.message and "not answered" not in result.message

    return test_correct_answers_pass, test_wrong_answers_fail


class LazyAnswer(Mapping):
    """An answer made from a correct one (``make()``, a dict) by ``change`` when it is first read, so collecting
    the tests trains nothing; for the experiment-level exercises."""

    def __init__(self, make, what: str, change=lambda answer: answer):
        self.make, self.what, self.change, self._answer = make, what, change, None

    def _get(self) -> dict:
        if self._answer is None:
            self._answer = self.change(copy.deepcopy(dict(self.make())))
        return self._answer

    def __getitem__(self, key):
        return self._get()[key]

    def __iter__(self):
        return iter(self._get())

    def __len__(self):
        return len(self._get())

    def __repr__(self):
        return f"<answer: {self.what}>"


def shift(values, k: int, n_test: int = 360) -> list:
    """Every accuracy moved by k of the n_test test examples (the other way where that would leave [0, 1])."""
    return [v + k / n_test if 0 <= v + k / n_test <= 1 else v - k / n_test for v in values]
