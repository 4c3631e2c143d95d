"""The exercise checkers of chapter 13 (sequence-level KD).

For every checker: a correct answer passes, plausible wrong answers fail (with a message), and ``None`` as "not
answered yet" is checked for every exercise in tests/test_check.py. The references are independent of the
checkers: the greedy/mode answer is found by a beam-free brute force over the grammar's derivations, the entropy
by sampling, and the experiment by training as the chapter's solution does.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from checks import answer_tests

from kdedu import check
from kdedu.check import ch13

BOS, EOS = 1, 2


def _verdict(exercise_id, answer):
    return check.exercise(exercise_id, answer, verbose=False)


@functools.cache
def _greedy_mode() -> dict:
    """The answer by brute force: the mode is the most probable translation; greedy decoding, at each step, the
    next word whose translations carry the most probability (computed here from the sorted list of all
    translations, independently of the checker's greedy_on)."""
    from kdedu.data import translation

    test = translation("test")
    k = next(k for k, s in enumerate(test.sources)
             if s.split()[-1] == "again" and not {"big", "small", "old", "young", "happy"} & set(s.split()))
    dist = test.distribution(k)
    prefix: list = []
    while True:  # every translation that extends the prefix, grouped by its next word (or the end)
        nexts = sorted({(t.split() + ["<end>"])[len(prefix)] for t in dist if t.split()[:len(prefix)] == prefix})
        mass = [sum(p for t, p in dist.items() if (t.split() + ["<end>"])[:len(prefix) + 1] == prefix + [w])
                for w in nexts]
        w = nexts[int(np.argmax(mass))]
        if w == "<end>":
            break
        prefix.append(w)
    greedy = " ".join(prefix)
    mode = max(dist, key=dist.get)
    return {"greedy": greedy, "p_greedy": dist[greedy], "mode": mode, "p_mode": dist[mode]}


def test_the_exercise_source_has_a_greedy_output_other_than_its_mode():
    a = _greedy_mode()
    assert a["greedy"] != a["mode"] and a["p_greedy"] < a["p_mode"]
    assert "encore" in a["mode"].split() and "de nouveau" in a["greedy"]  # the grammar's documented trap


def sequence_entropy(step, max_length):  # the chapter's solution
    total, level = 0.0, [([BOS], 0.0)]
    for t in range(1, max_length + 1):
        logp = step(torch.tensor([p for p, _ in level]), torch.zeros(len(level), dtype=torch.long)).double()
        nxt = []
        for (prefix, lp), row in zip(level, logp, strict=True):
            for token in range(2, row.shape[0]):
                lq = lp + float(row[token])
                if lq == -math.inf:
                    continue
                if token == EOS or t == max_length:
                    total -= math.exp(lq) * lq
                else:
                    nxt.append((prefix + [token], lq))
        level = nxt
    return total


def test_checker_entropy_matches_a_monte_carlo_estimate():
    """The checker's brute-force H(p) against -mean log p(y) over samples drawn token by token."""
    step = ch13.random_step(3, vocab_size=6)
    h, _ = ch13.brute_force_entropy(step, 2, vocab_size=6)
    g = torch.Generator().manual_seed(0)
    logps = []
    for _sample in range(4000):
        prefix, lp = [BOS], 0.0
        for _ in range(2):
            row = step(torch.tensor([prefix]), torch.zeros(1, dtype=torch.long))[0]
            token = int(torch.multinomial(row.exp(), 1, generator=g))
            lp += float(row[token])
            if token == EOS:
                break
            prefix.append(token)
        logps.append(lp)
    estimate, se = -np.mean(logps), np.std(logps) / math.sqrt(len(logps))
    assert abs(estimate - h) < 4 * se


def _with(**changes):
    return {**_greedy_mode(), **changes}


def _swap():
    a = _greedy_mode()
    return {**a, "greedy": a["mode"], "mode": a["greedy"]}


CORRECT = {
    "13.greedy-mode": [_greedy_mode(), _with(greedy="  " + _greedy_mode()["greedy"] + " ")],
    "13.sequence-entropy": [sequence_entropy],
}
WRONG = {
    "13.greedy-mode": [
        _with(greedy=_greedy_mode()["mode"], p_greedy=_greedy_mode()["p_mode"]),  # greedy = the mode
        _swap(),
        _with(p_greedy=_greedy_mode()["p_mode"]),
        _with(p_mode=0.4),  # the probability of "encore" alone
        _with(mode="un chien"),  # not a translation of the source
        _with(greedy=None),
        {"greedy": "x"},  # keys missing
        "encore",
    ],
    "13.sequence-entropy": [
        lambda step, L: sequence_entropy(step, L) / math.log(2),  # bits
        lambda step, L: -sequence_entropy(step, L),
        lambda step, L: ch13.brute_force_entropy(step, L, 5)[1],  # the greedy path's token entropies (V = 5 only)
        lambda step, L: sequence_entropy(step, L - 1) if L > 1 else 0.0,  # one position short
        "not a function",
    ],
}

test_correct_answers_pass, test_wrong_answers_fail = answer_tests(CORRECT, WRONG)


# ------------------------------------------------------------------------------------------------
# 13.greedy-teacher: an experiment (the zoo's en-fr teacher, then two Seq-KD students). To stay cheap, the test
# shrinks the checker's setting (500 training pairs, 12 epochs: weaker students, but the greedy and the beam
# teacher give them accuracies far apart, asserted); the checker retrains in whatever SETTING holds.
# ------------------------------------------------------------------------------------------------
SMALL = {"n_train": 500, "num_epochs": 12}


@pytest.fixture
def small_setting(monkeypatch):
    monkeypatch.setattr(ch13, "SETTING", {**ch13.SETTING, **SMALL})
    ch13.seqkd_accuracy.cache_clear()
    yield ch13.SETTING
    ch13.seqkd_accuracy.cache_clear()  # the chapter's setting again for anything that runs later


def _greedy_teacher_runs(s) -> dict:
    """The exercise done as the chapter's solution does it, in setting ``s``, on seeds 0 and 1 (written here, apart
    from the checker's ``seqkd_accuracy``), and the Seq-KD students of the beam of 5 for a wrong answer."""
    import kdedu
    from kdedu.data import modes, translation
    from kdedu.methods import SeqKD
    from kdedu.metrics import exact_match
    from kdedu.models import Seq2Seq, translate

    teacher = kdedu.zoo.seq2seq_teacher("en-fr", verbose=False)
    vocab = teacher.vocab
    train, test = translation("train", limit=s["n_train"]), translation("test")
    fit = {k: s[k] for k in ("num_epochs", "lr", "schedule", "warmup_steps")}

    def accuracy(seed, beam_size):
        torch.manual_seed(seed)
        student = Seq2Seq(len(vocab), d_model=64, num_heads=4, num_encoder_layers=1, num_decoder_layers=1,
                          dim_feedforward=256, dropout=0.1)
        method = SeqKD(student, teacher, vocab, beam_size=beam_size, length_penalty=s["length_penalty"])
        kdedu.fit(method, method.loader(train, s["batch_size"], shuffle=True, seed=None), None, **fit, seed=seed,
                  progress=False)
        return exact_match(translate(student, test.sources, vocab, strategy="greedy"), modes(test))

    seeds = [0, 1]
    # the wrong answer's values (students of the beam of 5) come from the checker's own function: it caches them,
    # so the checker does not train them again when it recognises that answer
    return {"seeds": seeds, "greedy_teacher": [accuracy(x, 1) for x in seeds],
            "beam": [ch13.seqkd_accuracy(x, s["beam_size"]) for x in seeds]}


@pytest.mark.slow
def test_greedy_teacher_experiment(small_setting):
    runs = _greedy_teacher_runs(small_setting)
    gaps = [abs(b - g) for b, g in zip(runs["beam"], runs["greedy_teacher"], strict=True)]
    assert min(gaps) > 10 / 500, gaps  # else the setting is too small to tell the two answers apart
    right = {"seeds": runs["seeds"], "greedy_teacher": runs["greedy_teacher"]}
    assert _verdict("13.greedy-teacher", right)
    wrong = [
        {"seeds": runs["seeds"], "greedy_teacher": runs["beam"]},  # the chapter's Seq-KD students (beam of 5)
        {"seeds": runs["seeds"], "greedy_teacher": [v + 3 / 500 if v < 0.99 else v - 3 / 500
                                                    for v in runs["greedy_teacher"]]},
        {"seeds": runs["seeds"], "greedy_teacher": [100 * v for v in runs["greedy_teacher"]]},  # percentages
        {"seeds": runs["seeds"], "greedy_teacher": runs["greedy_teacher"][:1]},  # one value for two seeds
        {"seeds": [0], "greedy_teacher": runs["greedy_teacher"][:1]},  # fewer seeds than the chapter's
        {"greedy_teacher": runs["greedy_teacher"]},
    ]
    for answer in wrong:
        result = _verdict("13.greedy-teacher", answer)
        assert not result and result.message and "not answered" not in result.message, answer
    assert "beam of 5" in _verdict("13.greedy-teacher", wrong[0]).message


# ------------------------------------------------------------------------------------------------
# the chapter's two rankings of one beam (log p, and log p / |y|)
# ------------------------------------------------------------------------------------------------
def test_length_penalty_reorders_the_same_beam_candidates():
    """The chapter re-ranks the teacher's log-p beam by log p / |y| instead of searching again: the finished
    candidates must not depend on length_penalty, only their order, and log p / |y| (|y| with EOS) must be
    length_penalty=1's order. Checked against beam_search itself on a tiny random model."""
    from kdedu.models.decoding import beam_search

    reordered = 0
    for seed in range(8):
        step = ch13.random_step(seed, vocab_size=6)  # random next-token log-probs per prefix, EOS one of 4 tokens
        by_logp = beam_search(step, 1, beam_size=4, max_length=7, n_best=4, length_penalty=0.0)[0]
        by_norm = beam_search(step, 1, beam_size=4, max_length=7, n_best=4, length_penalty=1.0)[0]
        assert sorted(h.tokens for h in by_logp) == sorted(h.tokens for h in by_norm)
        assert [h.score for h in by_logp] == sorted((h.logprob for h in by_logp), reverse=True)
        length = {h.tokens: len(h.tokens) + h.finished for h in by_logp}  # |y| counts EOS when there is one
        reranked = sorted(by_logp, key=lambda h: -h.logprob / length[h.tokens])
        assert [h.tokens for h in reranked] == [h.tokens for h in by_norm]
        assert all(math.isclose(h.score, h.logprob / length[h.tokens], rel_tol=1e-6) for h in by_norm)
        reordered += [h.tokens for h in by_logp] != [h.tokens for h in by_norm]
    assert reordered > 0  # the two rankings differ somewhere, so the test has something to check
