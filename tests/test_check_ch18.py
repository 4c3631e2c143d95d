"""The exercise checkers of chapter 18 (many teachers, noise, a pre-fine-tuned student).

For every checker: a correct answer passes, plausible wrong answers fail (with a message), and ``None`` as "not
answered yet" is checked for every exercise in tests/test_check.py.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import pytest
import torch
from checks import LazyAnswer, answer_tests, shift

from kdedu import experiment
from kdedu.check import ch18
from kdedu.methods import average_teachers

# 18.guarded re-trains students of the chapter's teacher A, the fine-tuned MiniLM (about a minute to fine-tune in a
# cold cache). These tests run its checker on a tiny 6-layer stand-in teacher instead, in the same setting otherwise.
TINY_SETTING = {**ch18.GUARDED_SETTING, "teacher": "sentiment-tiny", "lr": 1e-3,
                "teacher_overrides": {"num_layers": 6, "hidden": 64, "train_layers": 6}}


@pytest.fixture(autouse=True, scope="module")
def _tiny_teacher():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ch18, "GUARDED_SETTING", TINY_SETTING)
        ch18.noisy_kd_accuracy.cache_clear()
        ch18._guarded_data.cache_clear()
        yield
    ch18.noisy_kd_accuracy.cache_clear()
    ch18._guarded_data.cache_clear()


def _binary_by_average_teachers(p, q):
    """The same quantity through kdedu: two-class logits (0, logit p), averaged, softmax."""
    z = [torch.stack([torch.zeros_like(v), torch.logit(v)], -1) for v in (p, q)]
    return torch.softmax(average_teachers(z, "logits", 1.0), -1)[..., 1]


def _binary_solution(p, q):  # the solution's code
    g1, g0 = (p * q).sqrt(), ((1 - p) * (1 - q)).sqrt()
    return g1 / (g1 + g0)


@functools.lru_cache(maxsize=1)
def _guarded_runs() -> dict:
    """The exercise done as the chapter's solution does it, on the tiny teacher, seeds 0 and 1."""
    from kdedu import zoo
    from kdedu.data import inject_noise, sentiment, text_loader
    from kdedu.methods import DistilBERTKD, precompute_teacher, quiz_split
    from kdedu.models import SequenceClassifier, student_from_teacher
    from kdedu.train import evaluate, fit

    s = TINY_SETTING
    teacher = zoo.text_teacher(s["teacher"], verbose=False, **s["teacher_overrides"])
    tok = teacher.tokenizer
    train, _ = quiz_split(sentiment("train", limit=512 + 64), 64, seed=0)
    test_loader = text_loader(sentiment("test"), tok, batch_size=128, group_by_length=True)

    def run(seed, keep):
        noisy = replace(train, sentences=inject_noise(train.sentences, 0.5, seed=seed, keep_labels=keep))
        store = precompute_teacher(teacher, text_loader(noisy, tok, batch_size=32), seed=None, group_by_length=True)
        torch.manual_seed(seed)
        student = SequenceClassifier(student_from_teacher(teacher, (2, 5)), 2, pooling="cls")
        student.head.load_state_dict(teacher.head.state_dict())
        student.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
        fit(DistilBERTKD(student, temperature=5.0, alpha=0.5, cosine_weight=0.0), store, None, num_epochs=1,
            lr=s["lr"], seed=seed, progress=False)
        return evaluate(student, test_loader)["acc"]

    seeds = [0, 1]
    guarded = [run(seed, True) for seed in seeds]
    deck = [run(seed, False) for seed in seeds]
    return {"seeds": seeds, "guarded": guarded, "deck": deck,
            "verdict": experiment.compare(guarded, deck)["verdict"]}


def Guarded(what: str, change=lambda answer: answer) -> LazyAnswer:
    return LazyAnswer(_guarded_runs, what, change)


def _other_verdict(answer):
    others = [v for v in ("better", "worse", "no clear difference") if v != answer["verdict"]]
    return {**answer, "verdict": others[0]}


CORRECT = {
    "18.binary": [_binary_solution, _binary_by_average_teachers,
                  lambda p, q: torch.sigmoid((torch.logit(p) + torch.logit(q)) / 2)],
    "18.guarded": [Guarded("the chapter's recipe")],
}

WRONG = {
    "18.binary": [
        lambda p, q: (p + q) / 2,                                   # the average of probabilities
        lambda p, q: (p * q).sqrt(),                                # not normalised
        lambda p, q: torch.sigmoid(torch.logit(p) + torch.logit(q)),  # the sum of the logits
        lambda p, q: float(p.mean()),                               # not a tensor of the inputs' shape
        "not a function",
    ],
    "18.guarded": [
        Guarded("guarded shifted by 3 sentences", lambda a: {**a, "guarded": shift(a["guarded"], 3, 500)}),
        Guarded("guarded and deck swapped", lambda a: {**a, "guarded": a["deck"], "deck": a["guarded"]}),
        Guarded("deck shifted", lambda a: {**a, "deck": shift(a["deck"], 4, 500)}),
        Guarded("another verdict", _other_verdict),
        Guarded("percentages", lambda a: {**a, "guarded": [100 * v for v in a["guarded"]]}),
        Guarded("one seed", lambda a: {k: (v[:1] if isinstance(v, list) else v) for k, v in a.items()}),
        Guarded("no verdict", lambda a: {k: v for k, v in a.items() if k != "verdict"}),
        [0.8, 0.81],
    ],
}

test_correct_answers_pass, test_wrong_answers_fail = answer_tests(CORRECT, WRONG)


def test_the_tiny_runs_differ_with_the_guard():
    """The stand-in setting must make keep_labels matter, or 'guarded and deck swapped' would test nothing."""
    runs = _guarded_runs()
    assert runs["guarded"] != runs["deck"]
