"""Auto-checks for the new exercises of problem set 2, Part II, the capacity gap (chapters 07-08)
(book/assignments/ps2-*.md).

The problem set's other exercises are the chapters' own (kdedu/check/chNN.py)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from kdedu.check import Wrong, answer_number, function, register


def _ps2_teacher_logits(seed: int, c: int, scale: float, n: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, c, generator=g, dtype=torch.float64) + 2 * torch.randn(n, 1, generator=g,
                                                                                          dtype=torch.float64)


def _ps2_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each row of ``probs``, (N, C) -> (N,), with 0 log 0 = 0."""
    return -(probs * probs.clamp_min(1e-300).log()).sum(dim=-1)


def _ps2_mean_entropy(z_t: torch.Tensor, factors, base: float = math.e) -> list[float]:
    """The mean entropy of the targets softmax(f z_t), one per factor f (in nats, or in the given base)."""
    return [(_ps2_entropy(torch.softmax(f * z_t, dim=-1)).mean() / math.log(base)).item() for f in factors]


def _ps2_same(values: list[float], targets: list[float]) -> bool:
    return len(values) == len(targets) and \
        all(math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6) for a, b in zip(values, targets, strict=True))


def _ps2_numbers(call: str, got) -> list[float]:
    if isinstance(got, torch.Tensor):
        if got.dim() != 1:
            raise Wrong(f"{call} should return one number per step of stage I, got a tensor of shape "
                        f"{tuple(got.shape)}.", "average each target's entropy over the N examples: one number "
                        "per step.")
        got = got.tolist()
    elif hasattr(got, "tolist"):  # a numpy array
        got = got.tolist()
    if isinstance(got, (str, bytes, Mapping)) or not hasattr(got, "__iter__"):
        raise Wrong(f"{call} should return a list of numbers, one per step of stage I, got {type(got).__name__}.")
    out = []
    for value in got:
        if isinstance(value, torch.Tensor) and value.numel() != 1:
            raise Wrong(f"{call} should return one number per step of stage I, got a tensor of shape "
                        f"{tuple(value.shape)} for a step.", "average each target's entropy over the N examples: "
                        "one number per step.")
        out.append(answer_number(f"an entry of {call}", value))
    return out


@register("ps2.stage1-entropy", hint="Phi multiplies the teacher's logits before the softmax; the step T of the "
                                     "ladder is not a softmax temperature. Measure each target's softness as "
                                     "chapter 07's mean_entropy does: per example, in nats, then the mean.")
def _check_ps2_stage1_entropy(fn):
    from kdedu import losses

    function("stage1_entropy(z_t, tau_max)", fn)
    # the last teacher is very confident: most of its probabilities underflow to 0, even at the first step
    for seed, (tau_max, c, scale) in enumerate(((10, 10, 4.0), (4, 5, 4.0), (7, 10, 4.0), (1, 3, 4.0),
                                                (3, 10, 3000.0))):
        z_t = _ps2_teacher_logits(seed, c, scale)
        steps = range(tau_max, 0, -1)  # stage I runs T = tau_max, ..., 1
        expected = [_ps2_entropy(torch.softmax(losses.annealing_phi(T, tau_max) * z_t, dim=-1)).mean().item()
                    for T in steps]
        call = f"your stage1_entropy(z_t, {tau_max})"
        got = _ps2_numbers(call, fn(z_t.clone(), tau_max))
        if not all(math.isfinite(v) for v in got):
            raise Wrong(f"{call} gives nan or inf for a very confident teacher, whose probabilities underflow to 0: "
                        "0 log 0 must count as 0.", "take the log of a softmax in one step (log_softmax), or keep "
                        "the probabilities that are 0 out of the sum.")
        if _ps2_same(got, expected):
            continue
        if len(got) != len(expected):
            raise Wrong(f"{call} has {len(got)} values; stage I climbs tau_max = {tau_max} steps, one target each "
                        f"(T = {tau_max}, ..., 1).")

        phis = [losses.annealing_phi(T, tau_max) for T in steps]
        diagnoses = [
            (expected[::-1], "the steps run backwards: stage I starts at T = tau_max, the softest target, and ends "
                             "at T = 1, the teacher itself."),
            (_ps2_mean_entropy(z_t, [1 / T for T in steps]),
             "those are the targets softmax(z_t / T), the schedule linear in the softmax temperature (exercise "
             "8.2); the deck's target is softmax(Phi(T) z_t)."),
            (_ps2_mean_entropy(z_t, [1 / p for p in phis]), "you divided the logits by Phi; Phi multiplies them."),
            (_ps2_mean_entropy(z_t, [1 - T / tau_max for T in steps]),
             "Phi is off by one step: Phi(T) = 1 - (T - 1) / tau_max is 1 at T = 1 and 1 / tau_max at T = tau_max."),
            (_ps2_mean_entropy(z_t, phis, base=2), "those are bits (log base 2); chapter 07 measures entropy in nats."),
            ([_ps2_entropy(torch.softmax(p * z_t, dim=-1).mean(dim=0, keepdim=True)).item() for p in phis],
             "that is the entropy of the averaged distribution; average the entropies of the examples instead, "
             "as mean_entropy does."),
            ([_ps2_entropy(torch.softmax(p * z_t, dim=-1)).sum().item() for p in phis],
             "that is the sum over the examples; take their mean."),
        ]
        for wrong, message in diagnoses:
            if not _ps2_same(wrong, expected) and _ps2_same(got, wrong):
                raise Wrong(f"{call}: {message}")
        worst = max(range(len(got)), key=lambda i: abs(got[i] - expected[i]))
        raise Wrong(f"{call}: the entropy of step T = {tau_max - worst} is {got[worst]:.4g} nats, expected "
                    f"{expected[worst]:.4g}.")
    return ("the mean entropy falls step by step from the softest target (T = tau_max) to the teacher's own at T = 1, "
            "the same measure chapter 07 uses to compare teachers: the ladder walks the student from a soft teacher "
            "to a sharp one, as an assistant's softer targets were meant to.")
