"""The exercise checkers of chapter 12 (MATE-KD).

For every checker: a correct answer passes, plausible wrong answers fail (with a message), and ``None`` as "not
answered yet" is checked for every exercise in tests/test_check.py.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from checks import LazyAnswer, answer_tests, shift

from kdedu import check, experiment
from kdedu.check import ch12
from kdedu.methods import gumbel_softmax


def _st_gradient(logits, c, tau, noise):
    """The mean straight-through gradient, written as the chapter's plain-PyTorch Gumbel-softmax."""
    z = logits.detach().clone().requires_grad_(True)
    y = torch.softmax((torch.log_softmax(z.expand_as(noise), -1) + noise) / tau, dim=-1)
    hard = F.one_hot(y.argmax(-1), z.shape[-1]).to(y.dtype)
    (grad,) = torch.autograd.grad(((hard + y - y.detach()) @ c).mean(), z)
    return grad


def _st_gradient_kdedu(logits, c, tau, noise):  # kdedu's straight-through sample, raw logits (same y)
    z = logits.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((gumbel_softmax(z.expand_as(noise), tau, hard=True, noise=noise) @ c).mean(), z)
    return grad


def _st_gradient_loop(logits, c, tau, noise):  # one draw at a time, averaged
    return torch.stack([_st_gradient(logits, c, tau, row[None]) for row in noise]).mean(0)


CORRECT = {
    "12.st-gradient": [_st_gradient, _st_gradient_kdedu, _st_gradient_loop],
}

WRONG = {
    "12.st-gradient": [
        lambda logits, c, tau, noise: ch12.exact_gradient(logits, c),           # the exact gradient, not the estimate
        lambda logits, c, tau, noise: torch.zeros_like(logits),                # the one-hot alone: no gradient
        lambda logits, c, tau, noise: len(noise) * _st_gradient(logits, c, tau, noise),  # the sum, not the mean
        lambda logits, c, tau, noise: _st_gradient(logits, c, 1.0, noise),      # ignores tau
        lambda logits, c, tau, noise: _st_gradient(logits, c, tau, noise[:1]),  # one draw only
        lambda logits, c, tau, noise: _st_gradient(logits, c, tau, torch.zeros_like(noise)),  # no noise: the mode
        lambda logits, c, tau, noise: _st_gradient(logits, c, tau, noise)[None],  # wrong shape
        "not a function",
    ],
}


@functools.lru_cache(maxsize=1)
def _random_direction_runs() -> dict:
    """The exercise's experiment, done as the chapter does it: `train_digits` for the adversarial and the random
    direction over the live digit seeds 0, 1, 2 (once per test session)."""
    from kdedu import data, zoo
    from kdedu.methods import AdversarialKD
    from kdedu.models import MLP
    from kdedu.train import evaluate, fit

    s = ch12.DIGITS_SETTING
    teacher = zoo.teacher("digits-mlp", verbose=False, **s["teacher"])
    train = data.digits("train", limit=s["n_train"])
    test = data.make_loader(data.digits("test"), batch_size=512)

    def accuracy(random, seed):
        torch.manual_seed(seed)
        student = MLP(64, s["hidden"], 10)
        method = AdversarialKD(student, teacher, alpha=0.5, temperature=1.0, adv_weight=1 / 3, epsilon=s["epsilon"],
                               steps=s["steps"], random=random)
        fit(method, data.make_loader(train, s["batch_size"], shuffle=True), None, num_epochs=s["epochs"], lr=s["lr"],
            seed=seed, progress=False)
        return evaluate(student, test)["acc"]

    seeds = [0, 1, 2]
    rand = [accuracy(True, seed) for seed in seeds]
    adv = [accuracy(False, seed) for seed in seeds]
    return {"seeds": seeds, "random": rand, "adversarial": adv,
            "verdict": experiment.compare(adv, rand)["verdict"]}


def Answer(what: str, change=lambda answer: answer) -> LazyAnswer:
    return LazyAnswer(_random_direction_runs, what, change)


def _with(**changes):
    def change(answer):
        answer = {**answer, **{k: (v(answer) if callable(v) else v) for k, v in changes.items()}}
        if "verdict" not in changes:
            answer["verdict"] = experiment.compare(answer["adversarial"], answer["random"])["verdict"]
        return answer
    return change


def _other_verdict(answer):
    return next(v for v in ("better", "worse", "no clear difference") if v != answer["verdict"])


CORRECT["12.random-direction"] = [
    Answer("as the chapter's solution makes it"),
    Answer("arrays and tuples", _with(seeds=lambda a: tuple(a["seeds"]), random=lambda a: np.array(a["random"]),
                                      adversarial=lambda a: torch.tensor(a["adversarial"], dtype=torch.float64),
                                      verdict=lambda a: a["verdict"])),
]
WRONG["12.random-direction"] = [
    Answer("the verdict of another comparison", _with(verdict=_other_verdict)),
    Answer("the random students' accuracies made up", _with(random=lambda a: shift(a["random"], 3))),
    Answer("the adversarial accuracies made up", _with(adversarial=lambda a: shift(a["adversarial"], -3))),
    Answer("the adversarial list copied into random", _with(random=lambda a: list(a["adversarial"]))),
    Answer("the two lists swapped", _with(random=lambda a: a["adversarial"], adversarial=lambda a: a["random"])),
    Answer("percentages", _with(random=lambda a: [100 * v for v in a["random"]],
                                adversarial=lambda a: [100 * v for v in a["adversarial"]])),
    Answer("too few seeds", _with(seeds=[0, 1], random=lambda a: a["random"][:2],
                                  adversarial=lambda a: a["adversarial"][:2])),
    {"seeds": [0, 1, 2], "random": [0.9, 0.91, 0.92]},                      # no adversarial, no verdict
    [0.9, 0.91, 0.92],
]

test_correct_answers_pass, test_wrong_answers_fail = answer_tests(CORRECT, WRONG)


def _verdict(exercise_id, answer):
    return check.exercise(exercise_id, answer, verbose=False)


def test_checker_reproduces_the_chapter_pipeline():
    runs = _random_direction_runs()
    for i, seed in enumerate(runs["seeds"]):
        assert ch12.digits_accuracy(True, seed) == runs["random"][i]
        assert ch12.digits_accuracy(False, seed) == runs["adversarial"][i]
    assert runs["random"] != runs["adversarial"]


def test_targeted_messages():
    assert "exact gradient" in _verdict("12.st-gradient", WRONG["12.st-gradient"][0]).message
    assert "zero" in _verdict("12.st-gradient", WRONG["12.st-gradient"][1]).message
    assert "sum" in _verdict("12.st-gradient", WRONG["12.st-gradient"][2]).message
    assert "tau = 1" in _verdict("12.st-gradient", WRONG["12.st-gradient"][3]).message
    assert "same, seed by seed" in _verdict("12.random-direction", WRONG["12.random-direction"][3]).message
    assert "percentages" in _verdict("12.random-direction", WRONG["12.random-direction"][5]).message
    assert "lacks 0.001" in _verdict("12.collapse", {"generator_lr": [1e-4], "top_share": [0.2]}).message
    assert "percentages" in _verdict("12.collapse", {"generator_lr": [1e-4, 1e-3], "top_share": [20, 80]}).message


def test_straight_through_gradient_is_biased():
    """The solution's claim: on the chapter's p, the mean straight-through gradient over many draws differs from
    the exact gradient p_i (c_i - p.c) by far more than its Monte-Carlo error (recomputed draw by draw)."""
    p = torch.tensor([0.45, 0.25, 0.15, 0.1, 0.05], dtype=torch.float64)
    c = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    u = torch.rand(20000, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    noise = -torch.log(-torch.log(u))
    mean = _st_gradient(p.log(), c, 1.0, noise)
    draws = torch.stack([_st_gradient(p.log(), c, 1.0, noise[i:i + 1]) for i in range(0, 20000, 10)])  # 2,000 of them
    se = draws.std(0) / len(noise) ** 0.5                               # the standard error of the 20,000-draw mean
    assert ((mean - ch12.exact_gradient(p.log(), c)).abs() > 6 * se).any()
    assert torch.allclose(mean.sum(), torch.zeros((), dtype=torch.float64), atol=1e-9)  # softmax: gradients sum to 0


def test_collapse_exercise_fails_on_made_up_shares_without_training():
    for answer in ({"generator_lr": "1e-4", "top_share": [0.2]}, {"generator_lr": [1e-4, 1e-3], "top_share": [0.2]},
                   {"generator_lr": [1e-4, 1e-3], "top_share": [0.0, 1.5]}, [0.2, 0.8]):
        assert not _verdict("12.collapse", answer)


@pytest.mark.slow
def test_collapse_exercise_and_claim():
    """Two MATE-KD runs in the chapter's setting (tens of seconds): the true answer passes, a shifted one fails, and
    the solution's claim holds: at 1e-3 the most frequent fill takes over half the masked positions, at 1e-4 not."""
    lrs = list(ch12.COLLAPSE_SETTING["generator_lrs"])
    shares = [ch12.top_fill_share(lr) for lr in lrs]
    assert _verdict("12.collapse", {"generator_lr": lrs, "top_share": shares})
    assert _verdict("12.collapse", {"generator_lr": lrs[::-1], "top_share": shares[::-1]})
    assert not _verdict("12.collapse", {"generator_lr": lrs, "top_share": shares[::-1]})
    assert not _verdict("12.collapse", {"generator_lr": lrs, "top_share": [v + 0.01 for v in shares]})
    assert shares[0] < 0.5 < shares[1]
