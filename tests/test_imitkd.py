"""ImitKD and the student roll-ins it shares with GKD: the roll-in batches against the loader's own construction,
the scheduled coins against a re-drawn generator, the student's tokens in the teacher's prefixes, the two oracles
against per-token losses computed by hand, and the schedule against its formulas."""

from __future__ import annotations

import math

import pytest
import torch

import kdedu.methods.imitkd as imitkd_module
from kdedu.data import translation, translation_loader, translation_vocab
from kdedu.methods import ImitKD, teacher_rollin_schedule
from kdedu.methods.rollout import generate, replace_targets
from kdedu.models import GPT, Seq2Seq
from kdedu.train import fit

PAD, BOS, EOS = 0, 1, 2


def tiny(v: int, seed: int) -> Seq2Seq:
    torch.manual_seed(seed)
    return Seq2Seq(v, d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=32,
                   dropout=0.0)


def tiny_gpt(v: int, seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(v, d_model=16, num_heads=2, num_layers=1, dim_feedforward=32, dropout=0.0)


@pytest.fixture(scope="module")
def data():
    vocab = translation_vocab("fr")
    return vocab, translation("val", limit=12)


def batch_of(split, vocab, causal_lm=False, size=12):
    b = next(iter(translation_loader(split, vocab, batch_size=size, causal_lm=causal_lm)))
    return {k: v for k, v in b.items() if k != "labels"}, b["labels"]


@pytest.mark.parametrize("causal_lm", [False, True])
def test_replace_targets_builds_the_batch_the_loader_builds(data, causal_lm):
    """Rows replaced by token lists give the batch translation_loader makes from those sentences (finished rows);
    the other rows stay as they were; an unfinished output keeps its tokens and gets no EOS."""
    vocab, split = data
    x, y = batch_of(split, vocab, causal_lm)
    model = tiny_gpt(len(vocab), 0) if causal_lm else tiny(len(vocab), 0)
    rows = torch.tensor([1, 4, 7])
    tokens, finished = generate(model, x, rows, causal_lm, "sample", max_length=8,
                                generator=torch.Generator().manual_seed(0))
    assert finished == [len(t) < 8 for t in tokens] and all(0 < len(t) <= 8 for t in tokens)
    finished = [True] * 3                                                         # as if each ended with EOS
    x2, y2 = replace_targets(x, y, rows.tolist(), tokens, finished, causal_lm)
    targets = list(split.targets)
    for r, t in zip(rows.tolist(), tokens, strict=True):
        targets[r] = vocab.decode(t)
    ref = next(iter(translation_loader(split.with_targets(targets), vocab, batch_size=12, causal_lm=causal_lm)))
    keys = ("input_ids", "attention_mask", "labels") if causal_lm else ("input_ids", "decoder_input_ids",
                                                                          "decoder_attention_mask", "labels")
    for k in keys:
        got = y2 if k == "labels" else x2[k]
        assert torch.equal(got, ref[k]), k
    # an output cut at max_length: no EOS target, its last token is not fed back as an input
    x3, y3 = replace_targets(x, y, [0], [[5, 6, 7]], [False], causal_lm)
    if causal_lm:
        n = int((x["input_ids"][0] == BOS).nonzero()[0]) + 1
        assert x3["input_ids"][0, n:n + 3].tolist() == [5, 6, 7] and (x3["input_ids"][0, n + 3:] == PAD).all()
        assert y3[0, n:n + 3].tolist() == [5, 6, 7] and (y3[0, n + 3:] == -100).all()
    else:
        assert x3["decoder_input_ids"][0, :3].tolist() == [BOS, 5, 6] and y3[0, :3].tolist() == [5, 6, 7]
        assert (y3[0, 3:] == -100).all() and x3["decoder_attention_mask"][0].sum() == 3


def test_schedule_formulas():
    assert teacher_rollin_schedule(0.0, "linear") == 1.0
    assert teacher_rollin_schedule(0.25, "linear") == pytest.approx(0.75)
    assert teacher_rollin_schedule(1.0, "exponential") == pytest.approx(1 / 200)
    assert teacher_rollin_schedule(0.5, "exponential", base=4.0) == pytest.approx(0.5)
    assert teacher_rollin_schedule(0.7, "constant", start=0.3) == 0.3
    with pytest.raises(ValueError, match="schedule"):
        teacher_rollin_schedule(0.5, "cosine")
    method = ImitKD(tiny(10, 0), tiny(10, 1), schedule="linear", seed=0)
    seen = []
    for e in range(4):
        method.on_epoch_start(e, 4)
        seen.append(method.teacher_rollin)
    assert seen == pytest.approx([1.0, 0.75, 0.5, 0.25])


def test_rollin_uses_the_students_own_tokens_with_the_scheduled_probability(data, monkeypatch):
    """The rows the student rolls in are exactly those whose coin (re-drawn here from the same generator) is at
    least beta; generate is called on the student itself; the teacher scores BOS + the student's tokens there and
    the reference prefixes elsewhere."""
    vocab, split = data
    student, teacher = tiny(len(vocab), 0), tiny(len(vocab), 1)
    method = ImitKD(student, teacher, schedule="linear", seed=7).train()
    method.on_epoch_start(1, 2)                                                   # beta = 0.5
    assert method.teacher_rollin == 0.5
    calls, seen = [], []
    real = imitkd_module.generate

    def spy(model, x, rows, *args):
        tokens, finished = real(model, x, rows, *args)
        calls.append((model, rows.tolist(), tokens, finished))
        return tokens, finished

    monkeypatch.setattr(imitkd_module, "generate", spy)
    forward = teacher.forward
    monkeypatch.setattr(teacher, "forward", lambda **kw: seen.append(kw["decoder_input_ids"]) or forward(**kw))
    x, y = batch_of(split, vocab)
    expected = (torch.rand(12, generator=torch.Generator().manual_seed(7)) >= 0.5).nonzero()[:, 0].tolist()
    assert 0 < len(expected) < 12
    method(x, y)
    (model, rows, tokens, finished), = calls
    assert model is student and rows == expected
    dec = seen[-1]
    for r, t, done in zip(rows, tokens, finished, strict=True):
        want = [BOS] + (list(t) if done else list(t)[:-1])
        assert dec[r, :len(want)].tolist() == want and (dec[r, len(want):] == PAD).all()
    for r in set(range(12)) - set(rows):
        n = int((y[r] != -100).sum())
        assert dec[r, :n].tolist() == x["decoder_input_ids"][r, :n].tolist()
    assert method.student_rows == len(expected) and method.rollin_rows == 12


def test_rollin_probability_over_many_coins():
    """With beta fixed, the share of student roll-ins is 1 - beta (binomial, 5 sigma); beta = 1 and 0 are exact."""
    method = ImitKD(tiny(10, 0), tiny(10, 1), schedule="constant", teacher_rollin=0.3, seed=1)
    method.on_epoch_start(0, 1)
    n = 20_000
    share = len(method.rollin_rows_of(n)) / n
    assert abs(share - 0.7) < 5 * math.sqrt(0.7 * 0.3 / n)
    for beta, count in ((1.0, 0), (0.0, n)):
        m = ImitKD(tiny(10, 0), tiny(10, 1), schedule="constant", teacher_rollin=beta, seed=1)
        m.on_epoch_start(0, 1)
        assert len(m.rollin_rows_of(n)) == count


def test_beta_one_never_samples_and_is_word_level_kd(data, monkeypatch):
    from kdedu import losses

    vocab, split = data
    student, teacher = tiny(len(vocab), 0), tiny(len(vocab), 1)
    method = ImitKD(student, teacher, schedule="constant", teacher_rollin=1.0, temperature=2.0).train()
    monkeypatch.setattr(imitkd_module, "generate", lambda *a, **k: pytest.fail("the student generated"))
    x, y = batch_of(split, vocab)
    got = method(x, y)["kd"]
    ref = losses.kd_loss(student(**x), teacher(**x), 2.0, mask=y != -100)
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize("oracle", ["distribution", "argmax"])
def test_oracles_on_student_prefixes_by_hand(data, oracle):
    """beta = 0: every row is the student's. The loss is recomputed per token from the recorded prefixes: the
    teacher's KL to the student ("distribution") or the cross-entropy of the teacher's argmax token ("argmax")."""
    vocab, split = data
    student, teacher = tiny(len(vocab), 0), tiny(len(vocab), 1)
    method = ImitKD(student, teacher, schedule="constant", teacher_rollin=0.0, oracle=oracle, seed=3,
                    max_length=12).train()
    x, y = batch_of(split, vocab)
    got = method(x, y)["kd"].item()
    again = ImitKD(student, teacher, schedule="constant", teacher_rollin=0.0, seed=3, max_length=12)
    again.on_epoch_start(0, 1)
    rows = again.rollin_rows_of(12)
    tokens, finished = generate(student, x, rows, False, "sample", 1.0, 12, again.generator)
    total, count = 0.0, 0
    for r, (t, done) in enumerate(zip(tokens, finished, strict=True)):
        prefix = [BOS] + (list(t) if done else list(t)[:-1])
        one = {"input_ids": x["input_ids"][r:r + 1], "attention_mask": x["attention_mask"][r:r + 1],
               "decoder_input_ids": torch.tensor([prefix])}
        with torch.no_grad():
            zs, zt = student(**one)[0].double(), teacher(**one)[0].double()
        for i in range(len(prefix)):
            logq = torch.log_softmax(zs[i], -1)
            if oracle == "distribution":
                p = torch.softmax(zt[i], -1)
                total += float((p * (p.log() - logq)).sum())
            else:
                total -= float(logq[zt[i].argmax()])
            count += 1
    assert got == pytest.approx(total / count, rel=1e-4)
    assert method.student_rows == 12 and method.student_tokens == sum(len(t) for t in tokens)


def test_imitkd_trains_a_gpt_through_fit_and_counts_its_costs(data):
    vocab, split = data
    loader = translation_loader(split, vocab, batch_size=6, shuffle=True, seed=None, causal_lm=True)
    method = ImitKD(tiny_gpt(len(vocab), 0), tiny_gpt(len(vocab), 1), schedule="linear", causal_lm=True,
                    max_length=10)
    before = [p.clone() for p in method.student.parameters()]
    h = fit(method, loader, None, num_epochs=2, device="cpu", progress=False, seed=0)
    assert any(not torch.equal(a, b) for a, b in zip(before, method.student.parameters(), strict=True))
    cost = method.cost(h)
    assert cost["teacher_calls"] == 4 and cost["epochs"] == 2 and cost["time_s"] > 0
    assert method.rollin_rows == 24 and 0 < method.student_rows <= 12                 # epoch 1: beta = 1
