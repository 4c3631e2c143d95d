"""Auto-checks for the new exercises of problem set 7, Part VII, systems (chapter 19) (book/assignments/ps7-*.md).

The problem set's other exercises are the chapters' own (kdedu/check/chNN.py)."""

from __future__ import annotations

import math
import weakref

import torch

from kdedu.check import Wrong, answer_number, close, function, register

# (seed, N rows, block widths (their sum is V), T, dtype, offset): widths that do not divide V, one block, a block
# of one column; the last case has float32 logits around 150 on a ramp, so that the maximum moves from block to
# block and exp without the running maximum overflows
_STREAM_CASES = ((0, 4, (16, 16, 16, 2), 2.0, torch.float64, 0.0), (1, 3, (1, 10, 26), 1.0, torch.float64, 0.0),
                 (2, 5, (64,), 4.0, torch.float64, 0.0), (3, 4, (30, 30, 30, 10), 1.0, torch.float32, 150.0))


def _stream_logits(seed: int, N: int, V: int, dtype: torch.dtype, offset: float):
    g = torch.Generator().manual_seed(700 + seed)
    s = 2 * torch.randn(N, V, generator=g, dtype=torch.float64)
    t = 3 * torch.randn(N, V, generator=g, dtype=torch.float64)
    if offset:
        ramp = torch.linspace(0, 20, V, dtype=torch.float64)
        s, t = s + offset + ramp, t + offset + ramp.flip(0) * 0.5 + ramp * 0.5
    return s.to(dtype), t.to(dtype)


class _Blocks:
    """The vocabulary of ``s`` and ``t`` in blocks of ``widths`` columns, once, as an iterator of ``(s_block,
    t_block)`` pairs; it records whether a block was still referenced two blocks later (the answer stored it)."""

    def __init__(self, s: torch.Tensor, t: torch.Tensor, widths: tuple[int, ...]):
        self.s, self.t, self.widths = s, t, widths
        self.kept, self.served, self._refs = False, 0, []
        self._it = self._gen()

    def __iter__(self):
        return self._it

    def __next__(self):
        return next(self._it)

    def _gen(self):
        start = 0
        for width in self.widths:
            if any(r() is not None for r in self._refs[:-2]):      # a block before the previous pair is still alive
                self.kept = True
            pair = (self.s[:, start:start + width].clone(), self.t[:, start:start + width].clone())
            self._refs += [weakref.ref(pair[0]), weakref.ref(pair[1])]
            start += width
            self.served += 1
            yield pair
            del pair
        if any(r() is not None for r in self._refs[:-2]):
            self.kept = True


def _per_block_kl(s: torch.Tensor, t: torch.Tensor, widths: tuple[int, ...], T: float) -> float:
    """The slip: each block normalised on its own, the blocks' KLs summed (mean over rows, times T^2)."""
    total, start = 0.0, 0
    for w in widths:
        a, b = s[:, start:start + w] / T, t[:, start:start + w] / T
        log_pa, log_pb = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
        total += float((log_pb.exp() * (log_pb - log_pa)).sum(-1).mean())
        start += w
    return T * T * total


@register("ps7.streamed-kd", hint="keep, for every row, a running maximum and a running sum of exponentials for the "
                                  "student and for the teacher, and one more running sum for the teacher-weighted "
                                  "log-ratio; rescale all of them whenever a maximum grows (the online softmax). "
                                  "KL(p_t || p_s) is then sum_i p_t,i (b_i - a_i) plus the difference of the two "
                                  "log-normalisers.")
def _check_ps7_streamed_kd(fn):
    from kdedu.losses import kd_loss

    function("streamed_kd(blocks, T)", fn)
    for seed, N, widths, T, dtype, offset in _STREAM_CASES:
        V = sum(widths)
        s, t = _stream_logits(seed, N, V, dtype, offset)
        expected = kd_loss(s.double(), t.double(), T).item()
        blocks = _Blocks(s, t, widths)
        got = fn(blocks, T)
        where = f"with N = {N} rows, V = {V} split into blocks of {list(widths)} columns, T = {T:g}"
        if isinstance(got, torch.Tensor) and got.numel() != 1:
            raise Wrong(f"{where}, streamed_kd returned a tensor of shape {tuple(got.shape)}; it should return one "
                        "number, the loss averaged over the rows.")
        value = answer_number("streamed_kd's result", got)
        if blocks.kept:
            raise Wrong(f"{where}: your function kept the blocks it had read (for instance in a list, to put them "
                        "together); keep only running numbers per row, and let each block go once it is used.")
        if blocks.served < len(widths):
            raise Wrong(f"{where}: your function read only {blocks.served} of the {len(widths)} blocks; the "
                        "loss needs the whole vocabulary.")
        if math.isnan(value) or math.isinf(value):
            raise Wrong(f"{where}, streamed_kd returned {value}: with logits around {offset:g} an exponential "
                        "overflowed. Exponentiate only differences to the running maximum.")
        rel = 1e-4 if dtype == torch.float32 else 1e-6
        if math.isclose(value, expected, rel_tol=rel, abs_tol=1e-7):
            continue
        s64, t64 = s.double(), t.double()
        slips = [
            (kd_loss(t64, s64, T).item(), "you computed KL(p_s || p_t); the KD loss is KL(p_t || p_s), the "
             "teacher's distribution first."),
            (N * expected, f"you summed over the {N} rows; average over them."),
        ]
        if T != 1:
            slips.append((expected / (T * T), "the loss lacks the factor T^2 (a KD loss in kdedu always includes "
                          "it)."))
        if len(widths) > 1:
            slips.append((_per_block_kl(s64, t64, widths, T), "you normalised each block on its own and added the "
                          "blocks' divergences; the softmax runs over the whole vocabulary, so the running sums "
                          "must carry from block to block."))
            slips.append((kd_loss(s64[:, -widths[-1]:], t64[:, -widths[-1]:], T).item(), "that is the loss of the "
                          "last block alone: the running state was reset at each block."))
        for wrong, message in slips:
            if math.isclose(value, wrong, rel_tol=rel, abs_tol=1e-7):
                raise Wrong(f"{where}: {message}")
        close(f"streamed_kd {where}", value, expected, rel=rel, abs_=1e-7)
    return ("the KD loss in one pass over the vocabulary, with O(N) memory beside the block in hand: what the fused "
            "kernel of chapter 19 does within a row, and what lets a chunked loss skip the full [N, V] softmax.")
