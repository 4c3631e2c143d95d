"""Auto-checks for the exercises of chapter 01 (registered with :func:`kdedu.check.register`)."""

from __future__ import annotations

import functools
import math

import torch

from kdedu.check import (
    Wrong,
    answer_accuracies,
    answer_dict,
    answer_seeds,
    answer_verdict,
    function,
    picked,
    register,
    retrain_tolerance,
)


@register("01.mlp-params", hint="count one layer at a time: it has a weight matrix and a bias vector. Check your "
                                "function on the MLPs of the chapter's table, counted there with count_parameters.")
def _check_01_mlp_params(fn):
    function("mlp_params(in_features, hidden, num_classes)", fn)
    import numbers

    from torch import nn

    for in_features, hidden, num_classes in ((64, (), 10), (64, (64,), 10), (64, (512, 512), 10),
                                             (784, (1200, 1200), 10), (20, (7, 5, 3), 4)):
        widths = [in_features, *hidden, num_classes]
        layers = [nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)]  # built, then counted
        expected = sum(p.numel() for layer in layers for p in layer.parameters())
        weights_only = sum(layer.weight.numel() for layer in layers)
        got = fn(in_features, hidden, num_classes)
        call = f"mlp_params({in_features}, {hidden}, {num_classes})"
        if isinstance(got, bool) or not isinstance(got, numbers.Real):
            raise Wrong(f"your {call} should return a number, got {type(got).__name__}.")
        if got == weights_only:
            raise Wrong(f"your {call} = {got} counts the weights but not the biases.")
        if got != expected:
            raise Wrong(f"your {call} = {got}, but that MLP has {expected} parameters.")
    return "matches the parameter count of every MLP tried, from a linear model to Hinton's 784-1200-1200-10."


def _ch01_kd_inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    z_s = torch.randn(16, 10, generator=g, dtype=torch.float64)
    z_t = 3 * torch.randn(16, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (16,), generator=g)
    return z_s, z_t, y


@register("01.kd-loss", hint="keep the hard term and the T**2 of chapter 01's distillation_loss and change only "
                             "the soft term: a cross-entropy needs the teacher's probabilities and the student's "
                             "log-probabilities, both at temperature T.")
def _check_01_kd_loss(fn):
    function("distillation_loss_ce(z_s, z_t, y, alpha, T)", fn)
    for seed, (alpha, T) in enumerate(((0.5, 4.0), (0.9, 2.0), (1.0, 1.0), (0.0, 3.0), (0.3, 10.0))):
        z_s, z_t, y = _ch01_kd_inputs(seed)
        # the expected value and gradient, written out independently of kdedu.losses
        zs = z_s.clone().requires_grad_(True)
        log_ps, log_pt = torch.log_softmax(zs / T, dim=-1), torch.log_softmax(z_t / T, dim=-1)
        p_t = log_pt.exp()
        ce = -torch.log_softmax(zs, dim=-1)[torch.arange(len(y)), y].mean()
        cross = -(p_t * log_ps).sum(dim=-1).mean()           # H(p_t, p_s)
        entropy = -(p_t * log_pt).sum(dim=-1).mean()         # H(p_t), a constant
        expected = (1 - alpha) * ce + alpha * T * T * cross
        (grad,) = torch.autograd.grad(expected, zs)
        expected_kl = expected - alpha * T * T * entropy
        zs2 = z_s.clone().requires_grad_(True)
        got = fn(zs2, z_t.clone(), y.clone(), alpha, T)
        what = f"your loss at alpha={alpha}, T={T}"
        if not isinstance(got, torch.Tensor) or got.numel() != 1:
            raise Wrong(f"{what} should be a scalar tensor, got {type(got).__name__}"
                        + (f" of shape {tuple(got.shape)}" if isinstance(got, torch.Tensor) else "") + ".",
                        "average over the batch (the rows)")
        if not got.requires_grad:
            raise Wrong(f"{what} has no gradient with respect to z_s (did you detach it or use .item()?).")
        (got_grad,) = torch.autograd.grad(got, zs2)
        value = got.item()
        if math.isclose(value, expected_kl.item(), rel_tol=1e-4, abs_tol=1e-6) and alpha > 0 and \
                not math.isclose(expected_kl.item(), expected.item(), rel_tol=1e-4):
            raise Wrong(f"{what} equals the KL form, T**2 KL(p_t || p_s), of chapter 01's loss: right "
                        "gradient, but the exercise asks for the cross-entropy H(p_t, p_s) = -sum p_t log p_s.")
        if alpha > 0 and T != 1 and math.isclose(value, ((1 - alpha) * ce + alpha * cross).item(), rel_tol=1e-4):
            raise Wrong(f"{what} is missing the T**2 factor on the soft term.")
        if not math.isclose(value, expected.item(), rel_tol=1e-4, abs_tol=1e-6):
            raise Wrong(f"{what} = {value:.6g}, expected {expected.item():.6g}.")
        if not torch.allclose(got_grad.double(), grad, rtol=1e-4, atol=1e-7):
            raise Wrong(f"{what} has the right value but the wrong gradient with respect to z_s.")
    return ("value and gradient match for every alpha and T tried. The value differs from the KL form by "
            "alpha T^2 H(p_t), a constant: the gradients, and so the training, are the same.")


# ------------------------------------------------------------------------------------------------
# 01.more-labels: the chapter's seed comparison on all 1,078 labels
# ------------------------------------------------------------------------------------------------
MORE_LABELS = {"batch_size": 64, "num_epochs": 30, "lr": 3e-3, "hidden": (64,), "alpha": 0.5, "temperature": 4.0,
               "min_seeds": 5}
"""The exercise's setting: the chapter's student, lr, alpha and T, on all the training labels for 30 epochs."""


@functools.lru_cache(maxsize=64)  # a resubmitted answer is checked again in no time
def more_labels_accuracy(method: str, seed: int) -> float:
    """Test accuracy of the chapter's MLP-64 trained on all 1,078 labels, ``"supervised"`` or ``"kd"``.

    The steps of the chapter's seed loop: ``torch.manual_seed(seed)`` then ``MLP(64, (64,), 10)`` (its
    ``make_student``), ``Supervised`` or ``KD(alpha=0.5, temperature=4)`` from the zoo's ``digits-cnn`` teacher,
    ``fit(..., num_epochs=30, lr=3e-3, seed=seed)`` on ``digits_loaders(batch_size=64, limit=None)``, scored on the
    360 test digits.
    """
    from kdedu import data, zoo
    from kdedu.methods import KD, Supervised
    from kdedu.models import MLP
    from kdedu.train import evaluate, fit

    s = MORE_LABELS
    teacher = zoo.teacher("digits-cnn", verbose=False) if method == "kd" else None  # loaded before seeding
    loaders = data.digits_loaders(batch_size=s["batch_size"], limit=None)
    torch.manual_seed(seed)
    student = MLP(in_features=64, hidden=s["hidden"], num_classes=10)
    distiller = KD(student, teacher, alpha=s["alpha"], temperature=s["temperature"]) if method == "kd" \
        else Supervised(student)
    fit(distiller, loaders["train"], num_epochs=s["num_epochs"], lr=s["lr"], seed=seed, progress=False)
    return float(evaluate(student, loaders["test"])["acc"])


@register("01.more-labels", hint="reuse the chapter's seed loop and change only what the exercise changes (the "
                                 "loader and the number of epochs); keep every list in the order of the seeds.")
def _check_01_more_labels(answer):
    answer_dict(answer, ("seeds", "supervised", "kd", "verdict"))
    seeds = answer_seeds(answer, MORE_LABELS["min_seeds"])
    n = len(seeds)
    supervised = answer_accuracies('answer["supervised"]', answer["supervised"], n)
    kd = answer_accuracies('answer["kd"]', answer["kd"], n)
    if supervised == kd:
        raise Wrong('answer["supervised"] and answer["kd"] are the same, seed by seed: they are two different '
                    "training runs.")
    c = answer_verdict(answer, kd, supervised, "KD first")
    i = picked([seeds, supervised, kd], n)
    for name, values in (("supervised", supervised), ("kd", kd)):
        again = more_labels_accuracy(name, seeds[i])
        if abs(again - values[i]) > retrain_tolerance():
            raise Wrong(f'seed {seeds[i]}: your answer["{name}"] says {100 * values[i]:.2f} %, but training the '
                        f"chapter's MLP-64 ({'KD, alpha = 0.5, T = 4' if name == 'kd' else 'Supervised'}) on all "
                        f"1,078 labels for 30 epochs gives {100 * again:.2f} %. Check the loader (all the labels, "
                        "batches of 64), the number of epochs, the method and the order of the values.")
    return (f"your seed {seeds[i]} reproduces, both ways. On all 1,078 labels, KD − Supervised = "
            f"{100 * c['mean']:+.2f} ± {100 * c['se']:.2f} points (mean ± s.e.) over {n} seeds: {c['verdict']} "
            f"(exploratory; minimum detectable effect {100 * c['mde']:.2f} points). Set it beside the gain on 100 "
            "labels.")
