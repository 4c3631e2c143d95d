"""The exercise checkers of chapters 01 (why distill) and 02 (dark knowledge).

For every checker: a correct answer passes, plausible wrong answers fail (with a message), and
``None`` as "not answered yet" is checked for every exercise in tests/test_check.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdedu import check, experiment, losses
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



# ------------------------------------------------------------------------------------------
# the experiment-level exercises: the answers are trained once per module, as the chapters' solutions train them
# ------------------------------------------------------------------------------------------
def _shift(values, digits):
    """Every accuracy moved by a few test digits (the other way where that would leave [0, 1])."""
    return [v + digits / 360 if 0 <= v + digits / 360 <= 1 else v - digits / 360 for v in values]


@pytest.fixture(scope="module")
def more_labels_answer():
    """01.more-labels as the chapter's solution makes it: the MLP-64 on all 1,078 labels, 30 epochs, 5 seeds."""
    import kdedu
    from kdedu.methods import KD, Supervised
    from kdedu.models import MLP

    teacher = kdedu.zoo.teacher("digits-cnn", verbose=False)
    full = kdedu.data.digits_loaders(batch_size=64, limit=None)
    seeds, more = list(range(5)), {"Supervised": [], "KD": []}
    for seed in seeds:
        for name in more:
            torch.manual_seed(seed)
            student = MLP(in_features=64, hidden=(64,), num_classes=10)
            method = Supervised(student) if name == "Supervised" else KD(student, teacher, alpha=0.5, temperature=4.0)
            kdedu.fit(method, full["train"], num_epochs=30, lr=3e-3, seed=seed, progress=False)
            more[name].append(kdedu.evaluate(student, full["test"])["acc"])
    return {"seeds": seeds, "supervised": more["Supervised"], "kd": more["KD"],
            "verdict": experiment.compare(more["KD"], more["Supervised"])["verdict"]}


def test_01_more_labels(more_labels_answer):
    right = _verdict("01.more-labels", more_labels_answer)
    assert right, right.message
    assert "reproduces" in right.message and "minimum detectable effect" in right.message
    answer = more_labels_answer
    as_arrays = {**answer, "seeds": tuple(answer["seeds"]), "supervised": np.array(answer["supervised"]),
                 "kd": torch.tensor(answer["kd"], dtype=torch.float64)}
    assert _verdict("01.more-labels", as_arrays)  # arrays and tuples are fine
    other = next(v for v in ("better", "worse", "no clear difference") if v != answer["verdict"])
    made_up = {**answer, "kd": _shift(answer["kd"], 2)}
    made_up["verdict"] = experiment.compare(made_up["kd"], made_up["supervised"])["verdict"]
    for wrong, words in (
        ({**answer, "verdict": other}, "experiment.compare"),
        (made_up, "all 1,078 labels"),  # numbers that no training run gave: the re-trained seed says so
        ({**answer, "supervised": [100 * v for v in answer["supervised"]], "kd": [100 * v for v in answer["kd"]]},
         "percentages"),
        ({**answer, "kd": list(answer["supervised"]), "verdict": "no clear difference"}, "the same"),
        ({**answer, "seeds": [0, 1, 2], "supervised": answer["supervised"][:3], "kd": answer["kd"][:3]},
         "at least 5"),
        ({**answer, "kd": answer["kd"][:4]}, "one accuracy per seed"),
        ({k: v for k, v in answer.items() if k != "verdict"}, "lacks"),
        ({**answer, "kd": [0.9001] * 5}, "not accuracies"),  # not a whole number of the 360 test digits
    ):
        r = _verdict("01.more-labels", wrong)
        assert not r and words in r.message, (words, r.message)


@pytest.fixture(scope="module")
def less_data_answer():
    """02.less-data as the chapter's solution makes it: hard labels and soft targets at T = 4 (alpha = 1) on 30, 100
    and 300 images, about 200 gradient steps each, 5 seeds."""
    import kdedu
    from kdedu.methods import KD, Supervised
    from kdedu.models import MLP

    teacher = kdedu.zoo.teacher("digits-cnn", verbose=False)
    make_method = {"hard labels": lambda s: Supervised(s),
                   "soft targets, T = 4": lambda s: KD(s, teacher, alpha=1.0, temperature=4.0)}
    seeds = list(range(5))
    answer = {"seeds": seeds, "hard labels": {}, "soft targets, T = 4": {}}
    for n in (30, 100, 300):
        loaders = kdedu.data.digits_loaders(batch_size=min(50, n), limit=n)
        for name, make in make_method.items():
            accs = []
            for seed in seeds:
                torch.manual_seed(seed)
                student = MLP(in_features=64, hidden=(64,), num_classes=10)
                kdedu.fit(make(student), loaders["train"], num_epochs=200 // len(loaders["train"]), lr=3e-3,
                          seed=seed, progress=False)
                accs.append(kdedu.evaluate(student, loaders["test"])["acc"])
            answer[name][n] = accs
    gains = {n: np.mean(np.subtract(answer["soft targets, T = 4"][n], answer["hard labels"][n]))
             for n in (30, 100, 300)}
    answer["largest gain at"] = max(gains, key=gains.get)
    answer["_gains"] = gains  # for the tests below; the checker ignores extra keys
    return answer


def test_02_less_data(less_data_answer):
    gains = less_data_answer["_gains"]
    answer = {k: v for k, v in less_data_answer.items() if k != "_gains"}
    right = _verdict("02.less-data", answer)
    assert right, right.message
    assert "reproduces" in right.message and "n = 30" in right.message and "n = 300" in right.message
    as_strings = {**answer, "hard labels": {str(n): np.array(v) for n, v in answer["hard labels"].items()}}
    assert _verdict("02.less-data", as_strings)  # "30" as a key and an array of accuracies are fine
    not_largest = min(gains, key=gains.get)
    assert gains[not_largest] < max(gains.values())  # the three gains differ (else this test has no wrong size)
    soft = answer["soft targets, T = 4"]
    made_up = {**answer, "soft targets, T = 4": {n: _shift(v, 2) for n, v in soft.items()}}
    made_up_gains = {n: np.mean(np.subtract(made_up["soft targets, T = 4"][n], answer["hard labels"][n])) for n in soft}
    made_up["largest gain at"] = max(made_up_gains, key=made_up_gains.get)
    for wrong, words in (
        ({**answer, "largest gain at": not_largest}, "largest mean gain"),
        ({**answer, "largest gain at": 200}, "not one of the sizes"),
        (made_up, "Check the loaders"),  # numbers that no training run gave: the re-trained pair says so
        ({**answer, "hard labels": {n: v for n, v in answer["hard labels"].items() if n != 300}}, "the sizes"),
        ({**answer, "hard labels": list(answer["hard labels"].values())}, "should be a dict"),
        ({**answer, "soft targets, T = 4": answer["hard labels"]}, "the same"),
        ({k: v for k, v in answer.items() if k != "largest gain at"}, "lacks"),
    ):
        r = _verdict("02.less-data", wrong)
        assert not r and words in r.message, (words, r.message)


def test_every_chapter_01_02_exercise_is_tested():
    ours = {k for k in check.EXERCISES if k.startswith(("01.", "02."))}
    assert ours == {"01.mlp-params", "01.kd-loss", "01.more-labels",
                    "02.class-similarity", "02.hard-plus-logits", "02.less-data"}
