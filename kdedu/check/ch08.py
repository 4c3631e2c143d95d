"""Auto-checks for the exercises of chapter 08 (registered with :func:`kdedu.check.register`)."""

from __future__ import annotations

import math

import torch

from kdedu.check import Wrong, close, function, register, same_tensor


def _ch08_number(name: str, value) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Wrong(f"{name} should be a number, got {type(value).__name__}.")
    return float(value)


@register("08.phi", hint="phi(T) = 1 - (T - 1) / tau_max: 1 at T = 1, 1 / tau_max at T = tau_max")
def _check_08_phi(fn):
    function("my_phi(T, tau_max)", fn)
    for tau_max in (1, 4, 10, 14):
        for T in range(1, tau_max + 1):
            expected = (tau_max - T + 1) / tau_max  # the same formula, rearranged
            got = _ch08_number(f"your my_phi({T}, {tau_max})", fn(T, tau_max))
            if not math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-12):
                if math.isclose(got, 1 - T / tau_max, abs_tol=1e-12):
                    raise Wrong(f"my_phi({T}, {tau_max}) = {got:.4g}: that is 1 - T / tau_max, which gives 0 "
                                "at T = tau_max and never reaches 1.", "subtract 1 from T before dividing")
                if math.isclose(got, T / tau_max, abs_tol=1e-12):
                    raise Wrong(f"my_phi({T}, {tau_max}) = {got:.4g}: phi must fall as T grows "
                                "(T = tau_max is the most damped teacher).")
                close(f"your my_phi({T}, {tau_max})", got, expected, rel=1e-9, abs_=1e-12)
    return "phi(T) = 1 - (T - 1) / tau_max: from 1 / tau_max at T = tau_max up to 1 at T = 1."


@register("08.schedule", hint="start at tau_max and hold each temperature for k consecutive epochs, down to 1")
def _check_08_schedule(fn):
    function("temperatures(tau_max, k)", fn)
    for tau_max, k in ((10, 1), (4, 3), (7, 2), (1, 5)):
        expected = [tau_max - epoch // k for epoch in range(k * tau_max)]
        got = fn(tau_max, k)
        try:
            got = [int(v) for v in (got.tolist() if isinstance(got, torch.Tensor) else got)]
        except (TypeError, ValueError):
            raise Wrong(f"temperatures({tau_max}, {k}) should return a list of integers, "
                        f"got {type(got).__name__}.") from None
        if got == expected:
            continue
        if len(got) != len(expected):
            raise Wrong(f"temperatures({tau_max}, {k}) has {len(got)} epochs; stage I lasts k * tau_max = "
                        f"{len(expected)}.")
        if got == expected[::-1]:
            raise Wrong(f"temperatures({tau_max}, {k}) runs upwards; stage I starts at T = tau_max "
                        "(the most damped teacher) and ends at T = 1.")
        if sorted(got) == sorted(expected):
            raise Wrong(f"temperatures({tau_max}, {k}) = {got}: the right values in the wrong order; "
                        "each temperature is held for k consecutive epochs.")
        raise Wrong(f"temperatures({tau_max}, {k}) = {got}, expected {len(expected)} epochs from {tau_max} down to 1.")
    return "T = tau_max, ..., 1, each for k epochs: k * tau_max epochs of stage I."


@register("08.gradient", hint="differentiate mean((z_s - phi z_t)^2) over all N*C elements: 2 (z_s - phi z_t) / (N C)")
def _check_08_gradient(fn):
    function("annealing_grad(z_s, z_t, phi)", fn)
    g = torch.Generator().manual_seed(8)
    for shape, phi in (((6, 10), 0.1), ((3, 5), 0.55), ((4, 7), 1.0)):
        z_s = torch.randn(*shape, generator=g, dtype=torch.float64)
        z_t = 4 * torch.randn(*shape, generator=g, dtype=torch.float64)
        leaf = z_s.clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(((leaf - phi * z_t) ** 2).mean(), leaf)  # autograd, from the definition
        got = fn(z_s.clone(), z_t.clone(), phi)
        if isinstance(got, torch.Tensor) and got.shape == expected.shape:
            got64, n = got.detach().double(), z_s.numel()
            if torch.allclose(got64, -expected):
                raise Wrong("the sign is flipped: the gradient points from the target phi * z_t towards z_s.")
            if torch.allclose(got64, expected * n):
                raise Wrong("that is the gradient of the deck's squared norm (a sum); kdedu's loss is the mean over "
                            "all N * C elements, so divide by z_s.numel().")
            if torch.allclose(got64, expected / 2):
                raise Wrong("the factor 2 of the square's derivative is missing.")
            if torch.allclose(got64, expected * shape[-1]) or torch.allclose(got64, expected * shape[0]):
                raise Wrong("the normalisation is off: the mean is over all N * C elements, not over one dimension.")
        same_tensor(f"your annealing_grad on logits of shape {shape}, phi = {phi}", got, expected, atol=1e-9)
    return "d/dz_s mean((z_s - phi z_t)^2) = 2 (z_s - phi z_t) / (N C): it vanishes at z_s = phi z_t."


@register("08.effective-T", hint="softmax(phi z) = softmax(z / (1 / phi)): find the T whose phi(T) is 1/2")
def _check_08_effective_T(answer):
    tau_max, target = 10, 2.0
    expected = next(T for T in range(1, tau_max + 1) if math.isclose(1 / (1 - (T - 1) / tau_max), target))
    got = _ch08_number("your step T", answer)
    if math.isclose(got, target) and expected != target:
        raise Wrong("T = 2 is the schedule's step, not a softmax temperature: at T = 2, phi = 0.9, which is a "
                    "softmax temperature of 1 / 0.9.")
    if math.isclose(got, 1 / target):
        raise Wrong("0.5 is the factor phi you need; the question asks for the step T of the schedule that gives it.")
    close("your step T", got, expected, rel=0, abs_=1e-9)
    return f"phi({expected}) = 1/2, so the annealed teacher at T = {expected} is the teacher at softmax temperature 2."
