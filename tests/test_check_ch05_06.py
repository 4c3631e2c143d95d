"""The exercise checkers of chapters 05 (inductive bias) and 06 (born-again networks).

For every checker: a correct answer passes, plausible wrong answers fail (with a message), and
``None`` as "not answered yet" is checked for every exercise in tests/test_check.py.
"""

from __future__ import annotations

import copy
import functools
import itertools
from collections.abc import Mapping

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from kdedu import check, experiment
from kdedu.data import translate


def _verdict(exercise_id, answer):
    return check.exercise(exercise_id, answer, verbose=False)


# ------------------------------------------------------------------------------------------
# chapter 05: shift_batch(x, dx, dy)
# ------------------------------------------------------------------------------------------
def shift_one(x, dx, dy):  # the chapter's shift_images: pad with zeros, cut a window
    _, _, h, w = x.shape
    return F.pad(x, (w, w, h, h))[:, :, h - dy:2 * h - dy, w - dx:2 * w - dx]


def shift_loop(x, dx, dy):
    return torch.cat([shift_one(x[i:i + 1], int(dx[i]), int(dy[i])) for i in range(len(x))])


def shift_vectorised(x, dx, dy):
    n, _, h, w = x.shape
    rows = torch.arange(h).view(1, h, 1) - dy.view(n, 1, 1)
    cols = torch.arange(w).view(1, 1, w) - dx.view(n, 1, 1)
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    out = x[torch.arange(n).view(n, 1, 1), :, rows.clamp(0, h - 1), cols.clamp(0, w - 1)]
    return out.permute(0, 3, 1, 2) * inside.unsqueeze(1)


def shift_roll(x, dx, dy):  # wraps around
    return torch.stack([torch.roll(x[i], (int(dy[i]), int(dx[i])), dims=(1, 2)) for i in range(len(x))])


def shift_swapped(x, dx, dy):
    return shift_loop(x, dy, dx)


def shift_opposite(x, dx, dy):
    return shift_loop(x, -dx, -dy)


def shift_first_offset_only(x, dx, dy):  # one offset for the whole batch
    return shift_one(x, int(dx[0]), int(dy[0]))


@pytest.mark.parametrize("answer", [shift_loop, shift_vectorised, translate])
def test_05_translate_correct(answer):
    result = _verdict("05.translate", answer)
    assert result, result.message


@pytest.mark.parametrize("answer, needle", [
    (shift_roll, "wrap around"),
    (shift_swapped, "swapped"),
    (shift_opposite, "wrong way"),
    (shift_first_offset_only, "off by"),
    (lambda x, dx, dy: x, "off by"),
    (lambda x, dx, dy: x[:, 0], "shape"),
    ("not a function", "function"),
])
def test_05_translate_wrong(answer, needle):
    result = _verdict("05.translate", answer)
    assert not result
    assert needle in result.message, result.message


# ------------------------------------------------------------------------------------------
# chapter 05: my_kappa(logits_a, logits_b), Cohen's kappa of the two models' predictions
# ------------------------------------------------------------------------------------------
def agreement(a, b):  # the chapter's agreement p_o: the raw agreement, not the answer
    return (a.argmax(dim=-1) == b.argmax(dim=-1)).float().mean().item()


def kappa(a, b):
    pa, pb, C = a.argmax(-1), b.argmax(-1), a.shape[-1]
    p_o = (pa == pb).float().mean()
    p_e = (torch.bincount(pa, minlength=C).float() / len(pa) * torch.bincount(pb, minlength=C).float() / len(pb)).sum()
    return ((p_o - p_e) / (1 - p_e)).item()


def kappa_loop(a, b):  # with Python counters, as a 0-d tensor
    pa, pb = a.argmax(-1).tolist(), b.argmax(-1).tolist()
    n = len(pa)
    p_o = sum(u == v for u, v in zip(pa, pb, strict=True)) / n
    p_e = sum(pa.count(k) * pb.count(k) for k in set(pa)) / n**2
    return torch.tensor((p_o - p_e) / (1 - p_e))


@pytest.mark.parametrize("answer", [kappa, kappa_loop])
def test_05_agreement_correct(answer):
    result = _verdict("05.agreement", answer)
    assert result, result.message


@pytest.mark.parametrize("answer, needle", [
    (agreement, "raw agreement"),
    (lambda a, b: (agreement(a, b) - 1 / a.shape[-1]) / (1 - 1 / a.shape[-1]), "own class frequencies"),
    (lambda a, b: (a.argmax(-1) == b.argmax(-1)).float(), "one number"),
    (lambda a, b: 1 - kappa(a, b), "your kappa"),
    (lambda a, b: kappa(a.T, b.T), "your kappa"),  # argmax over the rows instead of the classes
])
def test_05_agreement_wrong(answer, needle):
    result = _verdict("05.agreement", answer)
    assert not result
    assert needle in result.message, result.message


# ------------------------------------------------------------------------------------------
# chapter 06: ensemble_probs(logits_list)
# ------------------------------------------------------------------------------------------
def ensemble_probs(logits_list):
    return torch.stack([z.softmax(dim=-1) for z in logits_list]).mean(dim=0)


def ensemble_probs_loop(logits_list):
    total = 0
    for z in logits_list:
        total = total + F.softmax(z, dim=1)
    return total / len(logits_list)


@pytest.mark.parametrize("answer", [ensemble_probs, ensemble_probs_loop])
def test_06_ensemble_correct(answer):
    result = _verdict("06.ensemble", answer)
    assert result, result.message


@pytest.mark.parametrize("answer, needle", [
    (lambda zs: torch.stack(zs).mean(0).softmax(-1), "averaged the logits"),
    (lambda zs: torch.stack(zs).mean(0), "average of the logits"),
    (lambda zs: torch.stack([z.softmax(-1) for z in zs]).sum(0), "off by"),
    (lambda zs: torch.stack([z.softmax(0) for z in zs]).mean(0), "off by"),
    (lambda zs: zs[0].softmax(-1), "off by"),
    (lambda zs: torch.stack([z.softmax(-1) for z in zs]), "shape"),
])
def test_06_ensemble_wrong(answer, needle):
    result = _verdict("06.ensemble", answer)
    assert not result
    assert needle in result.message, result.message


# ------------------------------------------------------------------------------------------
# chapter 06: ensemble_accuracy(logits_list, labels)
# ------------------------------------------------------------------------------------------
def ensemble_accuracy(logits_list, labels):
    return (ensemble_probs(logits_list).argmax(dim=-1) == labels).float().mean().item()


def ensemble_accuracy_by_logits(logits_list, labels):
    return (torch.stack(logits_list).mean(0).argmax(-1) == labels).float().mean().item()


def ensemble_accuracy_by_vote(logits_list, labels):
    votes = torch.stack([z.argmax(-1) for z in logits_list])
    return (torch.mode(votes, dim=0).values == labels).float().mean().item()


@pytest.mark.parametrize("answer", [
    ensemble_accuracy,
    lambda zs, y: (ensemble_probs_loop(zs).argmax(-1) == y).double().mean(),  # a 0-d tensor is fine
])
def test_06_ensemble_acc_correct(answer):
    result = _verdict("06.ensemble-acc", answer)
    assert result, result.message


@pytest.mark.parametrize("answer, needle", [
    (ensemble_accuracy_by_logits, "logit-averaged"),
    (ensemble_accuracy_by_vote, "majority vote"),
    (lambda zs, y: 100 * ensemble_accuracy(zs, y), "percentage"),
    (lambda zs, y: (zs[0].argmax(-1) == y).float().mean().item(), "your ensemble accuracy"),
    (lambda zs, y: (ensemble_probs(zs).argmax(-1) == y).sum().item(), "your ensemble accuracy"),
])
def test_06_ensemble_acc_wrong(answer, needle):
    result = _verdict("06.ensemble-acc", answer)
    assert not result
    assert needle in result.message, result.message


def test_06_ensemble_acc_wrong_rules_really_differ():
    """The checker's data must tell the three ensemble rules apart, or it could not catch the wrong ones."""
    logits = check.ch06._ch06_logits(3, 4)
    labels = ensemble_probs(logits).argmax(-1)
    rules = {ensemble_accuracy(logits, labels), ensemble_accuracy_by_logits(logits, labels),
             ensemble_accuracy_by_vote(logits, labels)}
    assert len(rules) == 3, rules



# ------------------------------------------------------------------------------------------
# chapter 05: the permutation experiment (ordinary vs pixel-permuted digits, MLP and SmallCNN)
# ------------------------------------------------------------------------------------------
@functools.cache
def _permutation_runs() -> dict:
    """The exercise's experiment, done as the chapter's solution does it (once per test session): the chapter's
    train_student (15 epochs in the fast profile, lr 3e-3, batches of 64) over the seeds 0-4, both architectures,
    on ordinary and on permuted digits."""
    import kdedu
    from kdedu.data import digits
    from kdedu.methods import Supervised
    from kdedu.models import MLP, SmallCNN

    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    train, test = digits("train"), digits("test")

    def accuracy(make, pixels, seed):
        torch.manual_seed(seed)
        net = make()
        loader = DataLoader(TensorDataset(pixels(train.x), train.y), batch_size=64, shuffle=True)
        kdedu.fit(Supervised(net), loader, num_epochs=15, lr=3e-3, seed=seed, progress=False)
        return kdedu.evaluate(net, DataLoader(TensorDataset(pixels(test.x), test.y), batch_size=512))["acc"]

    seeds = list(range(5))
    answer = {"perm": perm, "seeds": seeds}
    for name, make in [("MLP", lambda: MLP(in_features=64, hidden=(128,), num_classes=10)), ("SmallCNN", SmallCNN)]:
        ordinary = [accuracy(make, lambda x: x, s) for s in seeds]
        permuted = [accuracy(make, lambda x: x.flatten(1)[:, perm].view(-1, 1, 8, 8), s) for s in seeds]
        answer[name] = {"ordinary": ordinary, "permuted": permuted,
                        "verdict": experiment.compare(ordinary, permuted)["verdict"]}
    return answer


class Lazy(Mapping):
    """An answer made from a correct one by ``change`` when it is first read (so collecting the tests trains
    nothing)."""

    def __init__(self, make, what: str, change=lambda answer: answer):
        self.make, self.what, self.change, self._answer = make, what, change, None

    def _get(self) -> dict:
        if self._answer is None:
            self._answer = self.change(copy.deepcopy(self.make()))
        return self._answer

    def __getitem__(self, key):
        return self._get()[key]

    def __iter__(self):
        return iter(self._get())

    def __len__(self):
        return len(self._get())

    def __repr__(self):
        return f"<answer: {self.what}>"


def _shift(values, digits, n_test=360):
    """Every accuracy moved by a few test digits (the other way where that would leave [0, 1])."""
    return [v + digits / n_test if 0 <= v + digits / n_test <= 1 else v - digits / n_test for v in values]


def _perm_with(arch=None, **changes):
    """The correct answer with entries changed (of answer[arch] if arch is given); verdicts recomputed."""
    def change(answer):
        part = answer if arch is None else answer[arch]
        part.update({k: (v(part) if callable(v) else v) for k, v in changes.items()})
        if arch is not None and "verdict" not in changes:
            part["verdict"] = experiment.compare(part["ordinary"], part["permuted"])["verdict"]
        return answer
    return change


def _other_verdict(verdict):
    return next(v for v in ("better", "worse", "no clear difference") if v != verdict)


PERMUTATION_CORRECT = [
    Lazy(_permutation_runs, "as the chapter's solution makes it"),
    Lazy(_permutation_runs, "lists, arrays and tuples", _perm_with(
        perm=lambda a: a["perm"].tolist(), seeds=lambda a: tuple(a["seeds"]))),
    Lazy(_permutation_runs, "a numpy array and a float64 tensor", _perm_with(
        "SmallCNN", ordinary=lambda p: np.array(p["ordinary"]),
        permuted=lambda p: torch.tensor(p["permuted"], dtype=torch.float64), verdict=lambda p: p["verdict"])),
]

PERMUTATION_WRONG = {
    "the verdict of another comparison": (
        Lazy(_permutation_runs, "", _perm_with("SmallCNN", verdict=lambda p: _other_verdict(p["verdict"]))),
        "not what experiment.compare says"),
    "the MLP's permuted accuracies made up": (
        Lazy(_permutation_runs, "", _perm_with("MLP", permuted=lambda p: _shift(p["permuted"], 2))),
        'answer["MLP"]["permuted"]'),
    "the CNN's ordinary accuracies made up": (
        Lazy(_permutation_runs, "", _perm_with("SmallCNN", ordinary=lambda p: _shift(p["ordinary"], -2))),
        'answer["SmallCNN"]["ordinary"]'),
    "another permutation than the one the runs used": (
        Lazy(_permutation_runs, "", _perm_with(perm=lambda a: a["perm"].roll(1))),
        "through your permutation"),
    "the permuted list copied from the ordinary one": (
        Lazy(_permutation_runs, "", _perm_with("MLP", permuted=lambda p: list(p["ordinary"]))),
        "the same, seed by seed"),
    "percentages": (
        Lazy(_permutation_runs, "", _perm_with("MLP", ordinary=lambda p: [100 * v for v in p["ordinary"]],
                                               permuted=lambda p: [100 * v for v in p["permuted"]])),
        "percentages"),
    "no permutation at all": (
        Lazy(_permutation_runs, "", _perm_with(perm=list(range(64)))), "leaves every pixel"),
    "not a permutation": (
        Lazy(_permutation_runs, "", _perm_with(perm=[0] * 64)), "not a permutation"),
    "too few seeds": (
        Lazy(_permutation_runs, "", lambda a: {**a, "seeds": a["seeds"][:3],
                                               **{k: {"ordinary": a[k]["ordinary"][:3],
                                                      "permuted": a[k]["permuted"][:3], "verdict": a[k]["verdict"]}
                                                  for k in ("MLP", "SmallCNN")}}),
        "at least 5"),
    "a missing key": ({"perm": list(range(64)), "seeds": [0, 1, 2, 3, 4]}, "lacks the key(s) MLP, SmallCNN"),
}


@pytest.mark.slow  # the first answer trains the experiment: 20 short runs
@pytest.mark.parametrize("answer", PERMUTATION_CORRECT, ids=lambda a: a.what)
def test_05_permutation_correct(answer):
    result = _verdict("05.permutation", answer)
    assert result, result.message
    assert "reproduces" in result.message


@pytest.mark.parametrize("what", list(PERMUTATION_WRONG))
def test_05_permutation_wrong(what):
    answer, needle = PERMUTATION_WRONG[what]
    result = _verdict("05.permutation", answer)
    assert not result, what
    assert needle in result.message, result.message


def test_05_permutation_solution_reads_as_the_chapter_says():
    """The solution's reading, on the chapter's seeds: the MLP shows no clear difference, the CNN is better on the
    ordinary digits; and the MLP's ordinary runs are the chapter's "MLP (labels)" (the same recipe)."""
    runs = _permutation_runs()
    assert runs["MLP"]["verdict"] == "no clear difference"
    assert runs["SmallCNN"]["verdict"] == "better"
    assert check.ch05.permutation_accuracy("MLP", None, 0, 15) == runs["MLP"]["ordinary"][0]


def test_05_permutation_hint_gives_no_answer():
    hint = check.hint("05.permutation", verbose=False)
    assert hint and not any(word in hint for word in ("better", "worse", "no clear", "MLP", "CNN", "0."))


# ------------------------------------------------------------------------------------------
# chapter 06: the diversity experiment (born-again chain vs independent networks)
# ------------------------------------------------------------------------------------------
@functools.cache
def _diversity_networks(s: int) -> tuple[list, list]:
    """The chapter's two families for seed s, trained as the chapter's train_chain / train_independent do."""
    import kdedu
    from kdedu.data import digits
    from kdedu.methods import Supervised, born_again
    from kdedu.models import MLP

    train = digits("train", limit=200)
    loader = DataLoader(train.dataset(), batch_size=200, shuffle=True)

    def make_model():
        return MLP(in_features=64, hidden=(128,), num_classes=10)

    gens, _ = born_again(make_model, loader, generations=3, alpha=1.0, temperature=4.0, seed=100 * s,
                         num_epochs=100, lr=1e-2, progress=False)
    nets = [gens[0]]
    for j in range(1, 4):
        torch.manual_seed(100 * s + 50 + j)
        net = make_model()
        kdedu.fit(Supervised(net), loader, num_epochs=100, lr=1e-2, seed=100 * s + 50 + j, progress=False)
        nets.append(net)
    return list(gens), nets


def _disagreement(members, split="test", pairs="all"):
    import kdedu
    from kdedu.data import digits, make_loader

    data = digits("test") if split == "test" else digits("train", limit=200)
    preds = [kdedu.predict(m, make_loader(data, batch_size=512))[0].argmax(-1) for m in members]
    idx = list(itertools.combinations(range(len(preds)), 2)) if pairs == "all" else [(0, 1), (1, 2), (2, 3)]
    return float(np.mean([(preds[i] != preds[j]).float().mean().item() for i, j in idx]))


@functools.cache
def _diversity_runs(**how) -> dict:
    """The exercise's answer over 5 of the chapter's seeds, the fewest the checker takes (``how``: the measurement,
    right by default)."""
    seeds = list(range(5))
    born = [_disagreement(_diversity_networks(s)[0], **how) for s in seeds]
    indep = [_disagreement(_diversity_networks(s)[1], **how) for s in seeds]
    return {"seeds": seeds, "born_again": born, "independent": indep,
            "verdict": experiment.compare(indep, born)["verdict"]}


def _div_with(**changes):
    def change(answer):
        answer.update({k: (v(answer) if callable(v) else v) for k, v in changes.items()})
        if "verdict" not in changes:
            answer["verdict"] = experiment.compare(answer["independent"], answer["born_again"])["verdict"]
        return answer
    return change


DIVERSITY_CORRECT = [
    Lazy(_diversity_runs, "as the chapter's solution makes it"),
    Lazy(_diversity_runs, "arrays and tensors", _div_with(born_again=lambda a: np.array(a["born_again"]),
                                                          independent=lambda a: torch.tensor(a["independent"]),
                                                          verdict=lambda a: a["verdict"])),
]

DIVERSITY_WRONG = {
    "the verdict of another comparison": (
        Lazy(_diversity_runs, "", _div_with(verdict=lambda a: _other_verdict(a["verdict"]))), "not what"),
    "the lists swapped": (
        Lazy(_diversity_runs, "", _div_with(born_again=lambda a: a["independent"],
                                            independent=lambda a: _diversity_runs()["born_again"])), "swapped"),
    "consecutive pairs only": (
        Lazy(lambda: _diversity_runs(pairs="consecutive"), ""), "consecutive pairs"),
    "measured on the training digits": (
        Lazy(lambda: _diversity_runs(split="train"), ""), "training digits"),
    "the agreement instead of the disagreement": (
        Lazy(_diversity_runs, "", _div_with(born_again=lambda a: [1 - v for v in a["born_again"]],
                                            independent=lambda a: [1 - v for v in a["independent"]])), "agreement"),
    "percentages": (
        Lazy(_diversity_runs, "", _div_with(born_again=lambda a: [100 * v for v in a["born_again"]],
                                            independent=lambda a: [100 * v for v in a["independent"]])),
        "percentages"),
    "made up": (
        Lazy(_diversity_runs, "", _div_with(born_again=lambda a: [v + 0.004 for v in a["born_again"]])),
        "disagree on"),
    "one family for both": (
        Lazy(_diversity_runs, "", _div_with(independent=lambda a: list(a["born_again"]))), "the same, seed by seed"),
    "too few seeds": (
        Lazy(_diversity_runs, "", _div_with(seeds=[0, 1, 2], born_again=lambda a: a["born_again"][:3],
                                            independent=lambda a: a["independent"][:3])), "at least 5"),
    "a missing key": ({"seeds": [0, 1, 2, 3, 4], "born_again": [0.01] * 5}, "lacks the key(s) independent, verdict"),
}


@pytest.mark.slow  # the first answer trains the experiment: 5 chains and their controls
@pytest.mark.parametrize("answer", DIVERSITY_CORRECT, ids=lambda a: a.what)
def test_06_diversity_correct(answer):
    result = _verdict("06.diversity", answer)
    assert result, result.message
    assert "reproduces" in result.message


@pytest.mark.parametrize("what", list(DIVERSITY_WRONG))
def test_06_diversity_wrong(what):
    answer, needle = DIVERSITY_WRONG[what]
    result = _verdict("06.diversity", answer)
    assert not result, what
    assert needle in result.message, result.message


def test_06_diversity_solution_reads_as_the_chapter_says():
    """The solution's reading, on the chapter's first 5 seeds: the independent networks are the more diverse family."""
    assert _diversity_runs()["verdict"] == "better"


def test_06_diversity_hint_gives_no_answer():
    hint = check.hint("06.diversity", verbose=False)
    assert hint and not any(word in hint for word in ("better", "worse", "no clear", "less", "more", "0."))
