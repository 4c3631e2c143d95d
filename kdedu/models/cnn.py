"""A small convolutional network: the book's default teacher on digits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class SmallCNN(nn.Module):
    """``[Conv3x3 -> BatchNorm -> ReLU (-> MaxPool2)] * len(channels) -> global average pool -> Linear``.

    Convolutions share weights across positions and the global average pool forgets where a
    feature was found: the translation equivariance/invariance bias that chapter 05 tries to
    transfer to an MLP. Works for any image size (8x8 digits, 32x32 CIFAR).

    Args:
        in_channels: 1 for digits, 3 for CIFAR.
        channels: output channels of each conv block (depth = ``len(channels)``).
        num_classes: number of outputs.
        pool_every: max-pool (stride 2) after every ``pool_every``-th block; 0 never pools.
    """

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (32, 64), num_classes: int = 10,
                 pool_every: int = 1):
        super().__init__()
        if len(channels) < 1:
            raise ValueError("channels must name at least one conv block")
        blocks: list[nn.Module] = []
        c_in = in_channels
        for i, c_out in enumerate(channels, start=1):
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            if pool_every and i % pool_every == 0:
                blocks.append(nn.MaxPool2d(2))
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W)
        if x.dim() == 3:  # (B, H, W): add the channel dimension
            x = x.unsqueeze(1)
        h = self.features(x)            # (B, C, H', W')
        h = h.mean(dim=(2, 3))          # (B, C): global average pool
        return self.head(h)             # (B, num_classes)
