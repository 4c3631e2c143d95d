"""Sequence distillation beyond compression (chapter 14's methods) and shrink-and-fine-tune: teacher-query
counts against hand counts, the ensemble against averages recomputed by hand, the selective switch against
scripted BLEU (and teachers that are never asked once switched off), the vocabulary bridge against the teacher on
its own encoding, domain alternation's transfer set against beam search, an imitation that provably reads only
text, and shrunk students against their teachers."""

from __future__ import annotations

import pytest
import torch

from kdedu import losses
from kdedu.data import translation, translation_loader, translation_vocab
from kdedu.methods import (
    BlackBox,
    CountedTeacher,
    DomainAlternation,
    EnsembleKD,
    EnsembleTeacher,
    Imitation,
    SelectiveMultilingualKD,
    VocabularyBridge,
    distillation_switches,
    shrink_and_fine_tune,
)
from kdedu.methods.seqkd import model_checksum
from kdedu.models import GPT, Seq2Seq, beam_search, layers_to_copy, shrink_decoder
from kdedu.train import fit

PAD, BOS, EOS = 0, 1, 2


def tiny(v: int, seed: int, layers: int = 1) -> Seq2Seq:
    torch.manual_seed(seed)
    return Seq2Seq(v, d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=layers, dim_feedforward=32,
                   dropout=0.0).eval()


@pytest.fixture(scope="module")
def fr():
    return translation_vocab("fr"), translation("val", limit=12)


def batch_of(split, vocab, size=12):
    b = next(iter(translation_loader(split, vocab, batch_size=size)))
    return {k: v for k, v in b.items() if k != "labels"}, b["labels"]


def source_ids(split, vocab):
    rows = [vocab.encode(s) + [EOS] for s in split.sources]
    width = max(map(len, rows))
    return torch.tensor([r + [PAD] * (width - len(r)) for r in rows])


# ------------------------------------------------------------------------------------------
# costs
# ------------------------------------------------------------------------------------------
def test_counted_teacher_counts_calls_and_unpadded_positions(fr):
    vocab, split = fr
    counted = CountedTeacher(tiny(len(vocab), 1))
    x, y = batch_of(split, vocab)
    assert torch.equal(counted(**x), counted.teacher(**x))
    assert counted.cost() == {"teacher_calls": 1, "teacher_tokens": int((y != -100).sum())}
    step = counted.prefix_scorer(x["input_ids"], x["attention_mask"])
    step(torch.full((5, 1), BOS), torch.arange(5))
    step(torch.full((3, 2), BOS), torch.arange(3))
    assert counted.cost() == {"teacher_calls": 3, "teacher_tokens": int((y != -100).sum()) + 8}
    counted.reset()
    hyps = beam_search(counted, x["input_ids"][:2], x["attention_mask"][:2], beam_size=2, max_length=4)
    assert len(hyps) == 2 and 1 <= counted.calls <= 4 and counted.tokens <= 4 * 2 * 2
    assert model_checksum(CountedTeacher(tiny(len(vocab), 1))) == model_checksum(counted)  # counts are not weights


# ------------------------------------------------------------------------------------------
# ensembles
# ------------------------------------------------------------------------------------------
def test_ensemble_averages_distributions_and_decodes_with_the_average(fr):
    vocab, split = fr
    teachers = [tiny(len(vocab), s) for s in (1, 2, 3)]
    x, _ = batch_of(split, vocab)
    ens = EnsembleTeacher(teachers, "probs", temperature=2.0)
    mean = torch.stack([torch.softmax(t(**x) / 2.0, -1) for t in teachers]).mean(0)
    assert torch.allclose(torch.softmax(ens(**x) / 2.0, -1), mean, atol=1e-6)
    geo = EnsembleTeacher(teachers, "logits")
    ref = torch.stack([t(**x) for t in teachers]).mean(0)
    assert torch.allclose(torch.softmax(geo(**x), -1), torch.softmax(ref, -1), atol=1e-6)
    # decoding: the step is log of the mean next-token distribution at T = 1
    step = ens.prefix_scorer(x["input_ids"], x["attention_mask"])
    prefixes, rows = torch.tensor([[BOS, 5], [BOS, 7], [BOS, 5]]), torch.tensor([0, 3, 3])
    each = [t.prefix_scorer(x["input_ids"], x["attention_mask"])(prefixes, rows).exp() for t in teachers]
    assert torch.allclose(step(prefixes, rows).exp(), torch.stack(each).mean(0), atol=1e-6)
    # an ensemble of one teacher decodes as that teacher
    one = beam_search(EnsembleTeacher(teachers[:1]), x["input_ids"], x["attention_mask"], beam_size=3, max_length=6)
    alone = beam_search(teachers[0], x["input_ids"], x["attention_mask"], beam_size=3, max_length=6)
    assert [h[0].tokens for h in one] == [h[0].tokens for h in alone]
    # the averaging mode is part of the checksum that keys cached beams
    assert model_checksum(EnsembleTeacher(teachers, "probs")) != model_checksum(EnsembleTeacher(teachers, "logits"))


def test_ensemble_kd_word_and_sequence_level(fr, tmp_path, monkeypatch):
    monkeypatch.setenv("KDEDU_CACHE", str(tmp_path))
    vocab, split = fr
    teachers = [tiny(len(vocab), s) for s in (1, 2)]
    student = tiny(len(vocab), 0).train()
    method = EnsembleKD(student, teachers, vocab, alpha=1.0, temperature=1.0, beam_size=2, max_length=6).train()
    x, y = batch_of(split, vocab)
    mean = torch.stack([torch.softmax(t(**x), -1) for t in teachers]).mean(0)
    zs, keep = student(**x), y != -100
    kl = (mean * (mean.log() - torch.log_softmax(zs, -1))).sum(-1)[keep].mean()
    assert method(x, y)["kd"].item() == pytest.approx(kl.item(), rel=1e-5)
    assert method.teacher.cost()["teacher_calls"] == 1
    # sequence level: the transfer set is the ensemble's beam search
    kd_set = method.transfer_set(split)
    hyps = beam_search(EnsembleTeacher(teachers), source_ids(split, vocab), beam_size=2, max_length=6)
    assert kd_set.targets == [vocab.decode(h[0].tokens) for h in hyps]
    assert method.teacher.cost()["teacher_calls"] > 1
    h = fit(method, method.loader(split, batch_size=6), None, num_epochs=1, device="cpu", progress=False)
    assert method.cost(h)["teachers"] == 2 and method.cost(h)["time_s"] >= h["time_s"][0]


# ------------------------------------------------------------------------------------------
# multilingual selective distillation
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def multi():
    mv = translation_vocab(("fr", "de"), tag=True)
    teachers = {}
    for i, lang in enumerate(("fr", "de")):
        t = tiny(len(translation_vocab(lang)), 10 + i)
        t.vocab = translation_vocab(lang)
        teachers[lang] = t
    train = translation("train", target=("fr", "de"), tag=True, limit=24)
    val = {lang: translation("val", target=lang, tag=True, limit=6) for lang in ("fr", "de")}
    return mv, teachers, train, val


def test_switch_rule_turns_distillation_off_exactly_at_the_threshold():
    teacher = {"fr": 20.0, "de": 10.0}
    assert distillation_switches({"fr": 20.999, "de": 10.5}, teacher, 1.0) == {"fr": True, "de": True}
    assert distillation_switches({"fr": 21.0, "de": 11.0}, teacher, 1.0) == {"fr": False, "de": False}
    assert distillation_switches({"fr": 20.0, "de": 9.0}, teacher, 0.0) == {"fr": False, "de": True}
    with pytest.raises(ValueError, match="same languages"):
        distillation_switches({"fr": 1.0}, teacher)


def test_vocabulary_bridge_is_the_teacher_on_its_own_encoding(multi):
    mv, teachers, train, _ = multi
    t = teachers["de"]
    rows = [i for i, s in enumerate(train.sources) if s.startswith("<2de>")][:4]
    sub = train.subset(rows)
    x, y = batch_of(sub, mv, 4)
    bridged = VocabularyBridge(t, t.vocab, mv)(**x)                               # (B, T, |mv|)
    own = translation_loader(type(sub)([s.split(" ", 1)[1] for s in sub.sources], sub.targets), t.vocab, 4)
    b = next(iter(own))
    z = t(b["input_ids"], b["attention_mask"], b["decoder_input_ids"])
    for w, i in t.vocab.stoi.items():
        assert torch.allclose(bridged[..., mv.stoi[w]], z[..., i], atol=1e-6)
    unknown = [i for w, i in mv.stoi.items() if w not in t.vocab.stoi]
    assert unknown and torch.isinf(bridged[..., unknown]).all()


def test_selective_switch_follows_scripted_bleu_and_switched_off_teachers_are_never_asked(multi, monkeypatch):
    """Student BLEU is scripted per check: fr 10 -> 20 -> 5 against a teacher at 15 (threshold 1): distillation on,
    off, on again; de stays below and keeps its teacher. A switched-off teacher gets no call in that epoch."""
    mv, teachers, train, val = multi
    method = SelectiveMultilingualKD(tiny(len(mv), 0).train(), teachers, mv, val=val, threshold=1.0)
    script = {"fr": iter([10.0, 20.0, 5.0]), "de": iter([1.0, 2.0, 3.0])}

    def scripted(model, lang):
        return 15.0 if isinstance(model, CountedTeacher) else next(script[lang])

    monkeypatch.setattr(method, "score", scripted)
    calls = []

    class Record:
        def on_epoch(self):
            calls.append({lang: t.calls for lang, t in method.teachers.items()})

    rec = Record()
    hook = method.on_epoch_start
    monkeypatch.setattr(method, "on_epoch_start", lambda e, n: (rec.on_epoch(), hook(e, n)))
    loader = translation_loader(train, mv, batch_size=8, shuffle=True, seed=None)
    fit(method, loader, None, num_epochs=4, device="cpu", progress=False, seed=0)
    switches = [(r["epoch"], r["language"], r["distil"]) for r in method.log]
    assert switches == [(1, "fr", True), (1, "de", True), (2, "fr", False), (2, "de", True), (3, "fr", True),
                        (3, "de", True)]
    calls.append({lang: t.calls for lang, t in method.teachers.items()})
    per_epoch = [{lang: calls[e + 1][lang] - calls[e][lang] for lang in calls[e]} for e in range(4)]
    assert per_epoch[2]["fr"] == 0 and all(per_epoch[e]["fr"] > 0 for e in (0, 1, 3))
    assert all(per_epoch[e]["de"] > 0 for e in range(4))


def test_selective_metric_scores_the_greedy_translations_and_sets_the_switch(multi):
    """``metric`` receives the greedy translations of the validation sources (recomputed here with translate) and its
    value, not BLEU, decides the switch."""
    from kdedu.metrics import bleu
    from kdedu.models import translate

    mv, teachers, train, val = multi
    seen = []

    def first_word_share(hyps, split):
        seen.append(list(hyps))
        same = [h.split()[:1] == t.split()[:1] for h, t in zip(hyps, split.targets, strict=True)]
        return 100.0 * sum(same) / len(hyps)

    student = tiny(len(mv), 3)
    method = SelectiveMultilingualKD(student, teachers, mv, val=val, threshold=0.0, metric=first_word_share)
    switches = method.check(1)
    for lang in ("fr", "de"):
        by_hand = translate(student, val[lang].sources, mv, strategy="greedy")
        assert by_hand in seen
        assert method.log[-2 if lang == "fr" else -1]["student_score"] == first_word_share(by_hand, val[lang])
        assert switches[lang] == (method.log[-2 if lang == "fr" else -1]["student_score"] < method.teacher_score[lang])
    default = SelectiveMultilingualKD(student, teachers, mv, val=val)
    hyps = translate(student, val["fr"].sources, mv, strategy="greedy")
    assert default.score(student, "fr") == pytest.approx(bleu(hyps, val["fr"].targets))
    with pytest.raises(TypeError, match="metric"):
        SelectiveMultilingualKD(student, teachers, mv, val=val, metric="accuracy")


def test_selective_loss_by_hand_and_top_k_at_full_vocabulary(multi):
    """fr distilled, de not: ce = sum of (1 - alpha) CE on fr tokens and CE on de tokens over all tokens; kd =
    alpha * sum of T^2 KL on fr tokens over all tokens. top_k = V gives the full-distribution loss."""
    mv, teachers, train, _ = multi
    student = tiny(len(mv), 0)
    method = SelectiveMultilingualKD(student, teachers, mv, alpha=0.3, temperature=2.0).train()
    method.switches = {"fr": True, "de": False}
    x, y = batch_of(train, mv, 12)
    terms = method(x, y)
    zs = student(**x)
    langs = method.languages(x["input_ids"])
    assert {"fr", "de"} <= set(langs)
    ce = kd = 0.0
    n = int((y != -100).sum())
    for r, lang in enumerate(langs):
        keep = y[r] != -100
        nll = torch.nn.functional.cross_entropy(zs[r][keep], y[r][keep], reduction="sum")
        ce += (0.7 if lang == "fr" else 1.0) * nll.item()
        if lang == "fr":
            zt = VocabularyBridge(teachers["fr"], teachers["fr"].vocab, mv)(**{k: v[r:r + 1] for k, v in x.items()})[0]
            p = torch.softmax(zt[keep] / 2.0, -1)
            logq = torch.log_softmax(zs[r][keep] / 2.0, -1)
            kd += 4.0 * torch.where(p > 0, p * (p.log() - logq), torch.zeros_like(p)).sum().item()
    assert terms["ce"].item() == pytest.approx(ce / n, rel=1e-5)
    assert terms["kd"].item() == pytest.approx(0.3 * kd / n, rel=1e-4)
    full = SelectiveMultilingualKD(student, teachers, mv, alpha=0.3, temperature=2.0, top_k=len(mv)).train()
    full.switches = method.switches
    assert full(x, y)["kd"].item() == pytest.approx(terms["kd"].item(), rel=1e-5)
    z_s, z_t = torch.randn(3, 4, 9), torch.randn(3, 4, 9)                        # and the loss itself
    top, idx = z_t.topk(9, dim=-1)
    assert losses.topk_kd_loss(z_s, top, idx, 1.5).item() == pytest.approx(losses.kd_loss(z_s, z_t, 1.5).item(),
                                                                            rel=1e-5)


# ------------------------------------------------------------------------------------------
# domain adaptation
# ------------------------------------------------------------------------------------------
def test_domain_alternation_phases_transfer_set_and_costs(tmp_path, monkeypatch):
    monkeypatch.setenv("KDEDU_CACHE", str(tmp_path))
    vocab = translation_vocab("fr")
    teacher = tiny(len(vocab), 1)
    office, animals = translation("train", domain="office", limit=12), translation("train", limit=12)
    method = DomainAlternation(None, teacher, vocab, rounds=2, beam_size=2, max_length=6)
    assert method.student is not teacher and all(p.requires_grad for p in method.student.parameters())
    r = method.run(office, animals, batch_size=6, evaluate=lambda student: {"n": 1}, device="cpu", progress=False)
    assert [name for name, _ in r.phases] == ["in-domain 1", "general 1", "in-domain 2", "general 2"]
    assert [e["phase"] for e in r.evaluations] == [name for name, _ in r.phases]
    hyps = beam_search(teacher, source_ids(animals, vocab), beam_size=2, max_length=6)
    assert method.seqkd.transfer_set(animals).targets == [vocab.decode(h[0].tokens) for h in hyps]
    # alpha = 0: the teacher is asked only for the general transfer set (beam search), never while training
    beams_only = r.cost["teacher_calls"]
    assert beams_only > 0 and r.cost["epochs"] == 4
    kd = DomainAlternation(None, teacher, vocab, rounds=1, in_domain_alpha=0.5, beam_size=2, max_length=6)
    r2 = kd.run(office, animals, batch_size=6, device="cpu", progress=False)
    assert r2.cost["teacher_calls"] == 2                                          # cached beams; 2 in-domain batches


def test_alternation_batch_by_batch_interleaves_the_two_objectives(tmp_path, monkeypatch):
    """switch_every=k: k in-domain batches, then k general ones, in turn (the longer loader's rest at the end), each
    routed to its objective; one phase per round, every batch seen once per epoch."""
    from kdedu.methods.domain import _Alternating

    order = [b["in_domain"] for b in _Alternating([{"i": 0}] * 5, [{"i": 1}] * 2, every=2)]
    assert order == [True, True, False, False, True, True, True]
    assert len(_Alternating([0] * 5, [1] * 2, every=2)) == 7
    monkeypatch.setenv("KDEDU_CACHE", str(tmp_path))
    vocab = translation_vocab("fr")
    teacher = tiny(len(vocab), 1)
    office, animals = translation("train", domain="office", limit=12), translation("train", limit=18)
    method = DomainAlternation(None, teacher, vocab, rounds=1, epochs_per_phase=2, switch_every=1, beam_size=2,
                               max_length=6)
    calls = []
    for name, objective in (("in", method.in_domain), ("general", method.seqkd)):
        original = objective.forward
        monkeypatch.setattr(objective, "forward", lambda x, y, _f=original, _n=name: (calls.append(_n), _f(x, y))[1])
    r = method.run(office, animals, batch_size=6, device="cpu", progress=False)
    assert [name for name, _ in r.phases] == ["mixed 1"] and r.cost["epochs"] == 2
    assert calls == ["in", "general", "in", "general", "general"] * 2                # 2 office, 3 general batches
    with pytest.raises(ValueError, match="switch_every"):
        DomainAlternation(None, teacher, vocab, switch_every=0)


# ------------------------------------------------------------------------------------------
# imitation of a black box
# ------------------------------------------------------------------------------------------
class Poisoned(Seq2Seq):
    """A victim whose logits raise if anyone asks for them: only its decoding path (prefix_scorer) works."""

    def forward(self, *args, **kwargs):
        raise AssertionError("the victim's logits were read")


def test_imitation_reads_only_the_victims_text(fr):
    vocab, split = fr
    torch.manual_seed(1)
    victim_model = Poisoned(len(vocab), d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                            dim_feedforward=32, dropout=0.0)
    victim = BlackBox(victim_model, vocab, beam_size=2, max_length=6)
    assert not hasattr(victim, "model") and not isinstance(victim, torch.nn.Module)
    a = Imitation(tiny(len(vocab), 0).train(), victim, vocab)
    answers = a.transfer_set(split).targets
    assert victim.queries == len(split) and victim.words == sum(len(t.split()) for t in answers)
    h = fit(a, a.loader(split, batch_size=6), None, num_epochs=1, device="cpu", progress=False, seed=3)
    assert a.cost(h)["queries"] == 2 * len(split)

    class Table:                                                                  # the same text, no model at all
        def translate(self, sources):
            return [dict(zip(split.sources, answers, strict=True))[s] for s in sources]

    b = Imitation(tiny(len(vocab), 0).train(), Table(), vocab)
    fit(b, b.loader(split, batch_size=6), None, num_epochs=1, device="cpu", progress=False, seed=3)
    for p, q in zip(a.student.parameters(), b.student.parameters(), strict=True):
        assert torch.equal(p, q)
    assert not any(n.startswith("victim") for n, _ in a.named_parameters())
    with pytest.raises(TypeError, match="black box"):
        Imitation(tiny(len(vocab), 0), victim_model, vocab)


# ------------------------------------------------------------------------------------------
# shrink and fine-tune
# ------------------------------------------------------------------------------------------
def test_layers_to_copy_table_and_spacing():
    assert layers_to_copy(3, 12) == [0, 6, 11] and layers_to_copy(4, 6) == [0, 1, 3, 5]
    assert layers_to_copy(2, 4) == [0, 3] and layers_to_copy(3, 5) == [0, 2, 4] and layers_to_copy(1, 4) == [0]
    assert layers_to_copy(4, 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="exceed"):
        layers_to_copy(5, 4)


def test_shrink_decoder_copies_layers_and_keeping_all_reproduces_the_teacher(fr):
    vocab, split = fr
    torch.manual_seed(0)
    teacher = Seq2Seq(len(vocab), d_model=16, num_heads=2, num_encoder_layers=2, num_decoder_layers=4,
                      dim_feedforward=32, dropout=0.0).eval()
    x, _ = batch_of(split, vocab)
    same = shrink_decoder(teacher).eval()
    assert torch.allclose(same(**x), teacher(**x), atol=1e-6)
    small = shrink_decoder(teacher, num_layers=2, encoder_layers=[1])
    assert len(small.decoder.layers) == 2 and len(small.encoder.layers) == 1
    for i, k in enumerate([0, 3]):
        for a, b in zip(small.decoder.layers[i].parameters(), teacher.decoder.layers[k].parameters(), strict=True):
            assert torch.equal(a, b)
    assert small.lm_head.weight is small.embed.words.weight and torch.equal(small.embed.words.weight,
                                                                             teacher.embed.words.weight)
    torch.manual_seed(0)
    gpt = GPT(len(vocab), d_model=16, num_heads=2, num_layers=3, dim_feedforward=32, dropout=0.0).eval()
    ids = torch.randint(4, len(vocab), (2, 7))
    assert torch.allclose(shrink_decoder(gpt).eval()(ids), gpt(ids), atol=1e-6)
    assert len(shrink_decoder(gpt, layers=[0, 2]).blocks.layers) == 2
    with pytest.raises(ValueError, match="increasing"):
        shrink_decoder(teacher, layers=[2, 1])


def test_shrink_and_fine_tune_costs_nothing_from_the_teacher_without_kd(fr):
    vocab, split = fr
    teacher = tiny(len(vocab), 1, layers=2)
    loader = translation_loader(split, vocab, batch_size=6, shuffle=True, seed=None)
    sft = shrink_and_fine_tune(teacher, loader, num_layers=1, num_epochs=1, device="cpu", progress=False)
    assert sft.layers == [0] and sft.cost["teacher_calls"] == 0 and len(sft.student.decoder.layers) == 1
    kd = shrink_and_fine_tune(teacher, loader, num_layers=1, alpha=0.5, num_epochs=1, device="cpu", progress=False)
    assert kd.cost["teacher_calls"] == 2 and kd.cost["teacher_tokens"] > 0
