"""Chapter 10's `full`-profile path, run offline with small stand-ins.

The `full` profile fine-tunes BERT-base on SST-2, which needs a network (and, in practice, a GPU), so the
chapter's build never executes it. Here a tiny random 12-layer BERT, saved as a local checkpoint, stands in
for ``bert-base-uncased``, and parquet copies of the synthetic corpus stand in for SST-2 (read through
``kdedu.data.sst2``'s own ``data_files`` path). That catches code that only works for the `fast` profile's
6-layer teacher (a hard-coded ``"6→3"``, a layer map for six layers); the accuracies mean nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

import jupytext
import pytest
import torch

import kdedu.data
import kdedu.models

pytest.importorskip("pandas")
pytest.importorskip("datasets")
CHAPTER = Path(__file__).resolve().parents[1] / "book" / "10-intermediate-layers.md"


def _chapter_source(md: Path) -> str:
    """The chapter's code cells as one script, without the Colab install line and IPython magics."""
    cells = [c.source for c in jupytext.read(md).cells if c.cell_type == "code"]
    src = "\n\n".join(cells)
    src = re.sub(r'^if "google.colab" in sys.modules:.*$', "if False:", src, flags=re.M)
    return re.sub(r"^(\s*)%.*$", r"\1pass", src, flags=re.M)


def test_chapter10_full_profile_runs_with_stand_ins(tmp_path, monkeypatch, capsys):
    import pandas as pd
    from transformers import BertConfig, BertModel

    _, tokenizer = kdedu.models.load_minilm()
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=12,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny-bert"
    BertModel(config).save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    for split, name, n in (("train", "train", 256), ("test", "validation", 128)):
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
        exec(compile(_chapter_source(CHAPTER), str(CHAPTER), "exec"), namespace)
    finally:
        import matplotlib.pyplot as plt

        plt.close("all")
    out = capsys.readouterr().out
    assert loaded == ["bert-base-uncased"]  # the full branch ran, not the cached MiniLM teacher
    assert namespace["FULL"] and list(namespace["STUDENT_LAYERS"]) == ["12→4", "12→2"]
    assert "PKD-Skip map {1: 3, 2: 6, 3: 9}" in out
    assert len(namespace["results"]) == 2 * len(namespace["METHODS"])
    assert all(len(r.values) == 5 for r in namespace["results"].values())  # five seeds in the full profile
