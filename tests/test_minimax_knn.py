"""kNN augmentation and Minimax-kNN (kdedu.methods.minimax_knn).

References: the k1 most divergent neighbours by brute force over every subset, with the KL written out in float64
NumPy; the loss terms recomputed by hand on the selected rows; plain KD (kdedu.methods.KD) as the K = 0 case; the
step sampler's passes as permutations; the teacher run sentence by sentence.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from kdedu import losses
from kdedu.methods import KD
from kdedu.methods.minimax_knn import (
    MinimaxKNN,
    NeighbourKD,
    StepBatches,
    TeacherRows,
    index_loader,
    most_divergent,
    teacher_rows,
)
from kdedu.train import fit


def _kl(t_logits, s_logits, T):
    t, s = np.asarray(t_logits, dtype=np.float64) / T, np.asarray(s_logits, dtype=np.float64) / T
    pt = np.exp(t - t.max()) / np.exp(t - t.max()).sum()
    ls = s - s.max() - np.log(np.exp(s - s.max()).sum())
    return float((pt * (np.log(pt) - ls)).sum())


@pytest.mark.parametrize("K,k1,T", [(8, 4, 1.0), (5, 2, 3.0), (6, 1, 0.5), (4, 4, 2.0)])
def test_selection_keeps_exactly_the_k1_most_divergent(K, k1, T):
    g = torch.Generator().manual_seed(K * 10 + k1)
    t, s = torch.randn(6, K, 3, generator=g) * 2, torch.randn(6, K, 3, generator=g) * 2
    keep = most_divergent(t, s, k1, T)
    assert keep.shape == (6, k1) and keep.dtype == torch.long
    for b in range(6):
        d = [_kl(t[b, j], s[b, j], T) for j in range(K)]
        best = max(itertools.combinations(range(K), k1), key=lambda c: sum(d[j] for j in c))  # every subset
        assert sorted(keep[b].tolist()) == sorted(best)
        assert len(set(keep[b].tolist())) == k1                                          # no repeats
        got = [d[j] for j in keep[b].tolist()]
        assert got == sorted(got, reverse=True)                                          # most divergent first


def test_selection_rejects_bad_arguments():
    t = torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match="k1"):
        most_divergent(t, t, 5)
    with pytest.raises(ValueError, match="k1"):
        most_divergent(t, t, 0)
    with pytest.raises(ValueError, match="shape"):
        most_divergent(t, t[:, :3], 2)
    with pytest.raises(ValueError, match=r"\(b, K, C\)"):
        most_divergent(t[0], t[0], 1)
    with pytest.raises(ValueError, match="temperature"):
        most_divergent(t, t, 1, temperature=0.0)


def test_step_batches_walk_through_permutations():
    sampler = StepBatches(10, 4, steps=7, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 7 and all(len(b) == 4 for b in batches)
    flat = [i for b in batches for i in b]
    for start in (0, 10):                                     # each pass over the originals is a permutation
        assert sorted(flat[start:start + 10]) == list(range(10))
    torch.manual_seed(3)
    a = list(StepBatches(10, 4, 5))
    torch.manual_seed(3)
    assert list(StepBatches(10, 4, 5)) == a                   # seed=None: the global RNG (fit's seed) decides
    with pytest.raises(ValueError, match="batch_size"):
        StepBatches(3, 4, 1)


class BagStudent(nn.Module):
    """A tiny student: mean of token embeddings over the real tokens -> logits."""

    def __init__(self, vocab=50, classes=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb, self.out = nn.Embedding(vocab, 8), nn.Linear(8, classes)

    def forward(self, input_ids, attention_mask):
        m = attention_mask.unsqueeze(-1).float()
        return self.out((self.emb(input_ids) * m).sum(1) / m.sum(1))


def _rows(n, width, seed, classes=3):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, width + 1, (n,), generator=g)
    mask = (torch.arange(width)[None] < lengths[:, None]).long()
    ids = torch.randint(1, 50, (n, width), generator=g) * mask
    return TeacherRows(ids, mask, torch.randn(n, classes, generator=g) * 2)


def test_minimax_trains_on_exactly_the_selected_rows():
    orig, pool = _rows(6, 5, 0), _rows(30, 7, 1)
    nbrs = torch.randint(30, (6, 5), generator=torch.Generator().manual_seed(2))
    student = BagStudent()
    method = MinimaxKNN(student, orig, pool, nbrs, k1=2, alpha=0.3, temperature=2.0, aug_weight=0.7)
    idx, y = torch.tensor([4, 0, 2]), torch.tensor([1, 0, 2])
    terms = method(idx, y)
    with torch.no_grad():                                     # the selection, by hand
        expected_rows = []
        for i in idx.tolist():
            d = [_kl(pool.logits[r], student(pool.input_ids[r:r + 1], pool.attention_mask[r:r + 1])[0], 2.0)
                 for r in nbrs[i].tolist()]
            order = sorted(range(5), key=lambda j: -d[j])[:2]
            expected_rows.append([nbrs[i, j].item() for j in order])
    assert method.last_selection.tolist() == expected_rows
    rows = torch.tensor(expected_rows).reshape(-1)
    z_o = student(orig.input_ids[idx], orig.attention_mask[idx])
    z_a = student(pool.input_ids[rows], pool.attention_mask[rows])
    assert torch.allclose(terms["ce"], 0.7 * torch.nn.functional.cross_entropy(z_o, y), atol=1e-6)
    assert torch.allclose(terms["kd"], 0.3 * losses.kd_loss(z_o, orig.logits[idx], 2.0), atol=1e-6)
    assert torch.allclose(terms["kd_aug"], 0.7 * losses.kd_loss(z_a, pool.logits[rows], 2.0), atol=1e-6)
    assert int(method.rank_counts.sum()) == 3 * 2 and method.selection_time_s > 0


def test_all_neighbours_and_no_neighbours():
    orig, pool = _rows(6, 5, 0), _rows(30, 7, 1)
    nbrs = torch.randint(30, (6, 4), generator=torch.Generator().manual_seed(2))
    idx, y = torch.tensor([1, 3]), torch.tensor([2, 0])
    student = BagStudent()
    every = NeighbourKD(student, orig, pool, nbrs, alpha=0.5, temperature=1.5)(idx, y)
    top_all = MinimaxKNN(student, orig, pool, nbrs, k1=4, alpha=0.5, temperature=1.5)(idx, y)  # k1 = K: all
    for k in every:
        assert torch.allclose(every[k], top_all[k], atol=1e-6)
    # K = 0 is plain KD on the originals: the same terms as kdedu.methods.KD
    plain = NeighbourKD(student, orig, pool, torch.zeros(6, 0, dtype=torch.long), alpha=0.5, temperature=1.5)

    class Stored(nn.Module):  # the teacher, answering with its stored logits
        def forward(self, rows):
            return orig.logits[rows]

    class ByRows(nn.Module):
        def forward(self, rows):
            return student(orig.input_ids[rows], orig.attention_mask[rows])

    ours, ref = plain(idx, y), KD(ByRows(), Stored(), alpha=0.5, temperature=1.5)(idx, y)
    assert set(ours) == {"ce", "kd"} and all(torch.allclose(ours[k], ref[k]) for k in ref)


def test_fit_drives_the_method_at_equal_steps():
    orig, pool = _rows(12, 5, 0), _rows(40, 6, 1)
    nbrs = torch.randint(40, (12, 6), generator=torch.Generator().manual_seed(3))
    labels = torch.randint(3, (12,), generator=torch.Generator().manual_seed(4))
    method = MinimaxKNN(BagStudent(), orig, pool, nbrs, k1=2)
    history = fit(method, index_loader(labels, 4, steps=9), None, num_epochs=1, lr=1e-2, seed=0, progress=False,
                  device="cpu")
    assert len(history) == 1 and np.isfinite(history.last["loss"])
    assert method.seen_aug == 9 * 4 * 2 and int(method.rank_counts.sum()) == 9 * 4 * 2


def test_methods_reject_bad_inputs():
    orig, pool = _rows(6, 5, 0), _rows(30, 7, 1)
    with pytest.raises(ValueError, match="rows for"):
        NeighbourKD(BagStudent(), orig, pool, torch.zeros(5, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="index the pool"):
        NeighbourKD(BagStudent(), orig, pool, torch.full((6, 2), 30))
    with pytest.raises(TypeError, match="TeacherRows"):
        NeighbourKD(BagStudent(), orig, "pool", torch.zeros(6, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="k1"):
        MinimaxKNN(BagStudent(), orig, pool, torch.zeros(6, 2, dtype=torch.long), k1=3)


def test_teacher_rows_match_the_teacher_one_sentence_at_a_time():
    from kdedu.data import word_tokenizer
    from kdedu.models import SequenceClassifier, small_bert

    tok = word_tokenizer()
    torch.manual_seed(0)
    teacher = SequenceClassifier(small_bert(1, 16, 2, vocab_size=tok.vocab_size), 2).eval()
    sentences = ["the movie was good", "the plot was not very good but the cast is great", "the film felt dull"]
    rows = teacher_rows(teacher, sentences, tok, batch_size=2)
    with torch.no_grad():
        for i, s in enumerate(sentences):
            ids = torch.tensor([tok.encode(s)])
            assert torch.allclose(rows.logits[i], teacher(ids)[0], atol=1e-5)
            n = len(tok.encode(s))
            assert rows.input_ids[i, :n].tolist() == tok.encode(s) and int(rows.attention_mask[i].sum()) == n
