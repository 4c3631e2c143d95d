"""BLEU, chrF and exact match, against sacrebleu called directly and hand-computed cases."""

from __future__ import annotations

import math

import pytest

from kdedu.metrics import bleu, chrf, exact_match, sentence_bleu

HYPS = ["the cat sat on the mat", "a dog runs in the park today", "hello world"]
REFS = ["the cat sat on a mat", "the dog runs in the park", "hello there world"]
REFS2 = ["a cat sat on the mat", "a dog runs in the park today", "hello world"]


def test_bleu_and_chrf_equal_sacrebleu_called_directly():
    import sacrebleu

    assert bleu(HYPS, REFS) == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    assert chrf(HYPS, REFS) == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    multi = [[a, b] for a, b in zip(REFS, REFS2, strict=True)]
    assert bleu(HYPS, multi) == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS, REFS2]).score)
    assert bleu(HYPS, multi) > bleu(HYPS, REFS)  # a second reference can only add matches here
    assert sentence_bleu(HYPS[0], REFS[0]) == pytest.approx(sacrebleu.sentence_bleu(HYPS[0], [REFS[0]]).score)


def test_hand_computed_cases():
    assert bleu(["a b c d e"], ["a b c d e"]) == pytest.approx(100.0)
    assert bleu(["a b c d"], ["e f g h"]) == pytest.approx(0.0)
    # one sentence, no brevity penalty: BLEU = geometric mean of the n-gram precisions (n = 1..4)
    hyp, ref = "a b c d e f", "a b c d e g"
    precisions = [5 / 6, 4 / 5, 3 / 4, 2 / 3]
    expected = 100 * math.exp(sum(math.log(p) for p in precisions) / 4)
    assert bleu([hyp], [ref]) == pytest.approx(expected, rel=1e-6)
    assert exact_match(["a b", "c  d", "e"], ["a b", "c d", "f"]) == pytest.approx(2 / 3)
    assert exact_match(["x"], [["y", "x"]]) == 1.0


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="one entry per hypothesis"):
        bleu(["a"], ["a", "b"])
    with pytest.raises(TypeError, match="hypotheses"):
        bleu("a b", ["a b"])
    with pytest.raises(ValueError, match="same number"):
        bleu(["a", "b"], [["a"], ["b", "c"]])
    with pytest.raises(TypeError, match="hypothesis"):
        sentence_bleu(3, "a")
