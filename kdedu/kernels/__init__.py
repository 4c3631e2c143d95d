"""Fused kernels for the KD losses (chapter 19): Triton on a GPU, a chunked PyTorch reference elsewhere.

* :func:`fused_kd_loss` — :func:`kdedu.losses.kd_loss` (same arguments, value and gradient), computed
  with one fused kernel per block of rows: an online softmax over the vocabulary, float32 accumulation,
  the gradient written in the forward pass. ``kd_loss`` itself uses it for CUDA tensors.
* :func:`fused_reverse_kd_loss` — :func:`kdedu.losses.reverse_kd_loss`, by the same kernel with the two
  logits exchanged (``KL(p_s || p_t)`` is the KD kernel's ``KL(p_t || p_s)`` with the roles swapped).
* :func:`fused_generalized_jsd_loss` — :func:`kdedu.losses.generalized_jsd_loss` (GKD), by a kernel that
  sweeps each row three times (normalisers, values, gradient): ``log m`` needs both final normalisers.
  ``reverse_kd_loss`` and ``generalized_jsd_loss`` also use these for CUDA tensors.
* :func:`fused_linear_kd_loss` — the KD loss of two output projections (``lm_head``), chunked over tokens
  so that the full ``[tokens x vocabulary]`` logits never exist.
* :func:`backend` — where a call runs: ``"triton"`` (CUDA), ``"triton-interpreter"`` (CPU with
  ``TRITON_INTERPRET=1`` set before first use; how the kernels are tested without a GPU) or
  ``"pytorch"`` (the chunked reference of :mod:`kdedu.kernels.reference`).

The operators are registered as PyTorch custom ops (``torch.ops.kdedu.kd_rows``, ``jsd_rows``,
``scale_rows``, ``linear_kd``), so they work under ``torch.compile``. :mod:`kdedu.kernels.bench` holds the
measurement helpers used by ``benchmarks/kd_loss.py`` and the chapter.
"""

from kdedu.kernels.fused import fused_generalized_jsd_loss, fused_kd_loss, fused_linear_kd_loss, fused_reverse_kd_loss
from kdedu.kernels.ops import backend, triton_status
from kdedu.kernels.reference import jsd_rows_reference, kd_rows_reference

__all__ = ["fused_kd_loss", "fused_reverse_kd_loss", "fused_generalized_jsd_loss", "fused_linear_kd_loss",
           "backend", "triton_status", "kd_rows_reference", "jsd_rows_reference"]
