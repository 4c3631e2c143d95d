"""kdedu.train: the one training loop, on a tiny synthetic problem (a few hundred 2-d points)."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kdedu.methods import KD, Supervised
from kdedu.models import MLP
from kdedu.train import Distiller, History, evaluate, fit, predict, seed_everything


def blobs(n: int, seed: int):
    """Three Gaussian blobs in 2-d: an easy, well-separated problem."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centers = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    return centers[y] + 0.4 * torch.randn(n, 2, generator=g), y


def loaders(n_train=240, batch_size=32):
    xt, yt = blobs(n_train, 0)
    xv, yv = blobs(120, 1)
    return (DataLoader(TensorDataset(xt, yt), batch_size=batch_size, shuffle=True),
            DataLoader(TensorDataset(xv, yv), batch_size=50))


def make_student(seed=123, dropout=0.2):
    torch.manual_seed(seed)
    return MLP(2, (16,), 3, dropout=dropout)


def without_time(history: History) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "time_s"} for e in history.epochs]


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------------------------
# learning
# ------------------------------------------------------------------------------------------
def test_fit_learns_a_tiny_problem():
    train, val = loaders()
    student = make_student()
    before = evaluate(student, val)
    history = fit(Supervised(student), train, val, num_epochs=12, lr=1e-2, progress=False)
    assert len(history) == 12 and history["epoch"] == list(range(1, 13))
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["val_loss"][-1] < before["loss"]
    assert history.last["val_acc"] >= 0.95 > before["acc"]
    assert history.last["val_acc"] == pytest.approx(evaluate(student, val)["acc"])


def test_fit_sgd_cosine_learns_and_anneals(tmp_path):
    train, val = loaders()
    student = make_student(dropout=0.0)
    ckpt = tmp_path / "run.pt"
    history = fit(Supervised(student), train, val, num_epochs=10, lr=0.1, optimizer="sgd", momentum=0.8,
                  weight_decay=1e-4, cosine=True, checkpoint=ckpt, progress=False)
    assert history.last["val_acc"] >= 0.95
    group = torch.load(ckpt, weights_only=False)["optimizer"]["param_groups"][0]
    assert group["momentum"] == 0.8 and group["weight_decay"] == 1e-4
    assert group["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine annealed to 0 over the run
    fit(Supervised(make_student()), train, None, num_epochs=2, lr=0.05, checkpoint=tmp_path / "flat.pt")
    assert torch.load(tmp_path / "flat.pt", weights_only=False)["optimizer"]["param_groups"][0]["lr"] == 0.05


def test_history_logs_weighted_means_of_the_terms():
    """Each logged term is the mean over examples (batches weighted by their size); loss is their sum."""

    class Probe(Distiller):
        def __init__(self, student):
            super().__init__(student)
            self.calls = []

        def on_epoch_start(self, epoch, num_epochs):
            self.calls.append((epoch, num_epochs))

        def forward(self, x, y):
            zero = (self.student(x) * 0).sum()  # keeps the graph, changes nothing
            return {"a": zero + y.float().mean(), "b": zero + 2.0}

    x, y = torch.randn(10, 2), torch.arange(10) % 3
    probe = Probe(MLP(2, (), 3))
    history = fit(probe, DataLoader(TensorDataset(x, y), batch_size=4), DataLoader(TensorDataset(x, y)),
                  num_epochs=3, progress=False)
    assert probe.calls == [(0, 3), (1, 3), (2, 3)]
    for record in history.epochs:
        assert record["a"] == pytest.approx(y.float().mean().item())  # batches of 4, 4, 2 weighted by size
        assert record["b"] == pytest.approx(2.0)
        assert record["loss"] == pytest.approx(record["a"] + 2.0)
        assert record["time_s"] > 0
    assert history.keys()[:3] == ["epoch", "a", "b"]
    assert set(history.keys()) == {"epoch", "a", "b", "loss", "val_acc", "val_loss", "time_s"}


def test_history_keys_for_kd():
    train, val = loaders(n_train=64)
    teacher = make_student(seed=1, dropout=0.0)
    history = fit(KD(make_student(), teacher, alpha=0.3, temperature=2.0), train, val, num_epochs=2,
                  progress=False)
    assert {"ce", "kd", "loss", "val_acc", "val_loss", "time_s", "epoch"} <= set(history.keys())
    for r in history.epochs:
        assert r["loss"] == pytest.approx(r["ce"] + r["kd"])
        assert 0.0 <= r["val_acc"] <= 1.0 and r["val_loss"] > 0
    assert history["ce"] == [e["ce"] for e in history.epochs]
    assert History().last == {} and len(History()) == 0


def test_fit_without_validation_and_zero_epochs():
    train, _ = loaders(n_train=64)
    student = make_student()
    init = copy.deepcopy(student)
    history = fit(Supervised(student), train, None, num_epochs=0, progress=False)
    assert len(history) == 0 and same_weights(student, init)
    history = fit(Supervised(student), train, None, num_epochs=1, progress=False)
    assert "val_acc" not in history.last and "loss" in history.last
    assert not same_weights(student, init)


# ------------------------------------------------------------------------------------------
# seeding
# ------------------------------------------------------------------------------------------
def test_same_seed_same_run_different_seed_different_run():
    train, val = loaders(n_train=96)
    runs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        student = make_student()  # identical initial weights; the seed drives shuffling and dropout
        runs[name] = (fit(Supervised(student), train, val, num_epochs=3, lr=1e-2, seed=seed, progress=False),
                      student)
    assert without_time(runs["a"][0]) == without_time(runs["b"][0])
    assert same_weights(runs["a"][1], runs["b"][1])
    assert without_time(runs["a"][0]) != without_time(runs["c"][0])
    assert not same_weights(runs["a"][1], runs["c"][1])


def test_seed_everything():
    seed_everything(3)
    a = (torch.rand(3), random.random(), np.random.rand())
    seed_everything(3)
    b = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    for bad in (-1, 1.5, "0", None):
        with pytest.raises(ValueError, match="seed"):
            seed_everything(bad)


# ------------------------------------------------------------------------------------------
# the frozen teacher
# ------------------------------------------------------------------------------------------
class RecordingTeacher(nn.Module):
    """A teacher with BatchNorm and dropout that records the mode it was called in."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.net = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        return self.net(x)


def test_teacher_stays_frozen():
    train, val = loaders(n_train=96)
    teacher = RecordingTeacher().train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        teacher.net[1].running_mean.uniform_(-1, 1)
        teacher.net[1].running_var.uniform_(0.5, 2)
    before = copy.deepcopy(teacher.state_dict())
    distiller = KD(make_student(), teacher, alpha=0.7, temperature=3.0)
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    distiller.train()
    assert distiller.training and distiller.student.training
    assert not teacher.training and not any(m.training for m in teacher.modules())
    fit(distiller, train, val, num_epochs=2, lr=1e-2, progress=False)
    assert teacher.modes and not any(teacher.modes)  # always called in eval mode
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics
    assert all(p.grad is None for p in teacher.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert set(map(id, distiller.trainable_parameters())) == set(map(id, distiller.student.parameters()))
    x = torch.randn(5, 2)
    assert torch.equal(distiller.teacher_logits(x), distiller.teacher_logits(x))  # no dropout
    assert not distiller.teacher_logits(x).requires_grad


# ------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------
class CountingSupervised(Supervised):
    def __init__(self, student, stop_at=None):
        super().__init__(student)
        self.epochs_run, self.stop_at = 0, stop_at

    def on_epoch_start(self, epoch, num_epochs):
        if epoch == self.stop_at:
            raise KeyboardInterrupt  # the session dies at the start of this epoch
        self.epochs_run += 1


def _run(epochs, ckpt, train, val, cosine=False, stop_at=None):
    student = make_student()
    method = CountingSupervised(student, stop_at)
    history = fit(method, train, val, num_epochs=epochs, lr=1e-2, cosine=cosine, checkpoint=ckpt, progress=False)
    return history, student, method.epochs_run


def test_resume_from_checkpoint_is_identical(tmp_path):
    train, val = loaders(n_train=96)
    full, full_student, n_full = _run(4, tmp_path / "full.pt", train, val)
    first, _, n_first = _run(2, tmp_path / "resumed.pt", train, val)
    assert len(first) == 2
    resumed, resumed_student, n_resumed = _run(4, tmp_path / "resumed.pt", train, val)
    assert (n_full, n_first, n_resumed) == (4, 2, 2)  # the resumed run trained only epochs 3 and 4
    assert resumed["epoch"] == [1, 2, 3, 4]
    assert without_time(resumed) == without_time(full)
    assert same_weights(resumed_student, full_student)
    # a finished run loads and trains nothing
    again, again_student, n_again = _run(4, tmp_path / "full.pt", train, val)
    assert n_again == 0 and same_weights(again_student, full_student)
    assert without_time(again) == without_time(full)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.pt", "resumed.pt"]  # no temp files


def test_interrupted_cosine_run_resumes_identically(tmp_path):
    """A cosine run killed after 2 of 4 epochs and restarted gives the uninterrupted run
    (optimizer, scheduler and RNG state all come back from the checkpoint)."""
    train, val = loaders(n_train=96)
    full, full_student, _ = _run(4, tmp_path / "full.pt", train, val, cosine=True)
    with pytest.raises(KeyboardInterrupt):
        _run(4, tmp_path / "killed.pt", train, val, cosine=True, stop_at=2)
    resumed, resumed_student, n = _run(4, tmp_path / "killed.pt", train, val, cosine=True)
    assert n == 2
    assert without_time(resumed) == without_time(full)
    assert same_weights(resumed_student, full_student)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    train, val = loaders(n_train=64)
    ckpt = tmp_path / "ckpt" / "run.pt"  # the folder is created
    _run(1, ckpt, train, val)
    good = ckpt.read_bytes()

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(torch, "save", failing_save)
        with pytest.raises(OSError, match="disk full"):
            _run(2, ckpt, train, val)
    assert ckpt.read_bytes() == good  # the previous checkpoint is intact
    assert [p.name for p in ckpt.parent.iterdir()] == ["run.pt"]  # and no temp file is left behind
    history, _, n = _run(2, ckpt, train, val)  # and it still resumes
    assert n == 1 and len(history) == 2


# ------------------------------------------------------------------------------------------
# evaluate / predict
# ------------------------------------------------------------------------------------------
def test_evaluate_and_predict_against_manual_computation():
    train, val = loaders(n_train=64)
    student = make_student(dropout=0.5).train()
    logits, labels = predict(student, val)
    assert student.training  # the mode is restored
    xs, ys = val.dataset.tensors
    student.eval()
    with torch.no_grad():
        expected = student(xs)
    student.train()
    torch.testing.assert_close(logits, expected)
    assert torch.equal(labels, ys)
    metrics = evaluate(student, val)
    assert metrics["acc"] == pytest.approx((expected.argmax(-1) == ys).float().mean().item())
    assert metrics["loss"] == pytest.approx(F.cross_entropy(expected, ys).item(), rel=1e-5)
    # a distiller is evaluated through its student
    assert evaluate(Supervised(student), val) == pytest.approx(metrics)


# ------------------------------------------------------------------------------------------
# bad arguments
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,exc,name", [
    ({"num_epochs": -1}, ValueError, "num_epochs"),
    ({"num_epochs": 2.5}, ValueError, "num_epochs"),
    ({"lr": 0.0}, ValueError, "lr"),
    ({"lr": -1e-3}, ValueError, "lr"),
    ({"lr": float("nan")}, ValueError, "lr"),
    ({"optimizer": "rmsprop"}, ValueError, "optimizer"),
    ({"optimizer": "Adam "}, ValueError, "optimizer"),
    ({"seed": -3}, ValueError, "seed"),
])
def test_fit_bad_arguments(kwargs, exc, name):
    train, _ = loaders(n_train=32)
    with pytest.raises(exc, match=name):
        fit(Supervised(make_student()), train, None, **{"num_epochs": 1, **kwargs})


def test_fit_needs_a_distiller():
    train, _ = loaders(n_train=32)
    with pytest.raises(TypeError, match="distiller"):
        fit(make_student(), train)


def test_distiller_validation():
    with pytest.raises(TypeError, match="student"):
        Distiller(lambda x: x)
    with pytest.raises(TypeError, match="teacher"):
        Distiller(make_student(), teacher="resnet")
    base = Distiller(make_student())
    with pytest.raises(TypeError, match="forward"):
        base(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))
    with pytest.raises(RuntimeError, match="no teacher"):
        base.teacher_logits(torch.zeros(1, 2))
