"""The two tests every chapter's exercise checkers share: correct answers pass, wrong answers fail.

A chapter's test file lists ``CORRECT`` and ``WRONG`` answers per exercise id and writes

    test_correct_answers_pass, test_wrong_answers_fail = answer_tests(CORRECT, WRONG)

(the unanswered placeholder is tested once for every exercise in tests/test_check.py).
"""

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
