"""The exercise checkers of chapters 03 (temperature) and 04 (KD as label smoothing).

For every checker: a correct answer passes, plausible wrong answers fail (with a message), and
``None`` as "not answered yet" is checked for every exercise in tests/test_check.py.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from checks import LazyAnswer, answer_tests, shift

from kdedu import check, experiment, losses


def _verdict(exercise_id, answer):
    return check.exercise(exercise_id, answer, verbose=False)


# ------------------------------------------------------------------------------------------
# chapter 03
# ------------------------------------------------------------------------------------------
def stable_soft_targets(logits, T):
    z = logits / T
    e = torch.exp(z - z.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def naive_soft_targets(logits, T):  # right values, but exp overflows for large logits
    e = torch.exp(logits / T)
    return e / e.sum(dim=-1, keepdim=True)


def kd_low_T(z_s, z_t):  # the student's top logit minus its logit for the teacher's top class
    return z_s.max(dim=-1).values - z_s.gather(-1, z_t.argmax(dim=-1, keepdim=True)).squeeze(-1)


def kd_low_T_numeric(z_s, z_t, T=1e-3):  # T KL(p_t(T) || p_s(T)) = kd_loss / T at a small T, in float64
    return losses.kd_loss(z_s.double(), z_t.double(), T, reduction="none") / T


def centred_kd_limit(z_s, z_t):  # the chapter's T -> infinity limit: the wrong limit here
    d = (z_s - z_s.mean(-1, keepdim=True)) - (z_t - z_t.mean(-1, keepdim=True))
    return d.pow(2).sum(-1) / (2 * z_s.shape[-1])


def smoothed_towards(y, prior, eps):
    return (1 - eps) * F.one_hot(y, len(prior)).to(prior.dtype) + eps * prior


def smoothed_uniform(y, prior, eps):  # the chapter's label smoothing: ignores the prior
    C = len(prior)
    return (1 - eps) * F.one_hot(y, C).to(prior.dtype) + eps / C


def smoothed_wrong_classes_only(y, prior, eps):  # 1 - eps to the label, eps spread by the prior over the others
    onehot = F.one_hot(y, len(prior)).to(prior.dtype)
    rest = prior * (1 - onehot)
    return (1 - eps) * onehot + eps * rest / rest.sum(dim=1, keepdim=True)


# ------------------------------------------------------------------------------------------
# 03.confident-teacher: an experiment. Its answer is trained once per test session, when first read (collecting the
# tests trains nothing), as the chapter's solution trains it: the weak teacher (3 epochs), KD at T = 1 and T = 4.
# ------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _confident_runs() -> dict:
    import kdedu
    from kdedu.methods import KD

    weak = kdedu.zoo.teacher("digits-cnn", num_epochs=3, verbose=False)
    test = kdedu.data.digits("test")
    with torch.no_grad():
        p = torch.softmax(weak(test.x), dim=-1)
    mass = (1 - p.max(dim=-1).values).mean().item()
    train_loader = kdedu.data.make_loader(kdedu.data.digits("train", limit=200), batch_size=32, shuffle=True)
    test_loader = kdedu.data.make_loader(test, batch_size=512)

    def train_student(alpha, T, seed, teacher):  # the chapter's train_student (alpha > 0)
        torch.manual_seed(seed)
        student = kdedu.models.MLP(hidden=(256, 256))
        kdedu.fit(KD(student, teacher, alpha=alpha, temperature=T), train_loader, num_epochs=30, lr=1e-3, seed=seed,
                  progress=False)
        return kdedu.evaluate(student, test_loader)["acc"]

    seeds = list(range(5))
    runs = {T: [train_student(0.5, T, s, teacher=weak) for s in seeds] for T in (1.0, 4.0)}
    return {"mass": mass, "seeds": seeds, "T1": runs[1.0], "T4": runs[4.0],
            "verdict": experiment.compare(runs[4.0], runs[1.0])["verdict"]}


def ConfidentTeacher(what: str, change=lambda answer: answer) -> LazyAnswer:
    """An answer made from the correct one by ``change`` when it is first read (tests/checks.py)."""
    return LazyAnswer(_confident_runs, what, change)


def _with(**changes):
    """The correct answer with some entries changed; the verdict recomputed from the lists unless it is changed."""
    def change(answer):
        answer = {**answer, **{k: (v(answer) if callable(v) else v) for k, v in changes.items()}}
        if "verdict" not in changes:
            answer["verdict"] = experiment.compare(answer["T4"], answer["T1"])["verdict"]
        return answer
    return change


def _other_verdict(answer):
    return next(v for v in ("better", "worse", "no clear difference") if v != answer["verdict"])


H_SMOOTHED = -(0.91 * math.log(0.91) + 9 * 0.01 * math.log(0.01))  # the entropy of q' (eps = 0.1, C = 10)

CORRECT = {
    "03.soft-targets": [stable_soft_targets, lambda z, T: torch.softmax(z / T, dim=-1)],
    "03.tie-entropy": [math.log(3), 1.0986, torch.tensor(math.log(3))],
    "03.grad-exponent": [-1, -1.0],
    "03.kd-limit": [kd_low_T, kd_low_T_numeric],
    "03.confident-teacher": [
        ConfidentTeacher("as the chapter's solution makes it"),
        ConfidentTeacher("arrays and tuples", _with(seeds=lambda a: tuple(a["seeds"]), T1=lambda a: np.array(a["T1"]),
                                                    T4=lambda a: torch.tensor(a["T4"], dtype=torch.float64),
                                                    mass=lambda a: torch.tensor(a["mass"]))),
    ],
    "04.smoothed-targets": [smoothed_towards, lambda y, prior, eps: torch.stack([(1 - eps) * F.one_hot(k, len(prior))
                                                                                  + eps * prior for k in y])],
    "04.ls-constant": [H_SMOOTHED, 0.5003],
    "04.virtual-teacher": [
        lambda y, C, a: torch.full((len(y), C), (1 - a) / (C - 1)).scatter(1, y[:, None], a),
    ],
    "04.matching-eps": [10 * 0.1 / 9, 0.1111, 0.111],
    "04.muller": [],  # a trained label-smoothed teacher: test_muller_trained_teachers (a fixture trains it once)
}

WRONG = {
    "03.soft-targets": [
        naive_soft_targets,  # overflows on [1000, 0]
        lambda z, T: torch.softmax(z * T, dim=-1),  # multiplies instead of dividing
        lambda z, T: torch.softmax(z, dim=-1),  # ignores T
        lambda z, T: torch.softmax(z / T, dim=0),  # wrong dimension
        "not a function",
    ],
    "03.tie-entropy": [math.log2(3), math.log(10), 0.0, math.log(2), "log 3"],
    "03.grad-exponent": [-2, 1, 0, -3],
    "03.kd-limit": [
        centred_kd_limit,  # the T -> infinity limit
        lambda s, t: -kd_low_T(s, t),  # sign
        lambda s, t: t.max(-1).values - t.gather(-1, s.argmax(-1, keepdim=True)).squeeze(-1),  # on the teacher
        lambda s, t: kd_low_T(s, t).mean(),  # one number instead of one per row
        lambda s, t: kd_low_T_numeric(s, t, T=1.0),  # not a limit
    ],
    "03.confident-teacher": [
        ConfidentTeacher("the verdict of another comparison", _with(verdict=_other_verdict)),
        ConfidentTeacher("T = 4's accuracies made up", _with(T4=lambda a: shift(a["T4"], 2))),
        ConfidentTeacher("the chapter's teacher's mass", _with(mass=0.0149)),
        ConfidentTeacher("too few seeds", _with(seeds=[0, 1, 2], T1=lambda a: a["T1"][:3], T4=lambda a: a["T4"][:3])),
        {"mass": 0.2, "seeds": [0, 1, 2, 3, 4]},  # keys missing
    ],
    "04.smoothed-targets": [
        smoothed_uniform,
        smoothed_wrong_classes_only,
        lambda y, prior, eps: F.one_hot(y, len(prior)).to(prior.dtype),  # no smoothing
        lambda y, prior, eps: (1 - eps) * F.one_hot(y, len(prior)).to(prior.dtype) + eps,  # does not sum to 1
    ],
    "04.ls-constant": [0.1 * math.log(10), -H_SMOOTHED, 0.0, math.log(10)],
    "04.virtual-teacher": [
        lambda y, C, a: torch.full((len(y), C), (1 - a) / C).scatter(1, y[:, None], a),  # divides by C
        lambda y, C, a: (1 - a) * F.one_hot(y, C).float() + a / C,  # swaps the roles
    ],
    "04.matching-eps": [0.1, 0.09, 0.9, 0.12],
    "04.muller": [
        "not a model",
        torch.nn.Linear(3, 4),  # cannot read 8x8 digits
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)),  # 3 classes, not 10
        "untrained",  # replaced below by an untrained SmallCNN (built after seeding)
    ],
}
torch.manual_seed(0)
WRONG["04.muller"][-1] = __import__("kdedu").models.SmallCNN()  # untrained: chance accuracy

test_correct_answers_pass, test_wrong_answers_fail = answer_tests(CORRECT, WRONG)


def test_every_chapter_03_04_exercise_is_tested():
    ours = {k for k in check.EXERCISES if k.startswith(("03.", "04."))}
    assert ours == set(CORRECT) == set(WRONG)


def test_specific_messages():
    """The most common mistakes get a message that names them, not just 'wrong'."""
    assert "overflow" in _verdict("03.soft-targets", naive_soft_targets).message
    assert "bits" in _verdict("03.tie-entropy", math.log2(3)).message
    assert "infinity" in _verdict("03.tie-entropy", math.log(10)).message
    assert "tie" in _verdict("03.tie-entropy", 0.0).message
    assert "sign" in _verdict("03.grad-exponent", 1).message
    assert "softened at T too" in _verdict("03.grad-exponent", -2).message
    assert "infinity limit" in _verdict("03.kd-limit", centred_kd_limit).message
    assert "never negative" in _verdict("03.kd-limit", WRONG["03.kd-limit"][1]).message
    assert "teacher's logits" in _verdict("03.kd-limit", WRONG["03.kd-limit"][2]).message
    for answer, words in zip(WRONG["03.confident-teacher"], ("experiment.compare", "train_student(0.5, 4",
                                                             "chapter's teacher", "at least 5", "lacks"), strict=True):
        assert words in _verdict("03.confident-teacher", answer).message, (answer, words)
    assert "reproduces" in _verdict("03.confident-teacher", CORRECT["03.confident-teacher"][0]).message
    assert "uniform" in _verdict("04.smoothed-targets", smoothed_uniform).message
    assert "1 - eps" in _verdict("04.smoothed-targets", smoothed_wrong_classes_only).message
    assert "uniform teacher" in _verdict("04.ls-constant", 0.1 * math.log(10)).message
    assert "sign" in _verdict("04.ls-constant", -H_SMOOTHED).message
    assert "0.91" in _verdict("04.matching-eps", 0.1).message


# ------------------------------------------------------------------------------------------
# 04.muller: the answer is a trained model, so the answers are trained once here (a few seconds)
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def muller_teachers():
    """SmallCNN teachers trained briefly (5 epochs) on the full training split: label smoothing eps = 0.3
    (the exercise), eps = 0.1 and eps = 0.5 (other eps), and no smoothing."""
    import kdedu
    from kdedu.methods import LabelSmoothing, Supervised

    loader = kdedu.data.digits_loaders(batch_size=64)["train"]
    teachers = {}
    for eps in (0.3, 0.1, 0.5, 0.0):
        torch.manual_seed(0)
        model = kdedu.models.SmallCNN()
        kdedu.fit(LabelSmoothing(model, epsilon=eps) if eps else Supervised(model), loader, num_epochs=5, lr=3e-3,
                  seed=0, progress=False)
        teachers[eps] = model
    return teachers


def test_muller_trained_teachers(muller_teachers):
    muller_teachers[0.3].train()  # a model left in training mode: the check evaluates in eval mode, then restores it
    right = _verdict("04.muller", muller_teachers[0.3])
    assert right, right.message
    assert "entropy" in right.message and "nats" in right.message
    assert muller_teachers[0.3].training
    for eps, words in ((0.0, "with label smoothing"), (0.1, "eps = 0.3"), (0.5, "more smoothing")):
        wrong = _verdict("04.muller", muller_teachers[eps])
        assert not wrong and words in wrong.message, (eps, wrong.message)
    untrained = _verdict("04.muller", WRONG["04.muller"][-1])
    assert "accuracy" in untrained.message and "not a trained teacher" in untrained.message
