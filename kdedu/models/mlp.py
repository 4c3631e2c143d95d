"""A multi-layer perceptron: the book's default student (no inductive bias for images)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """``Flatten -> [Linear -> ReLU -> Dropout] * len(hidden) -> Linear``.

    Args:
        in_features: size of one flattened input (64 for 8x8 digits).
        hidden: widths of the hidden layers; ``()`` gives a linear (softmax-regression) model.
        num_classes: number of outputs (logits).
        dropout: dropout probability after each hidden layer.
    """

    def __init__(self, in_features: int = 64, hidden: Sequence[int] = (128,), num_classes: int = 10,
                 dropout: float = 0.0):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (B, num_classes)
        return self.net(x)
