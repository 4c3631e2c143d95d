"""Auto-checks for the exercises of chapter 10 (intermediate-layer distillation)."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import numbers
from collections.abc import Mapping

import torch

from kdedu.check import Wrong, answer_accuracies, function, register, same_tensor


def _as_dict(name: str, got) -> dict[int, int]:
    if not isinstance(got, dict):
        raise Wrong(f"{name} should return a dict {{student_layer: teacher_layer}}, got {type(got).__name__}.")
    try:
        return {int(j): int(k) for j, k in got.items()}
    except (TypeError, ValueError):
        raise Wrong(f"{name} should map integers to integers, got {got!r}.") from None


@register("10.last-map", hint="PKD-Last keeps the skip map's keys (every student layer but the last) and moves "
                              "their targets to the top of the teacher, just below its last layer.")
def _check_10_last_map(fn):
    function("my_last_map(M, N)", fn)
    for M, N in ((2, 4), (3, 6), (4, 12), (6, 12), (2, 12), (1, 6), (3, 5)):
        got = _as_dict(f"my_last_map({M}, {N})", fn(M, N))
        expected, k = {}, N
        for j in range(M - 1, 0, -1):  # walk down from the teacher's top: an independent count
            k -= 1
            expected[j] = k
        expected = dict(sorted(expected.items()))
        if got != expected:
            if got == {**expected, M: N}:
                raise Wrong(f"my_last_map({M}, {N}) = {got} also maps the last student layer; like PKD-Skip, "
                            "PKD-Last leaves it to the KD loss on the logits.", "leave the last student layer out.")
            if got == {j: j * (N // M) for j in range(1, M)}:
                raise Wrong(f"my_last_map({M}, {N}) = {got} is PKD-Skip's map (every N/M-th layer), not the top "
                            "layers.")
            if got == {j: N - M + j + 1 for j in range(1, M)}:
                raise Wrong(f"my_last_map({M}, {N}) = {got} uses the teacher's last layer, which the logits already "
                            "cover; shift the targets down by one.")
            raise Wrong(f"my_last_map({M}, {N}) = {got}, expected {expected}.")
    return "PKD-Last: student layer j <- teacher layer N - M + j (12 -> 4: {1: 9, 2: 10, 3: 11})."


@register("10.alp-entropy", hint="each student layer's weights are a softmax over the teacher layers; compute their "
                                 "log in one step (a log of a softmax that underflows to 0 gives -inf), then the "
                                 "entropy -sum p log p along that axis.")
def _check_10_alp_entropy(fn):
    function("my_alp_entropy(h_s, h_t, scale)", fn)
    g = torch.Generator().manual_seed(10)
    for B, M, N, H, scale, size in ((4, 3, 6, 8, 1.0, 1.0), (2, 2, 5, 16, 0.25, 1.0), (1, 1, 1, 4, 1.0, 1.0),
                                    (3, 3, 6, 32, 1.0, 10.0)):  # the last: long vectors, nearly one-hot weights
        h_s, h_t = size * torch.randn(B, M, H, generator=g), size * torch.randn(B, N, H, generator=g)
        expected = torch.empty(B, M, dtype=torch.float64)
        for b in range(B):  # the formula, entry by entry, in float64
            for j in range(M):
                scores = [scale * float(h_s[b, j].double() @ h_t[b, k].double()) for k in range(N)]
                top = max(scores)
                z = sum(math.exp(x - top) for x in scores)
                logs = [x - top - math.log(z) for x in scores]
                expected[b, j] = -sum(math.exp(lp) * lp for lp in logs)
        got = fn(h_s.clone(), h_t.clone(), scale)
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != (B, M):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise Wrong(f"my_alp_entropy should return a (B, M) = {(B, M)} tensor, one entropy per example and "
                        f"student layer (a distribution over the N teacher layers each); got {shape}.")
        if not torch.isfinite(got).all():
            raise Wrong(f"my_alp_entropy gives nan or inf when the weights are nearly one-hot (vectors of length "
                        f"~{size * H ** 0.5:.0f}): 0 log 0 must count as 0.")
        same_tensor(f"my_alp_entropy on (B, M, N, H) = {(B, M, N, H)}, scale {scale}", got.double(), expected,
                    atol=1e-4, rtol=1e-4)
    return ("the entropy of each student layer's weights: log N for uniform attention, near 0 when one teacher "
            "layer takes all the weight.")


@register("10.ckd-groups", hint="compute the M + 1 group boundaries first, then turn each pair of neighbouring "
                                "boundaries into a list of layers; work my_groups(2, 5) out by hand.")
def _check_10_ckd_groups(fn):
    function("my_groups(M, N)", fn)
    for M, N in ((3, 6), (2, 5), (4, 12), (1, 6), (3, 7), (6, 6), (5, 12)):
        got = fn(M, N)
        try:
            got = [[int(k) for k in grp] for grp in got]
        except TypeError:
            raise Wrong(f"my_groups({M}, {N}) should return a list of lists of layer numbers, got {got!r}.") from None
        if len(got) != M:
            raise Wrong(f"my_groups({M}, {N}) has {len(got)} groups; CKD needs one per student layer ({M}).")
        if sorted(k for grp in got for k in grp) != list(range(1, N + 1)):
            raise Wrong(f"my_groups({M}, {N}) = {got} does not hold each teacher layer 1..{N} exactly once.",
                        "teacher layers are numbered from 1 (0 is the embedding output)")
        if any(grp != list(range(grp[0], grp[0] + len(grp))) for grp in got if grp) or \
                [grp[0] for grp in got if grp] != sorted(grp[0] for grp in got if grp):
            raise Wrong(f"my_groups({M}, {N}) = {got}: groups must be contiguous and in order.")
        sizes = [len(grp) for grp in got]
        ends = [sum(sizes[:i + 1]) for i in range(M)]
        expected_ends = [round(i * N / M) for i in range(1, M + 1)]  # Python rounds halves to even
        if ends != expected_ends:
            raise Wrong(f"my_groups({M}, {N}) = {got}: the group ends should be at round(i * N / M) = "
                        f"{expected_ends}.")
    return "contiguous groups, every teacher layer in exactly one: nothing skipped (6 -> 3: [[1, 2], [3, 4], [5, 6]])."


# ------------------------------------------------------------------------------------------------
# 10.pkd-last: an experiment. The reader trains PKD-Last students over the chapter's live seeds at the key depth
# (6 -> 2); the checker trains one of the submitted seeds again, PKD-Last and PKD-Skip, in the chapter's live
# setting, and recomputes the verdict.
# ------------------------------------------------------------------------------------------------
PKD_LAST_SETTING = {"teacher": "sentiment-minilm", "teacher_overrides": {}, "layers": (2, 5), "n_train": 512,
                    "batch_size": 32, "num_epochs": 1, "lr": 1e-4, "alpha": 0.5, "temperature": 5.0,
                    "hidden_weight": 1.0, "n_test": 500, "min_seeds": 2, "last": {1: 5}, "skip": {1: 3},
                    "head": "fresh"}
"""The chapter's live setting for its 6 -> 2 student (``train_one`` in the ``fast`` profile): the student copies
teacher blocks 3 and 6 (0-based ``layers``) and gets a fresh head (``head``: ``"copy"`` would copy the
teacher's); PKD-Skip maps student layer 1 to teacher layer 3, the one it was
copied from; PKD-Last to teacher layer 5, just below the top. (The tests swap in a tiny teacher.)"""


@functools.lru_cache(maxsize=4)
def _pkd_last_data(teacher_name: str, overrides: str, n_train: int, batch_size: int):
    """The teacher, its stored outputs on the transfer set (every layer's [CLS] vector) and the test loader."""
    from kdedu import zoo
    from kdedu.data import sentiment, text_loader
    from kdedu.methods import precompute_teacher

    teacher = zoo.text_teacher(teacher_name, verbose=False, **json.loads(overrides))
    n = teacher.encoder.config.num_hidden_layers
    # the chapter's `store`: the same batches (fit's seed orders them); only the [CLS] vectors, all PKD reads
    store = precompute_teacher(teacher, text_loader(sentiment("train", limit=n_train), teacher.tokenizer,
                                                    batch_size=batch_size),
                               hidden_layers=range(n + 1), cls_only=True, seed=None, group_by_length=True)
    # the chapter's `test_store` batches (sorted by length, 128 a batch), without the teacher's outputs
    test = text_loader(sentiment("test"), teacher.tokenizer, batch_size=128, group_by_length=True)
    return teacher, store, test


@functools.lru_cache(maxsize=64)  # a resubmitted answer is checked again in no time
def pkd_accuracy(layer_map: tuple, seed: int) -> float:
    """Test accuracy of the chapter's 6 -> 2 student trained with ``PKD(layer_map=dict(layer_map))``, live setting.

    The same steps as the chapter's ``make_student`` and ``train_one``: ``torch.manual_seed(seed)``, a copy of the
    teacher's embeddings and blocks ``layers``, a fresh head (or the teacher's, ``head="copy"``), word embeddings
    frozen; then ``fit(PKD(...), store,
    num_epochs=1, lr=1e-4, seed=seed)`` on the 512 stored transfer sentences; scored on the 500 test sentences.
    """
    from kdedu.methods import PKD
    from kdedu.models import SequenceClassifier, student_from_teacher
    from kdedu.train import fit

    s = PKD_LAST_SETTING
    teacher, store, test = _pkd_last_data(s["teacher"], json.dumps(s["teacher_overrides"], sort_keys=True),
                                          s["n_train"], s["batch_size"])
    torch.manual_seed(seed)
    student = SequenceClassifier(student_from_teacher(teacher, s["layers"]), teacher.head.out_features,
                                 pooling="cls")
    if s.get("head", "fresh") == "copy":
        student.head.load_state_dict(teacher.head.state_dict())
    student.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    method = PKD(student, layer_map=dict(layer_map), alpha=s["alpha"], temperature=s["temperature"],
                 hidden_weight=s["hidden_weight"])
    fit(method, store, None, num_epochs=s["num_epochs"], lr=s["lr"], seed=seed, progress=False)
    student.eval()
    device = next(student.parameters()).device
    correct = n = 0
    with torch.no_grad():
        for ids, y in test:
            logits = student(ids.to(device))
            correct += (logits.argmax(-1).cpu() == y).sum().item()
            n += len(y)
    return correct / n






@register("10.pkd-last", hint="the experiment is one more experiment.run over the chapter's live seeds, built like the "
                              "chapter's own PKD run for the 6 -> 2 student with only the layer map changed; keep "
                              "every list in the order of the seeds.")
def _check_10_pkd_last(answer):
    from kdedu.stats import compare
    from kdedu.train import default_device

    s = PKD_LAST_SETTING
    if not isinstance(answer, Mapping):
        raise Wrong(f"the answer should be a dict with the keys seeds, last, skip and verdict, got "
                    f"{type(answer).__name__}.")
    missing = [key for key in ("seeds", "last", "skip", "verdict") if key not in answer]
    if missing:
        raise Wrong(f"the answer lacks the key(s) {', '.join(missing)}.")
    seeds = answer["seeds"]
    seeds = list(seeds.tolist() if hasattr(seeds, "tolist") else seeds) \
        if hasattr(seeds, "__iter__") and not isinstance(seeds, (str, bytes)) else None
    if not seeds or not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in seeds):
        raise Wrong('answer["seeds"] should be a list of integer seeds.')
    seeds = [int(x) for x in seeds]
    if len(set(seeds)) != len(seeds) or len(seeds) < s["min_seeds"]:
        raise Wrong(f'answer["seeds"] = {seeds}: give the chapter\'s live seeds, at least {s["min_seeds"]} distinct '
                    "ones.")
    n = len(seeds)
    last = answer_accuracies('answer["last"]', answer["last"], n, s["n_test"], "test sentences")
    skip = answer_accuracies('answer["skip"]', answer["skip"], n, s["n_test"], "test sentences")
    if last == skip:
        raise Wrong("the two lists are the same, seed by seed: PKD-Last is a different training run from the "
                    "chapter's PKD (PKD-Skip); check the layer map you trained with.")
    verdicts = ("better", "worse", "no clear difference")
    if answer["verdict"] not in verdicts:
        raise Wrong(f'answer["verdict"] should be one of {verdicts}, got {answer["verdict"]!r}.')
    c = compare(last, skip)
    if answer["verdict"] != c["verdict"]:
        raise Wrong(f'answer["verdict"] = {answer["verdict"]!r} is not what experiment.compare says of your two '
                    "lists, PKD-Last first.")
    # one seed, picked from the submission itself: the same answer is always checked on the same seed
    i = int(hashlib.sha256(json.dumps([seeds, last, skip]).encode()).hexdigest(), 16) % n
    allowed = (1 if default_device().type == "cpu" else 3) / s["n_test"] + 1e-9  # a sentence of float noise
    for name, values in (("last", last), ("skip", skip)):
        again = pkd_accuracy(tuple(sorted(s[name].items())), seeds[i])
        if abs(again - values[i]) > allowed:
            what = "PKD-Last" if name == "last" else "the chapter's PKD (PKD-Skip)"
            raise Wrong(f'seed {seeds[i]}: your answer["{name}"] says {100 * values[i]:.2f} %, but training {what} '
                        f"for the 6 -> 2 student in the live setting ({s['n_train']} sentences, "
                        f"{s['num_epochs']} epoch, lr = {s['lr']:g}) gives {100 * again:.2f} %. Check the layer "
                        "map, the student, the setting and the order of the values.")
    return (f"your seed {seeds[i]} reproduces, both ways. PKD-Last − PKD-Skip = {100 * c['mean']:+.2f} ± "
            f"{100 * c['se']:.2f} points (mean ± s.e.) over {n} seeds: {c['verdict']} (exploratory, not a key "
            f"comparison; minimum detectable effect {100 * c['mde']:.2f} points).")
