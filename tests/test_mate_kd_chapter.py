"""Chapter 12's `full`-profile path (RoBERTa-base teacher, DistilRoBERTa student and generator on SST-2), run offline
on tiny stand-ins, as tests/test_full_profile.py does for chapter 10: tiny random BERTs saved as local checkpoints
stand in for the hub models (a masked LM for the generator, loaded through `load_masked_lm`'s own code), and parquet
copies of the synthetic corpus for SST-2. The accuracies mean nothing; the test checks that every cell runs."""

from __future__ import annotations

import pytest
import torch
from test_full_profile import BOOK, _code_cells, _script

import kdedu.data
import kdedu.models


@pytest.mark.slow
def test_chapter12_full_profile_runs_with_stand_ins(tmp_path, monkeypatch, capsys):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("datasets")
    from transformers import BertConfig, BertForMaskedLM, BertModel

    from kdedu.models.mlm import minilm_tokenizer

    tokenizer = minilm_tokenizer()
    checkpoints = {}
    for name, layers in (("roberta-base", 2), ("distilroberta-base", 1)):
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=layers,
                            num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
        torch.manual_seed(len(checkpoints))
        for kind, cls in (("encoder", BertModel), ("mlm", BertForMaskedLM)):
            path = tmp_path / f"{name}-{kind}"
            cls(config).save_pretrained(path)
            tokenizer.save_pretrained(path)
            checkpoints[name, kind] = path
    for split, name, n in (("train", "train", 96), ("test", "validation", 64)):
        s = kdedu.data.sentiment(split, limit=n)
        pd.DataFrame({"sentence": s.sentences, "label": s.y.tolist()}).to_parquet(tmp_path / f"{name}.parquet")

    loaded = []
    real_load_encoder, real_load_masked_lm, real_sst2 = (kdedu.models.load_encoder, kdedu.models.load_masked_lm,
                                                         kdedu.data.sst2)

    def load_encoder(name, **kwargs):
        loaded.append(name)
        return real_load_encoder(checkpoints[name, "encoder"], **kwargs)

    def load_masked_lm(name, **kwargs):
        loaded.append(f"{name} (MLM)")
        return real_load_masked_lm(checkpoints[name, "mlm"], **kwargs)

    def sst2(split, limit=None):
        return real_sst2(split, data_files=tmp_path / f"{split}.parquet", limit=limit)

    monkeypatch.setattr(kdedu.models, "load_encoder", load_encoder)
    monkeypatch.setattr(kdedu.models, "load_masked_lm", load_masked_lm)
    monkeypatch.setattr(kdedu.data, "sst2", sst2)
    monkeypatch.setenv("KDEDU_PROFILE", "full")
    monkeypatch.setenv("KDEDU_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace = {"__name__": "__main__"}
    try:
        chapter = BOOK / "12-mate-kd.md"
        exec(compile(_script("\n\n".join(_code_cells(chapter))), str(chapter), "exec"), namespace)
    finally:
        import matplotlib.pyplot as plt

        plt.close("all")
    out = capsys.readouterr().out
    assert loaded[:2] == ["roberta-base", "distilroberta-base (MLM)"]  # the full branch ran, not the cached MiniLM
    assert namespace["FULL"] and not isinstance(namespace["generator"], kdedu.models.MaskedLM)
    assert all(len(r.values) == 5 for r in namespace["results"].values())  # five seeds in the full profile
    assert "MATE-KD beats KD" in out and "relaxed KL on the fixed batch" in out
