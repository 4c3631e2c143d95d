"""Teacher-assistant KD (TAKD; Mirzadeh et al. 2020; seed deck 000, "Improving Training of KD").

When the teacher is much larger than the student, KD can get *worse* (the capacity gap). TAKD
distills in steps instead: teacher -> assistant 1 -> ... -> assistant m -> student, each step an
ordinary KD run (:class:`kdedu.methods.KD`) from the previous network, now frozen. The price is one
extra training run per assistant, reported in :attr:`TAKDResult.cost`, and errors of an assistant
propagate down the chain.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader

from kdedu.methods.kd import KD
from kdedu.models.utils import count_parameters
from kdedu.train import History, fit


@dataclass
class TAKDResult:
    """The trained chain: ``networks`` = assistants then the student (teacher excluded), one history each,
    and ``cost``: per step, its name, parameters, epochs and wall time, plus totals."""

    networks: list[nn.Module]
    histories: list[History]
    cost: dict = field(default_factory=dict)

    @property
    def student(self) -> nn.Module:
        return self.networks[-1]

    @property
    def assistants(self) -> list[nn.Module]:
        return self.networks[:-1]


def takd(
    teacher: nn.Module,
    make_assistants: Sequence[Callable[[], nn.Module]],
    make_student: Callable[[], nn.Module],
    train_loader: DataLoader,
    val_loader: DataLoader | None = None,
    alpha: float = 0.5,
    temperature: float = 4.0,
    seed: int = 0,
    **fit_kwargs,
) -> TAKDResult:
    """Distill ``teacher`` through the assistants (largest first) into the student.

    Args:
        teacher: a trained network (frozen here).
        make_assistants: one builder per assistant, in chain order; their sizes are up to you
            (Mirzadeh et al. try assistants of several sizes between teacher and student; chapter 07 sweeps them).
            ``[]`` is plain KD.
        make_student: builds the student.
        alpha, temperature: the KD mixture used at every step.
        seed: the student is built after ``torch.manual_seed(seed)`` and trained with ``seed``, so it starts
            from the weights and batch order of a plain KD student of the same seed (paired comparisons);
            assistant ``i`` (1, 2, ...) is built after ``torch.manual_seed(seed + i)`` and trained with it.
        **fit_kwargs: passed to :func:`kdedu.train.fit` (``num_epochs``, ``lr``, ``progress``, ...).
    """
    if not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
    builders = list(make_assistants) + [make_student]
    networks, histories, steps = [], [], []
    previous = teacher
    for i, build in enumerate(builders):
        is_student = i == len(builders) - 1
        name = "student" if is_student else f"assistant {i + 1}"
        step_seed = seed if is_student else seed + i + 1
        torch.manual_seed(step_seed)
        net = build()
        t0 = time.perf_counter()
        history = fit(KD(net, previous, alpha=alpha, temperature=temperature), train_loader, val_loader,
                      seed=step_seed, desc=f"TAKD: {name}", **fit_kwargs)
        steps.append({"name": name, "params": count_parameters(net), "epochs": len(history),
                      "time_s": time.perf_counter() - t0})
        networks.append(net)
        histories.append(history)
        previous = net
    cost = {"steps": steps, "total_epochs": sum(s["epochs"] for s in steps),
            "total_time_s": sum(s["time_s"] for s in steps),
            "extra_runs": len(builders) - 1}
    return TAKDResult(networks, histories, cost)
