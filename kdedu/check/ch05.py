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


@register("05.translate", hint="pad with zeros and cut a window (or mask the pixels that come from outside); "
                               "dx moves along the last dimension (columns), dy along the rows; nothing wraps around")
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


@register("05.agreement", hint="compare logits_a.argmax(dim=-1) with logits_b.argmax(dim=-1), then average")
def _check_05_agreement(fn):
    function("my_agreement(logits_a, logits_b)", fn)
    g = torch.Generator().manual_seed(7)
    for n, c, same in ((40, 10, 25), (7, 3, 2)):
        a = torch.randn(n, c, generator=g, dtype=torch.float64)
        b = torch.randn(n, c, generator=g, dtype=torch.float64)
        b[:same] = 2.0 * a[:same] + 1.0  # the same prediction as `a` on these rows, other probabilities
        expected = (a.argmax(dim=-1) == b.argmax(dim=-1)).double().mean().item()
        got = fn(a.clone(), b.clone())
        if isinstance(got, torch.Tensor) and got.numel() > 1:
            raise Wrong(f"your function returned a tensor of shape {tuple(got.shape)}; "
                        "it should return one number, the fraction of rows that agree.")
        value = got.item() if isinstance(got, torch.Tensor) else got
        if isinstance(value, (int, float)) and n > 1 and math.isclose(value, expected * n, rel_tol=1e-6):
            raise Wrong(f"you returned {value}, the number of rows that agree; divide by the number of rows ({n}).")
        close(f"your agreement on ({n}, {c}) logits", got, expected, rel=1e-6, abs_=1e-9)
    return "matches the fraction of rows where the two argmaxes are equal."
