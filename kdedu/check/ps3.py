"""Auto-checks for the new exercises of problem set 3, Part III, distilling transformers (chapters 09-10)
(book/assignments/ps3-*.md).

The problem set's other exercises are the chapters' own (kdedu/check/chNN.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdedu.check import Wrong, function, register, same_tensor


def _ps3_states(seed: int) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Hidden states of a 3-block student and a 6-block teacher: tuples of (B, L, H), index 0 the embeddings.

    The vectors have very different lengths (a loss that does not normalise them is far off), and the student's
    states lean towards the teacher's so that cosines are neither all near 0 nor all near 1."""
    g = torch.Generator().manual_seed(seed)
    B, L, H = 4, 5, 8
    hs_t = tuple((1 + 4 * torch.rand(B, L, 1, generator=g, dtype=torch.float64))
                 * torch.randn(B, L, H, generator=g, dtype=torch.float64) for _ in range(7))
    hs_s = tuple(0.3 * (1 + 4 * torch.rand(B, L, 1, generator=g, dtype=torch.float64))
                 * torch.randn(B, L, H, generator=g, dtype=torch.float64) + 0.2 * hs_t[2 * i] for i in range(4))
    return hs_s, hs_t


def _ps3_cls_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The cosine of the [CLS] vectors (position 0) of two (B, L, H) states, (B,)."""
    return F.cosine_similarity(a[:, 0], b[:, 0], dim=-1)


def _ps3_pairs_loss(hs_s, hs_t, layer_map, per_pair) -> torch.Tensor:
    """Sum over the map's pairs of ``per_pair(student state, teacher state)``, float64."""
    return torch.stack([per_pair(hs_s[j].double(), hs_t[k].double()) for j, k in layer_map.items()]).sum()


@register("ps3.patient-loss", hint="PKD reads one vector per layer, the one the classifier reads. For two unit "
                                   "vectors, expand the squared distance |a - b|^2 = |a|^2 - 2 a.b + |b|^2 and see "
                                   "what is left; then mind how the batch and the pairs of the map are combined.")
def _check_ps3_patient_loss(fn):
    from kdedu import losses

    function("patient_loss(hs_s, hs_t, layer_map)", fn)
    for seed, layer_map in ((3, {1: 2, 2: 4, 3: 6}), (4, {1: 4, 2: 5}), (5, {3: 6}), (6, {1: 2, 2: 4})):
        hs_s, hs_t = _ps3_states(seed)
        # the reference: kdedu's PKD loss on the [CLS] vectors (position 0) of every layer
        expected = losses.pkd_loss([h[:, 0] for h in hs_s], [h[:, 0] for h in hs_t], layer_map)
        call = f"your patient_loss with the map {layer_map}"
        leaves = tuple(h.clone().requires_grad_(True) for h in hs_s)
        got = fn(leaves, tuple(h.clone() for h in hs_t), dict(layer_map))
        if not isinstance(got, torch.Tensor):
            raise Wrong(f"{call} should return a torch.Tensor (a loss to call backward() on), got "
                        f"{type(got).__name__}.")
        if got.numel() != 1:
            raise Wrong(f"{call} should return one number (a 0-dim tensor), got shape {tuple(got.shape)}.",
                        "average over the examples of the batch, and add up the pairs of the map.")
        if got.grad_fn is None:
            raise Wrong(f"{call} returns a tensor without a gradient: keep the computation in torch (no .item(), "
                        "no .detach(), no numpy) so that backward() reaches the student.")
        value = got.detach().double().reshape(())
        if torch.isclose(value, expected, atol=1e-8, rtol=1e-6):
            continue

        n = len(layer_map)
        diagnoses = [
            (_ps3_pairs_loss(hs_s, hs_t, layer_map, lambda a, b: (1 - _ps3_cls_cos(a, b)).mean()),
             "that is DistilBERT's 1 - cos on the [CLS] vectors. PKD's squared distance between the unit "
             "vectors is a multiple of it: which one?"),
            (_ps3_pairs_loss(hs_s, hs_t, layer_map, lambda a, b: _ps3_cls_cos(a, b).mean()),
             "that is the cosine itself, which grows as the vectors align; a loss must shrink."),
            (_ps3_pairs_loss(hs_s, hs_t, layer_map, lambda a, b: 2 * (1 - F.cosine_similarity(a, b, dim=-1)).mean()),
             "that averages over every token of the sentences, padding included; PKD reads only the [CLS] vector, "
             "position 0."),
            (_ps3_pairs_loss(hs_s, hs_t, layer_map, lambda a, b: (a[:, 0] - b[:, 0]).pow(2).sum(-1).mean()),
             "the vectors are not normalised: PKD compares unit vectors, so only their directions count."),
            (expected / hs_s[0].shape[-1], "that averages the squared differences over the H coordinates; PKD's "
                                            "squared distance sums them."),
            (expected * hs_s[0].shape[0], "that sums over the examples of the batch; kdedu's PKD averages them."),
            (expected / n, "that averages over the pairs of the map; PKD's L_PT sums them."),
            (_ps3_pairs_loss(hs_s, hs_t, layer_map, lambda a, b: (F.normalize(a, dim=1)[:, 0]
                                                                 - F.normalize(b, dim=1)[:, 0]).pow(2).sum(-1).mean()),
             "the vectors are normalised along the wrong axis (the tokens): normalise each [CLS] vector over its "
             "H coordinates."),
            (_ps3_pairs_loss(hs_s, hs_t, {j - 1: k for j, k in layer_map.items()},
                             lambda a, b: 2 * (1 - _ps3_cls_cos(a, b)).mean()),
             "the student's index is off by one: hidden state 0 is the embedding output, j the output of block j."),
            (_ps3_pairs_loss(hs_s, hs_t, {j: k - 1 for j, k in layer_map.items()},
                             lambda a, b: 2 * (1 - _ps3_cls_cos(a, b)).mean()),
             "the teacher's index is off by one: hidden state 0 is the embedding output, k the output of block k."),
        ]
        for wrong, message in diagnoses:
            if not torch.isclose(wrong, expected, atol=1e-8, rtol=1e-6) and \
                    torch.isclose(value, wrong.double(), atol=1e-8, rtol=1e-6):
                raise Wrong(f"{call} is {value.item():.5f}: {message}")
        same_tensor(call, value, expected, atol=1e-8, rtol=1e-6)
    hs_s, hs_t = _ps3_states(7)
    base = fn(hs_s, hs_t, {1: 2, 2: 4}).detach().double().reshape(())
    scaled = fn(tuple(3.0 * h for h in hs_s), hs_t, {1: 2, 2: 4}).detach().double().reshape(())
    if not torch.isclose(scaled, base, atol=1e-8, rtol=1e-6):
        raise Wrong("scaling the student's states by 3 changes your loss; PKD compares unit vectors, only their "
                    "directions count.")
    return ("|a/|a| - b/|b||^2 = 2 - 2 cos(a, b): PKD's L_PT is twice DistilBERT's cosine loss, read on the [CLS] "
            "vector only and summed over the mapped layers. Chapter 09's and chapter 10's hidden-state losses "
            "measure the same thing: the angle between student and teacher states.")
