"""kdedu.zoo.text.construction_teacher: chapter 09's second task on the sentiment corpus' sentences."""

import os

import pytest
import torch

from kdedu.data import sentiment, text_loader
from kdedu.data.text import CONSTRUCTIONS, INTENSIFIERS
from kdedu.zoo.text import CONSTRUCTION_RECIPES, construction_labels, construction_teacher


def construction_by_hand(sentence):
    """The construction read off the words, independently of the generator's record."""
    words = sentence.split()
    if "but" in words:
        return "contrast"
    if "and" in words:
        return "mixed"
    if "not" in words:
        return "negation"
    if any(w in INTENSIFIERS for w in words):
        return "intensifier"
    return "plain"


def test_construction_labels_follow_from_the_words():
    for split in ("train", "val", "test"):
        data = sentiment(split)
        labels = construction_labels(data)
        assert labels.dtype == torch.int64 and labels.shape == (len(data),)
        assert [CONSTRUCTIONS[i] for i in labels.tolist()] == [construction_by_hand(s) for s in data.sentences]
    assert set(construction_labels(sentiment("train")).tolist()) == set(range(len(CONSTRUCTIONS)))


def test_construction_labels_bad_input():
    with pytest.raises(TypeError, match="split"):
        construction_labels(["the plot was good"])


def test_construction_teacher_tiny_trains_caches_and_loads(tmp_path):
    m = construction_teacher("construction-tiny", root=tmp_path, verbose=False)
    assert m.head.out_features == len(CONSTRUCTIONS)
    assert not any(p.requires_grad for p in m.parameters())
    metrics = m.meta["metrics"]
    assert set(metrics) == {"val_acc", "test_acc", "majority_test_acc"}
    # the stored metrics, recomputed by hand from the model's predictions and the words of the test sentences
    test = sentiment("test")
    y = torch.tensor([CONSTRUCTIONS.index(construction_by_hand(s)) for s in test.sentences])
    with torch.no_grad():
        enc = m.tokenizer(test.sentences, padding=True, truncation=True, max_length=64, return_tensors="pt")
        pred = m(enc["input_ids"], enc["attention_mask"]).argmax(-1)
    assert metrics["test_acc"] == pytest.approx((pred == y).float().mean().item(), abs=1e-6)
    assert metrics["majority_test_acc"] == pytest.approx(max((y == k).float().mean().item() for k in range(5)))
    assert metrics["test_acc"] > metrics["majority_test_acc"]  # the recipe (189 steps, ~3 s) learns the task
    # cached: the second call loads the same weights instead of training again
    again = construction_teacher("construction-tiny", root=tmp_path, verbose=False)
    assert again.meta["sha256"] == m.meta["sha256"] and len(list(tmp_path.glob("construction-tiny-*.pt"))) == 1
    for a, b in zip(m.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # a different seed is a different entry
    construction_teacher("construction-tiny", seed=1, root=tmp_path, verbose=False, limit=64, num_epochs=1)
    assert len(list(tmp_path.glob("construction-tiny-*.pt"))) == 2


def test_construction_teacher_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="name must be one of"):
        construction_teacher("sentiment-minilm", root=tmp_path)
    with pytest.raises(ValueError, match="unknown recipe"):
        construction_teacher("construction-tiny", root=tmp_path, hidden_size=3)
    with pytest.raises(ValueError, match="train_layers"):
        construction_teacher("construction-tiny", root=tmp_path, verbose=False, limit=50, train_layers=3)
    assert set(CONSTRUCTION_RECIPES) == {"construction-minilm", "construction-tiny"}


@pytest.mark.skipif(os.environ.get("KDEDU_SLOW") != "1", reason="fine-tunes MiniLM (~10 s); set KDEDU_SLOW=1")
def test_construction_teacher_minilm(tmp_path):
    m = construction_teacher(root=tmp_path, verbose=False)
    assert m.meta["metrics"]["test_acc"] > 0.7 and m.tokenizer.vocab_size == 30522
    loader = text_loader(sentiment("test", limit=8), m.tokenizer, 8)
    ids, _ = next(iter(loader))
    assert m(ids).shape == (8, len(CONSTRUCTIONS))
