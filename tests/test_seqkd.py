"""Sequence-level distillation: word-level KD against a hand-written per-token loss, Seq-KD and Seq-Inter
transfer sets against beam search and sacrebleu called directly, the teacher-beam cache, the exact sequence
KL against a closed form and brute-force enumeration, and the seq2seq teacher of the zoo."""

from __future__ import annotations

import itertools
import math
import time

import pytest
import torch

import kdedu.models.decoding as decoding
from kdedu import zoo
from kdedu.data import translation, translation_loader, translation_vocab
from kdedu.methods import SeqInter, SeqKD, WordKD, seq_kd_dataset, sequence_kl, teacher_beams
from kdedu.models import Seq2Seq, beam_search
from kdedu.train import fit

PAD, BOS, EOS = 0, 1, 2


def tiny(vocab_size: int, seed: int) -> Seq2Seq:
    torch.manual_seed(seed)
    return Seq2Seq(vocab_size, d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                   dim_feedforward=32, dropout=0.0).eval()


@pytest.fixture(scope="module")
def data():
    vocab = translation_vocab("fr")
    return vocab, translation("val", limit=24)


def test_word_kd_is_the_masked_per_token_loss(data):
    vocab, split = data
    student, teacher = tiny(len(vocab), 0), tiny(len(vocab), 1)
    batch = next(iter(translation_loader(split, vocab, batch_size=8)))
    x = {k: v for k, v in batch.items() if k != "labels"}
    y = batch["labels"]
    alpha, temp = 0.3, 2.0
    terms = WordKD(student, teacher, alpha=alpha, temperature=temp)(x, y)
    zs, zt = student(**x).double(), teacher(**x).double()
    ce = kl = 0.0
    n = 0
    for b, t in itertools.product(range(y.shape[0]), range(y.shape[1])):
        if y[b, t] == -100:
            continue
        n += 1
        ce -= torch.log_softmax(zs[b, t], -1)[y[b, t]].item()
        p, logq = torch.softmax(zt[b, t] / temp, -1), torch.log_softmax(zs[b, t] / temp, -1)
        kl += (p * (p.log() - logq)).sum().item()
    assert terms["ce"].item() == pytest.approx((1 - alpha) * ce / n, rel=1e-5)
    assert terms["kd"].item() == pytest.approx(alpha * temp ** 2 * kl / n, rel=1e-4)  # float32 KL
    # more padding columns change nothing
    wide = {k: torch.cat([v, torch.zeros(v.shape[0], 2, dtype=v.dtype)], 1) if k.startswith("decoder") else v
            for k, v in x.items()}
    y_wide = torch.cat([y, torch.full((y.shape[0], 2), -100)], 1)
    again = WordKD(student, teacher, alpha=alpha, temperature=temp)(wide, y_wide)
    assert again["kd"].item() == pytest.approx(terms["kd"].item(), rel=1e-5)
    assert set(WordKD(student, None, alpha=0.0)(x, y)) == {"ce"}
    with pytest.raises(TypeError, match="teacher"):
        WordKD(student, None, alpha=0.5)


def test_seq_kd_and_seq_inter_transfer_sets(data, tmp_path, monkeypatch):
    from sacrebleu import sentence_bleu

    monkeypatch.setenv("KDEDU_CACHE", str(tmp_path))
    vocab, split = data
    teacher = tiny(len(vocab), 1)
    seqkd = SeqKD(tiny(len(vocab), 0), teacher, vocab, beam_size=4, max_length=8)
    kd_set = seqkd.transfer_set(split)
    src = [vocab.encode(s) + [EOS] for s in split.sources]
    width = max(map(len, src))
    ids = torch.tensor([s + [PAD] * (width - len(s)) for s in src])
    best = beam_search(teacher, ids, beam_size=4, max_length=8, n_best=4)
    assert kd_set.targets == [vocab.decode(h[0].tokens) for h in best] and kd_set.sources == split.sources
    inter = SeqInter(tiny(len(vocab), 0), teacher, vocab, beam_size=4, max_length=8).transfer_set(split)
    for i, hyps in enumerate(best):
        texts = [vocab.decode(h.tokens) for h in hyps]
        scores = [sentence_bleu(t, [split.targets[i]]).score for t in texts]
        assert sentence_bleu(inter.targets[i], [split.targets[i]]).score == pytest.approx(max(scores))
        assert inter.targets[i] == texts[scores.index(max(scores))]            # ties: the teacher's better one
    # the beams are cached: a second transfer set never runs beam search
    monkeypatch.setattr(decoding, "beam_search", lambda *a, **k: pytest.fail("beam search ran again"))
    assert seqkd.transfer_set(split).targets == kd_set.targets
    assert seq_kd_dataset(teacher, split, vocab, 4, max_length=8, inter=True).targets == inter.targets
    assert len(list((tmp_path / "seqkd").glob("beams-*.json"))) == 1


def test_teacher_beams_cache_key_changes_with_teacher_data_and_config(data, tmp_path):
    vocab, split = data
    teacher = tiny(len(vocab), 1)
    a = teacher_beams(teacher, split.sources[:4], vocab, beam_size=2, max_length=6, root=tmp_path)
    teacher_beams(teacher, split.sources[:4], vocab, beam_size=3, max_length=6, root=tmp_path)
    teacher_beams(teacher, split.sources[:5], vocab, beam_size=2, max_length=6, root=tmp_path)
    teacher_beams(tiny(len(vocab), 2), split.sources[:4], vocab, beam_size=2, max_length=6, root=tmp_path)
    assert len(list(tmp_path.glob("beams-*.json"))) == 4
    assert teacher_beams(teacher, split.sources[:4], vocab, beam_size=2, max_length=6, root=tmp_path) == a
    assert all(len(c) == 2 and c[0][1] >= c[1][1] for c in a)


def test_seq_kd_plus_word_kd_trains_through_fit(data, tmp_path, monkeypatch):
    monkeypatch.setenv("KDEDU_CACHE", str(tmp_path))
    vocab, split = data
    method = SeqKD(tiny(len(vocab), 0), tiny(len(vocab), 1), vocab, alpha=0.5, beam_size=2, max_length=8)
    h = fit(method, method.loader(split, batch_size=8), None, num_epochs=1, device="cpu", progress=False)
    assert {"ce", "kd"} <= set(h.last)


# ------------------------------------------------------------------------------------------
# the exact sequence KL
# ------------------------------------------------------------------------------------------
def iid_step(probs):
    """A model whose next-token distribution ignores the prefix: ``probs`` over (PAD, BOS, EOS, a, b)."""
    logp = torch.log(torch.tensor(probs, dtype=torch.float64))
    return lambda prefixes, rows: logp.expand(len(prefixes), -1).clone()


def table_step(seed):
    g = torch.Generator().manual_seed(seed)
    table = {}

    def step(prefixes, rows):
        out = []
        for p in prefixes.tolist():
            if tuple(p) not in table:
                table[tuple(p)] = torch.randn(5, generator=g, dtype=torch.float64)
            out.append(table[tuple(p)])
        return torch.log_softmax(torch.stack(out), -1)

    return step


def test_sequence_kl_matches_the_closed_form_for_prefix_free_models():
    """With the same next-token distributions p, q at every step and outputs cut at L tokens, the sequence KL
    is KL(p || q) * sum_{t < L} P(still running at t) = KL(p || q) * sum_t (1 - p_eos)^t."""
    p, q = [0.0, 0.0, 0.3, 0.5, 0.2], [0.0, 0.0, 0.5, 0.25, 0.25]
    L = 5
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)
    expected = kl * sum((1 - p[EOS]) ** t for t in range(L))
    got = sequence_kl(iid_step(p), iid_step(q), tokens=[EOS, 3, 4], max_length=L)
    assert got["sequence_kl"] == pytest.approx(expected, rel=1e-9)
    assert got["num_sequences"] == sum(2 ** n for n in range(L)) + 2 ** L


def test_sequence_kl_matches_brute_force_and_the_chain_rule_but_not_the_reference_tokens():
    teacher, student, L, words = table_step(0), table_step(1), 4, [EOS, 3, 4]

    def seq_logp(step, seq):
        total, prefix = 0.0, [BOS]
        for tok in seq:
            lp = step(torch.tensor([prefix]), torch.zeros(1, dtype=torch.long))[0][words]
            total += float(lp[words.index(tok)] - torch.logsumexp(lp, 0))
            prefix.append(tok)
        return total

    brute = 0.0
    for n in range(1, L + 1):
        for seq in itertools.product(words, repeat=n):
            if EOS in seq[:-1] or (seq[-1] != EOS and n < L):
                continue
            lt, ls = seq_logp(teacher, seq), seq_logp(student, seq)
            brute += math.exp(lt) * (lt - ls)
    got = sequence_kl(teacher, student, tokens=words, max_length=L, reference=[3, 4, 3])
    assert got["sequence_kl"] == pytest.approx(brute, rel=1e-9)
    assert got["token_kl_teacher_prefixes"] == pytest.approx(got["sequence_kl"], rel=1e-9)  # chain rule
    assert abs(got["token_kl_reference"] - got["sequence_kl"]) > 1e-3                       # does not factor
    same = sequence_kl(teacher, teacher, tokens=words, max_length=L, reference=[3])
    assert same["sequence_kl"] == pytest.approx(0.0, abs=1e-12) and same["token_kl_reference"] == pytest.approx(0.0)


def test_sequence_kl_on_tiny_seq2seq_models():
    t, s = tiny(6, 0), tiny(6, 1)
    src = torch.tensor([[3, 4, EOS]])
    got = sequence_kl(t, s, src, max_length=3)
    assert got["sequence_kl"] > 0 and got["token_kl_teacher_prefixes"] == pytest.approx(got["sequence_kl"])
    assert got["num_sequences"] == sum(3 ** n for n in range(3)) + 3 ** 3


# ------------------------------------------------------------------------------------------
# the zoo's translation teacher
# ------------------------------------------------------------------------------------------
def test_seq2seq_teacher_trains_once_then_loads(tmp_path):
    model = zoo.seq2seq_teacher("tiny", root=tmp_path, verbose=False)
    assert set(model.meta["metrics"]) >= {"test_bleu_greedy", "test_bleu_beam", "test_valid_beam"}
    assert not any(p.requires_grad for p in model.parameters()) and len(model.vocab) == model.vocab_size
    t0 = time.perf_counter()
    again = zoo.seq2seq_teacher("tiny", root=tmp_path, verbose=False)
    assert time.perf_counter() - t0 < 3.0
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(),
                                                  strict=True))
    with pytest.raises(ValueError, match="unknown recipe"):
        zoo.seq2seq_teacher("tiny", root=tmp_path, width=3)


def test_encoder_decoder_rows_ignore_the_source_attention_mask():
    # Source and target padded to the same length: the source's padding must not drop target tokens.
    from kdedu.methods.kd import token_rows
    logits = torch.randn(2, 4, 5)
    labels = torch.tensor([[1, 2, 3, 4], [1, 2, -100, -100]])
    source_mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    inputs = {"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": source_mask,
              "decoder_input_ids": torch.ones(2, 4, dtype=torch.long)}
    _, _, keep = token_rows(logits, labels, inputs)
    assert keep.tolist() == [[True] * 4, [True, True, False, False]]
    inputs["decoder_attention_mask"] = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    _, _, keep = token_rows(logits, labels, inputs)
    assert keep.tolist() == [[True, True, True, False], [True, True, False, False]]
    # a decoder-only batch still uses its attention mask
    _, _, keep = token_rows(logits, labels, {"input_ids": inputs["input_ids"], "attention_mask": source_mask})
    assert keep.tolist() == [[True, True, False, False], [True, True, False, False]]
