"""Born-again networks (Furlanello et al. 2018): a teacher and students of the *same* architecture.

Generation 0 is trained on the labels. Generation ``k`` is a freshly initialised copy of the same
architecture trained with KD from generation ``k - 1``. The ensemble of generations averages their
predictions; the deck's figure: "additional gains can be achieved with an ensemble of multiple
student generations".
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from kdedu.methods.kd import KD, Supervised
from kdedu.train import History, fit, predict


def born_again(
    make_model: Callable[[], nn.Module],
    train_loader: DataLoader,
    val_loader: DataLoader | None = None,
    generations: int = 3,
    alpha: float = 1.0,
    temperature: float = 1.0,
    seed: int = 0,
    **fit_kwargs,
) -> tuple[list[nn.Module], list[History]]:
    """Train ``generations + 1`` networks: generation 0 on labels, then each from its predecessor.

    Args:
        make_model: builds a fresh, randomly initialised network (called once per generation,
            after seeding with ``seed + generation``, so each generation starts from a different init).
        generations: how many born-again generations follow generation 0.
        alpha, temperature: the KD mixture for generations >= 1 (Furlanello et al. use ``alpha=1``,
            ``T=1``: the student sees only the teacher).
        **fit_kwargs: passed to :func:`kdedu.train.fit` (``num_epochs``, ``lr``, ...).

    Returns:
        ``(models, histories)``, generation 0 first.
    """
    if not isinstance(generations, int) or generations < 0:
        raise ValueError(f"generations must be a non-negative integer, got {generations!r}")
    models, histories = [], []
    teacher = None
    for g in range(generations + 1):
        torch.manual_seed(seed + g)
        model = make_model()
        method = Supervised(model) if teacher is None else KD(model, teacher, alpha=alpha, temperature=temperature)
        histories.append(fit(method, train_loader, val_loader, seed=seed + g, desc=f"generation {g}", **fit_kwargs))
        models.append(model)
        teacher = model
    return models, histories


def ensemble_logits(models: list[nn.Module], loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """Average the models' *probabilities* and return their log (usable as logits) and the labels."""
    if not models:
        raise ValueError("models must contain at least one model")
    probs, labels = None, None
    for m in models:
        logits, labels = predict(m, loader)
        p = logits.softmax(-1)
        probs = p if probs is None else probs + p
    return (probs / len(models)).log(), labels
