"""Independent float64 references shared by several test files (plain Python, no torch.nn.functional)."""

import math

import torch


def ref_ce(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Mean cross-entropy of ``logits`` (N, C) against labels ``y`` (N,), via a stable log-sum-exp loop."""
    rows = logits.detach().double().tolist()
    total = 0.0
    for r, k in zip(rows, y.tolist(), strict=True):
        m = max(r)
        total += -(r[k] - m - math.log(sum(math.exp(v - m) for v in r)))
    return total / len(rows)
