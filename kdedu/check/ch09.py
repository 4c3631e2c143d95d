"""Auto-checks for the exercises of chapter 09 (registered with :func:`kdedu.check.register`)."""

from __future__ import annotations

import math
import numbers

import torch

from kdedu.check import Wrong, function, register, same_tensor


def _ch09_indices(name: str, got) -> list[int]:
    if isinstance(got, torch.Tensor):
        got = got.tolist()
    if isinstance(got, (str, bytes)) or not hasattr(got, "__iter__"):
        raise Wrong(f"{name} should return a list or tuple of block indices, got {type(got).__name__}.")
    out = []
    for k in got:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise Wrong(f"{name} should hold integer block indices, got {got!r}.")
        out.append(int(k))
    return out


@register("09.every-other", hint="blocks are numbered from 0, as in transformers: keep the first block, skip the "
                                 "next, and so on; check your function on the chapter's 6-block teacher.")
def _check_09_every_other(fn):
    function("every_other(num_teacher)", fn)
    for n in (2, 4, 6, 12, 24):
        expected = [k for k in range(n) if k % 2 == 0]  # keep a block, skip the next, from block 0
        got = _ch09_indices(f"your every_other({n})", fn(n))
        if got == expected:
            continue
        if got == [k + 1 for k in expected]:
            raise Wrong(f"every_other({n}) = {got}: in transformers' 0-based numbering these are the second, fourth, "
                        "... blocks: one layer out of two, but starting from the second block (or the right blocks "
                        "numbered from 1). Number the blocks from 0, as student_from_teacher does, and start with "
                        f"block 0; the last block is {n - 1}.")
        if any(not 0 <= k < n for k in got):
            raise Wrong(f"every_other({n}) = {got} names blocks outside 0..{n - 1}: a {n}-layer teacher has blocks "
                        f"0 to {n - 1}.")
        if len(got) != n // 2:
            raise Wrong(f"every_other({n}) returns {len(got)} blocks; one layer out of two keeps {n // 2}.")
        raise Wrong(f"every_other({n}) = {got}, expected {n // 2} blocks, one out of two, starting from block 0.")
    return ("one layer out of two from block 0: (0, 2, 4, 6, 8, 10) for BERT-base's 12 layers. DistilBERT's "
            "released extraction script copies (0, 2, 4, 7, 9, 11) instead, which keeps the top block.")


def _ch09_cosine_reference(h_s: torch.Tensor, h_t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - cos per real token, averaged over the real tokens of the whole batch (loops: obviously right)."""
    total, count = torch.zeros((), dtype=torch.float64), 0
    for b in range(h_s.shape[0]):
        for position in range(h_s.shape[1]):
            if mask[b, position]:
                a, c = h_s[b, position].double(), h_t[b, position].double()
                total = total + 1 - (a @ c) / (a.norm() * c.norm())
                count += 1
    return total / count


@register("09.cosine-loss", hint="a cosine compares two vectors along one dimension: which one holds the hidden "
                                 "features? Then leave the padding positions out of the average.")
def _check_09_cosine_loss(fn):
    function("cosine_loss(h_s, h_t, attention_mask)", fn)
    g = torch.Generator().manual_seed(9)
    lengths = torch.tensor([5, 2, 4])
    mask = (torch.arange(6)[None, :] < lengths[:, None]).long()  # (3, 6), right padding of different lengths
    h_s = torch.randn(3, 6, 8, generator=g, dtype=torch.float64)
    h_t = torch.randn(3, 6, 8, generator=g, dtype=torch.float64) + 0.5 * h_s  # related, not identical
    expected = _ch09_cosine_reference(h_s, h_t, mask)
    leaf = h_s.clone().requires_grad_(True)
    got = fn(leaf, h_t.clone(), mask.clone())
    if not isinstance(got, torch.Tensor):
        raise Wrong("cosine_loss should return a torch.Tensor (a loss to call backward() on), "
                    f"got {type(got).__name__}.")
    if got.numel() != 1:
        raise Wrong(f"cosine_loss should return one number (a 0-dim tensor), got shape {tuple(got.shape)}.")
    if got.grad_fn is None:
        raise Wrong("cosine_loss returns a tensor without a gradient: keep the computation in torch (no .item(), "
                    "no .detach(), no numpy) so that backward() reaches the student.")
    value = got.detach().double().reshape(())
    cos_tokens = torch.nn.functional.cosine_similarity(h_s, h_t, dim=-1)  # (3, 6), for the diagnoses below
    real = mask.bool()
    diagnoses = [
        ((1 - cos_tokens).mean(), "that averages over every position, padding included; average over the "
                                  "tokens where attention_mask is 1 only."),
        (cos_tokens[real].mean(), "that is the mean cosine similarity itself; the loss is 1 - cos, which is 0 when "
                                  "the directions agree."),
        ((1 - cos_tokens)[real].sum(), "that is the sum over the real tokens; DistilBERT averages them."),
        (torch.stack([(1 - cos_tokens[b])[real[b]].mean() for b in range(3)]).mean(),
         "that averages each sentence first and then the sentences, so a short sentence's tokens weigh more; "
         "average over all real tokens of the batch at once."),
    ]
    if not torch.isclose(value, expected, atol=1e-8, rtol=1e-6):
        for wrong, message in diagnoses:
            if torch.isclose(value, wrong.double(), atol=1e-8, rtol=1e-6):
                raise Wrong(f"your loss is {value.item():.5f}: {message}")
        same_tensor("your cosine_loss on a batch of 3 padded sentences", value, expected, atol=1e-8, rtol=1e-6)
    same_tensor("your cosine_loss when student and teacher states are equal",
                fn(h_t.clone(), h_t.clone(), mask.clone()).detach().double().reshape(()),
                torch.zeros((), dtype=torch.float64), atol=1e-7)
    scaled = fn(3.0 * h_s.clone(), h_t.clone(), mask.clone()).detach().double().reshape(())
    if not torch.isclose(scaled, expected, atol=1e-8, rtol=1e-6):
        raise Wrong("scaling the student's states by 3 changes your loss; a cosine only sees directions.")
    return "1 - cos over the real tokens only, averaged over the batch: kdedu.losses.cosine_hidden_loss."


def _ch09_bert_parts(num_layers: int, hidden: int, intermediate: int, vocab: int, positions: int) -> dict[str, int]:
    """Diagnostic pieces of a BERT count (the expected total itself is counted on a built model)."""
    h, i = hidden, intermediate
    return {
        "token_types": 2 * h,
        "positions": positions * h,
        "layernorms": 2 * h + num_layers * 4 * h,  # embedding LayerNorm + two per block
        "biases": num_layers * (4 * h + i + h),    # q, k, v, attention output; intermediate; output
        "pooler": h * h + h,
        "per_block": 4 * h * h + 2 * h * i + 9 * h + i,
    }


@register("09.param-count", hint="count one piece at a time and check each against count_parameters on the "
                                 "chapter's modules: bert.embeddings, then one block, bert.encoder.layer[0].")
def _check_09_param_count(fn):
    function("bert_params(num_layers, hidden, intermediate, vocab_size, max_positions)", fn)
    from kdedu.models import count_parameters, small_bert

    configs = ((1, 8, 16, 50, 20), (2, 32, 64, 100, 64), (3, 48, 200, 500, 128), (6, 24, 96, 1000, 512))
    for layers, hidden, inter, vocab, positions in configs:
        model = small_bert(layers, hidden, 4, intermediate=inter, vocab_size=vocab, max_position_embeddings=positions)
        expected = count_parameters(model)  # counted on a real BertModel (no pooler), not from a formula
        call = f"bert_params({layers}, {hidden}, {inter}, {vocab}, {positions})"
        got = fn(layers, hidden, inter, vocab, positions)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, (int, float)) or not math.isfinite(got):
            raise Wrong(f"{call} should return a number of parameters, got {got!r}.")
        if got == expected:
            continue
        parts = _ch09_bert_parts(layers, hidden, inter, vocab, positions)
        missing = expected - got
        for part, message in (("pooler", "that counts the pooler (a dense H x H layer with its bias), which the "
                                         "student drops."),
                              ("token_types", "the 2 token-type embeddings (2 x H) are missing."),
                              ("positions", "the position embeddings (max_positions x H) are missing."),
                              ("layernorms", "the LayerNorms are missing: each has a weight and a bias of size H "
                                             "(one after the embeddings, two per block)."),
                              ("biases", "the biases of the linear layers are missing.")):
            if missing == (-parts[part] if part == "pooler" else parts[part]):
                raise Wrong(f"{call} = {got:,}, expected {expected:,}: {message}")
        if (got - (expected - layers * parts["per_block"])) % parts["per_block"] == 0 and got != expected:
            raise Wrong(f"{call} = {got:,}, expected {expected:,}: the per-block count is right but the number of "
                        "blocks is off.")
        raise Wrong(f"{call} = {got:,}, expected {expected:,} (counted on a BertModel built with these sizes).")
    base, pooler = fn(12, 768, 3072, 30522, 512), 768 * 768 + 768
    distil = fn(6, 768, 3072, 30522, 512) - 2 * 768  # DistilBERT: half the blocks, no token types, no pooler
    return (f"right on every size. BERT-base: {base / 1e6:.1f} M, {(base + pooler) / 1e6:.1f} M with its pooler (the "
            f"deck's 110 M); DistilBERT, six blocks without token types or pooler: {distil / 1e6:.1f} M "
            "(the deck's 66 M).")
