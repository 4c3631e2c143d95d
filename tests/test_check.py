"""kdedu.check, the framework: verdicts, messages, and the checker helpers (chapter checks: test_check_chNN.py)."""

from __future__ import annotations

import re

import pytest
import torch

from kdedu import check
from kdedu.check import Result, Wrong, close, exercise, function, register, same_tensor

TEST_ID = "00.test-framework"


@pytest.fixture
def temp_exercise():
    """Register a throw-away exercise and remove it afterwards, whatever happens."""
    assert TEST_ID not in check.EXERCISES

    @register(TEST_ID, hint="square the number")
    def _checker(fn):
        got = fn(3)
        if got == "crash-in-checker-helper":
            raise Wrong("a custom message", hint="a custom hint")
        close("your f(3)", got, 9.0)
        return "f(3) = 9, as it should."

    yield TEST_ID
    check.EXERCISES.pop(TEST_ID, None)


def test_unknown_exercise_raises_naming_the_id():
    with pytest.raises(ValueError, match="99.no-such-exercise"):
        exercise("99.no-such-exercise", 1)


@pytest.mark.parametrize("answer", [None, ...])
def test_unanswered_is_falsy_and_gives_no_hint(temp_exercise, answer, capsys):
    result = exercise(temp_exercise, answer)
    assert isinstance(result, Result) and not result
    assert result.message == check.UNANSWERED and "not answered" in result.message
    out = capsys.readouterr().out
    assert "❌" in out and "not answered" in out and TEST_ID in out
    assert "square the number" not in out and "Hint" not in out  # the hint only after a wrong answer or on request


def test_hint_on_request(temp_exercise, capsys):
    assert check.hint(temp_exercise) == "square the number"
    out = capsys.readouterr().out
    assert "square the number" in out and TEST_ID in out
    assert check.hint(temp_exercise, verbose=False) == "square the number"
    assert capsys.readouterr().out == ""


def test_hint_of_an_exercise_without_one(temp_exercise, capsys):
    check.EXERCISES.pop(TEST_ID)
    register(TEST_ID)(lambda answer: None)
    assert check.hint(TEST_ID) == ""
    assert "no hint" in capsys.readouterr().out


def test_hint_of_an_unknown_exercise_lists_the_ids():
    with pytest.raises(ValueError, match="99.no-such-exercise") as err:
        check.hint("99.no-such-exercise")
    assert "01.mlp-params" in str(err.value)  # the message lists the registered ids


def test_correct_answer_is_truthy(temp_exercise, capsys):
    result = exercise(temp_exercise, lambda v: v * v)
    assert result and result.ok and result.exercise == TEST_ID
    assert result.message == "f(3) = 9, as it should."
    out = capsys.readouterr().out
    assert "✅" in out and "f(3) = 9" in out


def test_wrong_answer_is_falsy_with_message_and_hint(temp_exercise, capsys):
    result = exercise(temp_exercise, lambda v: v + v)
    assert not result
    assert "too small" in result.message and "your f(3)" in result.message
    assert "Hint: square the number" in result.message
    out = capsys.readouterr().out
    assert "❌" in out and "too small" in out and "square the number" in out
    # a Wrong with its own hint uses that hint instead of the registered one
    result = exercise(temp_exercise, lambda v: "crash-in-checker-helper", verbose=False)
    assert not result and "a custom message" in result.message and "a custom hint" in result.message
    assert "square the number" not in result.message
    assert capsys.readouterr().out == ""  # verbose=False prints nothing


def test_crashing_answer_is_falsy_and_names_the_exception(temp_exercise, capsys):
    def broken(v):
        return {}[v]

    result = exercise(temp_exercise, broken)
    assert not result
    assert "KeyError" in result.message and "raised" in result.message
    assert "square the number" in result.message
    assert "KeyError" in capsys.readouterr().out


def test_default_success_message(temp_exercise):
    check.EXERCISES.pop(TEST_ID)
    register(TEST_ID)(lambda answer: None)
    result = exercise(TEST_ID, 42, verbose=False)
    assert result and result.message == "correct!"


def test_register_twice_raises(temp_exercise):
    with pytest.raises(ValueError, match=TEST_ID):
        register(TEST_ID)(lambda answer: "ok")


def test_result_repr_and_bool():
    assert repr(Result("x", True, "fine")) == "✅ [x] fine"
    assert repr(Result("x", False, "no")) == "❌ [x] no"
    assert bool(Result("x", True, "")) and not bool(Result("x", False, ""))


def test_every_registered_exercise_is_well_formed():
    for exercise_id, (fn, hint) in check.EXERCISES.items():
        assert callable(fn) and isinstance(hint, str)
        # a chapter's exercise is "NN.slug"; a problem set's own is "psN.slug" (book/assignments)
        assert re.fullmatch(r"(\d\d|ps\d)\.[A-Za-z0-9-]+", exercise_id), exercise_id


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("got", [1.0, 1.005, torch.tensor(0.995), torch.tensor([1.0]), 1])
def test_close_accepts(got):
    close("x", got, 1.0, rel=1e-2)


@pytest.mark.parametrize("got,match", [
    (1.02, "too large"), (0.98, "too small"), (float("inf"), "too large"),
    (torch.tensor([1.0, 1.0]), "single number"), (None, "should be a number"), ("abc", "should be a number"),
    ([1.0], "should be a number"),
])
def test_close_rejects(got, match):
    with pytest.raises(Wrong, match=match):
        close("x", got, 1.0, rel=1e-2)


def test_close_rejects_nan():
    with pytest.raises(Wrong, match="x = nan"):
        close("x", float("nan"), 1.0)


def test_close_absolute_tolerance_near_zero():
    close("x", 1e-7, 0.0)
    with pytest.raises(Wrong):
        close("x", 1e-3, 0.0)
    close("x", 1e-3, 0.0, abs_=1e-2)


def test_same_tensor():
    expected = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    same_tensor("t", expected.clone(), expected)
    same_tensor("t", expected.double() + 1e-7, expected)  # dtype does not matter, values do
    with pytest.raises(Wrong, match="should return a torch.Tensor"):
        same_tensor("t", expected.tolist(), expected)
    with pytest.raises(Wrong, match=r"shape \(4,\)"):
        same_tensor("t", expected.reshape(4), expected)
    with pytest.raises(Wrong, match=r"off by up to 0\.5"):
        same_tensor("t", expected + torch.tensor([[0.0, 0.5], [0.0, 0.0]]), expected)
    with pytest.raises(Wrong):
        same_tensor("t", torch.full((2, 2), float("nan")), expected)
    same_tensor("t", expected + 0.01, expected, atol=0.02)


def test_function():
    function("f(x)", len)
    function("f(x)", lambda x: x)
    with pytest.raises(Wrong, match=r"should be a function f\(x\), got int"):
        function("f(x)", 3)


@pytest.mark.parametrize("exercise_id", sorted(check.EXERCISES))
def test_every_exercise_rejects_an_answer_of_the_wrong_kind(exercise_id):
    """A string where a function or a number is asked for: a wrong answer with a message, never a crash."""
    result = check.exercise(exercise_id, "not an answer", verbose=False)
    assert not result and "should be" in result.message and "raised" not in result.message


@pytest.mark.parametrize("exercise_id", sorted(check.EXERCISES))
@pytest.mark.parametrize("answer", [None, ...])
def test_every_exercise_reports_an_unanswered_placeholder(exercise_id, answer, capsys):
    """Every chapter's checker: the placeholder left in the notebook prints "not answered yet" and nothing else:
    the same message for every exercise, without the hint (the rendered book shows it under every exercise)."""
    result = check.exercise(exercise_id, answer)
    assert not result and result.message == check.UNANSWERED
    out = capsys.readouterr().out
    assert out.strip() == f"❌ [{exercise_id}] {check.UNANSWERED}"
    registered_hint = check.EXERCISES[exercise_id][1]
    assert registered_hint and registered_hint not in out and "Hint" not in out


@pytest.mark.parametrize("exercise_id", sorted(check.EXERCISES))
def test_every_exercise_gives_its_hint_on_request_and_after_a_wrong_answer(exercise_id, capsys):
    registered_hint = check.EXERCISES[exercise_id][1]
    assert check.hint(exercise_id) == registered_hint
    assert registered_hint in capsys.readouterr().out
    result = check.exercise(exercise_id, "not an answer", verbose=False)  # wrong: a string
    assert not result and f"Hint: {registered_hint}" in result.message
