"""The data gap, made visible on one input dimension (seed deck 000, "Data GAP Problem").

"The teacher and student might diverge in areas in the input space that we do not have training samples": a
student distilled on a few points matches the teacher there and is free in between. Here the teacher is a known
function of one number ``x`` in ``[-3, 3]``: two classes with logits ``(0, f(x))``, ``f(x) = 3 sin(2x) + x``
(:class:`GapTeacher`); the transfer set is ``n`` points drawn uniformly (:func:`gap_points`); the student, a small
ReLU MLP, learns the teacher's soft targets on them with :class:`kdedu.methods.KD` (``alpha = 1``) through
:func:`kdedu.train.fit` (:func:`distill_gap`). The divergence ``KL(p_t || p_s)`` is then read on a fine grid, beside
each grid point's distance to the nearest transfer point.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["GapTeacher", "gap_points", "gap_student", "distill_gap", "LOW", "HIGH"]

LOW, HIGH = -3.0, 3.0


class GapTeacher(nn.Module):
    """``x`` (B, 1) -> logits (B, 2) = ``(0, 3 sin(2x) + x)``: P(class 1) = sigmoid(f(x))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = 3 * torch.sin(2 * x[:, 0]) + x[:, 0]                       # (B,)
        return torch.stack([torch.zeros_like(f), f], dim=-1)            # (B, 2)


def gap_points(n: int, data_seed: int = 0) -> torch.Tensor:
    """(n, 1): the transfer set, ``n`` points uniform in ``[-3, 3]`` (sorted), fixed by ``data_seed``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    g = torch.Generator().manual_seed(data_seed)
    return (LOW + (HIGH - LOW) * torch.rand(n, generator=g)).sort().values[:, None]


def gap_student(seed: int, hidden: tuple[int, ...] = (64, 64)) -> nn.Module:
    """A ReLU MLP from one input to two logits, initialised from ``seed``."""
    from kdedu.models import MLP

    torch.manual_seed(seed)
    return MLP(1, hidden, 2)


def distill_gap(n: int = 8, seed: int = 0, data_seed: int = 0, steps: int = 300, lr: float = 1e-2,
                grid: int = 601) -> dict[str, torch.Tensor]:
    """Distil :class:`GapTeacher` into :func:`gap_student` on ``n`` transfer points (full batch, ``steps`` Adam steps,
    ``fit(..., seed=seed)``), then measure on ``grid`` points of ``[-3, 3]``.

    Returns ``{"points" (n,), "x" (grid,), "teacher" (grid,), "student" (grid,)`` (P(class 1) of each),
    ``"kl" (grid,)`` (``KL(p_t || p_s)`` per grid point, :func:`kdedu.losses.kd_loss` at T = 1), ``"distance"
    (grid,)`` (to the nearest transfer point), ``"kl_at_points" (n,)``}.
    """
    from kdedu import losses
    from kdedu.methods import KD
    from kdedu.train import fit

    teacher, points = GapTeacher(), gap_points(n, data_seed)
    student = gap_student(seed)
    loader = DataLoader(TensorDataset(points, torch.zeros(n, dtype=torch.long)), batch_size=n)
    fit(KD(student, teacher, alpha=1.0, temperature=1.0), loader, None, num_epochs=steps, lr=lr, seed=seed,
        device="cpu", progress=False)
    x = torch.linspace(LOW, HIGH, grid)[:, None]                        # (grid, 1)
    with torch.no_grad():
        z_t, z_s = teacher(x), student(x)
        kl = losses.kd_loss(z_s, z_t, 1.0, reduction="none")            # (grid,)
        kl_points = losses.kd_loss(student(points), teacher(points), 1.0, reduction="none")
    distance = (x - points.T).abs().min(dim=1).values                   # (grid,)
    return {"points": points[:, 0], "x": x[:, 0], "teacher": z_t.softmax(-1)[:, 1], "student": z_s.softmax(-1)[:, 1],
            "kl": kl, "distance": distance, "kl_at_points": kl_points}
