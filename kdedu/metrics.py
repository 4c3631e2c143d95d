"""Metrics of generated text: BLEU and chrF through ``sacrebleu`` (the field's reference implementation,
imported inside the functions), and exact match.

``references`` is one string per hypothesis, or one list of strings per hypothesis (several references;
every hypothesis must have the same number). Scores are on sacrebleu's 0-100 scale.
"""

from __future__ import annotations

__all__ = ["bleu", "chrf", "sentence_bleu", "exact_match"]


def _check(hypotheses, references) -> tuple[list, list]:
    """``(hypotheses, reference streams)``: sacrebleu wants one list per reference *position*."""
    if isinstance(hypotheses, str) or not all(isinstance(h, str) for h in hypotheses):
        raise TypeError("hypotheses must be a list of strings")
    hypotheses, references = list(hypotheses), list(references)
    if len(references) != len(hypotheses):
        raise ValueError(f"references must have one entry per hypothesis: {len(hypotheses)} hypotheses, "
                         f"{len(references)} references")
    if not hypotheses:
        raise ValueError("hypotheses is empty")
    multi = [[r] if isinstance(r, str) else list(r) for r in references]
    k = len(multi[0])
    if k == 0 or any(len(m) != k for m in multi) or not all(isinstance(r, str) for m in multi for r in m):
        raise ValueError("references must be strings, or lists of strings with the same number per hypothesis")
    return hypotheses, [[m[j] for m in multi] for j in range(k)]


def bleu(hypotheses, references, tokenize: str = "13a") -> float:
    """Corpus BLEU (Papineni et al. 2002) with ``sacrebleu.corpus_bleu`` defaults (4-grams, brevity penalty)."""
    import sacrebleu

    hyps, streams = _check(hypotheses, references)
    return float(sacrebleu.corpus_bleu(hyps, streams, tokenize=tokenize).score)


def chrf(hypotheses, references) -> float:
    """Corpus chrF (Popović 2015): character n-gram F-score, ``sacrebleu.corpus_chrf`` defaults."""
    import sacrebleu

    hyps, streams = _check(hypotheses, references)
    return float(sacrebleu.corpus_chrf(hyps, streams).score)


def sentence_bleu(hypothesis: str, references, tokenize: str = "13a") -> float:
    """Smoothed sentence-level BLEU (``sacrebleu.sentence_bleu``, exponential smoothing), as Seq-Inter uses
    to pick the beam candidate closest to the reference."""
    import sacrebleu

    if not isinstance(hypothesis, str):
        raise TypeError(f"hypothesis must be a string, got {type(hypothesis).__name__}")
    refs = [references] if isinstance(references, str) else list(references)
    if not refs or not all(isinstance(r, str) for r in refs):
        raise TypeError("references must be a string or a non-empty list of strings")
    return float(sacrebleu.sentence_bleu(hypothesis, refs, tokenize=tokenize).score)


def exact_match(hypotheses, references) -> float:
    """Share of hypotheses equal to (one of) their reference(s), whitespace-normalised."""
    hyps, streams = _check(hypotheses, references)
    norm = " ".join
    hits = sum(any(norm(h.split()) == norm(s[i].split()) for s in streams) for i, h in enumerate(hyps))
    return hits / len(hyps)
