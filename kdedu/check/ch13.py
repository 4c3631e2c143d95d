"""Auto-checks for the exercises of chapter 13 (registered with :func:`kdedu.check.register`)."""

from __future__ import annotations

import functools
import itertools
import math

import torch

from kdedu.check import (
    Wrong,
    answer_dict,
    answer_number,
    close,
    function,
    one_seed_to_retrain,
    register,
)

PAD, BOS, EOS = 0, 1, 2
ADJECTIVES = {"big", "small", "old", "young", "happy"}  # the animals domain's adjectives


# ------------------------------------------------------------------------------------------------
# 13.greedy-mode: greedy decoding of the grammar's exact distribution misses its mode
# ------------------------------------------------------------------------------------------------
def exercise_source() -> tuple[str, dict]:
    """The exercise's source (the first en-fr test source that ends with "again" and has none of ADJECTIVES) and its
    true distribution ``{translation: p(y | x)}``."""
    from kdedu.data import translation

    test = translation("test")
    k = next(k for k, s in enumerate(test.sources) if s.endswith("again") and not set(s.split()) & ADJECTIVES)
    return test.sources[k], test.distribution(k)


def greedy_on(distribution: dict) -> str:
    """Greedy decoding of an explicit distribution over sentences: the most probable next word (by the summed
    probability of the sentences that continue the prefix with it; ``None`` = the end) at every step."""
    prefix: tuple = ()
    while True:
        mass: dict = {}
        for target, p in distribution.items():
            words = tuple(target.split())
            if words[:len(prefix)] == prefix:
                nxt = words[len(prefix)] if len(words) > len(prefix) else None
                mass[nxt] = mass.get(nxt, 0.0) + p
        best = max(mass.values())
        if sum(math.isclose(v, best) for v in mass.values()) > 1:
            raise RuntimeError(f"a tie after {' '.join(prefix)!r}: greedy decoding is not defined")
        word = max(mass, key=mass.get)
        if word is None:
            return " ".join(prefix)
        prefix += (word,)


def _sentence(name: str, value) -> str:
    if not isinstance(value, str):
        raise Wrong(f'answer["{name}"] should be a translation (a string), got {type(value).__name__}.')
    return " ".join(value.split())


@register("13.greedy-mode", hint="group the translations by their first words: the probability of a next word is "
                                  "the total probability of every translation that continues the prefix with it. "
                                  "The mode is a single translation; compare it with the greedy one word by word.")
def _check_13_greedy_mode(answer):
    answer_dict(answer, ("greedy", "p_greedy", "mode", "p_mode"))
    source, dist = exercise_source()
    greedy, mode = greedy_on(dist), max(dist, key=dist.get)
    got_greedy, got_mode = _sentence("greedy", answer["greedy"]), _sentence("mode", answer["mode"])
    p_greedy = answer_number('answer["p_greedy"]', answer["p_greedy"])
    p_mode = answer_number('answer["p_mode"]', answer["p_mode"])
    for name, got in (("greedy", got_greedy), ("mode", got_mode)):
        if got not in dist:
            raise Wrong(f'answer["{name}"] = {got!r} is not a valid translation of {source!r}: pick one of the '
                        "keys of its distribution.")
    if got_mode != mode:
        raise Wrong(f'answer["mode"] has p_data(y | x) = {dist[got_mode]:.4f}; another translation is more probable.')
    if got_greedy == mode:
        raise Wrong('answer["greedy"] is the mode: decode word by word, and at each step compare the summed '
                    "probabilities of the words that can come next, not of whole translations.")
    if got_greedy != greedy:
        raise Wrong('answer["greedy"] is not what greedy decoding gives: at some step another next word has more '
                    "probability mass (the sum over every translation that continues with it).")
    close('answer["p_greedy"]', p_greedy, dist[greedy], rel=1e-6, abs_=1e-9)
    close('answer["p_mode"]', p_mode, dist[mode], rel=1e-6, abs_=1e-9)
    return (f"greedy decoding gives {greedy!r} (p = {dist[greedy]:.4f}), the mode is {mode!r} (p = {dist[mode]:.4f}): "
            f"{dist[mode] / dist[greedy]:.1f} times more probable.")


# ------------------------------------------------------------------------------------------------
# 13.sequence-entropy: the entropy over whole outputs, by enumeration
# ------------------------------------------------------------------------------------------------
def random_step(seed: int, vocab_size: int = 5, sharpness: float = 1.5):
    """A step function of the decoding protocol with random logits per prefix (-inf on PAD and BOS)."""
    def step(prefixes: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        out = torch.full((len(prefixes), vocab_size), -math.inf, dtype=torch.float64)
        for n, prefix in enumerate(prefixes.tolist()):
            g = torch.Generator().manual_seed(10_007 * seed + sum(t * 11 ** i for i, t in enumerate(prefix)))
            out[n, 2:] = torch.log_softmax(sharpness * torch.randn(vocab_size - 2, generator=g, dtype=torch.float64),
                                           -1)
        return out
    return step


def brute_force_entropy(step, max_length: int, vocab_size: int = 5) -> tuple[float, float]:
    """``(H(p), sum of the token entropies along the greedy output)``: every output listed and scored token by
    token (an output ends with EOS or after ``max_length`` tokens)."""
    words = range(3, vocab_size)
    ys = [w + (EOS,) for n in range(max_length) for w in itertools.product(words, repeat=n)]
    ys += list(itertools.product(words, repeat=max_length))

    def logp(prefix):
        return step(torch.tensor([[BOS, *prefix]]), torch.zeros(1, dtype=torch.long))[0]

    h = 0.0
    for y in ys:
        lp = sum(float(logp(y[:t])[y[t]]) for t in range(len(y)))
        h -= math.exp(lp) * lp
    greedy_h, prefix = 0.0, ()
    for _ in range(max_length):
        lp = logp(prefix)
        p = lp.exp()
        greedy_h -= float((p[2:] * lp[2:]).sum())
        token = int(lp.argmax())
        if token == EOS:
            break
        prefix += (token,)
    return h, greedy_h


@register("13.sequence-entropy", hint="keep a list of unfinished prefixes with their log-probabilities; extend each "
                                       "by every token that is not PAD or BOS. An extension by EOS, or any "
                                       "extension at the last position, is a complete output and adds to the sum.")
def _check_13_sequence_entropy(fn):
    function("sequence_entropy(step, max_length)", fn)
    for seed, max_length, vocab_size in ((0, 3, 5), (3, 2, 6), (7, 4, 5), (11, 1, 4)):
        step = random_step(seed, vocab_size)
        expected, along_greedy = brute_force_entropy(step, max_length, vocab_size)
        got = answer_number(f"sequence_entropy(step, {max_length})", fn(step, max_length))
        call = f"sequence_entropy on a random model with {vocab_size - 3} words, max_length={max_length}"
        if math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-9):
            continue
        if math.isclose(got, expected / math.log(2), rel_tol=1e-6):
            raise Wrong(f"{call}: {got:.4f} is in bits; give nats (natural logarithms).")
        if math.isclose(got, along_greedy, rel_tol=1e-6):
            raise Wrong(f"{call}: {got:.4f} is the sum of the token entropies along the greedy output; the entropy "
                        "over outputs sums over every output, weighted by its probability.")
        if math.isclose(got, -expected, rel_tol=1e-6):
            raise Wrong(f"{call}: the sign is flipped; an entropy is not negative.")
        close(call, got, expected, rel=1e-6, abs_=1e-9)
    return ("H(p) by enumeration. The token entropies along the greedy output give another number: the chain "
            "rule needs them averaged over every output, weighted by p.")


# ------------------------------------------------------------------------------------------------
# 13.greedy-teacher: an experiment. Seq-KD on the teacher's greedy output; the checker trains one of the submitted
# seeds again in the chapter's live setting.
# ------------------------------------------------------------------------------------------------
SETTING = {"n_train": {"fast": 1200, "full": 2000, "powered": 2000}, "beam_size": 5, "length_penalty": 0.0,
           "batch_size": 32, "num_epochs": 5, "lr": 3e-3, "schedule": "linear", "warmup_steps": 50}
"""The chapter's live setting (its ``N_TRAIN``, ``BEAM``, ``LENGTH_PENALTY``, ``BATCH`` and ``FIT``; the chapter
asserts they agree with :func:`live_setting`). ``n_train`` is the chapter's ``N_TRAIN`` for each profile (the tests
swap in a plain number). ``length_penalty=0``: the teacher's beam ranks its candidates by log p, as Kim & Rush's
does."""

STUDENT = {"d_model": 64, "num_heads": 4, "num_encoder_layers": 1, "num_decoder_layers": 1, "dim_feedforward": 256,
           "dropout": 0.1}
"""The chapter's ``make_student``."""
N_SENTENCES = 500  # the en-fr test sources every accuracy is scored on


def live_setting() -> dict:
    """:data:`SETTING` in the active profile: ``n_train`` picked with :func:`kdedu.profile.pick`."""
    from kdedu.profile import pick

    n_train = SETTING["n_train"]
    return {**SETTING, "n_train": pick(**n_train) if isinstance(n_train, dict) else n_train}


@functools.lru_cache(maxsize=16)  # a resubmitted answer is checked again in no time
def seqkd_accuracy(seed: int, beam_size: int) -> float:
    """Greedy accuracy (output = the true mode) on the 500 test sources of the chapter's Seq-KD student trained on
    the teacher's ``beam_size``-beam outputs (ranked with ``SETTING["length_penalty"]``): the zoo's ``en-fr``
    teacher, the first ``live_setting()["n_train"]`` training sources, ``torch.manual_seed(seed)`` before building
    the student, ``fit(..., seed=seed)`` with the chapter's ``FIT``. Cached per (seed, beam_size): call
    ``seqkd_accuracy.cache_clear()`` after changing ``SETTING``."""
    from kdedu import zoo
    from kdedu.data import modes, translation
    from kdedu.methods import SeqKD
    from kdedu.metrics import exact_match
    from kdedu.models import Seq2Seq, translate
    from kdedu.train import fit

    s = live_setting()
    teacher = zoo.seq2seq_teacher("en-fr", verbose=False)
    vocab = teacher.vocab
    train, test = translation("train", limit=s["n_train"]), translation("test")
    torch.manual_seed(seed)
    student = Seq2Seq(len(vocab), **STUDENT)
    method = SeqKD(student, teacher, vocab, beam_size=beam_size, length_penalty=s["length_penalty"])
    fit(method, method.loader(train, s["batch_size"], shuffle=True, seed=None), None, num_epochs=s["num_epochs"],
        lr=s["lr"], schedule=s["schedule"], warmup_steps=s["warmup_steps"], seed=seed, progress=False)
    return exact_match(translate(student, test.sources, vocab, strategy="greedy"), modes(test))


@register("13.greedy-teacher", hint="only the beam size of SeqKD changes; build, train and score each seed's student "
                                     "exactly as the chapter's run_method does, and keep the list in the order of "
                                     "the seeds.")
def _check_13_greedy_teacher(answer):
    seeds, values, i, tolerance = one_seed_to_retrain(answer, "greedy_teacher", N_SENTENCES, unit="test sentences")
    again = seqkd_accuracy(seeds[i], 1)
    if abs(again - values[i]) > tolerance:
        if abs(seqkd_accuracy(seeds[i], SETTING["beam_size"]) - values[i]) <= tolerance:
            raise Wrong(f"seed {seeds[i]}: {100 * values[i]:.1f} % is the chapter's Seq-KD student, trained on the "
                        "teacher's beam of 5; here the teacher decodes greedily (beam_size=1).")
        raise Wrong(f'seed {seeds[i]}: your answer["greedy_teacher"] says {100 * values[i]:.1f} %, but training the '
                    f"Seq-KD student on the teacher's greedy outputs in the live setting gives {100 * again:.1f} %. "
                    "Check the method's arguments, the setting, the scoring and the order of the values.")
    mean = sum(values) / len(values)
    return (f"your seed {seeds[i]} reproduces. The students of the greedy teacher find the mode on {100 * mean:.1f} % "
            "of the test sources (mean over your seeds): compare the teacher's own greedy search and the chapter's "
            "Seq-KD students.")
