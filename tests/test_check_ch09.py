"""The exercise checkers of chapter 09 (Distilling BERT).

For every checker: a correct answer passes, plausible wrong answers fail (with a message), and
``None`` as "not answered yet" is checked for every exercise in tests/test_check.py.
"""

from __future__ import annotations

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


def _spread(n, m):
    return tuple(int(i * (n - 1) / (m - 1) + 0.5) for i in range(m))


def _cos_layers(hs_s, hs_t, mask, layer_map):
    return torch.stack([_cos_masked(hs_s[j], hs_t[k], mask) for j, k in layer_map.items()]).mean()


CORRECT = {
    "09.spread-layers": [
        _spread,
        lambda n, m: torch.tensor(_spread(n, m)),  # a tensor is fine too
    ],
    "09.cosine-layers": [
        _cos_layers,
        lambda hs_s, hs_t, m, lm: sum(losses.cosine_hidden_loss(hs_s[j], hs_t[k], m) for j, k in lm.items()) / len(lm),
    ],
    "09.param-count": [
        _bert_params,
        lambda L, H, I, V, P: torch.tensor(_bert_params(L, H, I, V, P)),
    ],
}

WRONG = {
    "09.spread-layers": [
        lambda n, m: tuple(k + 1 for k in _spread(n, m)),  # 1-based
        lambda n, m: tuple(range(0, n, 2))[:m],             # every other block from the bottom
        lambda n, m: tuple(i * (n - 1) // (m - 1) for i in range(m)),  # rounded down
        lambda n, m: tuple(range(m)),                       # the bottom blocks
        "not a function",
    ],
    "09.cosine-layers": [
        lambda hs_s, hs_t, m, lm: torch.stack([(1 - F.cosine_similarity(hs_s[j], hs_t[k], dim=-1)).mean()
                                               for j, k in lm.items()]).mean(),                  # padding included
        lambda hs_s, hs_t, m, lm: torch.stack([_cos_masked(hs_s[j], hs_t[k], m) for j, k in lm.items()]).sum(),
        lambda hs_s, hs_t, m, lm: torch.stack([_cos_masked(hs_s[j - 1], hs_t[k], m) for j, k in lm.items()]).mean(),
        lambda hs_s, hs_t, m, lm: torch.stack([_cos_masked(hs_s[j], hs_t[k - 1], m) for j, k in lm.items()]).mean(),
        lambda hs_s, hs_t, m, lm: torch.tensor(_cos_layers(hs_s, hs_t, m, lm).item()),          # detached
        lambda hs_s, hs_t, m, lm: torch.stack([F.mse_loss(hs_s[j], hs_t[k]) for j, k in lm.items()]).mean(),
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
    spread, cos, params = WRONG["09.spread-layers"], WRONG["09.cosine-layers"], WRONG["09.param-count"]
    assert "numbered from 1" in _verdict("09.spread-layers", spread[0]).message
    assert "never reaches" in _verdict("09.spread-layers", spread[1]).message
    assert "padding positions" in _verdict("09.cosine-layers", cos[0]).message
    assert "sum over the pairs" in _verdict("09.cosine-layers", cos[1]).message
    assert "student's index" in _verdict("09.cosine-layers", cos[2]).message
    assert "teacher's index" in _verdict("09.cosine-layers", cos[3]).message
    assert "gradient" in _verdict("09.cosine-layers", cos[4]).message
    assert "pooler" in _verdict("09.param-count", params[0]).message
    assert "token-type" in _verdict("09.param-count", params[1]).message
    assert "biases" in _verdict("09.param-count", params[2]).message
    assert "LayerNorm" in _verdict("09.param-count", params[3]).message
    assert "position" in _verdict("09.param-count", params[4]).message
    assert "number of blocks" in _verdict("09.param-count", params[5]).message


def test_param_count_success_message_reproduces_the_decks_sizes():
    message = _verdict("09.param-count", _bert_params).message
    assert "108.9 M" in message and "109.5 M" in message and "66.4 M" in message
