"""Auto-checks for the book's exercises: ``kdedu.check.exercise("03.soft-targets", my_answer)``.

A check never raises on a wrong answer: it prints what is wrong and a hint, and returns a
:class:`Result` that is truthy only when the answer is right, so a notebook runs top to bottom
whether or not the reader has solved the exercise yet. An unanswered exercise (``None`` or ``...``)
prints only that it is unanswered (:data:`UNANSWERED`), never the hint, so a rendered page shows no
hint under an exercise nobody has tried. The hint comes after a wrong answer, or on request with
``kdedu.check.hint("03.soft-targets")``. A hint points at the idea, never at the solution.
Instructors can ``assert kdedu.check.exercise(...)`` in a grading notebook.

Each exercise is a checker registered with :func:`register`; each chapter's checkers live in their
own module, ``kdedu/check/chNN.py``, imported at the end of this file.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Result", "exercise", "hint", "register", "EXERCISES", "UNANSWERED", "close", "function", "same_tensor"]

UNANSWERED = "not answered yet: replace the `None`/`...` with your answer."
"""The whole message of an unanswered check, the same for every exercise (no hint)."""


@dataclass
class Result:
    """The outcome of a check: ``ok`` and a message (what is wrong, and a hint)."""

    exercise: str
    ok: bool
    message: str

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        mark = "✅" if self.ok else "❌"
        return f"{mark} [{self.exercise}] {self.message}"

    def _ipython_display_(self) -> None:
        """Shown as a cell's last value: nothing, since :func:`exercise` has printed the verdict."""


class Wrong(Exception):
    """Raised inside a checker to report a wrong answer: ``Wrong(what is wrong, hint)``."""

    def __init__(self, what: str, hint: str = ""):
        super().__init__(what)
        self.what, self.hint = what, hint


EXERCISES: dict[str, tuple[Callable, str]] = {}


def register(exercise_id: str, hint: str = ""):
    """Decorator: ``@register("03.soft-targets", hint=...)`` over ``def checker(answer) -> str``.

    The checker raises :class:`Wrong` for a wrong answer and returns a short success message.
    """

    def deco(fn: Callable) -> Callable:
        if exercise_id in EXERCISES:
            raise ValueError(f"exercise {exercise_id!r} is registered twice")
        EXERCISES[exercise_id] = (fn, hint)
        return fn

    return deco


def _registered(exercise_id: str) -> tuple[Callable, str]:
    if exercise_id not in EXERCISES:
        raise ValueError(f"exercise_id must be one of {sorted(EXERCISES)}, got {exercise_id!r}")
    return EXERCISES[exercise_id]


def hint(exercise_id: str, verbose: bool = True) -> str:
    """Print the hint of the exercise ``exercise_id`` and return it (``""`` if it has none)."""
    text = _registered(exercise_id)[1]
    if verbose:
        print(f"💡 [{exercise_id}] {text}" if text else f"[{exercise_id}] this exercise has no hint.")
    return text


def exercise(exercise_id: str, answer, verbose: bool = True) -> Result:
    """Check ``answer`` for the exercise ``exercise_id``, print the verdict and return it.

    ``None`` or ``...`` (the placeholder of an unanswered exercise) gives :data:`UNANSWERED` and no hint;
    a wrong answer gives what is wrong and the hint.
    """
    checker, registered_hint = _registered(exercise_id)
    if answer is None or answer is Ellipsis:
        result = Result(exercise_id, False, UNANSWERED)
    else:
        try:
            result = Result(exercise_id, True, checker(answer) or "correct!")
        except Wrong as w:
            h = w.hint or registered_hint
            result = Result(exercise_id, False, w.what + (f" Hint: {h}" if h else ""))
        except Exception as err:  # the reader's code crashed: say so, with the error
            result = Result(exercise_id, False, f"your answer raised {type(err).__name__}: {err}."
                            + (f" Hint: {registered_hint}" if registered_hint else ""))
    if verbose:
        print(repr(result))
    return result


# ------------------------------------------------------------------------------------------
# helpers for checkers
# ------------------------------------------------------------------------------------------
def function(signature: str, fn) -> None:
    """Raise :class:`Wrong` unless the answer ``fn`` is callable; ``signature`` is what the exercise asks for."""
    if not callable(fn):
        raise Wrong(f"the answer should be a function {signature}, got {type(fn).__name__}.")


def close(name: str, got, expected: float, rel: float = 1e-2, abs_: float = 1e-6) -> None:
    """Raise :class:`Wrong` unless the number ``got`` is within tolerance of ``expected``."""
    if isinstance(got, torch.Tensor):
        if got.numel() != 1:
            raise Wrong(f"{name} should be a single number, got a tensor of shape {tuple(got.shape)}.")
        got = got.item()
    try:
        got = float(got)
    except (TypeError, ValueError):
        raise Wrong(f"{name} should be a number, got {type(got).__name__}.") from None
    if not math.isclose(got, expected, rel_tol=rel, abs_tol=abs_):
        direction = "too large" if got > expected else "too small"
        raise Wrong(f"{name} = {got:.6g} is {direction}.")


def same_tensor(name: str, got, expected: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Raise :class:`Wrong` unless ``got`` is a tensor of ``expected``'s shape and values."""
    if not isinstance(got, torch.Tensor):
        raise Wrong(f"{name} should return a torch.Tensor, got {type(got).__name__}.")
    if got.shape != expected.shape:
        raise Wrong(f"{name} returned shape {tuple(got.shape)}, expected {tuple(expected.shape)}.")
    if not torch.allclose(got.double(), expected.double(), atol=atol, rtol=rtol):
        err = (got.double() - expected.double()).abs().max().item()
        raise Wrong(f"{name} is off by up to {err:.3g} from the correct values.")


# the chapters' exercises register themselves on import
from kdedu.check import ch01, ch02, ch03, ch04, ch05, ch06, ch07, ch08, ch09, ch10, ch19  # noqa: E402, F401
