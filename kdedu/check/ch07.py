"""Auto-checks for the exercises of chapter 07 (registered with :func:`kdedu.check.register`)."""

from __future__ import annotations

import math

import torch

from kdedu.check import Wrong, close, function, register


@register("07.assistant-size", hint="the middle on a log scale is the geometric mean sqrt(p_teacher * p_student); "
                                    "pick the candidate with the smallest |log(p / middle)|")
def _check_07_assistant_size(fn):
    function("pick_assistant(p_teacher, p_student, candidates)", fn)
    g = torch.Generator().manual_seed(7)
    cases = [(307210, 1210, [4810, 19210, 76810]),  # the chapter's MLP ladder
             (1_000_000, 100, [5_500, 15_000]),      # the log scale and the linear scale disagree here
             (1_700_000, 78_000, [270_000, 850_000, 120_000])]
    for _ in range(5):
        p_s = int(torch.randint(100, 10_000, (1,), generator=g))
        p_t = p_s * int(torch.randint(20, 2_000, (1,), generator=g))
        cands = sorted({int(p_s * (p_t / p_s) ** float(u)) for u in torch.rand(4, generator=g)})
        cases.append((p_t, p_s, cands))
    for p_t, p_s, cands in cases:
        log_mid = (math.log(p_t) + math.log(p_s)) / 2
        expected = min(cands, key=lambda p: abs(math.log(p) - log_mid))
        got = fn(p_t, p_s, list(cands))
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if not isinstance(got, (int, float)):
            raise Wrong(f"pick_assistant should return one of the candidates (a number), got {type(got).__name__}.")
        if math.isclose(got, expected, rel_tol=1e-9):
            continue
        by_linear = min(cands, key=lambda p: abs(p - math.exp(log_mid)))
        by_arithmetic = min(cands, key=lambda p: abs(math.log(p) - math.log((p_t + p_s) / 2)))
        if math.isclose(got, by_linear, rel_tol=1e-9):
            raise Wrong(f"for p_teacher={p_t}, p_student={p_s}, candidates={cands} you picked {got}: closest to the "
                        "geometric mean on a linear scale. Measure the distance on a log scale (by the ratio).")
        if math.isclose(got, by_arithmetic, rel_tol=1e-9):
            raise Wrong(f"for p_teacher={p_t}, p_student={p_s}, candidates={cands} you picked {got}, near the "
                        "arithmetic mean (p_teacher + p_student) / 2; use the geometric mean.")
        if not any(math.isclose(got, c, rel_tol=1e-9) for c in cands):
            raise Wrong(f"for candidates={cands} you returned {got}, which is not one of the candidates.")
        raise Wrong(f"for p_teacher={p_t}, p_student={p_s}, candidates={cands} you picked {got}, expected {expected}.")
    return "picks the candidate closest to sqrt(p_teacher * p_student) on a log scale."


def _ch07_predictions(seed: int, n: int = 300, c: int = 10):
    """Labels and two correlated predictions: the lower network copies many of the upper network's answers."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=g)

    def noisy(p):  # the labels, with a fraction p replaced by a random class
        return torch.where(torch.rand(n, generator=g) < p, torch.randint(0, c, (n,), generator=g), labels)

    upper = noisy(0.3)
    lower = torch.where(torch.rand(n, generator=g) < 0.5, upper, noisy(0.3))
    return upper, lower, labels


@register("07.inherited-share", hint="divide the number of the lower network's errors that equal the upper "
                                     "network's prediction by the number of the lower network's errors")
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


@register("07.chain-epochs", hint="count the networks of the chain: the teacher, the assistants and the student "
                                  "each train once for `epochs` epochs")
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
