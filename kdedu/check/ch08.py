"""Auto-checks for the exercises of chapter 08 (registered with :func:`kdedu.check.register`)."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import numbers
from collections.abc import Mapping

import torch

from kdedu.check import Wrong, close, function, register, same_tensor


def _ch08_number(name: str, value) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Wrong(f"{name} should be a number, got {type(value).__name__}.")
    return float(value)


@register("08.phi", hint="Phi is a straight line in T through the two points that the exercise gives; with "
                          "T_start = tau_max it must give the deck's Phi.")
def _check_08_phi(fn):
    function("my_phi(T, tau_max, T_start)", fn)
    for tau_max in (2, 4, 7, 10, 14):
        for T_start in (float(tau_max), 2.0, 4.0, 50.0):
            phi_start = 1 / T_start  # the factor that gives the teacher at softmax temperature T_start
            for T in range(1, tau_max + 1):
                expected = 1 + (phi_start - 1) * (T - 1) / (tau_max - 1)  # through (1, 1) and (tau_max, 1/T_start)
                got = _ch08_number(f"your my_phi({T}, {tau_max}, {T_start:g})", fn(T, tau_max, T_start))
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
    got = _ch08_number("your number of epochs", answer)
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
# 08.ablation: an experiment. The reader trains the ablation over the chapter's live seeds; the checker trains
# one of the submitted seeds again, both ways, at the chapter's live setting, and recomputes the verdict.
# ------------------------------------------------------------------------------------------------
ABLATION_SETTING = {"n_train": 300, "batch_size": 32, "num_epochs": 20, "n_test": 360, "min_seeds": 5,
                    "annealing": {"tau_max": 10, "k": 1}, "no_annealing": {"tau_max": 1, "k": 10}}
"""The chapter's live setting (its ``train_student`` in the ``fast`` and ``full`` profiles)."""


@functools.lru_cache(maxsize=64)  # a resubmitted answer is checked again in no time
def ablation_accuracy(tau_max: int, k: int, lr: float, seed: int) -> float:
    """Test accuracy of the chapter's student trained with ``AnnealingKD(tau_max, k)`` in the live setting.

    The same steps as the chapter's ``train_student``: the zoo's ``digits-cnn`` teacher, the first 300 training
    digits in batches of 32, ``torch.manual_seed(seed)`` before building ``SmallCNN(channels=(4, 8))``, then
    ``fit(..., num_epochs=20, lr=lr, seed=seed)``, scored on the 360 test digits.
    """
    from kdedu import data, zoo
    from kdedu.methods import AnnealingKD
    from kdedu.models import SmallCNN
    from kdedu.train import evaluate, fit

    s = ABLATION_SETTING
    teacher = zoo.teacher("digits-cnn", verbose=False)
    loader = data.make_loader(data.digits("train", limit=s["n_train"]), batch_size=s["batch_size"], shuffle=True)
    torch.manual_seed(seed)
    student = SmallCNN(channels=(4, 8))
    fit(AnnealingKD(student, teacher, tau_max=tau_max, k=k), loader, num_epochs=s["num_epochs"], lr=lr, seed=seed,
        progress=False)
    return float(evaluate(student, data.make_loader(data.digits("test"), batch_size=512))["acc"])


def _ch08_numbers(name: str, values, n: int) -> list[float]:
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    elif hasattr(values, "tolist"):  # a numpy array
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise Wrong(f'answer["{name}"] should be a list of per-seed accuracies, got {type(values).__name__}.')
    out = [_ch08_number(f'an entry of answer["{name}"]', v) for v in values]
    if len(out) != n:
        raise Wrong(f'answer["{name}"] has {len(out)} values for {n} seeds: give one accuracy per seed, in the '
                    'order of answer["seeds"].')
    return out


@register("08.ablation", hint="the ablation is one more experiment.run over the chapter's live seeds, built like "
                              "the chapter's own Annealing KD run with only the AnnealingKD arguments changed; keep "
                              "every list in the order of the seeds.")
def _check_08_ablation(answer):
    from kdedu.stats import compare
    from kdedu.train import default_device

    s = ABLATION_SETTING
    if not isinstance(answer, Mapping):
        raise Wrong(f"the answer should be a dict with the keys seeds, lr, annealing, no_annealing and verdict, "
                    f"got {type(answer).__name__}.")
    missing = [key for key in ("seeds", "lr", "annealing", "no_annealing", "verdict") if key not in answer]
    if missing:
        raise Wrong(f"the answer lacks the key(s) {', '.join(missing)}.")
    seeds = answer["seeds"]
    seeds = list(seeds.tolist() if hasattr(seeds, "tolist") else seeds) if hasattr(seeds, "__iter__") else None
    if not seeds or not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in seeds):
        raise Wrong('answer["seeds"] should be a list of integer seeds.')
    seeds = [int(x) for x in seeds]
    if len(set(seeds)) != len(seeds) or len(seeds) < s["min_seeds"]:
        raise Wrong(f'answer["seeds"] = {seeds}: give the chapter\'s live seeds, at least {s["min_seeds"]} distinct '
                    "ones.")
    lr = _ch08_number('answer["lr"]', answer["lr"])
    if not 0 < lr < 1:
        raise Wrong(f'answer["lr"] = {lr:g} is not a learning rate that the chapter uses.')
    n = len(seeds)
    annealing = _ch08_numbers("annealing", answer["annealing"], n)
    no_annealing = _ch08_numbers("no_annealing", answer["no_annealing"], n)
    for name, values in (("annealing", annealing), ("no_annealing", no_annealing)):
        if any(v > 1 for v in values) and all(0 <= v <= 100 for v in values):
            raise Wrong(f'answer["{name}"] looks like percentages; give accuracies as fractions, as '
                        "experiment.run returns them.")
        counts = [v * s["n_test"] for v in values]
        if any(not 0 <= v <= 1 for v in values) or any(abs(c - round(c)) > 1e-4 for c in counts):
            raise Wrong(f'answer["{name}"] holds values that are not accuracies on the {s["n_test"]} test digits '
                        "(a whole number of digits right, divided by 360).")
    if annealing == no_annealing:
        raise Wrong("the two lists are the same, seed by seed: the ablation is a different training run "
                    "(tau_max=1, k=10) from the chapter's Annealing KD.")
    verdicts = ("better", "worse", "no clear difference")
    if answer["verdict"] not in verdicts:
        raise Wrong(f'answer["verdict"] should be one of {verdicts}, got {answer["verdict"]!r}.')
    if answer["verdict"] != compare(annealing, no_annealing)["verdict"]:
        raise Wrong(f'answer["verdict"] = {answer["verdict"]!r} is not what experiment.compare says of your two '
                    "lists, Annealing KD first.")
    # one seed, picked from the submission itself: the same answer is always checked on the same seed
    blob = json.dumps([seeds, annealing, no_annealing, lr]).encode()
    i = int(hashlib.sha256(blob).hexdigest(), 16) % n
    device = default_device()
    allowed = (1 if device.type == "cpu" else 3) / s["n_test"] + 1e-9  # a digit of float noise; GPUs: a few
    for name, lst in (("no_annealing", no_annealing), ("annealing", annealing)):
        again = ablation_accuracy(**s[name], lr=lr, seed=seeds[i])
        if abs(again - lst[i]) > allowed:
            what = "the ablation (tau_max=1, k=10)" if name == "no_annealing" else \
                "the chapter's Annealing KD (tau_max=10, k=1)"
            raise Wrong(f'seed {seeds[i]}: your answer["{name}"] says {100 * lst[i]:.2f} %, but training {what} '
                        f"in the live setting (300 digits, 20 epochs, lr = {lr:g}) gives {100 * again:.2f} %. "
                        "Check the method's arguments, the learning rate, the setting and the order of the values.")
    c = compare(annealing, no_annealing)
    return (f"your seed {seeds[i]} reproduces, both ways. Annealing KD − ablation = {100 * c['mean']:+.2f} ± "
            f"{100 * c['se']:.2f} points over {n} seeds: {c['verdict']} (exploratory; minimum detectable effect "
            f"{100 * c['mde']:.2f} points).")
