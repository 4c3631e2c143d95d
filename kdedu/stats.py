"""The book's statistics: paired t-tests over seeds, Holm's correction, the minimum detectable effect.

The policy (DESIGN.md, "Statistics policy"; the book page "How this book measures"): runs are paired by
seed; a chapter tests at most three pre-registered claims as one family, with Holm's correction across it;
every "no clear difference" states the minimum detectable effect at 80 % power; the sentences that state an
outcome are generated from the verdicts (:func:`verdict_sentence`). :mod:`kdedu.experiment` re-exports all of
it. scipy is imported only inside the functions that need it.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

__all__ = ["compare", "compare_family", "holm", "min_detectable_effect", "verdict_sentence"]


def _is_run(x) -> bool:
    """A :class:`kdedu.experiment.RunResult` (or anything with per-seed ``seeds`` and ``values``)."""
    return hasattr(x, "seeds") and hasattr(x, "values")


def _check_level(level: float, power: float = 0.8) -> None:
    for name, x in (("level", level), ("power", power)):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x < 1:
            raise ValueError(f"{name} must be a number strictly between 0 and 1, got {x!r}")
    if power <= 1 - level:
        raise ValueError(f"power must exceed 1 - level = {1 - level:g} (the rejection rate with no effect), "
                         f"got {power}")


@functools.lru_cache(maxsize=512)
def _mde_in_stds(n: int, level: float, power: float) -> float:
    """The minimum detectable effect in units of the differences' std (Cohen's d_z), for n >= 2."""
    from scipy import optimize, stats

    df, root_n = n - 1, math.sqrt(n)
    crit = float(stats.t.ppf((1 + level) / 2, df))

    def power_at(effect: float) -> float:  # P(|T'| > crit), T' ~ noncentral t(df, effect * sqrt(n))
        with warnings.catch_warnings():  # scipy's series may not converge deep in a tail, where it is ~0 anyway
            warnings.simplefilter("ignore", RuntimeWarning)
            upper = float(stats.nct.sf(crit, df, effect * root_n))
            lower = float(stats.nct.sf(crit, df, -effect * root_n))  # = P(T' < -crit), by symmetry
        if math.isnan(upper):
            raise ArithmeticError(f"the power of the t-test could not be computed for n = {n}, level = {level}")
        return upper + (0.0 if math.isnan(lower) else lower)

    hi = 1.0
    while power_at(hi) < power:  # power_at(0) = 1 - level < power; the power grows with the effect
        hi *= 2
    return float(optimize.brentq(lambda e: power_at(e) - power, 0.0, hi, xtol=1e-12, rtol=1e-10))


def min_detectable_effect(n: int, std: float, level: float = 0.95, power: float = 0.8) -> float:
    """The smallest true mean difference that a two-sided paired t-test detects with probability ``power``.

    For ``n`` paired seeds whose differences have standard deviation ``std``, the test at ``level`` rejects
    "no difference" when ``|T| > t_crit``, with ``T = mean / (std / sqrt(n))`` and ``t_crit`` the Student's t
    quantile ``(1 + level) / 2`` with ``n - 1`` degrees of freedom. If the differences are normal with true mean
    ``delta``, ``T`` follows the noncentral t distribution with ``n - 1`` degrees of freedom and noncentrality
    ``delta * sqrt(n) / std``; the MDE is the ``delta`` at which ``P(|T| > t_crit) = power`` (found by
    ``scipy.optimize.brentq``). It is in the units of ``std`` and proportional to it: ``std`` is the observed
    spread, taken as the true one. ``inf`` for ``n < 2`` (no test), ``0`` for ``std == 0``. For many seeds it
    approaches the normal formula ``(z_{(1 + level)/2} + z_power) * std / sqrt(n)``; for 5 seeds at 95 % and
    80 % power it is 1.68 std, for 10 seeds 1.00 std.
    """
    _check_level(level, power)
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if not (isinstance(std, numbers.Real) and std >= 0):
        raise ValueError(f"std must be a number >= 0, got {std!r}")
    if n < 2:
        return math.inf
    return 0.0 if std == 0 else float(std) * _mde_in_stds(int(n), float(level), float(power))


def compare(a, b, level: float = 0.95,
            power: float = 0.8) -> dict:
    """Paired comparison of ``a - b`` seed by seed: a two-sided paired t-test.

    ``a`` and ``b`` are :class:`RunResult` objects run on the same seeds, or two equally long sequences
    of per-seed numbers, paired by position (seed i of ``a`` with seed i of ``b``). With ``d`` the n
    per-seed differences ``a - b``, returns a dict with

    - ``"mean"``, ``"std"``, ``"se"``: the mean, sample std (``ddof=1``; 0 for one seed) and standard error
      ``std / sqrt(n)`` of ``d``;
    - ``"t"``: the threshold, Student's t quantile ``(1 + level) / 2`` with ``n - 1`` degrees of freedom
      (4.30 for 3 seeds, 2.78 for 5, 2.36 for 8, about 2 for many; ``inf`` for one seed);
    - ``"wins"``: the number of seeds on which ``a`` is higher; ``"n"``: the number of seeds;
    - ``"verdict"``: ``"better"``/``"worse"`` when the mean is more than ``t`` standard errors above/below 0 (the
      test rejects "no difference" at ``1 - level``), else ``"no clear difference"`` (always with one seed);
    - ``"p"``: the two-sided p-value ``2 * P(T_{n-1} > |mean / se|)`` (as ``scipy.stats.ttest_rel``); when all
      differences are equal it is 0 if they are nonzero and 1 if they are all 0; ``nan`` for one seed;
    - ``"mde"``: :func:`min_detectable_effect` for this ``n``, this ``std``, ``level`` and ``power``: the true
      mean difference this test would detect with probability ``power``; ``"power"``: that probability.
    """
    _check_level(level, power)
    if _is_run(a) and _is_run(b):
        if a.seeds != b.seeds:
            raise ValueError(f"a and b must be run on the same seeds for a paired comparison, got {a.seeds} "
                             f"and {b.seeds}")
        a, b = a.values, b.values
    a, b = (np.asarray(v.values if _is_run(v) else v, dtype=float) for v in (a, b))
    if a.ndim != 1 or a.shape != b.shape or len(a) == 0:
        raise ValueError(f"a and b must hold the same number of per-seed values, got shapes {a.shape} and {b.shape}")
    d = a - b
    n = len(d)
    std = float(d.std(ddof=1)) if n > 1 else 0.0
    se = std / math.sqrt(n)
    mean = float(d.mean())
    if n > 1:
        from scipy import stats

        t = float(stats.t.ppf((1 + level) / 2, n - 1))
        p = float(2 * stats.t.sf(abs(mean) / se, n - 1)) if se > 0 else float(mean == 0)
    else:
        t, p = math.inf, math.nan
    verdict = "better" if mean > t * se else "worse" if mean < -t * se else "no clear difference"
    return {"mean": mean, "std": std, "se": se, "t": t, "wins": int((d > 0).sum()), "n": n, "verdict": verdict,
            "p": p, "mde": min_detectable_effect(n, std, level, power), "power": power}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given.

    With the m p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value of the i-th is
    ``max over j <= i of min(1, (m - j + 1) * p_(j))``. Rejecting every hypothesis whose adjusted p-value is below
    ``alpha`` is Holm's procedure: it keeps the probability of at least one false "better"/"worse" in the family
    below ``alpha``, whatever the dependence between the tests. A ``nan`` (a comparison with no test) counts
    in m, ranks as 1 and stays ``nan``.
    """
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1 or np.any(p[~np.isnan(p)] < 0) or np.any(p[~np.isnan(p)] > 1):
        raise ValueError(f"pvalues must be a flat sequence of numbers in [0, 1], got {pvalues!r}")
    m = len(p)
    ranked = np.where(np.isnan(p), 1.0, p)
    order = np.argsort(ranked, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * ranked[order]))
    out = np.empty(m)
    out[order] = adjusted
    return [math.nan if math.isnan(x) else float(y) for x, y in zip(p, out, strict=True)]


def compare_family(comparisons: Mapping[Hashable, tuple], level: float = 0.95, power: float = 0.8) -> dict:
    """A chapter's family of key comparisons, each a paired t-test, with Holm's correction across the family.

    ``comparisons`` maps a label (e.g. ``"KD beats no KD"``, or a tuple of the two names) to a pair ``(a, b)``
    as :func:`compare` takes them; each comparison tests ``a`` against ``b``. The book's policy is at most
    three pre-registered key comparisons per chapter; more are allowed, and each one added makes every other
    one harder to call (m grows). Returns a dict with the same labels, in the same order; each value holds
    everything ``compare(a, b, level, power)`` returns, with these changes for the family:

    - ``"p_holm"``: the Holm-adjusted p-value (:func:`holm` over the family's ``"p"`` values);
    - ``"verdict"``: ``"better"``/``"worse"`` (the sign of the mean) when ``p_holm < 1 - level``, else
      ``"no clear difference"``: the chance of any false "better"/"worse" in the family is at most ``1 - level``;
    - ``"verdict_unadjusted"``: what ``compare`` alone says (this comparison tested on its own);
    - ``"mde"``: the minimum detectable effect at the Bonferroni level ``1 - (1 - level) / m``, the level of
      Holm's strictest step. Holm rejects everything Bonferroni rejects, so this is conservative: an effect of
      this size is detected with at least ``power`` probability whatever the other comparisons show;
    - ``"m"``: the number of comparisons in the family.

    ``"t"`` and ``"p"`` stay those of the comparison on its own (unadjusted).
    """
    if not isinstance(comparisons, Mapping) or not comparisons:
        raise ValueError("comparisons must be a non-empty mapping {label: (a, b)}")
    _check_level(level, power)
    for label, pair in comparisons.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"comparisons[{label!r}] must be a pair (a, b), got {type(pair).__name__}")
    m = len(comparisons)
    results = {label: compare(a, b, level, power) for label, (a, b) in comparisons.items()}
    adjusted = holm([r["p"] for r in results.values()])
    for r, p_holm in zip(results.values(), adjusted, strict=True):
        clear = p_holm < 1 - level  # False for nan
        r["verdict_unadjusted"] = r["verdict"]
        r["verdict"] = ("better" if r["mean"] > 0 else "worse") if clear else "no clear difference"
        r["p_holm"] = p_holm
        r["mde"] = min_detectable_effect(r["n"], r["std"], 1 - (1 - level) / m, power)
        r["m"] = m
    return results


_CLAIMS = ("better", "worse", "no difference")


def verdict_sentence(name_a: str, name_b: str, result: Mapping, claim: str = "better", unit: str = "points",
                     scale: float = 100.0, digits: int = 2) -> str:
    """One plain English sentence that reads the outcome of a comparison off ``result``.

    ``result`` is what :func:`compare` (p-value ``p``) or one entry of :func:`compare_family` (``p_holm``)
    returned for ``a = name_a`` against ``b = name_b``. ``claim`` is the pre-registered claim it tests:
    ``"better"`` (A beats B), ``"worse"`` (B beats A) or ``"no difference"`` (A and B perform the same).
    Numbers are the paired difference times ``scale`` (accuracies are fractions, so ``scale=100`` prints
    points), as mean ± standard error. With a directional claim, the sentence ends in "the claim holds",
    "... is contradicted" or "... is not shown at this scale", the last with the minimum detectable effect
    ``mde``. A t-test cannot show that two methods are equal, so a "no difference" claim is at best
    "consistent", again with the ``mde``: the effect that could still be hiding. Example::

        KD beats no KD by 1.20 ± 0.30 points (mean ± s.e., 5 seeds, Holm-adjusted p = 0.012): the claim holds.
    """
    if claim not in _CLAIMS:
        raise ValueError(f"claim must be one of {_CLAIMS}, got {claim!r}")
    needed = {"mean", "se", "std", "n", "verdict", "p", "mde"}
    if not isinstance(result, Mapping) or not needed <= set(result):
        raise ValueError(f"result must be a dict returned by compare or compare_family, with the keys {sorted(needed)}")
    mean, n, verdict = result["mean"], result["n"], result["verdict"]

    def pts(x: float, sign: str = "") -> str:
        return f"{scale * x:{sign}.{digits}f}" + (f" {unit}" if unit else "")

    said = {"better": f"{name_a} beats {name_b}", "worse": f"{name_b} beats {name_a}",
            "no difference": f"{name_a} and {name_b} perform the same"}[claim]
    if n < 2:
        return f"Only one seed ({name_a} − {name_b} = {pts(mean, '+')}), too few for a test: the claim that {said} " \
               "is not tested."
    p, label = (result["p_holm"], "Holm-adjusted p") if "p_holm" in result else (result["p"], "p")
    p_text = f"{label} < 0.001" if p < 0.001 else f"{label} = {p:.2g}"
    how = f"mean ± s.e., {n} seeds, {p_text}"
    if verdict in ("better", "worse"):
        winner, loser = (name_a, name_b) if verdict == "better" else (name_b, name_a)
        outcome = f"{winner} beats {loser} by {abs(scale * mean):.{digits}f} ± {pts(result['se'])} ({how})"
        if claim == verdict:
            return f"{outcome}: the claim holds."
        return f"{outcome}: the claim that {said} is contradicted."
    if result["std"] == 0 and mean == 0:
        seen = f"{name_a} and {name_b} score the same on all {n} seeds"
        return f"{seen}: consistent with the claim." if claim == "no difference" else \
            f"{seen}: the claim that {said} is not shown."
    observed = f"No clear difference between {name_a} and {name_b} ({name_a} − {name_b} = {scale * mean:+.{digits}f} " \
               f"± {pts(result['se'])}, {how})"
    hiding = f"an effect smaller than {pts(result['mde'])} (the minimum detectable effect at " \
             f"{round(100 * result.get('power', 0.8))} % power) could still be hiding"
    if claim == "no difference":
        return f"{observed}: consistent with the claim that they perform the same, not a proof of it: {hiding}."
    return f"{observed}: the claim that {said} is not shown at this scale; {hiding}."
