"""Auto-checks for the exercises of chapter 04 (registered with :func:`kdedu.check.register`)."""

from __future__ import annotations

import math

import torch

from kdedu.check import Wrong, close, function, register, same_tensor


def _ch04_labels() -> torch.Tensor:
    return torch.tensor([3, 0, 9, 3, 7, 1])


@register("04.smoothed-targets",
          hint="(1 - eps) * one_hot(y, C) + eps / C: every class, the label included, gets eps / C")
def _check_04_smoothed_targets(fn):
    function("smoothed_targets(y, C, eps)", fn)
    y = _ch04_labels()
    for C, eps in ((10, 0.1), (12, 0.3)):
        expected = torch.full((len(y), C), eps / C, dtype=torch.float64)
        for row, label in enumerate(y.tolist()):  # built entry by entry, independently of torch's one_hot
            expected[row, label] = 1 - eps + eps / C
        got = fn(y.clone(), C, eps)
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and \
                math.isclose(float(got[0, y[0]]), 1 - eps, rel_tol=1e-4):
            raise Wrong("your targets give exactly 1 - eps to the label: that spreads eps over the C - 1 wrong "
                        "classes only, not Szegedy et al.'s label smoothing.")
        same_tensor(f"your smoothed_targets(y, {C}, {eps})", got, expected)
    return "matches q' = (1 - eps) q + eps u."


@register("04.ls-constant", hint="label smoothing = KD from a uniform teacher + eps * H(u), and H(u) = log C")
def _check_04_ls_constant(answer):
    from kdedu import losses

    g = torch.Generator().manual_seed(4)
    z = 3 * torch.randn(16, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (16,), generator=g)
    diff = losses.label_smoothing_loss(z, y, 0.2) - losses.distillation_loss(z, torch.zeros_like(z), y, 0.2, 1.0)
    close("your constant", answer, diff.item(), rel=1e-3)
    return f"the difference is {diff.item():.4f} = 0.2 * log 10 for any logits: a constant, so no gradient."


@register("04.virtual-teacher", hint="every wrong class gets (1 - a) / (C - 1), the label gets a; each row sums to 1")
def _check_04_virtual_teacher(fn):
    function("virtual_teacher(y, C, a)", fn)
    y = _ch04_labels()
    for C, a in ((10, 0.9), (12, 0.75)):
        expected = torch.full((len(y), C), (1 - a) / (C - 1), dtype=torch.float64)
        for row, label in enumerate(y.tolist()):
            expected[row, label] = a
        same_tensor(f"your virtual_teacher(y, {C}, {a})", fn(y.clone(), C, a), expected)
    return "matches Yuan et al.'s virtual teacher p^d."


@register("04.matching-a",
          hint="make the virtual teacher equal to the label-smoothed target q' = (1 - eps) one_hot(y) + eps / C")
def _check_04_matching_a(answer):
    eps, C = 0.1, 10
    q_smooth = (1 - eps) * torch.eye(C, dtype=torch.float64)[3] + eps / C  # the smoothed target of label 3
    expected = q_smooth[3].item()  # the virtual teacher must put this on the label
    if isinstance(answer, (int, float)) and math.isclose(answer, 1 - eps, rel_tol=1e-6):
        raise Wrong(f"a = {answer} = 1 - eps leaves (1 - a) / (C - 1) = eps / 9 on the wrong classes, but label "
                    "smoothing gives them eps / C = eps / 10.")
    close("your a", answer, expected, rel=1e-4)
    return f"a = 1 - eps + eps / C = {expected:.2f}: then the virtual teacher is exactly the smoothed label."
