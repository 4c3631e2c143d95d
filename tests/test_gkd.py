"""GKD: the loss against TRL's GKDTrainer.generalized_jsd_loss, the on-policy samples against an independent
re-sampling from a copy of the student as it was at that step, the student data fraction against the method's
own coins re-drawn, and the KL ends of beta against kd_loss / reverse_kd_loss."""

from __future__ import annotations

import copy

import pytest
import torch

import kdedu.methods.gkd as gkd_module
from kdedu import losses
from kdedu.data import translation, translation_loader, translation_vocab
from kdedu.methods import GKD
from kdedu.methods.rollout import prompts
from kdedu.models import Seq2Seq, decoding
from kdedu.train import fit

BOS = 1


def tiny(v: int, seed: int) -> Seq2Seq:
    torch.manual_seed(seed)
    return Seq2Seq(v, d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=32,
                   dropout=0.0)


@pytest.fixture(scope="module")
def data():
    vocab = translation_vocab("fr")
    return vocab, translation("val", limit=16)


def batch_of(split, vocab, size=8):
    b = next(iter(translation_loader(split, vocab, batch_size=size)))
    return {k: v for k, v in b.items() if k != "labels"}, b["labels"]


@pytest.fixture(scope="module")
def trl_gjsd():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from trl.experimental.gkd import GKDTrainer
        except (ImportError, RuntimeError):
            try:
                from trl import GKDTrainer
            except (ImportError, RuntimeError) as err:
                pytest.skip(f"trl's GKDTrainer cannot be imported ({err})")
    return GKDTrainer.generalized_jsd_loss


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_off_policy_loss_is_trls_generalized_jsd(data, trl_gjsd, beta):
    vocab, split = data
    student, teacher = tiny(len(vocab), 0), tiny(len(vocab), 1)
    method = GKD(student, teacher, lmbda=0.0, beta=beta, temperature=1.5).train()
    x, y = batch_of(split, vocab)
    got = method(x, y)["kd"]
    theirs = trl_gjsd(student(**x), teacher(**x), labels=y, beta=beta, temperature=1.5)
    assert got.item() == pytest.approx(theirs.item(), rel=1e-5)


def test_beta_ends_are_the_forward_and_reverse_kd_losses_without_t_squared(data):
    vocab, split = data
    student, teacher = tiny(len(vocab), 0), tiny(len(vocab), 1)
    x, y = batch_of(split, vocab)
    zs, zt, keep = student(**x), teacher(**x), y != -100
    fwd = GKD(student, teacher, lmbda=0.0, beta=0.0, temperature=2.0).train()(x, y)["kd"]
    rev = GKD(student, teacher, lmbda=0.0, beta=1.0, temperature=2.0).train()(x, y)["kd"]
    assert fwd.item() == pytest.approx(losses.kd_loss(zs, zt, 2.0, mask=keep).item() / 4, rel=1e-4)
    assert rev.item() == pytest.approx(losses.reverse_kd_loss(zs, zt, 2.0, mask=keep).item() / 4, rel=1e-4)


def test_samples_are_on_policy_drawn_from_the_current_student(data, monkeypatch):
    """lmbda = 1: every batch's targets are sampled. At each call the tokens equal an independent re-sampling (the
    same generator state) from a frozen copy of the student *as it is at that moment*; those copies differ from
    batch to batch (the student trains in between), and the teacher scores BOS + exactly those tokens."""
    vocab, split = data
    student, teacher = tiny(len(vocab), 0), tiny(len(vocab), 1)
    method = GKD(student, teacher, lmbda=1.0, max_length=10, seed=5)
    real, snapshots, fed = gkd_module.generate, [], []

    def spy(model, x, rows, causal_lm, strategy, temperature, max_length, generator):
        assert model is method.student
        frozen, state = copy.deepcopy(model), generator.get_state()
        tokens, finished = real(model, x, rows, causal_lm, strategy, temperature, max_length, generator)
        ids, mask = prompts(x, causal_lm)
        width = int(mask.sum(1).max())
        again = torch.Generator()
        again.set_state(state)
        ref, _ = decoding.sample(frozen, ids[:, :width], mask[:, :width], temperature, max_length, again)
        assert tokens == ref
        snapshots.append(torch.cat([p.detach().flatten() for p in frozen.parameters()]))
        fed.append(tokens)
        return tokens, finished

    monkeypatch.setattr(gkd_module, "generate", spy)
    forward = teacher.forward
    decoder_inputs = []
    monkeypatch.setattr(teacher, "forward",
                        lambda **kw: decoder_inputs.append(kw["decoder_input_ids"]) or forward(**kw))
    loader = translation_loader(split, vocab, batch_size=4, shuffle=True, seed=None)
    fit(method, loader, None, num_epochs=1, lr=1e-2, device="cpu", progress=False, seed=0)
    assert len(snapshots) == 4 and method.on_policy_batches == 4 == method.batches
    assert all(not torch.equal(a, b) for a, b in zip(snapshots, snapshots[1:], strict=False))
    for dec, tokens in zip(decoder_inputs, fed, strict=True):
        for r, t in enumerate(tokens):
            n = len(t) if len(t) == 10 else len(t) + 1                            # a cut output drops its last token
            assert dec[r, :n].tolist() == ([BOS] + list(t))[:n]


@pytest.mark.parametrize("lmbda", [0.0, 0.3, 1.0])
def test_student_data_fraction_follows_the_coins(data, monkeypatch, lmbda):
    """The batches that are sampled are exactly those whose coin u (re-drawn from the method's seeded generator,
    one per batch, then the samples' own draws) satisfies u <= lmbda; lmbda = 0 never samples."""
    vocab, split = data
    method = GKD(tiny(len(vocab), 0), tiny(len(vocab), 1), lmbda=lmbda, seed=11).train()
    method.on_epoch_start(0, 1)
    draws = []

    def fake(model, x, rows, *args):
        generator = args[-1]
        draws.append(generator.get_state())
        return [[5]] * len(rows), [True] * len(rows)                             # no draws of its own

    monkeypatch.setattr(gkd_module, "generate", fake)
    x, y = batch_of(split, vocab, 4)
    coins = torch.Generator().manual_seed(11)
    expected = 0
    for _ in range(30):
        if lmbda > 0:
            expected += float(torch.rand((), generator=coins)) <= lmbda
        method(x, y)
    assert method.on_policy_batches == len(draws) == expected and method.batches == 30
    if lmbda == 0.3:
        assert 0 < expected < 30


def test_gkd_trains_through_fit_and_reports_its_cost(data):
    vocab, split = data
    method = GKD(tiny(len(vocab), 0), tiny(len(vocab), 1), lmbda=0.5, max_length=10)
    h = fit(method, translation_loader(split, vocab, batch_size=8, shuffle=True, seed=None), None, num_epochs=2,
            device="cpu", progress=False, seed=0)
    cost = method.cost(h)
    assert cost["teacher_calls"] == 4 and cost["batches"] == 4 and 0 <= cost["on_policy_batches"] <= 4
    assert set(h.last) >= {"kd", "loss", "time_s"}
    with pytest.raises(ValueError, match="lmbda"):
        GKD(tiny(len(vocab), 0), tiny(len(vocab), 1), lmbda=1.5)
    with pytest.raises(ValueError, match="beta"):
        GKD(tiny(len(vocab), 0), tiny(len(vocab), 1), beta=-0.1)
