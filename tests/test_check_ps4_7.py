"""The checkers of the new exercises of problem sets 4-7 (kdedu/check/ps4.py ... ps7.py).

For every checker: the reference solution passes, plausible wrong answers fail with the intended message, and
answers of the wrong kind fail cleanly. ``None`` as "not answered yet" and the hints are checked for every
exercise in tests/test_check.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdedu import check
from kdedu.losses import kd_loss
from kdedu.methods.minimax_knn import most_divergent


def _verdict(exercise_id, answer):
    return check.exercise(exercise_id, answer, verbose=False)


def _fails_with(exercise_id, answer, needle):
    result = _verdict(exercise_id, answer)
    assert not result, result.message
    assert needle in result.message, result.message


# ------------------------------------------------------------------------------------------
# ps4: select_neighbours(teacher_logits, student_logits, k1, T), Minimax-kNN's maximisation step
# ------------------------------------------------------------------------------------------
def _kl_rows(t, s, T):  # T^2 KL(p_t || p_s) per (original, neighbour), written out
    log_pt, log_ps = F.log_softmax(t / T, -1), F.log_softmax(s / T, -1)
    return T * T * (log_pt.exp() * (log_pt - log_ps)).sum(-1)


def select_neighbours(teacher_logits, student_logits, k1, T):
    return _kl_rows(teacher_logits, student_logits, T).topk(k1, dim=1).indices


def select_loop(teacher_logits, student_logits, k1, T):  # one original at a time, with Python sorting
    rows = []
    for t, s in zip(teacher_logits, student_logits, strict=True):
        d = _kl_rows(t, s, T).tolist()
        rows.append(sorted(range(len(d)), key=lambda j: -d[j])[:k1])
    return torch.tensor(rows)


@pytest.mark.parametrize("answer", [select_neighbours, select_loop, most_divergent])
def test_ps4_minimax_select_correct(answer):
    result = _verdict("ps4.minimax-select", answer)
    assert result, result.message


@pytest.mark.parametrize("answer, needle", [
    (lambda t, s, k1, T: _kl_rows(t, s, T).topk(k1, dim=1, largest=False).indices, "smallest divergences"),
    (lambda t, s, k1, T: _kl_rows(s, t, T).topk(k1, dim=1).indices, "KL(p_s || p_t)"),
    (lambda t, s, k1, T: _kl_rows(t, s, 1.0).topk(k1, dim=1).indices, "at T = 1"),
    (lambda t, s, k1, T: (t.softmax(-1) - s.softmax(-1)).abs().sum(-1).topk(k1, dim=1).indices, "another distance"),
    (lambda t, s, k1, T: _kl_rows(t, s, T).topk(k1, dim=1).indices.flip(1), "decreasing order"),
    (lambda t, s, k1, T: _kl_rows(t, s, T).topk(k1, dim=1).values, "integers"),
    (lambda t, s, k1, T: _kl_rows(t, s, T).topk(k1, dim=0).indices, "shape"),
    (lambda t, s, k1, T: _kl_rows(t, s, T).topk(k1, dim=1).indices.tolist(), "tensor of neighbour indices"),
    (lambda t, s, k1, T: torch.zeros(t.shape[0], k1, dtype=torch.long), "other neighbours"),
    (lambda t, s, k1, T: t[:, :k1], "shape"),
    ("not a function", "function"),
])
def test_ps4_minimax_select_wrong(answer, needle):
    _fails_with("ps4.minimax-select", answer, needle)


# ------------------------------------------------------------------------------------------
# ps5: word_kd(student_logits, teacher_logits, lengths, T), word-level KD over a padded batch
# ------------------------------------------------------------------------------------------
def _real(s, lengths):
    return torch.arange(s.shape[1])[None, :] < lengths[:, None]


def word_kd(student_logits, teacher_logits, lengths, T):
    real = _real(student_logits, lengths)
    s, t = student_logits[real] / T, teacher_logits[real] / T           # (n_real, V)
    log_pt = F.log_softmax(t, -1)
    return T * T * (log_pt.exp() * (log_pt - F.log_softmax(s, -1))).sum(-1).mean()


def word_kd_library(student_logits, teacher_logits, lengths, T):
    return kd_loss(student_logits, teacher_logits, T, mask=_real(student_logits, lengths))


def word_kd_where(student_logits, teacher_logits, lengths, T):  # keeps the shape, zeroes the padding first
    real = _real(student_logits, lengths)[..., None]
    s = torch.where(real, student_logits, 0.0) / T
    t = torch.where(real, teacher_logits, 0.0) / T
    per_token = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="none").sum(-1)
    return T * T * (per_token * real[..., 0]).sum() / real.sum()


def _per_token(s, t, T):
    log_pt = F.log_softmax(t / T, -1)
    return T * T * (log_pt.exp() * (log_pt - F.log_softmax(s / T, -1))).sum(-1)     # (B, L)


def word_kd_times_mask(s, t, lengths, T):  # 0 * nan = nan on the -inf/nan padding
    real = _real(s, lengths)
    return (_per_token(s, t, T) * real).sum() / real.sum()


@pytest.mark.parametrize("answer", [word_kd, word_kd_library, word_kd_where])
def test_ps5_word_kd_correct(answer):
    result = _verdict("ps5.word-kd", answer)
    assert result, result.message


@pytest.mark.parametrize("answer, needle", [
    (lambda s, t, n, T: _per_token(s, t, T).mean(), "padding included"),
    (lambda s, t, n, T: (_per_token(s, t, T) * _real(s, n)).sum() / s[..., 0].numel(), "B x L"),
    (lambda s, t, n, T: ((_per_token(s, t, T) * _real(s, n)).sum(1) / n).mean(), "each sentence"),
    (lambda s, t, n, T: (_per_token(s, t, T) * _real(s, n)).sum(1).mean(), "summed the tokens"),
    (lambda s, t, n, T: word_kd(s, t, n, T) / (T * T), "T^2"),
    (lambda s, t, n, T: word_kd(t, s, n, T), "KL(p_s || p_t)"),
    (lambda s, t, n, T: kd_loss(s, t, T, mask=torch.arange(s.shape[1])[None, :] <= n[:, None]), "one position"),
    (word_kd_times_mask, "0 * nan"),
    (lambda s, t, n, T: _per_token(s, t, T), "one number"),
    (lambda s, t, n, T: word_kd(s, t, n, T) * 1.1, "too large"),
    (lambda s, t, n, T: "0.5", "number"),
    (42, "function"),
])
def test_ps5_word_kd_wrong(answer, needle):
    _fails_with("ps5.word-kd", answer, needle)


# ------------------------------------------------------------------------------------------
# ps6: multi_teacher_kd(student_logits, teacher_logits, T), KD to the teachers' mixture
# ------------------------------------------------------------------------------------------
def multi_teacher_kd(student_logits, teacher_logits, T):
    p_bar = torch.stack([F.softmax(z / T, -1) for z in teacher_logits]).mean(0)
    return T * T * F.kl_div(F.log_softmax(student_logits / T, -1), p_bar, reduction="batchmean")


def multi_teacher_library(student_logits, teacher_logits, T):
    from kdedu.methods.multi_teacher import average_teachers

    return kd_loss(student_logits, average_teachers(teacher_logits, "probs", T), T)


def _mean_of_losses(s, zs, T):
    return torch.stack([kd_loss(s, z, T) for z in zs]).mean()


@pytest.mark.parametrize("answer", [multi_teacher_kd, multi_teacher_library])
def test_ps6_multi_teacher_kd_correct(answer):
    result = _verdict("ps6.multi-teacher-kd", answer)
    assert result, result.message


@pytest.mark.parametrize("answer, needle", [
    (lambda s, zs, T: kd_loss(s, torch.stack(zs).mean(0), T), "averaged the teachers' logits"),
    (_mean_of_losses, "averaged the KD losses"),
    (lambda s, zs, T: kd_loss(s, T * torch.stack([z.softmax(-1) for z in zs]).mean(0).log(), T), "at T = 1"),
    (lambda s, zs, T: kd_loss(s, torch.stack([z.softmax(-1) for z in zs]).mean(0).log(), T), "softened the mixture"),
    (lambda s, zs, T: multi_teacher_kd(s, zs, T) / (T * T), "T^2"),
    (lambda s, zs, T: T * T * F.kl_div(torch.stack([F.softmax(z / T, -1) for z in zs]).mean(0).log(),
                                       F.softmax(s / T, -1), reduction="batchmean"), "KL(p_s || p_bar)"),
    (lambda s, zs, T: multi_teacher_kd(s, zs, T) * len(s), "summed over"),
    (lambda s, zs, T: kd_loss(s, zs[0], T), "too"),
    (lambda s, zs, T: kd_loss(s, zs[0], T, reduction="none"), "one number"),
    (lambda s, zs, T: None, "number"),
    (None, "not answered"),
    ([1, 2], "function"),
])
def test_ps6_multi_teacher_kd_wrong(answer, needle):
    _fails_with("ps6.multi-teacher-kd", answer, needle)


# ------------------------------------------------------------------------------------------
# ps6: meta_gradient(W, x, z_t, qx, qy, lam, T), MetaDistil's pilot update on a linear student
# ------------------------------------------------------------------------------------------
def _meta(W, x, z_t, qx, qy, lam, T, *, create_graph=True, sign=1.0, kd=None, quiz="mean", at_pilot=True):
    W = W.detach().clone().requires_grad_(True)
    z_t = z_t.detach().clone().requires_grad_(True)
    kd_value = kd_loss(x @ W, z_t, T) if kd is None else kd(x @ W, z_t, T)
    (g,) = torch.autograd.grad(kd_value, W, create_graph=create_graph)
    W1 = W - sign * lam * g
    quiz_loss = F.cross_entropy(qx @ (W1 if at_pilot else W), qy, reduction=quiz)
    if not at_pilot:  # the first-order slip: the quiz gradient at W, dotted with the pilot step
        (gq,) = torch.autograd.grad(quiz_loss, W, retain_graph=True)
        quiz_loss = -lam * (g * gq.detach()).sum()
    (gz,) = torch.autograd.grad(quiz_loss, z_t, allow_unused=True)
    return torch.zeros_like(z_t) if gz is None else gz


def meta_gradient(W, x, z_t, qx, qy, lam, T):
    return _meta(W, x, z_t, qx, qy, lam, T)


def meta_gradient_by_hand(W, x, z_t, qx, qy, lam, T):  # the KD loss written out
    def kd(z_s, z_t, T):
        log_pt = F.log_softmax(z_t / T, -1)
        return T * T * (log_pt.exp() * (log_pt - F.log_softmax(z_s / T, -1))).sum(-1).mean()
    return _meta(W, x, z_t, qx, qy, lam, T, kd=kd)


def _kd_no_t2(z_s, z_t, T):
    return kd_loss(z_s, z_t, T) / (T * T)


def _kd_sum(z_s, z_t, T):
    return kd_loss(z_s, z_t, T, reduction="sum")


def _no_graph(W, x, z_t, qx, qy, lam, T):  # autograd refuses: z_t is not used without the graph
    W = W.detach().clone().requires_grad_(True)
    z_t = z_t.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(kd_loss(x @ W, z_t, T), W)
    return torch.autograd.grad(F.cross_entropy(qx @ (W - lam * g), qy), z_t)[0]


@pytest.mark.parametrize("answer", [meta_gradient, meta_gradient_by_hand])
def test_ps6_meta_gradient_correct(answer):
    result = _verdict("ps6.meta-gradient", answer)
    assert result, result.message


@pytest.mark.parametrize("answer, needle", [
    (lambda *a: _meta(*a, create_graph=False), "gradient is zero"),
    (lambda *a: _meta(*a, at_pilot=False), "at the current student"),
    (lambda *a: _meta(*a, sign=-1.0), "steps up"),
    (lambda *a: _meta(*a, kd=_kd_no_t2), "T^2"),
    (lambda *a: _meta(*a, kd=_kd_sum), "sums over the batch rows"),
    (lambda *a: _meta(*a, quiz="sum"), "summed the quiz loss"),
    (lambda *a: 2 * meta_gradient(*a), "off by"),
    (lambda *a: meta_gradient(*a)[0], "shape"),
    (lambda *a: meta_gradient(*a).tolist(), "tensor"),
    (_no_graph, "raised RuntimeError"),
    (3.0, "function"),
])
def test_ps6_meta_gradient_wrong(answer, needle):
    _fails_with("ps6.meta-gradient", answer, needle)


def _alignment(W, x, z_t, qx, qy, T, *, create_graph=True, kd=None, quiz="mean"):
    W = W.detach().clone().requires_grad_(True)
    z_t = z_t.detach().clone().requires_grad_(True)
    kd_value = kd_loss(x @ W, z_t, T) if kd is None else kd(x @ W, z_t, T)
    (g_kd,) = torch.autograd.grad(kd_value, W, create_graph=create_graph)
    (g_quiz,) = torch.autograd.grad(F.cross_entropy(qx @ W, qy, reduction=quiz), W)
    if not create_graph:
        return torch.zeros_like(z_t)
    return torch.autograd.grad((g_kd * g_quiz).sum(), z_t)[0]


def alignment_gradient(W, x, z_t, qx, qy, T):
    return _alignment(W, x, z_t, qx, qy, T)


def alignment_by_limit(W, x, z_t, qx, qy, T):  # minus the exact meta-gradient over a tiny pilot step
    lam = 1e-7
    return -meta_gradient(W, x, z_t, qx, qy, lam, T) / lam


@pytest.mark.parametrize("answer", [alignment_gradient])
def test_ps6_alignment_correct(answer):
    result = _verdict("ps6.alignment", answer)
    assert result, result.message


def test_ps6_alignment_limit_of_the_meta_gradient():  # the two new checks agree: a tiny pilot step is first order
    from kdedu.check.ps6 import _META_CASES, _meta_problem

    for seed, N, D, C, M, _, T in _META_CASES:
        args = _meta_problem(seed, N, D, C, M)
        assert torch.allclose(alignment_by_limit(*args, T), alignment_gradient(*args, T), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("answer, needle", [
    (lambda *a: _alignment(*a, create_graph=False), "gradient is zero"),
    (lambda *a: -alignment_gradient(*a), "wrong sign"),
    (lambda *a: _alignment(*a, kd=_kd_no_t2), "T^2"),
    (lambda *a: _alignment(*a, kd=_kd_sum), "sums over the batch rows"),
    (lambda *a: _alignment(*a, quiz="sum"), "quiz loss sums"),
    (lambda *a: meta_gradient(*a[:5], 0.5, a[5]), "off by"),
    (lambda *a: alignment_gradient(*a).T, "shape"),
    (lambda *a: None, "tensor"),
    ("alignment", "function"),
])
def test_ps6_alignment_wrong(answer, needle):
    _fails_with("ps6.alignment", answer, needle)


# ------------------------------------------------------------------------------------------
# ps7: streamed_kd(blocks, T), the KD loss in one pass over blocks of the vocabulary
# ------------------------------------------------------------------------------------------
def streamed_kd(blocks, T):
    state = None
    for s_b, t_b in blocks:
        a, b = s_b.double() / T, t_b.double() / T
        if state is None:
            n = a.shape[0]
            inf = torch.full((n,), float("-inf"), dtype=torch.float64)
            state = [inf, torch.zeros(n, dtype=torch.float64), inf.clone(), torch.zeros(n, dtype=torch.float64),
                     torch.zeros(n, dtype=torch.float64)]
        m_s, d_s, m_t, d_t, acc = state
        new_s, new_t = torch.maximum(m_s, a.max(-1).values), torch.maximum(m_t, b.max(-1).values)
        d_s = d_s * torch.exp(m_s - new_s) + torch.exp(a - new_s[:, None]).sum(-1)
        scale, e = torch.exp(m_t - new_t), torch.exp(b - new_t[:, None])
        d_t, acc = d_t * scale + e.sum(-1), acc * scale + (e * (b - a)).sum(-1)
        state = [new_s, d_s, new_t, d_t, acc]
    m_s, d_s, m_t, d_t, acc = state
    return T * T * (acc / d_t + (m_s + d_s.log()) - (m_t + d_t.log())).mean()


def streamed_two_states(blocks, T):  # one logsumexp state per model, merged as in exercise 19.3; float32 inside
    lse_s = lse_t = acc = None
    for s_b, t_b in blocks:
        a, b = s_b.float() / T, t_b.float() / T
        blk_s, blk_t = torch.logsumexp(a, -1), torch.logsumexp(b, -1)
        if lse_t is None:
            lse_s, lse_t, acc = blk_s, blk_t, ((b - blk_t[:, None]).exp() * (b - a)).sum(-1)
            continue
        new_t = torch.logaddexp(lse_t, blk_t)
        acc = acc * torch.exp(lse_t - new_t) + ((b - new_t[:, None]).exp() * (b - a)).sum(-1)
        lse_s, lse_t = torch.logaddexp(lse_s, blk_s), new_t
    return T * T * (acc + lse_s - lse_t).mean()


def _naive(blocks, T):  # sums of exp with no maximum: overflows on large logits
    ds = dt = acc = 0
    for s_b, t_b in blocks:
        a, b = s_b / T, t_b / T
        ds, dt, acc = ds + a.exp().sum(-1), dt + b.exp().sum(-1), acc + (b.exp() * (b - a)).sum(-1)
    return T * T * (acc / dt + ds.log() - dt.log()).mean()


def _concatenated(blocks, T):
    pairs = list(blocks)
    return kd_loss(torch.cat([p[0] for p in pairs], 1), torch.cat([p[1] for p in pairs], 1), T)


def _per_block(blocks, T):
    return sum(kd_loss(s_b, t_b, T) for s_b, t_b in blocks)


def _last_block(blocks, T):
    for s_b, t_b in blocks:
        out = kd_loss(s_b, t_b, T)
    return out


def _first_block(blocks, T):
    s_b, t_b = next(iter(blocks))
    return kd_loss(s_b, t_b, T)


def _swapped(blocks, T):
    return streamed_kd(((t_b, s_b) for s_b, t_b in blocks), T)


@pytest.mark.parametrize("answer", [streamed_kd, streamed_two_states])
def test_ps7_streamed_kd_correct(answer):
    result = _verdict("ps7.streamed-kd", answer)
    assert result, result.message


@pytest.mark.parametrize("answer, needle", [
    (_concatenated, "kept the blocks"),
    (_per_block, "each block on its own"),
    (_last_block, "last block alone"),
    (_first_block, "read only 1 of the 4 blocks"),
    (_swapped, "KL(p_s || p_t)"),
    (lambda blocks, T: streamed_kd(blocks, T) / (T * T), "T^2"),
    (lambda blocks, T: streamed_kd(blocks, T) * 4, "summed over"),
    (_naive, "overflowed"),
    (lambda blocks, T: torch.zeros(3), "one number"),
    (lambda blocks, T: streamed_kd(blocks, T) + 0.01, "too large"),
    (lambda blocks: 0.0, "raised TypeError"),
    ("streamed_kd", "function"),
])
def test_ps7_streamed_kd_wrong(answer, needle):
    _fails_with("ps7.streamed-kd", answer, needle)
