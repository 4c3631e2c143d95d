"""Auto-checks for the new exercises of problem set 5, Part V, sequences (chapters 13-16) (book/assignments/ps5-*.md).

The problem set's other exercises are the chapters' own (kdedu/check/chNN.py)."""

from __future__ import annotations

import math

import torch

from kdedu.check import Wrong, answer_number, close, function, register

# (seed, B sentences, L positions, V words, T, what the padding holds)
_WORD_CASES = ((0, 4, 7, 11, 2.0, "noise"), (1, 3, 5, 6, 1.0, "noise"), (2, 5, 9, 8, 0.5, "noise"),
               (3, 4, 6, 7, 3.0, "inf"))


def _word_batch(seed: int, B: int, L: int, V: int, padding: str):
    """Student and teacher logits ``(B, L, V)`` of a padded batch and its ``lengths`` ``(B,)``, all different (one
    sentence fills the whole length). The padding positions hold large noise, or ``-inf`` and ``nan``."""
    g = torch.Generator().manual_seed(500 + seed)
    s = 2 * torch.randn(B, L, V, generator=g, dtype=torch.float64)
    t = 3 * torch.randn(B, L, V, generator=g, dtype=torch.float64)
    lengths = torch.randperm(L, generator=g)[:B] + 1                 # distinct lengths in 1..L
    lengths[0] = L
    pad = torch.arange(L)[None, :] >= lengths[:, None]               # (B, L)
    if padding == "inf":
        s[pad], t[pad] = float("nan"), float("-inf")
    else:
        s[pad] = 40 * torch.randn(int(pad.sum()), V, generator=g, dtype=torch.float64)
        t[pad] = 40 * torch.randn(int(pad.sum()), V, generator=g, dtype=torch.float64)
    return s, t, lengths


def _token_kl(s: torch.Tensor, t: torch.Tensor, T: float) -> torch.Tensor:
    """``KL(p_t(T) || p_s(T))`` per token ``(B, L)``, written out (no T^2), for finite rows."""
    log_pt, log_ps = torch.log_softmax(t / T, -1), torch.log_softmax(s / T, -1)
    return (log_pt.exp() * (log_pt - log_ps)).sum(-1)


@register("ps5.word-kd", hint="build a (B, L) mask of the real tokens from the lengths, and average the per-token "
                              "KD loss over the tokens the mask keeps, every real token of the batch counting "
                              "once. The padding must not reach any softmax: select the real rows, or use "
                              "torch.where, since 0 * nan is nan.")
def _check_ps5_word_kd(fn):
    from kdedu.losses import kd_loss

    function("word_kd(student_logits, teacher_logits, lengths, T)", fn)
    for seed, B, L, V, T, padding in _WORD_CASES:
        s, t, lengths = _word_batch(seed, B, L, V, padding)
        mask = torch.arange(L)[None, :] < lengths[:, None]
        expected = kd_loss(s, t, T, mask=mask).item()
        got = fn(s.clone(), t.clone(), lengths.clone(), T)
        where = f"on a batch of {B} sentences padded to {L} (T = {T:g})"
        if isinstance(got, torch.Tensor) and got.numel() != 1:
            raise Wrong(f"{where}, word_kd returned a tensor of shape {tuple(got.shape)}; it should return one number, "
                        "the loss averaged over the real tokens.")
        value = answer_number("word_kd's result", got)
        if math.isnan(value) or math.isinf(value):
            raise Wrong(f"{where}, word_kd returned {value}: the padding positions (here -inf and nan) reached a "
                        "softmax or a product. Multiplying by a 0/1 mask does not remove a nan (0 * nan = nan).")
        if math.isclose(value, expected, rel_tol=1e-6, abs_tol=1e-9):
            continue
        if padding == "noise":
            kl = _token_kl(s, t, T)                                    # (B, L), finite everywhere here
            real = torch.where(mask, kl, torch.zeros_like(kl))
            slips = (
                (T * T * kl.mean(), "you averaged over every position, padding included; only the real tokens "
                 "count."),
                (T * T * real.sum() / (B * L), "you zeroed the padding but divided by every position, B x L; divide "
                 "by the number of real tokens."),
                (T * T * (real.sum(1) / lengths).mean(), "you averaged each sentence over its tokens, then over the "
                 "sentences, so a short sentence's tokens weigh more; average over all real tokens of the batch."),
                (T * T * real.sum(1).mean(), "you summed the tokens of each sentence and averaged over the sentences; "
                 "average over all real tokens of the batch."),
                (real.sum() / mask.sum(), "the loss lacks the factor T^2 (a KD loss in kdedu always includes it)."),
                (kd_loss(t, s, T, mask=mask), "you computed KL(p_s || p_t); word-level KD uses KL(p_t || p_s), the "
                 "teacher's distribution first."),
                (kd_loss(s, t, T, mask=torch.arange(L)[None, :] <= lengths[:, None]), "you kept one position too "
                 "many per sentence: the real tokens of a sentence of length n are positions 0..n-1."),
            )
            for wrong, message in slips:
                if math.isclose(value, float(wrong), rel_tol=1e-6, abs_tol=1e-9):
                    raise Wrong(f"{where}: {message}")
        close(f"word_kd {where}", value, expected, rel=1e-6, abs_=1e-9)
    return ("word-level KD over a padded batch: every real token counts once, whatever the length of its sentence, "
            "as kdedu.losses.kd_loss(..., mask=...) averages it.")
