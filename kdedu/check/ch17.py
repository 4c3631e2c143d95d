"""Auto-checks for the exercises of chapter 17 (MetaDistil)."""

from __future__ import annotations

import functools
import json
import math

import torch

from kdedu.check import (
    Wrong,
    answer_accuracies,
    answer_dict,
    answer_seeds,
    answer_verdict,
    function,
    picked,
    register,
)


def _reference_average(logits: list[torch.Tensor], mode: str, T: float) -> torch.Tensor:
    """The averaged distribution at T, entry by entry in float64: arithmetic ("probs") or normalised geometric
    ("logits") mean of the teachers' softmax at T."""
    rows, classes = logits[0].shape
    out = torch.empty(rows, classes, dtype=torch.float64)
    for r in range(rows):
        ps = []
        for z in logits:
            row = [float(v) / T for v in z[r]]
            m = max(row)
            e = [math.exp(v - m) for v in row]
            ps.append([v / sum(e) for v in e])
        if mode == "probs":
            mean = [sum(p[c] for p in ps) / len(ps) for c in range(classes)]
        else:
            g = [math.prod(p[c] for p in ps) ** (1 / len(ps)) for c in range(classes)]
            mean = [v / sum(g) for v in g]
        out[r] = torch.tensor(mean, dtype=torch.float64)
    return out


@register("17.average", hint="write both averages as logits whose softmax at T is the averaged distribution; for the "
                             "probabilities, go back from a distribution to logits with a logarithm, and remember "
                             "which temperature the softmax will divide by.")
def _check_17_average(fn):
    function("my_average(logits, mode, T)", fn)
    g = torch.Generator().manual_seed(17)
    for n, (B, C), T in ((2, (4, 3), 1.0), (3, (5, 4), 4.0), (2, (3, 2), 2.5), (1, (2, 5), 3.0)):
        logits = [3 * torch.randn(B, C, generator=g) for _ in range(n)]
        for mode in ("logits", "probs"):
            got = fn([z.clone() for z in logits], mode, T)
            if not isinstance(got, torch.Tensor) or tuple(got.shape) != (B, C):
                shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
                raise Wrong(f"my_average should return (B, C) = {(B, C)} logits, got {shape}.")
            p = torch.softmax(got.double() / T, -1)
            expected = _reference_average(logits, mode, T)
            if not torch.allclose(p, expected, atol=1e-5):
                if mode == "probs" and torch.allclose(got.double(), expected, atol=1e-5):
                    raise Wrong("my_average returns the averaged probabilities themselves; it should return logits "
                                "(their softmax at T is the average).")
                if mode == "probs" and torch.allclose(torch.softmax(got.double(), -1), expected, atol=1e-5):
                    raise Wrong(f"with mode='probs' and T = {T}, the softmax of your logits at T is not the averaged "
                                "distribution; it is at T = 1.", "logits z give softmax(z / T): scale the log by T.")
                raise Wrong(f"with mode={mode!r}, T = {T} and {n} teacher(s), the softmax of your logits at T is off "
                            f"by up to {(p - expected).abs().max().item():.3g} from the averaged distribution.")
    return ("averaging logits gives the normalised geometric mean of the teachers' distributions, averaging "
            "probabilities the arithmetic mean; they agree when the teachers agree.")


# ------------------------------------------------------------------------------------------------
# 17.teacher-ce: an experiment. The reader trains the chapter's MetaDistil students with teacher_ce_weight=1 over the
# live seeds; the checker trains one of the submitted seeds again, with and without the term, in the chapter's live
# setting, and recomputes the verdict.
# ------------------------------------------------------------------------------------------------
TEACHER_CE_SETTING = {"teacher": "sentiment-minilm", "teacher_overrides": {}, "layers": (2, 5), "n_train": 512,
                      "n_quiz": 64, "split_seed": 0, "batch_size": 32, "num_epochs": 1, "lr": 1e-4,
                      "teacher_lr": 1e-5, "alpha": 0.5, "temperature": 5.0, "train_layers": 1,
                      "teacher_ce_weight": 1.0, "n_test": 500, "min_seeds": 2}
"""The chapter's live setting (``train_one`` in the ``fast`` profile): the 6 -> 2 student copies teacher blocks 3 and 6
(0-based ``layers``), trains one epoch on 512 sentences, 64 more held out as the quiz set; the meta-update trains the
teacher's top block and head (``TeacherTop``). (The tests swap in a tiny teacher.)"""


@functools.lru_cache(maxsize=2)
def _teacher_ce_data(teacher_name: str, overrides: str, n_train: int, n_quiz: int, split_seed: int,
                     batch_size: int, train_layers: int):
    """The chapter's teacher, its stores (transfer set, quiz set, test set) and the test loader."""
    from kdedu import zoo
    from kdedu.data import sentiment, text_loader
    from kdedu.methods import TeacherTop, precompute_teacher, quiz_split

    teacher = zoo.text_teacher(teacher_name, verbose=False, **json.loads(overrides))
    tok = teacher.tokenizer
    needs = TeacherTop(teacher, train_layers).teacher_needs
    train, quiz = quiz_split(sentiment("train", limit=n_train + n_quiz), n_quiz, seed=split_seed)
    store = precompute_teacher(teacher, text_loader(train, tok, batch_size=batch_size), seed=None,
                               group_by_length=True, **needs)
    quiz_store = precompute_teacher(teacher, text_loader(quiz, tok, batch_size=batch_size), **needs)
    test = sentiment("test")
    test_store = precompute_teacher(teacher, text_loader(test, tok, batch_size=128), shuffle=False, **needs)
    test_loader = text_loader(test, tok, batch_size=128, group_by_length=True)
    return teacher, store, quiz_store, test_store, test_loader


@functools.lru_cache(maxsize=64)  # a resubmitted answer is checked again in no time
def metadistil_accuracies(seed: int, teacher_ce_weight: float) -> tuple[float, float]:
    """(student, teacher) test accuracy after the chapter's live MetaDistil run of ``seed`` with ``teacher_ce_weight``.

    The same steps as the chapter's ``make_student``, ``make_method`` and ``train_one``: the student built after
    ``torch.manual_seed(seed)`` (embeddings, blocks ``layers`` and head of the teacher, word embeddings frozen);
    ``MetaDistil(student, TeacherTop(teacher, 1), quiz_store, pilot_lr=lr, teacher_lr, alpha, T, seed=seed,
    teacher_ce_weight)``; ``fit(..., num_epochs, lr, seed=seed)``; scored on the 500 test sentences.
    """
    from kdedu.methods import MetaDistil, TeacherTop
    from kdedu.models import SequenceClassifier, student_from_teacher
    from kdedu.train import evaluate, fit

    s = TEACHER_CE_SETTING
    teacher, store, quiz_store, test_store, test_loader = _teacher_ce_data(
        s["teacher"], json.dumps(s["teacher_overrides"], sort_keys=True), s["n_train"], s["n_quiz"], s["split_seed"],
        s["batch_size"], s["train_layers"])
    torch.manual_seed(seed)
    student = SequenceClassifier(student_from_teacher(teacher, s["layers"]), teacher.head.out_features,
                                 pooling="cls")
    student.head.load_state_dict(teacher.head.state_dict())
    student.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    method = MetaDistil(student, TeacherTop(teacher, s["train_layers"]), quiz_store, pilot_lr=s["lr"],
                        teacher_lr=s["teacher_lr"], alpha=s["alpha"], temperature=s["temperature"], seed=seed,
                        teacher_ce_weight=teacher_ce_weight)
    fit(method, store, None, num_epochs=s["num_epochs"], lr=s["lr"], seed=seed, progress=False)
    student_acc = evaluate(student, test_loader)["acc"]
    top = method.teacher.eval()
    device = next(top.parameters()).device
    correct = n = 0
    with torch.no_grad():
        for tb, yb in test_store:
            correct += (top(tb.to(device)).argmax(-1).cpu() == yb).sum().item()
            n += len(yb)
    return student_acc, correct / n


@register("17.teacher-ce", hint="one more experiment.run over the chapter's live seeds, built like the chapter's "
                                "MetaDistil run with only teacher_ce_weight changed; score the student with "
                                "evaluate and the teacher with teacher_metrics, and keep every list in seed order.")
def _check_17_teacher_ce(answer):
    from kdedu.train import default_device

    s = TEACHER_CE_SETTING
    answer_dict(answer, ("seeds", "ce", "plain", "teacher", "verdict"))
    seeds = answer_seeds(answer, s["min_seeds"])
    n = len(seeds)
    ce = answer_accuracies('answer["ce"]', answer["ce"], n, s["n_test"], "test sentences")
    plain = answer_accuracies('answer["plain"]', answer["plain"], n, s["n_test"], "test sentences")
    teacher = answer_accuracies('answer["teacher"]', answer["teacher"], n, s["n_test"], "test sentences")
    if teacher == ce:
        raise Wrong('answer["teacher"] repeats your students\' accuracies: score each teacher (method.teacher) '
                    "with teacher_metrics.")
    c = answer_verdict(answer, ce, plain, 'answer["ce"] first')
    i = picked([seeds, ce, plain, teacher], n)
    allowed = (1 if default_device().type == "cpu" else 3) / s["n_test"] + 1e-9  # a sentence of float noise
    student_ce, teacher_ce = metadistil_accuracies(seeds[i], s["teacher_ce_weight"])
    student_plain, _ = metadistil_accuracies(seeds[i], 0.0)
    for name, got, again, what in (("plain", plain[i], student_plain, "the chapter's MetaDistil student"),
                                   ("ce", ce[i], student_ce, "a MetaDistil student with teacher_ce_weight=1"),
                                   ("teacher", teacher[i], teacher_ce, "its teacher")):
        if abs(got - again) > allowed:
            raise Wrong(f'seed {seeds[i]}: your answer["{name}"] says {100 * got:.2f} %, but training {what} in the '
                        f"live setting ({s['n_train']} sentences, {s['num_epochs']} epoch, lr = {s['lr']:g}) gives "
                        f"{100 * again:.2f} %. Check teacher_ce_weight, the student, the setting and the order of "
                        "the values.")
    return (f"your seed {seeds[i]} reproduces. With the teacher's own cross-entropy in its objective the students "
            f"score {100 * c['mean']:+.2f} ± {100 * c['se']:.2f} points (mean ± s.e.) against the chapter's: "
            f"{c['verdict']} over {n} seeds (minimum detectable effect {100 * c['mde']:.2f} points); your teachers "
            f"score {100 * sum(teacher) / n:.1f} % on average.")
