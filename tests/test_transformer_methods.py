"""Part III distillers: each term equals its pure loss; precomputed teacher outputs equal a live forward."""

import os

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from kdedu import losses, zoo
from kdedu.methods import (
    ALPKD,
    CKD,
    PKD,
    DistilBERTKD,
    TeacherBatch,
    TinyBERTKD,
    contiguous_groups,
    precompute_teacher,
    skip_map,
    teacher_outputs,
    uniform_map,
)
from kdedu.models import SequenceClassifier, small_bert
from kdedu.train import fit

VOCAB = 50


def _model(layers, hidden, heads=2, seed=0):
    torch.manual_seed(seed)
    return SequenceClassifier(small_bert(layers, hidden, heads, vocab_size=VOCAB, max_position_embeddings=32), 2,
                              dropout=0.0)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, VOCAB, (24, 8), generator=g)
    ids[::3, 6:] = 0                                           # some padding
    ids[:, 0] = 2                                              # a [CLS]-like first token
    y = torch.randint(0, 2, (24,), generator=g)
    return ids, y


@pytest.fixture(scope="module")
def teacher():
    t = _model(4, 32, seed=1).eval()
    t.requires_grad_(False)
    return t


def _student(width=32, layers=2):
    return _model(layers, width, seed=2)


def _everything(teacher, ids):
    return teacher_outputs(teacher, ids, None, hidden_layers=range(0, 5), cls_only=False,
                           attention_layers=range(1, 5))


def test_maps():
    assert skip_map(3, 6) == {1: 2, 2: 4} and skip_map(3, 6, last=True) == {1: 2, 2: 4, 3: 6}
    assert uniform_map(2, 4) == {0: 0, 1: 2, 2: 4}
    assert contiguous_groups(3, 6) == [[1, 2], [3, 4], [5, 6]] and contiguous_groups(2, 5) == [[1, 2], [3, 4, 5]]
    with pytest.raises(ValueError):
        skip_map(4, 6)


def test_precomputed_equals_live(teacher, data):
    ids, y = data
    loader = DataLoader(TensorDataset(ids, y), batch_size=10)
    pre = precompute_teacher(teacher, loader, hidden_layers=(0, 2, -1), cls_only=False, attention_layers=(2,),
                             shuffle=False)
    batches = list(pre)
    assert isinstance(batches[0][0], TeacherBatch) and [len(b) for b, _ in batches] == [10, 10, 4]
    b = batches[0][0]
    out = teacher(ids[:10], output_hidden_states=True, output_attentions=True)
    torch.testing.assert_close(b.logits, out.logits)
    torch.testing.assert_close(b.hidden_at(4), out.hidden_states[4])
    torch.testing.assert_close(b.hidden_at(-1), out.hidden_states[-1])
    torch.testing.assert_close(b.hidden_at(0), out.hidden_states[0])
    torch.testing.assert_close(b.attention_at(2), out.attentions[1])
    torch.testing.assert_close(torch.cat([y for _, y in batches]), y)
    with pytest.raises(KeyError, match="not stored"):
        b.hidden_at(1)
    cls = next(iter(precompute_teacher(teacher, loader, hidden_layers=(1,), shuffle=False)))[0]
    assert cls.hidden.shape == (10, 1, 32)                     # [CLS] only: (B, n, H)
    torch.testing.assert_close(cls.hidden_at(1), out.hidden_states[1][:, 0])
    half = next(iter(precompute_teacher(teacher, loader, hidden_layers=(1,), dtype=torch.float16, shuffle=False)))[0]
    assert half.hidden.dtype == torch.float32
    torch.testing.assert_close(half.hidden_at(1), cls.hidden_at(1), atol=1e-2, rtol=1e-2)
    assert b.to("cpu").input_ids is not None


def _terms(method, teacher, ids, y):
    method.eval()  # no dropout, so the terms can be recomputed
    pre = method(teacher_outputs(teacher, ids, None, **method.teacher_needs), y)
    live = method(ids, y) if method.teacher is not None else None
    return pre, live


def test_distilbert_terms(teacher, data):
    ids, y = data
    student = _student()
    method = DistilBERTKD(student, teacher, temperature=2.0)  # the recipe's 5 : 2 : 1, divided by 7
    terms, live = _terms(method, teacher, ids, y)
    s, t = student(ids, output_hidden_states=True), _everything(teacher, ids)
    mask = (ids != 0).long()
    torch.testing.assert_close(terms["kd"], 5 / 7 * losses.kd_loss(s.logits, t.logits, 2.0))
    torch.testing.assert_close(terms["ce"], 2 / 7 * F.cross_entropy(s.logits, y))
    torch.testing.assert_close(terms["cosine"], 1 / 7 * losses.cosine_hidden_loss(s.hidden_states[-1], t.hidden_at(4),
                                                                                  mask))
    total = losses.distilbert_loss(s.logits, t.logits, s.logits, y, s.hidden_states[-1], t.hidden_at(4), 2.0,
                                   (5.0, 2.0, 1.0), mask)
    torch.testing.assert_close(7 * sum(terms.values()), total)
    for k in terms:
        torch.testing.assert_close(terms[k], live[k])
    assert method.teacher_needs["hidden_layers"] == (-1,)


def test_pkd_terms(teacher, data):
    ids, y = data
    student = _student()
    method = PKD(student, num_teacher_layers=4, alpha=0.3, temperature=5.0, hidden_weight=10.0)
    assert method.layer_map == {1: 2}
    method = PKD(student, layer_map={1: 2, 2: 4}, alpha=0.3, temperature=5.0, hidden_weight=10.0)
    terms, _ = _terms(method, teacher, ids, y)
    s, t = student(ids, output_hidden_states=True), _everything(teacher, ids)
    torch.testing.assert_close(terms["ce"], 0.7 * F.cross_entropy(s.logits, y))
    torch.testing.assert_close(terms["kd"], 0.3 * losses.kd_loss(s.logits, t.logits, 5.0))
    s_cls = [h[:, 0] for h in s.hidden_states]
    t_cls = [t.hidden_at(k)[:, 0] for k in range(5)]
    torch.testing.assert_close(terms["hidden"], 10.0 * losses.pkd_loss(s_cls, t_cls, {1: 2, 2: 4}))


def test_tinybert_terms_and_projections(teacher, data):
    ids, y = data
    student = _student(width=16)
    method = TinyBERTKD(student, teacher_width=32, num_teacher_layers=4, temperature=1.0,
                        embedding_weight=1.0, attention_weight=2.0, hidden_weight=3.0, alpha=0.6)
    assert method.layer_map == {0: 0, 1: 2, 2: 4}
    terms, _ = _terms(method, teacher, ids, y)
    s = student(ids, output_hidden_states=True, output_attentions=True)
    t = _everything(teacher, ids)
    torch.testing.assert_close(terms["embedding"], losses.tinybert_embedding_loss(s.hidden_states[0], t.hidden_at(0),
                                                                             method.proj_embd))
    torch.testing.assert_close(terms["attention"], 2.0 * losses.tinybert_attention_loss(
        [s.attentions[0], s.attentions[1]], [t.attention_at(2), t.attention_at(4)]))
    torch.testing.assert_close(terms["hidden"], 3.0 * losses.tinybert_hidden_loss(
        [s.hidden_states[1], s.hidden_states[2]], [t.hidden_at(2), t.hidden_at(4)], method.proj_hidden))
    torch.testing.assert_close(terms["kd"], 0.6 * losses.kd_loss(s.logits, t.logits, 1.0))
    torch.testing.assert_close(terms["ce"], 0.4 * F.cross_entropy(s.logits, y))
    trainable = {id(p) for p in method.trainable_parameters()}
    projections = [*method.proj_embd.parameters(), *method.proj_hidden.parameters()]
    assert all(id(p) in trainable for p in projections)
    sum(terms.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projections)


@pytest.mark.parametrize("combine", ["mean", "concat"])
def test_ckd_terms(teacher, data, combine):
    ids, y = data
    student = _student()
    method = CKD(student, teacher, combine=combine, alpha=0.4, temperature=3.0, hidden_weight=2.0)
    assert method.groups == [[1, 2], [3, 4]]
    terms, live = _terms(method, teacher, ids, y)
    s, t = student(ids, output_hidden_states=True), _everything(teacher, ids)
    torch.testing.assert_close(terms["ce"], 0.6 * F.cross_entropy(s.logits, y))
    torch.testing.assert_close(terms["kd"], 0.4 * losses.kd_loss(s.logits, t.logits, 3.0))
    s_cls = [h[:, 0] for h in s.hidden_states[1:]]
    t_cls = [t.hidden_at(k)[:, 0] for k in range(1, 5)]
    proj = list(method.projections) if combine == "concat" else None
    torch.testing.assert_close(terms["hidden"], 2.0 * losses.ckd_loss(s_cls, t_cls, [[0, 1], [2, 3]], combine, proj))
    for k in terms:
        torch.testing.assert_close(terms[k], live[k])


def test_alp_terms(teacher, data):
    ids, y = data
    student = _student()
    method = ALPKD(student, num_teacher_layers=4, alpha=0.3, hidden_weight=4.0, temperature=2.0, scale=0.1)
    terms, _ = _terms(method, teacher, ids, y)
    s, t = student(ids, output_hidden_states=True), _everything(teacher, ids)
    torch.testing.assert_close(terms["ce"], 0.7 * F.cross_entropy(s.logits, y))
    torch.testing.assert_close(terms["kd"], 0.3 * losses.kd_loss(s.logits, t.logits, 2.0))
    s_cls = [h[:, 0] for h in s.hidden_states[1:]]
    t_cls = [t.hidden_at(k)[:, 0] for k in range(1, 5)]
    torch.testing.assert_close(terms["hidden"], 4.0 * losses.alp_loss(s_cls, t_cls, 0.1))


def test_errors(teacher, data):
    ids, y = data
    with pytest.raises(TypeError, match="TeacherBatch"):
        PKD(_student(), layer_map={1: 2})(ids, y)
    with pytest.raises(ValueError, match="num_teacher_layers"):
        ALPKD(_student())
    with pytest.raises(ValueError, match="teacher_width"):
        TinyBERTKD(_student(width=16), num_teacher_layers=4)
    with pytest.raises(ValueError, match="out of range"):
        teacher_outputs(teacher, ids, hidden_layers=(7,))


METHODS = {
    "distilbert": lambda s: DistilBERTKD(s),
    "pkd": lambda s: PKD(s, num_teacher_layers=4),
    "tinybert": lambda s: TinyBERTKD(_student(width=16), teacher_width=32, num_teacher_layers=4),
    "ckd": lambda s: CKD(s, num_teacher_layers=4, combine="concat", teacher_width=32),
    "alp": lambda s: ALPKD(s, num_teacher_layers=4, scale=32 ** -0.5),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_fit_two_epochs(teacher, data, name):
    ids, y = data
    method = METHODS[name](_student())
    train = precompute_teacher(teacher, DataLoader(TensorDataset(ids, y), batch_size=8), **method.teacher_needs)
    before = [p.detach().clone() for p in method.student.parameters()]
    history = fit(method, train, DataLoader(TensorDataset(ids, y), batch_size=12), num_epochs=2, lr=1e-3,
                  device="cpu", progress=False)
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(history["loss"])))
    assert 0.0 <= history.last["val_acc"] <= 1.0
    assert any(not torch.equal(a, b) for a, b in zip(before, method.student.parameters(), strict=True))


def test_text_teacher_tiny(tmp_path):
    m = zoo.text_teacher("sentiment-tiny", root=tmp_path, verbose=False, limit=200, num_epochs=1)
    metrics = m.meta["metrics"]
    assert set(metrics) == {"val_acc", "test_acc", "bayes_val_acc", "bayes_test_acc"}
    assert not any(p.requires_grad for p in m.parameters())
    again = zoo.text_teacher("sentiment-tiny", root=tmp_path, verbose=False, limit=200, num_epochs=1)
    for a, b in zip(m.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="unknown recipe"):
        zoo.text_teacher("sentiment-tiny", root=tmp_path, hidden_size=3)
    with pytest.raises(ValueError, match="train_layers"):
        zoo.text_teacher("sentiment-tiny", root=tmp_path, verbose=False, limit=50, train_layers=3)


def test_text_teacher_trains_only_the_top_blocks_and_the_head(tmp_path):
    """train_layers=1 of 2: the embeddings and block 1 keep their initial weights; block 2 and the head train."""
    from kdedu.data import word_tokenizer

    m = zoo.text_teacher("sentiment-tiny", root=tmp_path, verbose=False, limit=96, num_epochs=1, train_layers=1)
    torch.manual_seed(0)  # the recipe's initial weights (seed 0)
    init = small_bert(2, 32, 2, vocab_size=word_tokenizer().vocab_size).state_dict()
    trained = m.encoder.state_dict()
    frozen = [k for k in init if k.startswith(("embeddings.", "encoder.layer.0."))]
    top = [k for k in init if k.startswith("encoder.layer.1.")]
    assert frozen and top
    assert all(torch.equal(trained[k], init[k]) for k in frozen)
    assert all(not torch.equal(trained[k], init[k]) for k in top if k.endswith("weight"))


@pytest.mark.skipif(os.environ.get("KDEDU_SLOW") != "1", reason="fine-tunes MiniLM (~1 min); set KDEDU_SLOW=1")
def test_text_teacher_minilm(tmp_path):
    m = zoo.text_teacher(root=tmp_path, verbose=False)
    assert m.meta["metrics"]["val_acc"] > 0.7 and m.tokenizer.vocab_size == 30522


def test_precompute_trims_and_groups_without_changing_outputs(teacher, data):
    """Batches of different widths are padded into one store; every batch comes back cut to its longest
    sentence, and the student's loss terms on it equal those on the full-width batch."""
    ids, y = data
    ids = ids.clone()
    ids[::2, ids.shape[1] // 2:] = 0                                         # half the sentences are short
    loader = DataLoader(TensorDataset(ids, y), batch_size=6)
    needs = {"hidden_layers": (0, 2), "cls_only": False, "attention_layers": (2,)}
    full = next(iter(precompute_teacher(teacher, loader, shuffle=False, batch_size=len(y), **needs)))[0]
    assert full.input_ids.shape == ids.shape
    grouped = list(precompute_teacher(teacher, loader, shuffle=True, group_by_length=True, batch_size=4, **needs))
    assert sum(len(b) for b, _ in grouped) == len(y)
    assert any(b.input_ids.shape[1] < ids.shape[1] for b, _ in grouped)
    for b, yb in grouped:
        width = b.input_ids.shape[1]
        assert b.attention_mask[:, -1].any() and b.hidden.shape[2] == width and b.attentions.shape[-1] == width
        rows = torch.stack([torch.nonzero((ids == r).all(1))[0, 0] for r in
                            torch.nn.functional.pad(b.input_ids, (0, ids.shape[1] - width))])
        torch.testing.assert_close(b.logits, full.logits[rows])
        torch.testing.assert_close(yb, y[rows])
        torch.testing.assert_close(b.hidden_at(2), full.hidden_at(2)[rows, :width])
    student = _student().eval()                                             # a BERT ignores padded columns
    b, _ = grouped[0]
    rows = torch.stack([torch.nonzero((ids == r).all(1))[0, 0] for r in
                        torch.nn.functional.pad(b.input_ids, (0, ids.shape[1] - b.input_ids.shape[1]))])
    torch.testing.assert_close(student(b.input_ids), student(ids[rows]), atol=1e-5, rtol=1e-5)


def test_one_store_serves_every_method(teacher, data):
    """A store with every layer's token states and maps gives each method the terms its own store gives."""
    ids, y = data
    everything = teacher_outputs(teacher, ids, None, hidden_layers=range(5), cls_only=False,
                                 attention_layers=range(1, 5))
    for make in (lambda s: PKD(s, num_teacher_layers=4), lambda s: CKD(s, num_teacher_layers=4),
                 lambda s: ALPKD(s, num_teacher_layers=4),
                 lambda s: TinyBERTKD(s, teacher_width=32, num_teacher_layers=4),
                 lambda s: DistilBERTKD(s)):
        method = make(_student()).eval()
        own = method(teacher_outputs(teacher, ids, None, **method.teacher_needs), y)
        shared = method(everything, y)
        assert own.keys() == shared.keys()
        for k in own:
            torch.testing.assert_close(shared[k], own[k])
    torch.testing.assert_close(everything.cls_at(2), everything.hidden_at(2)[:, 0])
