"""Chapter 12's `full`-profile path (RoBERTa-base teacher, DistilRoBERTa student and generator on SST-2), run offline
on tiny stand-ins, as tests/test_full_profile.py does for chapter 10: tiny random BERTs saved as local checkpoints
stand in for the hub models (a masked LM for the generator, loaded through `load_masked_lm`'s own code), and parquet
copies of the synthetic corpus for SST-2. The accuracies mean nothing; the test checks that every cell runs."""

from __future__ import annotations

import pytest
from stand_ins import local_encoders, run_full_profile, sst2_from_corpus, tiny_bert

import kdedu.models


@pytest.mark.slow
def test_chapter12_full_profile_runs_with_stand_ins(tmp_path, monkeypatch, capsys):
    pytest.importorskip("pandas")
    pytest.importorskip("datasets")
    from transformers import BertForMaskedLM

    from kdedu.models.mlm import minilm_tokenizer

    tokenizer = minilm_tokenizer()
    encoders, mlms = {}, {}
    for seed, (name, layers) in enumerate((("roberta-base", 2), ("distilroberta-base", 1))):
        encoders[name] = tiny_bert(tmp_path / f"{name}-encoder", tokenizer, layers, seed=seed)
        mlms[name] = tiny_bert(tmp_path / f"{name}-mlm", tokenizer, layers, cls=BertForMaskedLM, seed=seed)
    loaded = local_encoders(monkeypatch, encoders)
    mlm_loaded = local_encoders(monkeypatch, mlms, attr="load_masked_lm")
    sst2_from_corpus(monkeypatch, tmp_path, train=96, test=64)
    namespace = run_full_profile(monkeypatch, tmp_path, "12-mate-kd")
    out = capsys.readouterr().out
    assert loaded[:1] == ["roberta-base"] and mlm_loaded[:1] == ["distilroberta-base"]  # the full branch ran
    assert namespace["FULL"] and not isinstance(namespace["generator"], kdedu.models.MaskedLM)
    assert all(len(r.values) == 5 for r in namespace["results"].values())  # five seeds in the full profile
    assert "MATE-KD beats KD" in out and "relaxed KL on the fixed batch" in out
