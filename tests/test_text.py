"""The synthetic sentiment corpus, tokenisation and batches, and the SST-2 loader (on local fixtures)."""

from __future__ import annotations

import sys
import time
import types

import pytest
import torch

from kdedu.data import text
from kdedu.data.text import CONSTRUCTIONS, sentence_score, sentiment, sst2, text_loader, tokenize, word_tokenizer


def test_corpus_is_deterministic_and_seeded():
    a, b = sentiment("train"), sentiment("train")
    text._corpus.cache_clear()
    c = sentiment("train")
    assert a.sentences == c.sentences and torch.equal(a.y, c.y) and torch.equal(a.scores, c.scores)
    assert b is a  # cached
    other = sentiment("train", seed=1)
    assert other.sentences != a.sentences
    assert [len(sentiment(s)) for s in ("train", "val", "test")] == [2000, 500, 500]


def test_splits_are_disjoint():
    sets = [set(sentiment(s).sentences) for s in ("train", "val", "test")]
    assert all(len(s) == n for s, n in zip(sets, (2000, 500, 500), strict=True))  # no duplicates inside
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])


def test_corpus_has_every_construction():
    data = sentiment("train")
    kinds = set(data.constructions)
    assert kinds == set(CONSTRUCTIONS)
    joined = data.sentences
    assert any(" not " in s for s in joined) and any(" but " in s for s in joined)
    assert any(" very " in s or " extremely " in s for s in joined) and any(" and " in s for s in joined)
    # every contrast sentence is scored with the clause after "but" dominating
    for s, score, kind in zip(data.sentences, data.scores.tolist(), data.constructions, strict=True):
        assert sentence_score(s) == pytest.approx(score, abs=1e-5)
        if kind == "contrast":
            assert " but " in s
    assert sentence_score("the movie was not good") == pytest.approx(-0.5)
    assert sentence_score("the movie was very bad but the cast is great") == pytest.approx(0.25 * -1.5 + 1.5)


def test_labels_follow_the_score_mostly_but_not_always():
    data = sentiment("train")
    nonzero = data.scores != 0
    agree = ((data.scores[nonzero] > 0).long() == data.y[nonzero]).float().mean().item()
    assert 0.7 < agree < 0.97  # sampled labels: mostly the sign of the score, with real noise
    expected = torch.sigmoid(text.SHARPNESS * data.scores)
    assert torch.allclose(data.probs, expected, atol=1e-6)
    # graded: the positive rate rises with the score
    lo, hi = data.y[data.scores < -1].float().mean(), data.y[data.scores > 1].float().mean()
    mid = data.y[(data.scores.abs() < 0.5)].float().mean()
    assert lo < mid < hi


def test_limit_and_bad_inputs():
    assert len(sentiment("val", limit=10)) == 10
    assert sentiment("val", limit=10).sentences == sentiment("val").sentences[:10]
    with pytest.raises(ValueError, match="split"):
        sentiment("dev")
    with pytest.raises(ValueError, match="limit"):
        sentiment("train", limit=0)
    with pytest.raises(TypeError, match="seed"):
        sentiment("train", seed="0")
    with pytest.raises(ValueError, match="sentence is not in the grammar"):
        sentence_score("hello world")


def test_tokenize_and_loader_with_word_tokenizer():
    tok = word_tokenizer()
    data = sentiment("val", limit=20)
    enc = tokenize(data, tok)
    assert enc["input_ids"].shape == enc["attention_mask"].shape and enc["input_ids"].shape[0] == 20
    assert enc["input_ids"].dtype == torch.int64
    assert torch.equal(enc["attention_mask"], (enc["input_ids"] != 0).long())
    assert (enc["input_ids"] != tok.unk_token_id).all()  # the grammar's words are all in the vocabulary
    lengths = enc["attention_mask"].sum(1)
    assert lengths.tolist() == [len(s.split()) + 2 for s in data.sentences]
    batches = list(text_loader(data, tok, batch_size=8))
    assert [len(y) for _, y in batches] == [8, 8, 4]
    assert torch.equal(torch.cat([y for _, y in batches]), data.y)
    soft = next(iter(text_loader(data, tok, batch_size=8, soft=True)))[1]
    assert soft.dtype == torch.float32 and torch.allclose(soft, data.probs[:8])
    with pytest.raises(TypeError, match="sentences"):
        tokenize("one string", tok)
    with pytest.raises(ValueError, match="max_length"):
        tokenize(["a b"], tok, max_length=1)
    with pytest.raises(TypeError, match="split"):
        text_loader(["a"], tok)


def test_loader_trains_a_bilstm_with_fit():
    from kdedu.methods import Supervised
    from kdedu.models import BiLSTMStudent
    from kdedu.train import fit

    tok = word_tokenizer()
    train = text_loader(sentiment("train", limit=256), tok, batch_size=64, shuffle=True)
    val = text_loader(sentiment("val", limit=128), tok, batch_size=128)
    torch.manual_seed(0)
    student = BiLSTMStudent(vocab_size=tok.vocab_size, embedding_dim=16, hidden=16, mlp_hidden=16)
    history = fit(Supervised(student), train, val, num_epochs=2, lr=1e-2, progress=False)
    assert len(history["val_acc"]) == 2


# ------------------------------------------------------------------------------------------
# SST-2: local fixtures only
# ------------------------------------------------------------------------------------------
ROWS = [{"sentence": "a gorgeous , witty film", "label": 1, "idx": 0},
        {"sentence": "it 's a dull mess", "label": 0, "idx": 1},
        {"sentence": "an utterly charming ride", "label": 1, "idx": 2}]


def test_sst2_from_local_json_file(tmp_path):
    pytest.importorskip("datasets")
    import json

    path = tmp_path / "sst2.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS))
    data = sst2("validation", data_files=path)
    assert data.sentences == [r["sentence"] for r in ROWS] and data.y.tolist() == [1, 0, 1]
    assert data.scores is None and data.probs is None
    assert len(sst2("val", data_files=path, limit=2)) == 2
    with pytest.raises(FileNotFoundError, match="data_files"):
        sst2("train", data_files=tmp_path / "missing.csv")


def test_sst2_with_a_fake_datasets_module(monkeypatch):
    """Runs without `datasets` installed: the hub path, the offline error and the missing-package error."""

    class FakeDataset:
        column_names = ["sentence", "label", "idx"]

        def __len__(self):
            return len(ROWS)

        def select(self, idx):
            return {"sentence": [ROWS[i]["sentence"] for i in idx], "label": [ROWS[i]["label"] for i in idx]}

        def __getitem__(self, key):
            return [r[key] for r in ROWS]

    calls = []

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        if "download_config" in kwargs:
            raise FileNotFoundError("not cached")
        return FakeDataset()

    fake = types.SimpleNamespace(load_dataset=load_dataset, DownloadConfig=lambda **kw: kw)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    monkeypatch.setattr(text, "_hub_reachable", lambda timeout_s: True)
    data = sst2("train")
    assert calls[-1][0] == ("nyu-mll/glue", "sst2") and calls[-1][1]["split"] == "train"
    assert data.y.tolist() == [1, 0, 1]
    assert sst2("train", limit=2).sentences == [ROWS[0]["sentence"], ROWS[1]["sentence"]]
    # offline and not cached: a clear message, at once
    monkeypatch.setattr(text, "_hub_reachable", lambda timeout_s: False)
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="cannot be reached"):
        sst2("train")
    assert time.perf_counter() - start < 5
    with pytest.raises(ValueError, match="split"):
        sst2("dev")
    # the package itself missing
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match="pip install datasets"):
        sst2("train")


def test_hub_probe_respects_offline_env(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert text._hub_reachable(0.1) is False


def test_sst2_real_datasets_offline_fails_fast(monkeypatch):
    """With the real `datasets` package and no hub: the local cache or a clear error, never minutes of retries."""
    pytest.importorskip("datasets")
    monkeypatch.setattr(text, "_hub_reachable", lambda timeout_s: False)
    start = time.perf_counter()
    try:
        data = sst2("validation", limit=3)
    except RuntimeError as err:
        assert "cannot be reached" in str(err)
    else:  # SST-2 happens to be in this machine's datasets cache
        assert len(data) == 3
    assert time.perf_counter() - start < 15


@pytest.mark.parametrize("n,batch,pool", [(20, 8, 1), (103, 16, 2), (64, 32, 50)])
def test_length_grouped_batches_cover_every_index_once(n, batch, pool):
    from kdedu.data.text import LengthGroupedBatches

    lengths = torch.randint(3, 30, (n,), generator=torch.Generator().manual_seed(n))
    for shuffle in (True, False):
        sampler = LengthGroupedBatches(lengths, batch, shuffle=shuffle, seed=1, pool_batches=pool)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for b in batches for i in b) == list(range(n))
        assert all(1 <= len(b) <= batch for b in batches)
        if not shuffle:  # evaluation order: sorted by length, longest first
            flat = [lengths[i].item() for b in batches for i in b]
            assert flat == sorted(flat, reverse=True)
    # within a pool, batches hold neighbouring lengths: far less padding than random batches
    sampler = LengthGroupedBatches(lengths, batch, seed=1, pool_batches=pool)
    spread = sum((lengths[b].max() - lengths[b].min()).item() for b in sampler)
    rand = sum((lengths[b].max() - lengths[b].min()).item() for b in torch.randperm(n).split(batch))
    assert spread <= rand
    with pytest.raises(ValueError, match="batch_size"):
        LengthGroupedBatches(lengths, 0)


def test_length_grouped_sampler_is_seeded():
    from kdedu.data.text import LengthGroupedBatches

    lengths = torch.arange(100) % 17
    a = list(LengthGroupedBatches(lengths, 8, seed=3))
    assert a == list(LengthGroupedBatches(lengths, 8, seed=3))
    assert a != list(LengthGroupedBatches(lengths, 8, seed=4))


def test_loader_trims_padding_and_groups_by_length():
    from kdedu.data.text import trim_padding

    tok = word_tokenizer()
    data = sentiment("train", limit=200)
    full = tokenize(data, tok)["input_ids"]
    for group in (False, True):
        batches = list(text_loader(data, tok, batch_size=16, shuffle=True, group_by_length=group))
        assert sum(len(y) for _, y in batches) == 200
        for ids, _ in batches:  # no column of padding only, and nothing but padding was cut
            assert (ids[:, -1] != tok.pad_token_id).any()
    # the same sentences in the same order as the untrimmed tensor, when not shuffled nor grouped
    ids = torch.cat([torch.nn.functional.pad(b, (0, full.shape[1] - b.shape[1])) for b, _ in
                     text_loader(data, tok, batch_size=16)])
    assert torch.equal(ids, full)
    widths = [b.shape[1] for b, _ in text_loader(data, tok, batch_size=16, shuffle=True, group_by_length=True)]
    plain = [b.shape[1] for b, _ in text_loader(data, tok, batch_size=16, shuffle=True)]
    assert sum(widths) < sum(plain)
    assert trim_padding(torch.tensor([[5, 6, 0, 0], [7, 0, 0, 0]])) == 2
    assert trim_padding(torch.zeros(2, 3, dtype=torch.long)) == 1


def test_unseeded_loaders_follow_the_global_rng():
    """seed=None: the order comes from torch's global RNG, so fit(seed=s) decides it."""
    tok = word_tokenizer()
    data = sentiment("train", limit=96)
    for group in (False, True):
        loader = text_loader(data, tok, batch_size=16, shuffle=True, seed=None, group_by_length=group)

        def order(s, loader=loader):
            torch.manual_seed(s)
            return torch.cat([y for _, y in loader]).tolist()

        assert order(0) == order(0) and order(0) != order(1)
