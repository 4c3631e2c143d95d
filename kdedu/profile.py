"""Run profiles: ``fast`` (a 2-core CPU, CI, offline) and ``full`` (a GPU and a network, e.g. Colab).

The profile is ``$KDEDU_PROFILE`` when set, else ``full`` when CUDA is available, else ``fast``.
Chapters size their experiments with :func:`pick`::

    num_epochs = kdedu.profile.pick(fast=30, full=200)
"""

from __future__ import annotations

import os

PROFILES = ("fast", "full")


def current() -> str:
    """The active profile name."""
    name = os.environ.get("KDEDU_PROFILE", "").strip().lower()
    if name:
        if name not in PROFILES:
            raise ValueError(f"KDEDU_PROFILE must be one of {PROFILES}, got {name!r}")
        return name
    import torch

    return "full" if torch.cuda.is_available() else "fast"


def pick(fast, full):
    """``fast`` or ``full``, whichever matches the active profile."""
    return fast if current() == "fast" else full
