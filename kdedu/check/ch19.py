"""Auto-checks for the exercises of chapter 19 (registered with :func:`kdedu.check.register`)."""

from __future__ import annotations

import math

import torch

from kdedu.check import Wrong, close, function, register, same_tensor


def _ch19_per_logit(measure, n: int = 32, v: int = 1024) -> float:
    """Bytes per logit that ``measure(s, t)`` reports for bf16 logits of shape (n, v)."""
    g = torch.Generator().manual_seed(19)
    s = torch.randn(n, v, generator=g).to(torch.bfloat16).requires_grad_(True)
    t = torch.randn(n, v, generator=g).to(torch.bfloat16)
    return measure(s, t) / (n * v)


@register("19.fused-bytes", hint="forward: read the student's and the teacher's logits once, write the student's "
                                 "gradient once; backward: read that gradient and write it scaled; bf16 is 2 bytes")
def _check_19_fused_bytes(answer):
    from kdedu.kernels import bench, fused_kd_loss

    def fused_traffic(s, t):  # the fused loss's operators, counted by the dispatcher, [N, V]-sized ones only
        ops = bench.traffic(lambda a, b: fused_kd_loss(a, b, 2.0), s, t)
        return sum(op.bytes for op in ops if op.largest >= s.numel())

    expected = round(_ch19_per_logit(fused_traffic))  # the per-row loss and scale vectors add ~4/V bytes
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        if math.isclose(answer, expected * 3 / 5, rel_tol=0.05):
            raise Wrong(f"{answer} bytes is the forward pass only: the backward pass reads the stored gradient "
                        "and writes it scaled by the incoming gradient.")
        if math.isclose(answer, 2 * expected, rel_tol=0.05):
            raise Wrong(f"{answer} bytes would be float32 logits (4 bytes); these are bf16 (2 bytes).")
    close("your bytes per logit", answer, expected, rel=0.05)
    return (f"{expected} bytes per logit: 3 accesses in the forward pass and 2 in the backward, 2 bytes each "
            "(if the second sweep over a row is served by the cache).")


@register("19.eager-memory", hint="the eager loss keeps the two log_softmax outputs (one per model) for its backward "
                                  "pass, each N x V in the logits' dtype; 1 GiB = 2**30 bytes")
def _check_19_eager_memory(answer):
    from kdedu.kernels import bench

    per_logit = _ch19_per_logit(lambda s, t: bench.held_bytes(lambda a, b: bench.eager_kd_loss(a, b, 2.0), s, t))
    n, v = 8192, 128256
    expected = per_logit * n * v / 2**30  # measured on small logits; the saved tensors grow like N x V
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        if math.isclose(answer, expected * 2**30 / 1e9, rel_tol=0.02):
            raise Wrong(f"{answer} is in GB (10^9 bytes); the exercise asks for GiB (2^30 bytes).")
        if math.isclose(answer, 2 * expected, rel_tol=0.02):
            raise Wrong(f"{answer} GiB would be float32 copies; with bf16 logits the saved tensors are bf16.")
        if math.isclose(answer, expected / 2, rel_tol=0.02):
            raise Wrong(f"{answer} GiB is one copy; autograd saves the log-probabilities of both models.")
    close("your memory in GiB", answer, expected, rel=0.02)
    return (f"{expected:.2f} GiB: two bf16 copies of the [8192, 128256] logits, kept from the forward to the "
            "backward pass (the fused kernel keeps one: its gradient).")


@register("19.online-logsumexp", hint="keep a running max m and sum d = sum exp(x - m) per row; for each block, "
                                      "m_new = max(m, block max), d = d * exp(m - m_new) + sum exp(x - m_new), and "
                                      "shift by 0 instead of m_new while m_new is still -inf")
def _check_19_online_logsumexp(fn):
    function("online_logsumexp(x, block_size)", fn)
    g = torch.Generator().manual_seed(19)
    x = 3 * torch.randn(5, 37, generator=g, dtype=torch.float64)
    for block in (8, 5, 37, 64):  # blocks that do and do not divide the row, one block, larger than the row
        same_tensor(f"your online_logsumexp(x of shape (5, 37), block_size={block})", fn(x.clone(), block),
                    torch.logsumexp(x, dim=-1), atol=1e-9, rtol=1e-9)
    big = 1e4 * torch.randn(3, 20, generator=g, dtype=torch.float64)
    got = fn(big.clone(), 6)
    if isinstance(got, torch.Tensor) and not torch.isfinite(got).all():
        raise Wrong("your function returns inf/nan for logits of size 1e4: exp overflows.",
                    "subtract the running maximum before torch.exp, and rescale the sum when the maximum grows")
    same_tensor("your online_logsumexp on logits of size 1e4", got, torch.logsumexp(big, dim=-1), atol=1e-6, rtol=1e-9)
    padded = 3 * torch.randn(4, 30, generator=g, dtype=torch.float64)
    padded[:, :12] = float("-inf")  # the first blocks hold only -inf (a masked prefix)
    padded[:, 25:] = float("-inf")  # and so does the tail (a vocabulary padded with -inf)
    got = fn(padded.clone(), 6)
    if isinstance(got, torch.Tensor) and torch.isnan(got).any():
        raise Wrong("your function returns nan when a whole block is -inf: exp(-inf - (-inf)) is nan.",
                    "while the running maximum is -inf, rescale by 0 (or shift by 0 instead of by the maximum)")
    same_tensor("your online_logsumexp on rows that start and end with -inf blocks", got,
                torch.logsumexp(padded, dim=-1), atol=1e-9, rtol=1e-9)
    return "matches torch.logsumexp for every block size, for logits of size 1e4, and across blocks of -inf."
