"""Auto-checks for the exercises of chapter 12 (MATE-KD)."""

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
    same_tensor,
)


def _soft_reference(logits: torch.Tensor, tau: float, noise: torch.Tensor) -> torch.Tensor:
    """softmax((log p + g) / tau) in float64, written out with exp and sums (differentiable in ``logits``)."""
    z = logits.double()
    log_p = z - torch.log(torch.exp(z - z.max(-1, keepdim=True).values).sum(-1, keepdim=True)) - \
        z.max(-1, keepdim=True).values
    a = (log_p + noise.double()) / tau
    e = torch.exp(a - a.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


@register("12.gumbel", hint="compute the relaxed sample y first; its argmax gives the one-hot vector; then combine the "
                            "two so that the value is the one-hot vector while only y carries a gradient.")
def _check_12_gumbel(fn):
    function("my_st_gumbel(logits, tau, noise)", fn)
    g = torch.Generator().manual_seed(12)
    for shape, tau in (((4, 6), 1.0), ((2, 3, 5), 0.5), ((7, 11), 2.0), ((1, 2), 1.0)):
        logits = (2 * torch.randn(shape, generator=g, dtype=torch.float64)).requires_grad_(True)
        u = torch.rand(shape, generator=g, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
        noise = -torch.log(-torch.log(u))
        w = torch.randn(shape, generator=g, dtype=torch.float64)
        soft = _soft_reference(logits, tau, noise)
        one_hot = torch.zeros(shape, dtype=torch.float64).scatter_(-1, soft.argmax(-1, keepdim=True), 1.0)
        got = fn(logits, tau, noise.clone())
        if not isinstance(got, torch.Tensor) or got.shape != logits.shape:
            got_shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise Wrong(f"my_st_gumbel should return a tensor of the logits' shape {tuple(shape)}, got {got_shape}.")
        value = got.detach().double()
        if torch.allclose(value, soft.detach(), atol=1e-6) and not torch.allclose(soft.detach(), one_hot, atol=1e-6):
            raise Wrong("the value is the relaxed sample y; the straight-through sample's value is the one-hot "
                        "vector of its argmax.")
        same_tensor(f"the value of my_st_gumbel on logits of shape {tuple(shape)}, tau = {tau}", value, one_hot,
                    atol=1e-6)
        if not got.requires_grad:
            raise Wrong("no gradient reaches the logits: the one-hot vector alone is a constant; add the part of y "
                        "that carries the gradient.")
        (grad,) = torch.autograd.grad((got * w).sum(), logits, allow_unused=True)
        (expected,) = torch.autograd.grad((soft * w).sum(), logits)
        if grad is None or torch.allclose(grad, torch.zeros_like(grad)):
            raise Wrong("no gradient reaches the logits: the one-hot vector alone is a constant; add the part of y "
                        "that carries the gradient.")
        if tau != 1.0:
            (at_one,) = torch.autograd.grad((_soft_reference(logits, 1.0, noise) * w).sum(), logits)
            if torch.allclose(grad.double(), at_one, atol=1e-8):
                raise Wrong(f"the gradient is that of tau = 1, not of tau = {tau}: divide by tau inside the softmax.")
        same_tensor(f"the gradient of my_st_gumbel on logits of shape {tuple(shape)}, tau = {tau}", grad.double(),
                    expected, atol=1e-7, rtol=1e-5)
    return "the straight-through Gumbel-softmax: the sample's one-hot vector forward, the gradient of y backward."


@register("12.soft-embeds", hint="look up every token's word vector first, then overwrite the rows at the masked "
                                 "positions with the soft vectors times the embedding matrix, without cutting the "
                                 "graph.")
def _check_12_soft_embeds(fn):
    function("my_soft_embeds(E, ids, positions, soft)", fn)
    g = torch.Generator().manual_seed(21)
    for B, L, V, H in ((3, 5, 11, 4), (1, 7, 6, 3), (4, 2, 9, 5)):
        E = torch.randn(V, H, generator=g, dtype=torch.float64)
        ids = torch.randint(0, V, (B, L), generator=g)
        positions = torch.rand(B, L, generator=g) < 0.4
        positions[0, -1] = True                                        # at least one
        n = int(positions.sum())
        soft = torch.softmax(torch.randn(n, V, generator=g, dtype=torch.float64), -1).requires_grad_(True)
        expected = torch.empty(B, L, H, dtype=torch.float64)
        k = 0
        for b in range(B):                                             # row-major, entry by entry
            for i in range(L):
                if positions[b, i]:
                    expected[b, i] = sum(soft[k, v].item() * E[v] for v in range(V))
                    k += 1
                else:
                    expected[b, i] = E[ids[b, i]]
        got = fn(E.clone(), ids.clone(), positions.clone(), soft)
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and \
                torch.allclose(got.detach().double(), E[ids]) and n:
            raise Wrong("these are the original word vectors everywhere: the masked positions should hold soft @ E.")
        same_tensor(f"my_soft_embeds with (B, L, V, H) = {(B, L, V, H)}", got.detach() if isinstance(got, torch.Tensor)
                    else got, expected, atol=1e-9)
        if not got.requires_grad:
            raise Wrong("no gradient reaches soft: the result must stay in the autograd graph (no .detach(), no "
                        "torch.no_grad, no copy through numpy).")
        w = torch.randn(B, L, H, generator=g, dtype=torch.float64)
        (grad,) = torch.autograd.grad((got * w).sum(), soft)
        same_tensor("the gradient with respect to soft", grad, w[positions] @ E.T, atol=1e-9)  # d/dsoft of <w, soft E>
    return "soft tokens enter the model as soft @ E, the other tokens as their own word vectors; gradients reach soft."


# ------------------------------------------------------------------------------------------------
# 12.random-direction: an experiment. The reader trains the chapter's digit student with a random perturbation of
# the same length over the chapter's live seeds; the checker trains one of the submitted seeds again, both ways, in
# the chapter's live setting, and recomputes the verdict.
# ------------------------------------------------------------------------------------------------
DIGITS_SETTING = {"teacher": {"hidden": [256], "num_epochs": 15}, "n_train": 100, "batch_size": 32, "epochs": 30,
                  "lr": 1e-2, "hidden": (16,), "epsilon": 1.0, "steps": 3, "alpha": 0.5, "temperature": 1.0,
                  "adv_weight": 1 / 3, "min_seeds": 3}
"""The chapter's digit setting (``DIGITS`` and ``train_digits``): the zoo's ``digits-mlp`` teacher with the listed
overrides, an ``MLP(64, hidden, 10)`` student trained on the first 100 training digits."""


@functools.lru_cache(maxsize=64)  # a resubmitted answer is checked again in no time
def digits_accuracy(random: bool, seed: int) -> float:
    """Test accuracy of the chapter's digit student trained with ``AdversarialKD(random=random)``, live setting:
    ``torch.manual_seed(seed)``, ``MLP(64, (16,), 10)``, ``fit(..., num_epochs=30, lr=1e-2, seed=seed)`` on the first
    100 training digits in shuffled batches of 32; scored on the 360 test digits."""
    from kdedu import data, zoo
    from kdedu.methods import AdversarialKD
    from kdedu.models import MLP
    from kdedu.train import evaluate, fit

    s = DIGITS_SETTING
    teacher = zoo.teacher("digits-mlp", verbose=False, **s["teacher"])
    torch.manual_seed(seed)
    student = MLP(64, s["hidden"], 10)
    method = AdversarialKD(student, teacher, alpha=s["alpha"], temperature=s["temperature"],
                           adv_weight=s["adv_weight"], epsilon=s["epsilon"], steps=s["steps"], random=random)
    loader = data.make_loader(data.digits("train", limit=s["n_train"]), s["batch_size"], shuffle=True)
    fit(method, loader, None, num_epochs=s["epochs"], lr=s["lr"], seed=seed, progress=False)
    return float(evaluate(student, data.make_loader(data.digits("test"), batch_size=512))["acc"])


@register("12.random-direction", hint="the control is one more experiment.run over the chapter's digit seeds, built "
                                      "like the chapter's adversarial digit run with only the direction changed; keep "
                                      "every list in the order of the seeds.")
def _check_12_random_direction(answer):
    s = DIGITS_SETTING
    answer_dict(answer, ("seeds", "random", "adversarial", "verdict"))
    seeds = answer_seeds(answer, s["min_seeds"])
    n = len(seeds)
    rand = answer_accuracies('answer["random"]', answer["random"], n)
    adv = answer_accuracies('answer["adversarial"]', answer["adversarial"], n)
    if rand == adv:
        raise Wrong("the two lists are the same, seed by seed: the random direction is a different training run "
                    "(random=True) from the chapter's adversarial students.")
    c = answer_verdict(answer, adv, rand, "adversarial first")
    i = picked([seeds, rand, adv], n)  # one seed, fixed by the answer itself
    for name, values, is_random in (("random", rand, True), ("adversarial", adv, False)):
        again = digits_accuracy(is_random, seeds[i])
        if abs(again - values[i]) > retrain_tolerance():
            what = "with a random direction" if is_random else "adversarially, as the chapter does"
            raise Wrong(f'seed {seeds[i]}: your answer["{name}"] says {100 * values[i]:.2f} %, but training the digit '
                        f"student {what} in the chapter's setting ({s['n_train']} digits, {s['epochs']} epochs, "
                        f"epsilon = {s['epsilon']:g}) gives {100 * again:.2f} %. Check the method, the setting and the "
                        "order of the values.")
    mde = c["mde"] if math.isfinite(c["mde"]) else float("inf")
    return (f"your seed {seeds[i]} reproduces, both ways. Adversarial − random = {100 * c['mean']:+.2f} ± "
            f"{100 * c['se']:.2f} points over {n} seeds: {c['verdict']} (exploratory; minimum detectable effect "
            f"{100 * mde:.2f} points).")
