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
from kdedu.experiment import RunResult, compare, run, table


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
    assert set(experiment.__all__) >= {"RunResult", "run", "compare", "table"}


def test_compare_sequences_must_pair_up():
    with pytest.raises(ValueError, match="same number"):
        compare([0.9, 0.8], [0.9, 0.8, 0.7])
    with pytest.raises(ValueError, match="same number"):
        compare([], [])
