"""Auto-checks for the book's exercises: ``kdedu.check.exercise("03.soft-targets", my_answer)``.

A check never raises on a wrong answer: it prints what is wrong and a hint, and returns a
:class:`Result` that is truthy only when the answer is right, so a notebook runs top to bottom
whether or not the reader has solved the exercise yet (an unanswered exercise is ``None``).
Instructors can ``assert kdedu.check.exercise(...)`` in a grading notebook.

Each exercise is a function registered with :func:`register` below; chapters add theirs at the
end of this file, one block per chapter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Result", "exercise", "register", "EXERCISES", "close"]


@dataclass
class Result:
    """The outcome of a check: ``ok`` and a message (what is wrong, and a hint)."""

    exercise: str
    ok: bool
    message: str

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        mark = "✅" if self.ok else "❌"
        return f"{mark} [{self.exercise}] {self.message}"

    def _ipython_display_(self) -> None:
        """Shown as a cell's last value: nothing, since :func:`exercise` has printed the verdict."""


class Wrong(Exception):
    """Raised inside a checker to report a wrong answer: ``Wrong(what is wrong, hint)``."""

    def __init__(self, what: str, hint: str = ""):
        super().__init__(what)
        self.what, self.hint = what, hint


EXERCISES: dict[str, tuple[Callable, str]] = {}


def register(exercise_id: str, hint: str = ""):
    """Decorator: ``@register("03.soft-targets", hint=...)`` over ``def checker(answer) -> str``.

    The checker raises :class:`Wrong` for a wrong answer and returns a short success message.
    """

    def deco(fn: Callable) -> Callable:
        if exercise_id in EXERCISES:
            raise ValueError(f"exercise {exercise_id!r} is registered twice")
        EXERCISES[exercise_id] = (fn, hint)
        return fn

    return deco


def exercise(exercise_id: str, answer, verbose: bool = True) -> Result:
    """Check ``answer`` for the exercise ``exercise_id``, print the verdict and return it."""
    if exercise_id not in EXERCISES:
        raise ValueError(f"exercise_id must be one of {sorted(EXERCISES)}, got {exercise_id!r}")
    checker, hint = EXERCISES[exercise_id]
    if answer is None or answer is Ellipsis:
        result = Result(exercise_id, False, "not answered yet: replace the `None`/`...` with your answer."
                        + (f" Hint: {hint}" if hint else ""))
    else:
        try:
            result = Result(exercise_id, True, checker(answer) or "correct!")
        except Wrong as w:
            h = w.hint or hint
            result = Result(exercise_id, False, w.what + (f" Hint: {h}" if h else ""))
        except Exception as err:  # the reader's code crashed: say so, with the error
            result = Result(exercise_id, False, f"your answer raised {type(err).__name__}: {err}."
                            + (f" Hint: {hint}" if hint else ""))
    if verbose:
        print(repr(result))
    return result


# ------------------------------------------------------------------------------------------
# helpers for checkers
# ------------------------------------------------------------------------------------------
def close(name: str, got, expected: float, rel: float = 1e-2, abs_: float = 1e-6) -> None:
    """Raise :class:`Wrong` unless the number ``got`` is within tolerance of ``expected``."""
    if isinstance(got, torch.Tensor):
        if got.numel() != 1:
            raise Wrong(f"{name} should be a single number, got a tensor of shape {tuple(got.shape)}.")
        got = got.item()
    try:
        got = float(got)
    except (TypeError, ValueError):
        raise Wrong(f"{name} should be a number, got {type(got).__name__}.") from None
    if not math.isclose(got, expected, rel_tol=rel, abs_tol=abs_):
        direction = "too large" if got > expected else "too small"
        raise Wrong(f"{name} = {got:.6g} is {direction}.")


def same_tensor(name: str, got, expected: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Raise :class:`Wrong` unless ``got`` is a tensor of ``expected``'s shape and values."""
    if not isinstance(got, torch.Tensor):
        raise Wrong(f"{name} should return a torch.Tensor, got {type(got).__name__}.")
    if got.shape != expected.shape:
        raise Wrong(f"{name} returned shape {tuple(got.shape)}, expected {tuple(expected.shape)}.")
    if not torch.allclose(got.double(), expected.double(), atol=atol, rtol=rtol):
        err = (got.double() - expected.double()).abs().max().item()
        raise Wrong(f"{name} is off by up to {err:.3g} from the correct values.")


# ------------------------------------------------------------------------------------------
# the book's exercises, one block per chapter (append new chapters below)
# ------------------------------------------------------------------------------------------


# --- chapter 03 --------------------------------------------------------------------
def _ch03_logits(seed: int, shape: tuple, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=torch.float64)


@register("03.soft-targets",
          hint="divide the logits by T, subtract each row's max, exponentiate, normalise over dim=-1")
def _check_03_soft_targets(fn):
    if not callable(fn):
        raise Wrong(f"the answer should be a function my_soft_targets(logits, T), got {type(fn).__name__}.")
    for shape in ((5, 7), (2, 3, 10)):
        z = _ch03_logits(3, shape)
        for T in (0.5, 1.0, 4.0):
            same_tensor(f"your soft_targets(z of shape {shape}, T={T})", fn(z.clone(), T), torch.softmax(z / T, dim=-1))
    big = torch.tensor([[1000.0, 0.0], [0.0, -1000.0]], dtype=torch.float64)
    got = fn(big.clone(), 1.0)
    if isinstance(got, torch.Tensor) and not torch.isfinite(got).all():
        raise Wrong("your soft_targets returns nan/inf for logits like [1000, 0]: exp overflows.",
                    "subtract each row's maximum before torch.exp; the softmax does not change")
    same_tensor("your soft_targets([[1000, 0], [0, -1000]], 1)", got, torch.softmax(big, dim=-1))
    return "matches softmax(z / T) for every shape and temperature, and is numerically stable."


@register("03.uniform-entropy",
          hint="T -> inf gives the uniform distribution over C = 10 classes; nats use the natural log")
def _check_03_uniform_entropy(answer):
    p = torch.softmax(_ch03_logits(0, (10,)) / 1e9, dim=-1)  # the T -> inf limit, computed
    expected = -(p * p.log()).sum().item()
    if isinstance(answer, (int, float)) and math.isclose(answer, expected / math.log(2), rel_tol=1e-3):
        raise Wrong(f"{answer} is the entropy in bits (log base 2); the book measures entropy in nats.")
    close("your entropy", answer, expected, rel=1e-3)
    return f"H = log 10 = {expected:.4f} nats, the largest entropy a 10-class distribution can have."


@register("03.grad-exponent",
          hint="the gradient is (p_s - p_t) / T, and at high T the difference p_s - p_t also shrinks like 1/T")
def _check_03_grad_exponent(answer):
    z_s, z_t = _ch03_logits(1, (8, 10), 1.0), _ch03_logits(2, (8, 10), 3.0)
    temps, norms = (100.0, 1000.0), []
    for T in temps:  # the gradient norm of the un-scaled KL at two high temperatures, by autograd
        zs = z_s.clone().requires_grad_(True)
        log_ps, log_pt = torch.log_softmax(zs / T, dim=-1), torch.log_softmax(z_t / T, dim=-1)
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=-1).mean()
        (grad,) = torch.autograd.grad(kl, zs)
        norms.append(grad.norm().item())
    slope = (math.log(norms[1]) - math.log(norms[0])) / (math.log(temps[1]) - math.log(temps[0]))
    if isinstance(answer, (int, float)) and math.isclose(answer, -slope, rel_tol=0.05):
        raise Wrong(f"k = {answer} has the right size but the wrong sign: the gradient shrinks as T grows.")
    close("your exponent k", answer, slope, rel=0.05)
    return f"the measured slope is {slope:.3f}: the un-scaled gradient falls like 1/T^2, hence the T^2 factor."


@register("03.kd-limit",
          hint="centre each row of both logits (subtract its mean), then sum the squared differences / (2C)")
def _check_03_kd_limit(fn):
    if not callable(fn):
        raise Wrong(f"the answer should be a function kd_limit(z_s, z_t), got {type(fn).__name__}.")
    z_s = _ch03_logits(4, (6, 10), 1.0) + _ch03_logits(5, (6, 1), 5.0)  # rows with different means
    z_t = _ch03_logits(6, (6, 10), 3.0) - 2.0
    T = 1e4  # the exact KD loss per row at a very high temperature, computed here
    log_ps, log_pt = torch.log_softmax(z_s / T, dim=-1), torch.log_softmax(z_t / T, dim=-1)
    expected = T * T * (log_pt.exp() * (log_pt - log_ps)).sum(dim=-1)  # (6,)
    same_tensor("your kd_limit(z_s, z_t)", fn(z_s.clone(), z_t.clone()), expected, atol=1e-6, rtol=1e-2)
    return "matches T^2 KL(p_t(T) || p_s(T)) at T = 10^4, row by row, for non-zero-mean logits."


# --- chapter 04 --------------------------------------------------------------------
def _ch04_labels() -> torch.Tensor:
    return torch.tensor([3, 0, 9, 3, 7, 1])


@register("04.smoothed-targets",
          hint="(1 - eps) * one_hot(y, C) + eps / C: every class, the label included, gets eps / C")
def _check_04_smoothed_targets(fn):
    if not callable(fn):
        raise Wrong(f"the answer should be a function smoothed_targets(y, C, eps), got {type(fn).__name__}.")
    y = _ch04_labels()
    for C, eps in ((10, 0.1), (12, 0.3)):
        expected = torch.full((len(y), C), eps / C, dtype=torch.float64)
        for row, label in enumerate(y.tolist()):  # built entry by entry, independently of torch's one_hot
            expected[row, label] = 1 - eps + eps / C
        got = fn(y.clone(), C, eps)
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and \
                math.isclose(float(got[0, y[0]]), 1 - eps, rel_tol=1e-4):
            raise Wrong("your targets give exactly 1 - eps to the label: that spreads eps over the C - 1 wrong "
                        "classes only, not Szegedy et al.'s label smoothing.")
        same_tensor(f"your smoothed_targets(y, {C}, {eps})", got, expected)
    return "matches q' = (1 - eps) q + eps u."


@register("04.ls-constant", hint="label smoothing = KD from a uniform teacher + eps * H(u), and H(u) = log C")
def _check_04_ls_constant(answer):
    from kdedu import losses

    g = torch.Generator().manual_seed(4)
    z = 3 * torch.randn(16, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (16,), generator=g)
    diff = losses.label_smoothing_loss(z, y, 0.2) - losses.distillation_loss(z, torch.zeros_like(z), y, 0.2, 1.0)
    close("your constant", answer, diff.item(), rel=1e-3)
    return f"the difference is {diff.item():.4f} = 0.2 * log 10 for any logits: a constant, so no gradient."


@register("04.virtual-teacher", hint="every wrong class gets (1 - a) / (C - 1), the label gets a; each row sums to 1")
def _check_04_virtual_teacher(fn):
    if not callable(fn):
        raise Wrong(f"the answer should be a function virtual_teacher(y, C, a), got {type(fn).__name__}.")
    y = _ch04_labels()
    for C, a in ((10, 0.9), (12, 0.75)):
        expected = torch.full((len(y), C), (1 - a) / (C - 1), dtype=torch.float64)
        for row, label in enumerate(y.tolist()):
            expected[row, label] = a
        same_tensor(f"your virtual_teacher(y, {C}, {a})", fn(y.clone(), C, a), expected)
    return "matches Yuan et al.'s virtual teacher p^d."


@register("04.matching-a",
          hint="make the virtual teacher equal to the label-smoothed target q' = (1 - eps) one_hot(y) + eps / C")
def _check_04_matching_a(answer):
    eps, C = 0.1, 10
    q_smooth = (1 - eps) * torch.eye(C, dtype=torch.float64)[3] + eps / C  # the smoothed target of label 3
    expected = q_smooth[3].item()  # the virtual teacher must put this on the label
    if isinstance(answer, (int, float)) and math.isclose(answer, 1 - eps, rel_tol=1e-6):
        raise Wrong(f"a = {answer} = 1 - eps leaves (1 - a) / (C - 1) = eps / 9 on the wrong classes, but label "
                    "smoothing gives them eps / C = eps / 10.")
    close("your a", answer, expected, rel=1e-4)
    return f"a = 1 - eps + eps / C = {expected:.2f}: then the virtual teacher is exactly the smoothed label."


# --- chapter 01 --------------------------------------------------------------------
@register("01.mlp-params", hint="a layer from a to b units has a*b weights and b biases; sum over consecutive widths")
def _check_01_mlp_params(fn):
    if not callable(fn):
        raise Wrong(f"the answer should be a function mlp_params(in_features, hidden, num_classes), "
                    f"got {type(fn).__name__}.")
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


@register("01.kd-loss", hint="(1 - alpha) * CE(z_s, y) + alpha * T**2 * mean over rows of -sum_i p_t,i log p_s,i, "
                             "with p = softmax(z / T)")
def _check_01_kd_loss(fn):
    if not callable(fn):
        raise Wrong(f"the answer should be a function distillation_loss_ce(z_s, z_t, y, alpha, T), "
                    f"got {type(fn).__name__}.")
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
            raise Wrong(f"{what} equals the KL form of eq. (eq-distillation-loss): right gradient, but the "
                        "exercise asks for the cross-entropy H(p_t, p_s) = -sum p_t log p_s.")
        if alpha > 0 and T != 1 and math.isclose(value, ((1 - alpha) * ce + alpha * cross).item(), rel_tol=1e-4):
            raise Wrong(f"{what} is missing the T**2 factor on the soft term.")
        if not math.isclose(value, expected.item(), rel_tol=1e-4, abs_tol=1e-6):
            raise Wrong(f"{what} = {value:.6g}, expected {expected.item():.6g}.")
        if not torch.allclose(got_grad.double(), grad, rtol=1e-4, atol=1e-7):
            raise Wrong(f"{what} has the right value but the wrong gradient with respect to z_s.")
    return ("value and gradient match for every alpha and T tried. The value differs from the KL form by "
            "alpha T^2 H(p_t), a constant: the gradients, and so the training, are the same.")


# --- chapter 05 --------------------------------------------------------------------
def _ch05_shift_reference(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Image i moved dx[i] pixels right and dy[i] down, zero fill, by copying one block per image."""
    n, _, h, w = x.shape
    out = torch.zeros_like(x)
    for i in range(n):
        a, b = int(dx[i]), int(dy[i])  # |a| < w and |b| < h
        out[i, :, max(0, b):h + min(0, b), max(0, a):w + min(0, a)] = \
            x[i, :, max(0, -b):h - max(0, b), max(0, -a):w - max(0, a)]
    return out


@register("05.translate", hint="pad with zeros and cut a window (or mask the pixels that come from outside); "
                               "dx moves along the last dimension (columns), dy along the rows; nothing wraps around")
def _check_05_translate(fn):
    if not callable(fn):
        raise Wrong(f"the answer should be a function shift_batch(x, dx, dy), got {type(fn).__name__}.")
    g = torch.Generator().manual_seed(5)
    x = torch.rand(6, 2, 7, 9, generator=g)  # not square, 2 channels: catches swapped axes
    dx = torch.tensor([0, 1, -2, 3, 0, -1])
    dy = torch.tensor([0, -1, 2, 0, 3, -3])
    expected = _ch05_shift_reference(x, dx, dy)
    got = fn(x.clone(), dx.clone(), dy.clone())
    if isinstance(got, torch.Tensor) and got.shape == expected.shape and not torch.allclose(got, expected):
        rolled = torch.stack([torch.roll(x[i], (int(dy[i]), int(dx[i])), dims=(1, 2)) for i in range(len(x))])
        if torch.allclose(got, rolled):
            raise Wrong("pixels wrap around: what leaves the image on one side comes back on the other "
                        "(that is torch.roll). Pixels that leave must be dropped, and the empty side filled with 0.")
        if torch.allclose(got, _ch05_shift_reference(x, -dx, -dy)):
            raise Wrong("the images move the wrong way: positive dx must move them right, positive dy down.")
        if torch.allclose(got, _ch05_shift_reference(x, dy, dx)):
            raise Wrong("dx and dy are swapped: dx moves along the columns (the last dimension), dy along the rows.")
    same_tensor("your shift_batch(x, dx, dy) on (6, 2, 7, 9) images", got, expected)
    one = torch.tensor([2])
    same_tensor("your shift_batch on one image moved (2, 2)", fn(x[:1].clone(), one, one.clone()),
                _ch05_shift_reference(x[:1], one, one))
    return "every image moves by its own offset, with zero fill and nothing wrapping around."


@register("05.agreement", hint="compare logits_a.argmax(dim=-1) with logits_b.argmax(dim=-1), then average")
def _check_05_agreement(fn):
    if not callable(fn):
        raise Wrong(f"the answer should be a function my_agreement(logits_a, logits_b), got {type(fn).__name__}.")
    g = torch.Generator().manual_seed(7)
    for n, c, same in ((40, 10, 25), (7, 3, 2)):
        a = torch.randn(n, c, generator=g, dtype=torch.float64)
        b = torch.randn(n, c, generator=g, dtype=torch.float64)
        b[:same] = 2.0 * a[:same] + 1.0  # the same prediction as `a` on these rows, other probabilities
        expected = (a.argmax(dim=-1) == b.argmax(dim=-1)).double().mean().item()
        got = fn(a.clone(), b.clone())
        if isinstance(got, torch.Tensor) and got.numel() > 1:
            raise Wrong(f"your function returned a tensor of shape {tuple(got.shape)}; "
                        "it should return one number, the fraction of rows that agree.")
        value = got.item() if isinstance(got, torch.Tensor) else got
        if isinstance(value, (int, float)) and n > 1 and math.isclose(value, expected * n, rel_tol=1e-6):
            raise Wrong(f"you returned {value}, the number of rows that agree; divide by the number of rows ({n}).")
        close(f"your agreement on ({n}, {c}) logits", got, expected, rel=1e-6, abs_=1e-9)
    return "matches the fraction of rows where the two argmaxes are equal."


# --- chapter 06 --------------------------------------------------------------------
def _ch06_logits(seed: int, members: int = 4, n: int = 200, c: int = 10) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([0.5, 3.0, 1.0, 6.0, 2.0])  # members of very different confidence
    return [scales[i % len(scales)] * torch.randn(n, c, generator=g, dtype=torch.float64) for i in range(members)]


@register("06.ensemble", hint="softmax each member's logits over the classes, then average the probabilities "
                              "over the members")
def _check_06_ensemble(fn):
    if not callable(fn):
        raise Wrong(f"the answer should be a function ensemble_probs(logits_list), got {type(fn).__name__}.")
    for seed, members in ((0, 4), (1, 3), (2, 1)):
        logits = _ch06_logits(seed, members)
        expected = torch.stack([z.softmax(dim=-1) for z in logits]).mean(dim=0)  # (N, C)
        got = fn([z.clone() for z in logits])
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and not torch.allclose(got, expected):
            if torch.allclose(got.double(), torch.stack(logits).mean(dim=0).softmax(dim=-1), atol=1e-6):
                raise Wrong("you averaged the logits, then took the softmax: that is a different ensemble "
                            "(a normalised geometric mean of the probabilities). Average the probabilities.")
            if torch.allclose(got.double(), torch.stack(logits).mean(dim=0), atol=1e-6):
                raise Wrong("you returned the average of the logits; the ensemble averages probabilities.")
        same_tensor(f"your ensemble_probs of {members} members", got, expected)
    return "averages the members' probabilities, as kdedu.methods.ensemble_logits does."


@register("06.ensemble-acc", hint="average the members' softmax probabilities, take the argmax of each row, "
                                  "compare with the labels and average")
def _check_06_ensemble_acc(fn):
    if not callable(fn):
        raise Wrong(f"the answer should be a function ensemble_accuracy(logits_list, labels), got {type(fn).__name__}.")
    for seed, members in ((3, 4), (4, 2)):
        logits = _ch06_logits(seed, members)
        g = torch.Generator().manual_seed(seed + 100)
        # labels that agree with the probability-averaged ensemble on about 70 % of the rows
        probs = torch.stack([z.softmax(dim=-1) for z in logits]).mean(dim=0)
        labels = torch.where(torch.rand(len(probs), generator=g) < 0.7, probs.argmax(dim=-1),
                             torch.randint(0, probs.shape[-1], (len(probs),), generator=g))
        expected = (probs.argmax(dim=-1) == labels).double().mean().item()
        got = fn([z.clone() for z in logits], labels.clone())
        value = got.item() if isinstance(got, torch.Tensor) and got.numel() == 1 else got
        if isinstance(value, (int, float)):
            by_logits = (torch.stack(logits).mean(dim=0).argmax(dim=-1) == labels).double().mean().item()
            votes = torch.stack([z.argmax(dim=-1) for z in logits])  # (M, N)
            majority = torch.mode(votes, dim=0).values
            by_vote = (majority == labels).double().mean().item()
            if math.isclose(value, by_logits, rel_tol=1e-6) and not math.isclose(by_logits, expected):
                raise Wrong("that is the accuracy of the logit-averaged ensemble; average the probabilities.")
            if math.isclose(value, by_vote, rel_tol=1e-6) and not math.isclose(by_vote, expected):
                raise Wrong("that is the accuracy of a majority vote; average the probabilities instead.")
            if math.isclose(value, 100 * expected, rel_tol=1e-6):
                raise Wrong(f"{value} looks like a percentage; return a fraction between 0 and 1.")
        close(f"your ensemble accuracy ({members} members)", got, expected, rel=1e-6, abs_=1e-9)
    return "matches the accuracy of the probability-averaged ensemble."


# --- chapter 02 --------------------------------------------------------------------
@register("02.class-similarity", hint="row k is probs[labels == k].mean(dim=0); stack the C rows into a (C, C) matrix")
def _check_02_class_similarity(fn):
    if not callable(fn):
        raise Wrong(f"the answer should be a function class_similarity(probs, labels, num_classes), "
                    f"got {type(fn).__name__}.")
    g = torch.Generator().manual_seed(2)
    for n, c in ((50, 4), (200, 10)):
        probs = torch.softmax(3 * torch.randn(n, c, generator=g, dtype=torch.float64), dim=-1)
        labels = torch.randint(0, c, (n,), generator=g)
        expected = torch.zeros(c, c, dtype=torch.float64)  # an explicit loop over the examples
        counts = [0] * c
        for row, k in zip(probs, labels.tolist(), strict=True):
            expected[k] += row
            counts[k] += 1
        for k in range(c):
            expected[k] /= max(counts[k], 1)
        got = fn(probs.clone(), labels.clone(), c)
        if isinstance(got, torch.Tensor) and got.shape == (c, c) and \
                torch.allclose(got.double(), expected.T, atol=1e-6):
            raise Wrong("your matrix is transposed: row k (not column k) should be the average over the "
                        "examples whose true label is k.")
        same_tensor(f"your class_similarity(probs of shape ({n}, {c}), labels, {c})", got, expected)
    return "matches the per-class average of the probabilities: row k is the teacher's average answer for a k."


@register("02.hard-plus-logits", hint="subclass kdedu.train.Distiller; forward returns {'ce': (1 - alpha) * CE, "
                                      "'mse': alpha * mean squared error of the logits}")
def _check_02_hard_plus_logits(cls):
    from torch import nn

    from kdedu.train import Distiller

    if not (isinstance(cls, type) and issubclass(cls, Distiller)):
        raise Wrong(f"the answer should be a class derived from kdedu.train.Distiller, got {cls!r}.")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(12, 6, generator=g)
    y = torch.randint(0, 4, (12,), generator=g)
    for alpha in (0.3, 0.0, 1.0):
        torch.manual_seed(0)
        student, teacher = nn.Linear(6, 4), nn.Linear(6, 4)
        with torch.no_grad():
            teacher.weight.mul_(5.0)  # a teacher whose logits differ clearly from the student's
        method = cls(student, teacher, alpha=alpha)
        terms = method(x, y)
        if not isinstance(terms, dict) or not terms:
            raise Wrong(f"forward(x, y) should return a dict of named loss terms, got {type(terms).__name__}.")
        total = sum(terms.values())
        # expected, written out by hand
        z_s, z_t = student(x), teacher(x).detach()
        ce = -torch.log_softmax(z_s, dim=-1)[torch.arange(12), y].mean()
        mse = ((z_s - z_t) ** 2).sum() / z_s.numel()
        expected = (1 - alpha) * ce + alpha * mse
        if not isinstance(total, torch.Tensor) or total.numel() != 1:
            raise Wrong("the loss terms should be scalar tensors.")
        swapped = (alpha * ce + (1 - alpha) * mse).item()
        if alpha not in (0.0, 1.0) and math.isclose(total.item(), swapped, rel_tol=1e-4):
            raise Wrong(f"at alpha={alpha} the weights are swapped: alpha multiplies the logit term, "
                        "1 - alpha the labels.")
        close(f"the sum of your loss terms at alpha={alpha}", total.detach(), expected.item(), rel=1e-4)
        if any(p.requires_grad for p in teacher.parameters()):
            raise Wrong("the teacher's parameters still require gradients: call super().__init__(student, teacher), "
                        "which freezes the teacher.")
        if not total.requires_grad:
            raise Wrong(f"at alpha={alpha} your loss terms have no gradient (detached, or computed with .item()?).")
        (grad,) = torch.autograd.grad(total, student.weight)
        (expected_grad,) = torch.autograd.grad(expected, student.weight)
        if not torch.allclose(grad, expected_grad, rtol=1e-4, atol=1e-6):
            raise Wrong(f"at alpha={alpha} the value is right but the gradient is not (is a term detached?).")
    return ("the loss terms sum to (1 - alpha) CE + alpha MSE(logits), with the right gradients, "
            "and the teacher is frozen.")


# --- chapter 08 --------------------------------------------------------------------
def _ch08_number(name: str, value) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Wrong(f"{name} should be a number, got {type(value).__name__}.")
    return float(value)


@register("08.phi", hint="phi(T) = 1 - (T - 1) / tau_max: 1 at T = 1, 1 / tau_max at T = tau_max")
def _check_08_phi(fn):
    if not callable(fn):
        raise Wrong(f"the answer should be a function my_phi(T, tau_max), got {type(fn).__name__}.")
    for tau_max in (1, 4, 10, 14):
        for T in range(1, tau_max + 1):
            expected = (tau_max - T + 1) / tau_max  # the same formula, rearranged
            got = _ch08_number(f"your my_phi({T}, {tau_max})", fn(T, tau_max))
            if not math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-12):
                if math.isclose(got, 1 - T / tau_max, abs_tol=1e-12):
                    raise Wrong(f"my_phi({T}, {tau_max}) = {got:.4g}: that is 1 - T / tau_max, which gives 0 "
                                "at T = tau_max and never reaches 1.", "subtract 1 from T before dividing")
                if math.isclose(got, T / tau_max, abs_tol=1e-12):
                    raise Wrong(f"my_phi({T}, {tau_max}) = {got:.4g}: phi must fall as T grows "
                                "(T = tau_max is the most damped teacher).")
                close(f"your my_phi({T}, {tau_max})", got, expected, rel=1e-9, abs_=1e-12)
    return "phi(T) = 1 - (T - 1) / tau_max: from 1 / tau_max at T = tau_max up to 1 at T = 1."


@register("08.schedule", hint="start at tau_max and hold each temperature for k consecutive epochs, down to 1")
def _check_08_schedule(fn):
    if not callable(fn):
        raise Wrong(f"the answer should be a function temperatures(tau_max, k), got {type(fn).__name__}.")
    for tau_max, k in ((10, 1), (4, 3), (7, 2), (1, 5)):
        expected = [tau_max - epoch // k for epoch in range(k * tau_max)]
        got = fn(tau_max, k)
        try:
            got = [int(v) for v in (got.tolist() if isinstance(got, torch.Tensor) else got)]
        except (TypeError, ValueError):
            raise Wrong(f"temperatures({tau_max}, {k}) should return a list of integers, "
                        f"got {type(got).__name__}.") from None
        if got == expected:
            continue
        if len(got) != len(expected):
            raise Wrong(f"temperatures({tau_max}, {k}) has {len(got)} epochs; stage I lasts k * tau_max = "
                        f"{len(expected)}.")
        if got == expected[::-1]:
            raise Wrong(f"temperatures({tau_max}, {k}) runs upwards; stage I starts at T = tau_max "
                        "(the most damped teacher) and ends at T = 1.")
        if sorted(got) == sorted(expected):
            raise Wrong(f"temperatures({tau_max}, {k}) = {got}: the right values in the wrong order; "
                        "each temperature is held for k consecutive epochs.")
        raise Wrong(f"temperatures({tau_max}, {k}) = {got}, expected {len(expected)} epochs from {tau_max} down to 1.")
    return "T = tau_max, ..., 1, each for k epochs: k * tau_max epochs of stage I."


@register("08.gradient", hint="differentiate mean((z_s - phi z_t)^2) over all N*C elements: 2 (z_s - phi z_t) / (N C)")
def _check_08_gradient(fn):
    if not callable(fn):
        raise Wrong(f"the answer should be a function annealing_grad(z_s, z_t, phi), got {type(fn).__name__}.")
    g = torch.Generator().manual_seed(8)
    for shape, phi in (((6, 10), 0.1), ((3, 5), 0.55), ((4, 7), 1.0)):
        z_s = torch.randn(*shape, generator=g, dtype=torch.float64)
        z_t = 4 * torch.randn(*shape, generator=g, dtype=torch.float64)
        leaf = z_s.clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(((leaf - phi * z_t) ** 2).mean(), leaf)  # autograd, from the definition
        got = fn(z_s.clone(), z_t.clone(), phi)
        if isinstance(got, torch.Tensor) and got.shape == expected.shape:
            got64, n = got.detach().double(), z_s.numel()
            if torch.allclose(got64, -expected):
                raise Wrong("the sign is flipped: the gradient points from the target phi * z_t towards z_s.")
            if torch.allclose(got64, expected * n):
                raise Wrong("that is the gradient of the deck's squared norm (a sum); kdedu's loss is the mean over "
                            "all N * C elements, so divide by z_s.numel().")
            if torch.allclose(got64, expected / 2):
                raise Wrong("the factor 2 of the square's derivative is missing.")
            if torch.allclose(got64, expected * shape[-1]) or torch.allclose(got64, expected * shape[0]):
                raise Wrong("the normalisation is off: the mean is over all N * C elements, not over one dimension.")
        same_tensor(f"your annealing_grad on logits of shape {shape}, phi = {phi}", got, expected, atol=1e-9)
    return "d/dz_s mean((z_s - phi z_t)^2) = 2 (z_s - phi z_t) / (N C): it vanishes at z_s = phi z_t."


@register("08.effective-T", hint="softmax(phi z) = softmax(z / (1 / phi)): find the T whose phi(T) is 1/2")
def _check_08_effective_T(answer):
    tau_max, target = 10, 2.0
    expected = next(T for T in range(1, tau_max + 1) if math.isclose(1 / (1 - (T - 1) / tau_max), target))
    got = _ch08_number("your step T", answer)
    if math.isclose(got, target) and expected != target:
        raise Wrong("T = 2 is the schedule's step, not a softmax temperature: at T = 2, phi = 0.9, which is a "
                    "softmax temperature of 1 / 0.9.")
    if math.isclose(got, 1 / target):
        raise Wrong("0.5 is the factor phi you need; the question asks for the step T of the schedule that gives it.")
    close("your step T", got, expected, rel=0, abs_=1e-9)
    return f"phi({expected}) = 1/2, so the annealed teacher at T = {expected} is the teacher at softmax temperature 2."


# --- chapter 07 --------------------------------------------------------------------
@register("07.assistant-size", hint="the middle on a log scale is the geometric mean sqrt(p_teacher * p_student); "
                                    "pick the candidate with the smallest |log(p / middle)|")
def _check_07_assistant_size(fn):
    if not callable(fn):
        raise Wrong(f"the answer should be a function pick_assistant(p_teacher, p_student, candidates), "
                    f"got {type(fn).__name__}.")
    g = torch.Generator().manual_seed(7)
    cases = [(307210, 1210, [4810, 19210, 76810]),  # the chapter's MLP ladder
             (1_000_000, 100, [5_500, 15_000]),      # the log scale and the linear scale disagree here
             (1_700_000, 78_000, [270_000, 850_000, 120_000])]
    for _ in range(5):
        p_s = int(torch.randint(100, 10_000, (1,), generator=g))
        p_t = p_s * int(torch.randint(20, 2_000, (1,), generator=g))
        cands = sorted({int(p_s * (p_t / p_s) ** float(u)) for u in torch.rand(4, generator=g)})
        cases.append((p_t, p_s, cands))
    for p_t, p_s, cands in cases:
        log_mid = (math.log(p_t) + math.log(p_s)) / 2
        expected = min(cands, key=lambda p: abs(math.log(p) - log_mid))
        got = fn(p_t, p_s, list(cands))
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if not isinstance(got, (int, float)):
            raise Wrong(f"pick_assistant should return one of the candidates (a number), got {type(got).__name__}.")
        if math.isclose(got, expected, rel_tol=1e-9):
            continue
        by_linear = min(cands, key=lambda p: abs(p - math.exp(log_mid)))
        by_arithmetic = min(cands, key=lambda p: abs(math.log(p) - math.log((p_t + p_s) / 2)))
        if math.isclose(got, by_linear, rel_tol=1e-9):
            raise Wrong(f"for p_teacher={p_t}, p_student={p_s}, candidates={cands} you picked {got}: closest to the "
                        "geometric mean on a linear scale. Measure the distance on a log scale (by the ratio).")
        if math.isclose(got, by_arithmetic, rel_tol=1e-9):
            raise Wrong(f"for p_teacher={p_t}, p_student={p_s}, candidates={cands} you picked {got}, near the "
                        "arithmetic mean (p_teacher + p_student) / 2; use the geometric mean.")
        if not any(math.isclose(got, c, rel_tol=1e-9) for c in cands):
            raise Wrong(f"for candidates={cands} you returned {got}, which is not one of the candidates.")
        raise Wrong(f"for p_teacher={p_t}, p_student={p_s}, candidates={cands} you picked {got}, expected {expected}.")
    return "picks the candidate closest to sqrt(p_teacher * p_student) on a log scale."


def _ch07_predictions(seed: int, n: int = 300, c: int = 10):
    """Labels and two correlated predictions: the lower network copies many of the upper network's answers."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=g)

    def noisy(p):  # the labels, with a fraction p replaced by a random class
        return torch.where(torch.rand(n, generator=g) < p, torch.randint(0, c, (n,), generator=g), labels)

    upper = noisy(0.3)
    lower = torch.where(torch.rand(n, generator=g) < 0.5, upper, noisy(0.3))
    return upper, lower, labels


@register("07.inherited-share", hint="divide the number of the lower network's errors that equal the upper "
                                     "network's prediction by the number of the lower network's errors")
def _check_07_inherited_share(fn):
    if not callable(fn):
        raise Wrong(f"the answer should be a function inherited_share(upper_pred, lower_pred, labels), "
                    f"got {type(fn).__name__}.")
    for seed in range(4):
        upper, lower, labels = _ch07_predictions(seed)
        lower_wrong = copied = both_wrong = upper_wrong = 0  # an explicit loop over the examples
        for u, s, y in zip(upper.tolist(), lower.tolist(), labels.tolist(), strict=True):
            lower_wrong += s != y
            upper_wrong += u != y
            copied += s != y and s == u
            both_wrong += s != y and u != y
        expected = copied / max(lower_wrong, 1)
        got = fn(upper.clone(), lower.clone(), labels.clone())
        value = got.item() if isinstance(got, torch.Tensor) and got.numel() == 1 else got
        if isinstance(value, (int, float)) and not math.isclose(value, expected, rel_tol=1e-6, abs_tol=1e-9):
            if math.isclose(value, copied / max(upper_wrong, 1), rel_tol=1e-6):
                raise Wrong("you divided by the upper network's errors: that is the share of the upper network's "
                            "errors that reach the lower one (the chapter's error table). Divide by the lower "
                            "network's errors.")
            if math.isclose(value, both_wrong / max(lower_wrong, 1), rel_tol=1e-6):
                raise Wrong("you counted every error of the lower network where the upper one is also wrong; an "
                            "inherited error must be the *same* wrong class as the upper network's.")
            if math.isclose(value, 100 * expected, rel_tol=1e-6):
                raise Wrong(f"{value} looks like a percentage; return a fraction between 0 and 1.")
        close(f"your inherited_share (example {seed + 1})", got, expected, rel=1e-6, abs_=1e-9)
    labels = torch.arange(10)
    got = fn(labels.flip(0), labels.clone(), labels.clone())  # the lower network makes no error
    close("your inherited_share when the lower network makes no error", got, 0.0, rel=0, abs_=1e-9)
    return "the share of the lower network's errors that copy the upper network's errors."


@register("07.chain-epochs", hint="count the networks of the chain: the teacher, the assistants and the student "
                                  "each train once for `epochs` epochs")
def _check_07_chain_epochs(fn):
    if not callable(fn):
        raise Wrong(f"the answer should be a function chain_epochs(num_assistants, epochs), got {type(fn).__name__}.")
    for m, e in ((1, 200), (0, 30), (2, 150), (3, 7)):
        networks = ["teacher"] + [f"assistant {i + 1}" for i in range(m)] + ["student"]
        expected = sum(e for _ in networks)
        got = fn(m, e)
        value = got.item() if isinstance(got, torch.Tensor) and got.numel() == 1 else got
        if isinstance(value, (int, float)) and not math.isclose(value, expected):
            if math.isclose(value, expected - e):
                raise Wrong(f"chain_epochs({m}, {e}) = {value}: one network is missing (the teacher trains too).")
            if math.isclose(value, expected - 2 * e):
                raise Wrong(f"chain_epochs({m}, {e}) = {value}: the teacher and the student train too.")
        close(f"chain_epochs({m}, {e})", got, expected, rel=1e-9, abs_=1e-9)
    return "(num_assistants + 2) * epochs: the teacher, every assistant and the student each train once."


# --- chapter 19 --------------------------------------------------------------------
def _ch19_per_logit(measure, n: int = 32, v: int = 1024) -> float:
    """Bytes per logit that ``measure(s, t)`` reports for bf16 logits of shape (n, v)."""
    g = torch.Generator().manual_seed(19)
    s = torch.randn(n, v, generator=g).to(torch.bfloat16).requires_grad_(True)
    t = torch.randn(n, v, generator=g).to(torch.bfloat16)
    return measure(s, t) / (n * v)


@register("19.fused-bytes", hint="forward: read the student's and the teacher's logits once, write the student's "
                                 "gradient once; backward: read that gradient and write it scaled; bf16 is 2 bytes")
def _check_19_fused_bytes(answer):
    from kdedu.kernels import bench, fused_kd_loss

    def fused_traffic(s, t):  # the fused loss's operators, counted by the dispatcher, [N, V]-sized ones only
        ops = bench.traffic(lambda a, b: fused_kd_loss(a, b, 2.0), s, t)
        return sum(op.bytes for op in ops if op.largest >= s.numel())

    expected = round(_ch19_per_logit(fused_traffic))  # the per-row loss and scale vectors add ~4/V bytes
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        if math.isclose(answer, expected * 3 / 5, rel_tol=0.05):
            raise Wrong(f"{answer} bytes is the forward pass only: the backward pass reads the stored gradient "
                        "and writes it scaled by the incoming gradient.")
        if math.isclose(answer, 2 * expected, rel_tol=0.05):
            raise Wrong(f"{answer} bytes would be float32 logits (4 bytes); these are bf16 (2 bytes).")
    close("your bytes per logit", answer, expected, rel=0.05)
    return (f"{expected} bytes per logit: 3 accesses in the forward pass and 2 in the backward, 2 bytes each "
            "(if the second sweep over a row is served by the cache).")


@register("19.eager-memory", hint="the eager loss keeps the two log_softmax outputs (one per model) for its backward "
                                  "pass, each N x V in the logits' dtype; 1 GiB = 2**30 bytes")
def _check_19_eager_memory(answer):
    from kdedu.kernels import bench

    per_logit = _ch19_per_logit(lambda s, t: bench.held_bytes(lambda a, b: bench.eager_kd_loss(a, b, 2.0), s, t))
    n, v = 8192, 128256
    expected = per_logit * n * v / 2**30  # measured on small logits; the saved tensors grow like N x V
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        if math.isclose(answer, expected * 2**30 / 1e9, rel_tol=0.02):
            raise Wrong(f"{answer} is in GB (10^9 bytes); the exercise asks for GiB (2^30 bytes).")
        if math.isclose(answer, 2 * expected, rel_tol=0.02):
            raise Wrong(f"{answer} GiB would be float32 copies; with bf16 logits the saved tensors are bf16.")
        if math.isclose(answer, expected / 2, rel_tol=0.02):
            raise Wrong(f"{answer} GiB is one copy; autograd saves the log-probabilities of both models.")
    close("your memory in GiB", answer, expected, rel=0.02)
    return (f"{expected:.2f} GiB: two bf16 copies of the [8192, 128256] logits, kept from the forward to the "
            "backward pass (the fused kernel keeps one: its gradient).")


@register("19.online-logsumexp", hint="keep a running max m and sum d = sum exp(x - m) per row; for each block, "
                                      "m_new = max(m, block max), d = d * exp(m - m_new) + sum exp(x - m_new), and "
                                      "shift by 0 instead of m_new while m_new is still -inf")
def _check_19_online_logsumexp(fn):
    if not callable(fn):
        raise Wrong(f"the answer should be a function online_logsumexp(x, block_size), got {type(fn).__name__}.")
    g = torch.Generator().manual_seed(19)
    x = 3 * torch.randn(5, 37, generator=g, dtype=torch.float64)
    for block in (8, 5, 37, 64):  # blocks that do and do not divide the row, one block, larger than the row
        same_tensor(f"your online_logsumexp(x of shape (5, 37), block_size={block})", fn(x.clone(), block),
                    torch.logsumexp(x, dim=-1), atol=1e-9, rtol=1e-9)
    big = 1e4 * torch.randn(3, 20, generator=g, dtype=torch.float64)
    got = fn(big.clone(), 6)
    if isinstance(got, torch.Tensor) and not torch.isfinite(got).all():
        raise Wrong("your function returns inf/nan for logits of size 1e4: exp overflows.",
                    "subtract the running maximum before torch.exp, and rescale the sum when the maximum grows")
    same_tensor("your online_logsumexp on logits of size 1e4", got, torch.logsumexp(big, dim=-1), atol=1e-6, rtol=1e-9)
    padded = 3 * torch.randn(4, 30, generator=g, dtype=torch.float64)
    padded[:, :12] = float("-inf")  # the first blocks hold only -inf (a masked prefix)
    padded[:, 25:] = float("-inf")  # and so does the tail (a vocabulary padded with -inf)
    got = fn(padded.clone(), 6)
    if isinstance(got, torch.Tensor) and torch.isnan(got).any():
        raise Wrong("your function returns nan when a whole block is -inf: exp(-inf - (-inf)) is nan.",
                    "while the running maximum is -inf, rescale by 0 (or shift by 0 instead of by the maximum)")
    same_tensor("your online_logsumexp on rows that start and end with -inf blocks", got,
                torch.logsumexp(padded, dim=-1), atol=1e-9, rtol=1e-9)
    return "matches torch.logsumexp for every block size, for logits of size 1e4, and across blocks of -inf."
