"""CIFAR-10/100 through torchvision, for the ``full`` profile (Colab, a GPU, a network).

The data cannot be downloaded without a network; then :func:`cifar` fails at once with a message
that says where it looked and what to do, instead of hanging or raising from deep inside urllib.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch

_MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
_STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}


def default_root() -> Path:
    """``$KDEDU_DATA`` if set, else ``~/.cache/kdedu/data``."""
    return Path(os.environ.get("KDEDU_DATA", Path.home() / ".cache" / "kdedu" / "data"))


def cifar(name: str = "cifar10", train: bool = True, root: str | os.PathLike | None = None,
          download: bool = True, augment: bool | None = None, timeout_s: float = 20.0):
    """A torchvision CIFAR data set returning normalised ``(3, 32, 32)`` tensors and int labels.

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        train: the 50,000-image training split, else the 10,000-image test split.
        root: where the extracted ``cifar-10-batches-py`` / ``cifar-100-python`` folder lives or
            is downloaded to (default :func:`default_root`).
        download: try to download when the files are missing.
        augment: random crop (padding 4) + horizontal flip, the standard CIFAR recipe; default: on
            for ``train``.
        timeout_s: network timeout for the download, so an offline machine fails fast.
    """
    import torchvision
    from torchvision import transforms

    classes = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}
    if name not in classes:
        raise ValueError(f"name must be 'cifar10' or 'cifar100', got {name!r}")
    root = Path(root) if root is not None else default_root()
    augment = train if augment is None else augment
    steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if augment else []
    tf = transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize(_MEAN[name], _STD[name])])
    dataset_cls = classes[name]

    def build(dl: bool):
        return dataset_cls(str(root), train=train, download=dl, transform=tf)

    try:
        return build(False)  # already on disk (checksums verified by torchvision)
    except RuntimeError:
        if not download:
            raise FileNotFoundError(
                f"{name} was not found (or is corrupted) under {root}. Call cifar(..., download=True) "
                f"with a network, or put the extracted torchvision folder there (set $KDEDU_DATA)."
            ) from None
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        return build(True)
    except Exception as err:  # URLError, socket timeouts, HTTP errors, a broken archive
        raise RuntimeError(
            f"could not download {name} to {root} ({type(err).__name__}: {err}). This machine seems "
            f"to have no network: run the chapter in the 'fast' profile (KDEDU_PROFILE=fast, digits "
            f"data), or download CIFAR elsewhere and place the extracted folder under {root}."
        ) from None
    finally:
        socket.setdefaulttimeout(old_timeout)


def as_tensors(dataset, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack a (small) map-style data set into ``(x, y)`` tensors; ``limit`` keeps the first items."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    xs, ys = zip(*(dataset[i] for i in range(n)), strict=True)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)
