"""Auto-checks for the exercises of chapter 02 (registered with :func:`kdedu.check.register`)."""

from __future__ import annotations

import functools
import math

import torch

from kdedu.check import (
    Wrong,
    answer_accuracies,
    answer_dict,
    answer_number,
    answer_seeds,
    close,
    function,
    picked,
    register,
    retrain_tolerance,
    same_tensor,
)


def _ch02_similarity(probs: torch.Tensor, labels: torch.Tensor, c: int) -> torch.Tensor:
    """S of eq. (eq-class-similarity) by an explicit loop over the examples: row k averages the probs of class k."""
    s = torch.zeros(c, c, dtype=torch.float64)
    counts = [0] * c
    for row, k in zip(probs, labels.tolist(), strict=True):
        s[k] += row
        counts[k] += 1
    for k in range(c):
        s[k] /= max(counts[k], 1)
    return s


@register("02.class-similarity", hint="build chapter 02's class-similarity matrix S first, then work on its rows: only "
                                      "the entries off the diagonal say where the doubt goes.")
def _check_02_class_similarity(fn):
    function("doubt_matrix(probs, labels, num_classes)", fn)
    g = torch.Generator().manual_seed(2)
    for n, c in ((50, 4), (200, 10)):
        probs = torch.softmax(3 * torch.randn(n, c, generator=g, dtype=torch.float64), dim=-1)
        labels = torch.cat([torch.arange(c), torch.randint(0, c, (n - c,), generator=g)])  # every class occurs
        s = _ch02_similarity(probs, labels, c)
        expected = torch.zeros(c, c, dtype=torch.float64)
        for k in range(c):
            for j in range(c):
                if j != k:
                    expected[k, j] = s[k, j] / (1 - s[k, k])  # the off-diagonal mass of row k sums to 1 - S_kk
        got = fn(probs.clone(), labels.clone(), c)
        if isinstance(got, torch.Tensor) and got.shape == (c, c) and not torch.allclose(got.double(), expected):
            got64 = got.double()
            off = s * (1 - torch.eye(c, dtype=torch.float64))
            one_by_one = probs * (1 - torch.nn.functional.one_hot(labels, c).double())  # each example's doubt...
            one_by_one = one_by_one / one_by_one.sum(dim=1, keepdim=True)                # ...renormalised first
            diagnoses = [
                (s, "that is S itself: leave the diagonal out (set it to 0) and renormalise each row."),
                (off, "the diagonal is out, but each row should sum to 1: divide it by the mass off the diagonal."),
                (expected.T, "your matrix is transposed: row k is about the examples whose true label is k."),
                (_ch02_similarity(one_by_one, labels, c), "that renormalises every example before averaging, so "
                 "an example that barely doubts weighs as much as a confusing one; average first (S), then "
                 "renormalise the rows of S."),
            ]
            for wrong, message in diagnoses:
                if torch.allclose(got64, wrong, atol=1e-6):
                    raise Wrong(message)
        same_tensor(f"your doubt_matrix(probs of shape ({n}, {c}), labels, {c})", got, expected)
    return ("matches S without its diagonal, each row renormalised: row k says where the teacher's doubt about a k "
            "goes, and rows of confident and unsure classes become comparable.")


@register("02.hard-plus-logits", hint="start from the chapter's LogitMSE: keep alpha in __init__ (after "
                                      "super().__init__(student, teacher)) and return one weighted term for the "
                                      "labels and one for the logits, as KD does.")
def _check_02_hard_plus_logits(cls):
    from torch import nn

    from kdedu.train import Distiller

    if not (isinstance(cls, type) and issubclass(cls, Distiller)):
        raise Wrong(f"the answer should be a class derived from kdedu.train.Distiller, got {cls!r}.")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(12, 6, generator=g)
    y = torch.randint(0, 4, (12,), generator=g)
    for alpha in (0.3, 0.0, 1.0):
        torch.manual_seed(0)
        student, teacher = nn.Linear(6, 4), nn.Linear(6, 4)
        with torch.no_grad():
            teacher.weight.mul_(5.0)  # a teacher whose logits differ clearly from the student's
        method = cls(student, teacher, alpha=alpha)
        terms = method(x, y)
        if not isinstance(terms, dict) or not terms:
            raise Wrong(f"forward(x, y) should return a dict of named loss terms, got {type(terms).__name__}.")
        total = sum(terms.values())
        # expected, written out by hand
        z_s, z_t = student(x), teacher(x).detach()
        ce = -torch.log_softmax(z_s, dim=-1)[torch.arange(12), y].mean()
        mse = ((z_s - z_t) ** 2).sum() / z_s.numel()
        expected = (1 - alpha) * ce + alpha * mse
        if not isinstance(total, torch.Tensor) or total.numel() != 1:
            raise Wrong("the loss terms should be scalar tensors.")
        swapped = (alpha * ce + (1 - alpha) * mse).item()
        if alpha not in (0.0, 1.0) and math.isclose(total.item(), swapped, rel_tol=1e-4):
            raise Wrong(f"at alpha={alpha} the weights are swapped: alpha multiplies the logit term, "
                        "1 - alpha the labels.")
        close(f"the sum of your loss terms at alpha={alpha}", total.detach(), expected.item(), rel=1e-4)
        if any(p.requires_grad for p in teacher.parameters()):
            raise Wrong("the teacher's parameters still require gradients: call super().__init__(student, teacher), "
                        "which freezes the teacher.")
        if not total.requires_grad:
            raise Wrong(f"at alpha={alpha} your loss terms have no gradient (detached, or computed with .item()?).")
        (grad,) = torch.autograd.grad(total, student.weight)
        (expected_grad,) = torch.autograd.grad(expected, student.weight)
        if not torch.allclose(grad, expected_grad, rtol=1e-4, atol=1e-6):
            raise Wrong(f"at alpha={alpha} the value is right but the gradient is not (is a term detached?).")
    return ("the loss terms sum to (1 - alpha) CE + alpha MSE(logits), with the right gradients, "
            "and the teacher is frozen.")


# ------------------------------------------------------------------------------------------------
# 02.less-data: hard labels against soft targets (T = 4, no labels) on transfer sets of 30, 100 and 300 images
# ------------------------------------------------------------------------------------------------
LESS_DATA = {"sizes": (30, 100, 300), "max_batch_size": 50, "steps": 200, "lr": 3e-3, "hidden": (64,),
             "temperature": 4.0, "min_seeds": 5, "methods": ("hard labels", "soft targets, T = 4")}
"""The exercise's setting: the chapter's MLP-64, lr and make_method, about 200 gradient steps for every size."""


@functools.lru_cache(maxsize=64)  # a resubmitted answer is checked again in no time
def less_data_accuracy(method: str, n: int, seed: int) -> float:
    """Test accuracy of the chapter's MLP-64 trained on the first ``n`` training digits with ``method``.

    ``digits_loaders(batch_size=min(50, n), limit=n)``, ``200 // len(loaders["train"])`` epochs,
    ``torch.manual_seed(seed)`` then ``MLP(64, (64,), 10)``, ``Supervised`` (``"hard labels"``) or
    ``KD(alpha=1, temperature=4)`` from the zoo's ``digits-cnn`` teacher (``"soft targets, T = 4"``), ``lr = 3e-3``,
    scored on the 360 test digits.
    """
    from kdedu import data, zoo
    from kdedu.methods import KD, Supervised
    from kdedu.models import MLP
    from kdedu.train import evaluate, fit

    s = LESS_DATA
    soft = method == s["methods"][1]
    teacher = zoo.teacher("digits-cnn", verbose=False) if soft else None  # loaded before seeding
    loaders = data.digits_loaders(batch_size=min(s["max_batch_size"], n), limit=n)
    torch.manual_seed(seed)
    student = MLP(in_features=64, hidden=s["hidden"], num_classes=10)
    distiller = KD(student, teacher, alpha=1.0, temperature=s["temperature"]) if soft else Supervised(student)
    fit(distiller, loaders["train"], num_epochs=s["steps"] // len(loaders["train"]), lr=s["lr"], seed=seed,
        progress=False)
    return float(evaluate(student, loaders["test"])["acc"])


def _ch02_by_size(name: str, value, n_seeds: int) -> dict[int, list[float]]:
    """``answer[name]``: a dict {n: per-seed accuracies} for the exercise's three sizes."""
    import numbers
    from collections.abc import Mapping


    sizes = LESS_DATA["sizes"]
    if not isinstance(value, Mapping):
        raise Wrong(f'answer["{name}"] should be a dict {{n: per-seed accuracies}} for n = 30, 100 and 300, got '
                    f"{type(value).__name__}.")
    by_size = {}
    for key, accs in value.items():
        if isinstance(key, str) and key.strip().isdigit():
            key = int(key)
        if isinstance(key, bool) or not isinstance(key, numbers.Integral):
            raise Wrong(f'answer["{name}"] has the key {key!r}; its keys are the transfer set sizes 30, 100 and 300.')
        by_size[int(key)] = accs
    if sorted(by_size) != list(sizes):
        raise Wrong(f'answer["{name}"] has the sizes {sorted(by_size)}; the exercise asks for {list(sizes)}.')
    return {n: answer_accuracies(f'answer["{name}"][{n}]', by_size[n], n_seeds) for n in sizes}


@register("02.less-data", hint="each size needs its own loaders and its own number of epochs, so that every size "
                               "gets about the same number of gradient steps; the rest is the chapter's comparison, "
                               "with every list in the order of the seeds.")
def _check_02_less_data(answer):
    import numpy as np

    from kdedu.stats import compare

    s = LESS_DATA
    hard_name, soft_name = s["methods"]
    answer_dict(answer, ("seeds", hard_name, soft_name, "largest gain at"))
    seeds = answer_seeds(answer, s["min_seeds"])
    n_seeds = len(seeds)
    hard = _ch02_by_size(hard_name, answer[hard_name], n_seeds)
    soft = _ch02_by_size(soft_name, answer[soft_name], n_seeds)
    if hard == soft:
        raise Wrong(f'answer["{hard_name}"] and answer["{soft_name}"] are the same, seed by seed: they are two '
                    "different training runs.")
    gains = {n: float(np.mean(np.subtract(soft[n], hard[n]))) for n in s["sizes"]}
    at = answer_number('answer["largest gain at"]', answer["largest gain at"])
    if at not in s["sizes"]:
        raise Wrong(f'answer["largest gain at"] = {at:g} is not one of the sizes {list(s["sizes"])}.')
    if gains[int(at)] < max(gains.values()) - 1e-9:
        raise Wrong(f'answer["largest gain at"] = {at:g} is not the size at which your lists give the largest mean '
                    "gain of the soft targets over the hard labels.")
    i = picked([seeds, [hard[n] for n in s["sizes"]], [soft[n] for n in s["sizes"]]], len(s["sizes"]) * n_seeds)
    n, seed = s["sizes"][i // n_seeds], seeds[i % n_seeds]
    for name, values in ((hard_name, hard), (soft_name, soft)):
        again = less_data_accuracy(name, n, seed)
        got = values[n][seeds.index(seed)]
        if abs(again - got) > retrain_tolerance():
            raise Wrong(f'n = {n}, seed {seed}: your answer["{name}"] says {100 * got:.2f} %, but training the '
                        f"chapter's MLP-64 on {n} images ({name}) for {s['steps']} // (batches per epoch) epochs "
                        f"gives {100 * again:.2f} %. Check the loaders of that size, the number of epochs, the method "
                        "and the order of the values.")
    lines = []
    for size in s["sizes"]:
        c = compare(soft[size], hard[size])
        lines.append(f"n = {size}: {100 * c['mean']:+.2f} ± {100 * c['se']:.2f}")
    return (f"your n = {n}, seed {seed} reproduces, both ways. Soft targets − hard labels, mean ± s.e. over "
            f"{n_seeds} seeds, in points: {'; '.join(lines)} (described, not tested). The largest mean gain is at "
            f"n = {int(at)}: compare its lead with the standard errors before you rank the sizes.")
