"""The exercise checkers of chapter 12 (MATE-KD).

For every checker: a correct answer passes, plausible wrong answers fail (with a message), and ``None`` as "not
answered yet" is checked for every exercise in tests/test_check.py.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from checks import LazyAnswer, answer_tests, shift

from kdedu import check, experiment
from kdedu.check import ch12
from kdedu.methods import gumbel_softmax


def _st(logits, tau, noise):
    y = torch.softmax((torch.log_softmax(logits, -1) + noise) / tau, dim=-1)
    hard = F.one_hot(y.argmax(-1), logits.shape[-1]).to(y.dtype)
    return hard + y - y.detach()


def _st_raw_logits(logits, tau, noise):  # noise added to the raw logits: the same y (one constant per row)
    y = torch.softmax((logits + noise) / tau, dim=-1)
    return (F.one_hot(y.argmax(-1), logits.shape[-1]).to(y.dtype) - y).detach() + y


def _soft_only(logits, tau, noise):
    return torch.softmax((torch.log_softmax(logits, -1) + noise) / tau, dim=-1)


def _hard_only(logits, tau, noise):
    y = torch.softmax((torch.log_softmax(logits, -1) + noise) / tau, dim=-1)
    return F.one_hot(y.argmax(-1), logits.shape[-1]).to(y.dtype)


def _no_tau(logits, tau, noise):
    return _st(logits, 1.0, noise)


def _no_noise(logits, tau, noise):
    return _st(logits, tau, torch.zeros_like(noise))


def _embeds(E, ids, positions, soft):
    return E[ids].index_put((positions,), soft @ E)


def _embeds_inplace(E, ids, positions, soft):
    out = E[ids].clone()
    out[positions] = soft @ E
    return out


def _embeds_torch_where(E, ids, positions, soft):
    full = torch.zeros(*ids.shape, E.shape[1], dtype=E.dtype)
    full = full.index_put((positions,), soft @ E)
    return torch.where(positions[..., None], full, E[ids])


CORRECT = {
    "12.gumbel": [_st, _st_raw_logits, lambda logits, tau, noise: gumbel_softmax(logits, tau, hard=True, noise=noise)],
    "12.soft-embeds": [_embeds, _embeds_inplace, _embeds_torch_where],
}

WRONG = {
    "12.gumbel": [
        _soft_only,                                                            # the relaxation, not the sample
        _hard_only,                                                            # no gradient
        _no_tau,                                                               # ignores tau
        _no_noise,                                                             # the mode, not a sample
        lambda logits, tau, noise: _st(logits, tau, noise).sum(-1),            # wrong shape
        lambda logits, tau, noise: (_hard_only(logits, tau, noise) + logits - logits.detach()),  # grad of the logits
        "not a function",
    ],
    "12.soft-embeds": [
        lambda E, ids, positions, soft: E[ids],                                # ignores the soft tokens
        lambda E, ids, positions, soft: _embeds(E, ids, positions, soft).detach(),  # cuts the graph
        lambda E, ids, positions, soft: E[ids].index_put((positions,), soft @ E.T.T.flip(0)),  # rows in the wrong order
        lambda E, ids, positions, soft: E[ids].index_put((positions,), E[soft.argmax(-1)]),   # hard tokens
        lambda E, ids, positions, soft: (soft @ E),                            # only the masked rows
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
    assert "relaxed sample" in _verdict("12.gumbel", WRONG["12.gumbel"][0]).message
    assert "no gradient" in _verdict("12.gumbel", WRONG["12.gumbel"][1]).message
    assert "tau = 1" in _verdict("12.gumbel", WRONG["12.gumbel"][2]).message
    assert "original word vectors" in _verdict("12.soft-embeds", WRONG["12.soft-embeds"][0]).message
    assert "no gradient" in _verdict("12.soft-embeds", WRONG["12.soft-embeds"][1]).message
    assert "same, seed by seed" in _verdict("12.random-direction", WRONG["12.random-direction"][3]).message
    assert "percentages" in _verdict("12.random-direction", WRONG["12.random-direction"][5]).message
