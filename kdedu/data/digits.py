"""Handwritten digits (scikit-learn's copy of the UCI optical digits): real data, always offline.

1,797 grey-scale 8x8 images of the digits 0-9, pixel values 0..16 scaled to [0, 1]. The split is
fixed (stratified, seed 0): 60 % train, 20 % validation, 20 % test, so every chapter and every test
sees the same examples. ``translate`` shifts images by whole pixels for out-of-distribution tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch.utils.data import DataLoader, TensorDataset

SPLITS = ("train", "val", "test")
NUM_CLASSES = 10


@dataclass(frozen=True)
class Split:
    """One split of a data set: images ``x`` (N, 1, 8, 8) float32 in [0, 1] and labels ``y`` (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def dataset(self) -> TensorDataset:
        return TensorDataset(self.x, self.y)


@lru_cache(maxsize=1)
def _all_splits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()  # shipped inside scikit-learn: no download
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    y = torch.tensor(bunch.target, dtype=torch.int64)
    idx = torch.arange(len(y)).numpy()
    train_idx, rest = train_test_split(idx, train_size=0.6, stratify=y.numpy(), random_state=0)
    val_idx, test_idx = train_test_split(rest, train_size=0.5, stratify=y.numpy()[rest], random_state=0)
    return {name: (x[i], y[i]) for name, i in zip(SPLITS, (train_idx, val_idx, test_idx), strict=True)}


def digits(split: str = "train", shift: int = 0, seed: int = 0, limit: int | None = None) -> Split:
    """One split of the digits as tensors.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        shift: if > 0, every image is translated by a random whole-pixel offset with
            ``max(|dx|, |dy|) == shift`` (an out-of-distribution version; see :func:`translate`).
        seed: seeds the random offsets when ``shift > 0``.
        limit: keep only the first ``limit`` examples (a smaller transfer set); ``None`` keeps all.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not isinstance(shift, int) or not 0 <= shift <= 7:
        raise ValueError(f"shift must be an integer in [0, 7] pixels, got {shift!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    x, y = _all_splits()[split]
    if limit is not None:
        x, y = x[:limit], y[:limit]
    if shift:
        g = torch.Generator().manual_seed(seed)
        n = len(y)
        # pick offsets on the border of the (2*shift+1)^2 square, so every image moves by `shift`
        dx = torch.randint(-shift, shift + 1, (n,), generator=g)
        dy = torch.randint(-shift, shift + 1, (n,), generator=g)
        on_x = torch.rand(n, generator=g) < 0.5
        sign = torch.where(torch.rand(n, generator=g) < 0.5, -1, 1) * shift
        dx = torch.where(on_x, sign, dx)
        dy = torch.where(on_x, dy, sign)
        x = translate(x, dx, dy)
    return Split(x.clone(), y.clone())


def translate(images: torch.Tensor, dx, dy) -> torch.Tensor:
    """Shift images by whole pixels, filling with 0 (background); nothing wraps around.

    Args:
        images: (N, C, H, W).
        dx, dy: ints or (N,) integer tensors; positive ``dx`` moves right, positive ``dy`` down.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be an (N, C, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    n, _, h, w = images.shape
    dx, dy = _offsets("dx", dx, n), _offsets("dy", dy, n)
    rows = torch.arange(h).view(1, h, 1) - dy.view(n, 1, 1)  # source row of each target pixel
    cols = torch.arange(w).view(1, 1, w) - dx.view(n, 1, 1)
    valid = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)  # (N, H, W)
    batch = torch.arange(n).view(n, 1, 1)
    out = images[batch, :, rows.clamp(0, h - 1), cols.clamp(0, w - 1)]  # (N, H, W, C)
    out = out.permute(0, 3, 1, 2) * valid.unsqueeze(1)
    return out.contiguous()


def _offsets(name: str, d, n: int) -> torch.Tensor:
    d = torch.as_tensor(d)
    if d.is_floating_point() or d.is_complex() or d.dtype == torch.bool:
        raise TypeError(f"{name} must be an int or an (N,) integer tensor of whole pixels, got dtype {d.dtype}")
    if d.dim() == 0:
        return d.expand(n)
    if tuple(d.shape) != (n,):
        raise ValueError(f"{name} must be an int or have shape ({n},), one offset per image, got {tuple(d.shape)}")
    return d


def make_loader(data: Split, batch_size: int = 64, shuffle: bool = False) -> DataLoader:
    """A DataLoader over a :class:`Split` (shuffling draws from torch's global RNG, seeded by ``fit``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return DataLoader(data.dataset(), batch_size=batch_size, shuffle=shuffle)


def digits_loaders(batch_size: int = 64, limit: int | None = None) -> dict[str, DataLoader]:
    """Train (shuffled), val and test loaders; ``limit`` shrinks the training set only."""
    return {
        "train": make_loader(digits("train", limit=limit), batch_size, shuffle=True),
        "val": make_loader(digits("val"), batch_size=512),
        "test": make_loader(digits("test"), batch_size=512),
    }
