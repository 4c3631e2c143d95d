"""Offline stand-ins for the chapters' `full`-profile paths (hub checkpoints, SST-2), and the way to run a chapter.

The `full` profile needs a network and, in practice, a GPU, so the book's build never executes it; the
tests/test_full_profile*.py files run that code offline instead: tiny random models saved as local checkpoints stand in
for the hub models, parquet copies of the synthetic corpus stand in for SST-2 (read through ``kdedu.data.sst2``'s own
``data_files`` path), and the chapter's code cells are executed as a script. The accuracies mean nothing: the tests
check that the code runs and does what the chapter says it does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import jupytext
import torch

import kdedu.data
import kdedu.models

BOOK = Path(__file__).resolve().parents[1] / "book"


def script(src: str) -> str:
    """Code-cell source as plain Python: no Colab install line, no IPython magics."""
    src = re.sub(r'^if "google.colab" in sys.modules:.*$', "if False:", src, flags=re.M)
    return re.sub(r"^(\s*)%.*$", r"\1pass", src, flags=re.M)


def code_cells(md: Path) -> list[str]:
    return [c.source for c in jupytext.read(md).cells if c.cell_type == "code"]


def tiny_bert(path: Path, tokenizer, num_layers: int = 12, cls=None, seed: int = 0) -> Path:
    """A random BERT of width 32 with ``num_layers`` blocks and MiniLM's tokenizer, saved to ``path``."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=num_layers,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(seed)
    (cls or BertModel)(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def sst2_from_corpus(monkeypatch, folder: Path, train: int, test: int) -> None:
    """``kdedu.data.sst2`` reads parquet copies of the synthetic corpus (``train`` and ``test`` sentences)."""
    import pandas as pd

    for split, name, n in (("train", "train", train), ("test", "validation", test)):
        s = kdedu.data.sentiment(split, limit=n)
        pd.DataFrame({"sentence": s.sentences, "label": s.y.tolist()}).to_parquet(folder / f"{name}.parquet")
    real_sst2 = kdedu.data.sst2

    def sst2(split, limit=None):
        return real_sst2(split, data_files=folder / f"{split}.parquet", limit=limit)

    monkeypatch.setattr(kdedu.data, "sst2", sst2)


def local_encoders(monkeypatch, checkpoints: dict[str, Path], attr: str = "load_encoder") -> list[str]:
    """``kdedu.models.<attr>`` loads the local checkpoint for each hub name in ``checkpoints`` (others unchanged).
    Returns the list of names asked for, in order, which the caller inspects to see which branch ran."""
    loaded: list[str] = []
    real = getattr(kdedu.models, attr)

    def load(name, **kwargs):
        loaded.append(name)
        return real(checkpoints.get(name, name), **kwargs)

    monkeypatch.setattr(kdedu.models, attr, load)
    return loaded


def run_full_profile(monkeypatch, tmp_path: Path, chapter: str, sources: Iterable[str] | None = None,
                     namespace: dict | None = None) -> dict:
    """Execute ``sources`` (default: every code cell of ``book/<chapter>.md``) in the `full` profile, with a fresh
    cache under ``tmp_path`` and figures closed afterwards. Returns the namespace the cells ran in."""
    monkeypatch.setenv("KDEDU_PROFILE", "full")
    monkeypatch.setenv("KDEDU_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    path = BOOK / f"{chapter}.md"
    if sources is None:
        sources = ["\n\n".join(code_cells(path))]
    namespace = {"__name__": "__main__", **(namespace or {})}
    try:
        for source in sources:
            exec(compile(script(source), str(path), "exec"), namespace)
    finally:
        import matplotlib.pyplot as plt

        plt.close("all")
    return namespace
