"""Auto-checks for the new exercises of problem set 6, Part VI, teachers that learn, many teachers (chapters 17-18)
(book/assignments/ps6-*.md).

The problem set's other exercises are the chapters' own (kdedu/check/chNN.py)."""

from __future__ import annotations

import math

import torch

from kdedu.check import Wrong, answer_number, close, function, register

# (seed, n teachers, N rows, C classes, T)
_MULTI_CASES = ((0, 3, 6, 5, 2.0), (1, 2, 4, 3, 1.0), (2, 4, 5, 7, 4.0), (3, 1, 3, 4, 2.0))


def _teachers_and_student(seed: int, n: int, N: int, C: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``n`` teachers' logits ``(N, C)`` of very different confidence, and a student's."""
    g = torch.Generator().manual_seed(600 + seed)
    scales = (1.0, 5.0, 0.5, 3.0)
    teachers = [scales[i % 4] * torch.randn(N, C, generator=g, dtype=torch.float64) for i in range(n)]
    return teachers, 2 * torch.randn(N, C, generator=g, dtype=torch.float64)


def _kl_mean(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` of each row, averaged over the rows (float64, written out)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


@register("ps6.multi-teacher-kd", hint="the target is one distribution per row, made from the teachers' softened "
                                       "distributions at T: which kind of average is the mixture? Once you have it, "
                                       "the loss is the KD loss of a single teacher, T^2 included, averaged over "
                                       "the rows.")
def _check_ps6_multi_teacher_kd(fn):
    function("multi_teacher_kd(student_logits, teacher_logits, T)", fn)
    for seed, n, N, C, T in _MULTI_CASES:
        teachers, s = _teachers_and_student(seed, n, N, C)
        log_ps = torch.log_softmax(s / T, -1)
        log_pt = [torch.log_softmax(z / T, -1) for z in teachers]
        p_bar = torch.stack([lp.exp() for lp in log_pt]).mean(0)        # the mixture (N, C)
        expected = (T * T * _kl_mean(p_bar.log(), log_ps)).item()
        got = fn(s.clone(), [z.clone() for z in teachers], T)
        where = f"with {n} teacher{'s' if n > 1 else ''}, T = {T:g}"
        if isinstance(got, torch.Tensor) and got.numel() != 1:
            raise Wrong(f"{where}, multi_teacher_kd returned a tensor of shape {tuple(got.shape)}; it should return "
                        "one number, the loss averaged over the rows.")
        value = answer_number("multi_teacher_kd's result", got)
        if math.isclose(value, expected, rel_tol=1e-6, abs_tol=1e-9):
            continue
        if n > 1:
            z_bar = torch.stack(teachers).mean(0)
            mix_at_one = torch.stack([z.softmax(-1) for z in teachers]).mean(0)
            slips = (
                (T * T * _kl_mean(torch.log_softmax(z_bar / T, -1), log_ps), "you averaged the teachers' logits: "
                 "that is their normalised geometric mean (a product of experts). The exercise asks for the "
                 "mixture, the average of the teachers' probabilities."),
                (T * T * torch.stack([_kl_mean(lp, log_ps) for lp in log_pt]).mean(), "you averaged the KD losses "
                 "of the single teachers; the loss of the mixture is smaller (KL is convex): average the "
                 "distributions first, then take one KL."),
                (T * T * _kl_mean(torch.log_softmax(mix_at_one.log() / T, -1), log_ps),
                 "you averaged the teachers' probabilities at T = 1 and softened the mixture afterwards; soften each "
                 "teacher at T first, then average."),
                (T * T * _kl_mean(mix_at_one.log(), log_ps), "you averaged the teachers' probabilities at T = 1; "
                 "soften each teacher at T first, then average."),
            )
            for wrong, message in slips:
                if math.isclose(value, float(wrong), rel_tol=1e-6, abs_tol=1e-9):
                    raise Wrong(f"{where}: {message}")
        if math.isclose(value, expected / (T * T), rel_tol=1e-6) and T != 1:
            raise Wrong(f"{where}: the loss lacks the factor T^2 (a KD loss in kdedu always includes it).")
        reverse = T * T * _kl_mean(log_ps, p_bar.log())
        if math.isclose(value, float(reverse), rel_tol=1e-6, abs_tol=1e-9):
            raise Wrong(f"{where}: you computed KL(p_s || p_bar); the KD loss is KL(p_bar || p_s), the teachers' "
                        "distribution first.")
        if math.isclose(value, N * expected, rel_tol=1e-6):
            raise Wrong(f"{where}: you summed over the {N} rows; average over them.")
        close(f"multi_teacher_kd {where}", value, expected, rel=1e-6, abs_=1e-9)
    return ("the KD loss to the teachers' mixture, the target of average_teachers(..., 'probs', T) in kdedu.methods. "
            "With one teacher it is the plain KD loss.")


# ------------------------------------------------------------------------------------------------
# ps6.meta-gradient: MetaDistil's pilot update on a linear student, with the teacher's logits as its parameters.
# The reference is the closed form, not autograd: with p = softmax(z / T), the KD gradient of a linear student
# x @ W is x^T T (p_s - p_t) / N, so the pilot W' depends on z_t only through + lam T x^T p_t / N, and the quiz
# gradient G = qx^T (softmax(qx @ W') - onehot(qy)) / M at W' gives d quiz / d z_t = (lam / N) p_t * (V - <p_t, V>)
# with V = x @ G (one row per example of the batch).
# ------------------------------------------------------------------------------------------------
_META_CASES = ((0, 8, 5, 4, 6, 0.5, 2.0), (1, 6, 3, 3, 10, 1.0, 1.0), (2, 10, 4, 6, 5, 0.1, 4.0))
"""(seed, N batch rows, D features, C classes, M quiz rows, lam, T)"""


def _meta_problem(seed: int, N: int, D: int, C: int, M: int):
    g = torch.Generator().manual_seed(650 + seed)
    W = torch.randn(D, C, generator=g, dtype=torch.float64)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    z_t = 3 * torch.randn(N, C, generator=g, dtype=torch.float64)
    qx = torch.randn(M, D, generator=g, dtype=torch.float64)
    qy = torch.randint(C, (M,), generator=g)
    return W, x, z_t, qx, qy


def meta_gradient_closed_form(W, x, z_t, qx, qy, lam: float, T: float, kd_scale: float | None = None,
                              pilot_sign: float = 1.0, at_pilot: bool = True) -> torch.Tensor:
    """d CE(qx @ W', qy) / d z_t for W' = W - lam grad_W [kd_scale KL(p_t(T) || p_s(T))] (batch mean; kd_scale
    is T^2 unless given), ``pilot_sign=-1`` for a step up the gradient, ``at_pilot=False`` for the quiz gradient
    taken at W instead of W' (the slips the checker names)."""
    N, M, C = x.shape[0], qx.shape[0], W.shape[1]
    scale = T * T if kd_scale is None else kd_scale
    p_t, p_s = torch.softmax(z_t / T, -1), torch.softmax(x @ W / T, -1)
    step = pilot_sign * lam * (scale / T) / N                       # W' = W - step x^T (p_s - p_t)
    W1 = W - step * x.T @ (p_s - p_t)
    G = qx.T @ (torch.softmax(qx @ (W1 if at_pilot else W), -1) - torch.nn.functional.one_hot(qy, C).double()) / M
    V = x @ G                                                       # (N, C)
    return step / T * p_t * (V - (p_t * V).sum(-1, keepdim=True))


def _gradient_of_z_t(name: str, got, expected: torch.Tensor, where: str) -> torch.Tensor:
    """The answer as a float64 tensor of z_t's shape, or :class:`Wrong` naming ``name``."""
    if not isinstance(got, torch.Tensor):
        raise Wrong(f"{name} should return a tensor of z_t's shape {tuple(expected.shape)}, got {type(got).__name__}.")
    if got.shape != expected.shape:
        raise Wrong(f"{where}, {name} returned shape {tuple(got.shape)}; the gradient with respect to z_t has z_t's "
                    f"shape {tuple(expected.shape)}.")
    return got.detach().double()


def _wrong_gradient(got: torch.Tensor, expected: torch.Tensor, slips, where: str) -> None:
    """Raise :class:`Wrong` for a gradient that is not ``expected``: the message of the first ``(value, message)``
    slip it matches, else how far off it is."""
    for wrong, message in slips:
        if torch.allclose(got, wrong, atol=1e-10, rtol=1e-6):
            raise Wrong(f"{where}: {message}")
    err = (got - expected).abs().max().item()
    raise Wrong(f"{where}, your gradient is off by up to {err:.3g} (its entries are up to "
                f"{expected.abs().max().item():.3g}).")


@register("ps6.meta-gradient", hint="build the pilot W' as a function of z_t (keep the graph of the KD gradient: "
                                    "create_graph=True), score W' on the quiz batch, and differentiate that score "
                                    "with respect to z_t. A gradient of zero means the graph was cut somewhere.")
def _check_ps6_meta_gradient(fn):
    function("meta_gradient(W, x, z_t, qx, qy, lam, T)", fn)
    for seed, N, D, C, M, lam, T in _META_CASES:
        W, x, z_t, qx, qy = _meta_problem(seed, N, D, C, M)
        expected = meta_gradient_closed_form(W, x, z_t, qx, qy, lam, T)
        got = fn(W.clone(), x.clone(), z_t.clone(), qx.clone(), qy.clone(), lam, T)
        where = f"with N = {N}, C = {C}, lam = {lam:g}, T = {T:g}"
        got = _gradient_of_z_t("meta_gradient", got, expected, where)
        if torch.allclose(got, expected, atol=1e-10, rtol=1e-6):
            continue
        if torch.allclose(got, torch.zeros_like(got), atol=1e-12):
            raise Wrong(f"{where}: your gradient is zero. The quiz loss reaches the teacher only through the "
                        "pilot's KD gradient, so that gradient must keep its graph (create_graph=True), and z_t "
                        "must not be detached.")
        slips = (
            (meta_gradient_closed_form(W, x, z_t, qx, qy, lam, T, at_pilot=False), "you took the quiz loss's "
             "gradient at the current student W; the quiz loss is scored at the pilot W'."),
            (meta_gradient_closed_form(W, x, z_t, qx, qy, lam, T, pilot_sign=-1.0), "your pilot steps up the KD "
             "gradient; the pilot is a descent step, W' = W - lam * grad."),
            (meta_gradient_closed_form(W, x, z_t, qx, qy, lam, T, kd_scale=1.0), "your pilot's KD loss lacks the "
             "factor T^2 (a KD loss in kdedu always includes it)."),
            (M * expected, "you summed the quiz loss over its rows; it is their mean (cross_entropy's default)."),
            (meta_gradient_closed_form(W, x, z_t, qx, qy, lam, T, kd_scale=N * T * T), "your pilot's KD loss sums "
             "over the batch rows; it is their mean (batchmean)."),
        )
        _wrong_gradient(got, expected, slips, where)
    return ("MetaDistil's meta-gradient: the teacher learns how its soft targets move the student's next step, "
            "through a second-order gradient. Each row of the result sums to 0: adding a constant to a row of "
            "logits changes no soft target.")


@register("ps6.alignment", hint="g_KD must keep its graph to z_t (create_graph=True); g_quiz does not depend on z_t at "
                                "all. Their dot product is one number: sum the products over every weight, then "
                                "differentiate it with respect to z_t.")
def _check_ps6_alignment(fn):
    function("alignment_gradient(W, x, z_t, qx, qy, T)", fn)
    for seed, N, D, C, M, _, T in _META_CASES:
        problem = _meta_problem(seed, N, D, C, M)
        W, x, z_t, qx, qy = problem
        # d quiz / d z_t to first order in lam is -lam * grad (g_KD . g_quiz): minus the slip at_pilot=False, lam = 1
        expected = -meta_gradient_closed_form(*problem, 1.0, T, at_pilot=False)
        got = fn(W.clone(), x.clone(), z_t.clone(), qx.clone(), qy.clone(), T)
        where = f"with N = {N}, C = {C}, T = {T:g}"
        got = _gradient_of_z_t("alignment_gradient", got, expected, where)
        if torch.allclose(got, expected, atol=1e-10, rtol=1e-6):
            continue
        if torch.allclose(got, torch.zeros_like(got), atol=1e-12):
            raise Wrong(f"{where}: your gradient is zero: g_KD lost its graph to z_t (create_graph=True), or z_t was "
                        "detached.")
        slips = (
            (-expected, "your gradient has the wrong sign: the exercise asks for the gradient of g_KD . g_quiz "
             "itself, not of the first-order change of the quiz loss, -lam g_KD . g_quiz."),
            (-meta_gradient_closed_form(*problem, 1.0, T, at_pilot=False, kd_scale=1.0),
             "your KD loss lacks the factor T^2 (a KD loss in kdedu always includes it)."),
            (-meta_gradient_closed_form(*problem, 1.0, T, at_pilot=False, kd_scale=N * T * T),
             "your KD loss sums over the batch rows; it is their mean (batchmean)."),
            (M * expected, "your quiz loss sums over its rows; it is their mean (cross_entropy's default)."),
        )
        _wrong_gradient(got, expected, slips, where)
    return ("the first-order meta-gradient: for a small pilot step, meta_gradient / lam tends to minus this, so the "
            "teacher moves its soft targets to make the KD gradient point where the quiz loss goes down.")
