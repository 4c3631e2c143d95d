"""Auto-checks for the new exercises of problem set 1, Part I, foundations (chapters 01-06) (book/assignments/ps1-*.md).

The problem set's other exercises are the chapters' own (kdedu/check/chNN.py)."""

from __future__ import annotations

import torch

from kdedu.check import Wrong, function, register, same_tensor


def _ps1_logits(seed: int, batch: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z_s = torch.randn(batch, classes, generator=g, dtype=torch.float64)
    z_t = 3 * torch.randn(batch, classes, generator=g, dtype=torch.float64)
    return z_s, z_t


@register("ps1.kd-grad", hint="chapter 03 differentiates the KL of one example; the loss here multiplies it by T**2 "
                              "and averages it over the rows of the batch. Follow each factor through the "
                              "derivative, and compare with autograd on a small batch.")
def _check_ps1_kd_grad(fn):
    from kdedu import losses

    function("kd_grad(z_s, z_t, T)", fn)
    for seed, (batch, classes, T) in enumerate(((8, 10, 4.0), (5, 3, 2.0), (16, 10, 1.0), (3, 7, 10.0),
                                                (1, 4, 0.5))):
        z_s, z_t = _ps1_logits(seed, batch, classes)
        leaf = z_s.clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(losses.kd_loss(leaf, z_t, T), leaf)  # the reference: autograd of kd_loss
        call = f"your kd_grad on a batch of {batch} rows, T = {T:g}"
        got = fn(z_s.clone(), z_t.clone(), T)
        if isinstance(got, torch.Tensor) and got.shape == expected.shape:
            got64 = got.detach().double()
            diff1 = torch.softmax(z_s, dim=-1) - torch.softmax(z_t, dim=-1)  # p_s - p_t at T = 1, (B, C)
            diagnoses = [
                (-expected, "the sign is flipped: the gradient is positive where the student gives a class more "
                            "probability than the teacher (gradient descent then lowers that logit)."),
                (batch * expected, "the 1/B of the batch mean is missing: kd_loss averages over the rows."),
                (expected / T, "that is (p_s - p_t) / B: the T**2 of the loss and the 1/T of the chain rule "
                               "leave a factor T in front."),
                (expected * T, "that is T**2 (p_s - p_t) / B: the 1/T of the chain rule (z_s enters as z_s / T) "
                               "is missing."),
                (expected / T ** 2, "that is the gradient of the KL alone, (p_s - p_t) / (T B): kd_loss multiplies "
                                    "the KL by T**2."),
                (T * diff1 / batch, "those are the probabilities at T = 1; both soft targets are taken at "
                                    "temperature T."),
            ]
            if not torch.allclose(got64, expected, atol=1e-9, rtol=1e-6):
                for wrong, message in diagnoses:
                    if torch.allclose(got64, wrong, atol=1e-9, rtol=1e-6):
                        raise Wrong(f"{call}: {message}")
        same_tensor(call, got, expected, atol=1e-8, rtol=1e-5)
    return ("d kd_loss / d z_s = T (p_s(T) - p_t(T)) / B: chapter 03's (p_s - p_t) / T, times the T**2 of the loss "
            "and the 1/B of the batch mean. Each row's gradient sums to 0, and at high T it tends to "
            "(z_s - z_t) / (C B) for zero-mean logits: logit matching.")
