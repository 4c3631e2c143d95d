"""Auto-checks for the exercises of chapter 12 (MATE-KD)."""

from __future__ import annotations

import functools
import math

import torch

from kdedu.check import (
    Wrong,
    answer_accuracies,
    answer_dict,
    answer_number,
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


def exact_gradient(logits: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The gradient of ``E_{i ~ softmax(logits)}[c_i] = sum_i p_i c_i`` with respect to the logits, in closed form:
    ``p_i (c_i - sum_j p_j c_j)`` (what an unbiased estimator averages to)."""
    p = torch.softmax(logits.double(), -1)
    return p * (c.double() - (p * c.double()).sum())


@register("12.st-gradient", hint="the logits you are given carry no gradient; and the mean of N gradients is the "
                                 "gradient of a mean.")
def _check_12_st_gradient(fn):
    function("my_st_gradient(logits, c, tau, noise)", fn)
    g = torch.Generator().manual_seed(12)
    for V, N, tau in ((5, 64, 1.0), (3, 200, 0.5), (7, 32, 2.0), (2, 10, 1.0)):
        logits = 2 * torch.randn(V, generator=g, dtype=torch.float64)
        c = torch.randn(V, generator=g, dtype=torch.float64)
        u = torch.rand(N, V, generator=g, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
        noise = -torch.log(-torch.log(u))
        z = logits.clone().requires_grad_(True)
        (expected,) = torch.autograd.grad((_soft_reference(z.expand(N, V), tau, noise) @ c).mean(), z)
        got = fn(logits.clone(), c.clone(), tau, noise.clone())
        if not isinstance(got, torch.Tensor) or got.shape != (V,):
            got_shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise Wrong(f"my_st_gradient should return a tensor of the logits' shape ({V},), got {got_shape}.")
        got = got.detach().double()
        if torch.allclose(got, torch.zeros_like(got), atol=1e-12):
            raise Wrong("the gradient is zero: the one-hot sample alone is a constant; the straight-through sample "
                        "borrows the gradient of its relaxation.")
        if torch.allclose(got, exact_gradient(logits, c), atol=1e-9) and \
                not torch.allclose(expected, exact_gradient(logits, c), atol=1e-6):
            raise Wrong("this is the exact gradient of E[c_i], in closed form; the exercise asks for the average "
                        "of the straight-through estimates over the given noise.")
        if torch.allclose(got, N * expected, atol=1e-7, rtol=1e-5) and N > 1:
            raise Wrong("this is the sum over the noise rows; the exercise asks for the mean.")
        if tau != 1.0:
            (at_one,) = torch.autograd.grad((_soft_reference(z.expand(N, V), 1.0, noise) @ c).mean(), z)
            if torch.allclose(got, at_one, atol=1e-8):
                raise Wrong(f"the gradient is that of tau = 1, not of tau = {tau}: divide by tau inside the softmax.")
        same_tensor(f"my_st_gradient with V = {V}, {N} noise rows, tau = {tau}", got, expected, atol=1e-8, rtol=1e-5)
    return ("the mean straight-through gradient over the noise. Compare it with exact_gradient's closed form "
            "p_i (c_i - p·c): the two need not agree, however many rows of noise you average.")


# ------------------------------------------------------------------------------------------------
# 12.collapse: an experiment. The reader trains MATE-KD as the chapter's `train_one` does, on one seed, with two
# generator learning rates, and reports the share of the masked positions that the trained generator fills with its
# most frequent token. The checker trains one of the two again and compares.
# ------------------------------------------------------------------------------------------------
COLLAPSE_SETTING = {"teacher": "sentiment-minilm", "n_train": 128, "layers": (2, 5), "batch": 16, "epochs": 4,
                    "lr": 1e-4, "alpha": 0.5, "temperature": 1.0, "adv_weight": 1 / 3, "rate": 0.3, "tau": 1.0,
                    "generator_steps": 1, "student_steps": 1, "generator_lrs": (1e-4, 1e-3)}
"""The chapter's live text setting (``make_student``, ``train_one``, ``GENERATOR``), with 4 epochs (32 student
updates) and the generator learning rate varied."""


@functools.lru_cache(maxsize=8)  # a resubmitted answer is checked again in no time
def top_fill_share(generator_lr: float, seed: int = 0) -> float:
    """Train MATE-KD in :data:`COLLAPSE_SETTING` with ``generator_lr`` on ``seed``, then rewrite the transfer set in
    one batch (``method.eval().generate(all_ids)``, once, right after training) and return the share of the
    masked positions that hold the most frequent fill."""
    from kdedu import data, zoo
    from kdedu.methods import MATEKD
    from kdedu.models import SequenceClassifier, student_from_teacher
    from kdedu.train import fit

    s = COLLAPSE_SETTING
    teacher = zoo.text_teacher(s["teacher"], verbose=False)
    generator = zoo.masked_lm(verbose=False)
    tok = teacher.tokenizer
    transfer = data.sentiment("train", limit=s["n_train"])
    torch.manual_seed(seed)
    student = SequenceClassifier(student_from_teacher(teacher, s["layers"]), 2, pooling="cls")
    student.head.load_state_dict(teacher.head.state_dict())
    student.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    method = MATEKD(student, teacher, generator, alpha=s["alpha"], temperature=s["temperature"],
                    adv_weight=s["adv_weight"], adversarial=True, seed=seed, rate=s["rate"], tau=s["tau"],
                    generator_lr=generator_lr, generator_steps=s["generator_steps"], student_steps=s["student_steps"])
    loader = data.text_loader(transfer, tok, s["batch"], shuffle=True, seed=seed)
    fit(method, loader, None, num_epochs=s["epochs"], lr=s["lr"], seed=seed, progress=False)
    all_ids, _ = next(iter(data.text_loader(transfer, tok, batch_size=len(transfer))))
    new_ids, positions = method.eval().generate(all_ids)
    counts = new_ids[positions].unique(return_counts=True)[1]
    return counts.max().item() / int(positions.sum())


@register("12.collapse", hint="train as train_one does, changing only the generator's learning rate and the number "
                              "of epochs; after fit, rewrite all the transfer sentences once and count how often "
                              "each filled token occurs.")
def _check_12_collapse(answer):
    s = COLLAPSE_SETTING
    answer_dict(answer, ("generator_lr", "top_share"))
    lrs = answer["generator_lr"]
    lrs = lrs.tolist() if hasattr(lrs, "tolist") else lrs
    if isinstance(lrs, (str, bytes)) or not hasattr(lrs, "__len__"):
        raise Wrong('answer["generator_lr"] should be a list of learning rates.')
    lrs = [answer_number('an entry of answer["generator_lr"]', v) for v in lrs]
    for want in s["generator_lrs"]:
        if not any(math.isclose(v, want, rel_tol=1e-6) for v in lrs):
            raise Wrong(f'answer["generator_lr"] = {lrs} lacks {want:g}: train with both '
                        f"{' and '.join(f'{v:g}' for v in s['generator_lrs'])}.")
    shares = answer["top_share"]
    shares = shares.tolist() if hasattr(shares, "tolist") else shares
    if isinstance(shares, (str, bytes)) or not hasattr(shares, "__len__") or len(shares) != len(lrs):
        raise Wrong('answer["top_share"] should hold one share per learning rate, in the order of '
                    'answer["generator_lr"].')
    shares = [answer_number('an entry of answer["top_share"]', v) for v in shares]
    if any(not 0 < v <= 1 for v in shares):
        if all(0 < v <= 100 for v in shares):
            raise Wrong('answer["top_share"] looks like percentages; give fractions of the masked positions.')
        raise Wrong('answer["top_share"] holds values that are not shares in (0, 1].')
    by_lr = {w: shares[j] for w in s["generator_lrs"] for j, v in enumerate(lrs) if math.isclose(v, w, rel_tol=1e-6)}
    lr = s["generator_lrs"][picked([lrs, shares], len(s["generator_lrs"]))]  # fixed by the answer itself
    again = top_fill_share(lr)
    from kdedu.train import default_device

    tolerance = 1e-6 if default_device().type == "cpu" else 0.05  # a GPU need not repeat a run bit for bit
    if abs(again - by_lr[lr]) > tolerance:
        raise Wrong(f"generator_lr = {lr:g}: your top_share is {by_lr[lr]:.3f}, but training MATE-KD in the "
                    f"chapter's setting ({s['epochs']} epochs, seed 0) and rewriting the transfer set once gives "
                    f"{again:.3f}. Check the setting, the seed, and that you call generate once, right after fit.")
    lo, hi = (by_lr[w] for w in s["generator_lrs"])
    return (f"generator_lr = {lr:g} reproduces. The most frequent fill takes {100 * lo:.0f} % of the masked "
            f"positions at {s['generator_lrs'][0]:g} and {100 * hi:.0f} % at {s['generator_lrs'][1]:g} (one seed: "
            "described, not tested).")


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
