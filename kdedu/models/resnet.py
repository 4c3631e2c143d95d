"""CIFAR-style ResNets of depth 6n + 2 (He et al. 2016, section 4.2): ResNet-8, 20, 56, 110.

Three stages of ``n`` basic blocks with 16, 32, 64 channels (times ``width``); the first block of
stages 2 and 3 halves the resolution. The deck's Annealing-KD / TAKD experiments use ResNet-110 as
teacher, ResNet-20 as assistant and ResNet-8 as student.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (1x1 projection when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, c_in, H, W) -> (B, c_out, H/s, W/s)
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return torch.relu(h + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-(6n+2) for small images. ``depth`` must be 8, 14, 20, ..., 56, ..., 110."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3, width: int = 1):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 20, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        c = [16 * width, 32 * width, 64 * width]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(c[0]), nn.ReLU())
        stages, c_in = [], c[0]
        for i, c_out in enumerate(c):
            for j in range(n):
                stages.append(BasicBlock(c_in, c_out, stride=2 if (i > 0 and j == 0) else 1))
                c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(c_in, num_classes)
        self.depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 32, 32)
        if x.dim() == 3:
            x = x.unsqueeze(1)
        h = self.stages(self.stem(x))   # (B, 64w, 8, 8) for 32x32 inputs
        return self.head(h.mean(dim=(2, 3)))  # (B, num_classes)


def resnet(depth: int, num_classes: int = 10, in_channels: int = 3, width: int = 1) -> ResNet:
    """``resnet(110)``, ``resnet(20)``, ``resnet(8)``: the CIFAR ResNets of the TAKD/Annealing-KD tables."""
    return ResNet(depth, num_classes=num_classes, in_channels=in_channels, width=width)
