"""The NAT's length prediction, parallel decoding and loss, each checked against a computation done another way.

(tests/test_seq_models.py checks the shapes, the missing causal mask and training through fit.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdedu.data import translation, translation_loader, translation_vocab
from kdedu.methods import NATLoss
from kdedu.models import NAT


def _setup(seed=0, rows=6):
    split, vocab = translation("val", limit=rows), translation_vocab("fr")
    batch = next(iter(translation_loader(split, vocab, batch_size=rows)))
    torch.manual_seed(seed)
    return NAT(len(vocab), 32, 2, 1, 1, 64, dropout=0.0, max_length=16), batch


def test_generate_is_the_argmax_length_then_the_argmax_of_each_position_given_it():
    """generate == argmax over lengths 1..max of the length head, then one teacher-forced forward pass told those
    lengths, argmax per position; each row decoded alone gives the same tokens (rows do not interact)."""
    nat, batch = _setup()
    nat.eval()
    src, mask = batch["input_ids"], batch["attention_mask"]
    tokens, lengths = nat.generate(src, mask)
    with torch.no_grad():
        out = nat(src, mask, decoder_attention_mask=torch.ones(len(src), 16, dtype=torch.long))
        expected_lengths = torch.tensor([1 + max(range(16), key=lambda L: out.length_logits[r, 1 + L].item())
                                         for r in range(len(src))])
        assert torch.equal(lengths, expected_lengths)
        width = torch.arange(int(lengths.max()))
        told = nat(src, mask, decoder_attention_mask=(width[None, :] < lengths[:, None]).long())
    expected = torch.where(width[None, :] < lengths[:, None], told.logits.argmax(-1), torch.zeros_like(tokens))
    assert torch.equal(tokens, expected)
    for r in range(len(src)):
        keep = mask[r].bool()
        alone, alone_len = nat.generate(src[r:r + 1, keep], mask[r:r + 1, keep])
        assert alone_len.item() == lengths[r].item()
        assert torch.equal(alone[0], tokens[r, :lengths[r]])


def test_nat_loss_is_token_cross_entropy_plus_weighted_length_cross_entropy():
    """NATLoss recomputed row by row with explicit log-softmaxes: mean NLL over the labelled target tokens, plus
    length_weight times the mean NLL of each row's true length (its number of labels: the words + EOS)."""
    nat, batch = _setup(rows=5)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    labels = batch["labels"]
    terms = NATLoss(nat, length_weight=0.3)(inputs, labels)
    out = nat(**inputs)
    token_nll, count, length_nll = 0.0, 0, 0.0
    for r in range(len(labels)):
        words = [t for t in labels[r].tolist() if t != -100]
        logp = F.log_softmax(out.logits[r].double(), -1)
        token_nll += -sum(logp[t, w].item() for t, w in enumerate(words))
        count += len(words)
        length_nll += -F.log_softmax(out.length_logits[r].double(), -1)[len(words)].item()
    assert abs(terms["ce"].item() - token_nll / count) < 1e-5
    assert abs(terms["length"].item() - 0.3 * length_nll / len(labels)) < 1e-5
    assert set(terms) == {"ce", "length"}
