"""MetaDistil (Zhou et al. 2022): the pilot, the quiz, the teacher's second-order update, the real step.

Independent references: a plain ``KD`` + ``fit`` step from the same start with a copy of the updated teacher
(the student must be identical); central finite differences of a quiz loss recomputed here with a hand-written
KD loss and a first-order pilot (float64); the indices of every example the student trains on against those of
every quiz example drawn; an uninterrupted run against a checkpointed and resumed one; a full teacher against
its :class:`TeacherTop` run from stored hidden states.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kdedu.data import Split, sentiment, text_loader, word_tokenizer
from kdedu.methods import KD, MetaDistil, TeacherTop, precompute_teacher, quiz_split
from kdedu.models import SequenceClassifier, small_bert
from kdedu.train import fit


def data(n=48, d=6, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x @ torch.randn(d, c, generator=g)).argmax(-1)
    return x, y


def mlp(d=6, h=16, c=3, seed=0, dropout=0.0, dtype=torch.float32):
    torch.manual_seed(seed)
    layers = [nn.Linear(d, h), nn.Tanh()] + ([nn.Dropout(dropout)] if dropout else []) + [nn.Linear(h, c)]
    return nn.Sequential(*layers).to(dtype)


def params(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def test_a_step_is_a_kd_step_with_the_updated_teacher():
    """After one MetaDistil step the student is what plain KD gives from the same start with the updated teacher
    (dropout on: the pilot must leave the random state as it found it), and not what the old teacher gives."""
    x, y = data()
    train = DataLoader(TensorDataset(x[:16], y[:16]), batch_size=16)
    quiz = DataLoader(TensorDataset(x[16:], y[16:]), batch_size=8)
    student0, teacher0 = mlp(seed=1, dropout=0.3), mlp(seed=2)
    method = MetaDistil(copy.deepcopy(student0), copy.deepcopy(teacher0), quiz, pilot_lr=0.5, teacher_lr=0.05,
                        alpha=0.7, temperature=2.0)
    run = {"num_epochs": 1, "lr": 0.01, "seed": 3, "device": "cpu", "progress": False}
    fit(method, train, **run)
    updated = copy.deepcopy(method.teacher)
    old, new = params(teacher0).values(), params(updated).values()
    assert any(not torch.equal(a, b) for a, b in zip(old, new, strict=True))
    for teacher, same in ((updated, True), (teacher0, False)):
        student = copy.deepcopy(student0)
        fit(KD(student, copy.deepcopy(teacher), alpha=0.7, temperature=2.0), train, **run)
        pairs = zip(params(student).values(), params(method.student).values(), strict=True)
        equal = [torch.equal(a, b) for a, b in pairs]
        assert all(equal) if same else not all(equal)


def _kl_kd(z_s, z_t, y, alpha, T):
    """(1 - alpha) CE + alpha T^2 KL(p_t || p_s), written out (float64)."""
    log_ps = z_s / T - torch.logsumexp(z_s / T, -1, keepdim=True)
    log_pt = z_t / T - torch.logsumexp(z_t / T, -1, keepdim=True)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean()
    ce = -(z_s - torch.logsumexp(z_s, -1, keepdim=True)).gather(1, y[:, None]).mean()
    return (1 - alpha) * ce + alpha * T * T * kl


@pytest.mark.parametrize("teacher_ce_weight", [0.0, 0.5])
def test_meta_gradient_matches_finite_differences(teacher_ce_weight):
    """The teacher's update equals -lr times the derivative of the pilot student's quiz loss (+ the teacher's CE),
    computed here by central differences over every teacher weight, with a first-order pilot."""
    x, y = data(n=24)
    x = x.double()
    bx, by = x[:8], y[:8]
    drawn = []

    def record(items):
        batch = torch.utils.data.default_collate(items)
        drawn.append(batch)
        return batch

    quiz = DataLoader(TensorDataset(x[8:], y[8:]), batch_size=6, collate_fn=record)
    student, teacher = mlp(seed=4, dtype=torch.float64), mlp(h=5, seed=5, dtype=torch.float64)
    lam, mu, alpha, T = 0.7, 1e-3, 0.6, 2.0
    method = MetaDistil(copy.deepcopy(student), copy.deepcopy(teacher), quiz, pilot_lr=lam, teacher_lr=mu, alpha=alpha,
                        temperature=T, teacher_ce_weight=teacher_ce_weight, teacher_optimizer="sgd")
    before = params(method.teacher)
    method.train()
    method.meta_step(bx, by)
    after = params(method.teacher)
    qx, qy = drawn[0]
    names = [n for n, _ in student.named_parameters()]

    def meta_loss(t_state):
        t = copy.deepcopy(teacher)
        t.load_state_dict(t_state)
        s = copy.deepcopy(student)
        z_t = t(bx)
        loss = _kl_kd(s(bx), z_t, by, alpha, T)
        grads = torch.autograd.grad(loss, list(s.parameters()))
        with torch.no_grad():
            for p, g in zip(s.parameters(), grads, strict=True):
                p -= lam * g
            ce_q = -(s(qx) - torch.logsumexp(s(qx), -1, keepdim=True)).gather(1, qy[:, None]).mean()
            ce_t = -(z_t - torch.logsumexp(z_t, -1, keepdim=True)).gather(1, by[:, None]).mean()
        return (ce_q + teacher_ce_weight * ce_t).item()

    assert names  # the student has parameters to pilot
    h = 1e-5
    for name, value in before.items():
        for i in range(value.numel()):
            plus, minus = copy.deepcopy(before), copy.deepcopy(before)
            plus[name].view(-1)[i] += h
            minus[name].view(-1)[i] -= h
            fd = (meta_loss(plus) - meta_loss(minus)) / (2 * h)
            got = (before[name].view(-1)[i] - after[name].view(-1)[i]).item() / mu
            assert math.isclose(got, fd, rel_tol=1e-5, abs_tol=1e-8), (name, i, got, fd)


def test_the_quiz_set_is_disjoint_from_the_training_batches():
    x, y = data(n=60)
    ids = torch.arange(60)
    full = TensorDataset(x, y, ids)
    train_part, quiz_part = quiz_split(full, 12, seed=7)
    assert sorted(train_part.indices + quiz_part.indices) == list(range(60)) and len(quiz_part) == 12
    seen = {"train": [], "quiz": []}

    def collate(kind):
        def fn(items):
            seen[kind] += [int(i) for _, _, i in items]
            return torch.stack([a for a, _, _ in items]), torch.stack([b for _, b, _ in items])
        return fn

    train = DataLoader(train_part, batch_size=8, shuffle=True, collate_fn=collate("train"))
    quiz = DataLoader(quiz_part, batch_size=8, collate_fn=collate("quiz"))
    fit(MetaDistil(mlp(seed=1), mlp(seed=2), quiz, pilot_lr=0.1, teacher_lr=0.01), train, num_epochs=2,
        device="cpu", progress=False)
    assert len(seen["train"]) == 2 * 48 and len(seen["quiz"]) == 2 * 6 * 8  # every training example, 12 quizzes
    assert not set(seen["train"]) & set(seen["quiz"])
    assert set(seen["quiz"]) <= set(quiz_part.indices)


def test_quiz_split_of_text_and_digits():
    text = sentiment("train", limit=50)
    train, quiz = quiz_split(text, 10, seed=1)
    assert len(quiz) == 10 and len(train) == 40
    assert not set(train.sentences) & set(quiz.sentences) or len(set(text.sentences)) < 50
    assert sorted(train.sentences + quiz.sentences) == sorted(text.sentences)
    for part in (train, quiz):  # each sentence keeps its own label and probability
        for s, label, p in zip(part.sentences, part.y.tolist(), part.probs.tolist(), strict=True):
            i = text.sentences.index(s)
            assert text.y[i].item() == label and text.probs[i].item() == p
    x, y = data(n=30)
    a, b = quiz_split(Split(x, y), 5, seed=0)
    assert len(a) == 25 and len(b) == 5 and torch.equal(torch.cat([a.x, b.x]).sort(0).values, x.sort(0).values)
    with pytest.raises(ValueError, match="quiz_size"):
        quiz_split(text, 50)
    with pytest.raises(TypeError, match="data"):
        quiz_split([1, 2, 3], 1)


def test_checkpoint_resumes_student_teacher_and_quiz_sampler(tmp_path):
    x, y = data(n=40)
    quiz = DataLoader(TensorDataset(x[32:], y[32:]), batch_size=4)

    def train():  # a fresh loader per run: its own seeded generator orders the batches
        return DataLoader(TensorDataset(x[:32], y[:32]), batch_size=8, shuffle=True,
                          generator=torch.Generator().manual_seed(0))

    def method():
        return MetaDistil(mlp(seed=1, dropout=0.2), mlp(seed=2), quiz, pilot_lr=0.3, teacher_lr=0.01,
                          teacher_ce_weight=0.2)

    straight = method()
    fit(straight, train(), num_epochs=3, seed=0, device="cpu", progress=False)
    ckpt = tmp_path / "run.pt"
    fit(method(), train(), num_epochs=1, seed=0, device="cpu", progress=False, checkpoint=ckpt)
    resumed = method()
    fit(resumed, train(), num_epochs=3, seed=0, device="cpu", progress=False, checkpoint=ckpt)
    for a, b in zip(params(straight).values(), params(resumed).values(), strict=True):
        assert torch.equal(a, b)
    assert straight.meta_log == resumed.meta_log and len(resumed.meta_log) == 12
    moments = [[s["exp_avg"] for s in m.teacher_optimizer.state_dict()["state"].values()] for m in (straight, resumed)]
    assert len(moments[0]) == 4 and all(torch.equal(a, b) for a, b in zip(*moments, strict=True))
    assert torch.equal(straight.quiz_generator.get_state(), resumed.quiz_generator.get_state())


def test_the_teacher_is_trained_by_its_own_optimiser_only():
    x, y = data()
    quiz = DataLoader(TensorDataset(x[40:], y[40:]), batch_size=4)
    student, teacher = mlp(seed=1), mlp(seed=2)
    method = MetaDistil(student, teacher, quiz, pilot_lr=0.1, teacher_lr=0.01, teacher_params=["2"])  # the head
    assert {id(p) for p in method.trainable_parameters()} == {id(p) for p in student.parameters()}
    assert method.teacher_names == ["2.weight", "2.bias"]
    first = params(teacher)
    method.train()
    terms = method(x[:8], y[:8])
    assert set(terms) == {"ce", "kd"} and all(p.grad is None for p in student.parameters())
    now = params(teacher)
    assert torch.equal(first["0.weight"], now["0.weight"]) and not torch.equal(first["2.weight"], now["2.weight"])
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert set(method.meta_log[0]) == {"quiz", "teacher_ce", "teacher_entropy", "agreement"}


def test_bad_arguments():
    x, y = data()
    quiz = DataLoader(TensorDataset(x, y), batch_size=4)
    with pytest.raises(TypeError, match="quiz"):
        MetaDistil(mlp(), mlp(), TensorDataset(x, y), pilot_lr=0.1, teacher_lr=0.1)
    with pytest.raises(ValueError, match="pilot_lr"):
        MetaDistil(mlp(), mlp(), quiz, pilot_lr=-1.0, teacher_lr=0.1)
    with pytest.raises(ValueError, match="teacher_params"):
        MetaDistil(mlp(), mlp(), quiz, pilot_lr=0.1, teacher_lr=0.1, teacher_params=["head"])
    with pytest.raises(ValueError, match="teacher_optimizer"):
        MetaDistil(mlp(), mlp(), quiz, pilot_lr=0.1, teacher_lr=0.1, teacher_optimizer="lion")
    with pytest.raises(TypeError, match="teacher"):
        MetaDistil(mlp(), None, quiz, pilot_lr=0.1, teacher_lr=0.1)
    with pytest.raises(ValueError, match="labels"):
        MetaDistil(mlp(), mlp(), quiz, pilot_lr=0.1, teacher_lr=0.1)(x, None)


@pytest.fixture(scope="module")
def tiny_text():
    tok = word_tokenizer()
    torch.manual_seed(0)
    teacher = SequenceClassifier(small_bert(3, 16, 2, vocab_size=tok.vocab_size), 2, dropout=0.0).eval()
    teacher.requires_grad_(False)
    split = sentiment("train", limit=40)
    return teacher, tok, split


def test_teacher_top_equals_the_teacher_and_meta_trains_on_stored_states(tiny_text):
    teacher, tok, split = tiny_text
    top = TeacherTop(teacher, train_layers=1)
    assert top.start == 2 and top.teacher_needs == {"hidden_layers": (2,), "cls_only": False}
    train, quiz = quiz_split(split, 8, seed=0)
    store = precompute_teacher(teacher, text_loader(train, tok, batch_size=8), shuffle=False, **top.teacher_needs)
    quiz_store = precompute_teacher(teacher, text_loader(quiz, tok, batch_size=4), **top.teacher_needs)
    for b, _ in store:
        with torch.no_grad():
            assert torch.allclose(top(b), teacher(b.input_ids, b.attention_mask), atol=1e-5)
    torch.manual_seed(1)
    student = SequenceClassifier(small_bert(1, 16, 2, vocab_size=tok.vocab_size), 2)
    method = MetaDistil(student, top, quiz_store, pilot_lr=0.1, teacher_lr=1e-2)
    before = params(top)
    fit(method, store, num_epochs=1, device="cpu", progress=False)
    assert len(method.meta_log) == len(store)
    assert any(not torch.equal(before[k], v) for k, v in params(top).items())
    assert torch.equal(teacher.encoder.encoder.layer[2].output.dense.weight,  # the teacher itself is untouched
                       TeacherTop(teacher).blocks[0].output.dense.weight)
    with pytest.raises(ValueError, match="train_layers"):
        TeacherTop(teacher, train_layers=4)
    with pytest.raises(TypeError, match="SequenceClassifier"):
        TeacherTop(mlp())
