"""Chapter 11's `full`-profile path (RoBERTa teacher, DistilRoBERTa student, SST-2), run offline on stand-ins.

A tiny random 2-layer BERT over MiniLM's vocabulary, saved as a local checkpoint, stands in for both
``roberta-base`` and ``distilroberta-base``; parquet copies of the synthetic corpus stand in for SST-2 (read through
``kdedu.data.sst2``'s own ``data_files`` path); the zoo's tiny masked LM stands in for the chapter's. The chapter runs
up to its runs cell; then one short training run of each kind checks that the variants train on the full setup.
"""

from __future__ import annotations

import pytest
from stand_ins import BOOK, code_cells, local_encoders, run_full_profile, sst2_from_corpus, tiny_bert

import kdedu
import kdedu.models
import kdedu.zoo
from kdedu.zoo import masked_lm as real_masked_lm

CHAPTER = "11-augmentation-for-kd"


@pytest.mark.slow  # ~30-60 s: embeds a thousand stand-in sentences with MiniLM and trains tiny models
def test_chapter11_full_profile_runs_with_stand_ins(tmp_path, monkeypatch, capsys):
    pytest.importorskip("pandas")
    pytest.importorskip("datasets")
    _, tokenizer = kdedu.models.load_minilm()
    checkpoint = tiny_bert(tmp_path / "tiny-bert", tokenizer, num_layers=2)
    loaded = local_encoders(monkeypatch, {"roberta-base": checkpoint, "distilroberta-base": checkpoint})
    sst2_from_corpus(monkeypatch, tmp_path, train=1400, test=128)
    monkeypatch.setattr(kdedu.zoo, "masked_lm", lambda **kw: real_masked_lm(name="sentiment-tiny", verbose=False))
    cells = code_cells(BOOK / f"{CHAPTER}.md")
    upto = next(i for i, c in enumerate(cells) if c.startswith("# --- the runs ---"))
    namespace = run_full_profile(monkeypatch, tmp_path, CHAPTER, ["\n\n".join(cells[:upto])])
    out = {label: namespace["train_variant"](label, seed=0, steps=2) for label in ("KD", "+ 8 NN", "Minimax 4 of 8")}
    printed = capsys.readouterr().out
    assert namespace["FULL"] and loaded[0] == "roberta-base" and "distilroberta-base" in loaded
    assert "transfer set: 1000 sentences; pool: 400 unlabelled sentences; test: 128" in printed
    assert isinstance(namespace["make_student"](0), kdedu.models.SequenceClassifier)
    for metrics, method in out.values():
        k = getattr(method, "k1", method.K)                      # augmented sentences per original
        assert 0 <= metrics["acc"] <= 1 and metrics["originals_per_step"] == 90 // (1 + k)
    assert out["Minimax 4 of 8"][0]["augmented_seen"] == 2 * 18 * 4 and out["+ 8 NN"][0]["augmented_seen"] == 2 * 10 * 8
