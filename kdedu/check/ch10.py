"""Auto-checks for the exercises of chapter 10 (intermediate-layer distillation)."""

from __future__ import annotations

import math

import torch

from kdedu.check import Wrong, function, register, same_tensor


def _as_dict(name: str, got) -> dict[int, int]:
    if not isinstance(got, dict):
        raise Wrong(f"{name} should return a dict {{student_layer: teacher_layer}}, got {type(got).__name__}.")
    try:
        return {int(j): int(k) for j, k in got.items()}
    except (TypeError, ValueError):
        raise Wrong(f"{name} should map integers to integers, got {got!r}.") from None


@register("10.last-map", hint="PKD-Last keeps the skip map's keys (every student layer but the last) and moves "
                              "their targets to the top of the teacher, just below its last layer.")
def _check_10_last_map(fn):
    function("my_last_map(M, N)", fn)
    for M, N in ((2, 4), (3, 6), (4, 12), (6, 12), (2, 12), (1, 6), (3, 5)):
        got = _as_dict(f"my_last_map({M}, {N})", fn(M, N))
        expected, k = {}, N
        for j in range(M - 1, 0, -1):  # walk down from the teacher's top: an independent count
            k -= 1
            expected[j] = k
        expected = dict(sorted(expected.items()))
        if got != expected:
            if got == {**expected, M: N}:
                raise Wrong(f"my_last_map({M}, {N}) = {got} also maps the last student layer; like PKD-Skip, "
                            "PKD-Last leaves it to the KD loss on the logits.", "leave the last student layer out.")
            if got == {j: j * (N // M) for j in range(1, M)}:
                raise Wrong(f"my_last_map({M}, {N}) = {got} is PKD-Skip's map (every N/M-th layer), not the top "
                            "layers.")
            if got == {j: N - M + j + 1 for j in range(1, M)}:
                raise Wrong(f"my_last_map({M}, {N}) = {got} uses the teacher's last layer, which the logits already "
                            "cover; shift the targets down by one.")
            raise Wrong(f"my_last_map({M}, {N}) = {got}, expected {expected}.")
    return "PKD-Last: student layer j <- teacher layer N - M + j (12 -> 4: {1: 9, 2: 10, 3: 11})."


@register("10.alp-entropy", hint="each student layer's weights are a softmax over the teacher layers; compute their "
                                 "log in one step (a log of a softmax that underflows to 0 gives -inf), then the "
                                 "entropy -sum p log p along that axis.")
def _check_10_alp_entropy(fn):
    function("my_alp_entropy(h_s, h_t, scale)", fn)
    g = torch.Generator().manual_seed(10)
    for B, M, N, H, scale, size in ((4, 3, 6, 8, 1.0, 1.0), (2, 2, 5, 16, 0.25, 1.0), (1, 1, 1, 4, 1.0, 1.0),
                                    (3, 3, 6, 32, 1.0, 10.0)):  # the last: long vectors, nearly one-hot weights
        h_s, h_t = size * torch.randn(B, M, H, generator=g), size * torch.randn(B, N, H, generator=g)
        expected = torch.empty(B, M, dtype=torch.float64)
        for b in range(B):  # the formula, entry by entry, in float64
            for j in range(M):
                scores = [scale * float(h_s[b, j].double() @ h_t[b, k].double()) for k in range(N)]
                top = max(scores)
                z = sum(math.exp(x - top) for x in scores)
                logs = [x - top - math.log(z) for x in scores]
                expected[b, j] = -sum(math.exp(lp) * lp for lp in logs)
        got = fn(h_s.clone(), h_t.clone(), scale)
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != (B, M):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise Wrong(f"my_alp_entropy should return a (B, M) = {(B, M)} tensor, one entropy per example and "
                        f"student layer (a distribution over the N teacher layers each); got {shape}.")
        if not torch.isfinite(got).all():
            raise Wrong(f"my_alp_entropy gives nan or inf when the weights are nearly one-hot (vectors of length "
                        f"~{size * H ** 0.5:.0f}): 0 log 0 must count as 0.")
        same_tensor(f"my_alp_entropy on (B, M, N, H) = {(B, M, N, H)}, scale {scale}", got.double(), expected,
                    atol=1e-4, rtol=1e-4)
    return ("the entropy of each student layer's weights: log N for uniform attention, near 0 when one teacher "
            "layer takes all the weight.")


@register("10.ckd-groups", hint="compute the M + 1 group boundaries first, then turn each pair of neighbouring "
                                "boundaries into a list of layers; work my_groups(2, 5) out by hand.")
def _check_10_ckd_groups(fn):
    function("my_groups(M, N)", fn)
    for M, N in ((3, 6), (2, 5), (4, 12), (1, 6), (3, 7), (6, 6), (5, 12)):
        got = fn(M, N)
        try:
            got = [[int(k) for k in grp] for grp in got]
        except TypeError:
            raise Wrong(f"my_groups({M}, {N}) should return a list of lists of layer numbers, got {got!r}.") from None
        if len(got) != M:
            raise Wrong(f"my_groups({M}, {N}) has {len(got)} groups; CKD needs one per student layer ({M}).")
        if sorted(k for grp in got for k in grp) != list(range(1, N + 1)):
            raise Wrong(f"my_groups({M}, {N}) = {got} does not hold each teacher layer 1..{N} exactly once.",
                        "teacher layers are numbered from 1 (0 is the embedding output)")
        if any(grp != list(range(grp[0], grp[0] + len(grp))) for grp in got if grp) or \
                [grp[0] for grp in got if grp] != sorted(grp[0] for grp in got if grp):
            raise Wrong(f"my_groups({M}, {N}) = {got}: groups must be contiguous and in order.")
        sizes = [len(grp) for grp in got]
        ends = [sum(sizes[:i + 1]) for i in range(M)]
        expected_ends = [round(i * N / M) for i in range(1, M + 1)]  # Python rounds halves to even
        if ends != expected_ends:
            raise Wrong(f"my_groups({M}, {N}) = {got}: the group ends should be at round(i * N / M) = "
                        f"{expected_ends}.")
    return "contiguous groups, every teacher layer in exactly one: nothing skipped (6 -> 3: [[1, 2], [3, 4], [5, 6]])."
