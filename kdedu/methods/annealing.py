"""Annealing KD (Jafari et al. 2021; seed deck 000, "Training: Annealing KD").

Instead of asking a small student to match a sharp teacher from the start, stage I shows it a
*damped* teacher whose logits grow epoch by epoch:

* **Stage I** (``n = k * tau_max`` epochs): the temperature ``T`` walks from ``tau_max`` down to 1,
  ``k`` epochs per value, and the student regresses ``phi(T) * z_t`` with
  :func:`kdedu.losses.annealing_kd_loss`, where ``phi(T) = 1 - (T - 1) / tau_max``
  (:func:`kdedu.losses.annealing_phi`). No labels are used.
* **Stage II** (the remaining epochs): plain cross-entropy on the labels, ``T = 1``.

The schedule lives in :meth:`AnnealingKD.on_epoch_start`, which :func:`kdedu.train.fit` calls
before every epoch, so one ``fit`` call runs both stages::

    method = AnnealingKD(student, teacher, tau_max=10, k=2)
    fit(method, loader, num_epochs=method.stage1_epochs + 10)   # 20 epochs of stage I, 10 of stage II
"""

from __future__ import annotations

import numbers

import torch
from torch import nn

from kdedu import losses
from kdedu.methods.kd import cross_entropy
from kdedu.outputs import run
from kdedu.train import Distiller


class AnnealingKD(Distiller):
    """Two-stage Annealing KD. ``forward`` returns ``{"annealing": MSE}`` in stage I, ``{"ce": CE}`` in stage II."""

    def __init__(self, student: nn.Module, teacher: nn.Module, tau_max: int = 10, k: int = 1):
        if teacher is None:
            raise TypeError("teacher must be a torch.nn.Module")
        super().__init__(student, teacher)
        for name, v in (("tau_max", tau_max), ("k", k)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"{name} must be an integer >= 1, got {type(v).__name__}")
            if v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        self.tau_max, self.k = int(tau_max), int(k)
        self.stage, self.T, self.phi = 1, self.tau_max, losses.annealing_phi(self.tau_max, self.tau_max)

    @property
    def stage1_epochs(self) -> int:
        """``n = k * tau_max``: the length of stage I."""
        return self.k * self.tau_max

    def schedule(self, num_epochs: int) -> list[dict]:
        """The plan for a run of ``num_epochs``: ``{"epoch", "stage", "T", "phi"}`` per epoch (1-based)."""
        plan = []
        for epoch in range(num_epochs):
            if epoch < self.stage1_epochs:
                T = self.tau_max - epoch // self.k  # tau_max, ..., tau_max (k times), tau_max - 1, ..., 1
                plan.append({"epoch": epoch + 1, "stage": 1, "T": T, "phi": losses.annealing_phi(T, self.tau_max)})
            else:
                plan.append({"epoch": epoch + 1, "stage": 2, "T": 1, "phi": 1.0})
        return plan

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        if num_epochs < self.stage1_epochs:
            raise ValueError(f"num_epochs={num_epochs} is shorter than stage I (k * tau_max = {self.stage1_epochs})")
        step = self.schedule(epoch + 1)[epoch]
        self.stage, self.T, self.phi = step["stage"], step["T"], step["phi"]

    def forward(self, x, y: torch.Tensor) -> dict[str, torch.Tensor]:
        z_s = run(self.student, x).require_logits("the student")
        if self.stage == 1:
            return {"annealing": losses.annealing_kd_loss(z_s, self.teacher_logits(x), self.phi)}
        return {"ce": cross_entropy(z_s, y)}
