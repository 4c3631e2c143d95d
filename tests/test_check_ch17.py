"""The exercise checkers of chapter 17 (MetaDistil).

For every checker: a correct answer passes, plausible wrong answers fail (with a message), and ``None`` as "not
answered yet" is checked for every exercise in tests/test_check.py.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from checks import LazyAnswer, answer_tests, shift

from kdedu import experiment
from kdedu.check import ch17
from kdedu.methods import average_teachers

# 17.teacher-ce re-trains students of the chapter's teacher, the fine-tuned MiniLM (about a minute to fine-tune in a
# cold cache). These tests run its checker on a tiny 6-layer stand-in teacher instead, in the same setting otherwise.
TINY_SETTING = {**ch17.TEACHER_CE_SETTING, "teacher": "sentiment-tiny", "lr": 1e-3, "teacher_lr": 1e-3,
                "teacher_overrides": {"num_layers": 6, "hidden": 64, "train_layers": 6}}


@pytest.fixture(autouse=True, scope="module")
def _tiny_teacher():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ch17, "TEACHER_CE_SETTING", TINY_SETTING)
        ch17.metadistil_accuracies.cache_clear()
        ch17._teacher_ce_data.cache_clear()
        yield
    ch17.metadistil_accuracies.cache_clear()
    ch17._teacher_ce_data.cache_clear()


def _average(logits, mode, T):  # the solution's code
    z = torch.stack(logits)
    if mode == "logits":
        return z.mean(0)
    log_p = torch.log_softmax(z / T, dim=-1)
    return T * (torch.logsumexp(log_p, 0) - math.log(len(logits)))


@functools.lru_cache(maxsize=1)
def _teacher_ce_runs() -> dict:
    """The exercise done as the chapter does it (``make_student``, ``make_method``, ``train_one``, ``teacher_metrics``),
    on the tiny teacher, seeds 0 and 1, with and without the teacher's cross-entropy."""
    from kdedu import zoo
    from kdedu.data import sentiment, text_loader
    from kdedu.methods import MetaDistil, TeacherTop, precompute_teacher, quiz_split
    from kdedu.models import SequenceClassifier, student_from_teacher
    from kdedu.train import evaluate, fit

    s = TINY_SETTING
    teacher = zoo.text_teacher(s["teacher"], verbose=False, **s["teacher_overrides"])
    tok = teacher.tokenizer
    needs = TeacherTop(teacher, 1).teacher_needs
    train, quiz = quiz_split(sentiment("train", limit=512 + 64), 64, seed=0)
    store = precompute_teacher(teacher, text_loader(train, tok, batch_size=32), seed=None, group_by_length=True,
                               **needs)
    quiz_store = precompute_teacher(teacher, text_loader(quiz, tok, batch_size=32), **needs)
    test_store = precompute_teacher(teacher, text_loader(sentiment("test"), tok, batch_size=128), shuffle=False,
                                    **needs)
    test_loader = text_loader(sentiment("test"), tok, batch_size=128, group_by_length=True)

    def run(seed, weight):
        torch.manual_seed(seed)
        student = SequenceClassifier(student_from_teacher(teacher, (2, 5)), 2, pooling="cls")
        student.head.load_state_dict(teacher.head.state_dict())
        student.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
        method = MetaDistil(student, TeacherTop(teacher, 1), quiz_store, pilot_lr=s["lr"], teacher_lr=s["teacher_lr"],
                            alpha=0.5, temperature=5.0, seed=seed, teacher_ce_weight=weight)
        fit(method, store, None, num_epochs=1, lr=s["lr"], seed=seed, progress=False)
        with torch.no_grad():
            right = sum((method.teacher(tb).argmax(-1) == yb).sum().item() for tb, yb in test_store)
        return evaluate(student, test_loader)["acc"], right / 500

    seeds = [0, 1]
    ce = [run(seed, 1.0) for seed in seeds]
    plain = [run(seed, 0.0)[0] for seed in seeds]
    students = [a for a, _ in ce]
    return {"seeds": seeds, "ce": students, "plain": plain, "teacher": [t for _, t in ce],
            "verdict": experiment.compare(students, plain)["verdict"]}


def TeacherCE(what: str, change=lambda answer: answer) -> LazyAnswer:
    return LazyAnswer(_teacher_ce_runs, what, change)


def _with(**changes):
    return lambda answer: {**answer, **changes}


def _other_verdict(answer):
    others = [v for v in ("better", "worse", "no clear difference") if v != answer["verdict"]]
    return {**answer, "verdict": others[0]}


CORRECT = {
    "17.average": [_average, average_teachers],
    "17.teacher-ce": [TeacherCE("the chapter's recipe")],
}

WRONG = {
    "17.average": [
        lambda logits, mode, T: torch.stack(logits).mean(0) if mode == "logits"
        else torch.softmax(torch.stack(logits) / T, -1).mean(0),                  # probabilities, not logits
        lambda logits, mode, T: torch.stack(logits).mean(0) if mode == "logits"
        else torch.softmax(torch.stack(logits) / T, -1).mean(0).log(),            # log p without the factor T
        lambda logits, mode, T: torch.stack(logits).mean(0) if mode == "logits"
        else T * torch.softmax(torch.stack(logits), -1).mean(0).log(),            # averaged at T = 1
        lambda logits, mode, T: torch.stack(logits).mean(0),                      # ignores the mode
        lambda logits, mode, T: torch.stack(logits).sum(0),                       # sums the logits
        "not a function",
    ],
    "17.teacher-ce": [
        TeacherCE("ce shifted by 3 sentences", lambda a: {**a, "ce": shift(a["ce"], 3, 500)}),
        TeacherCE("ce and plain swapped", lambda a: {**a, "ce": a["plain"], "plain": a["ce"]}),
        TeacherCE("teacher = students", lambda a: {**a, "teacher": a["ce"]}),
        TeacherCE("teacher shifted", lambda a: {**a, "teacher": shift(a["teacher"], 4, 500)}),
        TeacherCE("another verdict", _other_verdict),
        TeacherCE("percentages", lambda a: {**a, "ce": [100 * v for v in a["ce"]]}),
        TeacherCE("one seed", lambda a: {k: (v[:1] if isinstance(v, list) else v) for k, v in a.items()}),
        TeacherCE("no verdict", lambda a: {k: v for k, v in a.items() if k != "verdict"}),
        [0.8, 0.81],
    ],
}

test_correct_answers_pass, test_wrong_answers_fail = answer_tests(CORRECT, WRONG)


def test_the_tiny_runs_differ_with_the_term():
    """The stand-in setting must make the term matter, or 'ce and plain swapped' would test nothing."""
    runs = _teacher_ce_runs()
    assert runs["ce"] != runs["plain"]
