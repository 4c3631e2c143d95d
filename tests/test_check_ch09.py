"""The exercise checkers of chapter 09 (Distilling BERT).

For every checker: a correct answer passes, plausible wrong answers fail (with a message), and
``None`` as "not answered yet" is checked for every exercise in tests/test_check.py.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from checks import answer_tests

from kdedu import check, losses


def _verdict(exercise_id, answer):
    return check.exercise(exercise_id, answer, verbose=False)


def _cos_masked(h_s, h_t, mask):
    return (1 - F.cosine_similarity(h_s, h_t, dim=-1))[mask.bool()].mean()


def _bert_params(layers, hidden, inter, vocab, positions, token_types=2, biases=True, layernorms=True,
                 pooler=False):
    h, i = hidden, inter
    emb = (vocab + positions + token_types) * h + (2 * h if layernorms else 0)
    block = 4 * h * h + 2 * h * i + (4 * h + i + h if biases else 0) + (4 * h if layernorms else 0)
    return emb + layers * block + (h * h + h if pooler else 0)


CORRECT = {
    "09.every-other": [
        lambda n: tuple(range(0, n, 2)),
        lambda n: [k for k in range(n) if k % 2 == 0],
        lambda n: torch.arange(0, n, 2),  # a tensor is fine too
        lambda n: np.arange(0, n, 2),     # and numpy integers
    ],
    "09.cosine-loss": [
        _cos_masked,
        losses.cosine_hidden_loss,
        lambda h_s, h_t, m: ((1 - F.normalize(h_s, dim=-1).mul(F.normalize(h_t, dim=-1)).sum(-1)) * m).sum() / m.sum(),
    ],
    "09.param-count": [
        _bert_params,
        lambda L, H, I, V, P: torch.tensor(_bert_params(L, H, I, V, P)),
    ],
}

WRONG = {
    "09.every-other": [
        lambda n: tuple(range(1, n + 1, 2)),        # 1-based
        lambda n: tuple(range(1, n, 2)),            # the odd blocks: starts from the second
        lambda n: tuple(range(0, n + 1, 2)),        # one block too many (n is out of range)
        lambda n: tuple(range(n)),                  # every block
        lambda n: (0, 2, 4, 7, 9, 11),              # DistilBERT's script for 12 layers, not the 0, 2, 4, ... rule
        "not a function",
    ],
    "09.cosine-loss": [
        lambda h_s, h_t, m: (1 - F.cosine_similarity(h_s, h_t, dim=-1)).mean(),                  # padding included
        lambda h_s, h_t, m: F.cosine_similarity(h_s, h_t, dim=-1)[m.bool()].mean(),              # cos, not 1 - cos
        lambda h_s, h_t, m: (1 - F.cosine_similarity(h_s, h_t, dim=-1))[m.bool()].sum(),         # a sum
        lambda h_s, h_t, m: torch.stack([(1 - F.cosine_similarity(h_s[b], h_t[b], dim=-1))[m[b].bool()].mean()
                                         for b in range(len(m))]).mean(),                       # per sentence first
        lambda h_s, h_t, m: torch.tensor(_cos_masked(h_s, h_t, m).item()),                      # detached
        lambda h_s, h_t, m: F.mse_loss(h_s[m.bool()], h_t[m.bool()]),                             # not a cosine
    ],
    "09.param-count": [
        lambda L, H, I, V, P: _bert_params(L, H, I, V, P, pooler=True),
        lambda L, H, I, V, P: _bert_params(L, H, I, V, P, token_types=0),
        lambda L, H, I, V, P: _bert_params(L, H, I, V, P, biases=False),
        lambda L, H, I, V, P: _bert_params(L, H, I, V, P, layernorms=False),
        lambda L, H, I, V, P: _bert_params(L, H, I, V, 0),                    # no position embeddings
        lambda L, H, I, V, P: _bert_params(L + 1, H, I, V, P),                 # one block too many
        lambda L, H, I, V, P: 12 * L * H * H,                                  # the rule of thumb
        lambda L, H, I, V, P: "many",
    ],
}

test_correct_answers_pass, test_wrong_answers_fail = answer_tests(CORRECT, WRONG)


def test_targeted_messages():
    every, cos, params = WRONG["09.every-other"], WRONG["09.cosine-loss"], WRONG["09.param-count"]
    assert "numbered from 1" in _verdict("09.every-other", every[0]).message
    assert "second block" in _verdict("09.every-other", every[1]).message
    assert "outside" in _verdict("09.every-other", every[2]).message
    assert "padding included" in _verdict("09.cosine-loss", cos[0]).message
    assert "1 - cos" in _verdict("09.cosine-loss", cos[1]).message
    assert "sum" in _verdict("09.cosine-loss", cos[2]).message
    assert "each sentence first" in _verdict("09.cosine-loss", cos[3]).message
    assert "gradient" in _verdict("09.cosine-loss", cos[4]).message
    assert "pooler" in _verdict("09.param-count", params[0]).message
    assert "token-type" in _verdict("09.param-count", params[1]).message
    assert "biases" in _verdict("09.param-count", params[2]).message
    assert "LayerNorm" in _verdict("09.param-count", params[3]).message
    assert "position" in _verdict("09.param-count", params[4]).message
    assert "number of blocks" in _verdict("09.param-count", params[5]).message


def test_param_count_success_message_reproduces_the_decks_sizes():
    message = _verdict("09.param-count", _bert_params).message
    assert "108.9 M" in message and "109.5 M" in message and "66.4 M" in message
