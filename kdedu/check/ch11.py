"""Auto-checks for the exercises of chapter 11 (augmentation for KD: the data gap, kNN and Minimax-kNN)."""

from __future__ import annotations

import functools
import itertools
import math

import torch

from kdedu.check import Wrong, answer_dict, answer_number, answer_seeds, answer_verdict, function, picked, register


def _kl64(t: torch.Tensor, s: torch.Tensor, temperature: float) -> float:
    """KL(p_t || p_s) of one pair of logit vectors at a temperature, written out in float64."""
    t, s = t.double() / temperature, s.double() / temperature
    log_pt, log_ps = t - torch.logsumexp(t, 0), s - torch.logsumexp(s, 0)
    return float((log_pt.exp() * (log_pt - log_ps)).sum())


def _positions(name: str, got, b: int, k1: int, K: int) -> list[list[int]]:
    if isinstance(got, torch.Tensor):
        got = got.tolist()
    try:
        rows = [[int(j) for j in row] for row in got]
    except (TypeError, ValueError):
        raise Wrong(f"{name} should return a (b, k1) tensor of neighbour positions, got {type(got).__name__}.") \
            from None
    if len(rows) != b or any(len(r) != k1 for r in rows):
        raise Wrong(f"{name} should return one row of k1 = {k1} positions for each of the b = {b} originals.")
    if any(not 0 <= j < K for r in rows for j in r):
        raise Wrong(f"{name} returned positions outside 0..K-1 (K = {K}): give each neighbour's position in its "
                    "row, not a value.")
    if any(len(set(r)) != k1 for r in rows):
        raise Wrong(f"{name} picked a neighbour twice in a row: keep k1 different neighbours.")
    return rows


@register("11.select", hint="score every neighbour with the divergence the chapter's maximisation step uses (mind "
                            "its direction and the temperature), then keep the k1 largest scores of each row.")
def _check_11_select(fn):
    function("my_select(teacher_logits, student_logits, k1, temperature)", fn)
    g = torch.Generator().manual_seed(11)
    cases = [(2 * torch.randn(b, K, C, generator=g), 2 * torch.randn(b, K, C, generator=g), k1, T)
             for b, K, C, k1, T in ((5, 8, 2, 4, 2.0), (4, 6, 3, 2, 1.0), (3, 5, 4, 1, 0.5), (2, 4, 2, 4, 3.0))]
    # two confident, agreeing neighbours against one mild disagreement: which diverges more depends on T
    cases.append((torch.tensor([[[10.0, 0.0], [1.0, 0.0], [9.0, 0.0]]]),
                  torch.tensor([[[6.0, 0.0], [0.0, 0.0], [5.0, 0.0]]]), 2, 10.0))
    for t, s, k1, T in cases:
        b, K, C = t.shape
        rows = _positions(f"my_select on b, K, C = {b}, {K}, {C}", fn(t.clone(), s.clone(), k1, T), b, k1, K)
        for r in range(b):
            d = [_kl64(t[r, j], s[r, j], T) for j in range(K)]
            best = set(max(itertools.combinations(range(K), k1), key=lambda c: sum(d[j] for j in c)))
            if set(rows[r]) == best:
                continue
            reverse = [_kl64(s[r, j], t[r, j], T) for j in range(K)]
            if set(rows[r]) == set(sorted(range(K), key=lambda j: -reverse[j])[:k1]):
                raise Wrong("your selection ranks the neighbours by KL(p_s || p_t); Minimax-kNN ranks them by the KD "
                            "loss's direction, KL(p_t || p_s).")
            if set(rows[r]) == set(sorted(range(K), key=lambda j: d[j])[:k1]):
                raise Wrong("you kept the k1 neighbours on which teacher and student agree most; the maximisation "
                            "step keeps those on which they disagree most.")
            plain = [_kl64(t[r, j], s[r, j], 1.0) for j in range(K)]
            if T != 1 and set(rows[r]) == set(sorted(range(K), key=lambda j: -plain[j])[:k1]):
                raise Wrong(f"your selection ignores the temperature (T = {T}): compare the softened distributions.")
            raise Wrong(f"row {r} of the case b, K, C, k1, T = {b}, {K}, {C}, {k1}, {T}: you kept positions "
                        f"{sorted(rows[r])}, the {k1} most divergent are {sorted(best)}.")
    return "the k1 neighbours with the largest KL(p_t || p_s) at temperature T: Minimax-kNN's maximisation step."


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
    c = answer_verdict(answer, more, few, "16 points first")
    i = picked([seeds, few, more], n)
    for key, points, values in (("n8", s["n"], few), ("n16", s["more"], more)):
        again = gap_mean_kl(points, seeds[i])
        if not math.isclose(again, values[i], rel_tol=1e-3, abs_tol=1e-6):
            raise Wrong(f'seed {seeds[i]}: your answer["{key}"] says {values[i]:.5f}, but distilling with {points} '
                        f"transfer points gives a mean divergence of {again:.5f} over the grid. Check the number of "
                        "points, the seed, and that you average over every grid point.")
    return (f"your seed {seeds[i]} reproduces, both ways. With 16 points the mean divergence over the grid changes by "
            f"{c['mean']:+.4f} (± {c['se']:.4f} s.e.) over {n} seeds: {c['verdict']} (exploratory).")
