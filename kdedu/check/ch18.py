"""Auto-checks for the exercises of chapter 18 (many teachers, noise, a pre-fine-tuned student)."""

from __future__ import annotations

import functools
import math

import torch

from kdedu.check import (
    Wrong,
    answer_accuracies,
    answer_dict,
    answer_seeds,
    answer_verdict,
    function,
    picked,
    register,
)


@register("18.binary", hint="give each teacher two-class logits (what logit is the negative class allowed to "
                            "have?), then follow the definition of averaging logits at T = 1.")
def _check_18_binary(fn):
    function("my_logit_average(p, q)", fn)
    g = torch.Generator().manual_seed(18)
    p = torch.rand(5, 7, generator=g, dtype=torch.float64) * 0.98 + 0.01
    q = torch.rand(5, 7, generator=g, dtype=torch.float64) * 0.98 + 0.01
    got = fn(p.clone(), q.clone())
    if not isinstance(got, torch.Tensor) or got.shape != p.shape:
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        raise Wrong(f"my_logit_average should return a tensor of the inputs' shape {tuple(p.shape)}, got {shape}.")
    expected = torch.empty_like(p)  # entry by entry from the logits: sigma of the mean logit
    for i in range(p.shape[0]):
        for j in range(p.shape[1]):
            a, b = float(p[i, j]), float(q[i, j])
            mean_logit = (math.log(a / (1 - a)) + math.log(b / (1 - b))) / 2
            expected[i, j] = 1 / (1 + math.exp(-mean_logit))
    if torch.allclose(got.double(), expected, atol=1e-6):
        return ("averaging two binary teachers' logits gives sqrt(pq) / (sqrt(pq) + sqrt((1-p)(1-q))); it equals "
                "(p + q) / 2 when q = p and when q = 1 - p.")
    if torch.allclose(got.double(), (p + q) / 2, atol=1e-6):
        raise Wrong("that is the average of the probabilities, not of the logits.")
    if torch.allclose(got.double(), (p * q).sqrt(), atol=1e-6):
        raise Wrong("the geometric mean of the positive class alone is not a distribution: normalise it by the sum "
                    "over both classes.")
    raise Wrong(f"off by up to {(got.double() - expected).abs().max().item():.3g} from the logit average.")


# ------------------------------------------------------------------------------------------------
# 18.guarded: an experiment. The reader trains the chapter's noisy KD students with keep_labels=True at p = 0.5; the
# checker trains one of the submitted seeds again, with the guarded and with the deck's noise, in the chapter's live
# setting, and recomputes the verdict.
# ------------------------------------------------------------------------------------------------
GUARDED_SETTING = {"teacher": "sentiment-minilm", "teacher_overrides": {}, "layers": (2, 5), "n_train": 512,
                   "n_quiz": 64, "split_seed": 0, "batch_size": 32, "num_epochs": 1, "lr": 3e-4, "alpha": 0.5,
                   "temperature": 5.0, "p": 0.5, "n_test": 500, "min_seeds": 2}
"""The chapter's live setting (``train_one`` with ``noise=0.5`` in the ``fast`` profile): the 6 -> 2 student copies
teacher A's blocks 3 and 6 (0-based ``layers``) and trains one epoch of KD on 512 sentences (64 more are held out as
MetaDistil's quiz set), each word replaced by ``[UNK]`` with probability ``p`` (noise seeded by the training seed).
(The tests swap in a tiny teacher.)"""


@functools.lru_cache(maxsize=2)
def _guarded_data(teacher_name: str, overrides: tuple, n_train: int, n_quiz: int, split_seed: int):
    """The chapter's teacher A, its transfer set (after the quiz split) and the test loader."""
    from kdedu import zoo
    from kdedu.data import sentiment, text_loader
    from kdedu.methods import quiz_split

    teacher = zoo.text_teacher(teacher_name, verbose=False, **dict(overrides))
    train, _ = quiz_split(sentiment("train", limit=n_train + n_quiz), n_quiz, seed=split_seed)
    test_loader = text_loader(sentiment("test"), teacher.tokenizer, batch_size=128, group_by_length=True)
    return teacher, train, test_loader


@functools.lru_cache(maxsize=64)  # a resubmitted answer is checked again in no time
def noisy_kd_accuracy(seed: int, keep_labels: bool) -> float:
    """The test accuracy of the chapter's live noisy-KD student of ``seed`` (``inject_noise(..., p, seed=seed,
    keep_labels)``): the same steps as the chapter's ``make_student``, ``noisy_store`` and ``train_one``."""
    from dataclasses import replace

    from kdedu.data import inject_noise, text_loader
    from kdedu.methods import DistilBERTKD, precompute_teacher
    from kdedu.models import SequenceClassifier, student_from_teacher
    from kdedu.train import evaluate, fit

    s = GUARDED_SETTING
    teacher, train, test_loader = _guarded_data(s["teacher"], tuple(sorted(s["teacher_overrides"].items())),
                                                s["n_train"], s["n_quiz"], s["split_seed"])
    noisy = replace(train, sentences=inject_noise(train.sentences, s["p"], seed=seed, keep_labels=keep_labels))
    store = precompute_teacher(teacher, text_loader(noisy, teacher.tokenizer, batch_size=s["batch_size"]), seed=None,
                               group_by_length=True)
    torch.manual_seed(seed)
    student = SequenceClassifier(student_from_teacher(teacher, s["layers"]), 2, pooling="cls")
    student.head.load_state_dict(teacher.head.state_dict())
    student.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    method = DistilBERTKD(student, temperature=s["temperature"], alpha=s["alpha"], cosine_weight=0.0)
    fit(method, store, None, num_epochs=s["num_epochs"], lr=s["lr"], seed=seed, progress=False)
    return evaluate(student, test_loader)["acc"]


@register("18.guarded", hint="one more experiment.run over the chapter's live seeds, built like the chapter's noisy "
                             "KD run with only keep_labels changed in inject_noise; keep every list in seed order.")
def _check_18_guarded(answer):
    from kdedu.train import default_device

    s = GUARDED_SETTING
    answer_dict(answer, ("seeds", "guarded", "deck", "verdict"))
    seeds = answer_seeds(answer, s["min_seeds"])
    n = len(seeds)
    guarded = answer_accuracies('answer["guarded"]', answer["guarded"], n, s["n_test"], "test sentences")
    deck = answer_accuracies('answer["deck"]', answer["deck"], n, s["n_test"], "test sentences")
    c = answer_verdict(answer, guarded, deck, 'answer["guarded"] first')
    i = picked([seeds, guarded, deck], n)
    allowed = (1 if default_device().type == "cpu" else 3) / s["n_test"] + 1e-9  # a sentence of float noise
    for name, got, keep, what in (("deck", deck[i], False, "the chapter's student with the deck's noise"),
                                  ("guarded", guarded[i], True, "a student with guarded noise (keep_labels=True)")):
        again = noisy_kd_accuracy(seeds[i], keep)
        if abs(got - again) > allowed:
            raise Wrong(f'seed {seeds[i]}: your answer["{name}"] says {100 * got:.2f} %, but training {what} in the '
                        f"live setting (p = {s['p']:g}, {s['n_train']} sentences, {s['num_epochs']} epoch, "
                        f"lr = {s['lr']:g}) gives {100 * again:.2f} %. Check keep_labels, the noise seed, the setting "
                        "and the order of the values.")
    return (f"your seed {seeds[i]} reproduces. Guarded noise − the deck's noise = {100 * c['mean']:+.2f} ± "
            f"{100 * c['se']:.2f} points (mean ± s.e.): {c['verdict']} over {n} seeds (minimum detectable effect "
            f"{100 * c['mde']:.2f} points).")
