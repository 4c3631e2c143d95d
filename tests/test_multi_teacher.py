"""Averaging teachers: logits (a normalised geometric mean of their distributions) vs probabilities (the
arithmetic mean). References: the two means computed entry by entry in float64 Python, the AM-GM inequality, the
agreement case (teachers equal up to a constant per row) and the mirrored two-class case where disagreeing
teachers still give equal averages, as the derivation in :mod:`kdedu.methods.multi_teacher` says."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kdedu.methods import KD, MetaDistil, MultiTeacher, average_teachers
from kdedu.train import fit


def softmax_rows(z, T):
    out = []
    for row in z.double().tolist():
        m = max(row)
        e = [math.exp((v - m) / T) for v in row]
        out.append([v / sum(e) for v in e])
    return out


def reference(logits, T):
    """(arithmetic mean, normalised geometric mean, Z) of the teachers' softmax at T, row by row."""
    ps = [softmax_rows(z, T) for z in logits]
    n, rows, classes = len(ps), len(ps[0]), len(ps[0][0])
    am, gm, zs = [], [], []
    for r in range(rows):
        a = [sum(p[r][c] for p in ps) / n for c in range(classes)]
        g = [math.prod(p[r][c] for p in ps) ** (1 / n) for c in range(classes)]
        z = sum(g)
        am.append(a)
        gm.append([v / z for v in g])
        zs.append(z)
    return (torch.tensor(am, dtype=torch.float64), torch.tensor(gm, dtype=torch.float64),
            torch.tensor(zs, dtype=torch.float64))


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_the_two_averages_are_the_arithmetic_and_the_geometric_mean(T):
    g = torch.Generator().manual_seed(0)
    logits = [3 * torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(3)]
    am, gm, z = reference(logits, T)
    by_probs = torch.softmax(average_teachers(logits, "probs", T) / T, -1)
    by_logits = torch.softmax(average_teachers(logits, "logits", T) / T, -1)
    assert torch.allclose(by_probs, am, atol=1e-12) and torch.allclose(by_logits, gm, atol=1e-12)
    assert (z < 1).all() and (gm * z[:, None] <= am + 1e-15).all()  # AM-GM, per class: Z < 1 when they disagree
    assert (by_probs - by_logits).abs().max() > 1e-2                    # so the two averages differ


def test_they_agree_exactly_when_the_teachers_agree():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(6, 5, generator=g, dtype=torch.float64)
    shifted = [z, z + torch.randn(6, 1, generator=g, dtype=torch.float64), z - 2.0]  # the same distributions
    for T in (0.5, 1.0, 3.0):
        p = torch.softmax(z / T, -1)
        for mode in ("logits", "probs"):
            assert torch.allclose(torch.softmax(average_teachers(shifted, mode, T) / T, -1), p, atol=1e-14)
    _, _, zs = reference(shifted, 2.0)
    assert torch.allclose(zs, torch.ones(6, dtype=torch.float64), atol=1e-14)


def test_mirrored_teachers_disagree_but_average_alike():
    """Two classes, p and 1 - p: AM = GM = (1/2, 1/2), the exception the derivation allows."""
    a = torch.tensor([[2.0, -1.0], [0.3, 0.9]], dtype=torch.float64)
    b = a.flip(-1)
    for mode in ("logits", "probs"):
        p = torch.softmax(average_teachers([a, b], mode, 1.0), -1)
        assert torch.allclose(p, torch.full_like(p, 0.5), atol=1e-14)


def test_logit_averaging_ignores_the_temperature_probability_averaging_does_not():
    g = torch.Generator().manual_seed(2)
    logits = [torch.randn(4, 3, generator=g, dtype=torch.float64) * 4 for _ in range(2)]
    assert torch.equal(average_teachers(logits, "logits", 1.0), average_teachers(logits, "logits", 5.0))
    p1 = torch.softmax(average_teachers(logits, "probs", 1.0) / 5.0, -1)  # averaged at T=1, read at T=5
    p5 = torch.softmax(average_teachers(logits, "probs", 5.0) / 5.0, -1)
    assert torch.allclose(p5, reference(logits, 5.0)[0], atol=1e-12) and (p1 - p5).abs().max() > 1e-3


def test_multi_teacher_module_with_kd_and_metadistil():
    torch.manual_seed(0)
    teachers = [nn.Linear(6, 3), nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))]
    x = torch.randn(20, 6)
    y = torch.randint(0, 3, (20,))
    for mode in ("logits", "probs"):
        both = MultiTeacher(teachers, mode, temperature=2.0)
        with torch.no_grad():
            assert torch.allclose(both(x), average_teachers([t(x) for t in teachers], mode, 2.0))
    one = MultiTeacher(teachers[:1], "probs", temperature=2.0)
    with torch.no_grad():  # one teacher: its own distribution
        assert torch.allclose(torch.softmax(one(x) / 2.0, -1), torch.softmax(teachers[0](x) / 2.0, -1), atol=1e-6)
    loader = DataLoader(TensorDataset(x[:16], y[:16]), batch_size=8)
    quiz = DataLoader(TensorDataset(x[16:], y[16:]), batch_size=4)
    fit(KD(nn.Linear(6, 3), MultiTeacher(teachers, "probs", 2.0), temperature=2.0), loader, num_epochs=1,
        device="cpu", progress=False)
    meta = MetaDistil(nn.Linear(6, 3), MultiTeacher(teachers, "logits"), quiz, pilot_lr=0.1, teacher_lr=0.01,
                      teacher_params=["teachers.1"])
    before = [p.clone() for p in meta.teacher.parameters()]
    fit(meta, loader, num_epochs=1, device="cpu", progress=False)
    changed = [not torch.equal(a, b) for a, b in zip(before, meta.teacher.parameters(), strict=True)]
    assert changed == [False, False, True, True, True, True]  # only the second teacher learns


def test_bad_arguments():
    z = torch.randn(2, 3)
    with pytest.raises(ValueError, match="mode"):
        average_teachers([z], "median")
    with pytest.raises(ValueError, match="shape"):
        average_teachers([z, torch.randn(2, 4)])
    with pytest.raises(TypeError, match="list"):
        average_teachers(z)
    with pytest.raises(TypeError, match="integer|floating"):
        average_teachers([torch.ones(2, 3, dtype=torch.long)])
    with pytest.raises(ValueError, match="temperature"):
        average_teachers([z], "probs", 0.0)
    with pytest.raises(TypeError, match="teachers"):
        MultiTeacher([])
    with pytest.raises(TypeError, match=r"teachers\[1\]"):
        MultiTeacher([nn.Linear(2, 2), "not a module"])
