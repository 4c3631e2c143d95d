"""Chapter 17's `full`-profile path (BERT-base on SST-2, a DistilBERT-size student), run offline on stand-ins.

As tests/test_full_profile.py does for chapter 10: a tiny random 12-layer BERT, saved as a local checkpoint, stands in
for ``bert-base-uncased``, and parquet copies of the synthetic corpus stand in for SST-2 (read through
``kdedu.data.sst2``'s own ``data_files`` path). The whole chapter runs; the accuracies mean nothing.
"""

from __future__ import annotations

import pytest
from stand_ins import local_encoders, run_full_profile, sst2_from_corpus, tiny_bert

import kdedu.models


def test_chapter17_full_profile_runs_with_stand_ins(tmp_path, monkeypatch, capsys):
    pytest.importorskip("pandas")
    pytest.importorskip("datasets")
    _, tokenizer = kdedu.models.load_minilm()
    loaded = local_encoders(monkeypatch, {"bert-base-uncased": tiny_bert(tmp_path / "tiny-bert", tokenizer)})
    sst2_from_corpus(monkeypatch, tmp_path, train=200, test=96)
    namespace = run_full_profile(monkeypatch, tmp_path, "17-metadistil")
    out = capsys.readouterr().out
    # the full branch ran, not the cached MiniLM teacher (the chapter loads BERT-base again, to compare its blocks)
    assert loaded and set(loaded) == {"bert-base-uncased"}
    assert namespace["FULL"] and namespace["LAYERS"] == (1, 3, 5, 7, 9, 11)
    assert len(namespace["quiz_set"]) == 100 and len(namespace["train_split"]) == 100  # 200 rows: 100 quiz
    assert not set(namespace["train_split"].sentences) & set(namespace["quiz_set"].sentences)
    assert all(len(r.values) == 3 for r in namespace["results"].values())  # three seeds in the full profile
    stored, _ = next(iter(namespace["store"]))  # every token of the teacher's block-11 output, for TeacherTop
    assert stored.hidden_layers == (11,) and not stored.cls_only and stored.hidden.shape[-1] == 32
    assert "a MetaDistil step costs" in out and "MetaDistil beats KD" in out
