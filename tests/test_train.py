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
from kdedu.train import Distiller, History, evaluate, fit, lr_factor, predict, seed_everything


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
                  weight_decay=1e-4, schedule="cosine", checkpoint=ckpt, progress=False)
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
    assert set(history.keys()) == {"epoch", "a", "b", "loss", "lr", "val_acc", "val_loss", "time_s"}
    assert history["lr"] == [1e-3] * 3  # the default: a constant learning rate


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
# gradient accumulation, clipping, learning-rate schedules, precision
# ------------------------------------------------------------------------------------------
def _sgd_run(batch_size, n=48, grad_accum_steps=1, num_epochs=2, **kwargs):
    """SGD without dropout on the first n blob points, in order: a deterministic run to compare."""
    x, y = blobs(n, 0)
    student = make_student(dropout=0.0)
    history = fit(Supervised(student), DataLoader(TensorDataset(x, y), batch_size=batch_size), None,
                  num_epochs=num_epochs, lr=0.1, optimizer="sgd", grad_accum_steps=grad_accum_steps, seed=0,
                  device="cpu", progress=False, **kwargs)
    return history, student


@pytest.mark.parametrize("n", [48, 40])
def test_grad_accumulation_equals_one_big_batch(n):
    """k batches of size b accumulated = one step on a batch of k*b. With n=40 the 5 batches of 8 form groups
    of 3 and 2 batches: the last, partial group still steps (as one batch of 16)."""
    small, small_student = _sgd_run(8, n, grad_accum_steps=3, schedule="linear")
    big, big_student = _sgd_run(24, n, schedule="linear")
    for a, b in zip(small_student.parameters(), big_student.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert small["lr"] == pytest.approx(big["lr"])  # the same steps: 2 per epoch, 4 in all
    assert small["lr"] == pytest.approx([0.1 * 3 / 4, 0.1 * 1 / 4])
    assert small["ce"] == pytest.approx(big["ce"], rel=1e-6)  # the logged means weight batches by size
    _, one_step = _sgd_run(8, n, grad_accum_steps=1, schedule="linear")
    assert not all(torch.allclose(a, b) for a, b in zip(one_step.parameters(), big_student.parameters(), strict=True))


def test_clipping_bounds_the_update():
    """One SGD step with max_grad_norm: the same as torch.nn.utils.clip_grad_norm_ done by hand."""
    x, y = blobs(32, 0)
    student = make_student(dropout=0.0)
    manual = copy.deepcopy(student)
    fit(Supervised(student), DataLoader(TensorDataset(x, y), batch_size=32), None, num_epochs=1, lr=0.5,
        optimizer="sgd", momentum=0.0, max_grad_norm=0.01, device="cpu", progress=False)
    F.cross_entropy(manual(x), y).backward()
    norm = torch.nn.utils.clip_grad_norm_(list(manual.parameters()), 0.01)
    assert norm > 0.1  # the gradient was really clipped (by more than 10x)
    with torch.no_grad():
        for p in manual.parameters():
            p -= 0.5 * p.grad
    for a, b in zip(student.parameters(), manual.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)
    init = make_student(dropout=0.0)
    step = torch.cat([(a - b).flatten() for a, b in zip(student.parameters(), init.parameters(), strict=True)])
    assert step.norm() <= 0.5 * 0.01 * (1 + 1e-5)  # |update| = lr x clipped norm


def _closed_form_lr(lr, step, total, warmup, schedule):
    if step < warmup:
        return lr * step / warmup
    p = (step - warmup) / (total - warmup)
    return {"constant": lr, "linear": lr * (1 - p), "cosine": lr * 0.5 * (1 + np.cos(np.pi * p))}[schedule]


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
@pytest.mark.parametrize("grad_accum_steps", [1, 2])
def test_lr_schedule_per_step_against_closed_form(schedule, grad_accum_steps, tmp_path):
    """The history's lr (the last step's of each epoch) follows warmup then decay, step by step."""
    batches = 1 if grad_accum_steps == 1 else 3  # 3 batches, groups of 2 and 1: 2 steps per epoch
    x, y = blobs(8 * batches, 0)
    steps_per_epoch = -(-batches // grad_accum_steps)
    history = fit(Supervised(make_student()), DataLoader(TensorDataset(x, y), batch_size=8), None, num_epochs=10,
                  lr=0.2, schedule=schedule, warmup_steps=3, grad_accum_steps=grad_accum_steps, device="cpu",
                  progress=False, checkpoint=tmp_path / "run.pt")
    total = 10 * steps_per_epoch
    last_steps = [(e + 1) * steps_per_epoch - 1 for e in range(10)]  # the 0-based step that ends epoch e
    assert history["lr"] == pytest.approx([_closed_form_lr(0.2, s, total, 3, schedule) for s in last_steps])
    if grad_accum_steps == 1:
        assert history["lr"][:3] == pytest.approx([0.0, 0.2 / 3, 0.4 / 3])  # warmup from 0
    end = torch.load(tmp_path / "run.pt", weights_only=False)
    assert end["scheduler"]["last_epoch"] == total  # one scheduler step per optimiser step
    assert end["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.2 if schedule == "constant" else 0.0)
    assert lr_factor(5, 10, 0, schedule) == pytest.approx(_closed_form_lr(1.0, 5, 10, 0, schedule))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 autocast needs CUDA")
def test_bf16_on_cuda():
    train, val = loaders()
    student = make_student()
    history = fit(Supervised(student), train, val, num_epochs=5, lr=1e-2, precision="bf16", device="cuda",
                  progress=False)
    assert all(p.dtype == torch.float32 and p.is_cuda for p in student.parameters())  # fp32 master weights
    assert history.last["val_acc"] >= 0.9 and history["loss"][-1] < history["loss"][0]


def test_bf16_on_cpu_is_an_error():
    train, _ = loaders(n_train=32)
    with pytest.raises(ValueError, match="precision='bf16'.*CUDA"):
        fit(Supervised(make_student()), train, None, num_epochs=1, precision="bf16", device="cpu")


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


def _run(epochs, ckpt, train, val, schedule="constant", stop_at=None):
    student = make_student()
    method = CountingSupervised(student, stop_at)
    history = fit(method, train, val, num_epochs=epochs, lr=1e-2, schedule=schedule, checkpoint=ckpt,
                  progress=False)
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
    full, full_student, _ = _run(4, tmp_path / "full.pt", train, val, schedule="cosine")
    with pytest.raises(KeyboardInterrupt):
        _run(4, tmp_path / "killed.pt", train, val, schedule="cosine", stop_at=2)
    resumed, resumed_student, n = _run(4, tmp_path / "killed.pt", train, val, schedule="cosine")
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


class NoisyKD(Distiller):
    """A method that draws from every RNG a run uses: torch (input noise), Python and NumPy (a random
    temperature), on top of the student's dropout and the loader's shuffling."""

    def __init__(self, student, teacher, stop_at=None):
        super().__init__(student, teacher)
        self.stop_at = stop_at

    def on_epoch_start(self, epoch, num_epochs):
        if epoch == self.stop_at:
            raise KeyboardInterrupt

    def forward(self, x, y):
        x = x + 0.1 * torch.randn_like(x)
        temperature = 1.0 + random.random() + float(np.random.uniform(0, 1))
        z_s, z_t = self.student(x), self.teacher_logits(x)
        kd = temperature**2 * F.kl_div(F.log_softmax(z_s / temperature, -1), F.log_softmax(z_t / temperature, -1),
                                       reduction="batchmean", log_target=True)
        return {"ce": 0.5 * F.cross_entropy(z_s, y), "kd": 0.5 * kd}


def _shuffled_loader(kind):
    """A fresh shuffled loader, as a new session would build it: ordered by torch's global RNG, by the
    loader's own seeded generator, or by a seeded LengthGroupedBatches (kdedu.data.text_loader's way)."""
    from kdedu.data.text import LengthGroupedBatches

    data = TensorDataset(*blobs(90, 0))
    if kind == "global":
        return DataLoader(data, batch_size=16, shuffle=True)
    if kind == "generator":
        return DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(3))
    lengths = torch.arange(90) % 7
    return DataLoader(data, batch_sampler=LengthGroupedBatches(lengths, 16, shuffle=True, seed=3, pool_batches=2))


@pytest.mark.parametrize("kind", ["global", "generator", "length_grouped"])
def test_resume_is_bit_exact(tmp_path, kind):
    """Killed after epoch 2 of 5 and resumed in a 'new session' (fresh loaders, student, teacher): the same
    weights and history, to the last bit, as the uninterrupted run: every RNG comes back from the checkpoint."""

    def run(ckpt, stop_at=None):
        student, teacher = make_student(dropout=0.3), make_student(seed=9, dropout=0.0)
        method = NoisyKD(student, teacher, stop_at)
        val = DataLoader(TensorDataset(*blobs(40, 1)), batch_size=16)
        history = fit(method, _shuffled_loader(kind), val, num_epochs=5, lr=1e-2, schedule="cosine",
                      warmup_steps=2, grad_accum_steps=2, max_grad_norm=1.0, seed=4, device="cpu",
                      checkpoint=ckpt, progress=False)
        return history, student

    full, full_student = run(tmp_path / "full.pt")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed.pt", stop_at=2)
    state = torch.load(tmp_path / "killed.pt", weights_only=False)
    assert state["epoch"] == 2 and len(state["rng"]["loaders"]) == (0 if kind == "global" else 1)
    resumed, resumed_student = run(tmp_path / "killed.pt")
    assert without_time(resumed) == without_time(full)  # exact float equality
    assert same_weights(resumed_student, full_student)
    assert len({tuple(e.values()) for e in without_time(full)}) == 5  # the epochs differ: a real run


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
# dict batches and Hugging Face models
# ------------------------------------------------------------------------------------------
class DictSupervised(Distiller):
    """Cross-entropy of a Hugging Face classifier called on a dict batch (its ModelOutput's logits)."""

    def forward(self, inputs, labels):
        return {"ce": F.cross_entropy(self.student(**inputs).logits, labels)}


def token_dicts(n, seed, length=8):
    """Dict examples: [CLS]=2, random tokens, a padded tail; the label says whether token 1 is >= 27."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 50, (n, length), generator=g)
    ids[:, 0] = 2
    real = torch.randint(3, length + 1, (n,), generator=g)                      # (N,) tokens before padding
    mask = (torch.arange(length)[None] < real[:, None]).long()                  # (N, L)
    ids = ids * mask
    labels = (ids[:, 1] >= 27).long()
    return [{"input_ids": ids[i], "attention_mask": mask[i], "labels": labels[i]} for i in range(n)]


def tiny_bert():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=2)
    return transformers.BertForSequenceClassification(config)


def test_fit_dict_batches_with_a_hugging_face_model():
    model = tiny_bert()
    train = DataLoader(token_dicts(256, 0), batch_size=32, shuffle=True)  # default_collate: a dict of (B, L)
    val = DataLoader(token_dicts(128, 1), batch_size=64)
    before = evaluate(model, val)
    history = fit(DictSupervised(model), train, val, num_epochs=8, lr=3e-3, device="cpu", progress=False)
    assert history["ce"][-1] < 0.7 * history["ce"][0]
    assert history.last["val_acc"] > max(before["acc"], 0.75) and history.last["val_loss"] < before["loss"]
    # evaluate reads the ModelOutput's logits on dict batches: the same numbers by hand
    batch = next(iter(DataLoader(token_dicts(128, 1), batch_size=128)))
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits_p, labels_p = predict(model, val)
    torch.testing.assert_close(logits_p, logits)
    assert torch.equal(labels_p, batch["labels"])
    metrics = evaluate(model, val)
    assert metrics["acc"] == pytest.approx((logits.argmax(-1) == batch["labels"]).float().mean().item())
    assert metrics["loss"] == pytest.approx(F.cross_entropy(logits, batch["labels"]).item(), rel=1e-5)
    assert metrics["acc"] == pytest.approx(history.last["val_acc"])


class TokenTagger(nn.Module):
    """Token-level logits (B, L, C) from a dict batch, returned in a dict like a ModelOutput."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(50, 5)

    def forward(self, input_ids, attention_mask=None):
        return {"logits": self.embed(input_ids)}


def test_evaluate_token_level_skips_ignored_labels():
    tagger = TokenTagger()
    ids = torch.randint(0, 50, (6, 7), generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 5, (6, 7), generator=torch.Generator().manual_seed(1))
    labels[:, 4:] = -100                                                         # padding: no target
    labels[0] = -100
    examples = [{"input_ids": ids[i], "labels": labels[i]} for i in range(6)]
    loader = DataLoader(examples, batch_size=4)
    keep = labels != -100
    with torch.no_grad():
        z = tagger.embed(ids)                                                    # (6, 7, 5)
    logits, y = predict(tagger, loader)
    torch.testing.assert_close(logits, z[keep])                                  # (n, 5): one row per labelled token
    assert torch.equal(y, labels[keep])
    metrics = evaluate(tagger, loader)
    assert metrics["acc"] == pytest.approx((z[keep].argmax(-1) == labels[keep]).float().mean().item())
    assert metrics["loss"] == pytest.approx(F.cross_entropy(z.flatten(0, 1), labels.flatten()).item(), rel=1e-5)
    # a causal LM: position i is scored against token i + 1
    shifted = evaluate(tagger, loader, causal_lm=True)
    keep1 = labels[:, 1:] != -100
    assert shifted["loss"] == pytest.approx(F.cross_entropy(z[:, :-1][keep1], labels[:, 1:][keep1]).item(), rel=1e-5)


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
    ({"schedule": "cos"}, ValueError, "schedule"),
    ({"schedule": None}, ValueError, "schedule"),
    ({"warmup_steps": -1}, ValueError, "warmup_steps"),
    ({"warmup_steps": 1.5}, ValueError, "warmup_steps"),
    ({"grad_accum_steps": 0}, ValueError, "grad_accum_steps"),
    ({"grad_accum_steps": True}, ValueError, "grad_accum_steps"),
    ({"max_grad_norm": 0.0}, ValueError, "max_grad_norm"),
    ({"max_grad_norm": -1.0}, ValueError, "max_grad_norm"),
    ({"max_grad_norm": "1"}, ValueError, "max_grad_norm"),
    ({"precision": "fp16"}, ValueError, "precision"),
    ({"cosine": True}, TypeError, "cosine"),  # the old flag is gone: schedule="cosine"
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
