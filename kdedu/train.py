"""The one training loop. Every method in kdedu is a :class:`Distiller` driven by :func:`fit`.

A ``Distiller`` is an ``nn.Module`` holding a ``student`` (and usually a frozen ``teacher``).
Its ``forward(inputs, labels)`` returns a dict of *named, already weighted* loss terms; ``fit`` minimises
their sum, logs each one, evaluates the student after every epoch and returns a :class:`History`.
A method with a schedule (annealing, a changing temperature) overrides :meth:`Distiller.on_epoch_start`.

Batches are ``(x, y)`` tuples or Hugging Face-style dicts (``input_ids``, ``attention_mask``, ``labels``,
``-100`` = ignored); :mod:`kdedu.outputs` splits them into ``(inputs, labels)`` and reads any model's logits.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
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

from kdedu import outputs
from kdedu._io import atomic_write

__all__ = ["Distiller", "History", "fit", "evaluate", "predict", "seed_everything", "default_device", "lr_factor"]

IGNORE_INDEX = -100  # Hugging Face's label for "no target here"
SCHEDULES = ("constant", "linear", "cosine")
PRECISIONS = ("fp32", "bf16")
CHECKPOINT_FORMAT = 2  # 2: full RNG state (Python, NumPy, torch CPU/CUDA, the loaders' generators)


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
    """Base class: a student, an optional frozen teacher, and ``forward(inputs, labels) -> {name: loss term}``.

    ``inputs`` is what the model takes (a tensor, or a dict of keyword arguments such as ``input_ids`` and
    ``attention_mask``); ``labels`` the targets (or None). The teacher is frozen (``requires_grad=False``) and
    kept in eval mode even when the distiller is put in training mode, so its dropout/BatchNorm statistics
    never move.
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

    def forward(self, inputs, labels) -> dict[str, torch.Tensor]:
        raise TypeError(f"{type(self).__name__} must override forward(inputs, labels) to return its loss terms")

    @torch.no_grad()
    def teacher_logits(self, inputs) -> torch.Tensor:
        """The frozen teacher's logits on ``inputs`` (a tensor or a dict of model kwargs)."""
        if self.teacher is None:
            raise RuntimeError(f"{type(self).__name__} has no teacher")
        return outputs.run(self.teacher, inputs).require_logits("the teacher")

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        """Hook called by :func:`fit` before each epoch (0-based): schedules live here."""

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """What the optimiser updates: everything that requires grad (the teacher is frozen)."""
        return (p for p in self.parameters() if p.requires_grad)


@dataclass
class History:
    """Per-epoch records of a run: mean loss terms, learning rate, validation metrics and wall time."""

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


# ------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------
def _as_model(model) -> nn.Module:
    return model.student if isinstance(model, Distiller) else model


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device=None,
            causal_lm: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits and labels of a whole loader, on the CPU.

    A classifier gives ``(N, C)`` logits and ``(N,)`` labels (None if the batches have none). Token-level
    logits ``(B, L, C)`` with labels ``(B, L)`` give one row per labelled token: ``(n, C)`` and ``(n,)``,
    tokens labelled ``-100`` dropped. ``causal_lm=True`` scores position ``i`` against token ``i + 1``.
    """
    model = _as_model(model)
    first = next(model.parameters(), None)
    device = torch.device(device) if device is not None else (first.device if first is not None else "cpu")
    was_training = model.training
    model.eval()
    all_logits, all_labels = [], []
    for batch in loader:
        inputs, y = outputs.split_batch(batch)
        z = outputs.run(model, outputs.to_device(inputs, device)).require_logits().float().cpu()  # (B, C) | (B, L, C)
        if causal_lm:
            z, y = z[:, :-1], (y[:, 1:] if y is not None else None)  # position i predicts token i + 1
        if y is not None and z.dim() > 2:                    # token-level: keep the labelled tokens
            keep = y != IGNORE_INDEX                         # (B, L)
            z, y = z[keep], y[keep]                          # (n, C), (n,)
        all_logits.append(z)
        all_labels.append(y)
    model.train(was_training)
    labels = torch.cat(all_labels) if all_labels and all_labels[0] is not None else None
    return torch.cat(all_logits), labels


def evaluate(model: nn.Module, loader: DataLoader, device=None, causal_lm: bool = False) -> dict[str, float]:
    """Accuracy and mean cross-entropy of a model (or a distiller's student) on a loader, over the labels
    that are not ``-100``."""
    logits, y = predict(model, loader, device, causal_lm)
    if y is None:
        raise ValueError("evaluate needs labels: the loader's batches have none (no y, no 'labels' entry)")
    if not y.is_floating_point():
        keep = y != IGNORE_INDEX
        logits, y = logits[keep], y[keep]
    return {"acc": (logits.argmax(-1) == y).float().mean().item(), "loss": F.cross_entropy(logits, y).item()}


# ------------------------------------------------------------------------------------------
# the learning-rate schedule, per optimiser step
# ------------------------------------------------------------------------------------------
def lr_factor(step: int, total_steps: int, warmup_steps: int = 0, schedule: str = "constant") -> float:
    """The multiplier of ``lr`` for optimiser step ``step`` (0-based), as in Hugging Face's schedules.

    Warmup: ``step / warmup_steps`` for ``step < warmup_steps`` (from 0). After it, with
    ``p = (step - warmup_steps) / (total_steps - warmup_steps)`` the fraction of the decay done:
    ``"constant"`` 1, ``"linear"`` ``1 - p``, ``"cosine"`` ``(1 + cos(pi p)) / 2``; both reach 0 at ``total_steps``.
    """
    if step < warmup_steps:
        return step / warmup_steps
    if schedule == "constant":
        return 1.0
    p = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return 1.0 - p if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * p))


# ------------------------------------------------------------------------------------------
# checkpoints: everything a resumed run needs to continue bit for bit
# ------------------------------------------------------------------------------------------
def _generators(loaders) -> list[torch.Generator]:
    """The ``torch.Generator`` objects that order these loaders' batches (a seeded ``DataLoader``'s, its
    sampler's, a batch sampler's such as :class:`kdedu.data.text.LengthGroupedBatches`), each once."""
    found: list[torch.Generator] = []
    for loader in loaders:
        for owner in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
            g = getattr(owner, "generator", None)
            if isinstance(g, torch.Generator) and not any(g is f for f in found):
                found.append(g)
    return found


def _rng_state(loaders) -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "loaders": [g.get_state() for g in _generators(loaders)]}


def _set_rng_state(state: dict, loaders) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    generators = _generators(loaders)
    if len(generators) != len(state["loaders"]):
        raise ValueError(f"checkpoint: it was written with {len(state['loaders'])} seeded loader generator(s), "
                         f"these loaders have {len(generators)}; resume with the same loaders")
    for g, s in zip(generators, state["loaders"], strict=True):
        g.set_state(s.cpu())


def _save_checkpoint(path: Path, distiller, opt, sched, epoch: int, history: History, loaders) -> None:
    state = {"format": CHECKPOINT_FORMAT, "distiller": distiller.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "epoch": epoch, "history": history.epochs, "rng": _rng_state(loaders)}
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())


def _load_checkpoint(path: Path, distiller, opt, sched, loaders) -> tuple[History, int]:
    """Restore a run from ``path``; returns its history and the number of epochs it had finished."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path} was written by an older kdedu (no full RNG state): delete it to "
                         f"start over")
    distiller.load_state_dict(state["distiller"])
    opt.load_state_dict(state["optimizer"])  # moves its state to the parameters' device
    sched.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"], loaders)
    return History(state["history"]), state["epoch"]


# ------------------------------------------------------------------------------------------
# fit
# ------------------------------------------------------------------------------------------
def _check_fit_arguments(distiller, num_epochs, lr, optimizer, schedule, warmup_steps, grad_accum_steps,
                         max_grad_norm, precision) -> None:
    if not isinstance(distiller, Distiller):
        raise TypeError(f"distiller must be a kdedu.train.Distiller, got {type(distiller).__name__} "
                        f"(wrap a plain model in kdedu.methods.Supervised)")
    for name, value, low in (("num_epochs", num_epochs, 0), ("warmup_steps", warmup_steps, 0),
                             ("grad_accum_steps", grad_accum_steps, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if max_grad_norm is not None and (isinstance(max_grad_norm, bool) or not isinstance(max_grad_norm, (int, float))
                                      or not max_grad_norm > 0):
        raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def _make_optimizer(name: str, params, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _autocast(precision: str):
    """bf16: the forward pass runs under CUDA autocast (matmuls in bfloat16, reductions in float32)."""
    if precision == "bf16":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
    schedule: str = "constant",
    warmup_steps: int = 0,
    grad_accum_steps: int = 1,
    max_grad_norm: float | None = None,
    precision: str = "fp32",
    seed: int | None = 0,
    device=None,
    checkpoint: str | os.PathLike | None = None,
    progress: bool | None = None,
    desc: str | None = None,
) -> History:
    """Train ``distiller`` (its trainable parameters: the student, plus any learned projections).

    Args:
        distiller: a :class:`Distiller`; ``forward(inputs, labels)`` returns weighted loss terms to sum.
        train_loader, val_loader: batches of ``(x, y)`` or dicts (``input_ids``, ``attention_mask``,
            ``labels``); the student is evaluated on ``val_loader`` after every epoch (``val_acc``,
            ``val_loss`` in the history, over the labels that are not ``-100``).
        num_epochs, lr, weight_decay: the usual; ``optimizer`` is ``"adam"`` (AdamW) or ``"sgd"``
            (with ``momentum``).
        schedule: the learning rate per optimiser step: ``"constant"``, or ``"linear"`` / ``"cosine"`` decay
            to 0 at the last step; ``warmup_steps`` first ramp it up linearly from 0 (see :func:`lr_factor`).
        grad_accum_steps: accumulate the gradients of this many batches (each loss divided by the number
            of batches in its group) before one optimiser step; a last, smaller group still steps.
        max_grad_norm: clip the global L2 norm of the trainable parameters' gradients before each step.
        precision: ``"fp32"``, or ``"bf16"``: the forward pass under CUDA autocast in bfloat16 (CUDA only).
        seed: seeds everything before training (``None`` leaves the RNGs alone).
        device: default :func:`default_device`; the teacher moves with the distiller.
        checkpoint: a file path; after every epoch the weights, optimiser, scheduler, history and every
            random state (Python, NumPy, torch CPU and CUDA, the loaders' generators) are written there
            atomically, and a run with the same path resumes from it, continuing exactly as if never stopped.
        progress: show a ``tqdm`` bar over epochs (default: on, unless ``$KDEDU_PROGRESS=0``).

    The history has, per epoch: each loss term's mean over the examples, ``loss`` (their sum), ``lr`` (of the
    epoch's last step), ``val_acc``/``val_loss`` and ``time_s``.
    """
    _check_fit_arguments(distiller, num_epochs, lr, optimizer, schedule, warmup_steps, grad_accum_steps,
                         max_grad_norm, precision)
    if seed is not None:
        seed_everything(seed)
    device = torch.device(device) if device is not None else default_device()
    if precision == "bf16" and device.type != "cuda":
        raise ValueError(f"precision='bf16' runs the forward pass under CUDA autocast and needs a CUDA device, "
                         f"got device {device}; use precision='fp32'")
    distiller.to(device)
    params = list(distiller.trainable_parameters())
    opt = _make_optimizer(optimizer, params, lr, weight_decay, momentum)
    num_batches = len(train_loader)
    total_steps = num_epochs * -(-num_batches // grad_accum_steps)  # optimiser steps (updates) in the run
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, functools.partial(lr_factor, total_steps=total_steps, warmup_steps=warmup_steps, schedule=schedule))
    loaders = [dl for dl in (train_loader, val_loader) if dl is not None]
    history, start = History(), 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.exists():
        history, start = _load_checkpoint(ckpt, distiller, opt, sched, loaders)
    if progress is None:
        progress = os.environ.get("KDEDU_PROGRESS", "1") != "0"
    bar = _progress(range(start, num_epochs), progress, desc or type(distiller).__name__)
    for epoch in bar:
        distiller.on_epoch_start(epoch, num_epochs)
        distiller.train()
        t0, sums, n = time.perf_counter(), {}, 0    # sums: on-device, detached (term x batch size) totals
        last_lr = opt.param_groups[0]["lr"]         # the lr of the epoch's last optimiser step, for the history
        opt.zero_grad(set_to_none=True)
        for i, batch in enumerate(train_loader):
            inputs, labels = outputs.split_batch(batch)
            inputs, labels = outputs.to_device(inputs, device), outputs.to_device(labels, device)
            with _autocast(precision):
                terms = distiller(inputs, labels)   # {name: scalar}, already weighted
            group_start = i - i % grad_accum_steps
            group_size = min(grad_accum_steps, num_batches - group_start)  # batches in this accumulation group
            (sum(terms.values()) / group_size).backward()
            if i + 1 == group_start + group_size:   # the group's last batch: one optimiser step
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                last_lr = opt.param_groups[0]["lr"]
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
            size = outputs.batch_size(inputs, labels)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float() * size
            n += size
        record = {"epoch": epoch + 1, **{k: v.item() / max(n, 1) for k, v in sums.items()}}  # one sync per term
        record["loss"] = sum(v for k, v in record.items() if k != "epoch")
        record["lr"] = last_lr
        if val_loader is not None:
            metrics = evaluate(distiller, val_loader, device, getattr(distiller, "causal_lm", False))
            record["val_acc"], record["val_loss"] = metrics["acc"], metrics["loss"]
        record["time_s"] = time.perf_counter() - t0
        history.epochs.append(record)
        if progress and hasattr(bar, "set_postfix"):
            bar.set_postfix({k: round(v, 4) for k, v in record.items() if k in ("loss", "val_acc")})
        if ckpt is not None:
            _save_checkpoint(ckpt, distiller, opt, sched, epoch + 1, history, loaders)
    distiller.eval()
    return history
