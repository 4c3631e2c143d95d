"""kdedu.methods: each method's loss terms against the pure losses, and the procedures around them."""

from __future__ import annotations

import importlib

import pytest
import torch
from refs import ref_ce
from torch import nn

from kdedu import losses
from kdedu.data import digits, make_loader
from kdedu.methods import KD, LabelSmoothing, Supervised, VirtualTeacherKD, born_again, ensemble_logits
from kdedu.methods.teacher_free import self_teacher
from kdedu.models import MLP, SmallCNN

born_again_module = importlib.import_module("kdedu.methods.born_again")


@pytest.fixture(scope="module")
def batch():
    d = digits("train", limit=48)
    return d.x, d.y


def student_and_teacher():
    torch.manual_seed(0)
    student = MLP(64, (16,), 10)
    teacher = SmallCNN(1, (4, 8), 10)
    with torch.no_grad():  # a teacher with confident, non-trivial outputs
        teacher.head.weight.mul_(20)
    return student, teacher


# ------------------------------------------------------------------------------------------
# the loss terms of each method
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha,T", [(0.3, 3.0), (0.5, 4.0), (1.0, 1.0), (0.9, 8.0)])
def test_kd_terms_sum_to_distillation_loss(batch, alpha, T):
    x, y = batch
    student, teacher = student_and_teacher()
    kd = KD(student, teacher, alpha=alpha, temperature=T)
    terms = kd(x, y)
    assert set(terms) == {"ce", "kd"}
    teacher.eval()
    with torch.no_grad():
        z_t = teacher(x)
    z_s = student(x)
    torch.testing.assert_close(sum(terms.values()), losses.distillation_loss(z_s, z_t, y, alpha=alpha, temperature=T))
    assert terms["ce"].item() == pytest.approx((1 - alpha) * ref_ce(z_s, y), rel=1e-5, abs=1e-7)
    torch.testing.assert_close(terms["kd"], alpha * losses.kd_loss(z_s, z_t, T))
    # the gradient reaches the student only
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_kd_alpha_zero_is_supervised(batch):
    x, y = batch
    student, teacher = student_and_teacher()
    kd_terms = KD(student, teacher, alpha=0.0, temperature=4.0)(x, y)
    sup_terms = Supervised(student)(x, y)
    assert set(sup_terms) == {"ce"}
    torch.testing.assert_close(sum(kd_terms.values()), sup_terms["ce"])
    assert kd_terms["kd"].item() == 0.0
    assert sup_terms["ce"].item() == pytest.approx(ref_ce(student(x), y), rel=1e-5)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.4])
def test_label_smoothing_method(batch, eps):
    x, y = batch
    student, _ = student_and_teacher()
    terms = LabelSmoothing(student, epsilon=eps)(x, y)
    assert set(terms) == {"ls"}
    torch.testing.assert_close(terms["ls"], losses.label_smoothing_loss(student(x), y, eps))


@pytest.mark.parametrize("alpha,T,a", [(0.5, 1.0, 0.9), (0.8, 3.0, 0.95), (0.0, 2.0, 0.9)])
def test_virtual_teacher_method(batch, alpha, T, a):
    x, y = batch
    student, _ = student_and_teacher()
    method = VirtualTeacherKD(student, alpha=alpha, temperature=T, correct_prob=a)
    assert method.teacher is None
    terms = method(x, y)
    torch.testing.assert_close(sum(terms.values()), losses.virtual_teacher_loss(student(x), y, alpha, T, a))


def test_method_bad_arguments():
    student, teacher = student_and_teacher()
    with pytest.raises(TypeError, match="teacher"):
        KD(student, None)
    with pytest.raises(ValueError, match="alpha"):
        KD(student, teacher, alpha=1.5)
    with pytest.raises(ValueError, match="temperature"):
        KD(student, teacher, temperature=0)
    with pytest.raises(ValueError, match="epsilon"):
        LabelSmoothing(student, epsilon=-0.1)
    with pytest.raises(ValueError, match="correct_prob"):
        VirtualTeacherKD(student, correct_prob=1.5)
    with pytest.raises(ValueError, match="alpha"):
        VirtualTeacherKD(student, alpha=-1)
    with pytest.raises(TypeError, match="temperature"):
        VirtualTeacherKD(student, temperature="4")


# ------------------------------------------------------------------------------------------
# Tf-KD self: the self-teacher
# ------------------------------------------------------------------------------------------
def test_self_teacher_is_a_frozen_independent_copy(batch):
    x, _ = batch
    torch.manual_seed(1)
    student = MLP(64, (16,), 10, dropout=0.3).train()
    teacher = self_teacher(student)
    assert teacher is not student
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    assert student.training and all(p.requires_grad for p in student.parameters())  # the original is untouched
    s_ptrs = {p.data_ptr() for p in student.parameters()}
    assert not s_ptrs & {p.data_ptr() for p in teacher.parameters()}  # no shared storage
    student.eval()
    torch.testing.assert_close(teacher(x), student(x))  # same function ...
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    assert not torch.allclose(teacher(x), student(x))  # ... but a copy: training the student leaves it alone
    kd = KD(student, teacher)
    assert set(map(id, kd.trainable_parameters())) == set(map(id, student.parameters()))


# ------------------------------------------------------------------------------------------
# born-again networks
# ------------------------------------------------------------------------------------------
def test_born_again(monkeypatch):
    data = digits("train", limit=100)
    train = make_loader(data, batch_size=25, shuffle=True)
    val = make_loader(digits("val", limit=100), batch_size=100)
    inits = []

    def make_model():
        m = MLP(64, (8,), 10)
        inits.append({k: v.clone() for k, v in m.state_dict().items()})
        return m

    made = []

    class RecordingKD(KD):
        def __init__(self, student, teacher, alpha, temperature):
            made.append((student, teacher, alpha, temperature))
            super().__init__(student, teacher, alpha=alpha, temperature=temperature)

    monkeypatch.setattr(born_again_module, "KD", RecordingKD)
    models, histories = born_again(make_model, train, val, generations=2, alpha=0.8, temperature=2.0, seed=3,
                                   num_epochs=2, lr=1e-2, progress=False)
    assert len(models) == 3 and len(histories) == 3 and len(inits) == 3
    assert all(len(h) == 2 for h in histories)
    assert set(histories[0].keys()) >= {"ce", "val_acc"} and "kd" not in histories[0].keys()
    assert all("kd" in h.keys() for h in histories[1:])
    # each generation starts from a different initialisation ...
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.equal(inits[i]["net.1.weight"], inits[j]["net.1.weight"])
    # ... and generation g is distilled from generation g - 1
    assert [(s, t) for s, t, _, _ in made] == [(models[1], models[0]), (models[2], models[1])]
    assert all((a, T) == (0.8, 2.0) for _, _, a, T in made)
    # trained: the weights moved away from their initialisation
    for m, init in zip(models, inits, strict=True):
        assert not torch.equal(m.state_dict()["net.1.weight"], init["net.1.weight"])


def test_born_again_is_reproducible_and_validates():
    train = make_loader(digits("train", limit=60), batch_size=30, shuffle=True)

    def run():
        return born_again(lambda: MLP(64, (), 10), train, None, generations=1, seed=0, num_epochs=1, progress=False)

    (a, ha), (b, hb) = run(), run()
    for m1, m2 in zip(a, b, strict=True):
        assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters(), strict=True))
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="generations"):
            born_again(lambda: MLP(64, (), 10), train, generations=bad)


# ------------------------------------------------------------------------------------------
# ensembles
# ------------------------------------------------------------------------------------------
def test_ensemble_logits_average_probabilities():
    data = digits("val", limit=40)
    loader = make_loader(data, batch_size=16)
    torch.manual_seed(2)
    models = [MLP(64, (8,), 10) for _ in range(3)]
    for m in models:
        with torch.no_grad():
            m.net[-1].weight.mul_(10)  # make the members disagree strongly
    logits, labels = ensemble_logits(models, loader)
    assert torch.equal(labels, data.y)
    with torch.no_grad():
        probs = [torch.softmax(m.eval()(data.x).double(), -1) for m in models]
    mean_p = (probs[0] + probs[1] + probs[2]) / 3
    torch.testing.assert_close(logits.double().exp(), mean_p, rtol=1e-5, atol=1e-6)
    # averaging probabilities is not averaging logits
    mean_logits = torch.stack([m(data.x) for m in models]).mean(0).detach()
    assert not torch.allclose(torch.softmax(mean_logits.double(), -1), mean_p, atol=1e-3)
    # one model: its own log-probabilities
    single, _ = ensemble_logits(models[:1], loader)
    torch.testing.assert_close(single, torch.log_softmax(models[0](data.x), -1).detach(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="models"):
        ensemble_logits([], loader)


def test_distillers_are_modules():
    student, teacher = student_and_teacher()
    for method in (Supervised(student), KD(student, teacher), LabelSmoothing(student), VirtualTeacherKD(student)):
        assert isinstance(method, nn.Module) and method.student is student
