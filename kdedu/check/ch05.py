"""Auto-checks for the exercises of chapter 05 (registered with :func:`kdedu.check.register`)."""

from __future__ import annotations

import math

import torch

from kdedu.check import Wrong, close, function, register, same_tensor


def _ch05_shift_reference(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Image i moved dx[i] pixels right and dy[i] down, zero fill, by copying one block per image."""
    n, _, h, w = x.shape
    out = torch.zeros_like(x)
    for i in range(n):
        a, b = int(dx[i]), int(dy[i])  # |a| < w and |b| < h
        out[i, :, max(0, b):h + min(0, b), max(0, a):w + min(0, a)] = \
            x[i, :, max(0, -b):h - max(0, b), max(0, -a):w - max(0, a)]
    return out


@register("05.translate", hint="the chapter's shift_images moves a whole batch by one offset; here every image has "
                               "its own. dx moves along the columns (the last dimension), and nothing wraps around.")
def _check_05_translate(fn):
    function("shift_batch(x, dx, dy)", fn)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(6, 2, 7, 9, generator=g)  # not square, 2 channels: catches swapped axes
    dx = torch.tensor([0, 1, -2, 3, 0, -1])
    dy = torch.tensor([0, -1, 2, 0, 3, -3])
    expected = _ch05_shift_reference(x, dx, dy)
    got = fn(x.clone(), dx.clone(), dy.clone())
    if isinstance(got, torch.Tensor) and got.shape == expected.shape and not torch.allclose(got, expected):
        rolled = torch.stack([torch.roll(x[i], (int(dy[i]), int(dx[i])), dims=(1, 2)) for i in range(len(x))])
        if torch.allclose(got, rolled):
            raise Wrong("pixels wrap around: what leaves the image on one side comes back on the other "
                        "(that is torch.roll). Pixels that leave must be dropped, and the empty side filled with 0.")
        if torch.allclose(got, _ch05_shift_reference(x, -dx, -dy)):
            raise Wrong("the images move the wrong way: positive dx must move them right, positive dy down.")
        if torch.allclose(got, _ch05_shift_reference(x, dy, dx)):
            raise Wrong("dx and dy are swapped: dx moves along the columns (the last dimension), dy along the rows.")
    same_tensor("your shift_batch(x, dx, dy) on (6, 2, 7, 9) images", got, expected)
    one = torch.tensor([2])
    same_tensor("your shift_batch on one image moved (2, 2)", fn(x[:1].clone(), one, one.clone()),
                _ch05_shift_reference(x[:1], one, one))
    return "every image moves by its own offset, with zero fill and nothing wrapping around."


def _ch05_kappa_reference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cohen's kappa of two label vectors, by counting (loops: obviously right)."""
    n, classes = len(a), sorted(set(a.tolist()) | set(b.tolist()))
    p_o = sum(int(u == v) for u, v in zip(a.tolist(), b.tolist(), strict=True)) / n
    p_e = sum((a == k).sum().item() / n * (b == k).sum().item() / n for k in classes)
    return (p_o - p_e) / (1 - p_e)


@register("05.agreement", hint="p_o is the chapter's agreement. For p_e, count how often each model predicts each "
                               "class (torch.bincount with minlength=C) and turn the counts into fractions.")
def _check_05_agreement(fn):
    function("my_kappa(logits_a, logits_b)", fn)
    g = torch.Generator().manual_seed(7)
    for n, c, same, skew in ((40, 10, 25, 0.0), (7, 3, 2, 0.0), (60, 10, 60, 2.0), (200, 10, 120, 3.0)):
        a = torch.randn(n, c, generator=g, dtype=torch.float64)
        b = torch.randn(n, c, generator=g, dtype=torch.float64)
        a[:, 1] += skew  # skewed models predict class 1 often: much of their agreement is chance
        b[:, 1] += skew
        b[:same] = 2.0 * a[:same] + 1.0  # the same prediction as `a` on these rows, other probabilities
        pred_a, pred_b = a.argmax(dim=-1), b.argmax(dim=-1)
        expected = _ch05_kappa_reference(pred_a, pred_b)
        got = fn(a.clone(), b.clone())
        if isinstance(got, torch.Tensor) and got.numel() > 1:
            raise Wrong(f"your function returned a tensor of shape {tuple(got.shape)}; "
                        "it should return one number, Cohen's kappa of the two models' predictions.")
        value = got.item() if isinstance(got, torch.Tensor) else got
        if isinstance(value, (int, float)) and not isinstance(value, bool) and \
                not math.isclose(value, expected, rel_tol=1e-5, abs_tol=1e-7):
            p_o = (pred_a == pred_b).double().mean().item()
            if math.isclose(value, p_o, rel_tol=1e-6):
                raise Wrong(f"you returned {value:.4g}, the raw agreement p_o; kappa also removes the agreement "
                            "expected by chance.")
            if math.isclose(value, (p_o - 1 / c) / (1 - 1 / c), rel_tol=1e-6):
                raise Wrong("your chance agreement is 1 / C, as for two uniform guessers; p_e must use the "
                            "two models' own class frequencies.")
        close(f"your kappa on ({n}, {c}) logits", got, expected, rel=1e-5, abs_=1e-7)
    return ("matches Cohen's kappa: 1 for identical predictions, about 0 for agreement at chance level, given "
            "each model's class frequencies.")
