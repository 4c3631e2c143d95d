"""Size and speed of a model, measured rather than quoted."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (each shared tensor counted once)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


@torch.no_grad()
def cpu_latency(model: nn.Module, example: torch.Tensor, repeats: int = 50, warmup: int = 5,
                num_threads: int | None = 1) -> dict:
    """Median and spread of the CPU inference time of ``model(example)``, in milliseconds.

    The model runs in eval mode on a CPU copy of ``example``; ``num_threads=1`` (default) measures
    single-core latency, the usual figure for on-device inference, and is steadier on a shared
    machine. Returns ``{"median_ms", "p10_ms", "p90_ms", "repeats"}``.
    """
    if not isinstance(example, torch.Tensor):
        raise TypeError(f"example must be a torch.Tensor input, got {type(example).__name__}")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    was_training = model.training
    device = next(model.parameters(), torch.empty(0)).device
    model = model.cpu().eval()
    x = example.cpu()
    old_threads = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(old_threads)
        model.train(was_training).to(device)
    q = statistics.quantiles(times, n=10) if len(times) > 1 else [times[0]] * 9
    return {"median_ms": statistics.median(times), "p10_ms": q[0], "p90_ms": q[-1], "repeats": repeats}
