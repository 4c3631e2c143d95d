"""kdedu.experiment: the multi-seed runner, its per-seed cache, paired comparisons and the results table.

``fn`` here is a counting stub, never a training run, so the tests are instant. Statistics are
recomputed with the standard library (``statistics``, ``math``) and with NumPy; every test writes
only under its own ``tmp_path`` (``root=`` or ``$KDEDU_CACHE``).
"""

from __future__ import annotations

import json
import math
import statistics
import warnings

import numpy as np
import pytest
import torch

from kdedu import experiment
from kdedu.experiment import (
    RunResult,
    compare,
    compare_family,
    holm,
    min_detectable_effect,
    run,
    table,
    verdict_sentence,
)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never touch the user's cache: $KDEDU_CACHE points into the test's tmp folder."""
    monkeypatch.setenv("KDEDU_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KDEDU_PROGRESS", "0")


@pytest.fixture
def root(tmp_path):
    return tmp_path / "experiments"


class Counter:
    """fn(seed) that records its calls and returns ``values(seed)``."""

    def __init__(self, values):
        self.values = values
        self.calls: list[int] = []

    def __call__(self, seed):
        self.calls.append(seed)
        return self.values(seed)


def acc_of(seed: int) -> float:
    """Arbitrary, distinct, not evenly spaced values."""
    return 0.8 + 0.013 * seed + 0.004 * (seed % 3) ** 2


def files(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ------------------------------------------------------------------------------------------
# run: calls and statistics
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seeds", [[0, 1, 2, 3, 4], [7, 3, 11], [42], list(range(10))])
def test_run_calls_fn_once_per_seed_and_summarises(root, seeds):
    fn = Counter(acc_of)
    result = run("toy", fn, seeds=seeds, root=root, progress=False)
    assert fn.calls == seeds
    expected = [acc_of(s) for s in seeds]
    assert result.seeds == seeds and result.values == expected and result.metric == "acc"
    assert result.mean == pytest.approx(statistics.fmean(expected), rel=1e-12)
    assert result.mean == pytest.approx(float(np.mean(expected)), rel=1e-12)
    if len(seeds) > 1:
        assert result.std == pytest.approx(statistics.stdev(expected), rel=1e-9)  # sample std, n - 1
        assert result.std == pytest.approx(float(np.std(expected, ddof=1)), rel=1e-12)
        assert result.std != pytest.approx(float(np.std(expected, ddof=0)), rel=1e-6)
    else:
        assert result.std == 0.0
    assert len(result.time_s) == len(seeds) and all(t >= 0 for t in result.time_s)
    assert result.wall_time_s == pytest.approx(sum(result.time_s))
    assert result.cached_seeds == []
    assert "toy" in repr(result) and "acc" in repr(result)


def test_default_seeds_are_range_5(root):
    fn = Counter(acc_of)
    result = run("toy", fn, root=root, progress=False)
    assert fn.calls == [0, 1, 2, 3, 4] and result.seeds == [0, 1, 2, 3, 4]


def test_float_and_dict_returns(root):
    as_float = run("f", Counter(acc_of), seeds=[0, 1, 2], root=root, progress=False)
    as_dict = run("d", Counter(lambda s: {"acc": acc_of(s), "loss": 1.0 / (s + 1)}), seeds=[0, 1, 2], root=root,
                  progress=False)
    assert as_float.values == as_dict.values == [acc_of(s) for s in (0, 1, 2)]
    assert as_float.metrics == [{"acc": acc_of(s)} for s in (0, 1, 2)]
    assert as_dict.metrics == [{"acc": acc_of(s), "loss": 1.0 / (s + 1)} for s in (0, 1, 2)]
    # another metric of the same dict, and a float under a custom metric name
    by_loss = run("d2", lambda s: {"acc": acc_of(s), "loss": 1.0 / (s + 1)}, seeds=[0, 1, 2], metric="loss",
                  cache=False, progress=False)
    assert by_loss.values == [1.0, 0.5, pytest.approx(1 / 3)] and by_loss.metric == "loss"
    f1 = run("f1", acc_of, seeds=[0, 1], metric="f1", cache=False, progress=False)
    assert f1.metrics == [{"f1": acc_of(0)}, {"f1": acc_of(1)}]
    # tensors and NumPy scalars become Python floats
    t = run("t", lambda s: {"acc": torch.tensor(acc_of(s)), "n": np.float32(2)}, seeds=[0, 1], cache=False,
            progress=False)
    assert all(type(v) is float for m in t.metrics for v in m.values())
    assert t.values == pytest.approx([acc_of(0), acc_of(1)], rel=1e-6)


def test_missing_metric_raises_key_error_naming_it(root):
    with pytest.raises(KeyError, match="f1"):
        run("m", lambda s: {"acc": 0.5, "loss": 1.0}, seeds=[0, 1], metric="f1", root=root, progress=False)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_metric_raises(root, bad):
    with pytest.raises(ValueError, match="non-finite"):
        run("nf", lambda s: bad if s == 1 else 0.5, seeds=[0, 1, 2], root=root, progress=False)
    with pytest.raises(ValueError, match="acc"):
        run("nf-dict", lambda s: {"acc": bad, "loss": 1.0}, seeds=[0], root=root, progress=False)
    with pytest.raises(ValueError, match="non-finite"):
        run("nf-tensor", lambda s: torch.tensor(bad), seeds=[0], root=root, progress=False)


@pytest.mark.parametrize("seeds", [[0, 0], [1, 2, 1], [0, 1.5], [0.0], ["0"], [True, 1], [None], []])
def test_bad_seeds_raise(root, seeds):
    fn = Counter(acc_of)
    with pytest.raises((TypeError, ValueError), match="seeds"):
        run("bad", fn, seeds=seeds, root=root, progress=False)
    assert fn.calls == [] and files(root) == []


def test_numpy_integer_seeds_are_accepted(root):
    fn = Counter(acc_of)
    result = run("np", fn, seeds=np.arange(3), root=root, progress=False)
    assert fn.calls == [0, 1, 2] and all(type(s) is int for s in fn.calls)
    assert result.values == [acc_of(s) for s in range(3)]


def test_fn_must_be_callable(root):
    with pytest.raises(TypeError, match="fn"):
        run("x", 0.5, seeds=[0], root=root, progress=False)


# ------------------------------------------------------------------------------------------
# run: the per-seed cache
# ------------------------------------------------------------------------------------------
CONFIG = {"method": "kd", "T": 4.0, "hidden": [64], "epochs": 30}


def test_second_run_is_served_from_the_cache(root):
    first = run("kd", Counter(acc_of), seeds=[0, 1, 2], config=CONFIG, root=root, progress=False)
    fn = Counter(lambda s: 0.0)  # would give other values if it were called
    second = run("kd", fn, seeds=[0, 1, 2], config=CONFIG, root=root, progress=False)
    assert fn.calls == []
    assert second.values == first.values and second.metrics == first.metrics
    assert second.time_s == first.time_s and second.cached_seeds == [0, 1, 2]
    assert second.mean == first.mean and second.std == first.std
    # the config's key order does not matter
    reordered = dict(reversed(list(CONFIG.items())))
    third = run("kd", fn, seeds=[2, 0], config=reordered, root=root, progress=False)
    assert fn.calls == [] and third.values == [acc_of(2), acc_of(0)] and third.seeds == [2, 0]


def test_extra_seeds_compute_only_the_new_ones(root):
    run("kd", Counter(acc_of), seeds=[0, 1, 2], config=CONFIG, root=root, progress=False)
    fn = Counter(lambda s: 0.5)
    more = run("kd", fn, seeds=[0, 1, 2, 3, 4], config=CONFIG, root=root, progress=False)
    assert fn.calls == [3, 4]
    assert more.values == [acc_of(0), acc_of(1), acc_of(2), 0.5, 0.5]
    assert more.cached_seeds == [0, 1, 2]
    # now all five are stored
    again = Counter(lambda s: 0.0)
    assert run("kd", again, seeds=range(5), config=CONFIG, root=root, progress=False).values == more.values
    assert again.calls == []


@pytest.mark.parametrize("change", [{"T": 2.0}, {"epochs": 31}, {"hidden": [32]}, {"extra": None}])
def test_a_different_config_or_name_recomputes(root, change):
    run("kd", Counter(acc_of), seeds=[0, 1], config=CONFIG, root=root, progress=False)
    fn = Counter(lambda s: 0.25)
    other = run("kd", fn, seeds=[0, 1], config={**CONFIG, **change}, root=root, progress=False)
    assert fn.calls == [0, 1] and other.values == [0.25, 0.25] and other.cached_seeds == []
    renamed = Counter(lambda s: 0.75)
    assert run("kd-other", renamed, seeds=[0, 1], config=CONFIG, root=root, progress=False).values == [0.75, 0.75]
    assert renamed.calls == [0, 1]
    # the original entry is untouched
    original = Counter(lambda s: 0.0)
    assert run("kd", original, seeds=[0, 1], config=CONFIG, root=root, progress=False).values == [acc_of(0),
                                                                                                   acc_of(1)]
    assert original.calls == []


def test_default_root_is_kdedu_cache_experiments(tmp_path):
    run("where", Counter(acc_of), seeds=[0], config=CONFIG, progress=False)
    folder = tmp_path / "cache" / "experiments"
    names = files(folder)
    assert len(names) == 1 and names[0].startswith("where-") and names[0].endswith(".json")
    stored = json.loads((folder / names[0]).read_text())
    assert stored["config"] == CONFIG


def test_writes_are_per_seed_and_atomic(root):
    """fn raises on the third seed: the first two are stored (and were stored before it ran), no temp file is left,
    and the next run reuses them."""
    seen_on_disk = []

    def flaky(seed):
        names = files(root)
        seen_on_disk.append(json.loads((root / names[0]).read_text())["seeds"].keys() if names else set())
        if seed == 2:
            raise RuntimeError("out of memory on seed 2")
        return acc_of(seed)

    with pytest.raises(RuntimeError, match="seed 2"):
        run("flaky", flaky, seeds=[0, 1, 2, 3], config=CONFIG, root=root, progress=False)
    assert [set(s) for s in seen_on_disk] == [set(), {"0"}, {"0", "1"}]  # each seed written as soon as it finished
    names = files(root)
    assert len(names) == 1 and names[0].endswith(".json") and not names[0].startswith("."), names
    fn = Counter(lambda s: 0.5)
    result = run("flaky", fn, seeds=[0, 1, 2, 3], config=CONFIG, root=root, progress=False)
    assert fn.calls == [2, 3]
    assert result.values == [acc_of(0), acc_of(1), 0.5, 0.5] and result.cached_seeds == [0, 1]
    assert files(root) == names


def test_a_failed_write_keeps_the_previous_file(root, monkeypatch):
    """If the final rename fails (a crash mid-write), the stored seeds survive intact and no temp file is left."""
    run("crash", Counter(acc_of), seeds=[0, 1], config=CONFIG, root=root, progress=False)
    names = files(root)
    before = (root / names[0]).read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    with monkeypatch.context() as m, pytest.raises(OSError, match="disk full"):
        m.setattr("os.replace", broken_replace)
        run("crash", Counter(acc_of), seeds=[0, 1, 2], config=CONFIG, root=root, progress=False)
    assert files(root) == names and (root / names[0]).read_bytes() == before
    fn = Counter(acc_of)
    assert run("crash", fn, seeds=[0, 1, 2], config=CONFIG, root=root, progress=False).cached_seeds == [0, 1]
    assert fn.calls == [2]


def _only_file(root):
    names = files(root)
    assert len(names) == 1, names
    return root / names[0]


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda b: b[: len(b) // 2],  # truncated
        lambda b: b"",  # empty
        lambda b: b"\x00\xff\xfe garbage",  # not text
        lambda b: b"[1, 2, 3]",  # JSON, but not an object
        lambda b: b.replace(b'"kd"', b'"something else"'),  # another configuration
    ],
    ids=["truncated", "empty", "binary", "json-list", "stale-config"],
)
def test_a_corrupt_cache_file_warns_and_recomputes(root, corrupt):
    run("kd", Counter(acc_of), seeds=[0, 1, 2], config=CONFIG, root=root, progress=False)
    path = _only_file(root)
    path.write_bytes(corrupt(path.read_bytes()))
    fn = Counter(lambda s: 0.5)
    with pytest.warns(UserWarning, match="ignoring"):
        result = run("kd", fn, seeds=[0, 1, 2], config=CONFIG, root=root, progress=False)
    assert fn.calls == [0, 1, 2] and result.values == [0.5, 0.5, 0.5] and result.cached_seeds == []
    # the file was rewritten and is good again
    again = Counter(lambda s: 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run("kd", again, seeds=[0, 1, 2], config=CONFIG, root=root, progress=False).values == [0.5] * 3
    assert again.calls == []


@pytest.mark.parametrize(
    "entry",
    [0.91, {"time_s": 1.0}, {"metrics": 0.91, "time_s": 1.0}, {"metrics": {"acc": 0.91}}, None,
     {"metrics": {"acc": "0.91"}, "time_s": 1.0}, {"metrics": {"acc": True}, "time_s": 1.0},
     {"metrics": {"acc": float("nan")}, "time_s": 1.0}, {"metrics": {"acc": 0.9, "loss": float("inf")}, "time_s": 1.0}],
    ids=["bare-number", "no-metrics", "metrics-not-a-dict", "no-time", "null", "string-metric", "bool-metric",
         "nan-metric", "inf-metric"],
)
def test_a_malformed_seed_entry_warns_and_recomputes(root, entry):
    """Valid JSON whose per-seed entries have the wrong layout (e.g. an older format) is corrupt too: warn and
    recompute, never crash with a TypeError/KeyError from deep inside run()."""
    run("kd", Counter(acc_of), seeds=[0, 1], config=CONFIG, root=root, progress=False)
    path = _only_file(root)
    stored = json.loads(path.read_text())
    stored["seeds"]["0"] = entry
    path.write_text(json.dumps(stored))
    fn = Counter(lambda s: 0.5)
    with pytest.warns(UserWarning, match="ignoring"):
        result = run("kd", fn, seeds=[0, 1], config=CONFIG, root=root, progress=False)
    assert 0 in fn.calls and result.values[0] == 0.5


def test_switching_to_a_metric_the_cache_lacks_names_it(root):
    """A cached float result only holds the metric it was stored under; asking for another one must say which
    metric is missing (or recompute), not fail silently."""
    run("sw", acc_of, seeds=[0, 1], config=CONFIG, root=root, progress=False)
    fn = Counter(lambda s: {"acc": 0.5, "loss": 0.25})
    try:
        result = run("sw", fn, seeds=[0, 1], config=CONFIG, metric="loss", root=root, progress=False)
    except KeyError as err:
        assert "loss" in str(err)
    else:
        assert fn.calls == [0, 1] and result.values == [0.25, 0.25]


def test_cache_false_never_reads_or_writes(tmp_path, root):
    fn = Counter(acc_of)
    run("nc", fn, seeds=[0, 1, 2], config=CONFIG, cache=False, root=root, progress=False)
    run("nc", fn, seeds=[0, 1, 2], config=CONFIG, cache=False, progress=False)
    assert fn.calls == [0, 1, 2, 0, 1, 2]
    assert not root.exists() and not (tmp_path / "cache").exists()
    # an existing entry is neither used nor changed
    run("nc", Counter(acc_of), seeds=[0, 1], config=CONFIG, root=root, progress=False)
    path = _only_file(root)
    before = path.read_bytes()
    fresh = Counter(lambda s: 0.5)
    assert run("nc", fresh, seeds=[0, 1, 2], config=CONFIG, cache=False, root=root,
               progress=False).values == [0.5] * 3
    assert fresh.calls == [0, 1, 2] and path.read_bytes() == before and files(root) == [path.name]


# ------------------------------------------------------------------------------------------
# compare: paired differences
# ------------------------------------------------------------------------------------------
def result_of(values, seeds=None, name="r"):
    seeds = list(range(len(values))) if seeds is None else seeds
    table_ = dict(zip(seeds, values, strict=True))
    return run(name, lambda s: table_[s], seeds=seeds, cache=False, progress=False)


def manual_paired(a, b):
    d = [x - y for x, y in zip(a, b, strict=True)]
    n = len(d)
    mean = sum(d) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1))
    return {"mean": mean, "std": std, "se": std / math.sqrt(n), "wins": sum(v > 0 for v in d), "n": n}


@pytest.mark.parametrize(
    "a,b",
    [([0.91, 0.93, 0.90, 0.95, 0.92], [0.90, 0.90, 0.91, 0.92, 0.90]),
     ([0.5, 0.6, 0.7], [0.55, 0.65, 0.61]),
     ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], [0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])],
)
def test_compare_matches_a_manual_paired_computation(a, b):
    got = compare(result_of(a, name="a"), result_of(b, name="b"))
    expected = manual_paired(a, b)
    assert set(got) >= {"mean", "std", "se", "wins", "n", "verdict"}
    for key in ("mean", "std", "se"):
        assert got[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-15), key
    assert (got["wins"], got["n"]) == (expected["wins"], expected["n"])
    # swapping the arguments flips the sign, not the spread
    swapped = compare(result_of(b, name="b"), result_of(a, name="a"))
    assert swapped["mean"] == pytest.approx(-got["mean"], abs=1e-15)
    assert swapped["std"] == pytest.approx(got["std"]) and swapped["se"] == pytest.approx(got["se"])
    assert swapped["wins"] == sum(x < y for x, y in zip(a, b, strict=True))
    # plain per-seed sequences (paired by position) give the same numbers
    assert compare(a, b) == got and compare(np.asarray(a), result_of(b, name="b")) == got


DEVIATIONS = [-1.0, 0.0, 1.0, -2.0, 2.0]  # mean 0; sample std sqrt(10/4)
SE_UNIT = math.sqrt(10 / 4) / math.sqrt(5)
# Student's t quantiles from printed tables (two-sided 95 % and 90 %), the independent reference
T_975 = {1: 12.706, 2: 4.303, 4: 2.776, 7: 2.365, 9: 2.262, 30: 2.042}
T_95 = {4: 2.132}


@pytest.mark.parametrize("df", sorted(T_975))
def test_compare_threshold_is_students_t_quantile(df):
    n = df + 1
    a = [0.8 + 0.01 * i for i in range(n)]
    got = compare(a, [0.5] * n)
    assert got["t"] == pytest.approx(T_975[df], abs=1e-3) and got["n"] == n


@pytest.mark.parametrize(
    "multiple,level,verdict",
    [(2.80, 0.95, "better"), (2.75, 0.95, "no clear difference"), (-2.75, 0.95, "no clear difference"),
     (-2.80, 0.95, "worse"), (0.0, 0.95, "no clear difference"), (2.10, 0.90, "no clear difference"),
     (2.15, 0.90, "better"), (-2.15, 0.90, "worse")],
)
def test_compare_verdict_is_a_paired_t_test(multiple, level, verdict):
    """Differences d = c + deviations (fixed spread), with c just above / below t standard errors (5 seeds:
    t = 2.776 at the 95 % level, 2.132 at 90 %)."""
    scale = 0.01
    se = SE_UNIT * scale
    c = multiple * se
    b = [0.80, 0.82, 0.79, 0.85, 0.81]
    a = [bi + c + scale * dev for bi, dev in zip(b, DEVIATIONS, strict=True)]
    got = compare(result_of(a, name="a"), result_of(b, name="b"), level=level)
    assert got["se"] == pytest.approx(se, rel=1e-9)
    assert got["mean"] == pytest.approx(c, rel=1e-6, abs=1e-12)
    assert got["t"] == pytest.approx(T_975[4] if level == 0.95 else T_95[4], abs=1e-3)
    assert got["verdict"] == verdict


def test_compare_agrees_with_a_paired_t_test_p_value():
    """Independent reference: scipy's paired t-test; the verdict is clear exactly when p < 0.05."""
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 9))
        b = rng.normal(0.8, 0.02, n)
        a = b + rng.normal(rng.normal(0, 0.01), 0.01, n)
        p = stats.ttest_rel(a, b).pvalue
        assert (compare(a, b)["verdict"] != "no clear difference") == (p < 0.05), (a, b, p)


@pytest.mark.parametrize("level", [0.0, 1.0, 1.5, -0.1, "0.95"])
def test_compare_rejects_a_bad_level(level):
    with pytest.raises((ValueError, TypeError), match="level"):
        compare([0.9, 0.8], [0.7, 0.6], level=level)


def test_compare_with_itself_and_with_one_seed():
    r = result_of([0.9, 0.8, 0.85])
    same = compare(r, r)
    assert (same["mean"], same["std"], same["se"], same["wins"], same["verdict"]) == (0.0, 0.0, 0.0, 0,
                                                                                     "no clear difference")
    one = compare(result_of([0.9]), result_of([0.1]))
    assert one["n"] == 1 and one["wins"] == 1 and one["verdict"] == "no clear difference"


@pytest.mark.parametrize("seeds_b", [[0, 1, 3], [0, 1], [0, 1, 2, 3]])
def test_compare_needs_the_same_seeds(seeds_b):
    a = result_of([0.9, 0.8, 0.85], seeds=[0, 1, 2])
    b = result_of([0.5] * len(seeds_b), seeds=seeds_b)
    with pytest.raises(ValueError, match="seeds"):
        compare(a, b)


# ------------------------------------------------------------------------------------------
# table
# ------------------------------------------------------------------------------------------
def test_table_rows_show_mean_and_sample_std():
    kd_vals, base_vals = [0.9113, 0.9247, 0.9051, 0.9302, 0.9188], [0.8802, 0.8915, 0.8733]
    results = {"KD (T=4)": result_of(kd_vals, name="kd"), "no KD": result_of(base_vals, name="base")}
    md = table(results)
    lines = md.splitlines()
    assert lines[0].startswith("|") and set(lines[1].replace("|", "")) <= set("-: ")
    assert len(lines) == 2 + len(results)
    for line, (label, vals) in zip(lines[2:], [("KD (T=4)", kd_vals), ("no KD", base_vals)], strict=True):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert cells[0] == label
        mean, std = 100 * statistics.fmean(vals), 100 * statistics.stdev(vals)
        assert f"{mean:.2f} ± {std:.2f}" in cells, (line, mean, std)
        assert str(len(vals)) in cells
        assert float(cells[-1]) >= 0  # time per seed
    # other scale and digits; an iterable of results is labelled by name
    md3 = table([results["no KD"]], scale=1.0, digits=3)
    row = md3.splitlines()[2]
    assert row.split("|")[1].strip() == "base"
    assert f"{statistics.fmean(base_vals):.3f} ± {statistics.stdev(base_vals):.3f}" in row


def test_run_result_is_exported():
    assert experiment.RunResult is RunResult
    assert set(experiment.__all__) >= {"RunResult", "run", "compare", "table", "compare_family", "holm",
                                       "min_detectable_effect", "verdict_sentence"}


def test_compare_sequences_must_pair_up():
    with pytest.raises(ValueError, match="same number"):
        compare([0.9, 0.8], [0.9, 0.8, 0.7])
    with pytest.raises(ValueError, match="same number"):
        compare([], [])



# ------------------------------------------------------------------------------------------
# the statistics policy: p-values, minimum detectable effect, Holm's family, verdict sentences
# ------------------------------------------------------------------------------------------
def test_experiment_does_not_import_scipy_at_module_level():
    """A light core: scipy is imported inside the functions that need it, never when the module loads."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(experiment))
    top = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = [alias.name for node in top if isinstance(node, ast.Import) for alias in node.names]
    names += [node.module or "" for node in top if isinstance(node, ast.ImportFrom)]
    assert names and not [n for n in names if n.split(".")[0] == "scipy"], names


def test_compare_p_matches_scipy_paired_t_test():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    for _ in range(200):
        n = int(rng.integers(2, 13))
        b = rng.normal(0.8, 0.02, n)
        a = b + rng.normal(rng.normal(0, 0.01), rng.uniform(0.001, 0.02), n)
        got = compare(a, b)
        assert got["p"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-9, abs=1e-300), (a, b)
        # the verdict (threshold t) and the p-value agree
        assert (got["verdict"] != "no clear difference") == (got["p"] < 0.05)


def test_compare_p_and_mde_edge_cases():
    # every difference equal and nonzero: no spread, a certain difference
    up = compare([0.9, 0.8, 0.7], [0.8, 0.7, 0.6])  # d = 0.1 (up to rounding)
    assert up["p"] == pytest.approx(0.0, abs=1e-9) and up["verdict"] == "better"
    down = compare([0.5, 0.5, 0.5], [0.75, 0.75, 0.75])  # d = -0.25 exactly
    assert (down["std"], down["p"], down["mde"], down["verdict"]) == (0.0, 0.0, 0.0, "worse")
    # every difference 0: no evidence at all
    same = compare([0.9, 0.8, 0.85], [0.9, 0.8, 0.85])
    assert (same["p"], same["mde"], same["verdict"]) == (1.0, 0.0, "no clear difference")
    # one seed: no test
    one = compare([0.9], [0.1])
    assert math.isnan(one["p"]) and one["mde"] == math.inf and one["verdict"] == "no clear difference"
    assert min_detectable_effect(1, 0.5) == math.inf and min_detectable_effect(0, 0.5) == math.inf
    assert min_detectable_effect(7, 0.0) == 0.0


def _rejection_rate(n, std, delta, level, rng, experiments=4000):
    """Simulated power: the fraction of paired experiments (normal differences, true mean delta) that the
    two-sided paired t-test at ``level`` calls; the threshold is taken from compare itself."""
    t_crit = compare(np.arange(n, dtype=float), np.zeros(n), level=level)["t"]
    d = rng.normal(delta, std, size=(experiments, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    return float(np.mean(np.abs(t) > t_crit))


@pytest.mark.parametrize("n,level,power", [(2, 0.95, 0.8), (3, 0.95, 0.8), (5, 0.95, 0.8), (10, 0.90, 0.8),
                                           (5, 1 - 0.05 / 3, 0.8), (8, 0.95, 0.9), (30, 0.95, 0.8)])
def test_mde_is_detected_with_the_stated_power_in_simulation(n, level, power):
    rng = np.random.default_rng(n)
    std = 0.013
    mde = min_detectable_effect(n, std, level=level, power=power)
    assert _rejection_rate(n, std, mde, level, rng) == pytest.approx(power, abs=0.03)
    # and half of it is detected clearly less often; no effect is called at the rate 1 - level
    assert _rejection_rate(n, std, mde / 2, level, rng) < power - 0.15
    assert _rejection_rate(n, std, 0.0, level, rng) == pytest.approx(1 - level, abs=0.015)


def test_compare_reports_the_mde_of_its_n_and_spread():
    b = [0.80, 0.82, 0.79, 0.85, 0.81]
    a = [bi + 0.005 + 0.01 * dev for bi, dev in zip(b, DEVIATIONS, strict=True)]
    got = compare(a, b)
    assert got["power"] == 0.8
    assert got["mde"] == pytest.approx(min_detectable_effect(5, got["std"]), rel=1e-12)
    assert compare(a, b, power=0.9)["mde"] > got["mde"] > compare(a, b, level=0.9)["mde"]


def test_mde_for_many_seeds_approaches_the_normal_formula():
    """(z_0.975 + z_0.8) * std / sqrt(n), with the quantiles from printed normal tables."""
    z_975, z_80 = 1.959964, 0.841621
    for n, std in [(200, 1.0), (200, 0.02), (1000, 0.5)]:
        normal = (z_975 + z_80) * std / math.sqrt(n)
        got = min_detectable_effect(n, std)
        assert normal < got < 1.01 * normal, (n, got, normal)


@pytest.mark.parametrize("effect,n", [(0.5, 34), (0.8, 15)])
def test_mde_matches_tabulated_sample_sizes(effect, n):
    """G*Power (paired t-test, two-tailed, alpha 0.05, power 0.80): d_z = 0.5 needs 34 pairs (actual power
    0.8078), d_z = 0.8 needs 15 (0.8213). So with std 1 the MDE falls below the effect at that n, not at n - 1."""
    assert min_detectable_effect(n, 1.0) < effect < min_detectable_effect(n - 1, 1.0)
    # proportional to the spread
    assert min_detectable_effect(n, 0.02) == pytest.approx(0.02 * min_detectable_effect(n, 1.0), rel=1e-9)


@pytest.mark.parametrize("kwargs,name", [({"power": 1.0}, "power"), ({"power": 0.0}, "power"),
                                         ({"power": 0.04}, "power"), ({"level": 0.5, "power": 0.4}, "power"),
                                         ({"power": "0.8"}, "power"), ({"level": 1.0}, "level")])
def test_bad_power_is_rejected(kwargs, name):
    with pytest.raises(ValueError, match=name):
        compare([0.9, 0.8, 0.7], [0.7, 0.6, 0.6], **kwargs)
    with pytest.raises(ValueError, match=name):
        min_detectable_effect(5, 0.01, **kwargs)


def _holm_step_down(pvalues, alpha):
    """Holm (1979) as written: walk the p-values from the smallest; reject while p_(i) <= alpha / (m - i + 1),
    stop at the first that fails. Returns the set of rejected positions."""
    m = len(pvalues)
    rejected = set()
    for i, (p, pos) in enumerate(sorted((p, pos) for pos, p in enumerate(pvalues)), start=1):
        if p > alpha / (m - i + 1):
            break
        rejected.add(pos)
    return rejected


@pytest.mark.parametrize(
    "pvalues,adjusted",
    [([0.01, 0.04, 0.03], [0.03, 0.06, 0.06]),  # 3·0.01, max(3·0.01, 2·0.03), max(…, 1·0.04)
     ([0.02, 0.5, 0.001, 0.04], [0.06, 0.5, 0.004, 0.08]),
     ([0.01, 0.011, 0.5], [0.03, 0.03, 0.5]),  # 2·0.011 = 0.022 is lifted to the running maximum 0.03
     ([0.3, 0.6], [0.6, 0.6]),
     ([0.04], [0.04]),
     ([0.5, 0.6, 0.7], [1.0, 1.0, 1.0])],  # capped at 1
)
def test_holm_hand_computed(pvalues, adjusted):
    assert holm(pvalues) == pytest.approx(adjusted, abs=1e-15)


def test_holm_agrees_with_the_step_down_procedure():
    rng = np.random.default_rng(2)
    for _ in range(500):
        m = int(rng.integers(1, 7))
        p = rng.choice([rng.uniform(0, 0.1), rng.uniform(0, 1)], size=m).tolist()
        p = [round(x, int(rng.integers(2, 6))) for x in p]  # rounding makes ties
        adjusted = holm(p)
        assert all(a >= x for a, x in zip(adjusted, p, strict=True)) and max(adjusted) <= 1
        for alpha in (0.01, 0.05, 0.1, 0.2, 0.5):
            reject = {pos for pos, a in enumerate(adjusted) if a <= alpha}
            assert reject == _holm_step_down(p, alpha), (p, alpha)


def test_holm_nan_counts_in_the_family_but_is_never_rejected():
    got = holm([0.01, float("nan"), 0.02])
    assert got[0] == pytest.approx(0.03) and got[2] == pytest.approx(0.04) and math.isnan(got[1])
    with pytest.raises(ValueError, match="pvalues"):
        holm([0.5, 1.5])


def _pair(c, spread=0.01, seeds=5):
    b = [0.80, 0.82, 0.79, 0.85, 0.81, 0.83, 0.78][:seeds]
    return [bi + c + spread * dev for bi, dev in zip(b, DEVIATIONS + [0.5, -0.5], strict=False)], b


def test_compare_family_applies_holm_across_the_family():
    # p alone: 0.0132 (clear), 0.0132 (clear), 0.165 (not clear)
    family = {"KD beats no KD": _pair(0.03), ("LS", "no KD"): _pair(-0.03), "TAKD beats KD": _pair(0.012)}
    got = compare_family(family)
    assert list(got) == list(family)
    alone = {k: compare(a, b) for k, (a, b) in family.items()}
    p_holm = holm([r["p"] for r in alone.values()])
    for (label, r), ph in zip(got.items(), p_holm, strict=True):
        for key in ("mean", "std", "se", "t", "wins", "n", "p", "power"):  # the comparison on its own
            assert r[key] == alone[label][key], key
        assert r["verdict_unadjusted"] == alone[label]["verdict"]
        assert r["p_holm"] == pytest.approx(ph, rel=1e-12) and r["m"] == 3
        assert r["mde"] == pytest.approx(min_detectable_effect(r["n"], r["std"], level=1 - 0.05 / 3), rel=1e-12)
        assert r["mde"] > alone[label]["mde"]
    # Holm: 3 · 0.0132 = 0.040 < 0.05 for the smallest, then max(0.040, 2 · 0.0132) for the tie
    assert got["KD beats no KD"]["p_holm"] == pytest.approx(3 * alone["KD beats no KD"]["p"])
    assert got["KD beats no KD"]["verdict"] == "better" and got[("LS", "no KD")]["verdict"] == "worse"
    assert got["TAKD beats KD"]["verdict"] == "no clear difference"


def test_compare_family_can_overturn_an_unadjusted_verdict():
    """p = 0.0132 alone is clear at 5 %; among four comparisons with nothing else clear, 4 · 0.0132 = 0.053 is not."""
    family = {"claim": _pair(0.03), "b": _pair(0.0), "c": _pair(0.001), "d": _pair(-0.002)}
    got = compare_family(family)
    claim = got["claim"]
    assert claim["verdict_unadjusted"] == "better" and claim["verdict"] == "no clear difference"
    assert claim["p_holm"] == pytest.approx(4 * claim["p"]) and claim["m"] == 4
    # a family of one is the comparison alone, the MDE included
    single = compare_family({"claim": _pair(0.03)}, level=0.95)["claim"]
    assert single["verdict"] == "better" and single["p_holm"] == single["p"]
    assert single["mde"] == pytest.approx(compare(*_pair(0.03))["mde"], rel=1e-12)


def test_compare_family_with_a_one_seed_comparison():
    got = compare_family({"one": ([0.9], [0.8]), "five": _pair(0.03)})
    assert math.isnan(got["one"]["p_holm"]) and got["one"]["verdict"] == "no clear difference"
    assert got["one"]["mde"] == math.inf
    assert got["five"]["p_holm"] == pytest.approx(2 * got["five"]["p"]) and got["five"]["verdict"] == "better"


@pytest.mark.parametrize("bad", [{}, [(0.1, 0.2)], {"x": ([0.9, 0.8],)}, {"x": [0.9, 0.8, 0.7]}])
def test_compare_family_rejects_a_malformed_family(bad):
    with pytest.raises(ValueError, match="comparisons"):
        compare_family(bad)


# _pair(c): d = c + 0.01 · (-1, 0, 1, -2, 2), so mean = c, se = 0.01 · sqrt(2.5 / 5) = 0.00707 (0.71 points)
@pytest.mark.parametrize(
    "c,claim,family,sentence",
    [(0.03, "better", False,
      "KD beats no KD by 3.00 ± 0.71 points (mean ± s.e., 5 seeds, p = 0.013): the claim holds."),
     (0.03, "better", True,
      "KD beats no KD by 3.00 ± 0.71 points (mean ± s.e., 5 seeds, Holm-adjusted p = 0.026): the claim holds."),
     (-0.03, "better", True,
      "no KD beats KD by 3.00 ± 0.71 points (mean ± s.e., 5 seeds, Holm-adjusted p = 0.026): the claim that KD "
      "beats no KD is contradicted."),
     (-0.03, "worse", False,
      "no KD beats KD by 3.00 ± 0.71 points (mean ± s.e., 5 seeds, p = 0.013): the claim holds."),
     (0.012, "better", False,
      "No clear difference between KD and no KD (KD − no KD = +1.20 ± 0.71 points, mean ± s.e., 5 seeds, "
      "p = 0.16): the claim that KD beats no KD is not shown at this scale; an effect smaller than 2.66 points "
      "(the minimum detectable effect at 80 % power) could still be hiding."),
     (0.012, "better", True,
      "No clear difference between KD and no KD (KD − no KD = +1.20 ± 0.71 points, mean ± s.e., 5 seeds, "
      "Holm-adjusted p = 0.33): the claim that KD beats no KD is not shown at this scale; an effect smaller than "
      "3.24 points (the minimum detectable effect at 80 % power) could still be hiding."),
     (0.012, "no difference", False,
      "No clear difference between KD and no KD (KD − no KD = +1.20 ± 0.71 points, mean ± s.e., 5 seeds, "
      "p = 0.16): consistent with the claim that they perform the same, not a proof of it: an effect smaller "
      "than 2.66 points (the minimum detectable effect at 80 % power) could still be hiding."),
     (0.03, "no difference", False,
      "KD beats no KD by 3.00 ± 0.71 points (mean ± s.e., 5 seeds, p = 0.013): the claim that KD and no KD "
      "perform the same is contradicted.")],
)
def test_verdict_sentence(c, claim, family, sentence):
    """Numbers by hand: t = c / se; p from the t table with 4 df (t = 4.24 -> 0.013, t = 1.70 -> 0.16); the MDE
    is 1.682 · std (5 seeds, 95 %) = 2.66 points and, in a family of two (Bonferroni 97.5 %), 2.050 · std."""
    a, b = _pair(c)
    result = compare_family({"claim": (a, b), "other": _pair(0.0)})["claim"] if family else compare(a, b)
    assert verdict_sentence("KD", "no KD", result, claim=claim) == sentence


def test_verdict_sentence_edge_cases_and_formatting():
    one = compare([0.9], [0.85])
    assert verdict_sentence("A", "B", one) == ("Only one seed (A − B = +5.00 points), too few for a test: the claim "
                                               "that A beats B is not tested.")
    same = compare([0.9, 0.8, 0.85], [0.9, 0.8, 0.85])
    assert verdict_sentence("A", "B", same) == "A and B score the same on all 3 seeds: the claim that A beats B is " \
                                               "not shown."
    assert verdict_sentence("A", "B", same, claim="no difference").endswith("consistent with the claim.")
    certain = compare([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    assert verdict_sentence("A", "B", certain) == ("A beats B by 25.00 ± 0.00 points (mean ± s.e., 3 seeds, "
                                                   "p < 0.001): the claim holds.")
    # another scale and unit: a loss in nats, printed as is
    loss = compare([1.30, 1.20, 1.25], [1.00, 0.95, 1.05])
    text = verdict_sentence("A", "B", loss, unit="nats", scale=1.0, digits=3)
    assert text.startswith("A beats B by 0.250 ± 0.029 nats (mean ± s.e., 3 seeds, p = 0.")
    with pytest.raises(ValueError, match="claim"):
        verdict_sentence("A", "B", certain, claim="beats")
    with pytest.raises(ValueError, match="result"):
        verdict_sentence("A", "B", {"mean": 0.1})


# ---- stored results ------------------------------------------------------------------------------
def _noisy(seed):
    """A deterministic 'experiment': its metric is a function of the seed."""
    return {"acc": 0.5 + 0.01 * seed, "loss": 1.0 / (1 + seed)}


def test_stored_tables_record_reproduce_and_read(tmp_path, monkeypatch):
    monkeypatch.setenv("KDEDU_RESULTS_DIR", str(tmp_path))
    monkeypatch.setenv("KDEDU_RESULTS_COMMAND", "make results NB=book/99-test.ipynb")
    monkeypatch.setenv("KDEDU_RESULTS", "record")
    calls = []

    def fn(seed):
        calls.append(seed)
        return _noisy(seed)

    a = experiment.run("a", fn, seeds=[0, 1, 2], config={"n": 1}, table="t", root=tmp_path / "cache")
    b = experiment.run("b", lambda s: _noisy(s + 10), seeds=[0, 1, 2], config={"n": 2}, table="t",
                       root=tmp_path / "cache")
    assert calls == [0, 1, 2]
    data = json.loads((tmp_path / "t.json").read_text())
    assert set(data["runs"]) == {"a", "b"}
    prov = data["runs"]["a"]["provenance"]
    assert prov["command"] == "make results NB=book/99-test.ipynb"
    assert {"commit", "versions", "machine", "wall_time_s", "profile", "recorded"} <= set(prov)
    assert prov["versions"]["torch"] == torch.__version__ and data["runs"]["a"]["values"] == a.values
    assert prov["machine"]["numerics"] == experiment.numerics_fingerprint()
    # recording again does not reuse the experiment cache: every stored number is computed anew
    experiment.run("a", fn, seeds=[0, 1, 2], config={"n": 1}, table="t", root=tmp_path / "cache")
    assert calls == [0, 1, 2, 0, 1, 2]

    # reading: the same numbers, with provenance, and a one-line summary
    monkeypatch.delenv("KDEDU_RESULTS")
    runs = experiment.stored("t")
    assert runs["b"].values == b.values and runs["a"].seeds == [0, 1, 2]
    assert isinstance(runs["a"], experiment.RunResult) and runs["a"].provenance["command"].startswith("make")
    assert experiment.compare(runs["b"], runs["a"])["verdict"] == "better"
    line = experiment.provenance("t")
    assert "2 runs of 3 seeds" in line and "make results NB=book/99-test.ipynb" in line
    with pytest.raises(KeyError, match="has no run"):
        experiment.stored("t", "c")
    with pytest.raises(FileNotFoundError, match="make results"):
        experiment.stored("missing")
    with pytest.raises(ValueError, match="plain name"):
        experiment.stored("../t")

    # reproducing: one (run, seed) per table is recomputed, the rest comes from the store
    monkeypatch.setenv("KDEDU_RESULTS", "reproduce")
    experiment._REPRODUCED.clear()
    calls.clear()
    again = experiment.run("a", fn, seeds=[0, 1, 2], config={"n": 1}, table="t")
    assert calls == [0] and again.values == a.values
    experiment.run("b", lambda s: pytest.fail("a table is checked once"), seeds=[0, 1, 2], config={"n": 2}, table="t")
    with pytest.raises(ValueError, match=r"another configuration.*\['n'\]"):
        experiment.run("a", fn, seeds=[0, 1, 2], config={"n": 99}, table="t")
    # a config that differs only in the checksum of trained weights: said so (another machine's arithmetic)
    monkeypatch.setenv("KDEDU_RESULTS", "record")
    experiment.run("c", fn, seeds=[0, 1], config={"teacher": "a" * 64}, table="t2", root=tmp_path / "cache")
    monkeypatch.setenv("KDEDU_RESULTS", "reproduce")
    with pytest.raises(ValueError, match=r"checksum of trained weights differs \(\['teacher'\]\)"):
        experiment.run("c", fn, seeds=[0, 1], config={"teacher": "b" * 64}, table="t2")
    with pytest.raises(ValueError, match="another configuration"):
        experiment.run("c", fn, seeds=[0, 1], config={"teacher": "b" * 63}, table="t2")
    experiment._REPRODUCED.clear()
    with pytest.raises(AssertionError, match="does not reproduce"):
        experiment.run("a", lambda s: {"acc": 0.9}, seeds=[0, 1, 2], config={"n": 1}, table="t")
    experiment._REPRODUCED.clear()


def test_results_mode_is_validated(monkeypatch):
    monkeypatch.setenv("KDEDU_RESULTS", "sometimes")
    with pytest.raises(ValueError, match="KDEDU_RESULTS"):
        experiment.results_mode()
    monkeypatch.delenv("KDEDU_RESULTS")
    assert experiment.results_mode() is None
