"""Auto-checks for the exercises of chapter 11 (augmentation for KD: the data gap, kNN and Minimax-kNN)."""

from __future__ import annotations

import functools
import math

import torch

from kdedu.check import Wrong, answer_dict, answer_number, answer_seeds, answer_verdict, picked, register


def _kl64(t: torch.Tensor, s: torch.Tensor, temperature: float) -> float:
    """KL(p_t || p_s) of one pair of logit vectors at a temperature, written out in float64."""
    t, s = t.double() / temperature, s.double() / temperature
    log_pt, log_ps = t - torch.logsumexp(t, 0), s - torch.logsumexp(s, 0)
    return float((log_pt.exp() * (log_pt - log_ps)).sum())


def _logit_table(name: str, value) -> torch.Tensor:
    """``value`` as a float64 ``(K, C)`` tensor of finite logits, or :class:`Wrong` naming ``name``."""
    try:
        t = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise Wrong(f"{name} should be a (K, C) tensor of logits (one row per neighbour), got "
                    f"{type(value).__name__}.") from None
    if t.dim() != 2 or t.shape[0] < 2 or t.shape[1] < 2:
        raise Wrong(f"{name} should be a (K, C) tensor with K >= 2 neighbours and C >= 2 classes, got shape "
                    f"{tuple(t.shape)}.")
    if not torch.isfinite(t).all():
        raise Wrong(f"{name} holds values that are not finite logits.")
    return t


def _kept(d: list[float], k1: int, T: float) -> set[int]:
    """The ``k1`` most divergent positions of ``d``; :class:`Wrong` if a tie at the cut makes the choice arbitrary."""
    order = sorted(range(len(d)), key=lambda j: -d[j])
    if math.isclose(d[order[k1 - 1]], d[order[k1]], rel_tol=1e-6, abs_tol=1e-9):
        raise Wrong(f"at T = {T:g} the {k1}th and {k1 + 1}th largest divergences are equal ({d[order[k1]]:.3g}): "
                    "the choice is a tie, not a decision. Make them differ.")
    return set(order[:k1])


@register("11.temperature", hint="the selection scores KL(p_t || p_s) of the softened distributions. Try a neighbour "
                                 "on which both models pick the same class with different confidence, and one on "
                                 "which they mildly disagree; see how each divergence moves as T grows.")
def _check_11_temperature(answer):
    answer_dict(answer, ("teacher", "student", "k1", "temperatures"))
    t = _logit_table('answer["teacher"]', answer["teacher"])
    s = _logit_table('answer["student"]', answer["student"])
    if t.shape != s.shape:
        raise Wrong(f'answer["teacher"] has shape {tuple(t.shape)} and answer["student"] {tuple(s.shape)}: both '
                    "models score the same K neighbours over the same C classes.")
    K = t.shape[0]
    k1 = answer["k1"]
    if isinstance(k1, bool) or not isinstance(k1, int) or not 1 <= k1 < K:
        raise Wrong(f'answer["k1"] should be an integer in 1..K-1 = 1..{K - 1}: with k1 = K every neighbour is kept '
                    "at any temperature.")
    temps = answer["temperatures"]
    if isinstance(temps, (str, bytes)) or not hasattr(temps, "__len__") or len(temps) != 2:
        raise Wrong('answer["temperatures"] should be a pair (T1, T2).')
    T1, T2 = (answer_number('an entry of answer["temperatures"]', T) for T in temps)
    if not (T1 > 0 and T2 > 0 and math.isfinite(T1) and math.isfinite(T2)):
        raise Wrong("a temperature is a finite number > 0.")
    if T1 == T2:
        raise Wrong("the two temperatures are equal: choose two different ones.")
    kept = []
    for T in (T1, T2):
        d = [_kl64(t[j], s[j], T) for j in range(K)]
        kept.append(_kept(d, k1, T))
    if kept[0] == kept[1]:
        raise Wrong(f"at both T = {T1:g} and T = {T2:g} the step keeps positions {sorted(kept[0])}: the temperature "
                    "does not change the choice in your case.")
    return (f"at T = {T1:g} the step keeps positions {sorted(kept[0])}, at T = {T2:g} it keeps {sorted(kept[1])}: "
            "the temperature is part of the selection rule, not only of the loss.")


# ------------------------------------------------------------------------------------------------
# 11.gap: an experiment on the one-dimensional data gap. The reader distils with twice as many transfer points over
# the chapter's seeds; the checker distils one of the submitted seeds again, both ways, and recomputes the verdict.
# ------------------------------------------------------------------------------------------------
GAP_SETTING = {"n": 8, "more": 16, "min_seeds": 5}


@functools.lru_cache(maxsize=64)
def gap_mean_kl(n: int, seed: int) -> float:
    """The mean over the grid of ``KL(p_t || p_s)`` after :func:`kdedu.data.gap.distill_gap` with ``n`` points."""
    from kdedu.data.gap import distill_gap

    return float(distill_gap(n, seed)["kl"].mean())


def _values(name: str, values, n: int) -> list[float]:
    values = values.tolist() if hasattr(values, "tolist") else values
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__"):
        raise Wrong(f"{name} should be a list of per-seed mean divergences, got {type(values).__name__}.")
    out = [answer_number(f"an entry of {name}", v) for v in values]
    if len(out) != n:
        raise Wrong(f"{name} has {len(out)} values for {n} seeds: one per seed, in the order of answer[\"seeds\"].")
    if any(not (math.isfinite(v) and v >= 0) for v in out):
        raise Wrong(f"{name} holds values that are not divergences (a KL is a finite number >= 0).")
    return out


@register("11.gap", hint="call the chapter's distill_gap once per seed for each transfer-set size and average its "
                         "per-point divergence over the whole grid; keep every list in the order of the seeds.")
def _check_11_gap(answer):
    s = GAP_SETTING
    answer_dict(answer, ("seeds", "n8", "n16", "verdict"))
    seeds = answer_seeds(answer, s["min_seeds"])
    n = len(seeds)
    few = _values('answer["n8"]', answer["n8"], n)
    more = _values('answer["n16"]', answer["n16"], n)
    if few == more:
        raise Wrong("the two lists are the same, seed by seed: the 16-point runs are different runs.")
    c = answer_verdict(answer, few, more, "8 points first")
    i = picked([seeds, few, more], n)
    for key, points, values in (("n8", s["n"], few), ("n16", s["more"], more)):
        again = gap_mean_kl(points, seeds[i])
        if not math.isclose(again, values[i], rel_tol=1e-3, abs_tol=1e-6):
            raise Wrong(f'seed {seeds[i]}: your answer["{key}"] says {values[i]:.5f}, but distilling with {points} '
                        f"transfer points gives a mean divergence of {again:.5f} over the grid. Check the number of "
                        "points, the seed, and that you average over every grid point.")
    return (f"your seed {seeds[i]} reproduces, both ways. The mean divergence over the grid with 8 points minus that "
            f"with 16 is {c['mean']:+.4f} (± {c['se']:.4f} s.e.) over {n} seeds: {c['verdict']} (exploratory; "
            "'better' means the 16 points narrowed the gap).")
