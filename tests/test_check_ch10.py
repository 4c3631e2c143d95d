"""The exercise checkers of chapter 10 (intermediate layers).

For every checker: a correct answer passes, plausible wrong answers fail (with a message), and
``None`` as "not answered yet" is checked for every exercise in tests/test_check.py.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
import torch
from checks import LazyAnswer, answer_tests, shift

from kdedu import check, experiment, losses
from kdedu.check import ch10
from kdedu.methods.ckd import contiguous_groups

# 10.pkd-last re-trains students of the chapter's teacher, the fine-tuned MiniLM (about a minute to fine-tune in a cold
# cache). These tests run its checker on a tiny 6-layer stand-in teacher instead, in the same setting otherwise (the
# same student layers, maps, data and steps); test_pkd_last_with_the_chapter_teacher runs it on MiniLM (KDEDU_SLOW=1).
CHAPTER_SETTING = dict(ch10.PKD_LAST_SETTING)
TINY_SETTING = {**CHAPTER_SETTING, "teacher": "sentiment-tiny", "lr": 1e-3,
                "teacher_overrides": {"num_layers": 6, "hidden": 64, "train_layers": 6}}


def _clear_caches():
    ch10.pkd_accuracy.cache_clear()
    ch10._pkd_last_data.cache_clear()
    _pkd_last_runs.cache_clear()


@pytest.fixture(autouse=True, scope="module")
def _tiny_teacher():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ch10, "PKD_LAST_SETTING", TINY_SETTING)
        _clear_caches()
        yield
    _clear_caches()


def _verdict(exercise_id, answer):
    return check.exercise(exercise_id, answer, verbose=False)


def _entropy_with_kdedu(h_s, h_t, scale):
    teacher = list(h_t.unbind(1))
    a = torch.stack([losses.alp_attention(h_s[:, j], teacher, scale) for j in range(h_s.shape[1])], 1)  # (B, M, N)
    return -(a * a.clamp_min(1e-30).log()).sum(-1)


def _entropy(h_s, h_t, scale):
    log_a = torch.log_softmax(scale * h_s @ h_t.transpose(1, 2), -1)  # (B, M, N)
    return -(log_a.exp() * log_a).sum(-1)


CORRECT = {
    "10.last-map": [lambda M, N: {j: N - M + j for j in range(1, M)},
                    lambda M, N: dict(zip(range(1, M), range(N - M + 1, N), strict=True))],
    "10.alp-entropy": [_entropy, _entropy_with_kdedu],
    "10.ckd-groups": [contiguous_groups,
                      lambda M, N: [list(range(round(i * N / M) + 1, round((i + 1) * N / M) + 1)) for i in range(M)]],
}

WRONG = {
    "10.last-map": [
        lambda M, N: {j: N - M + j for j in range(1, M + 1)},  # maps the last layer too
        lambda M, N: {j: j * (N // M) for j in range(1, M)},  # PKD-Skip
        lambda M, N: {j: N - M + j + 1 for j in range(1, M)},  # includes the teacher's last layer
        lambda M, N: {j: N - M + j - 1 for j in range(1, M)},  # 0-based teacher layers
        lambda M, N: [N - M + j for j in range(1, M)],  # not a dict
        "not a function",
    ],
    "10.alp-entropy": [
        lambda h_s, h_t, scale: _entropy(h_s.transpose(0, 1), h_t.transpose(0, 1), scale).T,  # nonsense axes
        lambda h_s, h_t, scale: -(torch.softmax(scale * h_s @ h_t.transpose(1, 2), -1)
                                  * torch.softmax(scale * h_s @ h_t.transpose(1, 2), -1).log()).sum(-1),  # nan at 0
        lambda h_s, h_t, scale: _entropy(h_s, h_t, 1.0),  # ignores the scale
        lambda h_s, h_t, scale: torch.log_softmax(scale * h_s @ h_t.transpose(1, 2), -1).max(-1).values,  # not H
        lambda h_s, h_t, scale: _entropy(h_s, h_t, scale).sum(-1),  # summed over student layers
    ],
    "10.ckd-groups": [
        lambda M, N: [list(range(i * (N // M), (i + 1) * (N // M))) for i in range(M)],  # 0-based, drops layers
        lambda M, N: [list(range(i * (N // M) + 1, (i + 1) * (N // M) + 1)) for i in range(M)],  # floor: skips
        lambda M, N: [list(range(1, N + 1))[i::M] for i in range(M)],  # interleaved, not contiguous
        lambda M, N: [[k] for k in range(1, N + 1)],  # one group per teacher layer
    ],
}

@functools.lru_cache(maxsize=2)
def _pkd_last_runs(setting_key: str = "tiny") -> dict:
    """The exercise's experiment, done as the chapter does it (once per test session): the chapter's `store` (every
    token and attention map), `make_student`, `train_one` and `test_accuracy_and_alpha` for the 6 -> 2 student, over
    the live seeds 0, 1, 2, with PKD-Last (the solution's map) and the chapter's PKD-Skip."""
    from kdedu import zoo
    from kdedu.data import sentiment, text_loader
    from kdedu.methods import PKD, precompute_teacher
    from kdedu.models import SequenceClassifier, student_from_teacher
    from kdedu.train import fit

    s = TINY_SETTING if setting_key == "tiny" else CHAPTER_SETTING
    teacher = zoo.text_teacher(s["teacher"], verbose=False, **s["teacher_overrides"])
    tok, n = teacher.tokenizer, teacher.encoder.config.num_hidden_layers
    store = precompute_teacher(teacher, text_loader(sentiment("train", limit=512), tok, batch_size=32),
                               hidden_layers=range(n + 1), cls_only=False, attention_layers=range(1, n + 1), seed=None,
                               group_by_length=True)
    test_store = precompute_teacher(teacher, text_loader(sentiment("test"), tok, batch_size=128), shuffle=False,
                                    hidden_layers=range(1, n + 1), cls_only=True, group_by_length=True)
    layers, M = (2, 5), 2

    def accuracy(layer_map, seed):
        torch.manual_seed(seed)
        student = SequenceClassifier(student_from_teacher(teacher, layers), teacher.head.out_features, pooling="cls")
        if s.get("head", "fresh") == "copy":  # the chapter's students get a fresh head; the variant copies it
            student.head.load_state_dict(teacher.head.state_dict())
        student.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
        fit(PKD(student, layer_map=layer_map, alpha=0.5, temperature=5.0, hidden_weight=1.0), store, None,
            num_epochs=1, lr=s["lr"], seed=seed, progress=False)
        student.eval()
        correct = total = 0
        with torch.no_grad():
            for tb, yb in test_store:
                out = student(tb.input_ids, tb.attention_mask, output_hidden_states=True)
                correct += (out.logits.argmax(-1) == yb).sum().item()
                total += len(yb)
        return correct / total

    seeds = [0, 1, 2]
    last = [accuracy({j: n - M + j for j in range(1, M)}, seed) for seed in seeds]
    skip = [accuracy({j + 1: layers[j] + 1 for j in range(M - 1)}, seed) for seed in seeds]
    return {"seeds": seeds, "last": last, "skip": skip, "verdict": experiment.compare(last, skip)["verdict"]}


def PkdLast(what: str, change=lambda answer: answer) -> LazyAnswer:
    """An answer made from the correct one by ``change`` when it is first read (tests/checks.py)."""
    return LazyAnswer(_pkd_last_runs, what, change)


def _with(**changes):
    """The correct answer with some entries changed; the verdict recomputed from the lists unless it is changed."""
    def change(answer):
        answer = {**answer, **{k: (v(answer) if callable(v) else v) for k, v in changes.items()}}
        if "verdict" not in changes:
            answer["verdict"] = experiment.compare(answer["last"], answer["skip"])["verdict"]
        return answer
    return change


def _other_verdict(answer):
    return next(v for v in ("better", "worse", "no clear difference") if v != answer["verdict"])


CORRECT["10.pkd-last"] = [
    PkdLast("as the chapter's solution makes it"),
    PkdLast("arrays and tuples", _with(seeds=lambda a: tuple(a["seeds"]), last=lambda a: np.array(a["last"]),
                                       skip=lambda a: torch.tensor(a["skip"], dtype=torch.float64),
                                       verdict=lambda a: a["verdict"])),
]
WRONG["10.pkd-last"] = [
    PkdLast("the verdict of another comparison", _with(verdict=_other_verdict)),
    PkdLast("PKD-Last's accuracies made up", _with(last=lambda a: shift(a["last"], 3, 500))),
    PkdLast("PKD-Skip's accuracies made up", _with(skip=lambda a: shift(a["skip"], -3, 500))),
    PkdLast("the PKD-Skip list copied into PKD-Last", _with(last=lambda a: list(a["skip"]))),
    PkdLast("percentages", _with(last=lambda a: [100 * v for v in a["last"]],
                                 skip=lambda a: [100 * v for v in a["skip"]])),
    PkdLast("too few seeds", _with(seeds=[0], last=lambda a: a["last"][:1], skip=lambda a: a["skip"][:1])),
    PkdLast("one value missing", _with(last=lambda a: a["last"][:-1], verdict=lambda a: a["verdict"])),
    PkdLast("a verdict that is not one of the three", _with(verdict="PKD-Skip wins")),
    {"seeds": [0, 1, 2], "last": [0.7, 0.71, 0.72]},  # no skip, no verdict
    [0.7, 0.71, 0.72],
]

test_correct_answers_pass, test_wrong_answers_fail = answer_tests(CORRECT, WRONG)


def test_pkd_last_checker_reproduces_the_chapter_pipeline():
    """The checker's shortcuts (a [CLS]-only store, the test set without the teacher) give the chapter's numbers."""
    runs = _pkd_last_runs()
    s = ch10.PKD_LAST_SETTING
    for i, seed in enumerate(runs["seeds"]):
        assert ch10.pkd_accuracy(tuple(s["last"].items()), seed) == runs["last"][i]
        assert ch10.pkd_accuracy(tuple(s["skip"].items()), seed) == runs["skip"][i]
    assert runs["last"] != runs["skip"], "the stand-in teacher must tell the two maps apart"


@pytest.mark.skipif(os.environ.get("KDEDU_SLOW") != "1", reason="fine-tunes MiniLM (~1 min); set KDEDU_SLOW=1")
def test_pkd_last_with_the_chapter_teacher(monkeypatch):
    monkeypatch.setattr(ch10, "PKD_LAST_SETTING", CHAPTER_SETTING)
    _clear_caches()
    try:
        answer = _pkd_last_runs("chapter")
        result = _verdict("10.pkd-last", answer)
        assert result, result.message
        assert not _verdict("10.pkd-last", {**answer, "last": shift(answer["last"], 3, 500)})
    finally:
        _clear_caches()




def test_targeted_messages():
    assert "last student layer" in _verdict("10.last-map", WRONG["10.last-map"][0]).message
    assert "PKD-Skip" in _verdict("10.last-map", WRONG["10.last-map"][1]).message
    assert "nan or inf" in _verdict("10.alp-entropy", WRONG["10.alp-entropy"][1]).message
    assert "exactly once" in _verdict("10.ckd-groups", WRONG["10.ckd-groups"][0]).message
    assert "contiguous" in _verdict("10.ckd-groups", WRONG["10.ckd-groups"][2]).message
    assert "same, seed by seed" in _verdict("10.pkd-last", WRONG["10.pkd-last"][3]).message
    assert "percentages" in _verdict("10.pkd-last", WRONG["10.pkd-last"][4]).message
    assert "gives" in _verdict("10.pkd-last", WRONG["10.pkd-last"][1]).message  # re-trained, and it differs


def test_alpkd_buckets():
    """ALPKD(groups=...): each student layer attends over its own bucket only (the ALP-KD paper's NO and PO); one
    bucket of all layers per student layer is ALP-KD proper; bad buckets are refused."""
    from types import SimpleNamespace

    from kdedu.methods import ALPKD

    g = torch.Generator().manual_seed(0)
    B, M, N, H = 4, 3, 6, 8
    s_cls = [torch.randn(B, H, generator=g) for _ in range(M)]
    t_cls = [torch.randn(B, H, generator=g) for _ in range(N)]
    student = torch.nn.Linear(1, 1)
    student.config = SimpleNamespace(num_hidden_layers=M, hidden_size=H)
    for buckets in ([[1, 2], [3, 4], [5, 6]], [[1, 2, 3], [3, 4, 5], [5, 6]]):
        method = ALPKD(student, num_teacher_layers=N, groups=buckets)
        expected = 0.0
        for j, bucket in enumerate(buckets):  # the formula, bucket by bucket
            t = torch.stack([t_cls[k - 1] for k in bucket], 1)                     # (B, n_j, H)
            a = torch.softmax(torch.einsum("bh,bnh->bn", s_cls[j], t), -1)
            expected = expected + torch.nn.functional.mse_loss(s_cls[j], torch.einsum("bn,bnh->bh", a, t))
        assert torch.allclose(method._layer_loss(s_cls, t_cls), expected, rtol=1e-5)
    every = ALPKD(student, num_teacher_layers=N, groups=[list(range(1, N + 1))] * M)
    assert torch.allclose(every._layer_loss(s_cls, t_cls), losses.alp_loss(s_cls, t_cls), rtol=1e-5)
    for bad in ([[1, 2], [3, 4]], [[1, 2], [], [5, 6]], [[0, 1], [3], [6]], [[1], [3], [7]]):
        with pytest.raises(ValueError):
            ALPKD(student, num_teacher_layers=N, groups=bad)
