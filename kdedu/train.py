"""The one training loop. Every method in kdedu is a :class:`Distiller` driven by :func:`fit`.

A ``Distiller`` is an ``nn.Module`` holding a ``student`` (and usually a frozen ``teacher``).
Its ``forward(x, y)`` returns a dict of *named, already weighted* loss terms; ``fit`` minimises
their sum, logs each one, evaluates the student after every epoch and returns a :class:`History`.
A method with a schedule (annealing, a changing temperature) overrides :meth:`Distiller.on_epoch_start`.
"""

from __future__ import annotations

import io
import os
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from kdedu._io import atomic_write

__all__ = ["Distiller", "History", "fit", "evaluate", "predict", "seed_everything", "default_device"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so a run can be repeated."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    """CUDA when available, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class Distiller(nn.Module):
    """Base class: a student, an optional frozen teacher, and ``forward(x, y) -> {name: loss term}``.

    The teacher is frozen (``requires_grad=False``) and kept in eval mode even when the distiller
    is put in training mode, so its dropout/BatchNorm statistics never move.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None):
        super().__init__()
        if not isinstance(student, nn.Module):
            raise TypeError(f"student must be a torch.nn.Module, got {type(student).__name__}")
        if teacher is not None and not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher must be a torch.nn.Module or None, got {type(teacher).__name__}")
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        raise TypeError(f"{type(self).__name__} must override forward(x, y) to return its loss terms")

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.teacher is None:
            raise RuntimeError(f"{type(self).__name__} has no teacher")
        return self.teacher(x)

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        """Hook called by :func:`fit` before each epoch (0-based): schedules live here."""

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """What the optimiser updates: everything that requires grad (the teacher is frozen)."""
        return (p for p in self.parameters() if p.requires_grad)


@dataclass
class History:
    """Per-epoch records of a run: mean loss terms, validation metrics and wall time."""

    epochs: list[dict] = field(default_factory=list)

    def __getitem__(self, key: str) -> list:
        return [e.get(key) for e in self.epochs]

    def __len__(self) -> int:
        return len(self.epochs)

    @property
    def last(self) -> dict:
        return self.epochs[-1] if self.epochs else {}

    def keys(self) -> list[str]:
        out: list[str] = []
        for e in self.epochs:
            out += [k for k in e if k not in out]
        return out


def _as_model(model) -> nn.Module:
    return model.student if isinstance(model, Distiller) else model


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of a whole loader, on the CPU: ``(N, C)``, ``(N,)``."""
    model = _as_model(model)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for x, y in loader:
        logits.append(model(x.to(device)).float().cpu())
        labels.append(y)
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def evaluate(model: nn.Module, loader: DataLoader, device=None) -> dict[str, float]:
    """Accuracy and mean cross-entropy of a model (or a distiller's student) on a loader."""
    logits, y = predict(model, loader, device)
    return {"acc": (logits.argmax(-1) == y).float().mean().item(), "loss": F.cross_entropy(logits, y).item()}


def _atomic_save(obj, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False)


def fit(
    distiller: Distiller,
    train_loader: DataLoader,
    val_loader: DataLoader | None = None,
    num_epochs: int = 10,
    lr: float = 1e-3,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    cosine: bool = False,
    seed: int | None = 0,
    device=None,
    checkpoint: str | os.PathLike | None = None,
    progress: bool | None = None,
    desc: str | None = None,
) -> History:
    """Train ``distiller`` (its trainable parameters: the student, plus any learned projections).

    Args:
        distiller: a :class:`Distiller`; ``forward(x, y)`` returns weighted loss terms to sum.
        train_loader, val_loader: batches of ``(x, y)``; the student is evaluated on ``val_loader``
            after every epoch (``val_acc``, ``val_loss`` in the history).
        num_epochs, lr, weight_decay: the usual; ``optimizer`` is ``"adam"`` (AdamW) or ``"sgd"``
            (with ``momentum``); ``cosine`` anneals the learning rate to 0 over the run.
        seed: seeds everything before training (``None`` leaves the RNGs alone).
        device: default :func:`default_device`; the teacher moves with the distiller.
        checkpoint: a file path; the state is written there atomically after every epoch and a
            run with the same path resumes from it instead of starting over.
        progress: show a ``tqdm`` bar (default: on, unless ``$KDEDU_PROGRESS=0``).
    """
    if not isinstance(distiller, Distiller):
        raise TypeError(f"distiller must be a kdedu.train.Distiller, got {type(distiller).__name__} "
                        f"(wrap a plain model in kdedu.methods.Supervised)")
    if isinstance(num_epochs, bool) or not isinstance(num_epochs, int) or num_epochs < 0:
        raise ValueError(f"num_epochs must be a non-negative integer, got {num_epochs!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    if seed is not None:
        seed_everything(seed)
    device = torch.device(device) if device is not None else default_device()
    distiller.to(device)
    params = list(distiller.trainable_parameters())
    if optimizer == "adam":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(num_epochs, 1)) if cosine else None
    history, start = History(), 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        distiller.load_state_dict(state["distiller"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None and state.get("scheduler"):
            sched.load_state_dict(state["scheduler"])
        history, start = History(state["history"]), state["epoch"]
        torch.set_rng_state(state["rng"])
    if progress is None:
        progress = os.environ.get("KDEDU_PROGRESS", "1") != "0"
    bar = _progress(range(start, num_epochs), progress, desc or type(distiller).__name__)
    for epoch in bar:
        distiller.on_epoch_start(epoch, num_epochs)
        distiller.train()
        t0, sums, n = time.perf_counter(), {}, 0
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            terms = distiller(x, y)
            loss = sum(terms.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.item() * len(y)
            n += len(y)
        if sched is not None:
            sched.step()
        record = {"epoch": epoch + 1, **{k: v / max(n, 1) for k, v in sums.items()}}
        record["loss"] = sum(v for k, v in record.items() if k != "epoch")
        if val_loader is not None:
            metrics = evaluate(distiller, val_loader, device)
            record["val_acc"], record["val_loss"] = metrics["acc"], metrics["loss"]
        record["time_s"] = time.perf_counter() - t0
        history.epochs.append(record)
        if progress and hasattr(bar, "set_postfix"):
            bar.set_postfix({k: round(v, 4) for k, v in record.items() if k in ("loss", "val_acc")})
        if ckpt is not None:
            _atomic_save({"distiller": distiller.state_dict(), "optimizer": opt.state_dict(),
                          "scheduler": sched.state_dict() if sched else None, "epoch": epoch + 1,
                          "history": history.epochs, "rng": torch.get_rng_state()}, ckpt)
    distiller.eval()
    return history
