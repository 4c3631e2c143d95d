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
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.stats

from kdedu._io import atomic_write
from kdedu.zoo import cache_dir

__all__ = ["RunResult", "run", "compare", "table"]


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


def compare(a: RunResult | Sequence[float], b: RunResult | Sequence[float], level: float = 0.95) -> dict:
    """Paired comparison of ``a - b`` seed by seed: a paired t-test.

    ``a`` and ``b`` are :class:`RunResult` objects run on the same seeds, or two equally long sequences
    of per-seed numbers, paired by position (seed i of ``a`` with seed i of ``b``). Returns
    ``{"mean", "std", "se", "t", "wins", "n", "verdict"}``: the mean, sample std and standard error
    (``std / sqrt(n)``) of the differences, the threshold ``t`` (Student's t quantile ``(1 + level) / 2``
    with ``n - 1`` degrees of freedom: 4.30 for 3 seeds, 2.78 for 5, 2.36 for 8, about 2 for many), the
    number of seeds on which ``a`` is higher, and the verdict: ``"better"``/``"worse"`` when the mean is more
    than ``t`` standard errors from 0 (the two-sided paired t-test rejects "no difference" at ``1 - level``),
    else ``"no clear difference"``. With one seed there is no verdict (``t`` is infinite).
    """
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ValueError(f"level must be a number strictly between 0 and 1, got {level!r}")
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
    t = float(scipy.stats.t.ppf((1 + level) / 2, n - 1)) if n > 1 else math.inf
    verdict = "better" if mean > t * se else "worse" if mean < -t * se else "no clear difference"
    return {"mean": mean, "std": std, "se": se, "t": t, "wins": int((d > 0).sum()), "n": n, "verdict": verdict}


def table(results: Mapping[str, RunResult] | Iterable[RunResult], scale: float = 100.0, digits: int = 2) -> str:
    """A Markdown table: method, mean ± std, seeds, training time per seed."""
    items = results.items() if isinstance(results, Mapping) else ((r.name, r) for r in results)
    rows = ["| method | mean ± std | seeds | time per seed (s) |", "|---|---|---|---|"]
    for label, r in items:
        rows.append(f"| {label} | {scale * r.mean:.{digits}f} ± {scale * r.std:.{digits}f} | {len(r.values)} | "
                    f"{r.wall_time_s / len(r.values):.2f} |")
    return "\n".join(rows)
