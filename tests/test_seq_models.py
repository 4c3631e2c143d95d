"""The sequence models: encoder–decoder, GPT and NAT shapes, causality, padding, and training through fit."""

from __future__ import annotations

import pytest
import torch

from kdedu.data import translation, translation_loader, translation_vocab
from kdedu.methods import KD, NATLoss, Supervised, WordKD
from kdedu.models import GPT, NAT, Seq2Seq, count_parameters, translate
from kdedu.models.nat import uniform_copy_index
from kdedu.train import fit

PAD, BOS, EOS = 0, 1, 2


def small(cls, vocab=20, **kw):
    torch.manual_seed(0)
    if cls is GPT:
        return GPT(vocab, d_model=16, num_heads=2, num_layers=2, dim_feedforward=32, dropout=0.0, **kw).eval()
    return cls(vocab, d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=32,
               dropout=0.0, **kw).eval()


def test_seq2seq_shapes_causality_and_source_padding():
    m = small(Seq2Seq)
    src = torch.tensor([[5, 6, 7, EOS], [8, 9, EOS, PAD]])
    dec = torch.tensor([[BOS, 10, 11, 12], [BOS, 13, 14, PAD]])
    z = m(src, (src != PAD).long(), dec)
    assert z.shape == (2, 4, 20)
    # causal: changing token 2 onwards leaves the logits of positions 0, 1 unchanged, and changes position 2
    dec2 = dec.clone()
    dec2[:, 2:] = 15
    z2 = m(src, None, dec2)
    assert torch.allclose(z[:, :2], z2[:, :2], atol=1e-5) and not torch.allclose(z[:, 2:], z2[:, 2:])
    # padding the source more changes nothing
    wide = torch.cat([src, torch.zeros(2, 3, dtype=torch.long)], 1)
    assert torch.allclose(m(wide, None, dec), z, atol=1e-5)
    # the step function of decoding equals the teacher-forced logits
    step = m.prefix_scorer(src)
    for t in range(1, 4):
        lp = step(dec[:, :t], torch.tensor([0, 1]))
        assert torch.allclose(lp, torch.log_softmax(z[:, t - 1], -1), atol=1e-5)
    with pytest.raises(ValueError, match="decoder_input_ids"):
        m(src)
    with pytest.raises(TypeError, match="input_ids"):
        m(src.float(), None, dec)


def test_default_teacher_size():
    vocab = translation_vocab("fr")
    assert 0.5e6 < count_parameters(Seq2Seq(len(vocab))) < 1.2e6


def test_gpt_is_causal_and_trains_with_kd_causal_lm():
    g = small(GPT)
    x = torch.tensor([[5, 6, BOS, 7, 8, EOS]])
    z = g(x)
    assert z.shape == (1, 6, 20)
    y = x.clone()
    y[0, 3:] = 9
    assert torch.allclose(g(y)[:, :3], z[:, :3], atol=1e-5)
    split, vocab = translation("val", limit=32), translation_vocab("fr")
    loader = translation_loader(split, vocab, batch_size=16, causal_lm=True)
    teacher, student = GPT(len(vocab), 16, 2, 1, 32), GPT(len(vocab), 16, 2, 1, 32)
    h = fit(KD(student, teacher, alpha=0.5, temperature=2.0, causal_lm=True), loader, loader, num_epochs=1,
            device="cpu", progress=False)
    assert {"ce", "kd", "val_acc"} <= set(h.last)
    fit(Supervised(student, causal_lm=True), loader, None, num_epochs=1, device="cpu", progress=False)
    assert len(translate(student, split.sources[:3], vocab, strategy="greedy", max_length=5)) == 3


def test_uniform_copy_maps_target_positions_to_source_positions():
    idx = uniform_copy_index(torch.tensor([4, 2]), torch.tensor([8, 3]), 8)
    assert idx[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert idx[1, :3].tolist() == [0, 0, 1] and (idx[1, 3:] == 0).all()


def test_nat_length_prediction_and_parallel_decoding_shapes():
    m = small(NAT, max_length=12)
    src = torch.tensor([[5, 6, 7, EOS], [8, 9, EOS, PAD], [10, EOS, PAD, PAD]])
    dec_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    out = m(src, (src != PAD).long(), decoder_attention_mask=dec_mask)
    assert out.logits.shape == (3, 5, 20) and out.length_logits.shape == (3, 13)
    # no causal mask: changing the source changes every position, and each position sees the others (so the
    # output at position 0 depends on the length through the decoder's self-attention)
    other = m(src, None, decoder_attention_mask=torch.ones(3, 5, dtype=torch.long))
    assert not torch.allclose(other.logits[1, 0], out.logits[1, 0])
    tokens, lengths = m.generate(src)
    assert lengths.shape == (3,) and (lengths >= 1).all() and tokens.shape == (3, int(lengths.max()))
    for r in range(3):
        assert (tokens[r, int(lengths[r]):] == PAD).all()
    with pytest.raises(ValueError, match="decoder_attention_mask"):
        m(src)


def test_nat_and_seq2seq_train_with_fit_on_translation_batches():
    split, vocab = translation("val", limit=64), translation_vocab("fr")
    loader = translation_loader(split, vocab, batch_size=32, shuffle=True)
    nat = NAT(len(vocab), 32, 2, 1, 1, 64)
    h = fit(NATLoss(nat, length_weight=0.5), loader, loader, num_epochs=2, lr=3e-3, device="cpu", progress=False)
    assert {"ce", "length", "val_acc"} <= set(h.last) and h.epochs[-1]["loss"] < h.epochs[0]["loss"]
    assert all(isinstance(s, str) for s in translate(nat, split.sources[:4], vocab))
    s2s = Seq2Seq(len(vocab), 32, 2, 1, 1, 64)
    h = fit(WordKD(s2s, None, alpha=0.0), loader, loader, num_epochs=2, lr=3e-3, device="cpu", progress=False)
    assert h.epochs[-1]["ce"] < h.epochs[0]["ce"]


def test_gpt_distils_in_the_hugging_face_trainer(tmp_path):
    pytest.importorskip("transformers")
    from transformers import TrainingArguments

    from kdedu import losses
    from kdedu.hf import DistillationTrainer

    split, vocab = translation("val", limit=8), translation_vocab("fr")
    batch = next(iter(translation_loader(split, vocab, 8, causal_lm=True)))
    rows = [{k: v[i] for k, v in batch.items()} for i in range(8)]
    student, teacher = small(GPT, len(vocab)), small(GPT, len(vocab))
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, save_strategy="no",
                             disable_tqdm=True, per_device_train_batch_size=8, max_steps=1, dataloader_num_workers=0)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=rows, alpha=0.5,
                                  temperature=2.0, causal_lm=True)
    with torch.no_grad():
        loss = trainer.compute_loss(student, batch)
        x = {k: v for k, v in batch.items() if k != "labels"}
        s, t, y = student(**x)[:, :-1], teacher(**x)[:, :-1], batch["labels"][:, 1:]
    torch.testing.assert_close(loss, losses.distillation_loss(s, t, y, alpha=0.5, temperature=2.0))
    trainer.train()
