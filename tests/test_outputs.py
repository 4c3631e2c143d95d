"""kdedu.outputs (the one model adapter) and the methods on Hugging Face models: tiny random configs, no downloads."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from kdedu import losses
from kdedu.methods import ALPKD, CKD, KD, PKD, DistilBERTKD, Supervised, TinyBERTKD, precompute_teacher, teacher_outputs
from kdedu.models import MLP, SequenceClassifier, small_bert
from kdedu.outputs import Outputs, attention_mask_of, hidden_size, model_outputs, num_layers, run, split_batch
from kdedu.train import evaluate, fit

transformers = pytest.importorskip("transformers")
VOCAB, PAD = 40, 0


def hf_classifier(layers=2, hidden=16, seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=16,
                                     num_labels=2, pad_token_id=PAD, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0, attn_implementation="eager")
    return transformers.BertForSequenceClassification(config)


def data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (n, 8), generator=g)
    ids[::3, 5:] = PAD                                          # padded rows
    ids[:, 0] = 2                                               # a [CLS]-like first token
    mask = (ids != PAD).long()
    y = (ids[:, 1] % 2).long()                                  # learnable: the parity of the second token
    return ids, mask, y


class Dicts(Dataset):
    """A Hugging Face-style dataset: one dict per example."""

    def __init__(self, ids, mask, y):
        self.ids, self.mask, self.y = ids, mask, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.y[i]}


def dict_loader(batch_size=8, shuffle=False):
    return DataLoader(Dicts(*data()), batch_size=batch_size, shuffle=shuffle)


# ---- the adapter ----------------------------------------------------------------------------------
def test_model_outputs_reads_every_kind():
    z = torch.randn(3, 4)
    assert model_outputs(z).logits is z and model_outputs(z).hidden_states is None
    m = hf_classifier()
    ids, mask, _ = data()
    out = m(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    o = model_outputs(out)
    assert o.logits is out.logits and len(o.hidden_states) == 3
    bare = m.bert(input_ids=ids, attention_mask=mask)                  # a BertModel: no logits
    o = model_outputs(bare)
    assert o.logits is None and o.hidden_states[0] is bare.last_hidden_state
    with pytest.raises(ValueError, match="no logits"):
        o.require_logits("the teacher")
    assert model_outputs({"logits": z}).logits is z
    with pytest.raises(TypeError, match="cannot read"):
        model_outputs(3.0)


def test_run_passes_flags_only_when_asked_and_masks_padding():
    mlp = MLP(4, (8,), 3)
    x = torch.randn(5, 4)
    torch.testing.assert_close(run(mlp, x).logits, mlp(x))           # a plain module gets one tensor, no flags
    with pytest.raises(TypeError):
        run(mlp, x, hidden_states=True)                                # it takes no output_hidden_states
    m = hf_classifier().eval()
    ids, mask, _ = data()
    # a bare input_ids tensor gets the mask its pad id implies (Hugging Face alone would attend to padding)
    torch.testing.assert_close(run(m, ids).logits, m(input_ids=ids, attention_mask=mask).logits)
    assert not torch.allclose(m(input_ids=ids).logits[::3], m(input_ids=ids, attention_mask=mask).logits[::3])
    o = run(m, {"input_ids": ids, "attention_mask": mask}, hidden_states=True, attentions=True)
    assert len(o.hidden_states) == 3 and o.attentions[0].shape == (24, 2, 8, 8)
    torch.testing.assert_close(attention_mask_of(ids, m), mask)
    assert num_layers(m) == 2 and hidden_size(m) == 16
    sc = SequenceClassifier(small_bert(3, 16, 2, vocab_size=VOCAB, max_position_embeddings=16), 2)
    assert num_layers(sc) == 3 and hidden_size(sc) == 16
    with pytest.raises(TypeError, match="transformer with a configuration"):
        num_layers(mlp, "teacher")


def test_split_batch():
    x, y = torch.zeros(2, 3), torch.zeros(2)
    assert split_batch((x, y)) == (x, y)
    inputs, labels = split_batch({"input_ids": x, "labels": y})
    assert labels is y and set(inputs) == {"input_ids"}
    with pytest.raises(TypeError, match="batch must be"):
        split_batch((x, y, y))


# ---- methods on Hugging Face models -----------------------------------------------------------------
def test_kd_on_hf_classifier_equals_distillation_loss():
    teacher, student = hf_classifier(4, 32, seed=1).eval(), hf_classifier(seed=2).eval()
    ids, mask, y = data()
    inputs = {"input_ids": ids, "attention_mask": mask}
    terms = KD(student, teacher, alpha=0.3, temperature=2.0)(inputs, y)
    z_s = student(**inputs).logits
    z_t = teacher(**inputs).logits
    torch.testing.assert_close(sum(terms.values()), losses.distillation_loss(z_s, z_t, y, 0.3, 2.0))
    torch.testing.assert_close(terms["ce"], 0.7 * F.cross_entropy(z_s, y))


def test_kd_and_pkd_train_hf_classifier_through_fit():
    teacher = hf_classifier(4, 16, seed=1)
    fit(Supervised(teacher), dict_loader(shuffle=True), num_epochs=15, lr=3e-3, device="cpu", progress=False)
    teacher_acc = evaluate(teacher, dict_loader(), "cpu")["acc"]
    assert teacher_acc > 0.9                                           # it learned the parity rule
    for make in (lambda s: KD(s, teacher, alpha=0.5, temperature=2.0),
                 lambda s: PKD(s, teacher, alpha=0.5, temperature=2.0, hidden_weight=10.0)):
        student = hf_classifier(2, 16, seed=3)
        method = make(student)
        if isinstance(method, PKD):
            assert method.layer_map == {1: 2}                          # PKD-Skip read from the HF configs
        before = evaluate(student, dict_loader(), "cpu")["loss"]
        history = fit(method, dict_loader(shuffle=True), dict_loader(), num_epochs=15, lr=3e-3, device="cpu",
                      progress=False)
        assert history.last["val_loss"] < before and history.last["val_acc"] > 0.8
        assert {"ce", "kd"} <= set(history.keys())


@pytest.mark.parametrize("name", ["distilbert", "pkd", "tinybert", "ckd", "alp"])
def test_layer_methods_live_equals_precomputed_on_hf_models(name):
    teacher, student = hf_classifier(4, 16, seed=1).eval(), hf_classifier(2, 16, seed=2).eval()
    make = {"distilbert": lambda: DistilBERTKD(student, teacher),
            "pkd": lambda: PKD(student, teacher),
            "tinybert": lambda: TinyBERTKD(student, teacher, attention_weight=2.0, alpha=0.5),
            "ckd": lambda: CKD(student, teacher, combine="concat"),
            "alp": lambda: ALPKD(student, teacher)}
    method = make[name]().eval()
    ids, mask, y = data()
    live = method({"input_ids": ids, "attention_mask": mask}, y)
    pre = method(teacher_outputs(teacher, ids, mask, **method.teacher_needs), y)
    assert set(live) == set(pre) and {"kd"} <= set(live)
    for k in live:
        torch.testing.assert_close(live[k], pre[k])
        assert torch.isfinite(live[k])
    sum(live.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_precompute_teacher_reads_dict_batches():
    teacher = hf_classifier(4, 16, seed=1).eval()
    stored = precompute_teacher(teacher, dict_loader(), hidden_layers=(1, -1), shuffle=False)
    b, y = next(iter(stored))
    ids, mask, labels = data()
    out = teacher(input_ids=ids[:8], attention_mask=mask[:8], output_hidden_states=True)
    torch.testing.assert_close(b.logits, out.logits)
    torch.testing.assert_close(b.cls_at(-1), out.hidden_states[-1][:, 0])
    torch.testing.assert_close(y, labels[:8])


def test_layer_losses_read_a_bare_bert_model():
    """A BertModel (no head) has hidden states for the layer losses but no logits for KD."""
    teacher, student = hf_classifier(4, 16, seed=1).bert.eval(), hf_classifier(2, 16, seed=2).bert.eval()
    ids, mask, _ = data()
    t = run(teacher, {"input_ids": ids, "attention_mask": mask}, hidden_states=True)
    s = run(student, {"input_ids": ids, "attention_mask": mask}, hidden_states=True)
    assert isinstance(s, Outputs) and s.logits is None
    value = losses.pkd_loss([h[:, 0] for h in s.hidden_states], [h[:, 0] for h in t.hidden_states], {1: 2, 2: 4})
    manual = sum((F.normalize(s.hidden_states[j][:, 0], dim=-1) - F.normalize(t.hidden_states[k][:, 0], dim=-1))
                 .pow(2).sum(-1).mean() for j, k in {1: 2, 2: 4}.items())
    torch.testing.assert_close(value, manual)
    with pytest.raises(ValueError, match="no logits"):
        PKD(student, teacher)({"input_ids": ids, "attention_mask": mask}, torch.zeros(24, dtype=torch.long))


def tiny_gpt2(seed=0, layers=2):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=layers, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.mark.parametrize("alpha", [1.0, 0.4])
def test_kd_on_causal_lm_equals_shifted_masked_loss_by_hand(alpha):
    teacher, student = tiny_gpt2(1, 3), tiny_gpt2(2)
    ids, mask, _ = data()
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100                                               # a two-token "prompt" is not scored
    inputs = {"input_ids": ids, "attention_mask": mask}
    terms = KD(student, teacher, alpha=alpha, temperature=2.0, causal_lm=True)(inputs, labels)
    z_s, z_t = student(**inputs).logits, teacher(**inputs).logits    # (B, L, V)
    # by hand: position i predicts token i + 1; rows = (example, position) pairs whose next label counts
    rows = [(b, i) for b in range(ids.shape[0]) for i in range(ids.shape[1] - 1) if labels[b, i + 1] != -100]
    kd = torch.stack([4.0 * (F.softmax(z_t[b, i] / 2, -1) * (F.log_softmax(z_t[b, i] / 2, -1)
                                                             - F.log_softmax(z_s[b, i] / 2, -1))).sum()
                      for b, i in rows]).mean()
    ce = torch.stack([F.cross_entropy(z_s[b, i], labels[b, i + 1]) for b, i in rows]).mean()
    torch.testing.assert_close(terms["kd"], alpha * kd)
    torch.testing.assert_close(terms["ce"], (1 - alpha) * ce)
    keep = labels[:, 1:] != -100
    torch.testing.assert_close(terms["kd"], alpha * losses.kd_loss(z_s[:, :-1], z_t[:, :-1], 2.0, mask=keep))
    # without labels (alpha = 1), the attention mask picks the rows: padding positions never count
    only = KD(student, teacher, alpha=1.0, temperature=2.0, causal_lm=True)(inputs, None)
    assert set(only) == {"kd"}
    torch.testing.assert_close(only["kd"], losses.kd_loss(z_s[:, :-1], z_t[:, :-1], 2.0, mask=mask[:, 1:].bool()))
    with pytest.raises(ValueError, match="needs labels"):
        KD(student, teacher, alpha=0.5, causal_lm=True)(inputs, None)
