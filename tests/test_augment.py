"""Heuristic augmentation (kdedu.data.augment): TinyBERT word replacement and noise injection.

References: positions are compared word by word with the original; candidates are recomputed by brute force in
float64 NumPy over the tokenizer's vocabulary; a stand-in masked LM with a known ranking; the grammar's own
``sentence_score`` for label semantics; a binomial bound for the replacement rate.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from kdedu.data import augment, sentiment
from kdedu.data.augment import FUNCTION_WORDS, inject_noise, replace_words, word_candidates, word_class
from kdedu.data.text import ADJECTIVES, INTENSIFIERS, sentence_score

SENTENCES = sentiment("train").sentences[:300]


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


@pytest.fixture(scope="module")
def tables():
    tokenizer, _ = augment._minilm_tables()
    g = torch.Generator().manual_seed(0)
    return tokenizer, torch.randn(len(tokenizer), 16, generator=g)  # random vectors: no ties, fast


# ------------------------------------------------------------------------------------------------
# noise injection
# ------------------------------------------------------------------------------------------------
def test_noise_is_deterministic_per_seed_and_touches_only_replaced_positions():
    a, b = inject_noise(SENTENCES, 0.3, seed=4), inject_noise(SENTENCES, 0.3, seed=4)
    assert a == b
    assert inject_noise(SENTENCES, 0.3, seed=5) != a
    for orig, noisy in zip(SENTENCES, a, strict=True):
        ow, nw = orig.split(" "), noisy.split(" ")
        assert len(ow) == len(nw)
        assert all(n == o or n == "[UNK]" for o, n in zip(ow, nw, strict=True))  # untouched positions unchanged
    # each sentence's noise depends on the seed and the sentence alone: pieces give the same result
    assert inject_noise(SENTENCES[:100], 0.3, seed=4) + inject_noise(SENTENCES[100:], 0.3, seed=4) == a


def test_noise_keeps_the_grammar_score_and_its_rate_is_p():
    p = 0.3
    noisy = inject_noise(SENTENCES, p, seed=0)
    replaced = replaceable = 0
    for orig, new in zip(SENTENCES, noisy, strict=True):
        assert sentence_score(new) == sentence_score(orig)  # only subject and verb words were noised
        for o, n in zip(orig.split(" "), new.split(" "), strict=True):
            if o in ADJECTIVES or o in INTENSIFIERS or o in FUNCTION_WORDS:
                assert n == o
            else:
                replaceable += 1
                replaced += n != o
    sd = math.sqrt(replaceable * p * (1 - p))
    assert abs(replaced - p * replaceable) < 5 * sd  # a binomial count
    everything = inject_noise(SENTENCES[:20], 1.0, seed=0, noise_token="noise_word", keep_labels=False)
    assert all(set(s.split(" ")) == {"noise_word"} for s in everything)  # the deck's version: any word
    assert inject_noise(SENTENCES[:20], 0.0, seed=0) == SENTENCES[:20]


@pytest.mark.parametrize("bad", [{"p": 1.5}, {"p": -0.1}, {"seed": -1}, {"noise_token": "two words"}])
def test_noise_rejects_bad_arguments(bad):
    kwargs = {"p": 0.2, "seed": 0, **bad}
    with pytest.raises(ValueError, match=next(iter(bad))):
        inject_noise(SENTENCES[:3], **kwargs)
    with pytest.raises(TypeError, match="sentences"):
        inject_noise("one string", 0.2)


# ------------------------------------------------------------------------------------------------
# candidates: embedding neighbours and the masked LM
# ------------------------------------------------------------------------------------------------
def _brute_force_neighbours(word, tokenizer, emb, k, allowed):
    vocab = tokenizer.get_vocab()
    e = emb.double().numpy()
    q = np.mean([e[vocab[p]] for p in tokenizer.tokenize(word)], axis=0)
    scored = []
    for w in allowed:
        v = np.mean([e[vocab[p]] for p in tokenizer.tokenize(w)], axis=0)
        scored.append((-(q @ v) / (np.linalg.norm(q) * np.linalg.norm(v)), vocab.get(w, 10**9), w))
    return [w for _, _, w in sorted(scored)[:k]]


def test_embedding_candidates_match_brute_force(tables):
    tokenizer, emb = tables
    words = [w for w in tokenizer.get_vocab() if re.fullmatch("[a-z]{2,}", w)]
    others = [w for w in words if word_class(w) == "other"]
    cands = word_candidates("the movie was not very mediocre", k=6, tokenizer=tokenizer, embeddings=emb)
    assert cands[0] == _brute_force_neighbours("the", tokenizer, emb, 6, [w for w in others if w != "the"])
    assert cands[1] == _brute_force_neighbours("movie", tokenizer, emb, 6, [w for w in others if w != "movie"])
    assert cands[3] == []  # "not" is never replaced
    assert cands[4] == _brute_force_neighbours("very", tokenizer, emb, 6, [w for w in INTENSIFIERS if w != "very"])
    negative = [a for a in ADJECTIVES if ADJECTIVES[a] < 0 and a != "mediocre"]  # "mediocre" is 3 word pieces
    assert cands[5] == _brute_force_neighbours("mediocre", tokenizer, emb, 6, negative)
    free = word_candidates("the movie was not good", k=4, tokenizer=tokenizer, embeddings=emb, keep_labels=False)
    assert free[3] == _brute_force_neighbours("not", tokenizer, emb, 4, [w for w in words if w != "not"])


class StandInMLM(nn.Module):
    """Logits +bias at [MASK] positions and -bias elsewhere: reading the wrong position reverses the ranking."""

    def __init__(self, bias, mask_id, hf_output=False):
        super().__init__()
        self.bias, self.mask_id, self.hf_output = nn.Parameter(bias), mask_id, hf_output
        self.calls = 0

    def forward(self, input_ids, attention_mask=None):
        self.calls += 1
        sign = torch.where(input_ids == self.mask_id, 1.0, -1.0)[..., None]  # (B, L, 1)
        logits = sign * self.bias                                             # (B, L, V)
        if self.hf_output:
            from transformers.modeling_outputs import MaskedLMOutput

            return MaskedLMOutput(logits=logits)
        return logits


@pytest.mark.parametrize("hf_output", [False, True])
def test_masked_lm_candidates_follow_its_ranking(tables, hf_output):
    tokenizer, emb = tables
    g = torch.Generator().manual_seed(1)
    bias = torch.randn(len(tokenizer), generator=g)
    mlm = StandInMLM(bias, tokenizer.mask_token_id, hf_output)
    vocab = tokenizer.get_vocab()
    sentence = "the movie was not very mediocre but the plot is great"
    cands = word_candidates(sentence, k=5, mlm=mlm, tokenizer=tokenizer, embeddings=emb)

    def top(allowed, word):
        ranked = sorted((w for w in allowed if w != word and len(tokenizer.tokenize(w)) == 1),
                        key=lambda w: (-float(bias[vocab[w]]), vocab[w]))
        return ranked[:5]

    others = [w for w in vocab if re.fullmatch("[a-z]{2,}", w) and word_class(w) == "other"]
    assert cands[1] == top(others, "movie")
    assert cands[4] == top(list(INTENSIFIERS), "very")
    assert cands[10] == top([a for a in ADJECTIVES if ADJECTIVES[a] > 0], "great")
    assert cands[3] == [] and cands[6] == []  # "not", "but"
    # "mediocre" has several word pieces: TinyBERT takes embedding neighbours for it, not the masked LM
    negative = [a for a in ADJECTIVES if ADJECTIVES[a] < 0 and a != "mediocre"]
    assert cands[5] == _brute_force_neighbours("mediocre", tokenizer, emb, 5, negative)
    assert mlm.calls >= 1


# ------------------------------------------------------------------------------------------------
# word replacement
# ------------------------------------------------------------------------------------------------
def test_replacement_is_deterministic_and_leaves_untouched_positions(tables):
    tokenizer, emb = tables
    kw = {"tokenizer": tokenizer, "embeddings": emb, "k": 5, "n_aug": 3}
    a = replace_words(SENTENCES[:60], seed=2, **kw)
    assert a == replace_words(SENTENCES[:60], seed=2, **kw)
    assert a != replace_words(SENTENCES[:60], seed=3, **kw)
    assert replace_words(SENTENCES[:25], seed=2, **kw) + replace_words(SENTENCES[25:60], seed=2, **kw) == a
    assert len(a) == 3 * 60
    changed = 0
    table = {s: word_candidates(s, k=5, tokenizer=tokenizer, embeddings=emb) for s in SENTENCES[:60]}
    for i, new in enumerate(a):
        orig = SENTENCES[i // 3]                                    # sentence-major copies
        cands = table[orig]
        for o, n, c in zip(orig.split(" "), new.split(" "), cands, strict=True):
            assert n == o or n in c                                  # unchanged, or one of its candidates
            changed += n != o
    assert changed > 0
    assert replace_words(SENTENCES[:10], p=0.0, **kw) == [s for s in SENTENCES[:10] for _ in range(3)]


def test_replacement_keeps_the_label_semantics(tables):
    tokenizer, emb = tables
    new = replace_words(SENTENCES, p=0.9, seed=0, n_aug=2, tokenizer=tokenizer, embeddings=emb)
    flipped_without = 0
    for i, s in enumerate(new):
        orig = SENTENCES[i // 2]
        assert _sign(sentence_score(s)) == _sign(sentence_score(orig))
        for o, n in zip(orig.split(" "), s.split(" "), strict=True):
            if o in FUNCTION_WORDS:
                assert n == o
            elif o in ADJECTIVES:
                assert n in ADJECTIVES and _sign(ADJECTIVES[n]) == _sign(ADJECTIVES[o])
            elif o in INTENSIFIERS:
                assert n in INTENSIFIERS
            else:
                assert word_class(n) == "other"
    loose = replace_words(SENTENCES, p=0.9, seed=0, tokenizer=tokenizer, embeddings=emb, keep_labels=False)
    for orig, s in zip(SENTENCES, loose, strict=True):
        try:
            flipped_without += _sign(sentence_score(s)) != _sign(sentence_score(orig))
        except ValueError:
            flipped_without += 1                                     # no longer a sentence of the grammar
    assert flipped_without > 0                                      # the guard is what keeps the signs


def test_replacement_with_a_masked_lm_uses_its_candidates(tables):
    tokenizer, emb = tables
    mlm = StandInMLM(torch.randn(len(tokenizer), generator=torch.Generator().manual_seed(2)),
                     tokenizer.mask_token_id)
    new = replace_words(SENTENCES[:20], p=1.0, seed=0, k=3, mlm=mlm, tokenizer=tokenizer, embeddings=emb)
    for orig, s in zip(SENTENCES[:20], new, strict=True):
        cands = word_candidates(orig, k=3, mlm=mlm, tokenizer=tokenizer, embeddings=emb)
        assert all(n == o or n in c for o, n, c in zip(orig.split(" "), s.split(" "), cands, strict=True))
        assert _sign(sentence_score(s)) == _sign(sentence_score(orig))
    assert new != SENTENCES[:20]


def test_replacement_rejects_bad_arguments(tables):
    tokenizer, emb = tables
    with pytest.raises(ValueError, match="p must"):
        replace_words(SENTENCES[:2], p=2, tokenizer=tokenizer, embeddings=emb)
    with pytest.raises(ValueError, match="n_aug"):
        replace_words(SENTENCES[:2], n_aug=0, tokenizer=tokenizer, embeddings=emb)
    with pytest.raises(TypeError, match="mlm"):
        replace_words(SENTENCES[:2], mlm="bert", tokenizer=tokenizer, embeddings=emb)
    with pytest.raises(ValueError, match="embeddings has"):
        replace_words(SENTENCES[:2], tokenizer=tokenizer, embeddings=torch.zeros(10, 4))
    with pytest.raises(TypeError, match="sentences"):
        replace_words("a string", tokenizer=tokenizer, embeddings=emb)
