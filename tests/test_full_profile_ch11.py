"""Chapter 11's `full`-profile path (RoBERTa teacher, DistilRoBERTa student, SST-2), run offline on stand-ins.

A tiny random 2-layer BERT over MiniLM's vocabulary, saved as a local checkpoint, stands in for both
``roberta-base`` and ``distilroberta-base``; parquet copies of the synthetic corpus stand in for SST-2 (read through
``kdedu.data.sst2``'s own ``data_files`` path); the zoo's tiny masked LM stands in for the chapter's. The chapter runs
up to its runs cell; then one short training run of each kind checks that the variants train on the full setup.
"""

from __future__ import annotations

from pathlib import Path

import jupytext
import pytest
import torch

import kdedu
import kdedu.data
import kdedu.models
import kdedu.zoo

BOOK = Path(__file__).resolve().parents[1] / "book"
CHAPTER = BOOK / "11-augmentation-for-kd.md"


def _script(src: str) -> str:
    import re

    src = re.sub(r'^if "google.colab" in sys.modules:.*$', "if False:", src, flags=re.M)
    return re.sub(r"^(\s*)%.*$", r"\1pass", src, flags=re.M)


@pytest.mark.slow  # ~30-60 s: embeds a thousand stand-in sentences with MiniLM and trains tiny models
def test_chapter11_full_profile_runs_with_stand_ins(tmp_path, monkeypatch, capsys):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("datasets")
    from transformers import BertConfig, BertModel

    _, tokenizer = kdedu.models.load_minilm()
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny-bert"
    BertModel(config).save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    for split, name, n in (("train", "train", 1400), ("test", "validation", 128)):
        s = kdedu.data.sentiment(split, limit=n)
        pd.DataFrame({"sentence": s.sentences, "label": s.y.tolist()}).to_parquet(tmp_path / f"{name}.parquet")

    loaded = []
    real_load_encoder, real_sst2, real_masked_lm = kdedu.models.load_encoder, kdedu.data.sst2, kdedu.zoo.masked_lm

    def load_encoder(name, **kwargs):
        loaded.append(name)
        return real_load_encoder(checkpoint if name in ("roberta-base", "distilroberta-base") else name, **kwargs)

    def sst2(split, limit=None):
        return real_sst2(split, data_files=tmp_path / f"{split}.parquet", limit=limit)

    monkeypatch.setattr(kdedu.models, "load_encoder", load_encoder)
    monkeypatch.setattr(kdedu.data, "sst2", sst2)
    monkeypatch.setattr(kdedu.zoo, "masked_lm", lambda **kw: real_masked_lm(name="sentiment-tiny", verbose=False))
    monkeypatch.setenv("KDEDU_PROFILE", "full")
    monkeypatch.setenv("KDEDU_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    cells = [c.source for c in jupytext.read(CHAPTER).cells if c.cell_type == "code"]
    upto = next(i for i, c in enumerate(cells) if c.startswith("# --- the runs ---"))
    namespace = {"__name__": "__main__"}
    try:
        exec(compile(_script("\n\n".join(cells[:upto])), str(CHAPTER), "exec"), namespace)
        out = {label: namespace["train_variant"](label, seed=0, steps=2)
               for label in ("KD", "+ 8 NN", "Minimax 4 of 8")}
    finally:
        import matplotlib.pyplot as plt

        plt.close("all")
    printed = capsys.readouterr().out
    assert namespace["FULL"] and loaded[0] == "roberta-base" and "distilroberta-base" in loaded
    assert "transfer set: 1000 sentences; pool: 400 unlabelled sentences; test: 128" in printed
    assert isinstance(namespace["make_student"](0), kdedu.models.SequenceClassifier)
    for metrics, method in out.values():
        k = getattr(method, "k1", method.K)                      # augmented sentences per original
        assert 0 <= metrics["acc"] <= 1 and metrics["originals_per_step"] == 90 // (1 + k)
    assert out["Minimax 4 of 8"][0]["augmented_seen"] == 2 * 18 * 4 and out["+ 8 NN"][0]["augmented_seen"] == 2 * 10 * 8
