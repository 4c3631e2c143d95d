"""Retrieval augmentation (kdedu.data.retrieval): the pool, MiniLM sentence embeddings, exact kNN.

References: the grammar's sentence_score; the corpus' own splits; one-sentence-at-a-time mean pooling through
transformers (no padding); NumPy brute force for the neighbours.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from kdedu.data import sentiment
from kdedu.data.retrieval import OFF_TOPIC_ADJECTIVES, embed, knn, sentiment_pool
from kdedu.data.text import sentence_score


def test_pool_is_new_distinct_deterministic_and_partly_off_topic():
    pool = sentiment_pool(600, seed=3, out_of_distribution=0.4)
    assert len(pool) == 600 and len(set(pool.sentences)) == 600
    corpus = {s for split in ("train", "val", "test") for s in sentiment(split).sentences}
    assert not set(pool.sentences) & corpus                      # retrieval can never find a test sentence
    off = [c == "off-topic" for c in pool.constructions]
    assert sum(off) == 240
    for s, score, p, y, is_off in zip(pool.sentences, pool.scores.tolist(), pool.probs.tolist(), pool.y.tolist(),
                                      off, strict=True):
        if is_off:
            assert math.isnan(score) and math.isnan(p) and y == -100
            assert s.split(" ")[-1] in OFF_TOPIC_ADJECTIVES
        else:
            assert sentence_score(s) == pytest.approx(score, abs=1e-5)
            assert p == pytest.approx(1 / (1 + math.exp(-2 * score)), abs=1e-6) and y in (0, 1)
    again = sentiment_pool(600, seed=3, out_of_distribution=0.4)
    assert again.sentences == pool.sentences and torch.equal(again.y, pool.y)
    assert sentiment_pool(600, seed=4, out_of_distribution=0.4).sentences != pool.sentences
    assert all(c != "off-topic" for c in sentiment_pool(50, out_of_distribution=0.0).constructions)


@pytest.mark.parametrize("bad", [{"n": 0}, {"out_of_distribution": 1.5}])
def test_pool_rejects_bad_arguments(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        sentiment_pool(**{"n": 10, **bad})


def test_embeddings_are_mean_pooled_normalised_and_cached(tmp_path, monkeypatch):
    from kdedu.models import load_minilm

    monkeypatch.setenv("KDEDU_CACHE", str(tmp_path))
    sentences = ["the plot was not very good", "the movie is great", "the train was late but the coffee was warm",
                 "the film felt somewhat decent and the ending was dull"]
    e = embed(sentences, batch_size=3)
    assert e.shape == (4, 384) and torch.allclose(e.norm(dim=-1), torch.ones(4), atol=1e-5)
    model, tok = load_minilm()
    with torch.no_grad():
        for i, s in enumerate(sentences):                       # one at a time: no padding at all
            h = model(**tok(s, return_tensors="pt")).last_hidden_state[0]      # (L, 384)
            ref = h.mean(0) / h.mean(0).norm()
            assert torch.allclose(e[i], ref, atol=1e-4)
    files = list((tmp_path / "embeddings").glob("*.pt"))
    assert len(files) == 1
    assert torch.equal(embed(sentences), e)                      # read back from the cache
    files[0].write_bytes(b"corrupt")                             # a broken file is recomputed, not used
    assert torch.allclose(embed(sentences), e, atol=1e-6)
    assert not [f for f in os.listdir(tmp_path / "embeddings") if f.endswith(".tmp")]


def test_knn_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    q, keys = torch.randn(7, 5, generator=g), torch.randn(40, 5, generator=g)
    keys[11] = 2 * keys[3]  # same direction, and bit-identical once normalised (x2 is exact): a tie, lower index first
    q[0] = keys[3]
    unit = keys / keys.norm(dim=1, keepdim=True)
    assert torch.equal(unit[11], unit[3])  # an exact tie in float32 (a factor of 3 is not exact on every CPU)
    idx, sim = knn(q, keys, 6, batch_size=3)
    qn = q.double().numpy() / np.linalg.norm(q.double().numpy(), axis=1, keepdims=True)
    kn = keys.double().numpy() / np.linalg.norm(keys.double().numpy(), axis=1, keepdims=True)
    for i in range(7):
        cos = kn @ qn[i]
        ranked = sorted(range(40), key=lambda j: (-round(cos[j], 9), j))[:6]
        assert idx[i].tolist() == ranked
        assert np.allclose(sim[i].numpy(), cos[ranked], atol=1e-5)
    assert idx[0, :2].tolist() == [3, 11]
    with pytest.raises(ValueError, match="k must"):
        knn(q, keys, 41)
    with pytest.raises(ValueError, match="width"):
        knn(q, keys[:, :4], 2)
