"""Auto-checks for the exercises of chapter 02 (registered with :func:`kdedu.check.register`)."""

from __future__ import annotations

import math

import torch

from kdedu.check import Wrong, close, function, register, same_tensor


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


@register("02.class-similarity", hint="build S of eq. (eq-class-similarity) first, then work on its rows: only "
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
