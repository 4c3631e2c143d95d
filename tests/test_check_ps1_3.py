"""The checkers of the new exercises of problem sets 1-3 (book/assignments/ps1-3): ps1.kd-grad, ps2.stage1-entropy
and ps3.patient-loss.

For every checker: a correct answer passes, plausible wrong answers fail with the intended message, and answers
of the wrong kind fail cleanly. ``None`` as "not answered yet" and the hints are checked for every exercise in
tests/test_check.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdedu import check, losses


def _verdict(exercise_id, answer):
    return check.exercise(exercise_id, answer, verbose=False)


# ------------------------------------------------------------------------------------------
# ps1: kd_grad(z_s, z_t, T), the gradient of kd_loss (batch mean, with T**2) with respect to z_s
# ------------------------------------------------------------------------------------------
def kd_grad(z_s, z_t, T):
    return T * (F.softmax(z_s / T, dim=-1) - F.softmax(z_t / T, dim=-1)) / z_s.shape[0]


def kd_grad_autograd(z_s, z_t, T):  # kdedu's own loss through autograd
    leaf = z_s.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(losses.kd_loss(leaf, z_t, T), leaf)
    return grad


def kd_grad_float32(z_s, z_t, T):
    return kd_grad(z_s.float(), z_t.float(), T)


@pytest.mark.parametrize("answer", [kd_grad, kd_grad_autograd, kd_grad_float32])
def test_ps1_kd_grad_correct(answer):
    result = _verdict("ps1.kd-grad", answer)
    assert result, result.message


@pytest.mark.parametrize("answer, needle", [
    (lambda z_s, z_t, T: -kd_grad(z_s, z_t, T), "sign is flipped"),
    (lambda z_s, z_t, T: kd_grad(z_s, z_t, T) * z_s.shape[0], "1/B of the batch mean is missing"),
    (lambda z_s, z_t, T: kd_grad(z_s, z_t, T) / T, "leave a factor T"),                # no T at all
    (lambda z_s, z_t, T: kd_grad(z_s, z_t, T) * T, "1/T of the chain rule"),
    (lambda z_s, z_t, T: kd_grad(z_s, z_t, T) / T**2, "gradient of the KL alone"),     # no T**2
    (lambda z_s, z_t, T: T * (F.softmax(z_s, -1) - F.softmax(z_t, -1)) / z_s.shape[0], "probabilities at T = 1"),
    (lambda z_s, z_t, T: kd_grad(z_s, z_t, T) + 1e-3, "off by"),
    (lambda z_s, z_t, T: kd_grad(z_s, z_t, T).sum(0), "shape"),
    (lambda z_s, z_t, T: kd_grad(z_s, z_t, T).tolist(), "torch.Tensor"),
    (lambda z_s: z_s, "raised TypeError"),
    ("kd_grad", "should be a function"),
])
def test_ps1_kd_grad_wrong(answer, needle):
    result = _verdict("ps1.kd-grad", answer)
    assert not result
    assert needle in result.message, result.message


# ------------------------------------------------------------------------------------------
# ps2: stage1_entropy(z_t, tau_max), the mean entropy of every stage-I target softmax(Phi(T) z_t), T = tau_max..1
# ------------------------------------------------------------------------------------------
def _entropy(p):
    return -(p * p.clamp_min(1e-30).log()).sum(-1)  # (N,)


def _phi(T, tau_max):
    return 1 - (T - 1) / tau_max


def _entropies(z_t, factors, reduce=lambda h: h.mean()):
    return [reduce(_entropy(F.softmax(f * z_t, dim=-1))).item() for f in factors]


def stage1_entropy(z_t, tau_max):
    return _entropies(z_t, [_phi(T, tau_max) for T in range(tau_max, 0, -1)])


def stage1_entropy_tensor(z_t, tau_max):  # a tensor, with kdedu's Phi
    phis = torch.tensor([losses.annealing_phi(T, tau_max) for T in range(tau_max, 0, -1)], dtype=z_t.dtype)
    p = F.softmax(phis[:, None, None] * z_t, dim=-1)  # (tau_max, N, C)
    return -(p * F.log_softmax(phis[:, None, None] * z_t, dim=-1)).sum(-1).mean(-1)


def stage1_entropy_numpy(z_t, tau_max):
    return np.array(stage1_entropy(z_t, tau_max))


def stage1_entropy_float32(z_t, tau_max):
    return stage1_entropy_tensor(z_t.float(), tau_max)


def stage1_entropy_naive_log(z_t, tau_max):  # p log p: 0 * -inf = nan where a probability underflows
    out = []
    for T in _steps(tau_max):
        p = F.softmax(_phi(T, tau_max) * z_t, dim=-1)
        out.append(-(p * p.log()).sum(-1).mean().item())
    return out


@pytest.mark.parametrize("answer", [stage1_entropy, stage1_entropy_tensor, stage1_entropy_numpy,
                                    stage1_entropy_float32])
def test_ps2_stage1_entropy_correct(answer):
    result = _verdict("ps2.stage1-entropy", answer)
    assert result, result.message


def _steps(tau_max):
    return range(tau_max, 0, -1)


@pytest.mark.parametrize("answer, needle", [
    (lambda z, m: stage1_entropy(z, m)[::-1], "run backwards"),
    (lambda z, m: _entropies(z, [1 / T for T in _steps(m)]), "softmax(z_t / T)"),
    (lambda z, m: _entropies(z, [1 / _phi(T, m) for T in _steps(m)]), "divided the logits by Phi"),
    (lambda z, m: _entropies(z, [1 - T / m for T in _steps(m)]), "off by one step"),
    (lambda z, m: [h / math.log(2) for h in stage1_entropy(z, m)], "bits"),
    (lambda z, m: [_entropy(F.softmax(_phi(T, m) * z, -1).mean(0)).item() for T in _steps(m)], "averaged distribution"),
    (lambda z, m: _entropies(z, [_phi(T, m) for T in _steps(m)], reduce=lambda h: h.sum()), "sum over the examples"),
    (lambda z, m: stage1_entropy(z, m)[1:], "stage I climbs"),
    (stage1_entropy_naive_log, "nan or inf for a very confident teacher"),
    (lambda z, m: [h + 0.01 for h in stage1_entropy(z, m)], "the entropy of step"),
    (lambda z, m: [_entropy(F.softmax(_phi(T, m) * z, -1)) for T in _steps(m)], "got a tensor of shape"),
    (lambda z, m: torch.stack([_entropy(F.softmax(_phi(T, m) * z, -1)) for T in _steps(m)]), "got a tensor of shape"),
    (lambda z, m: ["a"] * m, "should be a number"),
    (lambda z, m: 2.0, "should return a list"),
    (lambda z: z, "raised TypeError"),
    (3, "should be a function"),
])
def test_ps2_stage1_entropy_wrong(answer, needle):
    result = _verdict("ps2.stage1-entropy", answer)
    assert not result
    assert needle in result.message, result.message


# ------------------------------------------------------------------------------------------
# ps3: patient_loss(hs_s, hs_t, layer_map), PKD's L_PT on the [CLS] vectors of the hidden-state tuples
# ------------------------------------------------------------------------------------------
def patient_loss(hs_s, hs_t, layer_map):  # through the cosine: |a/|a| - b/|b||^2 = 2 - 2 cos(a, b)
    return sum(2 * (1 - F.cosine_similarity(hs_s[j][:, 0], hs_t[k][:, 0], dim=-1)).mean()
               for j, k in layer_map.items())


def patient_loss_normalised(hs_s, hs_t, layer_map):  # the chapter's way: normalise, then the squared distance
    return sum((F.normalize(hs_s[j][:, 0], dim=-1) - F.normalize(hs_t[k][:, 0], dim=-1)).pow(2).sum(-1).mean()
               for j, k in layer_map.items())


def patient_loss_kdedu(hs_s, hs_t, layer_map):
    return losses.pkd_loss([h[:, 0] for h in hs_s], [h[:, 0] for h in hs_t], layer_map)


@pytest.mark.parametrize("answer", [patient_loss, patient_loss_normalised, patient_loss_kdedu])
def test_ps3_patient_loss_correct(answer):
    result = _verdict("ps3.patient-loss", answer)
    assert result, result.message


def _cls_distance(a, b, dim=-1):
    return (F.normalize(a, dim=dim)[:, 0] - F.normalize(b, dim=dim)[:, 0]).pow(2).sum(-1)  # (B,)


@pytest.mark.parametrize("answer, needle", [
    (lambda s, t, m: sum((1 - F.cosine_similarity(s[j][:, 0], t[k][:, 0], dim=-1)).mean() for j, k in m.items()),
     "DistilBERT's 1 - cos"),
    (lambda s, t, m: sum(2 * (1 - F.cosine_similarity(s[j], t[k], dim=-1)).mean() for j, k in m.items()),
     "every token"),
    (lambda s, t, m: sum((s[j][:, 0] - t[k][:, 0]).pow(2).sum(-1).mean() for j, k in m.items()), "not normalised"),
    (lambda s, t, m: sum(F.mse_loss(F.normalize(s[j][:, 0], dim=-1), F.normalize(t[k][:, 0], dim=-1))
                         for j, k in m.items()), "over the H coordinates"),
    (lambda s, t, m: sum(_cls_distance(s[j], t[k]).sum() for j, k in m.items()), "sums over the examples"),
    (lambda s, t, m: patient_loss(s, t, m) / len(m), "averages over the pairs"),
    (lambda s, t, m: sum(_cls_distance(s[j], t[k], dim=1).mean() for j, k in m.items()), "wrong axis"),
    (lambda s, t, m: patient_loss(s, t, {j - 1: k for j, k in m.items()}), "student's index is off by one"),
    (lambda s, t, m: patient_loss(s, t, {j: k - 1 for j, k in m.items()}), "teacher's index is off by one"),
    (lambda s, t, m: patient_loss(s, t, m) + 0.01, "off by"),
    (lambda s, t, m: patient_loss(s, t, m).item(), "should return a torch.Tensor"),
    (lambda s, t, m: patient_loss(s, t, m).detach(), "without a gradient"),
    (lambda s, t, m: torch.stack([2 * (1 - F.cosine_similarity(s[j][:, 0], t[k][:, 0], dim=-1))
                                  for j, k in m.items()]), "one number"),
    (lambda s, t: s, "raised TypeError"),
    ("patient_loss", "should be a function"),
])
def test_ps3_patient_loss_wrong(answer, needle):
    result = _verdict("ps3.patient-loss", answer)
    assert not result
    assert needle in result.message, result.message


def test_ps3_patient_loss_scale_invariance():
    """A loss right on the test maps but not scale invariant is caught by the last check."""
    calls = []

    def scale_sensitive(hs_s, hs_t, layer_map):
        calls.append(1)
        loss = patient_loss(hs_s, hs_t, layer_map)
        return loss if len(calls) <= 5 else loss * hs_s[1].abs().mean().detach()

    result = _verdict("ps3.patient-loss", scale_sensitive)
    assert not result and "scaling the student's states by 3" in result.message, result.message
