"""Auto-checks for the new exercises of problem set 4, Part IV, data (chapters 11-12) (book/assignments/ps4-*.md).

The problem set's other exercises are the chapters' own (kdedu/check/chNN.py)."""

from __future__ import annotations

import torch

from kdedu.check import Wrong, function, register

# (seed, b originals, K neighbours, C classes, k1 kept, T)
_SELECT_CASES = ((0, 4, 8, 5, 3, 2.0), (1, 2, 6, 10, 1, 1.0), (2, 3, 5, 4, 5, 4.0), (3, 5, 7, 3, 2, 0.5))


def _select_logits(seed: int, b: int, K: int, C: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and student logits ``(b, K, C)`` on ``K`` neighbours of ``b`` originals, of varied confidence."""
    g = torch.Generator().manual_seed(400 + seed)
    scale_t = 0.5 + 4 * torch.rand(b, K, 1, generator=g, dtype=torch.float64)
    scale_s = 0.5 + 4 * torch.rand(b, K, 1, generator=g, dtype=torch.float64)
    t = scale_t * torch.randn(b, K, C, generator=g, dtype=torch.float64)
    s = scale_s * torch.randn(b, K, C, generator=g, dtype=torch.float64)
    return t, s


def _ranked(d: torch.Tensor, k1: int, largest: bool = True) -> torch.Tensor:
    """The positions of the ``k1`` largest (smallest) entries of each row of ``d`` ``(b, K)``, in that order."""
    return torch.sort(d, dim=1, descending=largest, stable=True).indices[:, :k1]


@register("ps4.minimax-select", hint="score every neighbour with the divergence of the softened teacher from the "
                                     "softened student, one number per (original, neighbour); then rank the "
                                     "neighbours of each original separately, most divergent first.")
def _check_ps4_minimax_select(fn):
    from kdedu.losses import kd_loss

    function("select_neighbours(teacher_logits, student_logits, k1, T)", fn)
    for seed, b, K, C, k1, T in _SELECT_CASES:
        t, s = _select_logits(seed, b, K, C)
        d = kd_loss(s, t, T, reduction="none")                            # (b, K): T^2 KL(p_t || p_s)
        expected = _ranked(d, k1)
        got = fn(t.clone(), s.clone(), k1, T)
        where = f"with b = {b} originals, K = {K} neighbours, k1 = {k1}, T = {T:g}"
        if not isinstance(got, torch.Tensor):
            raise Wrong(f"select_neighbours should return a tensor of neighbour indices, got {type(got).__name__}.")
        if got.shape != expected.shape:
            raise Wrong(f"{where}, select_neighbours returned shape {tuple(got.shape)}, expected {(b, k1)}: one row "
                        "per original, the positions (in 0..K-1) of its k1 kept neighbours.")
        if got.dtype.is_floating_point or got.dtype == torch.bool:
            raise Wrong(f"select_neighbours returned a {got.dtype} tensor; positions are integers (torch.long), "
                        "as topk or argsort give them.")
        got = got.long()
        if torch.equal(got, expected):
            continue
        if torch.equal(got.sort(dim=1).values, expected.sort(dim=1).values):
            raise Wrong(f"{where}, you keep the right neighbours but not in decreasing order of divergence: list "
                        "the most divergent first.")
        slips = (
            (_ranked(d, k1, largest=False), "you kept the neighbours on which the student already agrees with the "
             "teacher (the smallest divergences); the maximisation step keeps the largest."),
            (_ranked(kd_loss(t, s, T, reduction="none"), k1), "you ranked by KL(p_s || p_t); Minimax-kNN scores "
             "KL(p_t || p_s), the teacher's distribution first, as the KD loss does."),
            (_ranked(kd_loss(s, t, 1.0, reduction="none"), k1), f"you ranked the divergences at T = 1; the "
             f"selection uses the temperature it is given (here T = {T:g})."),
            (_ranked((t.softmax(-1) - s.softmax(-1)).abs().sum(-1), k1), "you ranked by another distance between the "
             "distributions; the selection ranks by the KL divergence at the temperature T."),
        )
        for wrong, message in slips:
            if torch.equal(got, wrong):
                raise Wrong(f"{where}: {message}")
        off = sum(not torch.equal(got[i], expected[i]) for i in range(b))
        raise Wrong(f"{where}, select_neighbours keeps other neighbours than the k1 most divergent (in decreasing "
                    f"order) for {off} of the {b} originals.")
    return ("the maximisation step: per original, the k1 neighbours on which the student is furthest from the teacher, "
            "as kdedu.methods.minimax_knn.most_divergent keeps them. MATE-KD's generator climbs the same divergence "
            "by gradient; Minimax-kNN picks among retrieved candidates.")
