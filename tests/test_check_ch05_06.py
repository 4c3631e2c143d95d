"""The exercise checkers of chapters 05 (inductive bias) and 06 (born-again networks).

For every checker: a correct answer passes, plausible wrong answers fail (with a message), and
``None`` as "not answered yet" is checked for every exercise in tests/test_check.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdedu import check
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

