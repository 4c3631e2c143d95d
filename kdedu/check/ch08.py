"""Auto-checks for the exercises of chapter 08 (registered with :func:`kdedu.check.register`)."""

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


@register("08.phi", hint="Phi is a straight line in T through the two points that the exercise gives; with "
                          "T_start = tau_max it must give the deck's Phi.")
def _check_08_phi(fn):
    function("my_phi(T, tau_max, T_start)", fn)
    for tau_max in (2, 4, 7, 10, 14):
        for T_start in (float(tau_max), 2.0, 4.0, 50.0):
            phi_start = 1 / T_start  # the factor that gives the teacher at softmax temperature T_start
            for T in range(1, tau_max + 1):
                expected = 1 + (phi_start - 1) * (T - 1) / (tau_max - 1)  # through (1, 1) and (tau_max, 1/T_start)
                got = answer_number(f"your my_phi({T}, {tau_max}, {T_start:g})", fn(T, tau_max, T_start))
                if math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-9):  # float32 is fine
                    continue
                if T_start != tau_max and math.isclose(got, 1 - (T - 1) / tau_max, abs_tol=1e-6):
                    raise Wrong(f"my_phi({T}, {tau_max}, {T_start:g}) = {got:.4g} is the deck's Phi, which starts at "
                                f"1 / tau_max whatever T_start; at T = tau_max the target must be the teacher at "
                                f"softmax temperature T_start.")
                T_eff = 1 + (T_start - 1) * (T - 1) / (tau_max - 1)  # linear in T from 1 to T_start
                if T > 1 and math.isclose(got, 1 / T_eff, abs_tol=1e-6):
                    raise Wrong(f"my_phi({T}, {tau_max}, {T_start:g}) = {got:.4g}: your softmax temperature 1 / Phi "
                                "is linear in T; the exercise keeps Phi itself linear in T, as the deck does.")
                close(f"your my_phi({T}, {tau_max}, {T_start:g})", got, expected, rel=1e-6, abs_=1e-9)
    return ("Phi rises linearly from 1 / T_start at T = tau_max to 1 at T = 1; the deck's choice T_start = tau_max "
            "ties the starting softness to the number of steps.")


@register("08.schedule", hint="Phi multiplies the logits and a softmax temperature divides them; here it is the "
                              "softmax temperature, not Phi, that must fall by equal steps.")
def _check_08_schedule(fn):
    function("phis_linear_in_T(tau_max, k)", fn)
    for tau_max, k in ((10, 1), (4, 3), (7, 2), (1, 5)):
        temps = [tau_max - epoch // k for epoch in range(k * tau_max)]  # each softmax temperature for k epochs
        expected = [1 / T for T in temps]
        got = fn(tau_max, k)
        try:
            got = [float(v) for v in (got.tolist() if isinstance(got, torch.Tensor) else got)]
        except (TypeError, ValueError):
            raise Wrong(f"phis_linear_in_T({tau_max}, {k}) should return a list of numbers, "
                        f"got {type(got).__name__}.") from None
        call = f"phis_linear_in_T({tau_max}, {k})"

        def same(values, targets):
            return len(values) == len(targets) and \
                all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(values, targets, strict=True))

        if same(got, expected):
            continue
        if len(got) != len(expected):
            raise Wrong(f"{call} has {len(got)} epochs; stage I lasts k * tau_max = {len(expected)}.")
        if same(got, [float(T) for T in temps]):
            raise Wrong(f"{call} returns the temperatures; return the factor Phi that multiplies the teacher's "
                        "logits at each epoch.")
        if same(got, [1 - (T - 1) / tau_max for T in temps]):
            raise Wrong(f"{call} is the deck's schedule, linear in Phi: its softmax temperature falls fast, then "
                        "slowly. Here the softmax temperature must fall by the same step every k epochs.")
        if same(got, expected[::-1]):
            raise Wrong(f"{call} runs backwards: stage I starts with the softest target and ends with the teacher "
                        "itself (Phi = 1).")
        if same(sorted(got), sorted(expected)):
            raise Wrong(f"{call}: the right values in the wrong order; each temperature is held for k consecutive "
                        "epochs.")
        raise Wrong(f"{call} = {[round(v, 4) for v in got]} does not step the softmax temperature down by 1 every "
                    "k epochs.")
    return ("Phi = 1 / T for T = tau_max, ..., 1: the same first and last target as the deck's schedule, but Phi "
            "stays small for longer, so the student spends more of stage I on soft targets.")


@register("08.gradient", hint="differentiate one term of the mean by its own student logit, then remember how "
                              "many terms the mean divides by.")
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


@register("08.effective-T", hint="a target is softer when its softmax temperature 1 / Phi is larger: list Phi for "
                                 "every step of tau_max = 7, then count epochs, not steps.")
def _check_08_effective_T(answer):
    tau_max, k, target = 7, 2, 2.0
    temps = [T for T in range(tau_max, 0, -1) for _ in range(k)]  # the schedule, epoch by epoch
    expected = sum(1 / (1 - (T - 1) / tau_max) >= target for T in temps)  # softmax temperature 1 / Phi >= 2
    steps = expected // k
    got = answer_number("your number of epochs", answer)
    if math.isclose(got, steps):
        raise Wrong(f"{got:g} counts the steps of the schedule; each step lasts k = {k} epochs.")
    if math.isclose(got, 5.0):
        raise Wrong("5 is the number of steps for the chapter's tau_max = 10; here tau_max = 7.")
    if math.isclose(got, expected + k):
        raise Wrong("one step too many: at T = 4, Phi = 4/7, a softmax temperature of 7/4, below 2.")
    close("your number of epochs", got, expected, rel=0, abs_=1e-9)
    return (f"{expected} epochs (T = 7, 6, 5, each for {k} epochs) have a target at least as soft as softmax "
            f"temperature 2: fewer than half of the {k * tau_max} epochs of stage I.")


# ------------------------------------------------------------------------------------------------
# 08.ladder: an experiment. The reader trains Annealing KD with a shorter ladder over the chapter's live seeds; the
# checker trains one of the submitted seeds again, both ways, at the chapter's live setting, and recomputes the
# verdict.
# ------------------------------------------------------------------------------------------------
LADDER_SETTING = {"n_train": 300, "batch_size": 32, "num_epochs": 20, "min_seeds": 5,
                  "annealing": {"tau_max": 10, "k": 1}, "five_steps": {"tau_max": 5, "k": 2}}
"""The chapter's live setting (its ``train_student`` in the ``fast`` and ``full`` profiles)."""


@functools.lru_cache(maxsize=64)  # a resubmitted answer is checked again in no time
def annealing_accuracy(tau_max: int, k: int, lr: float, seed: int) -> float:
    """Test accuracy of the chapter's student trained with ``AnnealingKD(tau_max, k)`` in the live setting.

    The same steps as the chapter's ``train_student``: the zoo's ``digits-cnn`` teacher, the first 300 training
    digits in batches of 32, ``torch.manual_seed(seed)`` before building ``SmallCNN(channels=(4, 8))``, then
    ``fit(..., num_epochs=20, lr=lr, seed=seed)``, scored on the 360 test digits.
    """
    from kdedu import data, zoo
    from kdedu.methods import AnnealingKD
    from kdedu.models import SmallCNN
    from kdedu.train import evaluate, fit

    s = LADDER_SETTING
    teacher = zoo.teacher("digits-cnn", verbose=False)
    loader = data.make_loader(data.digits("train", limit=s["n_train"]), batch_size=s["batch_size"], shuffle=True)
    torch.manual_seed(seed)
    student = SmallCNN(channels=(4, 8))
    fit(AnnealingKD(student, teacher, tau_max=tau_max, k=k), loader, num_epochs=s["num_epochs"], lr=lr, seed=seed,
        progress=False)
    return float(evaluate(student, data.make_loader(data.digits("test"), batch_size=512))["acc"])


@register("08.ladder", hint="the shorter ladder is one more experiment.run over the chapter's live seeds, built like "
                             "the chapter's own Annealing KD run with only the AnnealingKD arguments changed, so that "
                             "stage I keeps its length; keep every list in the order of the seeds.")
def _check_08_ladder(answer):
    s = LADDER_SETTING
    answer_dict(answer, ("seeds", "lr", "annealing", "five_steps", "verdict"))
    seeds = answer_seeds(answer, s["min_seeds"])
    lr = answer_number('answer["lr"]', answer["lr"])
    if not 0 < lr < 1:
        raise Wrong(f'answer["lr"] = {lr:g} is not a learning rate that the chapter uses.')
    n = len(seeds)
    annealing = answer_accuracies('answer["annealing"]', answer["annealing"], n)
    five_steps = answer_accuracies('answer["five_steps"]', answer["five_steps"], n)
    if annealing == five_steps:
        raise Wrong("the two lists are the same, seed by seed: five steps (tau_max=5, k=2) is a different training "
                    "run from the chapter's Annealing KD (tau_max=10, k=1).")
    c = answer_verdict(answer, annealing, five_steps, "Annealing KD first")
    i = picked([seeds, annealing, five_steps, lr], n)  # one seed, fixed by the answer itself
    for name, lst in (("five_steps", five_steps), ("annealing", annealing)):
        again = annealing_accuracy(**s[name], lr=lr, seed=seeds[i])
        if abs(again - lst[i]) > retrain_tolerance():
            what = "five steps (tau_max=5, k=2)" if name == "five_steps" else \
                "the chapter's Annealing KD (tau_max=10, k=1)"
            raise Wrong(f'seed {seeds[i]}: your answer["{name}"] says {100 * lst[i]:.2f} %, but training {what} '
                        f"in the live setting (300 digits, 20 epochs, lr = {lr:g}) gives {100 * again:.2f} %. "
                        "Check the method's arguments, the learning rate, the setting and the order of the values.")
    return (f"your seed {seeds[i]} reproduces, both ways. Annealing KD (ten steps) − five steps = "
            f"{100 * c['mean']:+.2f} ± {100 * c['se']:.2f} points over {n} seeds: {c['verdict']} (exploratory; "
            f"minimum detectable effect {100 * c['mde']:.2f} points).")
