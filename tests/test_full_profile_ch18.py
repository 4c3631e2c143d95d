"""Chapter 18's `full`-profile path (BERT-base from two seeds and RoBERTa-base fine-tuned on SST-2, a DistilBERT-size
student), run offline on stand-ins.

As tests/test_full_profile_ch17.py does: a tiny random 12-layer BERT, saved as a local checkpoint, stands in for
``bert-base-uncased``; a tiny random RoBERTa, saved with a tokenizer of its own, stands in for ``roberta-base`` and is
read through ``Retokenized``; parquet copies of the synthetic corpus stand in for SST-2. The whole chapter runs; the
accuracies mean nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_full_profile import _code_cells, _script

import kdedu.data
import kdedu.models

BOOK = Path(__file__).resolve().parents[1] / "book"


@pytest.mark.slow
def test_chapter18_full_profile_runs_with_stand_ins(tmp_path, monkeypatch, capsys):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("datasets")
    from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

    _, tokenizer = kdedu.models.load_minilm()
    torch.manual_seed(0)
    bert = tmp_path / "tiny-bert"
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=12, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(bert)
    tokenizer.save_pretrained(bert)
    roberta = tmp_path / "tiny-roberta"
    RobertaModel(RobertaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=2, intermediate_size=64, max_position_embeddings=160,
                               pad_token_id=tokenizer.pad_token_id)).save_pretrained(roberta)
    tokenizer.save_pretrained(roberta)
    for split, name, n in (("train", "train", 200), ("test", "validation", 96)):
        s = kdedu.data.sentiment(split, limit=n)
        pd.DataFrame({"sentence": s.sentences, "label": s.y.tolist()}).to_parquet(tmp_path / f"{name}.parquet")

    loaded = []
    real_load_encoder, real_sst2 = kdedu.models.load_encoder, kdedu.data.sst2
    stand_in = {"bert-base-uncased": bert, "roberta-base": roberta}

    def load_encoder(name, **kwargs):
        loaded.append(name)
        return real_load_encoder(stand_in.get(name, name), **kwargs)

    def sst2(split, limit=None):
        return real_sst2(split, data_files=tmp_path / f"{split}.parquet", limit=limit)

    monkeypatch.setattr(kdedu.models, "load_encoder", load_encoder)
    monkeypatch.setattr(kdedu.data, "sst2", sst2)
    monkeypatch.setenv("KDEDU_PROFILE", "full")
    monkeypatch.setenv("KDEDU_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace = {"__name__": "__main__"}
    try:
        chapter = BOOK / "18-multi-teacher.md"
        exec(compile(_script("\n\n".join(_code_cells(chapter))), str(chapter), "exec"), namespace)
    finally:
        import matplotlib.pyplot as plt

        plt.close("all")
    out = capsys.readouterr().out
    assert loaded == ["bert-base-uncased", "bert-base-uncased", "roberta-base"]  # the full branch ran
    assert namespace["FULL"] and namespace["LAYERS"] == (1, 3, 5, 7, 9, 11)
    assert isinstance(namespace["teacher_l"], kdedu.methods.Retokenized)
    assert len(namespace["quiz_set"]) == 100 and len(namespace["train_split"]) == 100  # 200 rows: 100 quiz
    assert all(len(r.values) == 3 for r in namespace["results"].values())  # three seeds in the full profile
    assert set(namespace["meta_results"]) == set(namespace["META"])     # the MetaDistil students trained too
    assert "KD ← A + B beats KD ← A" in out
