"""The fused losses as PyTorch custom operators: dispatch, autograd and fake (meta) implementations.

Four operators, registered with :func:`torch.library.custom_op` so that ``torch.compile`` treats each as
one opaque node (with a fake implementation for tracing) and autograd uses the gradient computed in the
forward pass:

* ``kdedu::kd_rows(student, teacher, keep, T, ...)`` -> per-row KD losses and their gradients (called with
  the two logits swapped, it is the reverse KL);
* ``kdedu::jsd_rows(student, teacher, keep, beta, T, ...)`` -> per-row generalized JSD and its gradients;
* ``kdedu::scale_rows(grad, scale)`` -> ``grad * scale[:, None]`` (the whole backward pass);
* ``kdedu::linear_kd(...)`` -> the summed KD loss of two linear projections, chunked over tokens,
  with the gradients of the hidden states and weights.

Where each one runs (:func:`backend`): CUDA tensors use the Triton kernel; CPU tensors use the chunked
PyTorch reference, or the Triton kernel in Triton's interpreter when ``TRITON_INTERPRET=1`` was set
before the first use. ``KDEDU_KERNELS=pytorch`` forces the reference everywhere; float64 inputs always
use it (the kernel computes in float32).
"""

import importlib
import os

import torch
from torch import Tensor

from kdedu.kernels.reference import jsd_rows_chunk, jsd_rows_reference, kd_rows_reference, scale_rows_reference

if not hasattr(torch.library, "custom_op"):  # added in torch 2.4
    raise ImportError(f"kdedu.kernels needs torch >= 2.4 (torch.library.custom_op); this is torch {torch.__version__}")

__all__ = ["backend", "triton_status", "kd_rows", "jsd_rows", "scale_rows", "linear_kd"]

_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_triton_module = None  # kdedu.kernels.triton_kd once loaded
_triton_jsd = None     # kdedu.kernels.triton_jsd
_triton_error: str | None = None


def _load_triton():
    """The Triton KD kernel module, imported on first use with the JSD one (None, with the reason kept, if
    Triton is missing)."""
    global _triton_module, _triton_jsd, _triton_error
    if _triton_module is None and _triton_error is None:
        try:
            kd = importlib.import_module("kdedu.kernels.triton_kd")
            _triton_jsd = importlib.import_module("kdedu.kernels.triton_jsd")
            _triton_module = kd
        except Exception as err:  # no triton (macOS, Windows), or a broken install: the reference still works
            _triton_error = f"{type(err).__name__}: {err}"
    return _triton_module


def triton_status() -> str:
    """One line: whether the Triton kernels are available here, and in which mode."""
    mod = _load_triton()
    if mod is None:
        return f"Triton unavailable ({_triton_error}); the PyTorch reference runs everywhere"
    if mod.INTERPRET:
        return "Triton interpreter (TRITON_INTERPRET=1): the kernels run on CPU tensors, in numpy"
    if torch.cuda.is_available():
        return "Triton available: the kernels run on CUDA tensors"
    return ("Triton installed, but no CUDA device: CPU tensors use the PyTorch reference "
            "(TRITON_INTERPRET=1, set before the first use, runs the kernels in Triton's interpreter)")


def backend(x: Tensor) -> str:
    """Where a fused loss on tensors like ``x`` runs: ``"triton"`` (a GPU), ``"triton-interpreter"``
    (CPU, ``TRITON_INTERPRET=1``) or ``"pytorch"`` (the chunked reference)."""
    if os.environ.get("KDEDU_KERNELS", "").lower() in ("pytorch", "reference") or x.dtype not in _TRITON_DTYPES:
        return "pytorch"
    if x.device.type == "cuda":
        return "triton" if _load_triton() is not None else "pytorch"
    if x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        mod = _load_triton()
        return "triton-interpreter" if mod is not None and mod.INTERPRET else "pytorch"
    return "pytorch"


def _unit_stride(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _loss_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(x.dtype == torch.float64 for x in tensors) else torch.float32


def _kd_rows_impl(student: Tensor, teacher: Tensor, keep: Tensor | None, temperature: float,
                  grad_student: bool, grad_teacher: bool):
    student, teacher = _unit_stride(student), _unit_stride(teacher)
    if backend(student) != "pytorch" and teacher.dtype in _TRITON_DTYPES:
        return _triton_module.kd_rows_triton(student, teacher, keep, temperature, grad_student, grad_teacher)
    return kd_rows_reference(student, teacher, keep, temperature, grad_student, grad_teacher)


# ------------------------------------------------------------------------------------------------
# kdedu::kd_rows
# ------------------------------------------------------------------------------------------------
@torch.library.custom_op("kdedu::kd_rows", mutates_args=())
def kd_rows(student: Tensor, teacher: Tensor, keep: Tensor | None, temperature: float,
            grad_student: bool, grad_teacher: bool, save_inputs: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row ``T^2 KL(softmax(t/T) || softmax(s/T))`` of ``[N, V]`` logits, and the gradients of each
    row's loss with respect to ``s`` and ``t`` (empty ``(0,)`` tensors where not asked for). ``keep``
    (bool ``(N,)``) skips rows: their loss and gradients are 0. ``save_inputs`` keeps references to the
    logits for an exact double backward."""
    loss, grad_s, grad_t = _kd_rows_impl(student, teacher, keep, temperature, grad_student, grad_teacher)
    return loss.to(_loss_dtype(student, teacher)), grad_s, grad_t


def _rows_fake(student, teacher, keep, *params_and_flags):
    """The fake (meta) implementation of every ``*_rows`` operator: a loss per row and two gradients."""
    grad_student, grad_teacher, _ = params_and_flags[-3:]
    loss = student.new_empty(student.shape[0], dtype=_loss_dtype(student, teacher))
    grad_s = torch.empty_like(student) if grad_student else student.new_empty(0)
    grad_t = torch.empty_like(teacher) if grad_teacher else teacher.new_empty(0)
    return loss, grad_s, grad_t


kd_rows.register_fake(_rows_fake)


def _rows_setup(ctx, inputs, output):
    """Autograd context of a ``*_rows`` operator ``(student, teacher, keep, *params, grad_student,
    grad_teacher, save_inputs)``: the gradients written in the forward pass (and the logits if asked)."""
    student, teacher, keep, *params, grad_student, grad_teacher, save_inputs = inputs
    _, grad_s, grad_t = output
    ctx.mark_non_differentiable(grad_s, grad_t)
    ctx.set_materialize_grads(False)  # no [N, V] zeros for the gradient outputs, which nothing differentiates
    ctx.params = tuple(params)
    ctx.flags = (grad_student, grad_teacher, save_inputs)
    ctx.save_for_backward(grad_s, grad_t, keep, student if save_inputs else None, teacher if save_inputs else None)


def _grads_differentiable(student, teacher, keep, temperature, g_rows, need_s, need_t):
    """The same gradients as the kernel's, written with differentiable PyTorch ops (for create_graph=True,
    e.g. MetaDistil's second-order update). Not chunked: it holds a few float32 copies of the logits."""
    cd = _loss_dtype(student, teacher)
    a, b = student.to(cd) / temperature, teacher.to(cd) / temperature
    if keep is not None:  # skipped rows may be all -inf: replace them before the softmax, so no nan appears
        a = torch.where(keep[:, None], a, torch.zeros((), dtype=cd, device=a.device))
        b = torch.where(keep[:, None], b, torch.zeros((), dtype=cd, device=b.device))
    log_pa, log_pb = torch.log_softmax(a, dim=-1), torch.log_softmax(b, dim=-1)
    p_b = log_pb.exp()
    w = g_rows.to(cd)[:, None]
    if keep is not None:
        w = w * keep[:, None]
    grad_s = (temperature * (log_pa.exp() - p_b) * w).to(student.dtype) if need_s else None
    grad_t = None
    if need_t:
        ratio = torch.where(p_b > 0, log_pb - log_pa, torch.zeros((), dtype=cd, device=b.device))
        kl = (p_b * ratio).sum(dim=-1, keepdim=True)
        grad_t = (temperature * p_b * (ratio - kl) * w).to(teacher.dtype)
    return grad_s, grad_t


def _rows_backward(grads_differentiable):
    """The backward pass of a ``*_rows`` operator: scale the gradients written in the forward pass, or, for
    a double backward (``create_graph=True``), ``grads_differentiable(student, teacher, keep, *params,
    g_rows, need_s, need_t)``, the same gradients written with differentiable PyTorch operations."""

    def backward(ctx, g_loss, _g_grad_s, _g_grad_t):
        grad_s, grad_t, keep, student, teacher = ctx.saved_tensors
        has_s, has_t, _ = ctx.flags
        need_s, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        nones = (None,) * (1 + len(ctx.params) + 3)  # keep, the parameters, the three flags
        if g_loss is None or not (need_s or need_t):
            return None, None, *nones
        missing = (need_s and not has_s) or (need_t and not has_t)  # a gradient the forward was not asked for
        if torch.is_grad_enabled() or missing:  # create_graph=True: the gradient itself must be differentiable
            if student is None:
                raise RuntimeError("this fused loss was called with double_backward=False, so it keeps no "
                                   "reference to its inputs: it cannot be differentiated twice (create_graph=True) "
                                   "nor give a gradient that the forward pass did not compute")
            out_s, out_t = grads_differentiable(student, teacher, keep, *ctx.params, g_loss, need_s, need_t)
        else:  # the usual case: the gradient was written in the forward pass, only scale it
            out_s = scale_rows(grad_s, g_loss) if need_s else None
            out_t = scale_rows(grad_t, g_loss) if need_t else None
        return out_s, out_t, *nones

    return backward


torch.library.register_autograd("kdedu::kd_rows", _rows_backward(_grads_differentiable), setup_context=_rows_setup)


# ------------------------------------------------------------------------------------------------
# kdedu::jsd_rows
# ------------------------------------------------------------------------------------------------
@torch.library.custom_op("kdedu::jsd_rows", mutates_args=())
def jsd_rows(student: Tensor, teacher: Tensor, keep: Tensor | None, beta: float, temperature: float,
             grad_student: bool, grad_teacher: bool, save_inputs: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row generalized JSD ``beta KL(p_t || m) + (1 - beta) KL(p_s || m)``, ``m = beta p_t + (1 - beta)
    p_s``, ``p = softmax(z / T)``, ``0 < beta < 1`` (no ``T^2``), of ``[N, V]`` logits, and its gradients;
    otherwise as ``kd_rows``."""
    student, teacher = _unit_stride(student), _unit_stride(teacher)
    if backend(student) != "pytorch" and teacher.dtype in _TRITON_DTYPES:
        loss, grad_s, grad_t = _triton_jsd.jsd_rows_triton(student, teacher, keep, beta, temperature,
                                                           grad_student, grad_teacher)
    else:
        loss, grad_s, grad_t = jsd_rows_reference(student, teacher, keep, beta, temperature, grad_student,
                                                  grad_teacher)
    return loss.to(_loss_dtype(student, teacher)), grad_s, grad_t


jsd_rows.register_fake(_rows_fake)


def _jsd_grads_differentiable(student, teacher, keep, beta, temperature, g_rows, need_s, need_t):
    """The JSD gradients of :func:`~kdedu.kernels.reference.jsd_rows_chunk` (differentiable PyTorch), scaled
    by the incoming per-row gradient. Not chunked."""
    _, grad_s, grad_t = jsd_rows_chunk(student, teacher, keep, beta, temperature, need_s, need_t)
    w = g_rows.to(_loss_dtype(student, teacher))[:, None]
    return (None if grad_s is None else (grad_s * w).to(student.dtype),
            None if grad_t is None else (grad_t * w).to(teacher.dtype))


torch.library.register_autograd("kdedu::jsd_rows", _rows_backward(_jsd_grads_differentiable),
                                setup_context=_rows_setup)


# ------------------------------------------------------------------------------------------------
# kdedu::scale_rows
# ------------------------------------------------------------------------------------------------
@torch.library.custom_op("kdedu::scale_rows", mutates_args=())
def scale_rows(grad: Tensor, scale: Tensor) -> Tensor:
    """``grad * scale[:, None]`` computed in float32 and stored in ``grad``'s dtype (one read, one write)."""
    grad = _unit_stride(grad)
    if backend(grad) != "pytorch":
        return _triton_module.scale_rows_triton(grad, scale)
    return scale_rows_reference(grad, scale)


@scale_rows.register_fake
def _(grad, scale):
    return torch.empty_like(grad)


# ------------------------------------------------------------------------------------------------
# kdedu::linear_kd
# ------------------------------------------------------------------------------------------------
def _empty_or(flag: bool, like: Tensor, zeros: bool = False) -> Tensor:
    if not flag:
        return like.new_empty(0)
    return torch.zeros_like(like) if zeros else torch.empty_like(like)


@torch.library.custom_op("kdedu::linear_kd", mutates_args=())
def linear_kd(student_hidden: Tensor, student_weight: Tensor, teacher_hidden: Tensor, teacher_weight: Tensor,
              keep: Tensor | None, temperature: float, chunk_size: int, grad_sh: bool, grad_sw: bool,
              grad_th: bool, grad_tw: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The summed KD loss of ``h_s @ W_s.T`` against ``h_t @ W_t.T`` (``[N, H]`` hidden states, ``[V, H]``
    weights), ``chunk_size`` tokens at a time: only ``[chunk_size, V]`` logits ever exist. Returns the loss
    and the gradients of the four inputs (empty where not asked for)."""
    return linear_kd_impl(student_hidden, student_weight, teacher_hidden, teacher_weight, keep, temperature,
                          chunk_size, grad_sh, grad_sw, grad_th, grad_tw)


def linear_kd_impl(student_hidden, student_weight, teacher_hidden, teacher_weight, keep, temperature,
                   chunk_size, grad_sh, grad_sw, grad_th, grad_tw):
    """The body of ``kdedu::linear_kd`` as a plain function (the tests watch its allocations)."""
    n = student_hidden.shape[0]
    loss = torch.zeros((), dtype=_loss_dtype(student_hidden, teacher_hidden), device=student_hidden.device)
    g_sh = _empty_or(grad_sh, student_hidden)
    g_sw = _empty_or(grad_sw, student_weight, zeros=True)
    g_th = _empty_or(grad_th, teacher_hidden)
    g_tw = _empty_or(grad_tw, teacher_weight, zeros=True)
    need_s, need_t = grad_sh or grad_sw, grad_th or grad_tw
    for i in range(0, n, chunk_size):
        j = min(i + chunk_size, n)
        hs, ht = student_hidden[i:j], teacher_hidden[i:j]          # (c, Hs), (c, Ht)
        zs, zt = hs @ student_weight.T, ht @ teacher_weight.T      # (c, V): the only logits that exist
        k = None if keep is None else keep[i:j]
        rows, gz_s, gz_t = _kd_rows_impl(zs, zt, k, temperature, need_s, need_t)
        loss += rows.sum()
        if grad_sh:
            torch.mm(gz_s, student_weight, out=g_sh[i:j])          # (c, V) @ (V, Hs)
        if grad_sw:
            g_sw.addmm_(gz_s.T, hs)                                # (V, c) @ (c, Hs), accumulated
        if grad_th:
            torch.mm(gz_t, teacher_weight, out=g_th[i:j])
        if grad_tw:
            g_tw.addmm_(gz_t.T, ht)
    return loss, g_sh, g_sw, g_th, g_tw


@linear_kd.register_fake
def _(student_hidden, student_weight, teacher_hidden, teacher_weight, keep, temperature, chunk_size,
      grad_sh, grad_sw, grad_th, grad_tw):
    loss = student_hidden.new_empty((), dtype=_loss_dtype(student_hidden, teacher_hidden))
    return (loss, _empty_or(grad_sh, student_hidden), _empty_or(grad_sw, student_weight),
            _empty_or(grad_th, teacher_hidden), _empty_or(grad_tw, teacher_weight))


def _linear_kd_setup(ctx, inputs, output):
    _, g_sh, g_sw, g_th, g_tw = output
    ctx.mark_non_differentiable(g_sh, g_sw, g_th, g_tw)
    ctx.set_materialize_grads(False)
    ctx.flags = tuple(inputs[7:11])
    ctx.save_for_backward(g_sh, g_sw, g_th, g_tw)


def _linear_kd_backward(ctx, g_loss, *_unused):
    if g_loss is None:
        return (None,) * 11
    if torch.is_grad_enabled():
        raise RuntimeError("fused_linear_kd_loss cannot be differentiated twice (create_graph=True); "
                           "compute the logits and use kdedu.losses.kd_loss for that")
    grads = []
    for i, (flag, g) in enumerate(zip(ctx.flags, ctx.saved_tensors, strict=True)):
        needed = ctx.needs_input_grad[i]
        if needed and not flag:
            raise RuntimeError("kdedu::linear_kd was called without the gradient that autograd now asks for")
        # scaled in float32 (a bf16 copy of g_loss = 1/N would be off by up to 0.4%)
        grads.append(scale_rows(g, g_loss.reshape(1).expand(g.shape[0])) if needed else None)
    return (*grads, None, None, None, None, None, None, None)


torch.library.register_autograd("kdedu::linear_kd", _linear_kd_backward, setup_context=_linear_kd_setup)
