"""Auto-checks for the exercises of chapter 17 (MetaDistil).

Both exercises are experiments in the chapter's live setting (``LIVE_SETTING``): the reader trains MetaDistil
students as the chapter's ``train_meta`` does, with another teacher learning rate (and, for 17.teacher-ce, the
teacher's own cross-entropy in its objective), and answers with what the runs measured. The checker trains one of
the submitted runs again, picked by a hash of the answer, and compares.
"""

from __future__ import annotations

import functools
import json
import math

import torch

from kdedu.check import Wrong, answer_accuracies, answer_dict, answer_number, answer_seeds, close, picked, register

LIVE_SETTING = {"teacher": "sentiment-minilm", "teacher_overrides": {}, "layers": (2, 5), "n_train": 512,
                "n_quiz": 64, "split_seed": 0, "batch_size": 32, "num_epochs": 1, "lr": 1e-4, "alpha": 0.5,
                "temperature": 5.0, "train_layers": 1, "n_test": 500}
"""The chapter's live setting (``train_one`` in the ``fast`` profile): the 6 -> 2 student copies teacher blocks 3 and 6
(0-based ``layers``), trains one epoch on 512 sentences, 64 more held out as the quiz set; the meta-update trains the
teacher's top block and head (``TeacherTop``). (The tests swap in a tiny teacher.)"""

MOVEMENT_LRS = (1e-4, 1e-3, 1e-2)
"""17.movement: the teacher learning rates the reader tries (the chapter's runs use 1e-5)."""

TEACHER_CE = {"teacher_lr": 1e-3, "teacher_ce_weight": 1.0, "min_seeds": 2}
"""17.teacher-ce: a teacher learning rate at which the teacher moves, and the weight of its own cross-entropy."""


@functools.lru_cache(maxsize=2)
def _live_data(teacher_name: str, overrides: str, n_train: int, n_quiz: int, split_seed: int, batch_size: int,
               train_layers: int):
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


def _test_logits(top, test_store) -> torch.Tensor:
    """A TeacherTop's logits on the (unshuffled) test store, in its order, on the CPU."""
    top.eval()
    device = next(top.parameters()).device
    with torch.no_grad():
        return torch.cat([top(tb.to(device)).float().cpu() for tb, _ in test_store])


def soft_target_kl(original: torch.Tensor, moved: torch.Tensor, T: float) -> float:
    """Mean over rows of KL(p_original(T) || p_moved(T)), in nats: how far the soft targets moved."""
    log_p, log_q = torch.log_softmax(original.double() / T, -1), torch.log_softmax(moved.double() / T, -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean().item()


@functools.lru_cache(maxsize=64)  # a resubmitted answer is checked again in no time
def metadistil_run(seed: int, teacher_lr: float, teacher_ce_weight: float) -> dict[str, float]:
    """The chapter's live MetaDistil run of ``seed`` with ``teacher_lr`` and ``teacher_ce_weight``: the student's and
    the meta-trained teacher's test accuracy, and the mean KL(original || meta-trained) of the teacher's soft
    targets at T on the test set.

    The same steps as the chapter's ``make_student`` and ``train_meta``: the student built after
    ``torch.manual_seed(seed)`` (embeddings, blocks ``layers`` and head of the teacher, word embeddings frozen);
    ``MetaDistil(student, TeacherTop(teacher, 1), quiz_store, pilot_lr=lr, teacher_lr, alpha, T, seed=seed,
    teacher_ce_weight)``; ``fit(..., num_epochs, lr, seed=seed)``; scored on the 500 test sentences.
    """
    from kdedu.methods import MetaDistil, TeacherTop
    from kdedu.models import SequenceClassifier, student_from_teacher
    from kdedu.train import evaluate, fit

    s = LIVE_SETTING
    teacher, store, quiz_store, test_store, test_loader = _live_data(
        s["teacher"], json.dumps(s["teacher_overrides"], sort_keys=True), s["n_train"], s["n_quiz"], s["split_seed"],
        s["batch_size"], s["train_layers"])
    torch.manual_seed(seed)
    student = SequenceClassifier(student_from_teacher(teacher, s["layers"]), teacher.head.out_features,
                                 pooling="cls")
    student.head.load_state_dict(teacher.head.state_dict())
    student.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    method = MetaDistil(student, TeacherTop(teacher, s["train_layers"]), quiz_store, pilot_lr=s["lr"],
                        teacher_lr=teacher_lr, alpha=s["alpha"], temperature=s["temperature"], seed=seed,
                        teacher_ce_weight=teacher_ce_weight)
    fit(method, store, None, num_epochs=s["num_epochs"], lr=s["lr"], seed=seed, progress=False)
    labels = torch.cat([yb for _, yb in test_store])
    before = _test_logits(TeacherTop(teacher, s["train_layers"]), test_store)
    after = _test_logits(method.teacher, test_store)
    return {"student": evaluate(student, test_loader)["acc"],
            "teacher": (after.argmax(-1) == labels).float().mean().item(),
            "kl": soft_target_kl(before, after, s["temperature"])}


def _allowed() -> float:
    """How far a re-trained accuracy may be: one test sentence of float noise on a CPU, three on a GPU."""
    from kdedu.train import default_device

    return (1 if default_device().type == "cpu" else 3) / LIVE_SETTING["n_test"] + 1e-9


def _numbers(name: str, values, n: int, what: str) -> list[float]:
    values = values.tolist() if hasattr(values, "tolist") else values
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__") or len(values) != n:
        raise Wrong(f"{name} should be a list of {n} numbers, one per {what}.")
    return [answer_number(f"an entry of {name}", v) for v in values]


def _retrained(name: str, got: float, again: float, where: str) -> None:
    if abs(got - again) > _allowed():
        raise Wrong(f"{where}: your {name} says {100 * got:.2f} %, but training it again in the live setting "
                    f"({LIVE_SETTING['n_train']} sentences, {LIVE_SETTING['num_epochs']} epoch, lr = "
                    f"{LIVE_SETTING['lr']:g}) gives {100 * again:.2f} %. Check the run's settings and the order of "
                    "the values.")


# ------------------------------------------------------------------------------------------------
# 17.movement: how far the teacher moves, against its learning rate.
# ------------------------------------------------------------------------------------------------
@register("17.movement", hint="call the chapter's train_meta once per teacher learning rate, with the same seed; "
                              "teacher_kl and teacher_metrics score the teacher it returns, evaluate the student.")
def _check_17_movement(answer):
    s, n = LIVE_SETTING, len(MOVEMENT_LRS)
    answer_dict(answer, ("seed", "teacher_lr", "kl", "teacher_acc", "student_acc"))
    seed = answer["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise Wrong(f'answer["seed"] should be an integer seed, got {seed!r}.')
    lrs = _numbers('answer["teacher_lr"]', answer["teacher_lr"], n, "run")
    if not all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(lrs, MOVEMENT_LRS, strict=True)):
        raise Wrong(f'answer["teacher_lr"] should be {list(MOVEMENT_LRS)}, in this order.')
    kl = _numbers('answer["kl"]', answer["kl"], n, "teacher learning rate")
    if any(v < 0 for v in kl):
        raise Wrong('answer["kl"] has a negative entry; a KL divergence is never negative.')
    teacher = answer_accuracies('answer["teacher_acc"]', answer["teacher_acc"], n, s["n_test"], "test sentences")
    student = answer_accuracies('answer["student_acc"]', answer["student_acc"], n, s["n_test"], "test sentences")
    if teacher == student:
        raise Wrong('answer["teacher_acc"] repeats your students\' accuracies: score each meta-trained teacher.')
    i = picked([seed, lrs, kl, teacher, student], n)
    again = metadistil_run(seed, MOVEMENT_LRS[i], 0.0)
    where = f"seed {seed}, teacher_lr = {MOVEMENT_LRS[i]:g}"
    _retrained('answer["student_acc"]', student[i], again["student"], where)
    _retrained('answer["teacher_acc"]', teacher[i], again["teacher"], where)
    try:
        close(f'answer["kl"] for teacher_lr = {MOVEMENT_LRS[i]:g}', kl[i], again["kl"], rel=0.05, abs_=1e-7)
    except Wrong as err:
        raise Wrong(f"{err} Training it again gives {again['kl']:.3g} nats: the mean over the test sentences of "
                    f"KL(original || meta-trained) at T = {s['temperature']:g}.") from None
    return (f"your run at teacher_lr = {MOVEMENT_LRS[i]:g} reproduces. Over a hundredfold range of learning rates "
            f"the soft targets moved by {kl[0]:.2g} to {kl[-1]:.2g} nats (mean KL), and the teacher's test accuracy "
            f"went from {100 * teacher[0]:.1f} % to {100 * teacher[-1]:.1f} %.")


# ------------------------------------------------------------------------------------------------
# 17.teacher-ce: does the teacher's own cross-entropy keep its accuracy, at a learning rate where it moves?
# ------------------------------------------------------------------------------------------------
@register("17.teacher-ce", hint="two runs per live seed with train_meta at the exercise's teacher learning rate, one "
                                "with teacher_ce_weight=0 and one with 1; keep every list in seed order.")
def _check_17_teacher_ce(answer):
    from kdedu.stats import compare

    s, t = LIVE_SETTING, TEACHER_CE
    answer_dict(answer, ("seeds", "plain", "ce", "teacher_plain", "teacher_ce"))
    seeds = answer_seeds(answer, t["min_seeds"])
    n = len(seeds)
    lists = {key: answer_accuracies(f'answer["{key}"]', answer[key], n, s["n_test"], "test sentences")
             for key in ("plain", "ce", "teacher_plain", "teacher_ce")}
    if lists["teacher_plain"] == lists["plain"] or lists["teacher_ce"] == lists["ce"]:
        raise Wrong("a teacher list repeats the students' accuracies: score each run's meta-trained teacher.")
    i = picked([seeds, *lists.values()], n)
    plain = metadistil_run(seeds[i], t["teacher_lr"], 0.0)
    ce = metadistil_run(seeds[i], t["teacher_lr"], t["teacher_ce_weight"])
    where = f"seed {seeds[i]}, teacher_lr = {t['teacher_lr']:g}"
    for key, again in (("plain", plain["student"]), ("ce", ce["student"]), ("teacher_plain", plain["teacher"]),
                       ("teacher_ce", ce["teacher"])):
        _retrained(f'answer["{key}"]', lists[key][i], again, f"{where}, {key}")
    teachers = compare(lists["teacher_ce"], lists["teacher_plain"])
    students = compare(lists["ce"], lists["plain"])
    return (f"your seed {seeds[i]} reproduces. With its own cross-entropy the teacher scores "
            f"{100 * teachers['mean']:+.2f} ± {100 * teachers['se']:.2f} points (mean ± s.e. over {n} seeds) against "
            f"the teacher without it ({teachers['verdict']}); the students, {100 * students['mean']:+.2f} ± "
            f"{100 * students['se']:.2f} points ({students['verdict']}).")
