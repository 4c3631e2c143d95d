"""Auto-checks for the exercises of chapter 14 (registered with :func:`kdedu.check.register`)."""

from __future__ import annotations

import functools
import math

import torch

from kdedu.check import (
    Wrong,
    function,
    one_seed_to_retrain,
    register,
    same_tensor,
)


# ------------------------------------------------------------------------------------------------
# 14.ensemble-step: an ensemble's next-token log-probabilities from its members'
# ------------------------------------------------------------------------------------------------
def _members(seed: int, n: int, rows: int = 3, vocab: int = 6) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.log_softmax(2.0 * torch.randn(rows, vocab, generator=g, dtype=torch.float64), -1) for _ in range(n)]


@register("14.ensemble-step", hint="in 'probs' mode the members' probabilities are averaged, so work with exp of the "
                                    "log-probabilities (logsumexp keeps it stable). In 'logits' mode a mean of "
                                    "log-probabilities is not normalised: every row must sum to 1 after exp.")
def _check_14_ensemble_step(fn):
    from kdedu.methods.multi_teacher import average_teachers

    function("ensemble_step(logps, mode)", fn)
    for seed, n in ((0, 3), (1, 2), (2, 1), (3, 5)):
        logps = _members(seed, n)
        for mode in ("probs", "logits"):
            got = fn([t.clone() for t in logps], mode)
            if not isinstance(got, torch.Tensor):
                raise Wrong(f"ensemble_step(..., {mode!r}) should return a tensor, got {type(got).__name__}")
            got = got.double()
            expected = torch.log_softmax(average_teachers(logps, mode, 1.0), -1)
            if got.shape != expected.shape:
                raise Wrong(f"ensemble_step(..., {mode!r}) on {n} members of shape {tuple(logps[0].shape)} returned "
                            f"shape {tuple(got.shape)}; expected {tuple(expected.shape)}")
            total = got.exp().sum(-1)
            if not torch.allclose(total, torch.ones_like(total), atol=1e-6):
                raise Wrong(f"mode {mode!r}, {n} members: exp of your rows sums to {float(total[0]):.4f}, not 1 "
                            "(the result must be normalised log-probabilities).")
            other = torch.log_softmax(average_teachers(logps, "logits" if mode == "probs" else "probs", 1.0), -1)
            if n > 1 and torch.allclose(got, other, atol=1e-6) and not torch.allclose(got, expected, atol=1e-6):
                raise Wrong(f"mode {mode!r}: you computed the other mode's average (swap the two branches).")
            same_tensor(f"ensemble_step(logps, {mode!r}) with {n} members", got, expected, atol=1e-6, rtol=1e-6)
    return ("both averages. The mean of distributions is itself a distribution; the mean of log-probabilities "
            "(a product of experts) needs renormalising.")


# ------------------------------------------------------------------------------------------------
# 14.greedy-victim: an experiment. Steal from a victim that decodes greedily; the checker trains one of the
# submitted seeds again in the chapter's live setting.
# ------------------------------------------------------------------------------------------------
SETTING = {"n_queries": 500, "batch_size": 32, "beam_size": 5, "num_epochs": 48, "lr": 2e-3, "schedule": "linear",
           "warmup_steps": 30}
"""The exercise's setting: 500 queries and the chapter's ``BATCH``, ``BEAM`` and ``FIT``, with twice its epochs (as the
chapter trains an imitation of 500 queries; the chapter asserts it)."""
STUDENT = {"d_model": 64, "num_heads": 4, "num_encoder_layers": 1, "num_decoder_layers": 1, "dim_feedforward": 128,
           "dropout": 0.1}
"""The chapter's ``make_student(seed)``."""
N_SENTENCES = 500  # the en-fr test sources the agreement is measured on


@functools.lru_cache(maxsize=16)  # a resubmitted answer is checked again in no time
def greedy_victim_agreement(seed: int, victim_strategy: str = "greedy") -> float:
    """The share of the 500 test sources on which an imitation of the zoo's ``small`` teacher (seed 0), bought
    with ``victim_strategy`` answers to the first 500 attacker sources (``translation("train", seed=1)``) and
    trained in the chapter's setting with ``seed``, outputs (beam of 5) what the victim outputs with
    ``victim_strategy``."""
    from kdedu import zoo
    from kdedu.data import translation, translation_loader
    from kdedu.methods import BlackBox, Imitation
    from kdedu.metrics import exact_match
    from kdedu.models import Seq2Seq, translate
    from kdedu.train import fit

    s = SETTING
    teacher = zoo.seq2seq_teacher("small", seed=0, verbose=False)
    vocab = teacher.vocab
    queries, test = translation("train", seed=1, limit=s["n_queries"]), translation("test")
    victim = BlackBox(teacher, vocab, strategy=victim_strategy, beam_size=s["beam_size"])
    torch.manual_seed(seed)
    student = Seq2Seq(len(vocab), **STUDENT)
    attack = Imitation(student, victim, vocab)
    loader = translation_loader(attack.transfer_set(queries), vocab, s["batch_size"], shuffle=True, seed=None)
    fit(attack, loader, None, num_epochs=s["num_epochs"], lr=s["lr"], schedule=s["schedule"],
        warmup_steps=s["warmup_steps"], seed=seed, progress=False)
    hyps = translate(student, test.sources, vocab, strategy="beam", beam_size=s["beam_size"])
    answers = translate(teacher, test.sources, vocab, strategy=victim_strategy, beam_size=s["beam_size"])
    return exact_match(hyps, answers)


@register("14.greedy-victim", hint="only the victim's decoding changes: BlackBox(teacher, vocab, strategy='greedy'). "
                                    "Compare each imitation's beam outputs with what that greedy victim answers on "
                                    "the test sources, not with the beam victim or the true modes.")
def _check_14_greedy_victim(answer):
    seeds, values, i, tolerance = one_seed_to_retrain(answer, "agreement", N_SENTENCES, unit="test sentences")
    again = greedy_victim_agreement(seeds[i])
    if abs(again - values[i]) > tolerance:
        if abs(greedy_victim_agreement(seeds[i], "beam") - values[i]) <= tolerance:
            raise Wrong(f"seed {seeds[i]}: {100 * values[i]:.1f} % is an imitation of the beam-search victim; here the "
                        "victim answers with greedy search.")
        raise Wrong(f'seed {seeds[i]}: your answer["agreement"] says {100 * values[i]:.1f} %, but stealing from the '
                    f"greedy victim in the chapter's setting gives {100 * again:.1f} %. Check the queries, the "
                    "training setting, what you compare the imitation's outputs with, and the order of the values.")
    mean = sum(values) / len(values)
    if not math.isfinite(mean):
        raise Wrong('answer["agreement"] must hold finite numbers')
    return (f"your seed {seeds[i]} reproduces. The imitations of the greedy victim copy its output on "
            f"{100 * mean:.1f} % of the test sources (mean over your seeds): compare the chapter's imitations of "
            "the beam victim.")
