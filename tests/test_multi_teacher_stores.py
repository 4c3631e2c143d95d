"""Several teachers over one transfer set (chapter 18): averaged precomputed stores, teachers with no transformer
configuration, keyword inputs, and a teacher that reads its own tokenization (``Retokenized``).

References: each teacher run live on the same token ids, ``average_teachers`` of those logits, and the teacher's own
tokenization of the original sentences.
"""

from __future__ import annotations

import pytest
import torch

from kdedu.data import sentiment, text_loader, word_tokenizer
from kdedu.methods import (
    KD,
    MultiTeacher,
    Retokenized,
    average_stores,
    average_teachers,
    precompute_teacher,
    teacher_outputs,
)
from kdedu.models import BiLSTMStudent, SequenceClassifier, load_minilm, small_bert
from kdedu.train import fit


@pytest.fixture(scope="module")
def setup():
    tok = word_tokenizer()
    torch.manual_seed(0)
    bert = SequenceClassifier(small_bert(2, 32, 2, vocab_size=tok.vocab_size), 2, pooling="cls").eval()
    lstm = BiLSTMStudent(tok.vocab_size, 2, embedding_dim=16, hidden=16, mlp_hidden=16).eval()
    split = sentiment("train", limit=70)
    return tok, bert, lstm, split


def _live(teacher, loader):
    """Each stored batch's ids run through the teacher now: (ids, logits) per batch, in the loader's order."""
    out = []
    for tb, _ in loader:
        with torch.no_grad():
            out.append((tb.input_ids, teacher(tb.input_ids, tb.attention_mask)))
    return out


def test_averaged_store_equals_the_live_average(setup):
    tok, bert, lstm, split = setup
    source = text_loader(split, tok, batch_size=16)
    stores = [precompute_teacher(t, source, seed=None) for t in (bert, lstm)]
    for mode, T in (("logits", 1.0), ("probs", 3.0)):
        averaged = average_stores(stores, mode, T)
        torch.manual_seed(5)
        got = [(tb.input_ids, tb.logits, y) for tb, y in averaged]
        torch.manual_seed(5)  # the same global RNG state: the first store's batches, in the same order
        first = [(tb.input_ids, y) for tb, y in stores[0]]
        assert [torch.equal(a[0], b[0]) and torch.equal(a[2], b[1]) for a, b in zip(got, first, strict=True)] == \
            [True] * len(first)
        for ids, logits, _ in got:
            mask = (ids != 0).long()
            with torch.no_grad():
                ref = average_teachers([bert(ids, mask), lstm(ids, mask)], mode, T)
            assert torch.allclose(logits, ref, atol=1e-5), (mode, (logits - ref).abs().max())
        # the same numbers as precomputing the MultiTeacher itself (its forwards run again)
        both = precompute_teacher(MultiTeacher([bert, lstm], mode, T), source, shuffle=False)
        plain = average_stores([precompute_teacher(t, source, shuffle=False) for t in (bert, lstm)], mode, T)
        for (a, _), (b, _) in zip(both, plain, strict=True):
            assert torch.allclose(a.logits, b.logits, atol=1e-5)


def test_average_stores_rejects_other_examples(setup):
    tok, bert, lstm, split = setup
    a = precompute_teacher(bert, text_loader(split, tok, batch_size=16))
    b = precompute_teacher(lstm, text_loader(sentiment("train", limit=70, seed=1), tok, batch_size=16))
    with pytest.raises(ValueError, match="other examples"):
        average_stores([a, b])
    with pytest.raises(TypeError, match="precompute_teacher"):
        average_stores([text_loader(split, tok, batch_size=16)])
    with pytest.raises(TypeError, match="non-empty list"):
        average_stores(a)


def test_logits_only_teachers_need_no_transformer(setup):
    tok, _, lstm, split = setup
    ids = text_loader(split, tok, batch_size=8).__iter__().__next__()[0]
    out = teacher_outputs(lstm, ids)
    with torch.no_grad():
        assert torch.equal(out.logits, lstm(ids))
    with pytest.raises(TypeError, match="configuration"):
        teacher_outputs(lstm, ids, hidden_layers=(1,))


def test_multi_teacher_takes_keywords_and_knows_its_padding(setup):
    tok, bert, lstm, split = setup
    ids, y = next(iter(text_loader(split, tok, batch_size=8)))
    both = MultiTeacher([bert, lstm], "probs", 2.0)
    assert both.pad_token_id == 0
    with torch.no_grad():
        assert torch.allclose(both(ids), both(input_ids=ids, attention_mask=(ids != 0).long()), atol=1e-6)
    fit(KD(SequenceClassifier(small_bert(1, 16, 2, vocab_size=tok.vocab_size), 2), both, temperature=2.0),
        [(ids, y)], num_epochs=1, device="cpu", progress=False)


def test_retokenized_reads_its_own_tokenization(setup):
    tok, bert, _, split = setup
    _, minilm_tok = load_minilm()
    sentences = split.sentences[:12]
    student = minilm_tok(sentences, padding=True, return_tensors="pt")
    wrapped = Retokenized(bert, tok, minilm_tok)
    direct = tok(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        got = wrapped(student["input_ids"], student["attention_mask"])
        ref = bert(direct["input_ids"], direct["attention_mask"])
    assert torch.allclose(got, ref, atol=1e-6)
    with pytest.raises(TypeError, match="student_tokenizer"):
        Retokenized(bert, tok, tok)
    with pytest.raises(TypeError, match="input_ids"):
        wrapped(torch.randn(2, 3))


def test_a_wrapper_of_eval_teachers_is_in_eval_mode(setup):
    _, bert, lstm, _ = setup
    assert not MultiTeacher([bert, lstm]).training
    assert MultiTeacher([bert, torch.nn.Linear(2, 2)]).training  # a fresh module trains: so does its wrapper
