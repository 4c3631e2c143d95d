"""Chapter 17's `full`-profile path (BERT-base on SST-2, a DistilBERT-size student), run offline on stand-ins.

As tests/test_full_profile.py does for chapter 10: a tiny random 12-layer BERT, saved as a local checkpoint, stands in
for ``bert-base-uncased``, and parquet copies of the synthetic corpus stand in for SST-2 (read through
``kdedu.data.sst2``'s own ``data_files`` path). The whole chapter runs; the accuracies mean nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_full_profile import _code_cells, _script

import kdedu.data
import kdedu.models

BOOK = Path(__file__).resolve().parents[1] / "book"


def test_chapter17_full_profile_runs_with_stand_ins(tmp_path, monkeypatch, capsys):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("datasets")
    from transformers import BertConfig, BertModel

    _, tokenizer = kdedu.models.load_minilm()
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=12,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny-bert"
    BertModel(config).save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    for split, name, n in (("train", "train", 200), ("test", "validation", 96)):
        s = kdedu.data.sentiment(split, limit=n)
        pd.DataFrame({"sentence": s.sentences, "label": s.y.tolist()}).to_parquet(tmp_path / f"{name}.parquet")

    loaded = []
    real_load_encoder, real_sst2 = kdedu.models.load_encoder, kdedu.data.sst2

    def load_encoder(name, **kwargs):
        loaded.append(name)
        return real_load_encoder(checkpoint if name == "bert-base-uncased" else name, **kwargs)

    def sst2(split, limit=None):
        return real_sst2(split, data_files=tmp_path / f"{split}.parquet", limit=limit)

    monkeypatch.setattr(kdedu.models, "load_encoder", load_encoder)
    monkeypatch.setattr(kdedu.data, "sst2", sst2)
    monkeypatch.setenv("KDEDU_PROFILE", "full")
    monkeypatch.setenv("KDEDU_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace = {"__name__": "__main__"}
    try:
        chapter = BOOK / "17-metadistil.md"
        exec(compile(_script("\n\n".join(_code_cells(chapter))), str(chapter), "exec"), namespace)
    finally:
        import matplotlib.pyplot as plt

        plt.close("all")
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
