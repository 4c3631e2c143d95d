"""The chapters' `full`-profile code, run offline with small stand-ins.

The `full` profile needs a network (CIFAR-10, BERT-base, SST-2) and, in practice, a GPU, so the book's build
never executes it; without these tests a renamed argument or a layer map written for six layers would only
show up in Colab. The accuracies here mean nothing: the tests check that the code runs and does what the
chapter says it does.

* Chapter 10 runs whole: a tiny random 12-layer BERT, saved as a local checkpoint, stands in for
  ``bert-base-uncased``, and parquet copies of the synthetic corpus stand in for SST-2 (read through
  ``kdedu.data.sst2``'s own ``data_files`` path).
* Chapters 07 and 08 run their CIFAR-10 cell (after the imports of every cell), on random 8×8 images in
  place of CIFAR-10 (the ResNets pool globally, so the networks are the real ResNet-110/20/8).
"""

from __future__ import annotations

import pytest
import torch
from stand_ins import BOOK, code_cells, local_encoders, run_full_profile, sst2_from_corpus, tiny_bert

import kdedu.data
import kdedu.models


@pytest.mark.parametrize("chapter", ["07-teacher-assistants", "08-annealing-kd"])
def test_cifar_cell_runs_with_a_stand_in(chapter, tmp_path, monkeypatch, capsys):
    """The chapter's setup cell and imports, then its `full`-profile CIFAR-10 cell, on a random stand-in."""
    g = torch.Generator().manual_seed(0)

    def cifar(name="cifar10", train=True, **kwargs):
        assert name == "cifar10"
        n = 128 if train else 64  # one batch of 128 (chapter 08 drops incomplete batches)
        x, y = torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)
        return torch.utils.data.TensorDataset(x, y)

    class InProcessLoader(torch.utils.data.DataLoader):  # workers and pinned memory only cost time here
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "num_workers": 0, "pin_memory": False})

    monkeypatch.setattr(kdedu.data, "cifar", cifar)
    monkeypatch.setattr(torch.utils.data, "DataLoader", InProcessLoader)
    cells = code_cells(BOOK / f"{chapter}.md")
    full = [c for c in cells if c.startswith('if kdedu.profile.current() == "full":')]
    assert len(full) == 1, "the chapter should have exactly one full-profile cell"
    imports = "\n".join(line for c in cells[1:] for line in c.splitlines() if line.startswith(("import ", "from ")))
    namespace = run_full_profile(monkeypatch, tmp_path, chapter, [cells[0], imports, full[0]])
    out = capsys.readouterr().out
    if chapter.startswith("07"):
        assert "ResNet-8, TAKD" in out and "TAKD cost: 60 epochs" in out  # assistant + student, 30 each
        assert len(namespace["chain"].assistants) == 1
    else:
        assert set(namespace["cifar"]) >= {"Teacher ResNet-110", "ResNet-8, TAKD", "ResNet-8, Annealing KD"}
        assert all(0.0 <= acc <= 1.0 for acc in namespace["cifar"].values())


def test_chapter10_full_profile_runs_with_stand_ins(tmp_path, monkeypatch, capsys):
    pytest.importorskip("pandas")
    pytest.importorskip("datasets")
    _, tokenizer = kdedu.models.load_minilm()
    loaded = local_encoders(monkeypatch, {"bert-base-uncased": tiny_bert(tmp_path / "tiny-bert", tokenizer)})
    sst2_from_corpus(monkeypatch, tmp_path, train=256, test=128)
    namespace = run_full_profile(monkeypatch, tmp_path, "10-intermediate-layers")
    out = capsys.readouterr().out
    assert loaded == ["bert-base-uncased"]  # the full branch ran, not the cached MiniLM teacher
    assert namespace["FULL"] and list(namespace["STUDENT_LAYERS"]) == ["12→4", "12→2"]
    assert "PKD-Skip map {1: 3, 2: 6, 3: 9}" in out
    assert len(namespace["results"]) == 2 * len(namespace["METHODS"])
    assert all(len(r.values) == 5 for r in namespace["results"].values())  # five seeds in the full profile
    stored, _ = next(iter(namespace["store"]))  # [CLS] vectors only: every token of BERT-base would not fit
    assert stored.attentions is None and stored.hidden.shape[1:] == (13, 32)
