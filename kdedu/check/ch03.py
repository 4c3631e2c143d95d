"""Auto-checks for the exercises of chapter 03 (registered with :func:`kdedu.check.register`)."""

from __future__ import annotations

import math

import torch

from kdedu.check import Wrong, close, function, register, same_tensor


def _ch03_logits(seed: int, shape: tuple, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=torch.float64)


@register("03.soft-targets",
          hint="divide the logits by T, subtract each row's max, exponentiate, normalise over dim=-1")
def _check_03_soft_targets(fn):
    function("my_soft_targets(logits, T)", fn)
    for shape in ((5, 7), (2, 3, 10)):
        z = _ch03_logits(3, shape)
        for T in (0.5, 1.0, 4.0):
            same_tensor(f"your soft_targets(z of shape {shape}, T={T})", fn(z.clone(), T), torch.softmax(z / T, dim=-1))
    big = torch.tensor([[1000.0, 0.0], [0.0, -1000.0]], dtype=torch.float64)
    got = fn(big.clone(), 1.0)
    if isinstance(got, torch.Tensor) and not torch.isfinite(got).all():
        raise Wrong("your soft_targets returns nan/inf for logits like [1000, 0]: exp overflows.",
                    "subtract each row's maximum before torch.exp; the softmax does not change")
    same_tensor("your soft_targets([[1000, 0], [0, -1000]], 1)", got, torch.softmax(big, dim=-1))
    return "matches softmax(z / T) for every shape and temperature, and is numerically stable."


@register("03.uniform-entropy",
          hint="T -> inf gives the uniform distribution over C = 10 classes; nats use the natural log")
def _check_03_uniform_entropy(answer):
    p = torch.softmax(_ch03_logits(0, (10,)) / 1e9, dim=-1)  # the T -> inf limit, computed
    expected = -(p * p.log()).sum().item()
    if isinstance(answer, (int, float)) and math.isclose(answer, expected / math.log(2), rel_tol=1e-3):
        raise Wrong(f"{answer} is the entropy in bits (log base 2); the book measures entropy in nats.")
    close("your entropy", answer, expected, rel=1e-3)
    return f"H = log 10 = {expected:.4f} nats, the largest entropy a 10-class distribution can have."


@register("03.grad-exponent",
          hint="the gradient is (p_s - p_t) / T, and at high T the difference p_s - p_t also shrinks like 1/T")
def _check_03_grad_exponent(answer):
    z_s, z_t = _ch03_logits(1, (8, 10), 1.0), _ch03_logits(2, (8, 10), 3.0)
    temps, norms = (100.0, 1000.0), []
    for T in temps:  # the gradient norm of the un-scaled KL at two high temperatures, by autograd
        zs = z_s.clone().requires_grad_(True)
        log_ps, log_pt = torch.log_softmax(zs / T, dim=-1), torch.log_softmax(z_t / T, dim=-1)
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=-1).mean()
        (grad,) = torch.autograd.grad(kl, zs)
        norms.append(grad.norm().item())
    slope = (math.log(norms[1]) - math.log(norms[0])) / (math.log(temps[1]) - math.log(temps[0]))
    if isinstance(answer, (int, float)) and math.isclose(answer, -slope, rel_tol=0.05):
        raise Wrong(f"k = {answer} has the right size but the wrong sign: the gradient shrinks as T grows.")
    close("your exponent k", answer, slope, rel=0.05)
    return f"the measured slope is {slope:.3f}: the un-scaled gradient falls like 1/T^2, hence the T^2 factor."


@register("03.kd-limit",
          hint="centre each row of both logits (subtract its mean), then sum the squared differences / (2C)")
def _check_03_kd_limit(fn):
    function("kd_limit(z_s, z_t)", fn)
    z_s = _ch03_logits(4, (6, 10), 1.0) + _ch03_logits(5, (6, 1), 5.0)  # rows with different means
    z_t = _ch03_logits(6, (6, 10), 3.0) - 2.0
    T = 1e4  # the exact KD loss per row at a very high temperature, computed here
    log_ps, log_pt = torch.log_softmax(z_s / T, dim=-1), torch.log_softmax(z_t / T, dim=-1)
    expected = T * T * (log_pt.exp() * (log_pt - log_ps)).sum(dim=-1)  # (6,)
    same_tensor("your kd_limit(z_s, z_t)", fn(z_s.clone(), z_t.clone()), expected, atol=1e-6, rtol=1e-2)
    return "matches T^2 KL(p_t(T) || p_s(T)) at T = 10^4, row by row, for non-zero-mean logits."
