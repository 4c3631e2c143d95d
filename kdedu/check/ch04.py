"""Auto-checks for the exercises of chapter 04 (registered with :func:`kdedu.check.register`)."""

from __future__ import annotations

import math

import torch

from kdedu.check import Wrong, close, function, register, same_tensor


def _ch04_labels() -> torch.Tensor:
    return torch.tensor([3, 0, 9, 3, 7, 1])


def _ch04_prior(c: int, seed: int) -> torch.Tensor:
    """A non-uniform distribution over c classes (like class frequencies)."""
    w = torch.rand(c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.2
    return w / w.sum()


@register("04.smoothed-targets",
          hint="every row mixes its one-hot label with the same distribution, the prior; check that each row "
               "sums to 1 and that a uniform prior gives the chapter's q'.")
def _check_04_smoothed_targets(fn):
    function("smoothed_targets(y, prior, eps)", fn)
    y = _ch04_labels()
    for C, eps, prior in ((10, 0.1, _ch04_prior(10, 0)), (12, 0.3, _ch04_prior(12, 1)),
                          (10, 0.2, torch.full((10,), 0.1, dtype=torch.float64))):
        expected = torch.empty((len(y), C), dtype=torch.float64)
        for row, label in enumerate(y.tolist()):  # built entry by entry, independently of torch's one_hot
            for k in range(C):
                expected[row, k] = (1 - eps) * (k == label) + eps * prior[k]
        got = fn(y.clone(), prior.clone(), eps)
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and \
                not torch.allclose(got.double(), expected, atol=1e-6):
            uniform = (1 - eps) * torch.eye(C, dtype=torch.float64)[y] + eps / C
            if torch.allclose(got.double(), uniform, atol=1e-6):
                raise Wrong("your targets smooth towards the uniform distribution; here the smoothing distribution "
                            "is the prior passed as an argument.")
            if torch.allclose(got.double().sum(dim=1), torch.ones(len(y), dtype=torch.float64), atol=1e-6) and \
                    math.isclose(float(got[0, y[0]]), 1 - eps, rel_tol=1e-4):
                raise Wrong("your targets give exactly 1 - eps to the label; the label also gets its share "
                            "eps * prior[y] of the smoothing.")
        same_tensor(f"your smoothed_targets(y, prior over {C} classes, {eps})", got, expected)
    return ("matches q' = (1 - eps) q + eps prior, and a uniform prior gives Szegedy et al.'s label smoothing. "
            "KD goes one step further: its smoothing distribution is the teacher's, different for every input.")


@register("04.ls-constant",
          hint="one loss is a cross-entropy with q', the other a KL divergence from the same q' (the chapter's two "
               "facts); a cross-entropy is a KL divergence plus an entropy.")
def _check_04_ls_constant(answer):
    from kdedu import losses

    g = torch.Generator().manual_seed(4)
    z = 3 * torch.randn(16, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (16,), generator=g)
    diff = losses.label_smoothing_loss(z, y, 0.1) - losses.virtual_teacher_loss(z, y, alpha=1.0, temperature=1.0,
                                                                                correct_prob=0.91)
    expected = diff.item()
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        if math.isclose(answer, 0.1 * math.log(10), rel_tol=1e-3):
            raise Wrong(f"{answer} = eps log C is the chapter's constant between label smoothing and KD from a "
                        "uniform teacher; here the other loss is the virtual teacher's.")
        if math.isclose(answer, -expected, rel_tol=1e-3):
            raise Wrong("the sign is flipped: the exercise asks for label smoothing minus the virtual teacher's loss.")
        if abs(answer) < 1e-6:
            raise Wrong("the gradients are the same, but not the values: a KL divergence is 0 when the student "
                        "matches its target, a cross-entropy is not.")
    close("your constant", answer, expected, rel=1e-3)
    return (f"the difference is {expected:.4f} = H(q'), the entropy of the smoothed label, for any logits: a constant, "
            "so no gradient.")


@register("04.virtual-teacher",
          hint="start from a (len(y), C) tensor filled with the wrong-class probability of chapter 04's "
               "virtual teacher, then overwrite one entry per row; each row must sum to 1.")
def _check_04_virtual_teacher(fn):
    function("virtual_teacher(y, C, a)", fn)
    y = _ch04_labels()
    for C, a in ((10, 0.9), (12, 0.75)):
        expected = torch.full((len(y), C), (1 - a) / (C - 1), dtype=torch.float64)
        for row, label in enumerate(y.tolist()):
            expected[row, label] = a
        same_tensor(f"your virtual_teacher(y, {C}, {a})", fn(y.clone(), C, a), expected)
    return "matches Yuan et al.'s virtual teacher p^d."


@register("04.matching-eps",
          hint="the two targets must agree on every class: compare what each gives to one wrong class.")
def _check_04_matching_eps(answer):
    a, C = 0.9, 10
    p_d = torch.full((C,), (1 - a) / (C - 1), dtype=torch.float64)  # the virtual teacher of label 0
    p_d[0] = a
    expected = (p_d[1] * C).item()  # label smoothing gives eps / C to every wrong class
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        if math.isclose(answer, 1 - a, rel_tol=1e-6):
            raise Wrong(f"eps = {answer} gives each wrong class eps / C = {answer / C:.4g} and the label "
                        f"{1 - answer + answer / C:.4g}, but the virtual teacher gives the label exactly {a}.")
    close("your eps", answer, expected, rel=2e-3)  # 0.111, to three decimals, is right
    return (f"eps = C (1 - a) / (C - 1) = {expected:.4f}: then every wrong class gets eps / C = (1 - a) / 9 and the "
            "label 1 - eps + eps / C = 0.9, so the two targets, and the gradients, are the same.")


_MULLER_EPS, _MULLER_T = 0.3, 4.0


@register("04.muller",
          hint="a teacher for this exercise must be trained to convergence on the full training split (not the "
               "200 transfer digits), and the smoothing belongs in its training loss, not in its outputs: the "
               "check reads the model's own logits.")
def _check_04_muller(model):
    from kdedu import losses
    from kdedu.data import digits, make_loader
    from kdedu.train import predict

    if isinstance(model, (str, bytes, int, float, torch.Tensor)) or not callable(model) \
            or not hasattr(model, "parameters"):
        raise Wrong(f"the answer should be your trained teacher, a torch.nn.Module, got {type(model).__name__}.")
    try:
        z_test, y_test = predict(model, make_loader(digits("test"), batch_size=512))
        z, y = predict(model, make_loader(digits("train", limit=200), batch_size=512))
    except Exception as err:
        raise Wrong(f"your model cannot classify the 8x8 digits: {type(err).__name__}: {err}.") from None
    if z.dim() != 2 or z.shape[1] != 10:
        raise Wrong(f"your model returns logits of shape {tuple(z.shape)} for 200 digits; a teacher for the "
                    "10 digit classes returns (200, 10).")
    acc = (z_test.argmax(-1) == y_test).float().mean().item()
    if acc < 0.9:
        raise Wrong(f"your teacher's test accuracy is {acc:.1%}: not a trained teacher yet (the chapter's ordinary "
                    "teacher is above 95 %).")
    on_label = z.double().softmax(-1).gather(1, y[:, None]).mean().item()
    cap = 1 - _MULLER_EPS + _MULLER_EPS / 10  # the probability that label smoothing's optimum gives the label
    if on_label > cap + 0.09:
        raise Wrong(f"your teacher gives the label of the transfer digits {on_label:.2f} on average at T = 1; the "
                    f"optimum of label smoothing with eps = {_MULLER_EPS} gives it {cap:.2f}. Was it trained with "
                    f"label smoothing, and with eps = {_MULLER_EPS}?")
    if on_label < cap - 0.13:
        raise Wrong(f"your teacher gives the label of the transfer digits only {on_label:.2f} on average at T = 1, "
                    f"well below the {cap:.2f} of label smoothing with eps = {_MULLER_EPS}: more smoothing than "
                    "asked, or too little training?")
    p = losses.soft_targets(z.double(), _MULLER_T)
    entropy = -(p * p.clamp_min(1e-300).log()).sum(-1).mean().item()
    return (f"a label-smoothed teacher: test accuracy {acc:.1%}, {on_label:.2f} on the label (eps = {_MULLER_EPS} "
            f"allows {cap:.2f}), and soft targets at T = {_MULLER_T:g} with a mean entropy of {entropy:.2f} nats on "
            f"the transfer digits, {entropy / math.log(10):.0%} of the uniform's log C = {math.log(10):.2f}. "
            "Compare it with the real teacher's line in section 2: that gap is the knowledge Müller et al. say "
            "label smoothing erases.")
