"""The exercise checkers of chapter 14 (sequence distillation beyond compression).

For every checker: a correct answer passes, plausible wrong answers fail (with a message), and ``None`` as "not
answered yet" is checked for every exercise in tests/test_check.py. The references are independent of the
checkers: the ensemble's step is recomputed in NumPy from the members' probabilities, and the experiment is run as
the chapter's solution runs it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from checks import answer_tests

from kdedu import check
from kdedu.check import ch14


def _verdict(exercise_id, answer):
    return check.exercise(exercise_id, answer, verbose=False)


# ------------------------------------------------------------------------------------------------
# 14.ensemble-step
# ------------------------------------------------------------------------------------------------
def numpy_step(logps, mode):
    """The reference, in NumPy: probs -> log of the mean probability; logits -> the mean log-probability,
    renormalised by dividing the exponentials by their row sums."""
    lp = np.stack([t.detach().double().numpy() for t in logps])               # (n, N, V)
    if mode == "probs":
        out = np.log(np.exp(lp).mean(0))
    else:
        e = np.exp(lp.mean(0))
        out = np.log(e / e.sum(-1, keepdims=True))
    return torch.from_numpy(out)


def unnormalised(logps, mode):
    z = torch.stack(list(logps))
    return torch.logsumexp(z, 0) - np.log(len(logps)) if mode == "probs" else z.mean(0)


def swapped(logps, mode):
    return numpy_step(logps, "logits" if mode == "probs" else "probs")


def probabilities(logps, mode):
    return numpy_step(logps, mode).exp()


def first_member(logps, mode):
    return logps[0]


def test_numpy_reference_matches_the_library_average():
    from kdedu.methods.multi_teacher import average_teachers

    g = torch.Generator().manual_seed(0)
    logps = [torch.log_softmax(torch.randn(4, 7, generator=g, dtype=torch.float64), -1) for _ in range(3)]
    for mode in ("probs", "logits"):
        lib = torch.log_softmax(average_teachers(logps, mode), -1)
        assert torch.allclose(numpy_step(logps, mode), lib, atol=1e-10)


CORRECT = {"14.ensemble-step": [numpy_step]}
WRONG = {"14.ensemble-step": [unnormalised, swapped, probabilities, first_member, lambda logps: logps[0], 3.0]}

test_correct_answers_pass, test_wrong_answers_fail = answer_tests(CORRECT, WRONG)


def test_ensemble_step_messages_name_the_mistake():
    assert "sums to" in _verdict("14.ensemble-step", unnormalised).message
    assert "other mode" in _verdict("14.ensemble-step", swapped).message


# ------------------------------------------------------------------------------------------------
# 14.greedy-victim: an experiment (the zoo's small teacher, then imitations) in the chapter's own setting: a smaller
# one trains imitations that learn nothing, whose agreement (0) cannot tell the two victims apart. The fixture clears
# the checker's cache, so that it retrains in that SETTING.
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def small_setting():
    ch14.greedy_victim_agreement.cache_clear()
    yield ch14.SETTING
    ch14.greedy_victim_agreement.cache_clear()  # the chapter's setting again for anything that runs later


def _steal(s, seeds, strategy):
    """The exercise done as the chapter's solution does it, in setting ``s``, against a ``strategy`` victim."""
    import kdedu
    from kdedu.data import translation
    from kdedu.methods import BlackBox, Imitation
    from kdedu.metrics import exact_match
    from kdedu.models import Seq2Seq, translate

    teacher = kdedu.zoo.seq2seq_teacher("small", seed=0, verbose=False)
    vocab = teacher.vocab
    queries = translation("train", seed=1, limit=s["n_queries"])
    test = translation("test")
    victim = BlackBox(teacher, vocab, strategy=strategy, beam_size=s["beam_size"])
    answers = translate(teacher, test.sources, vocab, strategy=strategy, beam_size=s["beam_size"])
    fit = {k: s[k] for k in ("num_epochs", "lr", "schedule", "warmup_steps")}
    out = []
    for seed in seeds:
        torch.manual_seed(seed)
        student = Seq2Seq(len(vocab), d_model=64, num_heads=4, num_encoder_layers=1, num_decoder_layers=1,
                          dim_feedforward=128, dropout=0.1)
        attack = Imitation(student, victim, vocab)
        kdedu.fit(attack, attack.loader(queries, s["batch_size"], shuffle=True, seed=None), None, **fit, seed=seed,
                  progress=False)
        hyps = translate(student, test.sources, vocab, strategy="beam", beam_size=s["beam_size"])
        out.append(exact_match(hyps, answers))
    return out


@pytest.mark.slow
def test_greedy_victim_experiment(small_setting):
    seeds = [0, 1]
    greedy = _steal(small_setting, seeds, "greedy")
    beam = _steal(small_setting, seeds, "beam")
    assert beam != greedy  # else the setting is too small to tell the two answers apart
    assert _verdict("14.greedy-victim", {"seeds": seeds, "agreement": greedy})
    wrong = [
        {"seeds": seeds, "agreement": [v + 3 / 500 if v < 0.99 else v - 3 / 500 for v in greedy]},
        {"seeds": seeds, "agreement": [100 * v for v in greedy]},  # percentages
        {"seeds": seeds, "agreement": greedy[:1]},  # one value for two seeds
        {"seeds": [0], "agreement": greedy[:1]},  # fewer seeds than two
        {"agreement": greedy},
    ]
    if all(abs(b - g) > 2 / 500 for b, g in zip(beam, greedy, strict=True)):
        wrong.insert(0, {"seeds": seeds, "agreement": beam})  # the beam victim's imitations
    for answer in wrong:
        result = _verdict("14.greedy-victim", answer)
        assert not result and result.message and "not answered" not in result.message, answer


# ------------------------------------------------------------------------------------------------
# the chapter's teachers: a recipe whose vocabulary holds a domain it never trains on
# ------------------------------------------------------------------------------------------------
def test_vocab_domain_gives_the_teacher_the_words_of_both_domains(tmp_path, monkeypatch):
    from kdedu.data import translation_vocab
    from kdedu.zoo import sequences

    assert sequences.SEQ_RECIPES["small"]["vocab_domain"] == ["animals", "office"]
    assert sequences.SEQ_RECIPES["small"]["domain"] == "animals"
    monkeypatch.setitem(sequences.SEQ_RECIPES, "tiny-both", {**sequences.SEQ_RECIPES["tiny"],
                                                             "vocab_domain": ["animals", "office"]})
    both = sequences.seq2seq_teacher("tiny-both", root=tmp_path, verbose=False)
    one = sequences.seq2seq_teacher("tiny", root=tmp_path, verbose=False)
    assert both.vocab.itos == translation_vocab("fr", domain=("animals", "office")).itos
    assert one.vocab.itos == translation_vocab("fr", domain="animals").itos      # the default: the training domain
    assert "manager" in both.vocab.stoi and "manager" not in one.vocab.stoi
    assert both.lm_head.weight.shape[0] == len(both.vocab)
