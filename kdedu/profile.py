"""Run profiles: how big a chapter's experiments are.

* ``fast``: a 2-core CPU, offline; what CI and the book's build run (each chapter within its time budget).
* ``powered``: offline on a CPU too, but with the seeds, data and steps a key comparison needs to resolve its
  effect; too slow for every build, so its runs are made once and stored with their provenance
  (``make results NB=book/NN-slug.ipynb``; see :mod:`kdedu.experiment`, "Stored results").
* ``full``: a GPU and a network (e.g. Colab): the bigger data sets and models of the online loaders.

The profile is ``$KDEDU_PROFILE`` when set, else ``full`` when CUDA is available, else ``fast``.
Chapters size their experiments with :func:`pick`::

    num_epochs = kdedu.profile.pick(fast=30, full=200, powered=60)
"""

from __future__ import annotations

import os

PROFILES = ("fast", "powered", "full")


def current() -> str:
    """The active profile name."""
    name = os.environ.get("KDEDU_PROFILE", "").strip().lower()
    if name:
        if name not in PROFILES:
            raise ValueError(f"KDEDU_PROFILE must be one of {PROFILES}, got {name!r}")
        return name
    import torch

    return "full" if torch.cuda.is_available() else "fast"


def pick(fast, full, powered=None):
    """The value for the active profile; ``powered`` defaults to ``fast`` (a chapter whose stored tables need
    nothing bigger than its live run)."""
    name = current()
    if name == "full":
        return full
    if name == "powered" and powered is not None:
        return powered
    return fast
