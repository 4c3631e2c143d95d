"""Measuring a KD loss: memory traffic, memory held for the backward pass, time, bandwidth.

Used by ``benchmarks/kd_loss.py`` and chapter 19. Nothing here is timed in the unit tests.

* :func:`eager_kd_loss` — the loss as most code writes it: ``kl_div(log_softmax(s/T), log_softmax(t/T))``;
  :func:`eager_reverse_kd_loss` and :func:`eager_generalized_jsd_loss` — the reverse KL and GKD's JSD the
  same way (the JSD as TRL writes it), the eager baselines of the fused divergences.
* :func:`traffic` — every ATen operator that forward + backward run, with the bytes it reads and writes
  (each operand counted once: a lower bound on the real memory traffic).
* :func:`held_bytes` — the bytes kept alive between the forward and the backward pass (saved tensors,
  not counting the inputs themselves).
* :func:`time_ms`, :func:`peak_bandwidth`, :func:`copy_bandwidth` — timing and the bandwidth roof.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["eager_kd_loss", "eager_reverse_kd_loss", "eager_generalized_jsd_loss", "OpTraffic", "traffic",
           "held_bytes", "time_ms", "peak_bandwidth", "copy_bandwidth", "fused_bytes_per_logit",
           "GPU_PEAK_BANDWIDTH"]

# Peak DRAM bandwidth in bytes/s from NVIDIA's data sheets, matched against torch.cuda.get_device_name()
# (first match wins, so more specific names come first).
GPU_PEAK_BANDWIDTH: list[tuple[str, float, str]] = [
    ("H200", 4.8e12, "H200 (HBM3e, 4.8 TB/s)"),
    ("H100 NVL", 3.9e12, "H100 NVL (3.9 TB/s)"),
    ("H100 PCIe", 2.0e12, "H100 PCIe (2.0 TB/s)"),
    ("H100", 3.35e12, "H100 SXM (HBM3, 3.35 TB/s)"),
    ("A100-SXM4-80GB", 2.039e12, "A100 SXM 80GB (2.039 TB/s)"),
    ("A100 80GB PCIe", 1.935e12, "A100 PCIe 80GB (1.935 TB/s)"),
    ("A100", 1.555e12, "A100 40GB (1.555 TB/s)"),
    ("L40S", 864e9, "L40S (864 GB/s)"),
    ("A10", 600e9, "A10/A10G (600 GB/s)"),
    ("L4", 300e9, "L4 (300 GB/s)"),
    ("T4", 320e9, "T4 (320 GB/s)"),
    ("V100", 900e9, "V100 (900 GB/s)"),
]


def eager_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0):
    """``T^2 KL(p_t || p_s)`` written the usual eager way (``kl_div`` on two ``log_softmax``), batchmean."""
    t = temperature
    log_p_s = F.log_softmax(student_logits / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits / t, dim=-1)
    v = student_logits.shape[-1]
    return F.kl_div(log_p_s.reshape(-1, v), log_p_t.reshape(-1, v), reduction="batchmean", log_target=True) * t * t


def eager_reverse_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0):
    """``T^2 KL(p_s || p_t)`` the eager way (``kl_div`` with the two ``log_softmax`` exchanged), batchmean."""
    return eager_kd_loss(teacher_logits, student_logits, temperature)


def eager_generalized_jsd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5,
                               temperature: float = 1.0):
    """GKD's ``beta KL(p_t || m) + (1 - beta) KL(p_s || m)``, ``m = beta p_t + (1 - beta) p_s``, ``0 < beta < 1``,
    no ``T^2``, batchmean, written as TRL writes it (``log m`` by a ``logsumexp`` over a stacked pair)."""
    v = student_logits.shape[-1]
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1).reshape(-1, v)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=-1).reshape(-1, v)
    log_m = torch.logsumexp(torch.stack([log_p_s + math.log1p(-beta), log_p_t + math.log(beta)]), dim=0)
    kl_t = F.kl_div(log_m, log_p_t, reduction="batchmean", log_target=True)
    kl_s = F.kl_div(log_m, log_p_s, reduction="batchmean", log_target=True)
    return beta * kl_t + (1.0 - beta) * kl_s


@dataclass
class OpTraffic:
    """One ATen operator call: its name and the bytes of its tensor inputs and outputs."""

    name: str
    read: int
    written: int
    largest: int  # elements of its largest operand
    phase: str = "forward"  # or "backward"

    @property
    def bytes(self) -> int:
        return self.read + self.written


class _TrafficMode(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[OpTraffic] = []
        self.phase = "forward"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:  # views move no data
            ins = {id(a): a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)}
            outs = [a for a in tree_flatten(out)[0] if isinstance(a, torch.Tensor)]
            sizes = [a.numel() for a in (*ins.values(), *outs)] or [0]
            self.ops.append(OpTraffic(func.overloadpacket.__name__,
                                      sum(a.numel() * a.element_size() for a in ins.values()),
                                      sum(a.numel() * a.element_size() for a in outs), max(sizes), self.phase))
        return out


def traffic(loss_fn: Callable, *inputs: torch.Tensor) -> list[OpTraffic]:
    """Run ``loss_fn(*inputs)`` and its backward pass, and list every ATen operator that ran.

    Each operator's traffic is the size of its tensor operands (inputs read once, outputs written once).
    Real kernels can move more (a softmax over a long row reads its input more than once), so the sum is a
    lower bound. Custom operators (the fused loss) appear as one call.
    """
    mode = _TrafficMode()
    with mode:
        loss = loss_fn(*inputs)
        mode.phase = "backward"
        loss.backward()
    return mode.ops


def held_bytes(loss_fn: Callable, *inputs: torch.Tensor) -> int:
    """Bytes that ``loss_fn(*inputs)`` keeps alive for its backward pass (saved tensors, each storage once),
    not counting the storages of ``inputs`` themselves (the caller holds those anyway)."""
    own = {x.untyped_storage().data_ptr() for x in inputs if isinstance(x, torch.Tensor)}
    seen: dict[int, int] = {}

    def pack(x):
        ptr = x.untyped_storage().data_ptr()
        if ptr not in own:
            seen[ptr] = x.untyped_storage().nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss_fn(*inputs)
    return sum(seen.values())


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], reps: int = 10, warmup: int = 2, device="cpu") -> float:
    """Median wall time of ``fn()`` in milliseconds (synchronising the GPU around each call)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_bandwidth(device=None) -> tuple[float | None, str]:
    """The data-sheet DRAM bandwidth of a CUDA device in bytes/s and a label, or ``(None, reason)``."""
    if not torch.cuda.is_available():
        return None, "no GPU"
    name = torch.cuda.get_device_name(device)
    for key, bw, label in GPU_PEAK_BANDWIDTH:
        if key in name:
            return bw, label
    return None, f"{name} (peak bandwidth unknown to kdedu)"


def copy_bandwidth(device="cuda", nbytes: int = 1 << 30, reps: int = 10) -> float:
    """Measured bandwidth of a device-to-device copy, in bytes/s (each byte read once and written once)."""
    n = nbytes // 4
    x = torch.empty(n, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    ms = time_ms(lambda: y.copy_(x), reps=reps, warmup=2, device=device)
    return 2 * n * 4 / (ms / 1e3)


def fused_bytes_per_logit(element_size: int, second_read: bool = False, teacher_grad: bool = False,
                          sweeps: int = 2) -> int:
    """The memory traffic of the fused loss per logit, forward + backward.

    Forward: read s and t, write d loss/d s (and d loss/d t if the teacher needs a gradient); if the
    row does not fit in one tile and misses the cache, s and t are read again at each later sweep
    (``sweeps``: 2 for the KD loss and the reverse KL, 3 for the generalized JSD). Backward: read the
    gradient and write it scaled.
    """
    grads = 2 if teacher_grad else 1
    reads = 2 * (sweeps if second_read else 1)
    return element_size * (reads + grads + 2 * grads)
