"""Auto-checks for the exercises of chapter 03 (registered with :func:`kdedu.check.register`)."""

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
    answer_verdict,
    close,
    function,
    picked,
    register,
    retrain_tolerance,
    same_tensor,
)


def _ch03_logits(seed: int, shape: tuple, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=torch.float64)


@register("03.soft-targets",
          hint="a softmax does not change when you add the same number to every logit of a row: choose that number "
               "so that exp never sees a large positive value.")
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
                    "the softmax of a row does not change if you shift all its logits by the same number: which "
                    "shift keeps exp from overflowing?")
    same_tensor("your soft_targets([[1000, 0], [0, -1000]], 1)", got, torch.softmax(big, dim=-1))
    return "matches softmax(z / T) for every shape and temperature, and is numerically stable."


TIE_LOGITS = (4.0, 4.0, 4.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, -2.0)  # the exercise's logits: three classes tie at the top


@register("03.tie-entropy",
          hint="divide the numerator and the denominator of the softmax by exp(max z / T), as the chapter does for "
               "the one-hot limit, and see which terms survive as T -> 0.")
def _check_03_tie_entropy(answer):
    z = torch.tensor(TIE_LOGITS, dtype=torch.float64)
    p = torch.softmax(z / 1e-3, dim=-1)  # the T -> 0 limit, computed: e^(-3000) is 0 in float64
    expected = -(p * p.clamp_min(1e-300).log()).sum().item()
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        if math.isclose(answer, expected / math.log(2), rel_tol=1e-3):
            raise Wrong(f"{answer} is the entropy in bits (log base 2); the book measures entropy in nats.")
        if math.isclose(answer, math.log(10), rel_tol=1e-3):
            raise Wrong(f"{answer} is the entropy of the uniform distribution: the T -> infinity limit, not T -> 0.")
        if abs(answer) < 1e-3:
            raise Wrong("0 is the entropy of a one-hot vector, the T -> 0 limit when one logit is the largest; "
                        "here three logits tie for the top.")
    close("your entropy", answer, expected, rel=1e-3)
    return (f"H = log 3 = {expected:.4f} nats: the three tied classes share the probability equally and the others "
            "get none. At T -> 0 a softmax keeps only the top classes, however close the others are.")


@register("03.grad-exponent",
          hint="chapter 03's gradient of the KL at temperature T holds for any fixed target distribution: "
               "ask which factors of 1/T survive when the target stays at T = 1.")
def _check_03_grad_exponent(answer):
    z_s, z_t = _ch03_logits(1, (8, 10), 1.0), _ch03_logits(2, (8, 10), 3.0)
    log_pt = torch.log_softmax(z_t, dim=-1)  # the teacher at T = 1, whatever the student's temperature
    temps, norms = (100.0, 1000.0), []
    for T in temps:  # the gradient norm of KL(p_t(1) || p_s(T)) at two high temperatures, by autograd
        zs = z_s.clone().requires_grad_(True)
        kl = (log_pt.exp() * (log_pt - torch.log_softmax(zs / T, dim=-1))).sum(dim=-1).mean()
        (grad,) = torch.autograd.grad(kl, zs)
        norms.append(grad.norm().item())
    slope = (math.log(norms[1]) - math.log(norms[0])) / (math.log(temps[1]) - math.log(temps[0]))
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        if math.isclose(answer, -slope, rel_tol=0.05):
            raise Wrong(f"k = {answer} has the right size but the wrong sign: the gradient shrinks as T grows.")
        if math.isclose(answer, -2.0, rel_tol=0.05):
            raise Wrong("k = -2 holds when the teacher is softened at T too, as in the chapter. Here its "
                        "probabilities stay at T = 1: does p_s(T) - p_t still shrink at high T?")
    close("your exponent k", answer, slope, rel=0.05)
    return (f"the measured slope is {slope:.3f}: only the chain rule's 1/T is left, because p_s(T) - p_t(1) tends to "
            "u - p_t(1), which does not shrink. With T^2 this loss would grow like T and swamp the labels.")


def _ch03_low_T_reference(z_s: torch.Tensor, z_t: torch.Tensor, T: float = 1e-4) -> torch.Tensor:
    """T * KL(p_t(T) || p_s(T)) per row at a very low temperature, in float64 (0 log 0 counts as 0)."""
    log_ps, log_pt = torch.log_softmax(z_s / T, dim=-1), torch.log_softmax(z_t / T, dim=-1)
    p_t = log_pt.exp()
    return T * torch.where(p_t > 0, p_t * (log_pt - log_ps), torch.zeros_like(p_t)).sum(dim=-1)


@register("03.kd-limit",
          hint="as T -> 0 the teacher's soft targets become one-hot (the chapter's first limit), so only one term "
               "of the KL is left; then ask how log-sum-exp(z / T) behaves for a small T.")
def _check_03_kd_limit(fn):
    function("kd_low_T(z_s, z_t)", fn)
    z_s = _ch03_logits(4, (8, 10), 1.0) + _ch03_logits(5, (8, 1), 5.0)  # rows with different means
    z_t = _ch03_logits(6, (8, 10), 3.0) - 2.0
    z_t[:3] = z_s[:3] + 0.5 * _ch03_logits(7, (3, 10), 0.1)  # rows where the two models agree on the top class
    expected = _ch03_low_T_reference(z_s, z_t)  # (8,), computed at T = 1e-4
    got = fn(z_s.clone(), z_t.clone())
    if isinstance(got, torch.Tensor) and got.shape == expected.shape and \
            not torch.allclose(got.double(), expected, atol=1e-3, rtol=1e-3):
        got64, rows = got.double(), torch.arange(len(z_s))
        centred = (z_s - z_s.mean(-1, keepdim=True)) - (z_t - z_t.mean(-1, keepdim=True))
        on_teacher = z_t.max(-1).values - z_t[rows, z_s.argmax(-1)]
        if torch.allclose(got64, centred.pow(2).sum(-1) / 20, atol=1e-3):
            raise Wrong("that is the T -> infinity limit of T^2 KL (logit matching); this exercise takes T -> 0.")
        if torch.allclose(got64, -expected, atol=1e-3):
            raise Wrong("the sign is flipped: a KL divergence is never negative.")
        if torch.allclose(got64, on_teacher, atol=1e-3):
            raise Wrong("that measures the gap on the teacher's logits; the limit is about the student's logits "
                        "(the teacher's only choose which class).")
    same_tensor("your kd_low_T(z_s, z_t)", got, expected, atol=1e-3, rtol=1e-3)
    return ("matches T KL(p_t(T) || p_s(T)) at T = 10^-4, row by row: the amount by which the student's top logit "
            "beats its logit for the teacher's class, 0 when they agree. Nothing else of the teacher is left.")


# ------------------------------------------------------------------------------------------------
# 03.confident-teacher: KD at T = 1 against T = 4 from a teacher trained for 3 epochs instead of 30
# ------------------------------------------------------------------------------------------------
CONFIDENT = {"teacher_epochs": 3, "n_train": 200, "batch_size": 32, "num_epochs": 30, "lr": 1e-3,
             "hidden": (256, 256), "alpha": 0.5, "min_seeds": 5}
"""The exercise's setting: the chapter's train_student (200 digits, MLP 256-256, 30 epochs), with the weak teacher."""


def _weak_teacher():
    from kdedu import zoo

    return zoo.teacher("digits-cnn", num_epochs=CONFIDENT["teacher_epochs"], verbose=False)  # trained once, cached


def weak_teacher_mass(T: float = 1.0) -> float:
    """The weak teacher's mean probability mass on the 9 non-argmax classes at temperature T, over the test digits."""
    from kdedu import data

    teacher = _weak_teacher()
    with torch.no_grad():
        p = torch.softmax(teacher(data.digits("test").x) / T, dim=-1)  # (360, 10)
    return float((1 - p.max(dim=-1).values).mean())


@functools.lru_cache(maxsize=64)  # a resubmitted answer is checked again in no time
def confident_teacher_accuracy(T: float, seed: int) -> float:
    """Test accuracy of the chapter's ``train_student(0.5, T, seed, teacher=weak)``.

    ``torch.manual_seed(seed)`` then ``MLP(hidden=(256, 256))``, ``KD(alpha=0.5, temperature=T)`` from the zoo's
    ``digits-cnn`` trained for 3 epochs, ``fit(..., num_epochs=30, lr=1e-3, seed=seed)`` on the first 200 training
    digits in shuffled batches of 32, scored on the 360 test digits.
    """
    from kdedu import data
    from kdedu.methods import KD
    from kdedu.models import MLP
    from kdedu.train import evaluate, fit

    s = CONFIDENT
    teacher = _weak_teacher()  # loaded before seeding
    loader = data.make_loader(data.digits("train", limit=s["n_train"]), batch_size=s["batch_size"], shuffle=True)
    torch.manual_seed(seed)
    student = MLP(hidden=s["hidden"])
    fit(KD(student, teacher, alpha=s["alpha"], temperature=T), loader, num_epochs=s["num_epochs"], lr=s["lr"],
        seed=seed, progress=False)
    return float(evaluate(student, data.make_loader(data.digits("test"), batch_size=512))["acc"])


@register("03.confident-teacher",
          hint="the weak teacher replaces the chapter's teacher everywhere: in the mass you measure and in every "
               "student you train; the rest is the chapter's own setting, with every list in the order of the seeds.")
def _check_03_confident_teacher(answer):

    answer_dict(answer, ("mass", "seeds", "T1", "T4", "verdict"))
    mass = answer_number('answer["mass"]', answer["mass"])
    expected = weak_teacher_mass(1.0)
    if not math.isclose(mass, expected, rel_tol=1e-3, abs_tol=1e-4):
        if math.isclose(mass, 100 * expected, rel_tol=1e-3):
            raise Wrong('answer["mass"] looks like a percentage; give it as a fraction of the probability.')
        if math.isclose(mass, weak_teacher_mass(4.0), rel_tol=1e-3, abs_tol=1e-4):
            raise Wrong('answer["mass"] is the weak teacher\'s mass at T = 4; the exercise asks for T = 1.')
        if mass < 0.5 * expected:
            raise Wrong(f'answer["mass"] = {mass:.4f} is well below the weak teacher\'s mass at T = 1: did you measure '
                        "the chapter's teacher (trained for 30 epochs) instead?")
        raise Wrong(f'answer["mass"] = {mass:.4f} is not the weak teacher\'s mean mass on the 9 non-argmax classes '
                    "at T = 1 over the 360 test digits.")
    seeds = answer_seeds(answer, CONFIDENT["min_seeds"])
    n = len(seeds)
    t1 = answer_accuracies('answer["T1"]', answer["T1"], n)
    t4 = answer_accuracies('answer["T4"]', answer["T4"], n)
    if t1 == t4:
        raise Wrong('answer["T1"] and answer["T4"] are the same, seed by seed: they are two different training runs.')
    c = answer_verdict(answer, t4, t1, "T = 4 first")
    i = picked([seeds, t1, t4], n)
    for T, values, key in ((1.0, t1, "T1"), (4.0, t4, "T4")):
        again = confident_teacher_accuracy(T, seeds[i])
        if abs(again - values[i]) > retrain_tolerance():
            raise Wrong(f'seed {seeds[i]}: your answer["{key}"] says {100 * values[i]:.2f} %, but the chapter\'s '
                        f"train_student(0.5, {T:g}, {seeds[i]}, teacher=weak) gives {100 * again:.2f} %. Check the "
                        "teacher (trained for 3 epochs), the temperature, the setting and the order of the values.")
    return (f"your seed {seeds[i]} reproduces at both temperatures. The weak teacher puts {expected:.3f} of its "
            f"probability on the wrong classes at T = 1. With it, KD at T = 4 − KD at T = 1 = "
            f"{100 * c['mean']:+.2f} ± {100 * c['se']:.2f} points (mean ± s.e.) over {n} seeds: {c['verdict']} "
            f"(exploratory; minimum detectable effect {100 * c['mde']:.2f} points). Set it beside key comparison 2.")
