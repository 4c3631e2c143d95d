"""The exercise checkers of chapter 16 (distilling language models), and the chapter's GPT teacher recipe.

For every checker: a correct answer passes, plausible wrong answers fail (with a message), and ``None`` as "not
answered yet" is checked for every exercise in tests/test_check.py. The references are independent of the
checkers: the top-k KL is also computed from its definition with the truncated distribution written out over the
whole vocabulary, and the experiment is trained here as the chapter's solution does it, with the token measure
written again (on the zoo's tiny GPT teacher, so that the test does not train the chapter's).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from checks import answer_tests

from kdedu import check
from kdedu.check import ch16


def _verdict(exercise_id, answer):
    return check.exercise(exercise_id, answer, verbose=False)


# ------------------------------------------------------------------------------------------------
# 16.topk-kl
# ------------------------------------------------------------------------------------------------
def _by_lse(logits, k):
    return torch.logsumexp(logits, -1) - torch.logsumexp(logits.topk(k, -1).values, -1)


def _by_definition(logits, k):
    """q_k written out over the whole vocabulary (zeros off the top k), then sum q log(q / p) over q > 0."""
    p = logits.double().softmax(-1)
    idx = logits.topk(k, -1).indices
    q = torch.zeros_like(p).scatter(-1, idx, p.gather(-1, idx))
    q = q / q.sum(-1, keepdim=True)
    terms = torch.where(q > 0, q * (q.log() - p.log()), torch.zeros_like(q))
    return terms.sum(-1)


def _mass(logits, k):
    return logits.softmax(-1).topk(k, -1).values.sum(-1)


def _forward_direction(logits, k):  # KL(p || q_k): infinite unless k = V
    p = logits.double().softmax(-1)
    idx = logits.topk(k, -1).indices
    q = torch.zeros_like(p).scatter(-1, idx, p.gather(-1, idx))
    q = q / q.sum(-1, keepdim=True)
    return (p * (p.log() - q.log())).sum(-1)


def _unnormalised(logits, k):  # forgets to renormalise: sum over the top k of p log p / p = 0
    p = logits.softmax(-1)
    kept = p.topk(k, -1).values
    return (kept * (kept.log() - kept.log())).sum(-1)


CORRECT = {"16.topk-kl": [_by_lse, _by_definition]}
WRONG = {"16.topk-kl": [
    _mass,
    lambda z, k: -_by_lse(z, k),                                # the sign
    lambda z, k: _by_lse(z, k).mean(),                          # one number, not one per row
    _forward_direction,
    _unnormalised,
    lambda z, k: torch.log(_mass(z, k)) ** 2,                   # a guess
    "not a function",
]}

test_correct_answers_pass, test_wrong_answers_fail = answer_tests(CORRECT, WRONG)


def test_topk_kl_messages():
    assert "mass" in _verdict("16.topk-kl", _mass).message
    assert "sign" in _verdict("16.topk-kl", lambda z, k: -_by_lse(z, k)).message
    assert "finite" in _verdict("16.topk-kl", _forward_direction).message


def test_topk_kl_reference_by_brute_force():
    """The checker's reference against q_k over the full vocabulary, at k = 1 (the KL is -log p_max) and k = V (0)."""
    g = torch.Generator().manual_seed(0)
    z = 3 * torch.randn(5, 12, generator=g)
    assert torch.allclose(ch16._topk_kl_reference(z, 4), _by_definition(z, 4), atol=1e-10)
    assert torch.allclose(ch16._topk_kl_reference(z, 1), -z.double().log_softmax(-1).max(-1).values, atol=1e-10)
    assert torch.allclose(ch16._topk_kl_reference(z, 12), torch.zeros(5, dtype=torch.float64), atol=1e-12)


# ------------------------------------------------------------------------------------------------
# the GPT teacher recipe (kdedu.zoo.lm)
# ------------------------------------------------------------------------------------------------
# the tiny recipe, wider and trained longer: enough for the GKD variants' students to differ
TINY = (("name", "tiny"), ("d_model", 32), ("dim_feedforward", 64), ("limit", 2000), ("num_epochs", 4))


@pytest.fixture(scope="module")
def tiny_teacher_cache(tmp_path_factory):
    """The zoo's tiny GPT recipe in a fresh cache; the 16.on-policy-reverse checker pointed at it."""
    mp = pytest.MonkeyPatch()
    mp.setenv("KDEDU_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.setattr(ch16, "TEACHER", TINY)
    ch16.gkd_student.cache_clear()
    yield
    ch16.gkd_student.cache_clear()
    mp.undo()


def test_gpt_teacher_is_cached_frozen_and_scored(tiny_teacher_cache, capsys):
    import kdedu
    from kdedu.data import in_grammar, modes, translation
    from kdedu.metrics import exact_match
    from kdedu.models import GPT, translate

    teacher = kdedu.zoo.gpt_teacher("tiny")
    assert isinstance(teacher, GPT) and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    assert len(teacher.blocks.layers) == 2 and len(teacher.vocab) == 75
    again = kdedu.zoo.gpt_teacher("tiny")
    assert "loaded gpt-tiny" in capsys.readouterr().out
    pairs = zip(teacher.state_dict().values(), again.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    # the stored metrics, recomputed here from the outputs
    test = translation("test", limit=128)
    greedy = translate(teacher, test.sources, teacher.vocab, strategy="greedy")
    sampled = translate(teacher, test.sources, teacher.vocab, strategy="sample", seed=0)
    m = teacher.meta["metrics"]
    assert math.isclose(m["test_mode_greedy"], exact_match(greedy, modes(test)))
    assert math.isclose(m["test_valid_sample"], float(np.mean(in_grammar(test.with_targets(sampled)))))
    with pytest.raises(ValueError, match="unknown recipe entries"):
        kdedu.zoo.gpt_teacher("tiny", layer=3)


# ------------------------------------------------------------------------------------------------
# 16.on-policy-reverse: an experiment, on the tiny teacher
# ------------------------------------------------------------------------------------------------
def _solution(seeds, lmbda=1.0, beta=1.0) -> dict:
    """The exercise done as the chapter's solution does it: shrink, GKD, fit, then the chapter's score (written
    again here: samples at temperature 1 with seed 0, and the student's mass on words with p_t < 1 %)."""
    import kdedu
    from kdedu.data import in_grammar, translation, translation_loader
    from kdedu.methods import GKD
    from kdedu.models import shrink_decoder, translate

    s = ch16.SETTING
    teacher = kdedu.zoo.gpt_teacher(**dict(TINY), verbose=False)
    vocab = teacher.vocab
    train, test = translation("train", limit=s["n_train"]), translation("test", limit=s["n_eval"])
    fit = {k: s[k] for k in ("num_epochs", "lr", "schedule", "warmup_steps")}
    out = {"seeds": list(seeds), "valid": [], "low_mass": []}
    for seed in seeds:
        student = shrink_decoder(teacher, num_layers=1)
        loader = translation_loader(train, vocab, s["batch_size"], shuffle=True, seed=None, causal_lm=True)
        kdedu.fit(GKD(student, teacher, lmbda=lmbda, beta=beta, causal_lm=True), loader, None, **fit, seed=seed,
                  progress=False)
        student.eval()
        sampled = translate(student, test.sources, vocab, strategy="sample", seed=0)
        out["valid"].append(float(np.mean(in_grammar(test.with_targets(sampled)))))
        masses = []
        for b in translation_loader(test, vocab, 100, causal_lm=True):  # in batches of 100 this time
            x = {k: v for k, v in b.items() if k != "labels"}
            keep = b["labels"][:, 1:] != -100
            with torch.no_grad():
                log_s = student(**x)[:, :-1].log_softmax(-1)
                log_t = teacher(**x)[:, :-1].log_softmax(-1)
            masses.append((log_s.exp() * (log_t < math.log(0.01))).sum(-1)[keep])
        out["low_mass"].append(torch.cat(masses).mean().item())
    return out


@pytest.mark.slow
def test_on_policy_reverse_experiment(tiny_teacher_cache):
    right = _solution([0, 1])
    result = _verdict("16.on-policy-reverse", right)
    assert result, result.message
    off = _solution([0, 1], lmbda=0.0)
    wrong = [
        off,                                                                          # lambda = 0
        {**right, "valid": [min(1.0, v + 6 / 500) for v in right["valid"]]},          # made up
        {**right, "low_mass": [1.5 * v for v in right["low_mass"]]},
        {**right, "low_mass": [100 * v for v in right["low_mass"]]},                  # percentages
        {**right, "valid": right["valid"][:1]},                                       # one value for two seeds
        {"seeds": [0], "valid": right["valid"][:1], "low_mass": right["low_mass"][:1]},  # fewer seeds
        {"seeds": right["seeds"], "valid": right["valid"]},                           # a key missing
        {**right, "valid": [0.5013, 0.5]},                                            # not a share of 500
    ]
    for answer in wrong:
        r = _verdict("16.on-policy-reverse", answer)
        assert not r and r.message and "not answered" not in r.message, answer
    if off["valid"] != right["valid"] or off["low_mass"] != right["low_mass"]:
        assert "lmbda = 0)" in _verdict("16.on-policy-reverse", off).message
