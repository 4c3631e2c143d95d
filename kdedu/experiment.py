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

Stored results. Runs bigger than the ``fast`` profile allows are made once in the ``powered`` profile (offline,
CPU, more seeds and steps) and stored as tables with their provenance in :func:`results_dir` (the package's
``results/`` folder, so Colab has them too). A chapter groups its runs into tables (``run(..., table=...)``),
shows them with :func:`stored` and :func:`provenance` next to its live ``fast`` runs, and reads its verdicts
off them. ``$KDEDU_RESULTS`` selects what ``run`` does with a table:

* ``record``: compute every run afresh and write it to its table (``make results NB=book/NN-slug.ipynb``
  executes a chapter so, in the ``powered`` profile: the one command that regenerates its tables);
* ``reproduce``: re-run one (run, seed) of each table, check it against the stored value, and return the stored
  runs (``tests/test_results.py`` executes every chapter with stored tables so);
* unset: tables change nothing (``stored`` reads them).
"""


from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kdedu._io import atomic_write, cache_dir
from kdedu.stats import compare, compare_family, holm, min_detectable_effect, verdict_sentence

__all__ = ["RunResult", "run", "compare", "compare_family", "holm", "min_detectable_effect", "verdict_sentence",
           "table", "StoredResult", "stored", "provenance", "results_mode", "results_dir"]


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
        progress: bool | None = None, table: str | None = None, tolerance: float = 0.0) -> RunResult:
    """Run ``fn(seed)`` for every seed and collect ``metric`` from what it returns.

    ``table`` names the stored table this run belongs to (see "Stored results" in the module docstring):
    with ``$KDEDU_RESULTS=record`` the run is computed afresh (no cache) and written to the table with its
    provenance; with ``$KDEDU_RESULTS=reproduce`` the first run of each table recomputes its first stored
    seed, checks it against the stored value (within ``tolerance``) and every run of the table returns its
    stored values. Without ``$KDEDU_RESULTS`` the argument changes nothing.

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
    mode = results_mode()
    if table is not None and mode == "reproduce":
        return _reproduce(table, name, fn, seeds, config, metric, tolerance)
    if table is not None and mode == "record":
        cache = False  # every stored number is computed by the code being recorded
    t_start = time.perf_counter()
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
    result = RunResult(name=name, metric=metric, seeds=seeds, values=[r["metrics"][metric] for r in rows],
                       metrics=[r["metrics"] for r in rows], time_s=[r["time_s"] for r in rows], config=config,
                       cached_seeds=cached_seeds)
    if table is not None and mode == "record":
        _record(table, result, time.perf_counter() - t_start, tolerance)
    return result


def table(results: Mapping[str, RunResult] | Iterable[RunResult], scale: float = 100.0, digits: int = 2) -> str:
    """A Markdown table: method, mean ± std, seeds, training time per seed."""
    items = results.items() if isinstance(results, Mapping) else ((r.name, r) for r in results)
    rows = ["| method | mean ± std | seeds | time per seed (s) |", "|---|---|---|---|"]
    for label, r in items:
        rows.append(f"| {label} | {scale * r.mean:.{digits}f} ± {scale * r.std:.{digits}f} | {len(r.values)} | "
                    f"{r.wall_time_s / len(r.values):.2f} |")
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------------
# stored results
# ------------------------------------------------------------------------------------------------
RESULTS_MODES = ("record", "reproduce")
_REPRODUCED: set[str] = set()  # tables whose one reproduction check has run in this process


def results_mode() -> str | None:
    """``$KDEDU_RESULTS``: ``"record"``, ``"reproduce"`` or None (read stored tables, compute live runs)."""
    mode = os.environ.get("KDEDU_RESULTS", "").strip().lower() or None
    if mode is not None and mode not in RESULTS_MODES:
        raise ValueError(f"KDEDU_RESULTS must be one of {RESULTS_MODES} (or unset), got {mode!r}")
    return mode


def results_dir() -> Path:
    """Where stored tables live: ``$KDEDU_RESULTS_DIR``, else the folder ``results/`` inside the package."""
    return Path(os.environ.get("KDEDU_RESULTS_DIR") or Path(__file__).parent / "results")


def _table_path(table: str) -> Path:
    if not isinstance(table, str) or not table or any(c in table for c in "/\\ ") or table.startswith("."):
        raise ValueError(f"table must be a plain name like 'ch09-ablation', got {table!r}")
    return results_dir() / f"{table}.json"


def _read_table(table: str) -> dict:
    path = _table_path(table)
    if not path.exists():
        raise FileNotFoundError(f"no stored table {table!r} in {results_dir()}: regenerate it with "
                                f"`make results NB=<the chapter's notebook>`")
    return json.loads(path.read_text())


def numerics_fingerprint() -> str:
    """A short hash of float32 CPU results that differ between machines whose arithmetic differs.

    PyTorch picks its matrix-product, convolution and attention kernels by the CPU's instruction set, and the
    kernels sum in different orders, so one recipe trains bit-wise different models on two such machines. A
    stored table can only be reproduced exactly where this fingerprint matches the recording machine's; the
    provenance keeps it (``machine["numerics"]``) and ``tests/test_results.py`` compares it. One thread, as
    recordings use."""
    import hashlib

    import torch
    import torch.nn.functional as F

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(192, 320, generator=g), torch.randn(320, 96, generator=g)
        x, w = torch.randn(2, 3, 17, 17, generator=g), torch.randn(8, 3, 3, 3, generator=g)
        q, k, v = (torch.randn(2, 4, 33, 16, generator=g) for _ in range(3))
        torch.manual_seed(0)
        layer = torch.nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
        h = torch.randn(3, 21, 64, generator=g, requires_grad=True)
        layer(h).square().mean().backward()
        with torch.no_grad():
            outs = [a @ b, F.conv2d(x, w), torch.log_softmax(a, -1), F.scaled_dot_product_attention(q, k, v),
                    h.grad, layer.linear1.weight.grad]
        return hashlib.sha256(b"".join(o.detach().contiguous().numpy().tobytes() for o in outs)).hexdigest()[:16]
    finally:
        torch.set_num_threads(threads)


def _provenance(wall_time_s: float) -> dict:
    """Who made a stored run, how, on what: command, commit, package versions, machine, wall time."""
    import platform
    import subprocess
    import sys

    import torch

    from kdedu import __version__
    from kdedu.profile import current

    def git(*args) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10)
            return out.stdout.strip() if out.returncode == 0 else None
        except OSError:
            return None

    versions = {"python": platform.python_version(), "kdedu": __version__, "torch": torch.__version__,
                "numpy": np.__version__}
    for name in ("transformers", "sklearn", "scipy"):  # recorded when the run imported them
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    return {"command": os.environ.get("KDEDU_RESULTS_COMMAND") or " ".join(sys.argv),
            "commit": git("rev-parse", "HEAD"),
            # local changes to anything but the stored tables themselves (recording one must not mark the next)
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                              ":(top,exclude)kdedu/results")),
            "versions": versions, "profile": current(),
            "machine": {"system": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "numerics": numerics_fingerprint(),
                        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
            "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "wall_time_s": round(wall_time_s, 1)}


def _record(table: str, result: RunResult, wall_time_s: float, tolerance: float) -> None:
    """Add (or replace) ``result`` in the stored ``table``, with its provenance; atomic."""
    path = _table_path(table)
    data = json.loads(path.read_text()) if path.exists() else {"table": table, "runs": {}}
    data["runs"][result.name] = {
        "metric": result.metric, "config": json.loads(json.dumps(result.config, default=str)), "seeds": result.seeds,
        "values": result.values, "metrics": result.metrics, "time_s": [round(t, 2) for t in result.time_s],
        "tolerance": float(tolerance), "provenance": _provenance(wall_time_s)}
    atomic_write(path, (json.dumps(data, indent=1) + "\n").encode())


@dataclass
class StoredResult(RunResult):
    """A :class:`RunResult` read from a stored table, with the ``provenance`` of the run that made it."""

    table: str = ""
    provenance: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"{self.name} (stored): {self.metric} {100 * self.mean:.2f} ± {100 * self.std:.2f} "
                f"({len(self.values)} seeds, {self.provenance.get('profile', '?')} profile)")


def stored(table: str, name: str | None = None) -> StoredResult | dict[str, StoredResult]:
    """The runs of a stored table: all of them (a dict by run name), or the one called ``name``."""
    data = _read_table(table)
    runs = {}
    for run_name, r in data["runs"].items():
        runs[run_name] = StoredResult(name=run_name, metric=r["metric"], seeds=list(r["seeds"]),
                                      values=list(r["values"]), metrics=list(r["metrics"]),
                                      time_s=list(r["time_s"]), config=dict(r["config"]), table=table,
                                      provenance=dict(r["provenance"]))
    if name is None:
        return runs
    if name not in runs:
        raise KeyError(f"table {table!r} has no run {name!r}; it has {sorted(runs)}")
    return runs[name]


def provenance(table: str) -> str:
    """One Markdown line on where a stored table comes from: seeds, profile, machine, commit, time, command."""
    runs = stored(table)
    first = next(iter(runs.values())).provenance
    seeds = sorted({len(r.seeds) for r in runs.values()})
    wall = sum(r.provenance.get("wall_time_s", 0.0) for r in runs.values())
    commits = sorted({(r.provenance.get("commit") or "?")[:10] for r in runs.values()})
    dirty = any(r.provenance.get("dirty") for r in runs.values())
    commit = ("commit " if len(commits) == 1 else "commits ") + ", ".join(commits) + (
        " (with local changes)" if dirty else "")
    machine = first.get("machine", {})
    threads = machine.get("torch_threads", "?")
    cpu = f"{machine.get('cpus', '?')}-core CPU, {threads} thread{'' if threads == 1 else 's'}"
    device = machine.get("cuda") or cpu
    return (f"Stored table `{table}`: {len(runs)} run{'s' if len(runs) != 1 else ''} of "
            f"{'/'.join(map(str, seeds))} seeds, "
            f"`{first.get('profile', '?')}` profile, {wall / 60:.1f} min on a {device}, recorded "
            f"{first.get('recorded', '?')[:10]} at {commit} with torch {first['versions'].get('torch', '?')}; "
            f"regenerate: `{first.get('command', '?')}`.")


def _is_checksum(value) -> bool:
    """A SHA-256 hex digest (how configs name trained weights, e.g. a teacher's ``meta["sha256"]``)."""
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _reproduce(table: str, name: str, fn, seeds, config: dict, metric: str, tolerance: float) -> StoredResult:
    """Reproduce mode: the stored run, after re-running one of its seeds if this table was not checked yet."""
    try:
        result = stored(table, name)
    except KeyError:
        raise KeyError(f"run {name!r} is not in the stored table {table!r}: regenerate the table") from None
    asked = json.loads(json.dumps(config, default=str))
    if result.config != asked or result.seeds != list(seeds) or result.metric != metric:
        differ = sorted(k for k in set(asked) | set(result.config) if asked.get(k) != result.config.get(k))
        if differ and result.seeds == list(seeds) and result.metric == metric and all(
                _is_checksum(asked.get(k)) and _is_checksum(result.config.get(k)) for k in differ):
            raise ValueError(f"run {name!r} of table {table!r}: the checksum of trained weights differs ({differ}): "
                             f"this machine trained other weights from the same recipe than the recording machine "
                             f"(numerics fingerprint {numerics_fingerprint()} here), or the recipe changed")
        raise ValueError(f"run {name!r} of table {table!r} was stored with another configuration, seeds or metric "
                         f"than the code now asks for (differing config keys: {differ}): regenerate the table")
    if table not in _REPRODUCED:
        seed = result.seeds[0]
        out = fn(int(seed))
        value = float(out[metric] if isinstance(out, Mapping) else out)
        allowed = float(_read_table(table)["runs"][name].get("tolerance", 0.0))
        if not abs(value - result.values[0]) <= allowed:
            raise AssertionError(f"stored table {table!r} does not reproduce: run {name!r}, seed {seed}: {metric} = "
                                 f"{value!r} now, {result.values[0]!r} stored (tolerance {allowed})")
        _REPRODUCED.add(table)
    return result
