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


@register("19.fused-bytes", hint="go pass by pass and count every tensor that is read or written, per logit; a "
                                 "cache miss changes only the second sweep. bf16 is 2 bytes.")
def _check_19_fused_bytes(answer):
    from kdedu.kernels import bench, fused_kd_loss

    def fused_traffic(s, t):  # the fused loss's operators, counted by the dispatcher, [N, V]-sized ones only
        ops = bench.traffic(lambda a, b: fused_kd_loss(a, b, 2.0), s, t)
        return sum(op.bytes for op in ops if op.largest >= s.numel())

    size = torch.empty(0, dtype=torch.bfloat16).element_size()
    cached = round(_ch19_per_logit(fused_traffic))  # the per-row loss and scale vectors add ~4/V bytes
    expected = cached + 2 * size  # the second sweep reads the student's and the teacher's logits again
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        if math.isclose(answer, cached, rel_tol=0.05):
            raise Wrong(f"{answer} bytes per logit is the chapter's count, with the second sweep served by the cache "
                        "(or the forward pass alone). Here the second sweep reads from memory, and the backward "
                        "pass counts too.")
        if math.isclose(answer, cached + size, rel_tol=0.05):
            raise Wrong(f"{answer} bytes reads one tensor again; the second sweep rebuilds both probabilities.")
        if math.isclose(answer, 2 * size, rel_tol=0.05):
            raise Wrong(f"{answer} bytes is the backward pass alone: count the forward pass too.")
        if math.isclose(answer, 2 * expected, rel_tol=0.05):
            raise Wrong(f"{answer} bytes would be float32 logits (4 bytes); these are bf16 (2 bytes).")
    close("your bytes per logit", answer, expected, rel=0.05)
    return (f"{expected} bytes per logit: 5 accesses in the forward pass (read s and t, read them again, write the "
            f"gradient) and 2 in the backward, 2 bytes each: {expected / cached:.1f} times the cached count, still "
            "far below the eager loss.")


@register("19.eager-memory", hint="autograd keeps what the backward formulas need: which tensors are they, and in "
                                  "which dtype are they after the cast? 1 GiB = 2**30 bytes.")
def _check_19_eager_memory(answer):
    from kdedu.kernels import bench

    def upcast(s, t):  # what autograd keeps for the eager loss on logits cast to float32 inside the loss
        return bench.held_bytes(lambda a, b: bench.eager_kd_loss(a.float(), b.float(), 2.0), s, t)

    per_logit = _ch19_per_logit(upcast)
    n, v = 8192, 128256
    expected = per_logit * n * v / 2**30  # measured on small logits; the saved tensors grow like N x V
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        if math.isclose(answer, expected * 2**30 / 1e9, rel_tol=0.02):
            raise Wrong(f"{answer} is in GB (10^9 bytes); the exercise asks for GiB (2^30 bytes).")
        if math.isclose(answer, expected / 2, rel_tol=0.02):
            raise Wrong(f"{answer} GiB is what the chapter's loss holds on bf16 logits; after the cast, the tensors "
                        "autograd keeps are float32.")
        if math.isclose(answer, expected / 4, rel_tol=0.02):
            raise Wrong(f"{answer} GiB is one bf16 copy; autograd keeps the log-probabilities of both models, "
                        "after the cast.")
        if math.isclose(answer, 2 * expected, rel_tol=0.02) or math.isclose(answer, 1.5 * expected, rel_tol=0.02):
            raise Wrong(f"{answer} GiB also counts the float32 copies of the logits, which the backward pass does "
                        "not need: the cast's backward only casts the gradient back.")
    close("your memory in GiB", answer, expected, rel=0.02)
    return (f"{expected:.2f} GiB: two float32 copies of the [8192, 128256] logits, the log-probabilities of both "
            "models, twice the bf16 loss's 3.91 GiB. The fused kernel computes in float32 too, in registers, and "
            "keeps one bf16 gradient.")


def _ch19_state(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(max, sum of exp(x - max)) of each row; (-inf, 0) for a row with no finite logit (or no logit at all)."""
    if x.shape[-1] == 0:
        return (torch.full(x.shape[:-1], float("-inf"), dtype=x.dtype), torch.zeros(x.shape[:-1], dtype=x.dtype))
    m = x.max(dim=-1).values
    shift = torch.where(m == float("-inf"), torch.zeros_like(m), m)
    return m, torch.exp(x - shift[..., None]).sum(dim=-1)


def _ch19_merged(name: str, got) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(got, (tuple, list)) and len(got) == 2 and all(isinstance(v, torch.Tensor) for v in got)):
        raise Wrong(f"{name} should return a pair of tensors (m, d), got {type(got).__name__}.")
    return got[0].double(), got[1].double()


@register("19.merge-logsumexp",
          hint="eq. (eq-19-online) merges a running state with one block: treat part b as that block, whose sum is "
               "known only relative to its own maximum m_b.")
def _check_19_merge_logsumexp(fn):
    function("merge_lse(m_a, d_a, m_b, d_b)", fn)
    g = torch.Generator().manual_seed(19)
    x = 3 * torch.randn(6, 37, generator=g, dtype=torch.float64)
    x[5] *= 3000  # logits of size 1e4: exp(m) overflows, only differences of maxima may be exponentiated
    cases = [("random logits", x, 11), ("random logits", x, 30), ("a one-logit part", x, 1)]
    masked = 3 * torch.randn(4, 20, generator=g, dtype=torch.float64)
    masked[0, :8] = float("-inf")   # part a has no finite logit
    masked[1, 8:] = float("-inf")   # part b has no finite logit
    masked[2, :] = float("-inf")    # neither has one: the union's state is (-inf, 0)
    cases.append(("rows where a part has no finite logit", masked, 8))
    for what, rows, cut in cases:
        (m_a, d_a), (m_b, d_b) = _ch19_state(rows[:, :cut]), _ch19_state(rows[:, cut:])
        m_ref, d_ref = _ch19_state(rows)
        name = f"your merge_lse on {what} (parts of {cut} and {rows.shape[1] - cut})"
        m, d = _ch19_merged(name, fn(m_a.clone(), d_a.clone(), m_b.clone(), d_b.clone()))
        if m.shape != m_ref.shape or d.shape != d_ref.shape:
            raise Wrong(f"{name} returned shapes {tuple(m.shape)} and {tuple(d.shape)}, expected {tuple(m_ref.shape)}.")
        finite = torch.isfinite(m_a) & torch.isfinite(m_b)  # rows where both parts have a finite logit
        bad = torch.isnan(m) | torch.isnan(d) | torch.isinf(d)
        if (bad & finite).any():
            raise Wrong(f"{name} returns inf or nan where every part has finite logits: exp overflows for logits "
                        "of size 1e4.", "never exponentiate a maximum on its own, only differences of maxima.")
        if bad.any():
            raise Wrong(f"{name} returns nan when a part has no finite logit: exp(-inf - (-inf)) is nan.",
                        "see how the chapter's online_logsumexp avoids exp(-inf - (-inf)) while the maximum is -inf.")
        same_tensor(f"{name}: its maximum m", m, m_ref, atol=0, rtol=0)
        same_tensor(f"{name}: its sum d = sum exp(x - m)", d, d_ref, atol=1e-12, rtol=1e-9)
    (m_a, d_a), (m_b, d_b) = _ch19_state(x[:, :11]), _ch19_state(x[:, 11:])
    m, d = _ch19_merged("merge_lse", fn(m_b, d_b, m_a, d_a))
    same_tensor("your merge_lse with its parts swapped: its sum d", d, _ch19_state(x)[1], atol=1e-12, rtol=1e-9)
    return ("the state of the union, for every split, for logits of size 1e4 and for parts with no finite logit; "
            "the merge is associative, so the parts can be merged in any order, in a tree or across GPUs.")
