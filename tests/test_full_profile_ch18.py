"""Chapter 18's `full`-profile path (BERT-base from two seeds and RoBERTa-base fine-tuned on SST-2, a DistilBERT-size
student), run offline on stand-ins.

As tests/test_full_profile_ch17.py does: a tiny random 12-layer BERT, saved as a local checkpoint, stands in for
``bert-base-uncased``; a tiny random RoBERTa, saved with a tokenizer of its own, stands in for ``roberta-base`` and is
read through ``Retokenized``; parquet copies of the synthetic corpus stand in for SST-2. The whole chapter runs; the
accuracies mean nothing.
"""

from __future__ import annotations

import pytest
from stand_ins import local_encoders, run_full_profile, sst2_from_corpus, tiny_bert

import kdedu.methods
import kdedu.models


@pytest.mark.slow
def test_chapter18_full_profile_runs_with_stand_ins(tmp_path, monkeypatch, capsys):
    pytest.importorskip("pandas")
    pytest.importorskip("datasets")
    from transformers import RobertaConfig, RobertaModel

    _, tokenizer = kdedu.models.load_minilm()
    bert = tiny_bert(tmp_path / "tiny-bert", tokenizer)
    roberta = tmp_path / "tiny-roberta"
    RobertaModel(RobertaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=2, intermediate_size=64, max_position_embeddings=160,
                               pad_token_id=tokenizer.pad_token_id)).save_pretrained(roberta)
    tokenizer.save_pretrained(roberta)
    loaded = local_encoders(monkeypatch, {"bert-base-uncased": bert, "roberta-base": roberta})
    sst2_from_corpus(monkeypatch, tmp_path, train=200, test=96)
    namespace = run_full_profile(monkeypatch, tmp_path, "18-multi-teacher")
    out = capsys.readouterr().out
    assert loaded == ["bert-base-uncased", "bert-base-uncased", "roberta-base"]  # the full branch ran
    assert namespace["FULL"] and namespace["LAYERS"] == (1, 3, 5, 7, 9, 11)
    assert isinstance(namespace["teacher_l"], kdedu.methods.Retokenized)
    assert len(namespace["quiz_set"]) == 100 and len(namespace["train_split"]) == 100  # 200 rows: 100 quiz
    assert all(len(r.values) == 3 for r in namespace["results"].values())  # three seeds in the full profile
    assert set(namespace["meta_results"]) == set(namespace["META"])     # the MetaDistil students trained too
    # the stored table holds MiniLM students: the full profile must read its own runs, not the table
    assert namespace["source"] == namespace["meta_source"] == "live `full`"
    assert namespace["key_runs"] is namespace["results"] and namespace["meta_runs"] is namespace["meta_results"]
    assert "KD ← A + B beats KD ← A" in out
