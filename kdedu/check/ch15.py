"""Auto-checks for the exercises of chapter 15, non-autoregressive translation (registered with
:func:`kdedu.check.register`)."""

from __future__ import annotations

import functools
import math
from collections import defaultdict

from kdedu.check import (
    Wrong,
    answer_accuracies,
    answer_dict,
    answer_number,
    answer_seeds,
    close,
    function,
    picked,
    register,
)


@register("15.one-language", hint="each position draws its language on its own. Which events are disjoint?")
def _check_15_one_language(fn):
    function("p_one_language(L, k)", fn)
    for L, k in ((6, 3), (2, 3), (9, 3), (4, 2), (5, 4), (3, 1), (1, 3)):
        expected = k * (1 / k) ** L  # k languages, each with probability (1/k)^L for all L positions
        got = answer_number(f"your p_one_language({L}, {k})", fn(L, k))
        if math.isclose(got, expected, rel_tol=1e-6):
            continue
        if k > 1 and math.isclose(got, (1 / k) ** L, rel_tol=1e-6):
            raise Wrong(f"p_one_language({L}, {k}) = {got:.4g} is the probability of one given language; any of the "
                        f"{k} languages will do.")
        if L > 1 and math.isclose(got, 1 / k, rel_tol=1e-6):
            raise Wrong(f"p_one_language({L}, {k}) = {got:.4g} does not depend on the length; every further position "
                        "is another independent draw.")
        close(f"your p_one_language({L}, {k})", got, expected, rel=1e-6, abs_=0.0)
    return ("k (1/k)^L = k^(1 - L): a one-language output becomes exponentially rare with the length L, 1 in 243 for "
            "six words in three languages.")


def _ideal_nat_mass(dist: dict) -> float:
    """The probability that the best NAT for ``dist`` gives to the sentences of ``dist``: its length distribution
    ``p(L)`` and, for each length, the marginal of each position given the length (both exact)."""
    by_length = defaultdict(dict)
    for y, p in dist.items():
        by_length[len(y.split())][y] = p
    mass = 0.0
    for L, group in by_length.items():
        p_len = sum(group.values())
        marginals = [defaultdict(float) for _ in range(L)]
        for y, p in group.items():
            for t, w in enumerate(y.split()):
                marginals[t][w] += p / p_len
        mass += sum(p_len * math.prod(marginals[t][w] for t, w in enumerate(y.split())) for y in group)
    return mass


def _pooled_mass(dist: dict) -> float:
    """A typical mistake: the position marginals pooled over every length (and no length factor)."""
    marginals = defaultdict(lambda: defaultdict(float))
    for y, p in dist.items():
        for t, w in enumerate(y.split()):
            marginals[t][w] += p
    return sum(math.prod(marginals[t][w] for t, w in enumerate(y.split())) for y in dist)


def _toy_distributions() -> list:
    """Small distributions {sentence: probability} with ambiguity within and across lengths."""
    return [
        {"a b": 0.5, "c d": 0.5},
        {"danke schoen": 0.5, "vielen dank": 0.5},
        {"x y": 1.0},
        {"a b": 0.6, "c d": 0.3, "e": 0.1},
        {"le chien dort": 0.35, "le toutou dort": 0.15, "der hund schlaeft": 0.3, "el perro duerme": 0.2},
        {"a b c": 0.2, "a x c": 0.2, "d b c": 0.1, "p q": 0.25, "p r": 0.15, "z": 0.1},
    ]


@register("15.ideal-nat", hint="a NAT first picks a length, then every position independently given that length: "
                               "work out its length distribution and the word marginals of each position for each "
                               "length, then add up the probability it gives each sentence of dist.")
def _check_15_ideal_nat(fn):
    function("ideal_nat_mass(dist)", fn)
    for dist in _toy_distributions():
        expected = _ideal_nat_mass(dist)
        got = answer_number(f"your ideal_nat_mass({dist})", fn(dict(dist)))
        if math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-9):
            continue
        if math.isclose(got, 1.0) and expected < 1 - 1e-9:
            raise Wrong(f"ideal_nat_mass({dist}) = 1: a NAT cannot keep the words of one translation together, so "
                        "part of its probability goes to sentences outside dist.")
        if math.isclose(got, _pooled_mass(dist), rel_tol=1e-6):
            raise Wrong(f"ideal_nat_mass({dist}) = {got:.4g}: you pooled the positions of sentences of different "
                        "lengths; the NAT predicts the length first and the words given that length.")
        close(f"your ideal_nat_mass({dist})", got, expected, rel=1e-6, abs_=1e-9)
    return ("a NAT that learned the data exactly still spreads its probability over mixtures of the translations: "
            "for two equally likely two-word translations with no word in common, only half of it stays on them.")


# ------------------------------------------------------------------------------------------------
# 15.sampled: an experiment. The reader distils the teacher by sampling instead of beam search and trains the
# chapter's NAT on the result; the checker recomputes the transfer set's entropy and trains one seed again.
# ------------------------------------------------------------------------------------------------
SAMPLED_SETTING = {"n_train": 1500, "d_model": 64, "num_heads": 4, "layers": 2, "dim_feedforward": 128,
                   "dropout": 0.1, "num_epochs": 5, "lr": 3e-3, "warmup_steps": 30, "batch_size": 64,
                   "length_weight": 0.1, "sample_seed": 0, "min_seeds": 3, "n_test": 500}
"""The chapter's live setting (its ``train_nat`` in the ``fast`` and ``full`` profiles; the chapter asserts that
its ``SETTING`` is contained in this dict), the sampling seed, the number of seeds asked for and of test sources
scored (the first ``n_test``: all 500 in the chapter). The tests swap in a smaller setting."""


def _test_sources(n_test: int) -> list:
    from kdedu import data

    test = data.translation("test", target=data.THREE_LANGUAGES)
    if not 0 < n_test <= len(test):
        raise ValueError(f"n_test must be in 1..{len(test)}, got {n_test}")
    return test.sources[:n_test]


def _sampled_transfer_set(sample_seed: int):
    """The first ``n_train`` training sources with the teacher's sampled translations (temperature 1)."""
    return _sampled_transfer_set_of(sample_seed, SAMPLED_SETTING["n_train"])


@functools.lru_cache(maxsize=2)
def _sampled_transfer_set_of(sample_seed: int, n_train: int):
    from kdedu import data, zoo
    from kdedu.models import translate

    teacher = zoo.seq2seq_teacher("three-languages", verbose=False)
    train = data.translation("train", target=data.THREE_LANGUAGES, limit=n_train)
    return train.with_targets(translate(teacher, train.sources, teacher.vocab, strategy="sample",
                                        seed=sample_seed)), teacher.vocab


def sampled_nat_mixed(seed: int, sample_seed: int = 0) -> float:
    """Share of the test translations that mix languages, for the chapter's NAT trained on the sampled transfer set.

    The same steps as the chapter's ``train_nat``, with :data:`SAMPLED_SETTING`: ``torch.manual_seed(seed)``, then
    ``NAT(len(vocab), 64, 4, 2, 2, 128, 0.1)``, batches of 64 in an order set by ``fit(..., seed=seed)``, 5 epochs
    of ``NATLoss(nat, 0.1)`` at lr 3e-3 with a linear schedule and 30 warm-up steps; then parallel decoding of the
    500 test sources.
    """
    return _sampled_nat_mixed(seed, sample_seed, tuple(sorted(SAMPLED_SETTING.items())))


@functools.lru_cache(maxsize=16)  # a resubmitted answer is checked again in no time
def _sampled_nat_mixed(seed: int, sample_seed: int, setting: tuple) -> float:
    import torch

    from kdedu import data
    from kdedu.methods import NATLoss
    from kdedu.models import NAT, translate
    from kdedu.train import fit

    s = dict(setting)
    split, vocab = _sampled_transfer_set_of(sample_seed, s["n_train"])
    torch.manual_seed(seed)
    nat = NAT(len(vocab), s["d_model"], s["num_heads"], s["layers"], s["layers"], s["dim_feedforward"], s["dropout"])
    loader = data.translation_loader(split, vocab, s["batch_size"], shuffle=True, seed=None)
    fit(NATLoss(nat, s["length_weight"]), loader, None, num_epochs=s["num_epochs"], lr=s["lr"], schedule="linear",
        warmup_steps=s["warmup_steps"], seed=seed, progress=False)
    out = translate(nat, _test_sources(s["n_test"]), vocab)
    return sum(map(data.mixes_languages, out)) / len(out)


@register("15.sampled", hint="make the transfer set as the chapter makes the distilled one, with the teacher's "
                             "sampling strategy in place of its beam search (and the sampling seed the exercise "
                             "gives); then train and score exactly as the chapter's NAT runs do, seed by seed.")
def _check_15_sampled(answer):
    from kdedu import data

    s = SAMPLED_SETTING
    answer_dict(answer, ("seeds", "entropy", "mixed"))
    seeds = answer_seeds(answer, s["min_seeds"])
    entropy = answer_number('answer["entropy"]', answer["entropy"])
    split, _ = _sampled_transfer_set(s["sample_seed"])
    estimate = data.corpus_conditional_entropy(split)
    expected = estimate["entropy"]
    train = data.translation("train", target=data.THREE_LANGUAGES, limit=s["n_train"])
    raw = data.corpus_conditional_entropy(train)["entropy"]
    if not math.isclose(entropy, expected, abs_tol=0.02):
        if math.isclose(entropy, raw, abs_tol=1e-3):
            raise Wrong('answer["entropy"] is the raw training data\'s; measure the sampled transfer set.')
        if math.isclose(entropy, data.conditional_entropy(train), abs_tol=1e-3):
            raise Wrong('answer["entropy"] is the grammar\'s true entropy; estimate it from the sampled targets.')
        raise Wrong(f'answer["entropy"] = {entropy:.3f} nats is not the pooled choice entropy of the '
                    f"sampled transfer set (the first {s['n_train']} training sources, sampling seed "
                    f"{s['sample_seed']}).")
    mixed = answer_accuracies('answer["mixed"]', answer["mixed"], len(seeds), s["n_test"], unit="test sentences")
    i = picked([seeds, mixed, round(entropy, 6)], len(seeds))  # one seed, fixed by the answer itself
    again = sampled_nat_mixed(seeds[i], s["sample_seed"])
    from kdedu.train import default_device

    tolerance = (2 if default_device().type == "cpu" else 10) / s["n_test"] + 1e-9
    if abs(again - mixed[i]) > tolerance:
        raise Wrong(f'seed {seeds[i]}: your answer["mixed"] says {100 * mixed[i]:.1f} %, but the chapter\'s NAT '
                    f"trained on the sampled transfer set gives {100 * again:.1f} %. Check the transfer set, the "
                    "training steps and the order of the values.")
    mean = sum(mixed) / len(mixed)
    return (f"your seed {seeds[i]} reproduces. The sampled transfer set's pooled choice entropy is {expected:.2f} "
            f"nats (the raw training data's: {raw:.2f}), estimated from the {100 * estimate['valid']:.1f} % of the "
            f"samples that are valid translations; the NAT trained on it mixes languages in {100 * mean:.1f} % of its "
            "outputs.")
