"""Batches whose targets the student wrote: the roll-ins of ImitKD and the on-policy samples of GKD.

Both methods take a batch of :func:`kdedu.data.translation_loader`, let the current student translate some of its
sources (:func:`generate`, with :mod:`kdedu.models.decoding`), and put those outputs in place of the targets
(:func:`replace_targets`), so that the teacher scores the student's own prefixes. Two batch layouts
(:mod:`kdedu.data.seq_batches`):

* encoder-decoder: the target of row ``r`` is ``decoder_input_ids[r] = BOS y_1 .. y_n`` with
  ``labels[r] = y_1 .. y_n EOS``;
* decoder-only (``causal_lm=True``): one sequence ``x BOS y EOS`` with ``labels`` = the sequence on ``y EOS`` and
  ``-100`` on the source and BOS (position ``i`` predicts token ``i + 1``).

An output that hit ``max_length`` before EOS keeps its tokens and gets no EOS target (the student never learns to
stop where it was cut off).
"""

from __future__ import annotations

import torch

from kdedu.models import decoding
from kdedu.train import IGNORE_INDEX

__all__ = ["prompts", "generate", "replace_targets", "STRATEGIES"]

STRATEGIES = ("sample", "greedy")


def _check_batch(inputs, causal_lm: bool) -> None:
    if not isinstance(inputs, dict) or not isinstance(inputs.get("input_ids"), torch.Tensor):
        raise TypeError("the batch must be a dict with input_ids (kdedu.data.translation_loader)")
    if not causal_lm and inputs.get("decoder_input_ids") is None:
        raise ValueError("an encoder-decoder batch needs decoder_input_ids; for a decoder-only model pass "
                         "causal_lm=True (and translation_loader(..., causal_lm=True))")


def prompts(inputs: dict, causal_lm: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of the sources, as decoding takes them: the encoder's inputs, or for a
    decoder-only batch the tokens before the first BOS of each row (right-padded with PAD)."""
    _check_batch(inputs, causal_lm)
    ids = inputs["input_ids"]
    if not causal_lm:
        mask = inputs.get("attention_mask")
        return ids, (ids != decoding.PAD).long() if mask is None else mask
    is_bos = ids == decoding.BOS
    if not is_bos.any(1).all():
        raise ValueError("every row of a decoder-only batch needs a BOS between the source and the target")
    length = is_bos.long().argmax(1)                                             # (B,) source lengths
    width = int(length.max())
    keep = torch.arange(width, device=ids.device)[None] < length[:, None]        # (B, P)
    return torch.where(keep, ids[:, :width], torch.full_like(ids[:, :width], decoding.PAD)), keep.long()


def generate(model, inputs: dict, rows: torch.Tensor, causal_lm: bool = False, strategy: str = "sample",
             temperature: float = 1.0, max_length: int | None = None, generator: torch.Generator | None = None):
    """The model's outputs for the sources of ``rows`` (a 1-D index tensor): ``(token lists, finished)``, where
    ``finished[i]`` says the output ended with EOS. ``strategy``: ``"sample"`` (ancestral sampling at
    ``temperature`` with ``generator``) or ``"greedy"``. ``max_length`` defaults to the source width + 10."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    ids, mask = prompts(inputs, causal_lm)
    ids, mask = ids[rows], mask[rows]
    width = max(int(mask.sum(1).max()), 1) if len(rows) else 1
    ids, mask = ids[:, :width], mask[:, :width]                                  # drop all-padding columns
    limit = ids.shape[1] + 10 if max_length is None else max_length
    if len(rows) == 0:
        return [], []
    if strategy == "sample":
        tokens, _ = decoding.sample(model, ids, mask, temperature, limit, generator)
    else:
        tokens = decoding.greedy(model, ids, mask, limit)
    return tokens, [len(t) < limit for t in tokens]


def _pad(rows: list, value: int, device) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long, device=device)


def replace_targets(inputs: dict, labels: torch.Tensor, rows, tokens, finished, causal_lm: bool = False):
    """A new ``(inputs, labels)`` batch: the targets of ``rows`` replaced by ``tokens`` (lists of ids, no BOS/EOS;
    EOS is the last target where ``finished``), every other row as it was; re-padded to the new width."""
    _check_batch(inputs, causal_lm)
    rows = [int(r) for r in rows]
    if not (len(rows) == len(tokens) == len(finished)):
        raise ValueError(f"rows, tokens and finished must have one entry each: {len(rows)}, {len(tokens)}, "
                         f"{len(finished)}")
    new = dict(zip(rows, zip(tokens, finished, strict=True), strict=True))
    device, n = labels.device, labels.shape[0]
    out = dict(inputs)
    if not causal_lm:
        dec, lab = inputs["decoder_input_ids"], labels
        dec_rows, lab_rows = [], []
        for r in range(n):
            if r in new:
                toks, done = new[r]
                toks = list(toks)
                dec_rows.append([decoding.BOS] + (toks if done else toks[:-1]))
                lab_rows.append(toks + [decoding.EOS] if done else toks)
            else:
                length = int((lab[r] != IGNORE_INDEX).sum())
                dec_rows.append(dec[r, :length].tolist())
                lab_rows.append(lab[r, :length].tolist())
        out["decoder_input_ids"] = _pad(dec_rows, decoding.PAD, device)
        lengths = torch.tensor([len(d) for d in dec_rows], device=device)
        out["decoder_attention_mask"] = (torch.arange(out["decoder_input_ids"].shape[1], device=device)[None]
                                         < lengths[:, None]).long()
        return out, _pad(lab_rows, IGNORE_INDEX, device)
    ids = inputs["input_ids"]
    source_len = (ids == decoding.BOS).long().argmax(1)
    mask = inputs.get("attention_mask")
    seq_rows, lab_rows = [], []
    for r in range(n):
        if r in new:
            toks, done = new[r]
            p = int(source_len[r])
            target = list(toks) + ([decoding.EOS] if done else [])
            seq_rows.append(ids[r, :p].tolist() + [decoding.BOS] + target)
            lab_rows.append([IGNORE_INDEX] * (p + 1) + target)
        else:
            length = int(mask[r].sum()) if mask is not None else int((ids[r] != decoding.PAD).sum())
            seq_rows.append(ids[r, :length].tolist())
            lab_rows.append(labels[r, :length].tolist())
    out["input_ids"] = _pad(seq_rows, decoding.PAD, device)
    out["attention_mask"] = (out["input_ids"] != decoding.PAD).long()
    return out, _pad(lab_rows, IGNORE_INDEX, device)
