"""The exercise checkers of chapter 07 (teacher assistants).

For every checker: a correct answer passes, plausible wrong answers fail (with a message), and
``None`` as "not answered yet" is checked for every exercise in tests/test_check.py.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from kdedu import check, experiment


def _verdict(exercise_id, answer):
    return check.exercise(exercise_id, answer, verbose=False)


# ------------------------------------------------------------------------------------------
# 07.assistant-size
# ------------------------------------------------------------------------------------------
def targets(p_teacher, p_student, m):  # m sizes evenly spaced on a log scale, from the teacher's side down
    return [p_teacher ** (1 - i / (m + 1)) * p_student ** (i / (m + 1)) for i in range(1, m + 1)]


def pick_log(p_teacher, p_student, candidates, m):
    return [min(candidates, key=lambda p: abs(math.log(p / t))) for t in targets(p_teacher, p_student, m)]


def pick_log_tensor(p_teacher, p_student, candidates, m):  # the same rule in torch, returning a tensor
    c = torch.tensor(candidates, dtype=torch.float64)
    t = torch.tensor(targets(p_teacher, p_student, m), dtype=torch.float64)
    return c[(c.log()[None, :] - t.log()[:, None]).abs().argmin(dim=1)]


def pick_ascending(p_teacher, p_student, candidates, m):  # the student's side first
    return pick_log(p_teacher, p_student, candidates, m)[::-1]


def pick_linear(p_teacher, p_student, candidates, m):  # evenly spaced on a linear scale
    linear = [p_teacher + (p_student - p_teacher) * i / (m + 1) for i in range(1, m + 1)]
    return [min(candidates, key=lambda p: abs(p - t)) for t in linear]


def pick_targets_themselves(p_teacher, p_student, candidates, m):  # not candidates
    return targets(p_teacher, p_student, m)


def pick_one_assistant(p_teacher, p_student, candidates, m):  # the chapter's rule, whatever m
    return pick_log(p_teacher, p_student, candidates, 1)


def pick_number(p_teacher, p_student, candidates, m):  # a number instead of a list
    return pick_log(p_teacher, p_student, candidates, 1)[0]


@pytest.mark.parametrize("answer", [pick_log, pick_log_tensor])
def test_07_assistant_size_correct(answer):
    result = _verdict("07.assistant-size", answer)
    assert result, result.message


@pytest.mark.parametrize("answer, words", [(pick_ascending, "wrong order"), (pick_linear, "linear scale"),
                                           (pick_targets_themselves, "not candidates"),
                                           (pick_one_assistant, "needs"), (pick_number, "one number"),
                                           (4810, "function")])
def test_07_assistant_size_wrong(answer, words):
    result = _verdict("07.assistant-size", answer)
    assert not result and words in result.message, result.message


# ------------------------------------------------------------------------------------------
# 07.inherited-share
# ------------------------------------------------------------------------------------------
def share(upper, lower, labels):
    wrong = lower != labels
    return ((lower == upper) & wrong).sum().item() / max(wrong.sum().item(), 1)


def share_tensor(upper, lower, labels):  # returns a 0-d tensor; nan-free when there is no error
    wrong = lower != labels
    return ((lower == upper) & wrong).float().sum() / wrong.float().sum().clamp_min(1)


def share_over_upper(upper, lower, labels):  # the chapter's `repeated`
    wrong = upper != labels
    return ((lower == upper) & wrong).sum().item() / max(wrong.sum().item(), 1)


def share_any_wrong(upper, lower, labels):  # counts a different wrong class as inherited
    wrong = lower != labels
    return (wrong & (upper != labels)).sum().item() / max(wrong.sum().item(), 1)


def share_percent(upper, lower, labels):
    return 100 * share(upper, lower, labels)


def share_nan_without_errors(upper, lower, labels):
    wrong = lower != labels
    return ((lower == upper) & wrong).float().sum().item() / wrong.float().sum().item() if wrong.any() else float("nan")


@pytest.mark.parametrize("answer", [share, share_tensor])
def test_07_inherited_share_correct(answer):
    assert _verdict("07.inherited-share", answer)


@pytest.mark.parametrize("answer, words", [(share_over_upper, "upper network's errors"), (share_any_wrong, "same"),
                                           (share_percent, "percentage"), (share_nan_without_errors, "no error"),
                                           ("0.5", "function")])
def test_07_inherited_share_wrong(answer, words):
    result = _verdict("07.inherited-share", answer)
    assert not result and words in result.message


# ------------------------------------------------------------------------------------------
# 07.chain-epochs
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("answer", [lambda m, e: (m + 2) * e, lambda m, e: torch.tensor(float((m + 2) * e))])
def test_07_chain_epochs_correct(answer):
    assert _verdict("07.chain-epochs", answer)


@pytest.mark.parametrize("answer, words", [(lambda m, e: (m + 1) * e, "one network is missing"),
                                           (lambda m, e: m * e, "the teacher and the student"),
                                           (lambda m, e: (m + 2) * e + 1, "chain_epochs"),
                                           (600, "function")])
def test_07_chain_epochs_wrong(answer, words):
    result = _verdict("07.chain-epochs", answer)
    assert not result and words in result.message


# ------------------------------------------------------------------------------------------
# 07.early-stopping: the experiment, made once per session as the chapter's solution makes it
# ------------------------------------------------------------------------------------------
@functools.cache
def _early_runs() -> dict:
    """The chapter's train_student (width 16, the first 200 digits in one batch, 150 epochs, lr 0.01, KD with
    alpha 0.5 and T 4) over 5 seeds, from the width-4096 digits-mlp teacher stopped after 3 epochs and from the
    fully trained one; written here independently of the checker."""
    import kdedu
    from kdedu.methods import KD
    from kdedu.models import MLP

    transfer = kdedu.data.digits("train", limit=200)
    test_loader = kdedu.data.make_loader(kdedu.data.digits("test"), batch_size=512)
    teachers = {"early": kdedu.zoo.teacher("digits-mlp", hidden=[4096], num_epochs=3, verbose=False),
                "full": kdedu.zoo.teacher("digits-mlp", hidden=[4096], verbose=False)}
    seeds = list(range(5))

    def accuracy(teacher, seed):
        torch.manual_seed(seed)
        student = MLP(hidden=(16,))
        kdedu.fit(KD(student, teacher, alpha=0.5, temperature=4.0), [(transfer.x, transfer.y)], num_epochs=150,
                  lr=1e-2, seed=seed, progress=False)
        return kdedu.evaluate(student, test_loader)["acc"]

    out = {name: [accuracy(t, s) for s in seeds] for name, t in teachers.items()}
    return {"seeds": seeds, **out, "verdict": experiment.compare(out["early"], out["full"])["verdict"]}


def _early(**changes) -> dict:
    answer = dict(_early_runs())
    answer.update({k: (v(answer) if callable(v) else v) for k, v in changes.items()})
    if "verdict" not in changes:
        answer["verdict"] = experiment.compare(answer["early"], answer["full"])["verdict"]
    return answer


def test_07_early_stopping_correct():
    assert _verdict("07.early-stopping", _early())
    arrays = _early(seeds=lambda a: tuple(a["seeds"]), early=lambda a: np.array(a["early"]),
                    full=lambda a: torch.tensor(a["full"], dtype=torch.float64), verdict=lambda a: a["verdict"])
    assert _verdict("07.early-stopping", arrays)


def _other(verdict):
    return next(v for v in ("better", "worse", "no clear difference") if v != verdict)


@pytest.mark.parametrize("change, words", [
    (dict(early=lambda a: a["full"], full=lambda a: a["early"]), "seed"),     # the two lists swapped
    (dict(early=lambda a: [v + 2 / 360 if v <= 1 - 2 / 360 else v - 2 / 360 for v in a["early"]]), "seed"),
    (dict(early=lambda a: [100 * v for v in a["early"]]), "percentages"),
    (dict(early=lambda a: [v + 1e-3 for v in a["early"]]), "360 test examples"),
    (dict(verdict=lambda a: _other(a["verdict"])), "experiment.compare"),
    (dict(seeds=lambda a: a["seeds"][:3], early=lambda a: a["early"][:3], full=lambda a: a["full"][:3]), "at least"),
    (dict(full=lambda a: a["full"][:-1], verdict=lambda a: a["verdict"]), "values for 5 seeds"),
])
def test_07_early_stopping_wrong(change, words):
    result = _verdict("07.early-stopping", _early(**change))
    assert not result and words in result.message, result.message


def test_07_early_stopping_wrong_kind():
    for answer, words in [({"seeds": [0, 1]}, "lacks"), ([0.9, 0.9], "dict")]:
        result = _verdict("07.early-stopping", answer)
        assert not result and words in result.message
