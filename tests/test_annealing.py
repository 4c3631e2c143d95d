"""Annealing KD (Jafari et al. 2021): annealing_phi, annealing_kd_loss and the two-stage AnnealingKD method.

Every expected value is recomputed here independently: Φ with exact ``fractions.Fraction`` arithmetic,
the loss with a float64 Python loop, the schedule from the deck's description ("n = k · τ_max epochs,
starting from τ = τ_max, decrease to 1, k epochs per τ"), cross-entropy with a log-sum-exp loop.
"""

from __future__ import annotations

import copy
import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from refs import ref_ce
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kdedu import losses
from kdedu.methods import AnnealingKD
from kdedu.models import MLP
from kdedu.train import fit

F64 = torch.float64


# ------------------------------------------------------------------------------------------
# independent references
# ------------------------------------------------------------------------------------------
def ref_phi(T: int, tau_max: int) -> Fraction:
    """Φ(T) = 1 − (T − 1)/τ_max, exactly."""
    return 1 - Fraction(T - 1, tau_max)


def ref_annealing_loss(s: torch.Tensor, t: torch.Tensor, phi: float) -> float:
    """mean over all elements of (z_s − φ z_t)², a float64 Python loop."""
    a = s.detach().to(F64).reshape(-1).tolist()
    b = t.detach().to(F64).reshape(-1).tolist()
    assert len(a) == len(b)
    return sum((u - phi * v) ** 2 for u, v in zip(a, b, strict=True)) / len(a)


def ref_schedule(tau_max: int, k: int, num_epochs: int) -> list[tuple[int, int, int, Fraction]]:
    """(epoch 1-based, stage, T, φ) written from the deck: τ_max, …, τ_max (k times), τ_max − 1, …, 1, then stage II."""
    plan = []
    for T in range(tau_max, 0, -1):
        for _ in range(k):
            plan.append((1, T, ref_phi(T, tau_max)))
    while len(plan) < num_epochs:
        plan.append((2, 1, Fraction(1)))
    return [(i + 1, *p) for i, p in enumerate(plan[:num_epochs])]


TOL = Fraction(1, 10**15)


# ------------------------------------------------------------------------------------------
# annealing_phi
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau_max", [1, 2, 3, 7, 10, 13, 20, 64])
def test_phi_is_the_contracted_formula_for_every_integer_T(tau_max):
    values = []
    for T in range(1, tau_max + 1):
        got = losses.annealing_phi(T, tau_max)
        assert isinstance(got, float)
        assert abs(Fraction(got) - ref_phi(T, tau_max)) <= TOL, (T, tau_max, got)
        values.append(got)
    assert values[0] == 1.0  # Φ(1) = 1: the teacher's own logits
    assert abs(Fraction(values[-1]) - Fraction(1, tau_max)) <= TOL  # Φ(τ_max) = 1/τ_max
    assert all(a > b for a, b in itertools.pairwise(values)), "Φ must be strictly decreasing in T"
    assert all(0 < v <= 1 for v in values)


def test_phi_accepts_numpy_integers():
    assert losses.annealing_phi(np.int64(3), np.int32(4)) == pytest.approx(0.5, abs=1e-15)


@pytest.mark.parametrize(
    "T,tau_max,error,name",
    [
        (0, 5, ValueError, "T"),
        (-1, 5, ValueError, "T"),
        (6, 5, ValueError, "T"),
        (2, 1, ValueError, "T"),
        (1, 0, ValueError, "tau_max"),
        (1, -3, ValueError, "tau_max"),
        (2.0, 5, TypeError, "T"),
        (2.5, 5, TypeError, "T"),
        (2, 5.0, TypeError, "tau_max"),
        (True, 5, TypeError, "T"),
        (1, True, TypeError, "tau_max"),
        ("2", 5, TypeError, "T"),
        (None, 5, TypeError, "T"),
        (2, None, TypeError, "tau_max"),
    ],
)
def test_phi_rejects_bad_input_naming_the_argument(T, tau_max, error, name):
    with pytest.raises(error, match=rf"^{name}\b"):
        losses.annealing_phi(T, tau_max)


# ------------------------------------------------------------------------------------------
# annealing_kd_loss
# ------------------------------------------------------------------------------------------
PHIS = [0.0, 0.1, 1 / 3, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (2, 3, 4), (16, 10)])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("phi", PHIS)
def test_annealing_loss_matches_float64_loop(shape, dtype, phi):
    g = torch.Generator().manual_seed(hash((shape, phi)) % 2**31)
    s = (3 * torch.randn(shape, generator=g)).to(dtype)
    t = (5 * torch.randn(shape, generator=g)).to(dtype)
    got = losses.annealing_kd_loss(s, t, phi)
    assert got.shape == () and got.dtype == dtype
    expected = ref_annealing_loss(s, t, phi)
    rel = 1e-12 if dtype == F64 else 1e-5
    assert got.item() == pytest.approx(expected, rel=rel, abs=1e-12)


def test_annealing_loss_with_phi_from_the_schedule():
    """Each scheduled φ(T) gives the loop's value; φ only scales the teacher, never the student."""
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(6, 5, generator=g, dtype=F64), torch.randn(6, 5, generator=g, dtype=F64)
    tau_max = 6
    for T in range(1, tau_max + 1):
        phi = float(ref_phi(T, tau_max))
        got = losses.annealing_kd_loss(s, t, losses.annealing_phi(T, tau_max))
        assert got.item() == pytest.approx(ref_annealing_loss(s, t, phi), rel=1e-12)


def test_phi_one_is_logit_mse_and_phi_zero_is_the_mean_square_of_the_student():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    torch.testing.assert_close(losses.annealing_kd_loss(s, t, 1.0), losses.logit_mse(s, t), rtol=0, atol=0)
    torch.testing.assert_close(losses.annealing_kd_loss(s, t, 1), losses.logit_mse(s, t), rtol=0, atol=0)
    mean_sq = sum(v * v for v in s.double().reshape(-1).tolist()) / s.numel()
    assert losses.annealing_kd_loss(s, t, 0.0).item() == pytest.approx(mean_sq, rel=1e-6)
    # the teacher does not matter at φ = 0
    assert losses.annealing_kd_loss(s, 100 * t, 0.0).item() == pytest.approx(mean_sq, rel=1e-6)


def test_annealing_loss_is_zero_when_the_student_matches_the_damped_teacher():
    t = torch.randn(4, 3, dtype=F64)
    for phi in PHIS:
        assert losses.annealing_kd_loss(phi * t, t, phi).item() == pytest.approx(0.0, abs=1e-30)


@pytest.mark.parametrize("phi", [0.0, 0.3, 1.0])
def test_annealing_loss_gradcheck(phi):
    g = torch.Generator().manual_seed(3)
    s = torch.randn(3, 4, generator=g, dtype=F64, requires_grad=True)
    t = torch.randn(3, 4, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: losses.annealing_kd_loss(a, b, phi), (s, t))


@pytest.mark.parametrize("phi", [0.0, 0.25, 2 / 3, 1.0])
def test_annealing_loss_gradient_is_analytic(phi):
    """∂L/∂z_s = 2 (z_s − φ z_t) / numel."""
    g = torch.Generator().manual_seed(4)
    s = torch.randn(5, 6, generator=g, dtype=F64, requires_grad=True)
    t = torch.randn(5, 6, generator=g, dtype=F64)
    losses.annealing_kd_loss(s, t, phi).backward()
    expected = [2 * (a - phi * b) / s.numel() for a, b in zip(s.detach().reshape(-1).tolist(), t.reshape(-1).tolist(),
                                                               strict=True)]
    assert s.grad.reshape(-1).tolist() == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(
    "s,t,phi,error,name",
    [
        (torch.zeros(4, 3), torch.zeros(4, 5), 0.5, ValueError, "shape"),
        (torch.zeros(4, 3), torch.zeros(5, 3), 0.5, ValueError, "shape"),
        (torch.zeros(4, 3), torch.zeros(3), 0.5, ValueError, "shape"),
        (torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, 3), 0.5, TypeError, "student_logits"),
        (torch.zeros(4, 3), torch.zeros(4, 3, dtype=torch.int32), 0.5, TypeError, "teacher_logits"),
        (torch.zeros(4, 3), torch.zeros(4, 3), float("nan"), (TypeError, ValueError), "phi"),
        (torch.zeros(4, 3), torch.zeros(4, 3), float("inf"), (TypeError, ValueError), "phi"),
        (torch.zeros(4, 3), torch.zeros(4, 3), -float("inf"), (TypeError, ValueError), "phi"),
        (torch.zeros(4, 3), torch.zeros(4, 3), "0.5", TypeError, "phi"),
        (torch.zeros(4, 3), torch.zeros(4, 3), None, TypeError, "phi"),
        (torch.zeros(4, 3), torch.zeros(4, 3), True, TypeError, "phi"),
    ],
)
def test_annealing_loss_rejects_bad_input(s, t, phi, error, name):
    with pytest.raises(error, match=name):
        losses.annealing_kd_loss(s, t, phi)


# ------------------------------------------------------------------------------------------
# AnnealingKD: the schedule
# ------------------------------------------------------------------------------------------
def make_pair(seed: int = 0, in_features: int = 6, num_classes: int = 4):
    torch.manual_seed(seed)
    student = MLP(in_features, (8,), num_classes)
    teacher = MLP(in_features, (16,), num_classes, dropout=0.5)  # dropout: a teacher left in train mode would be noisy
    with torch.no_grad():
        teacher.net[-1].weight.mul_(5)
    return student, teacher


CASES = [(1, 1, 1), (1, 3, 5), (3, 1, 3), (3, 2, 10), (4, 3, 12), (5, 2, 13), (10, 1, 15), (2, 4, 8)]


@pytest.mark.parametrize("tau_max,k,num_epochs", CASES)
def test_schedule_walks_T_down_k_epochs_each_then_stage_two(tau_max, k, num_epochs):
    method = AnnealingKD(*make_pair(), tau_max=tau_max, k=k)
    n = k * tau_max
    assert method.stage1_epochs == n
    plan = method.schedule(num_epochs)
    assert len(plan) == num_epochs
    expected = ref_schedule(tau_max, k, num_epochs)
    for step, (epoch, stage, T, phi) in zip(plan, expected, strict=True):
        assert set(step) >= {"epoch", "stage", "T", "phi"}
        assert (step["epoch"], step["stage"], step["T"]) == (epoch, stage, T)
        assert abs(Fraction(step["phi"]) - phi) <= TOL
    # structural facts, restated without the reference
    stage1 = [s for s in plan if s["stage"] == 1]
    assert len(stage1) == n and all(s["stage"] == 1 for s in plan[:n]) and all(s["stage"] == 2 for s in plan[n:])
    assert stage1[0]["T"] == tau_max and stage1[-1]["T"] == 1
    assert [sum(1 for s in stage1 if s["T"] == T) for T in range(1, tau_max + 1)] == [k] * tau_max
    Ts = [s["T"] for s in stage1]
    assert all(a >= b for a, b in itertools.pairwise(Ts))
    assert all(s["T"] == 1 and s["phi"] == 1.0 for s in plan[n:])


@pytest.mark.parametrize("tau_max,k,num_epochs", CASES)
def test_on_epoch_start_follows_the_schedule(tau_max, k, num_epochs):
    method = AnnealingKD(*make_pair(), tau_max=tau_max, k=k)
    for epoch, stage, T, phi in ref_schedule(tau_max, k, num_epochs):
        method.on_epoch_start(epoch - 1, num_epochs)
        assert (method.stage, method.T) == (stage, T)
        assert abs(Fraction(method.phi) - phi) <= TOL
    # not monotone in call order: jumping back to epoch 0 restores the first step
    method.on_epoch_start(0, num_epochs)
    assert (method.stage, method.T) == (1, tau_max)


def test_shorter_schedule_is_a_prefix_and_defaults():
    method = AnnealingKD(*make_pair())
    assert (method.tau_max, method.k, method.stage1_epochs) == (10, 1, 10)
    assert method.schedule(4) == method.schedule(25)[:4]
    # before any epoch: stage I at the softest teacher
    assert (method.stage, method.T) == (1, 10) and method.phi == pytest.approx(0.1, abs=1e-15)


@pytest.mark.parametrize(
    "kwargs,name",
    [({"tau_max": 0}, "tau_max"), ({"tau_max": -2}, "tau_max"), ({"tau_max": 2.5}, "tau_max"),
     ({"tau_max": True}, "tau_max"), ({"tau_max": "3"}, "tau_max"), ({"tau_max": None}, "tau_max"),
     ({"k": 0}, "k"), ({"k": -1}, "k"), ({"k": 1.5}, "k"), ({"k": True}, "k"), ({"k": None}, "k")],
)
def test_invalid_tau_max_or_k_raise(kwargs, name):
    with pytest.raises((TypeError, ValueError), match=rf"\b{name}\b"):
        AnnealingKD(*make_pair(), **kwargs)


def test_teacher_is_required():
    student, _ = make_pair()
    with pytest.raises(TypeError, match="teacher"):
        AnnealingKD(student, None)
    with pytest.raises(TypeError, match="teacher"):
        AnnealingKD(student, "teacher")


# ------------------------------------------------------------------------------------------
# AnnealingKD: the loss terms per stage
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(5)
    return torch.randn(12, 6, generator=g), torch.randint(0, 4, (12,), generator=g)


def test_loss_terms_follow_the_stages(batch):
    x, y = batch
    tau_max, k, num_epochs = 4, 2, 11
    student, teacher = make_pair()
    method = AnnealingKD(student, teacher, tau_max=tau_max, k=k)
    method.train()  # as fit does; the teacher must stay in eval mode (its dropout off)
    assert not teacher.training
    with torch.no_grad():
        z_t = copy.deepcopy(teacher).eval()(x)
    for epoch in range(num_epochs):
        method.on_epoch_start(epoch, num_epochs)
        terms = method(x, y)
        with torch.no_grad():
            z_s = student(x)
        if epoch < tau_max * k:
            T = tau_max - epoch // k
            phi = 1 - (T - 1) / tau_max
            assert set(terms) == {"annealing"}, epoch
            assert terms["annealing"].item() == pytest.approx(ref_annealing_loss(z_s, z_t, phi), rel=1e-5)
            torch.testing.assert_close(terms["annealing"], losses.annealing_kd_loss(z_s, z_t, phi))
        else:
            assert set(terms) == {"ce"}, epoch
            assert terms["ce"].item() == pytest.approx(ref_ce(z_s, y), rel=1e-5)


def test_stage_one_ignores_the_labels_stage_two_uses_them(batch):
    x, y = batch
    method = AnnealingKD(*make_pair(), tau_max=3, k=1)
    y_other = (y + 1) % 4
    for epoch in range(3):
        method.on_epoch_start(epoch, 4)
        torch.testing.assert_close(method(x, y)["annealing"], method(x, y_other)["annealing"], rtol=0, atol=0)
    method.on_epoch_start(3, 4)
    assert method(x, y)["ce"].item() != pytest.approx(method(x, y_other)["ce"].item(), rel=1e-3)


def test_gradient_reaches_the_student_only(batch):
    x, y = batch
    student, teacher = make_pair()
    method = AnnealingKD(student, teacher, tau_max=2, k=1)
    for epoch in (0, 2):  # stage I, stage II
        method.zero_grad(set_to_none=True)
        method.on_epoch_start(epoch, 3)
        sum(method(x, y).values()).backward()
        assert all(p.grad is not None and torch.any(p.grad != 0) for p in student.parameters())
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert list(method.trainable_parameters()) == list(student.parameters())


# ------------------------------------------------------------------------------------------
# AnnealingKD under fit
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def problem():
    """A tiny synthetic 4-class problem labelled by a fixed random network."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(96, 6, generator=g)
    labeller = nn.Linear(6, 4)
    with torch.no_grad():
        labeller.weight.copy_(torch.randn(4, 6, generator=g))
        y = labeller(x).argmax(-1)
    train = TensorDataset(x[:64], y[:64])
    val = TensorDataset(x[64:], y[64:])
    return DataLoader(train, batch_size=16, shuffle=True), DataLoader(val, batch_size=32)


@pytest.mark.parametrize("tau_max,k,num_epochs", [(3, 1, 1), (3, 1, 2), (2, 3, 5), (4, 2, 7)])
def test_fit_shorter_than_stage_one_raises(problem, tau_max, k, num_epochs):
    train_loader, val_loader = problem
    student, teacher = make_pair()
    before = copy.deepcopy(student.state_dict())
    method = AnnealingKD(student, teacher, tau_max=tau_max, k=k)
    with pytest.raises(ValueError, match="num_epochs"):
        fit(method, train_loader, val_loader, num_epochs=num_epochs, lr=0.01, progress=False)
    # it refused before taking any step
    for key, value in student.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_fit_runs_both_stages_and_keeps_the_teacher_frozen(problem):
    train_loader, val_loader = problem
    student, teacher = make_pair()
    teacher_before = copy.deepcopy(teacher.state_dict())
    method = AnnealingKD(student, teacher, tau_max=3, k=2)
    stage2 = 3
    history = fit(method, train_loader, val_loader, num_epochs=method.stage1_epochs + stage2, lr=0.02,
                  progress=False)
    assert len(history) == 9
    for record in history.epochs[:6]:
        assert "annealing" in record and "ce" not in record, record
        assert math.isfinite(record["annealing"]) and record["annealing"] >= 0
    for record in history.epochs[6:]:
        assert "ce" in record and "annealing" not in record, record
        assert math.isfinite(record["ce"]) and record["ce"] >= 0
    assert history["epoch"] == list(range(1, 10))
    assert all(0 <= a <= 1 for a in history["val_acc"])
    # the teacher never moved and is still frozen, in eval mode
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    # after the last epoch the method is in stage II
    assert (method.stage, method.T, method.phi) == (2, 1, 1.0)


def test_fit_exactly_stage_one_has_no_cross_entropy(problem):
    train_loader, _ = problem
    method = AnnealingKD(*make_pair(), tau_max=2, k=1)
    history = fit(method, train_loader, None, num_epochs=2, lr=0.01, progress=False)
    assert [("annealing" in r, "ce" in r) for r in history.epochs] == [(True, False), (True, False)]


def test_stage_one_pulls_the_student_towards_the_damped_teacher(problem):
    """After stage I ends at T = 1 (φ = 1), the student's logits are closer to the teacher's than at the start."""
    train_loader, val_loader = problem
    student, teacher = make_pair()
    x = torch.cat([xb for xb, _ in val_loader])
    with torch.no_grad():
        z_t = teacher.eval()(x)
        start = losses.logit_mse(student(x), z_t).item()
    method = AnnealingKD(student, teacher, tau_max=2, k=4)
    fit(method, train_loader, None, num_epochs=method.stage1_epochs, lr=0.02, progress=False)
    with torch.no_grad():
        end = losses.logit_mse(student(x), z_t).item()
    assert end < 0.5 * start, (start, end)
