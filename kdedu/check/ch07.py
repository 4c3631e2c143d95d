"""Auto-checks for the exercises of chapter 07 (registered with :func:`kdedu.check.register`)."""

from __future__ import annotations

import functools
import math

import torch

from kdedu.check import (
    Wrong,
    answer_accuracies,
    answer_dict,
    answer_seeds,
    answer_verdict,
    close,
    function,
    picked,
    register,
    retrain_tolerance,
)


def _ch07_chain_targets(p_t: float, p_s: float, m: int) -> list[float]:
    """log-sizes of m assistants evenly spaced between the teacher and the student, in chain order (teacher first)."""
    return [math.log(p_t) + (math.log(p_s) - math.log(p_t)) * i / (m + 1) for i in range(1, m + 1)]


def _ch07_pick(p_t: float, p_s: float, cands: list[int], m: int, log_scale: bool = True) -> list[int]:
    targets = _ch07_chain_targets(p_t, p_s, m)
    if log_scale:
        return [min(cands, key=lambda p: abs(math.log(p) - t)) for t in targets]
    linear = [p_t + (p_s - p_t) * i / (m + 1) for i in range(1, m + 1)]  # evenly spaced on a linear scale
    return [min(cands, key=lambda p: abs(p - t)) for t in linear]


@register("07.assistant-size", hint="on a log axis, m assistants cut the distance from log p_student to log p_teacher "
                                    "into m + 1 equal steps; compare sizes by their ratio, as the chapter does for "
                                    "one assistant.")
def _check_07_assistant_size(fn):
    function("pick_assistants(p_teacher, p_student, candidates, m)", fn)
    g = torch.Generator().manual_seed(7)
    ladder = [1210, 4810, 19210, 76810, 307210]  # MLP widths 16, 64, 256, 1024, 4096 on 64 inputs, 10 classes
    cases = [(307210, 1210, ladder[1:4], 1),           # the chapter's choice
             (307210, 1210, ladder[1:4], 2),           # two assistants: 4096 -> 1024 -> 256 -> 16 ... or not
             (1_000_000, 100, [5_500, 15_000], 1),     # the log scale and the linear scale disagree here
             (10**6, 10, [30, 100, 300, 1000, 3000, 10**4, 3 * 10**4, 10**5, 3 * 10**5], 4)]
    while len(cases) < 9:
        p_s = int(torch.randint(100, 10_000, (1,), generator=g))
        p_t = p_s * int(torch.randint(200, 20_000, (1,), generator=g))
        m = int(torch.randint(1, 4, (1,), generator=g))
        cands = sorted({int(p_s * (p_t / p_s) ** float(u)) for u in torch.rand(8, generator=g)})
        picks = _ch07_pick(p_t, p_s, cands, m)
        if len(set(picks)) == m:  # keep the cases whose assistants are all different
            cases.append((p_t, p_s, cands, m))
    for p_t, p_s, cands, m in cases:
        expected = _ch07_pick(p_t, p_s, cands, m)
        call = f"pick_assistants({p_t}, {p_s}, {cands}, m={m})"
        got = fn(p_t, p_s, list(cands), m)
        if isinstance(got, torch.Tensor):
            got = got.tolist()
        if isinstance(got, (int, float)):
            raise Wrong(f"{call} returned one number; return a list of the m chosen sizes, even for m = 1.")
        if not isinstance(got, (list, tuple)) or not all(isinstance(p, (int, float)) for p in got):
            raise Wrong(f"pick_assistants should return a list of candidates (numbers), got {type(got).__name__}.")
        got = list(got)
        if got == expected:
            continue
        if len(got) != m:
            raise Wrong(f"{call} returned {len(got)} sizes; a chain with m = {m} assistants needs {m}.")
        if not all(p in cands for p in got):
            raise Wrong(f"{call} = {got} holds sizes that are not candidates.")
        if got == expected[::-1]:
            raise Wrong(f"{call} = {got}: the right assistants in the wrong order. List them as the chain runs, from "
                        "the teacher's side down to the student's.")
        if got == _ch07_pick(p_t, p_s, cands, m, log_scale=False):
            raise Wrong(f"{call} = {got}: these are evenly spaced on a linear scale. Space them evenly on a log scale, "
                        "so that every step of the chain shrinks the network by the same factor.")
        raise Wrong(f"{call} = {got}, expected {expected}.")
    return ("every step of the chain shrinks the network by about the same factor; for m = 1 it is the chapter's "
            "geometric mean.")


def _ch07_predictions(seed: int, n: int = 300, c: int = 10):
    """Labels and two correlated predictions: the lower network copies many of the upper network's answers."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=g)

    def noisy(p):  # the labels, with a fraction p replaced by a random class
        return torch.where(torch.rand(n, generator=g) < p, torch.randint(0, c, (n,), generator=g), labels)

    upper = noisy(0.3)
    lower = torch.where(torch.rand(n, generator=g) < 0.5, upper, noisy(0.3))
    return upper, lower, labels


@register("07.inherited-share", hint="the denominator is the lower network's errors, not the upper one's; an error "
                                     "is inherited only if it is the same wrong class.")
def _check_07_inherited_share(fn):
    function("inherited_share(upper_pred, lower_pred, labels)", fn)
    for seed in range(4):
        upper, lower, labels = _ch07_predictions(seed)
        lower_wrong = copied = both_wrong = upper_wrong = 0  # an explicit loop over the examples
        for u, s, y in zip(upper.tolist(), lower.tolist(), labels.tolist(), strict=True):
            lower_wrong += s != y
            upper_wrong += u != y
            copied += s != y and s == u
            both_wrong += s != y and u != y
        expected = copied / max(lower_wrong, 1)
        got = fn(upper.clone(), lower.clone(), labels.clone())
        value = got.item() if isinstance(got, torch.Tensor) and got.numel() == 1 else got
        if isinstance(value, (int, float)) and not math.isclose(value, expected, rel_tol=1e-6, abs_tol=1e-9):
            if math.isclose(value, copied / max(upper_wrong, 1), rel_tol=1e-6):
                raise Wrong("you divided by the upper network's errors: that is the share of the upper network's "
                            "errors that reach the lower one (the chapter's error table). Divide by the lower "
                            "network's errors.")
            if math.isclose(value, both_wrong / max(lower_wrong, 1), rel_tol=1e-6):
                raise Wrong("you counted every error of the lower network where the upper one is also wrong; an "
                            "inherited error must be the *same* wrong class as the upper network's.")
            if math.isclose(value, 100 * expected, rel_tol=1e-6):
                raise Wrong(f"{value} looks like a percentage; return a fraction between 0 and 1.")
        close(f"your inherited_share (example {seed + 1})", got, expected, rel=1e-6, abs_=1e-9)
    labels = torch.arange(10)
    got = fn(labels.flip(0), labels.clone(), labels.clone())  # the lower network makes no error
    close("your inherited_share when the lower network makes no error", got, 0.0, rel=0, abs_=1e-9)
    return "the share of the lower network's errors that copy the upper network's errors."


@register("07.chain-epochs", hint="draw the deck's chain ResNet-110 -> ResNet-20 -> ResNet-8 and count its "
                                  "training runs, the teacher's included.")
def _check_07_chain_epochs(fn):
    function("chain_epochs(num_assistants, epochs)", fn)
    for m, e in ((1, 200), (0, 30), (2, 150), (3, 7)):
        networks = ["teacher"] + [f"assistant {i + 1}" for i in range(m)] + ["student"]
        expected = sum(e for _ in networks)
        got = fn(m, e)
        value = got.item() if isinstance(got, torch.Tensor) and got.numel() == 1 else got
        if isinstance(value, (int, float)) and not math.isclose(value, expected):
            if math.isclose(value, expected - e):
                raise Wrong(f"chain_epochs({m}, {e}) = {value}: one network is missing (the teacher trains too).")
            if math.isclose(value, expected - 2 * e):
                raise Wrong(f"chain_epochs({m}, {e}) = {value}: the teacher and the student train too.")
        close(f"chain_epochs({m}, {e})", got, expected, rel=1e-9, abs_=1e-9)
    return "(num_assistants + 2) * epochs: the teacher, every assistant and the student each train once."


# ------------------------------------------------------------------------------------------------
# 07.early-stopping: an experiment. The reader distils an early-stopped width-4096 teacher into the chapter's
# student over the live seeds; the checker trains two of the submitted seeds again, from both teachers, in the
# chapter's setting, and recomputes the comparison.
# ------------------------------------------------------------------------------------------------
EARLY_SETTING = {"width": 4096, "early_epochs": 3, "student_width": 16, "num_train": 200, "num_epochs": 150,
                 "lr": 1e-2, "alpha": 0.5, "T": 4.0, "min_seeds": 5}
"""The chapter's setting: its ``train_student`` with a ``digits-mlp`` teacher of width 4096."""


@functools.lru_cache(maxsize=64)  # a resubmitted answer is checked again in no time
def early_stopping_accuracy(teacher_epochs: int | None, seed: int) -> float:
    """Test accuracy of the chapter's student (width 16, 200 digits, full batch, 150 epochs) distilled with
    ``KD(alpha=0.5, T=4)`` from the zoo's width-4096 ``digits-mlp`` teacher, trained for ``teacher_epochs`` epochs
    (``None``: the recipe's 40)."""
    from kdedu import data, zoo
    from kdedu.methods import KD
    from kdedu.models import MLP
    from kdedu.train import evaluate, fit

    s = EARLY_SETTING
    overrides = {} if teacher_epochs is None else {"num_epochs": teacher_epochs}
    teacher = zoo.teacher("digits-mlp", hidden=[s["width"]], verbose=False, **overrides)
    transfer = data.digits("train", limit=s["num_train"])
    torch.manual_seed(seed)
    student = MLP(hidden=(s["student_width"],))
    fit(KD(student, teacher, alpha=s["alpha"], temperature=s["T"]), [(transfer.x, transfer.y)],
        num_epochs=s["num_epochs"], lr=s["lr"], seed=seed, progress=False)
    return float(evaluate(student, data.make_loader(data.digits("test"), batch_size=512))["acc"])


@register("07.early-stopping",
          hint="the early-stopped teacher is one more zoo teacher (the recipe's num_epochs overridden); distil it "
               "with the chapter's own kd_run and experiment.run over the live seeds, and keep every list in the "
               "order of the seeds.")
def _check_07_early_stopping(answer):
    s = EARLY_SETTING
    answer_dict(answer, ("seeds", "early", "full", "verdict"))
    seeds = answer_seeds(answer, s["min_seeds"])
    n = len(seeds)
    early = answer_accuracies('answer["early"]', answer["early"], n)
    full = answer_accuracies('answer["full"]', answer["full"], n)
    c = answer_verdict(answer, early, full, "the early-stopped teacher's students first")
    # two seeds, fixed by the answer itself: the same answer is always checked on the same seeds
    i = picked([seeds, early, full], n)
    j = (i + 1 + picked([full, early], n - 1)) % n
    for k in (i, j):
        for name, lst, epochs, what in (("full", full, None, "the fully trained width-4096 teacher (40 epochs)"),
                                        ("early", early, s["early_epochs"],
                                         f"the width-4096 teacher stopped after {s['early_epochs']} epochs")):
            again = early_stopping_accuracy(epochs, seeds[k])
            if abs(again - lst[k]) > retrain_tolerance():
                raise Wrong(f'seed {seeds[k]}: your answer["{name}"] says {100 * lst[k]:.2f} %, but distilling '
                            f"{what} into the chapter's student (200 digits, 150 epochs, alpha = 0.5, T = 4) gives "
                            f"{100 * again:.2f} %. Check the teacher, the setting and the order of the values.")
    return (f"your seeds {seeds[i]} and {seeds[j]} reproduce, from both teachers. Early-stopped − fully trained "
            f"teacher = {100 * c['mean']:+.2f} ± {100 * c['se']:.2f} points over {n} seeds: {c['verdict']} "
            f"(exploratory, one test on its own; minimum detectable effect {100 * c['mde']:.2f} points).")
