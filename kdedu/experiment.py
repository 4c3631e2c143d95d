"""The multi-seed experiment runner: train a method over several seeds, get a tidy, cached result.

Every claim in the book ("method A beats B") is measured over seeds. :func:`run` calls
``fn(seed)`` for each seed, collects the metrics it returns, and caches each seed's result under
``$KDEDU_CACHE/experiments`` (atomic writes), so re-running a chapter only computes what is new::

    def train_kd(seed):
        student = MLP(hidden=(64,))
        fit(KD(student, teacher), loader, num_epochs=30, seed=seed, progress=False)
        return evaluate(student, test_loader)            # {"acc": ..., "loss": ...}

    kd = run("ch07-kd", train_kd, seeds=range(5), config={"hidden": 64, "epochs": 30})
    print(kd)                                            # ch07-kd: acc 93.10 ± 0.41 (5 seeds, 4.2 s)
    compare(kd, no_kd)                                   # paired differences, seed by seed

The cache key is ``name`` + ``config``: put in ``config`` everything that changes the result (the
code of ``fn`` is not part of the key), or pass ``cache=False``.

A chapter tests at most three pre-registered claims, as one family (Holm's correction across it), and
prints the sentences that state their outcomes from the verdicts::

    family = compare_family({"KD beats no KD": (kd, no_kd), "KD beats label smoothing": (kd, ls)})
    print(verdict_sentence("KD", "no KD", family["KD beats no KD"]))

"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import numbers
import os
import time
import warnings
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kdedu._io import atomic_write
from kdedu.zoo import cache_dir

__all__ = ["RunResult", "run", "compare", "compare_family", "holm", "min_detectable_effect", "verdict_sentence",
           "table"]


@dataclass
class RunResult:
    """One method over several seeds: per-seed ``values`` of ``metric`` (and all ``metrics``)."""

    name: str
    metric: str
    seeds: list[int]
    values: list[float]
    metrics: list[dict] = field(default_factory=list)
    time_s: list[float] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    cached_seeds: list[int] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (``ddof=1``; 0 for one seed)."""
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else 0.0

    @property
    def wall_time_s(self) -> float:
        """Training time summed over seeds (as first computed, cached seeds included)."""
        return float(sum(self.time_s))

    def __repr__(self) -> str:
        cached = f", {len(self.cached_seeds)} from cache" if self.cached_seeds else ""
        return (f"{self.name}: {self.metric} {100 * self.mean:.2f} ± {100 * self.std:.2f} "
                f"({len(self.values)} seeds, {self.wall_time_s:.1f} s{cached})")

    def to_dict(self) -> dict:
        return {"name": self.name, "metric": self.metric, "mean": self.mean, "std": self.std,
                "seeds": self.seeds, "values": self.values, "time_s": self.time_s, "config": self.config}


def _key(name: str, config: dict) -> str:
    blob = json.dumps({"name": name, "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _load(path: Path, config: dict) -> dict:
    if not path.exists():
        return {}
    try:
        stored = json.loads(path.read_text())
        if stored.get("config") != json.loads(json.dumps(config, default=str)):
            raise ValueError("stored configuration differs")
        seeds = {}
        for k, v in stored["seeds"].items():
            ok = (isinstance(v, dict) and isinstance(v.get("metrics"), dict)
                  and isinstance(v.get("time_s"), (int, float))
                  and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                          for x in v["metrics"].values()))
            if not ok:
                raise ValueError(f"malformed entry for seed {k}")
            seeds[int(k)] = v
        return seeds
    except Exception as err:  # corrupt or stale file: recompute, never use it
        warnings.warn(f"kdedu.experiment: ignoring {path.name} ({err}); recomputing", stacklevel=3)
        return {}


def run(name: str, fn: Callable[[int], float | Mapping], seeds: Iterable[int] = range(5), config: dict | None = None,
        metric: str = "acc", cache: bool = True, root: str | Path | None = None,
        progress: bool | None = None) -> RunResult:
    """Run ``fn(seed)`` for every seed and collect ``metric`` from what it returns.

    Args:
        name: a readable name (also the cache file's prefix).
        fn: trains and evaluates one seed; returns a dict of numbers containing ``metric``, or a number.
        seeds: the seeds (integers).
        config: everything that determines the results (JSON-serialisable); the cache key.
        metric: the dict key to summarise.
        cache: reuse and store per-seed results under ``root`` (default ``$KDEDU_CACHE/experiments``).
        progress: a ``tqdm`` bar over seeds (default: on, unless ``$KDEDU_PROGRESS=0``).
    """
    if not callable(fn):
        raise TypeError(f"fn must be a callable fn(seed) -> dict | float, got {type(fn).__name__}")
    seeds = list(seeds)
    if not seeds or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds!r}")
    config = dict(config or {})
    path = Path(root if root is not None else cache_dir() / "experiments") / f"{name}-{_key(name, config)}.json"
    done = _load(path, config) if cache else {}
    cached_seeds = [s for s in seeds if s in done and metric in done[s]["metrics"]]
    todo = [s for s in seeds if s not in done or metric not in done[s]["metrics"]]
    if progress is None:
        progress = os.environ.get("KDEDU_PROGRESS", "1") != "0"
    if progress and todo:
        from tqdm.auto import tqdm

        todo = tqdm(todo, desc=name, leave=False)
    for seed in todo:
        t0 = time.perf_counter()
        out = fn(int(seed))
        metrics = dict(out) if isinstance(out, Mapping) else {metric: out}
        if metric not in metrics:
            raise KeyError(f"fn returned {sorted(metrics)}, which has no {metric!r} (the metric argument)")
        clean = {}
        for k, v in metrics.items():
            v = float(v.item() if hasattr(v, "item") else v)
            if not math.isfinite(v):
                raise ValueError(f"fn returned a non-finite {k!r} for seed {seed}: {v}")
            clean[k] = v
        done[int(seed)] = {"metrics": clean, "time_s": time.perf_counter() - t0}
        if cache:  # after every seed, so an interrupted run keeps what it finished
            blob = {"name": name, "config": json.loads(json.dumps(config, default=str)),
                    "seeds": {str(k): v for k, v in sorted(done.items())}}
            atomic_write(path, json.dumps(blob, indent=1).encode())
    rows = [done[s] for s in seeds]
    return RunResult(name=name, metric=metric, seeds=seeds, values=[r["metrics"][metric] for r in rows],
                     metrics=[r["metrics"] for r in rows], time_s=[r["time_s"] for r in rows], config=config,
                     cached_seeds=cached_seeds)


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


def compare(a: RunResult | Sequence[float], b: RunResult | Sequence[float], level: float = 0.95,
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
    if isinstance(a, RunResult) and isinstance(b, RunResult):
        if a.seeds != b.seeds:
            raise ValueError(f"a and b must be run on the same seeds for a paired comparison, got {a.seeds} "
                             f"and {b.seeds}")
        a, b = a.values, b.values
    a, b = (np.asarray(v.values if isinstance(v, RunResult) else v, dtype=float) for v in (a, b))
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


def table(results: Mapping[str, RunResult] | Iterable[RunResult], scale: float = 100.0, digits: int = 2) -> str:
    """A Markdown table: method, mean ± std, seeds, training time per seed."""
    items = results.items() if isinstance(results, Mapping) else ((r.name, r) for r in results)
    rows = ["| method | mean ± std | seeds | time per seed (s) |", "|---|---|---|---|"]
    for label, r in items:
        rows.append(f"| {label} | {scale * r.mean:.{digits}f} ± {scale * r.std:.{digits}f} | {len(r.values)} | "
                    f"{r.wall_time_s / len(r.values):.2f} |")
    return "\n".join(rows)
