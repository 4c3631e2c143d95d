"""The exercise checkers of chapter 09 (Distilling BERT).

For every checker: a correct answer passes, plausible wrong answers fail (with a message), and
``None`` as "not answered yet" is checked for every exercise in tests/test_check.py.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from checks import LazyAnswer, answer_tests, shift

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


@functools.cache
def _transfer_runs() -> dict:
    """The exercise's experiment, done as the chapter's solution does it (once per test session): the chapter's
    BiLSTM on all 2,000 training sentences for 2 epochs (lr 3e-3, batches of 32), over the 5 bilstm_seeds, on the
    teacher's logits (logit MSE) and on the labels."""
    import kdedu
    from kdedu.data import sentiment, text_loader
    from kdedu.methods import Supervised, precompute_teacher
    from kdedu.models import BiLSTMStudent
    from kdedu.train import Distiller

    class LogitMSE(Distiller):  # the chapter's class
        def __init__(self, student, alpha=1.0):
            super().__init__(student)
            self.alpha = alpha

        def forward(self, x, y):
            z_s = self.student(x.input_ids, x.attention_mask)
            terms = {"mse": self.alpha * losses.logit_mse(z_s, x.logits)}
            if self.alpha < 1:
                terms["ce"] = (1 - self.alpha) * F.cross_entropy(z_s, y)
            return terms

    T = kdedu.zoo.text_teacher(verbose=False)
    split = sentiment("train")
    with_teacher = precompute_teacher(T, text_loader(split, T.tokenizer, 32), hidden_layers=(-1,), cls_only=False,
                                      group_by_length=True, seed=None)  # as the chapter's transfer_loaders
    labels_only = text_loader(split, T.tokenizer, 32, shuffle=True, seed=None, group_by_length=True)
    test_loader = text_loader(sentiment("test"), T.tokenizer, 128, group_by_length=True)
    seeds = list(range(5))

    def accuracy(distil, seed):
        torch.manual_seed(seed)
        student = BiLSTMStudent(num_classes=2, embeddings=T.encoder.embeddings.word_embeddings.weight,
                                freeze_embeddings=True, hidden=64, mlp_hidden=64)
        method, loader = (LogitMSE(student), with_teacher) if distil else (Supervised(student), labels_only)
        kdedu.fit(method, loader, None, num_epochs=2, lr=3e-3, seed=seed, progress=False)
        return kdedu.evaluate(student, test_loader)["acc"]

    return {"seeds": seeds, "labels": [accuracy(False, s) for s in seeds], "mse": [accuracy(True, s) for s in seeds]}


def Transfer(what: str, change=lambda answer: answer) -> LazyAnswer:
    """An answer made from the correct one by ``change`` when it is first read (tests/checks.py)."""
    return LazyAnswer(_transfer_runs, what, change)


def _with(**changes):
    return lambda answer: {**answer, **{k: (v(answer) if callable(v) else v) for k, v in changes.items()}}


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
    "09.transfer-set": [
        Transfer("as the chapter's solution makes it"),
        Transfer("arrays and tuples", _with(seeds=lambda a: tuple(a["seeds"]), labels=lambda a: np.array(a["labels"]),
                                            mse=lambda a: torch.tensor(a["mse"], dtype=torch.float64))),
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
    "09.transfer-set": [
        Transfer("the distilled accuracies made up", _with(mse=lambda a: shift(a["mse"], 3, 500))),
        Transfer("the labels-only accuracies made up", _with(labels=lambda a: shift(a["labels"], -3, 500))),
        Transfer("the two lists swapped", _with(labels=lambda a: a["mse"], mse=lambda a: a["labels"])),
        Transfer("one list copied into the other", _with(labels=lambda a: list(a["mse"]))),
        Transfer("percentages", _with(labels=lambda a: [100 * v for v in a["labels"]],
                                      mse=lambda a: [100 * v for v in a["mse"]])),
        Transfer("too few seeds", _with(seeds=[0, 1, 2], labels=lambda a: a["labels"][:3], mse=lambda a: a["mse"][:3])),
        Transfer("one value missing", _with(mse=lambda a: a["mse"][:-1])),
        Transfer("not accuracies on the 500 test sentences", _with(mse=lambda a: [v + 0.0007 for v in a["mse"]])),
        {"seeds": [0, 1, 2, 3, 4], "labels": [0.8] * 5},  # a key missing
        [0.8, 0.81, 0.82],
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


def test_every_chapter_09_exercise_is_tested():
    ours = {k for k in check.EXERCISES if k.startswith("09.")}
    assert ours == set(CORRECT) == set(WRONG)


def test_transfer_set_messages():
    wrong = {a.what: a for a in WRONG["09.transfer-set"] if isinstance(a, LazyAnswer)}
    expected = {
        "the distilled accuracies made up": "the distilled BiLSTM (LogitMSE",
        "the labels-only accuracies made up": "the labels-only BiLSTM (Supervised)",
        "the two lists swapped": "swapped",
        "one list copied into the other": "the same, seed by seed",
        "percentages": "percentages",
        "too few seeds": "at least 5",
        "one value missing": "4 values for 5 seeds",
        "not accuracies on the 500 test sentences": "500 test sentences",
    }
    for what, message in expected.items():
        assert message in _verdict("09.transfer-set", wrong[what]).message, what
    assert "lacks the key(s) mse" in _verdict("09.transfer-set", WRONG["09.transfer-set"][-2]).message


def test_transfer_set_success_message_describes_without_a_verdict():
    message = _verdict("09.transfer-set", CORRECT["09.transfer-set"][0]).message
    assert "reproduces, both ways" in message and "described, not tested" in message
    assert not any(word in message for word in ("better", "worse", "no clear difference"))


def test_transfer_set_hint_gives_no_answer():
    hint = check.hint("09.transfer-set", verbose=False)
    assert hint and not any(word in hint for word in ("LogitMSE", "Supervised", "2000", "2,000", "epochs=2", "0."))
