"""The grammar translation corpora: determinism, true distributions against sampling, entropy, vocabularies,
batches, and the online loader on a local fixture."""

from __future__ import annotations

import json
import math
import random
from collections import Counter

import pytest
import torch

from kdedu.data import (
    THREE_LANGUAGES,
    SeqVocab,
    conditional_entropy,
    corpus_conditional_entropy,
    in_grammar,
    languages_of,
    mixes_languages,
    modes,
    translation,
    translation_loader,
    translation_pairs,
    translation_vocab,
    true_logprob,
)
from kdedu.data.translation import LANGUAGES, _choice_points, _corpus, _sample, parse_source


def test_corpus_is_deterministic_per_seed_and_splits_are_disjoint():
    a = translation("train")
    _corpus.cache_clear()
    b = translation("train")
    assert a.sources == b.sources and a.targets == b.targets and a is not b
    assert translation("train", seed=1).sources != a.sources
    sets = [set(translation(s).sources) for s in ("train", "val", "test")]
    assert [len(s) for s in sets] == [4000, 300, 500]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert all(3 <= len(s.split()) <= 8 for s in a.sources)
    assert len(translation("val", limit=7)) == 7


def test_every_target_is_a_valid_translation_and_sources_parse():
    for target in ("fr", "de", "es", THREE_LANGUAGES):
        split = translation("val", target=target, domain=("animals", "office"))
        assert all(in_grammar(split))
        assert {d for d in split.domains} == {"animals", "office"}
    tagged = translation("val", target=THREE_LANGUAGES, tag=True)
    for s, t, lang in zip(tagged.sources, tagged.targets, tagged.languages, strict=True):
        assert s.startswith(f"<2{lang}> ") and languages_of(t) == {lang}
    with pytest.raises(ValueError, match="not in the grammar"):
        parse_source("the dog the cat")
    with pytest.raises(ValueError, match="target"):
        translation("train", target="xx")
    with pytest.raises(ValueError, match="split"):
        translation("dev")


def test_true_distribution_matches_sampling_frequencies():
    """Sample one source's translation many times through the sampler; compare with the enumerated p(y | x)
    by a chi-square statistic (df = support - 1; the 99.9 % quantile by the Wilson-Hilferty approximation)."""
    split = translation("train", target="fr")
    i = max(range(200), key=lambda j: len(split.distribution(j)))       # a source with many translations
    dist = split.distribution(i)
    assert math.isclose(sum(dist.values()), 1.0, abs_tol=1e-9)
    rng, n = random.Random(123), 20000
    counts = Counter(_sample(parse_source(split.sources[i]), "fr", rng) for _ in range(n))
    assert set(counts) <= set(dist)
    chi2 = sum((counts.get(t, 0) - n * p) ** 2 / (n * p) for t, p in dist.items())
    df = len(dist) - 1
    z = 3.09  # 99.9 %
    limit = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
    assert chi2 < limit, (chi2, limit, df)


def test_three_language_distribution_is_a_uniform_mixture():
    split = translation("train", target=THREE_LANGUAGES)
    dist = split.distribution(0)
    by_language = Counter()
    for t, p in dist.items():
        (lang,) = languages_of(t)
        by_language[lang] += p
    assert all(by_language[lang] == pytest.approx(1 / 3) for lang in THREE_LANGUAGES)
    # the languages drawn for the corpus are roughly uniform too
    counts = Counter(split.languages)
    assert all(abs(counts[lang] / len(split) - 1 / 3) < 0.04 for lang in THREE_LANGUAGES)


def test_entropy_equals_the_sum_of_independent_choices():
    """Different choices give different strings (the derivation is injective), so H(Y | x), computed from the
    enumerated distribution, equals the sum of the entropies of the choices made (plus log 3 for a language)."""
    for target in ("fr", "de", "es"):
        split = translation("test", target=target, limit=60)
        for i in range(len(split)):
            points = _choice_points(parse_source(split.sources[i]), target)
            h_sum = sum(-sum(p * math.log(p) for p in probs if p > 0) for _, _, probs in points)
            dist = split.distribution(i)
            h_exact = -sum(p * math.log(p) for p in dist.values())
            assert h_exact == pytest.approx(h_sum, abs=1e-9)
            assert len(dist) == math.prod(len(o) for _, o, _ in points)
    for split in (translation("test", target=THREE_LANGUAGES, limit=20), translation("test", limit=20),
                  translation("test", target=THREE_LANGUAGES, tag=True, limit=20)):
        exact = [-sum(p * math.log(p) for p in split.distribution(i).values()) for i in range(len(split))]
        assert conditional_entropy(split) == pytest.approx(sum(exact) / len(exact), abs=1e-9)
    mix = translation("test", target=THREE_LANGUAGES, limit=20)
    assert conditional_entropy(mix) > conditional_entropy(translation("test", target="de", limit=20)) + math.log(3) - 2


def test_corpus_entropy_estimate_converges_to_the_truth_and_drops_for_a_deterministic_corpus():
    train = translation("train", target="fr", limit=2000)
    true, est = conditional_entropy(train), corpus_conditional_entropy(train)
    assert est["valid"] == 1.0 and est["n"] == len(train)
    assert abs(est["entropy"] - true) < 0.1 * true               # 2,000 samples: within 10 %
    assert 2.0 < true < 5.0                                       # real ambiguity: several nats per sentence
    # the mode of every choice (what a beam-search teacher tends to pick): no choice entropy left
    first = train.subset(range(500))
    best = []
    for i in range(500):
        dist = train.distribution(i)
        best.append(max(dist, key=dist.get))
    assert modes(first) == best
    assert corpus_conditional_entropy(first.with_targets(best))["entropy"] == pytest.approx(0.0)
    lp = true_logprob(first)
    assert all(lp[i] == pytest.approx(math.log(first.distribution(i)[first.targets[i]])) for i in range(20))
    assert true_logprob(first.subset([0]).with_targets(["le chien"])) == [-math.inf]
    broken = train.subset(range(10)).with_targets(["le chien"] * 10)
    assert corpus_conditional_entropy(broken)["valid"] < 1.0


def test_languages_are_disjoint_and_mixing_is_detected():
    words = {lang: {w for alts in L.lexicon.values() for a, _ in alts for w in a.split()} | {L.particle[0]}
             for lang, L in LANGUAGES.items()}
    assert not (words["fr"] & words["de"]) and not (words["fr"] & words["es"]) and not (words["de"] & words["es"])
    assert mixes_languages("le hund chasse un gato") and not mixes_languages("le chien chasse un chat")
    assert languages_of("der hund jagt ein ball") == {"de"}


def test_vocab_round_trip_and_batches():
    vocab = translation_vocab("fr", domain="animals")
    assert vocab == translation_vocab("fr", domain="animals") and 50 < len(vocab) <= 100
    assert len(translation_vocab(THREE_LANGUAGES, domain="animals")) <= 160
    assert len(translation_vocab(THREE_LANGUAGES, tag=True)) <= 280          # both domains, three languages
    big = translation_vocab(THREE_LANGUAGES, tag=True)
    for split in (translation("val", target=THREE_LANGUAGES, tag=True, domain=("animals", "office")),):
        assert all(3 not in big.encode(t) for t in split.targets + split.sources)
    split = translation("val", limit=20)
    for s in split.sources + split.targets:
        assert vocab.decode(vocab.encode(s)) == s and 3 not in vocab.encode(s)  # no <unk>
    batch = next(iter(translation_loader(split, vocab, batch_size=8)))
    ids, labels, dec = batch["input_ids"], batch["labels"], batch["decoder_input_ids"]
    assert ids.shape[0] == labels.shape[0] == 8 and dec.shape == labels.shape
    assert (dec[:, 0] == SeqVocab.bos_id).all()
    for r in range(8):
        n = int((labels[r] != -100).sum())
        assert labels[r, n - 1] == SeqVocab.eos_id and (labels[r, n:] == -100).all()
        assert torch.equal(dec[r, 1:n], labels[r, :n - 1])                     # shifted right by one
        assert vocab.decode(labels[r, :n]) == split.targets[r]
        assert vocab.decode(ids[r]) == split.sources[r]
        assert int(batch["attention_mask"][r].sum()) == len(split.sources[r].split()) + 1
    causal = next(iter(translation_loader(split, vocab, batch_size=4, causal_lm=True)))
    seq, lab = causal["input_ids"][0], causal["labels"][0]
    src_len = len(split.sources[0].split())
    assert seq[src_len] == SeqVocab.bos_id and (lab[:src_len + 1] == -100).all()
    assert vocab.decode(lab[src_len + 1:].clamp(min=0)) == split.targets[0]


def test_translation_pairs_from_a_local_file(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    path = tmp_path / "pairs.jsonl"
    rows = [{"translation": {"en": "The House", "ro": "Casa"}}, {"translation": {"en": "a dog", "ro": "un caine"}}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    pairs = translation_pairs(data_files=path)
    assert pairs.sources == ["the house", "a dog"] and pairs.targets == ["casa", "un caine"]
    with pytest.raises(ValueError, match="no grammar"):
        pairs.distribution(0)
    assert len(translation_pairs(data_files=path, limit=1)) == 1
    with pytest.raises(FileNotFoundError, match="data_files"):
        translation_pairs(data_files=tmp_path / "missing.jsonl")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="cannot be reached"):
        translation_pairs()


def test_greedy_misses_the_mode_of_the_multi_word_alternatives():
    """For 'again' and 'often' the most probable translation is one word, but the most probable *first* word
    starts two other alternatives: word by word (greedy) a model of the data picks the wrong one."""
    for lang, L in LANGUAGES.items():
        for word in ("again", "often"):
            alts = dict(L.lexicon[word])
            mode = max(alts, key=alts.get)
            first = Counter()
            for a, p in alts.items():
                first[a.split()[0]] += p
            greedy_first = max(first, key=first.get)
            assert len(mode.split()) == 1 and greedy_first != mode, (lang, word)
            assert math.isclose(sum(alts.values()), 1.0)
