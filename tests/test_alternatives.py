"""ALBERT's factorised embeddings and cross-layer sharing, MobileBERT's layer-wise transfer (chapter 10's
alternatives), each checked against an independent reference."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdedu.methods import precompute_teacher, teacher_outputs
from kdedu.methods.mobilebert import LayerTransfer
from kdedu.models import SequenceClassifier, count_parameters, small_bert
from kdedu.models.albert import FactorizedEmbedding, factorize_embeddings, share_layers
from kdedu.train import fit

VOCAB = 50


def _model(layers, hidden=32, heads=2, seed=0):
    torch.manual_seed(seed)
    return SequenceClassifier(small_bert(layers, hidden, heads, vocab_size=VOCAB, max_position_embeddings=32), 2,
                              dropout=0.0)


def _ids(n=12, length=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (n, length), generator=g)
    ids[::3, 6:] = 0                                           # some padding
    ids[:, 0] = 2
    return ids


# ---------------------------------------------------------------------------------------------- factorised embeddings
@pytest.mark.parametrize("rank", [1, 3, 8, 16])
def test_svd_factorisation_is_the_best_rank_e_approximation(rank):
    torch.manual_seed(0)
    w = torch.randn(40, 16, dtype=torch.float64)
    fe = FactorizedEmbedding.from_weight(w, rank)
    product = fe.weight.detach()
    # independent reference: NumPy's SVD, truncated by hand
    u, s, vt = np.linalg.svd(w.numpy(), full_matrices=False)
    best = (u[:, :rank] * s[:rank]) @ vt[:rank]
    np.testing.assert_allclose(product.numpy(), best, atol=1e-10)
    # Eckart-Young: the squared Frobenius error is the sum of the discarded squared singular values ...
    err2 = torch.linalg.matrix_norm(w - product).item() ** 2
    assert err2 == pytest.approx(float((s[rank:] ** 2).sum()), abs=1e-9)
    assert torch.linalg.matrix_rank(product).item() == rank
    # ... and no other rank-E product does better (random factor pairs, and the best one on a perturbed matrix)
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        a = torch.randn(40, rank, generator=g, dtype=torch.float64)
        coef = torch.linalg.lstsq(a, w).solution                 # the best (rank, 16) factor for this a
        assert torch.linalg.matrix_norm(w - a @ coef).item() ** 2 >= err2 - 1e-9
        other = FactorizedEmbedding.from_weight(w + 0.1 * torch.randn(40, 16, generator=g, dtype=torch.float64), rank)
        assert torch.linalg.matrix_norm(w - other.weight.detach()).item() ** 2 >= err2 - 1e-9


def test_factorised_embedding_looks_up_rows_of_its_product():
    torch.manual_seed(1)
    w = torch.randn(30, 12)
    fe = FactorizedEmbedding.from_weight(w, 12)                  # full rank: the table itself
    torch.testing.assert_close(fe.weight.detach(), w, atol=1e-5, rtol=0)
    fe = FactorizedEmbedding.from_weight(w, 4)
    ids = torch.tensor([[0, 5, 29], [3, 3, 7]])
    torch.testing.assert_close(fe(ids), fe.weight[ids])          # (B, L, H)
    assert sum(p.numel() for p in fe.parameters()) == 30 * 4 + 4 * 12


def test_factorize_embeddings_in_a_bert_counts_and_runs():
    model = _model(2, hidden=32)
    before = count_parameters(model)
    factorize_embeddings(model, 8)
    assert count_parameters(model) == before - VOCAB * 32 + VOCAB * 8 + 8 * 32
    out = model(_ids(), output_hidden_states=True)
    assert out.logits.shape == (12, 2)
    emb = model.encoder.embeddings.word_embeddings
    assert isinstance(emb, FactorizedEmbedding) and emb.rank == 8


def test_factorised_validation_names_the_argument():
    with pytest.raises(ValueError, match="rank"):
        FactorizedEmbedding(10, 4, 5)
    with pytest.raises(ValueError, match="rank"):
        FactorizedEmbedding.from_weight(torch.randn(10, 4), 0)
    with pytest.raises(TypeError, match="weight"):
        FactorizedEmbedding.from_weight(torch.randint(0, 3, (10, 4)), 2)
    with pytest.raises(ValueError, match="init"):
        factorize_embeddings(_model(1), 4, init="pca")
    model = factorize_embeddings(_model(1), 4)
    with pytest.raises(TypeError, match="word embeddings"):
        factorize_embeddings(model, 4)


# ---------------------------------------------------------------------------------------------- cross-layer sharing
def test_shared_layers_equal_a_stack_of_copies_and_count_one_block():
    model = _model(3, seed=3).eval()
    block = model.encoder.encoder.layer[1]
    per_block = sum(p.numel() for p in block.parameters())
    before = count_parameters(model)
    # the reference: an unshared model whose three blocks are separate copies of block 1
    reference = copy.deepcopy(model)
    for i in range(3):
        reference.encoder.encoder.layer[i].load_state_dict(block.state_dict())
    share_layers(model, source=1)
    layers = model.encoder.encoder.layer
    assert layers[0] is layers[1] is layers[2]
    assert count_parameters(model) == before - 2 * per_block
    ids = _ids()
    with torch.no_grad():
        got, want = model(ids, output_hidden_states=True), reference(ids, output_hidden_states=True)
    assert len(got.hidden_states) == 4
    for h, r in zip(got.hidden_states, want.hidden_states, strict=True):
        torch.testing.assert_close(h, r)
    torch.testing.assert_close(got.logits, want.logits)
    # the shared block's gradient is the sum of the copies' gradients (one block, three uses)
    F.cross_entropy(model(ids), torch.zeros(12, dtype=torch.long)).backward()   # eval mode: no dropout masks
    F.cross_entropy(reference(ids), torch.zeros(12, dtype=torch.long)).backward()
    for name, p in layers[0].named_parameters():
        summed = sum(dict(reference.encoder.encoder.layer[i].named_parameters())[name].grad for i in range(3))
        torch.testing.assert_close(p.grad, summed, atol=1e-6, rtol=1e-5)


def test_share_layers_validation():
    with pytest.raises(ValueError, match="source"):
        share_layers(_model(2), source=2)
    with pytest.raises(TypeError, match="BertModel"):
        share_layers(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------------------------------------- MobileBERT
@pytest.fixture(scope="module")
def teacher():
    t = _model(4, seed=1).eval()
    t.requires_grad_(False)
    return t


def test_layer_transfer_terms_equal_the_losses_by_hand(teacher):
    student = _model(2, seed=2).eval()
    ids = _ids()
    b = teacher_outputs(teacher, ids, None, hidden_layers=(2, 4), cls_only=False, attention_layers=(2, 4))
    out = student(ids, output_hidden_states=True, output_attentions=True)
    both = LayerTransfer(student, layer_map={1: 2, 2: 4}, hidden_weight=0.5, attention_weight=2.0)(b, None)
    hid = sum(((out.hidden_states[j] - b.hidden_at(k)) ** 2).mean() for j, k in ((1, 2), (2, 4)))
    att = sum(((out.attentions[j - 1] - b.attention_at(k)) ** 2).mean() for j, k in ((1, 2), (2, 4)))
    torch.testing.assert_close(both["hidden"], 0.5 * hid)
    torch.testing.assert_close(both["attention"], 2.0 * att)
    one = LayerTransfer(student, layer_map={1: 2, 2: 4}, layer=2)(b, None)
    torch.testing.assert_close(one["hidden"], ((out.hidden_states[2] - b.hidden_at(4)) ** 2).mean())
    assert set(LayerTransfer(student, layer_map={1: 2}, attention_weight=0.0)(b, None)) == {"hidden"}


def test_layer_stage_trains_only_its_block(teacher):
    student = _model(3, seed=2)
    ids = _ids(24)
    store = precompute_teacher(teacher, torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(ids, torch.zeros(24, dtype=torch.long)), batch_size=8),
        hidden_layers=(1, 2, 4), cls_only=False, attention_layers=(1, 2, 4), seed=0)
    before = copy.deepcopy(student.state_dict())
    method = LayerTransfer(student, layer_map={1: 1, 2: 2, 3: 4}, layer=2)
    block = student.encoder.encoder.layer[1]
    assert {id(p) for p in method.trainable_parameters()} == {id(p) for p in block.parameters()}
    fit(method, store, None, num_epochs=2, lr=1e-2, seed=0, progress=False)
    after = student.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("encoder.encoder.layer.1.") for k in changed)
    # the gradient stopped at the block's input: the embeddings and block 1 got none (not merely no update)
    assert all(p.grad is None for p in student.encoder.embeddings.parameters())
    assert all(p.grad is None for p in student.encoder.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in student.parameters())   # nothing was frozen for good


def test_all_at_once_lowers_every_layer_term(teacher):
    student = _model(2, seed=2)
    ids = _ids(24)
    store = precompute_teacher(teacher, torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(ids, torch.zeros(24, dtype=torch.long)), batch_size=8),
        hidden_layers=(2, 4), cls_only=False, attention_layers=(2, 4), seed=0)
    method = LayerTransfer(student, layer_map={1: 2, 2: 4})
    history = fit(method, store, None, num_epochs=5, lr=3e-3, seed=0, progress=False)
    assert history["hidden"][-1] < history["hidden"][0] and history["attention"][-1] < history["attention"][0]


def test_layer_transfer_validation(teacher):
    student = _model(2)
    with pytest.raises(ValueError, match="layer_map"):
        LayerTransfer(student, layer_map={3: 1})
    with pytest.raises(ValueError, match="layer_map"):
        LayerTransfer(student, teacher, layer_map={1: 5})
    with pytest.raises(ValueError, match="layer"):
        LayerTransfer(student, layer_map={1: 2}, layer=2)
    with pytest.raises(ValueError, match="hidden size"):
        LayerTransfer(_model(2, hidden=16), teacher, layer_map={1: 2})
    with pytest.raises(ValueError, match="hidden_weight"):
        LayerTransfer(student, layer_map={1: 2}, hidden_weight=-1.0)
    shared = share_layers(_model(2), 0)
    b = teacher_outputs(teacher, _ids(), None, hidden_layers=(2,), cls_only=False, attention_layers=(2,))
    with pytest.raises(ValueError, match="shared"):
        LayerTransfer(shared, layer_map={1: 1, 2: 2}, layer=2)(b, None)
