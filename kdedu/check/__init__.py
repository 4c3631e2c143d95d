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

__all__ = ["Result", "exercise", "hint", "register", "EXERCISES", "UNANSWERED", "close", "function", "same_tensor",
           "answer_dict", "answer_number", "answer_seeds", "answer_accuracies", "answer_verdict", "picked",
           "retrain_tolerance"]

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


# ------------------------------------------------------------------------------------------
# Experiment-level exercises. The reader trains over the chapter's live seeds and answers with a dict of per-seed
# test accuracies (and a verdict); the checker validates the dict, recomputes the verdict from the reader's own
# lists, and trains one seed again, picked by a hash of the answer (the same answer is always checked on the same
# seed, and a made-up list cannot know which one). These helpers serve every chapter's experiment checks.
# ------------------------------------------------------------------------------------------
N_TEST = 360
"""The test digits every experiment-level exercise is scored on: an accuracy is a whole number of them / 360."""

VERDICTS = ("better", "worse", "no clear difference")


def answer_dict(answer, keys: tuple[str, ...]) -> None:
    """Raise :class:`Wrong` unless ``answer`` is a mapping with every key of ``keys``."""
    from collections.abc import Mapping

    if not isinstance(answer, Mapping):
        raise Wrong(f"the answer should be a dict with the keys {', '.join(keys)}, got {type(answer).__name__}.")
    missing = [key for key in keys if key not in answer]
    if missing:
        raise Wrong(f"the answer lacks the key(s) {', '.join(missing)}.")


def answer_number(name: str, value) -> float:
    """``value`` as a float, or :class:`Wrong` naming ``name``."""
    import numbers

    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise Wrong(f"{name} should be a number, got {type(value).__name__}.")
    return float(value)


def answer_seeds(answer, min_seeds: int = 5) -> list[int]:
    """``answer["seeds"]``: at least ``min_seeds`` distinct integers (the chapter's live seeds)."""
    import numbers

    seeds = answer["seeds"]
    seeds = seeds.tolist() if hasattr(seeds, "tolist") else seeds
    seeds = list(seeds) if hasattr(seeds, "__iter__") and not isinstance(seeds, (str, bytes)) else None
    if not seeds or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in seeds):
        raise Wrong('answer["seeds"] should be a list of integer seeds.')
    seeds = [int(s) for s in seeds]
    if len(set(seeds)) != len(seeds) or len(seeds) < min_seeds:
        raise Wrong(f'answer["seeds"] = {seeds}: give the chapter\'s live seeds, at least {min_seeds} distinct ones.')
    return seeds


def answer_accuracies(name: str, values, n: int, n_test: int = N_TEST, unit: str = "test examples") -> list[float]:
    """``values``: n test accuracies, one per seed, each a fraction of the ``n_test`` test examples (the 360 test
    digits by default; ``unit`` names them in messages, e.g. "test sentences"); ``name`` says where."""
    from collections.abc import Mapping

    values = values.tolist() if hasattr(values, "tolist") else values
    if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__len__"):
        raise Wrong(f"{name} should be a list of per-seed accuracies, got {type(values).__name__}.")
    out = [answer_number(f"an entry of {name}", v) for v in values]
    if len(out) != n:
        raise Wrong(f"{name} has {len(out)} values for {n} seeds: give one accuracy per seed, in the order of "
                    'answer["seeds"].')
    if any(v > 1 for v in out) and all(0 <= v <= 100 for v in out):
        raise Wrong(f"{name} looks like percentages; give accuracies as fractions, as evaluate returns them.")
    if any(not 0 <= v <= 1 or abs(v * n_test - round(v * n_test)) > 1e-4 for v in out):
        raise Wrong(f"{name} holds values that are not accuracies on the {n_test} {unit} (a whole number "
                    f"of them right, divided by {n_test}).")
    return out


def answer_verdict(answer, a: list[float], b: list[float], what: str) -> dict:
    """Check ``answer["verdict"]`` against ``compare(a, b)`` (``what`` names a, then b) and return the comparison."""
    from kdedu.stats import compare

    verdict = answer["verdict"]
    if not isinstance(verdict, str) or verdict not in VERDICTS:
        raise Wrong(f'answer["verdict"] should be one of {VERDICTS}, got {verdict!r}.')
    c = compare(a, b)
    if verdict != c["verdict"]:
        raise Wrong(f'answer["verdict"] = {verdict!r} is not what experiment.compare says of your two lists, {what}.')
    return c


def picked(answer_parts, n: int) -> int:
    """An index in range(n) fixed by the answer itself (a hash of ``answer_parts``, a JSON-able object)."""
    import hashlib
    import json

    return int(hashlib.sha256(json.dumps(answer_parts).encode()).hexdigest(), 16) % n


def one_seed_to_retrain(answer, key: str, n_test: int, unit: str = "test examples"):
    """The start of a checked experiment with per-seed accuracies: ``answer["seeds"]`` (at least two) and
    ``answer[key]`` (one accuracy per seed, each a fraction of ``n_test``). Returns ``(seeds, values, i,
    tolerance)``: the seed to train again, ``seeds[i]``, fixed by the answer itself, and how far the re-trained
    accuracy may be from ``values[i]`` (one of the ``n_test`` examples; three on a GPU)."""
    answer_dict(answer, ("seeds", key))
    seeds = answer_seeds(answer, min_seeds=2)
    values = answer_accuracies(f'answer["{key}"]', answer[key], len(seeds), n_test=n_test, unit=unit)
    return seeds, values, picked([seeds, values], len(seeds)), retrain_tolerance() * N_TEST / n_test


def retrain_tolerance() -> float:
    """How far a re-trained accuracy may be from the reader's: one test digit of float noise on a CPU, three on
    a GPU (whose kernels need not be deterministic)."""
    from kdedu.train import default_device

    return (1 if default_device().type == "cpu" else 3) / N_TEST + 1e-9



# the chapters' exercises, then the problem sets' own (book/assignments), register themselves on import
from kdedu.check import (  # noqa: E402, F401
    ch01,
    ch02,
    ch03,
    ch04,
    ch05,
    ch06,
    ch07,
    ch08,
    ch09,
    ch10,
    ch11,
    ch12,
    ch13,
    ch14,
    ch15,
    ch16,
    ch17,
    ch18,
    ch19,
    ps1,
    ps2,
    ps3,
    ps4,
    ps5,
    ps6,
    ps7,
)
