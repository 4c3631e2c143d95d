"""Auto-checks for the exercises of chapter 19 (registered with :func:`kdedu.check.register`)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from kdedu.check import Wrong, answer_number, close, function, register, same_tensor


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


EAGER_MEMORY_SIZE = (8192, 256000)
"""The exercise's N (tokens) and V (Gemma 2's vocabulary): not a size whose memory the chapter prints."""


@register("19.eager-memory", hint="autograd keeps what the backward formulas need: which tensors are they, and in "
                                  "which dtype are they after the cast? 1 GiB = 2**30 bytes.")
def _check_19_eager_memory(answer):
    from kdedu.kernels import bench

    def upcast(s, t):  # what autograd keeps for the eager loss on logits cast to float32 inside the loss
        return bench.held_bytes(lambda a, b: bench.eager_kd_loss(a.float(), b.float(), 2.0), s, t)

    per_logit = _ch19_per_logit(upcast)
    n, v = EAGER_MEMORY_SIZE
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
    return (f"{expected:.5g} GiB: two float32 copies of the [{n}, {v}] logits, the log-probabilities of both models, "
            f"twice the {expected / 2:.5g} GiB of the bf16 loss. The fused kernel computes in float32 too, in "
            "registers, and keeps one bf16 gradient.")


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
          hint="chapter 19's online softmax update merges a running state with one block: treat part b as "
               "that block, whose sum is known only relative to its own maximum m_b.")
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


# ------------------------------------------------------------------------------------------------
# 19.reverse-kl: an experiment. The reader builds the reverse KL as an autograd.Function that writes its gradient in
# the forward pass, and measures the memory it and the eager loss hold; the checker compares the loss and its
# gradient with autograd's on reverse_kd_loss and measures both memories again.
# ------------------------------------------------------------------------------------------------
REVERSE_KL_SHAPE = (64, 1000)
"""The bf16 logits of the exercise's measurement, at T = 2."""


def _ch19_logits(shape, dtype, seed: int, requires_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = (3 * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype).requires_grad_(requires_grad)
    t = (3 * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)
    return s, t




def _ch19_reverse_value_and_grad(fn) -> None:
    """Raise Wrong unless fn(s, t, T) is T^2 KL(p_s || p_t), batchmean, with autograd's gradient (any upstream)."""
    from kdedu import losses

    for shape, T, upstream in (((4, 9), 2.0, 3.0), ((6, 50), 1.0, -0.5), ((3, 17), 0.5, 1.0)):
        s, t = _ch19_logits(shape, torch.float64, seed=shape[1])
        got = fn(s, t, T)
        if not isinstance(got, torch.Tensor) or got.numel() != 1:
            raise Wrong(f"your loss(s, t, T) should return the loss as a tensor of one number, got "
                        f"{type(got).__name__}{tuple(got.shape) if isinstance(got, torch.Tensor) else ''}.")
        expected = losses.reverse_kd_loss(s, t, T)
        if not torch.allclose(got.detach().double(), expected.detach(), rtol=1e-5, atol=1e-6):  # float32 inside
            value = got.item()
            forward_kl = losses.kd_loss(s, t, T).item()
            if math.isclose(value, forward_kl, rel_tol=1e-5):
                raise Wrong(f"on {shape} logits your loss is the forward KL, KL(p_t || p_s); the exercise asks for the "
                            "reverse KL, KL(p_s || p_t).")
            if math.isclose(value, shape[0] * expected.item(), rel_tol=1e-5):
                raise Wrong(f"on {shape} logits your loss is the sum over the rows; average it over the rows, as "
                            "reverse_kd_loss does.")
            if T != 1 and math.isclose(value, expected.item() / T**2, rel_tol=1e-5):
                raise Wrong(f"at T = {T:g} your loss lacks the factor T^2 that reverse_kd_loss includes.")
            raise Wrong(f"on {shape} logits at T = {T:g} your loss is {value:.6g}; reverse_kd_loss gives "
                        f"{expected.item():.6g}.")
        if not got.requires_grad:
            raise Wrong("your loss has no gradient with respect to s: it must come from your Function's backward.")
        (g,) = torch.autograd.grad(upstream * got, s)
        (g_ref,) = torch.autograd.grad(upstream * expected, s)
        if g.shape != g_ref.shape:
            raise Wrong(f"your gradient has shape {tuple(g.shape)} for logits of shape {shape}.")
        g, where = g.double(), f"on {shape} logits at T = {T:g}, with an incoming gradient of {upstream:g}"
        if torch.allclose(g, g_ref, rtol=1e-4, atol=1e-6):
            continue
        if upstream != 1 and torch.allclose(g, g_ref / upstream, rtol=1e-4, atol=1e-6):
            raise Wrong(f"{where}, your gradient ignores the incoming gradient: the backward pass must scale the "
                        "saved gradient by it.")
        if torch.allclose(g, -g_ref, rtol=1e-4, atol=1e-6):
            raise Wrong(f"{where}, your gradient has the wrong sign.")
        if torch.allclose(g, g_ref * shape[0], rtol=1e-4, atol=1e-6):
            raise Wrong(f"{where}, your gradient is that of the sum over the rows; the loss is their mean.")
        if not torch.allclose(g.sum(-1), torch.zeros(shape[0], dtype=g.dtype), atol=1e-5):
            raise Wrong(f"{where}, your gradient differs from autograd's, and its rows do not sum to zero as they "
                        "must: adding a constant to a row of logits does not change the softmax, nor the loss.")
        err = (g - g_ref).abs().max().item()
        raise Wrong(f"{where}, your gradient differs from autograd's gradient of reverse_kd_loss by up to {err:.3g}.")


@register("19.reverse-kl", hint="the reverse KL depends on the student's logits twice: through the weights p_s of its "
                                "sum and through the log-ratios. Differentiate both, and check the result with "
                                "torch.autograd.grad on reverse_kd_loss before you put it in forward.")
def _check_19_reverse_kl(answer):
    from kdedu import losses
    from kdedu.kernels import bench

    if not isinstance(answer, Mapping):
        raise Wrong("the answer should be a dict with the keys loss, held and eager_held, got "
                    f"{type(answer).__name__}.")
    missing = [key for key in ("loss", "held", "eager_held") if key not in answer]
    if missing:
        raise Wrong(f"the answer lacks the key(s) {', '.join(missing)}.")
    fn = answer["loss"]
    function('answer["loss"], a function loss(s, t, T)', fn)
    held_said, eager_said = answer_number('answer["held"]', answer["held"]), \
        answer_number('answer["eager_held"]', answer["eager_held"])
    _ch19_reverse_value_and_grad(fn)

    # the measurement, again: bf16 logits of the exercise's shape at T = 2
    s, t = _ch19_logits(REVERSE_KL_SHAPE, torch.bfloat16, seed=19)
    n_logits, size = s.numel(), s.element_size()
    held = bench.held_bytes(lambda a, b: fn(a, b, 2.0), s, t) / n_logits
    eager = bench.held_bytes(lambda a, b: losses.reverse_kd_loss(a, b, 2.0), s, t) / n_logits
    backward_read = sum(op.read for op in bench.traffic(lambda a, b: fn(a, b, 2.0), s, t)
                        if op.phase == "backward" and op.largest >= n_logits) / n_logits
    if held > size + 0.05:
        raise Wrong(f"your loss keeps {held:.2f} bytes per logit for the backward pass, more than one gradient in the "
                    f"logits' dtype ({size} bytes for bf16): save only the gradient, cast to the dtype of the logits.")
    if held < size - 0.05:
        if backward_read > size + 0.05:
            raise Wrong(f"your backward pass reads {backward_read:.1f} bytes per logit: it recomputes from the logits "
                        "what the forward pass could have written. Compute the gradient in forward and save it.")
        raise Wrong(f"bench.held_bytes sees only {held:.2f} bytes per logit saved by your loss: keep the gradient with "
                    "ctx.save_for_backward, where autograd (and the measurement) can see it, not as an attribute of "
                    "ctx.")
    for name, said, measured in (("held", held_said, held), ("eager_held", eager_said, eager)):
        if math.isclose(said, measured, abs_tol=0.05):
            continue
        other = eager if name == "held" else held
        if math.isclose(said, other, abs_tol=0.05):
            raise Wrong('answer["held"] and answer["eager_held"] are swapped.')
        if math.isclose(said, measured * n_logits, rel_tol=1e-3):
            raise Wrong(f'answer["{name}"] = {said:g} is the total in bytes; give bytes per logit (divide by the '
                        f"{n_logits} logits).")
        raise Wrong(f'answer["{name}"] = {said:g} bytes per logit, but bench.held_bytes on bf16 logits of shape '
                    f"{REVERSE_KL_SHAPE} at T = 2 measures {measured:.2f}.")
    return (f"your loss matches reverse_kd_loss and autograd's gradient, and keeps {held:.2f} bytes per logit for the "
            f"backward pass against {eager:.2f} for the eager loss: the gradient of the reverse KL can be written in "
            "the forward pass too. A one-pass kernel needs one more number per row for it, the row's KL, which the "
            "first sweep provides.")
