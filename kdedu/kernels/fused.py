"""The public fused losses: :func:`fused_kd_loss`, :func:`fused_reverse_kd_loss`,
:func:`fused_generalized_jsd_loss` and :func:`fused_linear_kd_loss`."""

from __future__ import annotations

import numbers

import torch

from kdedu._validate import (
    check_indices,
    check_integer,
    check_mask,
    check_pair,
    check_reduction,
    check_temperature,
    check_unit_interval,
)

__all__ = ["fused_kd_loss", "fused_reverse_kd_loss", "fused_generalized_jsd_loss", "fused_linear_kd_loss"]


def _keep_rows(mask, labels, ignore_index, lead: tuple, device) -> torch.Tensor | None:
    """The bool ``(N,)`` vector of rows to use, from ``mask`` and/or ``labels != ignore_index`` (None: all)."""
    keep = check_mask(mask, lead, device=device)
    if labels is not None:  # any integer ids: no range check, which would wait for the device
        check_indices("labels", labels, lead, device=device)
        from_labels = labels != check_integer("ignore_index", ignore_index)
        keep = from_labels if keep is None else keep & from_labels
    return None if keep is None else keep.reshape(-1)


def _rows_of(student_logits, teacher_logits, temperature, reduction, mask, labels, ignore_index):
    """The checks every fused divergence shares; returns ``(T, keep, s, t)`` with ``s, t`` of shape ``(N, V)``."""
    check_pair(student_logits, teacher_logits)
    t = check_temperature(temperature)
    check_reduction(reduction)
    if student_logits.device != teacher_logits.device:
        raise ValueError(f"student_logits and teacher_logits must be on the same device, got "
                         f"{student_logits.device} and {teacher_logits.device}")
    v = student_logits.shape[-1]
    keep = _keep_rows(mask, labels, ignore_index, tuple(student_logits.shape[:-1]), student_logits.device)
    return t, keep, student_logits.reshape(-1, v), teacher_logits.reshape(-1, v)


def _reduced(rows, keep, reduction, student_logits, teacher_logits) -> torch.Tensor:
    """Per-row losses ``(N,)`` reduced as ``reduction`` says, in the logits' (promoted) dtype."""
    out_dtype = torch.promote_types(student_logits.dtype, teacher_logits.dtype)
    if reduction == "none":
        return rows.reshape(student_logits.shape[:-1]).to(out_dtype)
    total = rows.sum()
    if reduction == "batchmean":
        kept = keep.sum().clamp(min=1) if keep is not None else max(rows.shape[0], 1)
        total = total / kept
    return total.to(out_dtype)


def _grad_flags(student_logits, teacher_logits) -> tuple[bool, bool]:
    on = torch.is_grad_enabled()
    return on and student_logits.requires_grad, on and teacher_logits.requires_grad


def _kl_rows(p_logits, q_logits, keep, t, need_p, need_q, double_backward):
    """Per-row ``T^2 KL(softmax(p/T) || softmax(q/T))`` by the KD kernel (which computes ``KL(teacher ||
    student)``: ``p`` goes in the teacher's place)."""
    rows, _, _ = torch.ops.kdedu.kd_rows(q_logits, p_logits, keep, t, need_q, need_p, bool(double_backward))
    return rows


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
    t, keep, s2, t2 = _rows_of(student_logits, teacher_logits, temperature, reduction, mask, labels, ignore_index)
    need_s, need_t = _grad_flags(student_logits, teacher_logits)
    rows = _kl_rows(t2, s2, keep, t, need_t, need_s, double_backward)  # KL(p_t || p_s)
    return _reduced(rows, keep, reduction, student_logits, teacher_logits)


def fused_reverse_kd_loss(
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
    r"""The reverse KD loss of :func:`kdedu.losses.reverse_kd_loss`, computed by the fused KD kernel.

    .. math:: \mathcal{L}_{RKL} = T^2 \, \mathrm{KL}\big(p_s \,\|\, p_t\big), \qquad
              \frac{\partial \mathcal{L}_{RKL}}{\partial s} = T\, p_s \odot (r - K), \qquad
              \frac{\partial \mathcal{L}_{RKL}}{\partial t} = T\, (p_t - p_s)

    with ``p = softmax(z / T)``, ``r = log p_s - log p_t`` and ``K = sum_i p_s,i r_i`` (the row's KL). Both are
    the KD loss's formulas with the roles of the two distributions swapped, and so is the online sweep: it
    keeps the running maxima and sums of both rows and ``acc = sum exp(a - m_a) ((a - m_a) - (b - m_b))``
    with ``a = s/T``, ``b = t/T``, rescaled with the *student's* sum. The KD kernel already does exactly
    this for ``KL(p_t || p_s)``, so this function runs it with the two logits exchanged: the student's
    gradient is the one the KD kernel computes for its teacher argument, and it is written in the forward
    pass all the same (``K`` is known after the first sweep). Classes where the student's probability is 0
    contribute 0, as in ``reverse_kd_loss``.

    Same arguments and behaviour as :func:`fused_kd_loss` (``mask``, ``labels``/``ignore_index``,
    reductions, dtypes, dispatch, ``double_backward``).
    """
    t, keep, s2, t2 = _rows_of(student_logits, teacher_logits, temperature, reduction, mask, labels, ignore_index)
    need_s, need_t = _grad_flags(student_logits, teacher_logits)
    rows = _kl_rows(s2, t2, keep, t, need_s, need_t, double_backward)  # KL(p_s || p_t)
    return _reduced(rows, keep, reduction, student_logits, teacher_logits)


def fused_generalized_jsd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    mask: torch.Tensor | None = None,
    *,
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    double_backward: bool = True,
) -> torch.Tensor:
    r"""GKD's generalized JSD of :func:`kdedu.losses.generalized_jsd_loss`, computed by a fused kernel.

    .. math:: \mathrm{JSD}_\beta = \beta\, \mathrm{KL}(p_t \,\|\, m) + (1 - \beta)\, \mathrm{KL}(p_s \,\|\, m),
              \qquad m = \beta\, p_t + (1 - \beta)\, p_s,

    with ``p = softmax(z / T)`` and no ``T**2`` (TRL's convention). Writing ``rho = log p_s - log m``,
    ``sigma = log p_t - log m``, ``K_s = KL(p_s || m)`` and ``K_t = KL(p_t || m)``, the gradients are

    .. math:: \frac{\partial\, \mathrm{JSD}_\beta}{\partial s} = \frac{1 - \beta}{T}\, p_s \odot (\rho - K_s),
              \qquad
              \frac{\partial\, \mathrm{JSD}_\beta}{\partial t} = \frac{\beta}{T}\, p_t \odot (\sigma - K_t)

    (``JSD = beta sum p_t log p_t + (1 - beta) sum p_s log p_s - sum m log m``; its derivative with respect
    to ``p_s`` is ``(1 - beta) rho``, and the softmax's Jacobian maps ``g`` to ``p_s (g - sum p_s g)``).

    ``log m`` mixes the two distributions inside a logarithm, so it needs both final normalisers and no
    running sum of a one-pass softmax yields ``sum p log m``. The kernel (:mod:`kdedu.kernels.triton_jsd`)
    therefore sweeps each row three times: the two log-sum-exps, then ``log m`` and the two divergences,
    then the gradient, still written in the forward pass. A row that fits in one tile is loaded once; a
    longer one is read three times where the KD kernel reads it twice. ``beta = 0`` and ``beta = 1`` are,
    as in ``generalized_jsd_loss``, the forward KL ``KL(p_t || p_s)`` and the reverse KL ``KL(p_s || p_t)``
    (without ``T**2``): they run the one-sweep KD kernel. ``beta`` outside [0, 1] is an error.

    Same other arguments and behaviour as :func:`fused_kd_loss` (``mask``, ``labels``/``ignore_index``,
    reductions, dtypes, dispatch, ``double_backward``).
    """
    b = check_unit_interval("beta", beta)
    t, keep, s2, t2 = _rows_of(student_logits, teacher_logits, temperature, reduction, mask, labels, ignore_index)
    need_s, need_t = _grad_flags(student_logits, teacher_logits)
    if b == 0.0:
        rows = _kl_rows(t2, s2, keep, t, need_t, need_s, double_backward) / (t * t)  # KL(p_t || p_s)
    elif b == 1.0:
        rows = _kl_rows(s2, t2, keep, t, need_s, need_t, double_backward) / (t * t)  # KL(p_s || p_t)
    else:
        rows, _, _ = torch.ops.kdedu.jsd_rows(s2, t2, keep, b, t, need_s, need_t, bool(double_backward))
    return _reduced(rows, keep, reduction, student_logits, teacher_logits)


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
