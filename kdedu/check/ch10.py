"""Auto-checks for the exercises of chapter 10 (intermediate-layer distillation)."""

from __future__ import annotations

import torch

from kdedu.check import Wrong, function, register, same_tensor


def _as_dict(name: str, got) -> dict[int, int]:
    if not isinstance(got, dict):
        raise Wrong(f"{name} should return a dict {{student_layer: teacher_layer}}, got {type(got).__name__}.")
    try:
        return {int(j): int(k) for j, k in got.items()}
    except (TypeError, ValueError):
        raise Wrong(f"{name} should map integers to integers, got {got!r}.") from None


@register("10.skip-map", hint="the map has one entry per student layer except the last, which learns from the "
                              "logits; layers are numbered from 1.")
def _check_10_skip_map(fn):
    function("my_skip_map(M, N)", fn)
    for M, N in ((2, 4), (3, 6), (4, 12), (6, 12), (2, 12), (1, 6)):
        got = _as_dict(f"my_skip_map({M}, {N})", fn(M, N))
        expected, k = {}, 0
        for j in range(1, M):  # walk the teacher in steps of N / M: an independent count
            k += N // M
            expected[j] = k
        if got != expected:
            if got == {**expected, M: N}:
                raise Wrong(f"my_skip_map({M}, {N}) = {got} also maps the last student layer; PKD-Skip leaves it "
                            "to the KD loss on the logits.", "leave the last student layer out of the map.")
            if got == {j: j for j in range(1, M)}:
                raise Wrong(f"my_skip_map({M}, {N}) = {got} maps layer j to teacher layer j: that is PKD-Last's "
                            "opposite, the bottom layers, not every (N/M)-th one.")
            raise Wrong(f"my_skip_map({M}, {N}) = {got}, expected {expected}.")
    return "PKD-Skip: every (N/M)-th teacher layer, the last one left to the logits (12 -> 4: {1: 3, 2: 6, 3: 9})."


@register("10.alp-attention", hint="you need one dot product per (student layer, teacher layer) pair; each student "
                                   "layer then gets a distribution over the teacher layers: which axis is that?")
def _check_10_alp_attention(fn):
    function("my_alp_attention(h_s, h_t)", fn)
    g = torch.Generator().manual_seed(10)
    for B, M, N, H in ((4, 3, 6, 8), (2, 2, 5, 16), (1, 1, 1, 4)):
        h_s, h_t = torch.randn(B, M, H, generator=g), torch.randn(B, N, H, generator=g)
        expected = torch.empty(B, M, N, dtype=torch.float64)
        for b in range(B):  # the formula, entry by entry, in float64
            for j in range(M):
                scores = torch.tensor([float(h_s[b, j].double() @ h_t[b, k].double()) for k in range(N)])
                expected[b, j] = (scores - scores.max()).exp() / (scores - scores.max()).exp().sum()
        got = fn(h_s.clone(), h_t.clone())
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != (B, M, N):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise Wrong(f"my_alp_attention should return a (B, M, N) = {(B, M, N)} tensor, got {shape}.")
        if M > 1 and torch.allclose(got.double().sum(1), torch.ones(B, N, dtype=torch.float64), atol=1e-5) and \
                not torch.allclose(got.double().sum(-1), torch.ones(B, M, dtype=torch.float64), atol=1e-5):
            raise Wrong("your weights sum to 1 over the student layers; ALP-KD normalises over the teacher layers "
                        "(each student layer gets a distribution over all teacher layers).")
        same_tensor(f"my_alp_attention on (B, M, N, H) = {(B, M, N, H)}", got.double(), expected, atol=1e-5,
                    rtol=1e-4)
    return "alpha_jk = softmax_k(h_S^j . h_T^k): one distribution over the teacher layers per student layer."


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
