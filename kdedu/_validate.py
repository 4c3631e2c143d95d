"""Input validation shared by kdedu.losses, kdedu.kernels and kdedu.methods: the one leaf module they all import.

Every check raises ``TypeError`` (wrong kind) or ``ValueError`` (wrong value) with a message that names
the argument and says what was expected; nothing is silently broadcast. It imports only torch.
"""

from __future__ import annotations

import math
import numbers

import torch

__all__ = ["REDUCTIONS", "check_logits", "check_pair", "check_temperature", "check_unit_interval",
           "check_reduction", "check_integer", "check_mask", "check_indices", "check_targets",
           "check_target_indices", "check_nonnegative"]

REDUCTIONS = ("batchmean", "sum", "none")


# --------------------------------------------------------------------------------------------
# checks of tensors and numbers
# --------------------------------------------------------------------------------------------
def check_logits(name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of logits, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (logits), got dtype {x.dtype}")
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"{name} must have shape [..., C] with C >= 1, got {tuple(x.shape)}")


def check_pair(student_logits, teacher_logits) -> None:
    check_logits("student_logits", student_logits)
    check_logits("teacher_logits", teacher_logits)
    if student_logits.shape != teacher_logits.shape:
        s, t = tuple(student_logits.shape), tuple(teacher_logits.shape)
        what = "class counts" if s[:-1] == t[:-1] else "shapes"
        raise ValueError(
            f"student_logits and teacher_logits must have the same shape, got {s} and {t} "
            f"(mismatched {what}; kdedu never broadcasts)"
        )


def check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a positive number, got {type(temperature).__name__}")
    t = float(temperature)
    if not (t > 0 and math.isfinite(t)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return t


def check_unit_interval(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1], got {type(value).__name__}")
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return v


def check_reduction(reduction) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_integer(name: str, value) -> int:
    """A Python integer (``ignore_index``, ``k``, a count); bools are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    return int(value)


def check_positive_int(name: str, value) -> int:
    """A Python integer >= 1 (a size, a count); bools are refused, with a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_device(name: str, x: torch.Tensor, device) -> None:
    if device is not None and x.device != torch.device(device):
        raise ValueError(f"{name} is on {x.device} but the logits are on {device}")


def check_mask(mask, shape: tuple, name: str = "mask", device=None) -> torch.Tensor | None:
    """``None``, or a bool tensor of exactly ``shape`` (the rows: the logits without the class dimension),
    on ``device`` if given. True = use the row. Returned unchanged."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = f"dtype {mask.dtype}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"{name} must be a bool tensor (True = use the row), got {got}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (the logits without the class dimension), "
                         f"got {tuple(mask.shape)}")
    _check_device(name, mask, device)
    return mask


def check_indices(name: str, x, shape: tuple | None, num_classes: int | None = None,
                  ignore_index: int | None = None, shape_of: str = "the logits without the class dimension",
                  device=None) -> None:
    """An integer tensor of class indices of exactly ``shape`` (``None``: any), each in ``[0, num_classes)``
    or equal to ``ignore_index``. ``num_classes=None`` skips the range check (which waits for the device)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(x).__name__}")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of class indices, got dtype {x.dtype}")
    if shape is not None and tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} ({shape_of}), got {tuple(x.shape)}")
    _check_device(name, x, device)
    if num_classes is None or x.numel() == 0:
        return
    bad = (x < 0) | (x >= num_classes)
    if ignore_index is not None:
        bad &= x != ignore_index
    if bad.any():
        allowed = "" if ignore_index is None else f" (or equal ignore_index={ignore_index})"
        raise ValueError(f"{name} must lie in [0, {num_classes - 1}]{allowed}, got {int(x[bad][0])}")


def check_targets(targets, logits, ignore_index: int | None = None) -> None:
    """Class indices, one per row of ``logits`` ``[..., C]``: in ``[0, C)`` or equal to ``ignore_index``."""
    check_indices("targets", targets, tuple(logits.shape[:-1]), logits.shape[-1], ignore_index,
                  device=logits.device)


def check_target_indices(targets, shape: tuple, num_classes: int) -> None:
    check_indices("targets", targets, shape, num_classes)


def check_nonnegative(name: str, value) -> float:
    """A finite number >= 0 (a loss weight)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number >= 0, got {type(value).__name__}")
    v = float(value)
    if not (v >= 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v
