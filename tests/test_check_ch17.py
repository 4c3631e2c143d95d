"""The exercise checkers of chapter 17 (MetaDistil).

For every checker: a correct answer passes, plausible wrong answers fail (with a message), and ``None`` as "not
answered yet" is checked for every exercise in tests/test_check.py.
"""

from __future__ import annotations

import functools

import pytest
import torch
from checks import LazyAnswer, answer_tests, shift

from kdedu.check import ch17

# Both exercises re-train students of the chapter's teacher, the fine-tuned MiniLM (about a minute to fine-tune in a
# cold cache). These tests run the checkers on a tiny 6-layer stand-in teacher instead, in the same setting otherwise.
TINY_SETTING = {**ch17.LIVE_SETTING, "teacher": "sentiment-tiny", "lr": 1e-3,
                "teacher_overrides": {"num_layers": 6, "hidden": 64, "train_layers": 6}}
N_TEST = 500


@pytest.fixture(autouse=True, scope="module")
def _tiny_teacher():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ch17, "LIVE_SETTING", TINY_SETTING)
        ch17.metadistil_run.cache_clear()
        ch17._live_data.cache_clear()
        yield
    ch17.metadistil_run.cache_clear()
    ch17._live_data.cache_clear()


@functools.lru_cache(maxsize=1)
def _recipe():
    """The chapter's train_meta, teacher_kl and teacher_metrics, written again on the tiny teacher."""
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

    @torch.no_grad()
    def logits(top):
        return torch.cat([top.eval()(tb) for tb, _ in test_store])

    labels = torch.cat([yb for _, yb in test_store])
    original = logits(TeacherTop(teacher, 1))

    def run(seed, teacher_lr, weight):
        torch.manual_seed(seed)
        student = SequenceClassifier(student_from_teacher(teacher, (2, 5)), 2, pooling="cls")
        student.head.load_state_dict(teacher.head.state_dict())
        student.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
        method = MetaDistil(student, TeacherTop(teacher, 1), quiz_store, pilot_lr=s["lr"], teacher_lr=teacher_lr,
                            alpha=0.5, temperature=5.0, seed=seed, teacher_ce_weight=weight)
        fit(method, store, None, num_epochs=1, lr=s["lr"], seed=seed, progress=False)
        z = logits(method.teacher)
        p, q = torch.softmax(original / 5.0, -1), torch.softmax(z / 5.0, -1)
        kl = (p * (p.log() - q.log())).sum(-1).mean().item()   # KL(original || meta-trained) at T = 5
        kl_t1 = torch.nn.functional.kl_div(torch.log_softmax(z, -1), torch.log_softmax(original, -1),
                                           log_target=True, reduction="batchmean").item()
        return {"student": evaluate(student, test_loader)["acc"],
                "teacher": (z.argmax(-1) == labels).sum().item() / N_TEST, "kl": kl, "kl_t1": kl_t1}

    return run


@functools.lru_cache(maxsize=1)
def _movement() -> dict:
    runs = [_recipe()(0, lr, 0.0) for lr in ch17.MOVEMENT_LRS]
    return {"seed": 0, "teacher_lr": list(ch17.MOVEMENT_LRS), "kl": [r["kl"] for r in runs],
            "teacher_acc": [r["teacher"] for r in runs], "student_acc": [r["student"] for r in runs],
            "_kl_t1": [r["kl_t1"] for r in runs]}


@functools.lru_cache(maxsize=1)
def _teacher_ce() -> dict:
    lr, weight = ch17.TEACHER_CE["teacher_lr"], ch17.TEACHER_CE["teacher_ce_weight"]
    seeds = [0, 1]
    plain = [_recipe()(seed, lr, 0.0) for seed in seeds]
    ce = [_recipe()(seed, lr, weight) for seed in seeds]
    return {"seeds": seeds, "plain": [r["student"] for r in plain], "ce": [r["student"] for r in ce],
            "teacher_plain": [r["teacher"] for r in plain], "teacher_ce": [r["teacher"] for r in ce]}


def Movement(what: str, change=lambda answer: answer) -> LazyAnswer:
    def make():
        return {k: v for k, v in _movement().items() if not k.startswith("_")}
    return LazyAnswer(make, what, change)


def TeacherCE(what: str, change=lambda answer: answer) -> LazyAnswer:
    return LazyAnswer(_teacher_ce, what, change)


def _every_entry(key, fn):
    return lambda a: {**a, key: [fn(v) for v in a[key]]}


CORRECT = {
    "17.movement": [Movement("the chapter's recipe")],
    "17.teacher-ce": [TeacherCE("the chapter's recipe")],
}

WRONG = {
    "17.movement": [
        Movement("KL at T = 1", lambda a: {**a, "kl": _movement()["_kl_t1"]}),
        Movement("KL doubled", _every_entry("kl", lambda v: 2 * v)),
        Movement("KL in another order", lambda a: {**a, "kl": a["kl"][1:] + a["kl"][:1]}),
        Movement("teacher = student", lambda a: {**a, "teacher_acc": a["student_acc"]}),
        Movement("student shifted", lambda a: {**a, "student_acc": shift(a["student_acc"], 3, N_TEST)}),
        Movement("teacher shifted", lambda a: {**a, "teacher_acc": shift(a["teacher_acc"], 3, N_TEST)}),
        Movement("other learning rates", lambda a: {**a, "teacher_lr": [1e-5, 1e-4, 1e-3]}),
        Movement("negative KL", _every_entry("kl", lambda v: -v)),
        Movement("percentages", _every_entry("student_acc", lambda v: 100 * v)),
        Movement("no seed", lambda a: {k: v for k, v in a.items() if k != "seed"}),
        Movement("two runs", lambda a: {k: (v[:2] if isinstance(v, list) else v) for k, v in a.items()}),
        [0.1, 0.2, 0.3],
    ],
    "17.teacher-ce": [
        TeacherCE("ce shifted by 3 sentences", lambda a: {**a, "ce": shift(a["ce"], 3, N_TEST)}),
        TeacherCE("ce and plain swapped", lambda a: {**a, "ce": a["plain"], "plain": a["ce"]}),
        TeacherCE("teachers swapped", lambda a: {**a, "teacher_ce": a["teacher_plain"],
                                                 "teacher_plain": a["teacher_ce"]}),
        TeacherCE("teacher = students", lambda a: {**a, "teacher_ce": a["ce"]}),
        TeacherCE("teacher shifted", lambda a: {**a, "teacher_plain": shift(a["teacher_plain"], 4, N_TEST)}),
        TeacherCE("percentages", lambda a: {**a, "ce": [100 * v for v in a["ce"]]}),
        TeacherCE("one seed", lambda a: {k: (v[:1] if isinstance(v, list) else v) for k, v in a.items()}),
        TeacherCE("no teacher", lambda a: {k: v for k, v in a.items() if k != "teacher_ce"}),
        [0.8, 0.81],
    ],
}

test_correct_answers_pass, test_wrong_answers_fail = answer_tests(CORRECT, WRONG)


def test_the_tiny_runs_make_the_wrong_answers_wrong():
    """The stand-in setting must make the swaps and orders matter, or those wrong answers would test nothing."""
    movement, ce = _movement(), _teacher_ce()
    assert len(set(movement["kl"])) == 3
    assert all(abs(a - b) > 0.05 * b for a, b in zip(movement["_kl_t1"], movement["kl"], strict=True))
    assert ce["ce"] != ce["plain"] and ce["teacher_ce"] != ce["teacher_plain"]
