"""The public fused losses: :func:`fused_kd_loss` and :func:`fused_linear_kd_loss`."""

from __future__ import annotations

import numbers

import torch

from kdedu._validate import check_indices, check_integer, check_mask, check_pair, check_reduction, check_temperature

__all__ = ["fused_kd_loss", "fused_linear_kd_loss"]


def _keep_rows(mask, labels, ignore_index, lead: tuple, device) -> torch.Tensor | None:
    """The bool ``(N,)`` vector of rows to use, from ``mask`` and/or ``labels != ignore_index`` (None: all)."""
    keep = check_mask(mask, lead, device=device)
    if labels is not None:  # any integer ids: no range check, which would wait for the device
        check_indices("labels", labels, lead, device=device)
        from_labels = labels != check_integer("ignore_index", ignore_index)
        keep = from_labels if keep is None else keep & from_labels
    return None if keep is None else keep.reshape(-1)


def fused_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    mask: torch.Tensor | None = None,
    *,
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    double_backward: bool = True,
) -> torch.Tensor:
    r"""The KD loss of :func:`kdedu.losses.kd_loss`, computed by one fused kernel per block of rows.

    .. math:: \mathcal{L}_{KD} = T^2 \, \mathrm{KL}\big(\mathrm{softmax}(t/T) \,\|\, \mathrm{softmax}(s/T)\big)

    Same arguments, value and gradient as ``kd_loss`` (to float tolerance), for logits ``[..., V]`` in
    float32, float16 or bfloat16 (float64 uses the exact PyTorch path). The kernel computes each row with
    an online softmax over blocks of the vocabulary (Milakov & Gimelshein 2018), in float32, and writes the
    gradient during the forward pass; the backward pass only scales it. Memory traffic: the logits are read
    twice and the gradient written once, instead of about 15 separate kernels in eager PyTorch.

    Rows to skip (padding tokens): ``mask`` (bool, the leading shape of the logits, True = use the row).
    ``labels`` with ``ignore_index`` is the Hugging Face convention for the same thing: rows whose label is
    ``ignore_index`` are skipped (combined with ``mask`` if both are given). Skipped rows add 0 and get a
    zero gradient; ``"batchmean"`` divides by the number of rows kept (0 rows kept gives a loss of 0), and
    ``"none"`` gives 0 for them. Classes whose logits are ``-inf`` in both models (a vocabulary padded to a
    multiple of 64) contribute nothing.

    ``double_backward=True`` keeps references to the two logits tensors, so that ``create_graph=True``
    (second-order methods such as MetaDistil) gets an exact, differentiable gradient. With ``False`` the
    logits can be freed after the forward pass (the fused kernel then holds only the gradient), and a
    double backward raises. Dispatch (see :func:`kdedu.kernels.backend`): Triton on CUDA, the chunked
    PyTorch reference on CPU, or Triton's interpreter on CPU with ``TRITON_INTERPRET=1``.
    """
    check_pair(student_logits, teacher_logits)
    t = check_temperature(temperature)
    check_reduction(reduction)
    if student_logits.device != teacher_logits.device:
        raise ValueError(f"student_logits and teacher_logits must be on the same device, got "
                         f"{student_logits.device} and {teacher_logits.device}")
    v = student_logits.shape[-1]
    lead = tuple(student_logits.shape[:-1])
    keep = _keep_rows(mask, labels, ignore_index, lead, student_logits.device)
    s2, t2 = student_logits.reshape(-1, v), teacher_logits.reshape(-1, v)  # (N, V)
    grad_on = torch.is_grad_enabled()
    rows, _, _ = torch.ops.kdedu.kd_rows(s2, t2, keep, t, grad_on and student_logits.requires_grad,
                                         grad_on and teacher_logits.requires_grad, bool(double_backward))
    out_dtype = torch.promote_types(student_logits.dtype, teacher_logits.dtype)
    if reduction == "none":
        return rows.reshape(lead).to(out_dtype)
    total = rows.sum()
    if reduction == "batchmean":
        kept = keep.sum().clamp(min=1) if keep is not None else max(s2.shape[0], 1)
        total = total / kept
    return total.to(out_dtype)


def _check_linear(name_h: str, hidden, name_w: str, weight) -> None:
    for name, x, dims in ((name_h, hidden, "[..., H]"), (name_w, weight, "[V, H]")):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor {dims}, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if weight.dim() != 2:
        raise ValueError(f"{name_w} must have shape [V, H], got {tuple(weight.shape)}")
    if hidden.dim() < 1 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"{name_h} must have shape [..., H] with H = {name_w}.shape[1] = {weight.shape[1]}, "
                         f"got {tuple(hidden.shape)}")
    if hidden.dtype != weight.dtype:
        raise TypeError(f"{name_h} and {name_w} must have the same dtype, got {hidden.dtype} and {weight.dtype}")


def fused_linear_kd_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    chunk_size: int = 1024,
    reduction: str = "batchmean",
) -> torch.Tensor:
    r"""The KD loss of two output projections, without ever building the full ``[N, V]`` logits.

    .. math:: \mathcal{L} = \mathrm{kd\_loss}(h_s W_s^\top,\; h_t W_t^\top,\; T)

    ``student_hidden`` is ``[..., H_s]`` and ``student_weight`` ``[V, H_s]`` (an ``lm_head``'s weight, no
    bias); the teacher's hidden size ``H_t`` may differ. Tokens are processed ``chunk_size`` at a time: each
    chunk's logits ``[chunk_size, V]`` are computed, passed through the fused KD kernel (which returns their
    gradient), and turned at once into the gradients of the hidden states and weights (weight gradients
    accumulate over chunks in the weight's dtype). Extra memory is ``O(chunk_size x V)`` instead of
    ``O(N x V)``, the idea of Liger-Kernel's fused linear losses (Hsu et al. 2024).

    ``mask`` (bool, the leading shape of the hidden states) skips rows; ``"batchmean"`` divides by the rows
    kept, ``"sum"`` sums (``"none"`` is not offered: per-row results would need the weight gradient per row).
    Gradients flow to every input that requires one, the teacher's included. It cannot be differentiated
    twice.
    """
    _check_linear("student_hidden", student_hidden, "student_weight", student_weight)
    _check_linear("teacher_hidden", teacher_hidden, "teacher_weight", teacher_weight)
    if student_hidden.shape[:-1] != teacher_hidden.shape[:-1]:
        raise ValueError(f"student_hidden and teacher_hidden must have the same leading (token) shape, got "
                         f"{tuple(student_hidden.shape)} and {tuple(teacher_hidden.shape)}")
    if student_weight.shape[0] != teacher_weight.shape[0]:
        raise ValueError(f"student_weight and teacher_weight must have the same vocabulary size V, got "
                         f"{student_weight.shape[0]} and {teacher_weight.shape[0]}")
    t = check_temperature(temperature)
    if reduction not in ("batchmean", "sum"):
        raise ValueError(f"reduction must be 'batchmean' or 'sum' for the fused linear loss, got {reduction!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    lead = tuple(student_hidden.shape[:-1])
    keep = _keep_rows(mask, None, None, lead, student_hidden.device)
    hs = student_hidden.reshape(-1, student_hidden.shape[-1])  # (N, Hs)
    ht = teacher_hidden.reshape(-1, teacher_hidden.shape[-1])  # (N, Ht)
    on = torch.is_grad_enabled()
    flags = [on and x.requires_grad for x in (student_hidden, student_weight, teacher_hidden, teacher_weight)]
    total, *_ = torch.ops.kdedu.linear_kd(hs, student_weight, ht, teacher_weight, keep, t, int(chunk_size), *flags)
    if reduction == "batchmean":
        total = total / (keep.sum().clamp(min=1) if keep is not None else max(hs.shape[0], 1))
    return total.to(torch.promote_types(student_hidden.dtype, teacher_hidden.dtype))
