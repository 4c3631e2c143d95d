"""The exercise checkers of chapters 01 (why distill) and 02 (dark knowledge).

For every checker: a correct answer passes, plausible wrong answers fail (with a message), and
``None`` as "not answered yet" is checked for every exercise in tests/test_check.py.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from kdedu import check, losses
from kdedu.train import Distiller


def _verdict(exercise_id, answer):
    return check.exercise(exercise_id, answer, verbose=False)


# ------------------------------------------------------------------------------------------
# chapter 01
# ------------------------------------------------------------------------------------------
def mlp_params(in_features, hidden, num_classes):
    widths = [in_features, *hidden, num_classes]
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))


def mlp_params_numpy(in_features, hidden, num_classes):  # a NumPy integer is a number too
    return np.int64(mlp_params(in_features, hidden, num_classes))


def mlp_params_no_bias(in_features, hidden, num_classes):
    widths = [in_features, *hidden, num_classes]
    return sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))


def mlp_params_first_layer_only(in_features, hidden, num_classes):
    return in_features * (hidden[0] if hidden else num_classes)


def kd_ce(z_s, z_t, y, alpha, T):
    p_t = F.softmax(z_t / T, dim=-1)
    soft = -(p_t * F.log_softmax(z_s / T, dim=-1)).sum(dim=-1).mean()
    return (1 - alpha) * F.cross_entropy(z_s, y) + alpha * T**2 * soft


def kd_kl(z_s, z_t, y, alpha, T):  # the chapter's KL form: right gradient, not the asked-for value
    return losses.distillation_loss(z_s, z_t, y, alpha, T)


def kd_ce_no_t2(z_s, z_t, y, alpha, T):
    p_t = F.softmax(z_t / T, dim=-1)
    soft = -(p_t * F.log_softmax(z_s / T, dim=-1)).sum(dim=-1).mean()
    return (1 - alpha) * F.cross_entropy(z_s, y) + alpha * soft


def kd_ce_student_not_softened(z_s, z_t, y, alpha, T):
    p_t = F.softmax(z_t / T, dim=-1)
    soft = -(p_t * F.log_softmax(z_s, dim=-1)).sum(dim=-1).mean()
    return (1 - alpha) * F.cross_entropy(z_s, y) + alpha * T**2 * soft


def kd_ce_summed(z_s, z_t, y, alpha, T):  # sums over the batch instead of averaging
    p_t = F.softmax(z_t / T, dim=-1)
    soft = -(p_t * F.log_softmax(z_s / T, dim=-1)).sum()
    return (1 - alpha) * F.cross_entropy(z_s, y, reduction="sum") + alpha * T**2 * soft


def kd_ce_detached(z_s, z_t, y, alpha, T):
    return kd_ce(z_s, z_t, y, alpha, T).detach()


def kd_ce_per_row(z_s, z_t, y, alpha, T):
    p_t = F.softmax(z_t / T, dim=-1)
    return (1 - alpha) * F.cross_entropy(z_s, y, reduction="none") - alpha * T**2 * (
        p_t * F.log_softmax(z_s / T, dim=-1)).sum(dim=-1)


def test_01_mlp_params():
    assert _verdict("01.mlp-params", mlp_params)
    assert _verdict("01.mlp-params", mlp_params_numpy)
    r = _verdict("01.mlp-params", mlp_params_no_bias)
    assert not r and "biases" in r.message
    assert not _verdict("01.mlp-params", mlp_params_first_layer_only)
    assert not _verdict("01.mlp-params", lambda *a: "4810")
    assert not _verdict("01.mlp-params", 4810)  # a number, not a function


def test_01_kd_loss():
    r = _verdict("01.kd-loss", kd_ce)
    assert r, r.message
    r = _verdict("01.kd-loss", kd_kl)
    assert not r and "KL form" in r.message
    r = _verdict("01.kd-loss", kd_ce_no_t2)
    assert not r and "T**2" in r.message
    for wrong in (kd_ce_student_not_softened, kd_ce_summed, kd_ce_detached, kd_ce_per_row):
        assert not _verdict("01.kd-loss", wrong), wrong.__name__
    assert not _verdict("01.kd-loss", lambda *a: 1 / 0)  # a crashing answer is reported, not raised


# ------------------------------------------------------------------------------------------
# chapter 02
# ------------------------------------------------------------------------------------------
def class_similarity(probs, labels, num_classes):  # S of eq. (eq-class-similarity), as in the chapter
    onehot = F.one_hot(labels, num_classes).to(probs.dtype)
    return (onehot.T @ probs) / onehot.sum(dim=0).clamp_min(1).unsqueeze(1)


def doubt_matrix(probs, labels, num_classes):
    off = class_similarity(probs, labels, num_classes).fill_diagonal_(0.0)
    return off / off.sum(dim=1, keepdim=True)


def doubt_matrix_loop(probs, labels, num_classes):
    S = torch.stack([probs[labels == k].mean(dim=0) for k in range(num_classes)])
    return torch.stack([torch.where(torch.arange(num_classes) == k, 0.0, S[k] / (1 - S[k, k]))
                        for k in range(num_classes)])


def doubt_matrix_transposed(probs, labels, num_classes):
    return doubt_matrix(probs, labels, num_classes).T


def doubt_matrix_not_renormalised(probs, labels, num_classes):
    return class_similarity(probs, labels, num_classes).fill_diagonal_(0.0)


def doubt_matrix_per_example(probs, labels, num_classes):  # renormalises each example, then averages
    wrong = probs * (1 - F.one_hot(labels, num_classes).to(probs.dtype))
    return class_similarity(wrong / wrong.sum(dim=1, keepdim=True), labels, num_classes)


def doubt_matrix_keeps_diagonal(probs, labels, num_classes):
    S = class_similarity(probs, labels, num_classes)
    return S / S.sum(dim=1, keepdim=True)


class HardPlusLogits(Distiller):
    def __init__(self, student, teacher, alpha=0.5):
        super().__init__(student, teacher)
        self.alpha = alpha

    def forward(self, x, y):
        z_s = self.student(x)
        return {"ce": (1 - self.alpha) * F.cross_entropy(z_s, y),
                "mse": self.alpha * losses.logit_mse(z_s, self.teacher_logits(x))}


class SwappedWeights(HardPlusLogits):
    def forward(self, x, y):
        z_s = self.student(x)
        return {"ce": self.alpha * F.cross_entropy(z_s, y),
                "mse": (1 - self.alpha) * losses.logit_mse(z_s, self.teacher_logits(x))}


class SoftTargetsInsteadOfLogits(HardPlusLogits):
    def forward(self, x, y):
        z_s = self.student(x)
        return {"ce": (1 - self.alpha) * F.cross_entropy(z_s, y),
                "kd": self.alpha * losses.kd_loss(z_s, self.teacher_logits(x), 1.0)}


class SummedMSE(HardPlusLogits):
    def forward(self, x, y):
        z_s = self.student(x)
        return {"ce": (1 - self.alpha) * F.cross_entropy(z_s, y),
                "mse": self.alpha * ((z_s - self.teacher_logits(x)) ** 2).sum()}


class DetachedStudent(HardPlusLogits):
    def forward(self, x, y):
        terms = super().forward(x, y)
        return {k: v.detach() for k, v in terms.items()}


def test_02_class_similarity():
    assert _verdict("02.class-similarity", doubt_matrix)
    assert _verdict("02.class-similarity", doubt_matrix_loop)
    for wrong, needle in ((doubt_matrix_transposed, "transposed"), (doubt_matrix_not_renormalised, "sum to 1"),
                          (doubt_matrix_per_example, "before averaging"), (doubt_matrix_keeps_diagonal, "S itself")):
        r = _verdict("02.class-similarity", wrong)
        assert not r and needle in r.message, (wrong.__name__, r.message)
    assert not _verdict("02.class-similarity", class_similarity)  # S itself, the chapter's matrix


def test_02_hard_plus_logits():
    r = _verdict("02.hard-plus-logits", HardPlusLogits)
    assert r, r.message
    r = _verdict("02.hard-plus-logits", SwappedWeights)
    assert not r and "swapped" in r.message
    for wrong in (SoftTargetsInsteadOfLogits, SummedMSE, DetachedStudent):
        assert not _verdict("02.hard-plus-logits", wrong), wrong.__name__
    assert not _verdict("02.hard-plus-logits", HardPlusLogits(torch.nn.Linear(6, 4), torch.nn.Linear(6, 4)))
    assert not _verdict("02.hard-plus-logits", lambda s, t, alpha: {})

