"""The exercise checkers of chapter 15 (non-autoregressive translation).

For every checker: a correct answer passes, plausible wrong answers fail (with a message), and ``None`` as "not
answered yet" is checked for every exercise in tests/test_check.py. The checker's perfect-NAT mass is checked
against a brute-force enumeration of every output the factorised model can write.

The experiment exercise 15.sampled is tested in a smaller setting than the chapter's (the fixture
``small_sampled`` swaps it into the checker): a teacher trained for 2 epochs instead of 4, NATs trained for 2
epochs and scored on the first 100 test sources. The checker's logic is the same; the chapter itself asserts
that its ``SETTING`` is the checker's ``SAMPLED_SETTING``.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import defaultdict

import numpy as np
import pytest
import torch
from checks import LazyAnswer, answer_tests

import kdedu.zoo
from kdedu import check
from kdedu.check import ch15

SMALL_TEACHER = {"num_epochs": 2}  # recipe overrides of the "three-languages" teacher for the tests
SMALL_SETTING = {**ch15.SAMPLED_SETTING, "num_epochs": 2, "warmup_steps": 10, "n_test": 100}
SMALL_SEEDS = [1, 2, 5]  # seeds whose shares differ by more than the checker's tolerance (checked below)


def _verdict(exercise_id, answer):
    return check.exercise(exercise_id, answer, verbose=False)


def mass_by_enumeration(dist: dict) -> float:
    """The perfect NAT's probability of the sentences of dist, by writing out its whole distribution: for each
    length, every combination of the words seen at each position, with probability p(L) * prod of marginals."""
    by_length = defaultdict(dict)
    for y, p in dist.items():
        by_length[len(y.split())][y] = p
    q = {}
    for L, group in by_length.items():
        p_len = sum(group.values())
        columns = [sorted({y.split()[t] for y in group}) for t in range(L)]
        for words in itertools.product(*columns):
            prob = p_len
            for t, w in enumerate(words):
                prob *= sum(p for y, p in group.items() if y.split()[t] == w) / p_len
            q[" ".join(words)] = prob
    assert math.isclose(sum(q.values()), 1.0, rel_tol=1e-9)  # a distribution over all the outputs it can write
    return sum(q.get(y, 0.0) for y in dist)


def test_perfect_nat_mass_matches_enumeration_and_known_limits():
    for dist in ch15._toy_distributions():
        assert math.isclose(ch15._ideal_nat_mass(dist), mass_by_enumeration(dist), rel_tol=1e-12)
    assert ch15._ideal_nat_mass({"a b c": 1.0}) == 1.0                     # one target: nothing to mix
    assert math.isclose(ch15._ideal_nat_mass({"a b": 0.5, "c d": 0.5}), 0.5)  # two disjoint modes: half leaks
    k, T = 3, 4  # k translations with no word in common, all of length T: mass k * (1/k)^T
    dist = {" ".join(f"w{i}{t}" for t in range(T)): 1 / k for i in range(k)}
    assert math.isclose(ch15._ideal_nat_mass(dist), k * (1 / k) ** T)


def enumerate_one_language(L, k):
    """Brute force: the share of the k^L language assignments of L positions that use one language."""
    return sum(len(set(a)) == 1 for a in itertools.product(range(k), repeat=L)) / k ** L


@pytest.fixture(scope="module")
def small_sampled():
    """The smaller setting of 15.sampled, swapped into the checker (and its caches emptied before and after)."""
    real_teacher = kdedu.zoo.seq2seq_teacher
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kdedu.zoo, "seq2seq_teacher", lambda name, **kw: real_teacher(name, **{**kw, **SMALL_TEACHER}))
        mp.setattr(ch15, "SAMPLED_SETTING", SMALL_SETTING)
        ch15._sampled_transfer_set_of.cache_clear()
        ch15._sampled_nat_mixed.cache_clear()
        yield
    ch15._sampled_transfer_set_of.cache_clear()
    ch15._sampled_nat_mixed.cache_clear()
    _sampled_runs.cache_clear()


@functools.cache
def _sampled_runs() -> dict:
    """The exercise's experiment, done as the chapter's solution does it (once per test session, under
    small_sampled): the teacher's samples (seed 0) on the first n_train training sources, then a NAT trained as
    the chapter's train_nat, for each of SMALL_SEEDS, scored on the first n_test test sources."""
    import kdedu
    from kdedu.data import THREE_LANGUAGES, corpus_conditional_entropy, mixes_languages, translation, translation_loader
    from kdedu.methods import NATLoss
    from kdedu.models import NAT, translate

    s = SMALL_SETTING
    teacher = kdedu.zoo.seq2seq_teacher("three-languages", verbose=False)
    vocab = teacher.vocab
    train = translation("train", target=THREE_LANGUAGES, limit=s["n_train"])
    test_sources = translation("test", target=THREE_LANGUAGES).sources[:s["n_test"]]
    sampled_set = train.with_targets(translate(teacher, train.sources, vocab, strategy="sample", seed=0))

    def mixed(seed):
        torch.manual_seed(seed)
        model = NAT(len(vocab), 64, 4, 2, 2, 128, 0.1)
        loader = translation_loader(sampled_set, vocab, 64, shuffle=True, seed=None)
        kdedu.fit(NATLoss(model, 0.1), loader, None, num_epochs=s["num_epochs"], lr=3e-3, schedule="linear",
                  warmup_steps=s["warmup_steps"], seed=seed, progress=False)
        return float(np.mean([mixes_languages(y) for y in translate(model, test_sources, vocab)]))

    return {"entropy": corpus_conditional_entropy(sampled_set)["entropy"], "seeds": list(SMALL_SEEDS),
            "mixed": [mixed(seed) for seed in SMALL_SEEDS]}


def Sampled(what: str, change=lambda answer: answer) -> LazyAnswer:
    return LazyAnswer(_sampled_runs, what, change)


def _with(**changes):
    def change(answer):
        return {**answer, **{k: (v(answer) if callable(v) else v) for k, v in changes.items()}}
    return change


def _moved(values, k=5, n=SMALL_SETTING["n_test"]):
    return [v + k / n if v + k / n <= 1 else v - k / n for v in values]


def _beam_entropy(answer):
    import kdedu
    from kdedu.data import THREE_LANGUAGES, corpus_conditional_entropy, translation
    from kdedu.methods import seq_kd_dataset

    teacher = kdedu.zoo.seq2seq_teacher("three-languages", verbose=False)
    train = translation("train", target=THREE_LANGUAGES, limit=SMALL_SETTING["n_train"])
    return corpus_conditional_entropy(seq_kd_dataset(teacher, train, teacher.vocab, beam_size=5))["entropy"]


def _raw_entropy(answer):
    from kdedu.data import THREE_LANGUAGES, corpus_conditional_entropy, translation

    return corpus_conditional_entropy(translation("train", target=THREE_LANGUAGES,
                                                  limit=SMALL_SETTING["n_train"]))["entropy"]


CORRECT = {
    "15.one-language": [lambda L, k: k * (1 / k) ** L, lambda L, k: k ** (1 - L),
                        lambda L, k: torch.tensor(k ** (1. - L))],  # a float32 tensor is fine too
    "15.ideal-nat": [mass_by_enumeration, ch15._ideal_nat_mass],
    "15.sampled": [
        Sampled("as the chapter's solution makes it"),
        Sampled("arrays and tuples", _with(seeds=lambda a: tuple(a["seeds"]), mixed=lambda a: np.array(a["mixed"]),
                                           entropy=lambda a: torch.tensor(a["entropy"]))),
    ],
}

WRONG = {
    "15.one-language": [
        lambda L, k: (1 / k) ** L,  # one given language
        lambda L, k: 1 / k,         # ignores the length
        lambda L, k: 1 - k * (1 / k) ** L,  # the complement: a mixed output
        lambda L, k: k * (1 / k) ** (L - 1),
        "not a function",
    ],
    "15.ideal-nat": [
        lambda dist: 1.0,  # a NAT keeps every translation together
        lambda dist: ch15._pooled_mass(dist),  # positions pooled over lengths
        lambda dist: sum(p * p for p in dist.values()),
        lambda dist: max(dist.values()),
    ],
    "15.sampled": [
        Sampled("another seed's shares", _with(mixed=lambda a: a["mixed"][1:] + a["mixed"][:1])),
        Sampled("shares made up", _with(mixed=lambda a: _moved(a["mixed"]))),
        Sampled("the beam-distilled set's entropy", _with(entropy=_beam_entropy)),
        Sampled("the raw data's entropy", _with(entropy=_raw_entropy)),
        Sampled("percentages", _with(mixed=lambda a: [100 * v for v in a["mixed"]])),
        Sampled("too few seeds", _with(seeds=[0, 1], mixed=lambda a: a["mixed"][:2])),
        Sampled("one value missing", _with(mixed=lambda a: a["mixed"][:-1])),
        {"seeds": [0, 1, 2], "mixed": [0.9, 0.8, 0.85]},  # no entropy
        [0.9, 0.8, 0.85],
    ],
}

FAST = ("15.one-language", "15.ideal-nat")  # 15.sampled trains NATs: its tests are below, marked slow
test_correct_answers_pass, test_wrong_answers_fail = answer_tests({k: CORRECT[k] for k in FAST},
                                                                  {k: WRONG[k] for k in FAST})


def test_every_chapter_15_exercise_is_tested():
    ours = {k for k in check.EXERCISES if k.startswith("15.")}
    assert ours == set(CORRECT) == set(WRONG)


@pytest.mark.parametrize("L,k", [(1, 3), (2, 3), (6, 3), (4, 2), (3, 4)])
def test_one_language_reference_is_the_enumeration(L, k):
    assert math.isclose(CORRECT["15.one-language"][0](L, k), enumerate_one_language(L, k), rel_tol=1e-12)


def test_targeted_messages():
    assert "one given language" in _verdict("15.one-language", WRONG["15.one-language"][0]).message
    assert "does not depend on the length" in _verdict("15.one-language", WRONG["15.one-language"][1]).message
    assert "cannot keep the words" in _verdict("15.ideal-nat", WRONG["15.ideal-nat"][0]).message
    assert "pooled the positions" in _verdict("15.ideal-nat", WRONG["15.ideal-nat"][1]).message


@pytest.mark.slow  # trains a 2-epoch teacher, samples 1,500 translations twice, trains 3 + 1 small NATs
def test_sampled_correct_answers_pass(small_sampled):
    mixed = _sampled_runs()["mixed"]
    tolerance = 2 / SMALL_SETTING["n_test"]  # the checker's on a CPU: a wrong seed's share must lie further away
    assert all(abs(a - b) > tolerance for a, b in itertools.combinations(mixed, 2)), \
        f"the shares {mixed} of SMALL_SEEDS are too close for 'another seed's shares' to be caught: pick other seeds"
    for answer in CORRECT["15.sampled"]:
        result = _verdict("15.sampled", answer)
        assert result, f"{answer!r}: {result.message}"
        assert "reproduces" in result.message


@pytest.mark.slow  # shares the experiment of the test above (computed once per worker)
def test_sampled_wrong_answers_fail_with_their_messages(small_sampled):
    for answer in WRONG["15.sampled"]:
        result = _verdict("15.sampled", answer)
        assert not result and "not answered" not in result.message, f"{answer!r} passed"
    wrong = {a.what: a for a in WRONG["15.sampled"] if isinstance(a, LazyAnswer)}
    expected = {
        "the beam-distilled set's entropy": "is not the pooled choice entropy of the sampled transfer set",
        "the raw data's entropy": "raw training data",
        "shares made up": "trained on the sampled transfer set gives",
        "percentages": "percentages",
        "too few seeds": "at least 3",
    }
    for what, message in expected.items():
        assert message in _verdict("15.sampled", wrong[what]).message, what
    assert "lacks the key(s) entropy" in _verdict("15.sampled", WRONG["15.sampled"][-2]).message


def test_hints_give_no_answer():
    assert "k * (1 / k)" not in check.hint("15.one-language", verbose=False)
    hint = check.hint("15.sampled", verbose=False)
    assert hint and not any(word in hint for word in ("strategy=\"sample\"", "0.", "entropy ="))
