"""Auto-checks for the exercises of chapter 09 (registered with :func:`kdedu.check.register`)."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import numbers
from collections.abc import Mapping

import numpy as np
import torch

from kdedu.check import Wrong, answer_accuracies, function, register, same_tensor


def _ch09_indices(name: str, got) -> list[int]:
    if isinstance(got, torch.Tensor):
        got = got.tolist()
    if isinstance(got, (str, bytes)) or not hasattr(got, "__iter__"):
        raise Wrong(f"{name} should return a list or tuple of block indices, got {type(got).__name__}.")
    out = []
    for k in got:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise Wrong(f"{name} should hold integer block indices, got {got!r}.")
        out.append(int(k))
    return out


@register("09.spread-layers", hint="the first and the last teacher block are always kept; the others sit at "
                                    "equal distances between them, on the 0-based block numbers.")
def _check_09_spread_layers(fn):
    function("spread_layers(num_teacher, num_student)", fn)
    from fractions import Fraction

    for n, m in ((6, 3), (12, 6), (12, 4), (6, 2), (24, 6), (5, 5), (7, 4)):
        # round(i (n - 1) / (m - 1)) with halves rounded up, in exact arithmetic
        expected = [int(Fraction(i * (n - 1), m - 1) + Fraction(1, 2)) for i in range(m)]
        got = _ch09_indices(f"your spread_layers({n}, {m})", fn(n, m))
        if got == expected:
            continue
        if got == [k + 1 for k in expected]:
            raise Wrong(f"spread_layers({n}, {m}) = {got}: numbered from 1; number the blocks from 0, as "
                        f"student_from_teacher does (the last block is {n - 1}).")
        if got == [k for k in range(n) if k % 2 == 0][:m]:
            raise Wrong(f"spread_layers({n}, {m}) = {got} is 'every other block from the bottom': it never reaches "
                        f"the teacher's last block {n - 1}.")
        if len(got) != m:
            raise Wrong(f"spread_layers({n}, {m}) returns {len(got)} blocks; the student has {m}.")
        if got and (got[0] != 0 or got[-1] != n - 1):
            raise Wrong(f"spread_layers({n}, {m}) = {got} should start at block 0 and end at the last block {n - 1}.")
        raise Wrong(f"spread_layers({n}, {m}) = {got}, expected {expected} (evenly spread, halves rounded up).")
    return ("both ends kept, the rest evenly spread: (0, 3, 5) for our teacher and (0, 2, 4, 7, 9, 11) for "
            "BERT-base, the blocks DistilBERT's released extraction script copies.")


def _ch09_cosine_reference(h_s: torch.Tensor, h_t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - cos per real token, averaged over the real tokens of the whole batch (loops: obviously right)."""
    total, count = torch.zeros((), dtype=torch.float64), 0
    for b in range(h_s.shape[0]):
        for position in range(h_s.shape[1]):
            if mask[b, position]:
                a, c = h_s[b, position].double(), h_t[b, position].double()
                total = total + 1 - (a @ c) / (a.norm() * c.norm())
                count += 1
    return total / count


def _ch09_layers_reference(hs_s, hs_t, mask, layer_map) -> torch.Tensor:
    return torch.stack([_ch09_cosine_reference(hs_s[j], hs_t[k], mask) for j, k in layer_map.items()]).mean()


@register("09.cosine-layers", hint="first get the one-layer loss right (1 - cos over the real tokens of the batch), "
                                   "then apply it to each (student, teacher) pair of the map and average the pairs.")
def _check_09_cosine_layers(fn):
    function("cosine_layers(hs_s, hs_t, attention_mask, layer_map)", fn)
    g = torch.Generator().manual_seed(9)
    lengths = torch.tensor([5, 2, 4])
    mask = (torch.arange(6)[None, :] < lengths[:, None]).long()  # (3, 6), right padding of different lengths
    hs_t = tuple(torch.randn(3, 6, 8, generator=g, dtype=torch.float64) for _ in range(7))   # teacher: 6 blocks
    hs_s = tuple(torch.randn(3, 6, 8, generator=g, dtype=torch.float64) + 0.5 * hs_t[2 * i] for i in range(4))
    layer_map = {1: 2, 2: 4, 3: 6}
    expected = _ch09_layers_reference(hs_s, hs_t, mask, layer_map)
    leaves = tuple(h.clone().requires_grad_(True) for h in hs_s)
    got = fn(leaves, tuple(h.clone() for h in hs_t), mask.clone(), dict(layer_map))
    if not isinstance(got, torch.Tensor):
        raise Wrong(f"cosine_layers should return a torch.Tensor (a loss to call backward() on), got "
                    f"{type(got).__name__}.")
    if got.numel() != 1:
        raise Wrong(f"cosine_layers should return one number (a 0-dim tensor), got shape {tuple(got.shape)}.")
    if got.grad_fn is None:
        raise Wrong("cosine_layers returns a tensor without a gradient: keep the computation in torch (no .item(), "
                    "no .detach(), no numpy) so that backward() reaches the student.")
    value = got.detach().double().reshape(())
    cos = [torch.nn.functional.cosine_similarity(hs_s[j], hs_t[k], dim=-1) for j, k in layer_map.items()]  # (3, 6)
    real = mask.bool()
    diagnoses = [
        (torch.stack([(1 - c).mean() for c in cos]).mean(), "the padding positions are in your average; leave "
                                                            "them out (attention_mask is 0 there)."),
        (torch.stack([(1 - c)[real].mean() for c in cos]).sum(), "that is the sum over the pairs of the map; "
                                                                 "average them, so the loss does not grow with the "
                                                                 "number of pairs."),
        (_ch09_layers_reference(hs_s, hs_t, mask, {j - 1: k for j, k in layer_map.items()}),
         "the student's index is off by one: hidden state 0 is the embedding output, j the output of block j."),
        (_ch09_layers_reference(hs_s, hs_t, mask, {j: k - 1 for j, k in layer_map.items()}),
         "the teacher's index is off by one: hidden state 0 is the embedding output, k the output of block k."),
        (torch.stack([torch.stack([(1 - c[b])[real[b]].mean() for b in range(3)]).mean() for c in cos]).mean(),
         "that averages each sentence first, so a short sentence's tokens weigh more; average over all real "
         "tokens of the batch at once."),
    ]
    if not torch.isclose(value, expected, atol=1e-8, rtol=1e-6):
        for wrong, message in diagnoses:
            if torch.isclose(value, wrong.double(), atol=1e-8, rtol=1e-6):
                raise Wrong(f"your loss is {value.item():.5f}: {message}")
        same_tensor("your cosine_layers on 3 padded sentences and the map {1: 2, 2: 4, 3: 6}", value, expected,
                    atol=1e-8, rtol=1e-6)
    one = fn(hs_s, hs_t, mask.clone(), {3: 6}).detach().double().reshape(())
    same_tensor("your cosine_layers with the map {3: 6} (DistilBERT's last-layer loss)", one,
                _ch09_cosine_reference(hs_s[3], hs_t[6], mask), atol=1e-8, rtol=1e-6)
    scaled = fn(tuple(3.0 * h for h in hs_s), hs_t, mask.clone(), dict(layer_map)).detach().double().reshape(())
    if not torch.isclose(scaled, expected, atol=1e-8, rtol=1e-6):
        raise Wrong("scaling the student's states by 3 changes your loss; a cosine only sees directions.")
    return ("1 - cos over the real tokens, averaged over the batch and over the pairs of the map; with {M: N} it is "
            "kdedu.losses.cosine_hidden_loss on the last layers, DistilBERT's L_cos.")


def _ch09_bert_parts(num_layers: int, hidden: int, intermediate: int, vocab: int, positions: int) -> dict[str, int]:
    """Diagnostic pieces of a BERT count (the expected total itself is counted on a built model)."""
    h, i = hidden, intermediate
    return {
        "token_types": 2 * h,
        "positions": positions * h,
        "layernorms": 2 * h + num_layers * 4 * h,  # embedding LayerNorm + two per block
        "biases": num_layers * (4 * h + i + h),    # q, k, v, attention output; intermediate; output
        "pooler": h * h + h,
        "per_block": 4 * h * h + 2 * h * i + 9 * h + i,
    }


@register("09.param-count", hint="count one piece at a time and check each against count_parameters on the "
                                 "chapter's modules: bert.embeddings, then one block, bert.encoder.layer[0].")
def _check_09_param_count(fn):
    function("bert_params(num_layers, hidden, intermediate, vocab_size, max_positions)", fn)
    from kdedu.models import count_parameters, small_bert

    configs = ((1, 8, 16, 50, 20), (2, 32, 64, 100, 64), (3, 48, 200, 500, 128), (6, 24, 96, 1000, 512))
    for layers, hidden, inter, vocab, positions in configs:
        model = small_bert(layers, hidden, 4, intermediate=inter, vocab_size=vocab, max_position_embeddings=positions)
        expected = count_parameters(model)  # counted on a real BertModel (no pooler), not from a formula
        call = f"bert_params({layers}, {hidden}, {inter}, {vocab}, {positions})"
        got = fn(layers, hidden, inter, vocab, positions)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, (int, float)) or not math.isfinite(got):
            raise Wrong(f"{call} should return a number of parameters, got {got!r}.")
        if got == expected:
            continue
        parts = _ch09_bert_parts(layers, hidden, inter, vocab, positions)
        missing = expected - got
        for part, message in (("pooler", "that counts the pooler (a dense H x H layer with its bias), which the "
                                         "student drops."),
                              ("token_types", "the 2 token-type embeddings (2 x H) are missing."),
                              ("positions", "the position embeddings (max_positions x H) are missing."),
                              ("layernorms", "the LayerNorms are missing: each has a weight and a bias of size H "
                                             "(one after the embeddings, two per block)."),
                              ("biases", "the biases of the linear layers are missing.")):
            if missing == (-parts[part] if part == "pooler" else parts[part]):
                raise Wrong(f"{call} = {got:,}, expected {expected:,}: {message}")
        if (got - (expected - layers * parts["per_block"])) % parts["per_block"] == 0 and got != expected:
            raise Wrong(f"{call} = {got:,}, expected {expected:,}: the per-block count is right but the number of "
                        "blocks is off.")
        raise Wrong(f"{call} = {got:,}, expected {expected:,} (counted on a BertModel built with these sizes).")
    base, pooler = fn(12, 768, 3072, 30522, 512), 768 * 768 + 768
    distil = fn(6, 768, 3072, 30522, 512) - 2 * 768  # DistilBERT: half the blocks, no token types, no pooler
    return (f"right on every size. BERT-base: {base / 1e6:.1f} M, {(base + pooler) / 1e6:.1f} M with its pooler (the "
            f"deck's 110 M); DistilBERT, six blocks without token types or pooler: {distil / 1e6:.1f} M "
            "(the deck's 66 M).")


# ------------------------------------------------------------------------------------------------
# 09.transfer-set: an experiment. The reader trains two BiLSTMs on the whole training split over the chapter's
# seeds; the checker trains one of the submitted seeds again, both ways, and compares.
# ------------------------------------------------------------------------------------------------
TRANSFER_SETTING = {"n_train": 2000, "num_epochs": 2, "lr": 3e-3, "batch_size": 32, "hidden": 64, "n_test": 500,
                    "min_seeds": 5}
"""The exercise's setting: the chapter's BiLSTM (``make_bilstm``, ``bilstm_lr``) on all 2,000 sentences, 2 epochs."""


@functools.lru_cache(maxsize=1)
def _transfer_data():
    """The teacher, the two loaders of the whole training split and the test loader, made as the chapter makes
    them (the teacher runs once over the 2,000 sentences: the slow part of a first check)."""
    from kdedu import zoo
    from kdedu.data import sentiment, text_loader
    from kdedu.methods import precompute_teacher

    s = TRANSFER_SETTING
    teacher = zoo.text_teacher(verbose=False)
    split = sentiment("train", limit=s["n_train"])
    with_teacher = precompute_teacher(teacher, text_loader(split, teacher.tokenizer, s["batch_size"]),
                                      group_by_length=True, seed=None)
    labels_only = text_loader(split, teacher.tokenizer, s["batch_size"], shuffle=True, seed=None,
                              group_by_length=True)
    test_loader = text_loader(sentiment("test"), teacher.tokenizer, 128, group_by_length=True)
    return teacher, with_teacher, labels_only, test_loader


@functools.lru_cache(maxsize=64)  # a resubmitted answer is checked again in no time
def transfer_accuracy(distil: bool, seed: int) -> float:
    """Test accuracy of the chapter's BiLSTM trained in the exercise's setting on the teacher's logits
    (``distil=True``: ``LogitMSE``, alpha = 1) or on the labels (``Supervised``).

    The same steps as the chapter's ``train_bilstm``: ``torch.manual_seed(seed)`` before building
    ``BiLSTMStudent`` on the teacher's frozen word embeddings, then ``fit(..., num_epochs=2, lr=3e-3, seed=seed)``.
    """
    from kdedu import losses
    from kdedu.methods import Supervised
    from kdedu.models import BiLSTMStudent
    from kdedu.train import Distiller, evaluate, fit

    class LogitMSE(Distiller):  # the chapter's, with alpha = 1: Tang et al.'s MSE on the teacher's logits
        def forward(self, x, y):
            return {"mse": losses.logit_mse(self.student(x.input_ids, x.attention_mask), x.logits)}

    s = TRANSFER_SETTING
    teacher, with_teacher, labels_only, test_loader = _transfer_data()
    torch.manual_seed(seed)
    student = BiLSTMStudent(num_classes=2, embeddings=teacher.encoder.embeddings.word_embeddings.weight,
                            freeze_embeddings=True, hidden=s["hidden"], mlp_hidden=s["hidden"])
    method, loader = (LogitMSE(student), with_teacher) if distil else (Supervised(student), labels_only)
    fit(method, loader, None, num_epochs=s["num_epochs"], lr=s["lr"], seed=seed, progress=False)
    return float(evaluate(student, test_loader)["acc"])






@register("09.transfer-set", hint="the two runs are the chapter's BiLSTM runs with other loaders and another number "
                                  "of epochs: make the loaders for the whole split with the chapter's own helper, "
                                  "and keep both lists in the order of the seeds.")
def _check_09_transfer_set(answer):
    from kdedu.train import default_device

    s = TRANSFER_SETTING
    if not isinstance(answer, Mapping):
        raise Wrong(f"the answer should be a dict with the keys seeds, labels and mse, got {type(answer).__name__}.")
    missing = [key for key in ("seeds", "labels", "mse") if key not in answer]
    if missing:
        raise Wrong(f"the answer lacks the key(s) {', '.join(missing)}.")
    seeds = answer["seeds"]
    seeds = list(seeds.tolist() if hasattr(seeds, "tolist") else seeds) \
        if hasattr(seeds, "__iter__") and not isinstance(seeds, (str, bytes)) else None
    if not seeds or not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in seeds):
        raise Wrong('answer["seeds"] should be a list of integer seeds.')
    seeds = [int(x) for x in seeds]
    if len(set(seeds)) != len(seeds) or len(seeds) < s["min_seeds"]:
        raise Wrong(f'answer["seeds"] = {seeds}: give the chapter\'s bilstm_seeds, at least {s["min_seeds"]} distinct '
                    "ones.")
    n = len(seeds)
    labels = answer_accuracies('answer["labels"]', answer["labels"], n, TRANSFER_SETTING["n_test"], "test sentences")
    mse = answer_accuracies('answer["mse"]', answer["mse"], n, TRANSFER_SETTING["n_test"], "test sentences")
    if labels == mse:
        raise Wrong("the two lists are the same, seed by seed: the labels-only BiLSTM and the distilled one are two "
                    "different training runs.")
    # one seed, picked from the submission itself (the same answer is always checked on the same seed), among the
    # seeds on which the two runs differ, so that two swapped lists cannot pass
    differ = [j for j in range(n) if labels[j] != mse[j]]
    blob = json.dumps([seeds, labels, mse]).encode()
    i = differ[int(hashlib.sha256(blob).hexdigest(), 16) % len(differ)]
    allowed = (1 if default_device().type == "cpu" else 3) / s["n_test"] + 1e-9  # a sentence of float noise
    again = {"labels": transfer_accuracy(False, seeds[i]), "mse": transfer_accuracy(True, seeds[i])}
    got = {"labels": labels[i], "mse": mse[i]}
    if all(abs(got[a] - again[b]) <= allowed for a, b in (("labels", "mse"), ("mse", "labels"))) and \
            not all(abs(got[k] - again[k]) <= allowed for k in got):
        raise Wrong(f"seed {seeds[i]}: your two lists are swapped: answer[\"labels\"] holds the distilled BiLSTM's "
                    "accuracy and answer[\"mse\"] the labels-only one's.")
    for name, what in (("labels", "the labels-only BiLSTM (Supervised)"),
                       ("mse", "the distilled BiLSTM (LogitMSE on the teacher's logits)")):
        if abs(got[name] - again[name]) > allowed:
            raise Wrong(f'seed {seeds[i]}: your answer["{name}"] says {100 * got[name]:.2f} %, but training {what} '
                        f"on all {s['n_train']:,} training sentences for {s['num_epochs']} epochs (lr = {s['lr']:g}, "
                        f"batches of {s['batch_size']}) gives {100 * again[name]:.2f} %. Check the loaders, the number "
                        "of epochs, the learning rate and the order of the values.")
    d = 100 * (np.asarray(mse) - np.asarray(labels))
    se = d.std(ddof=1) / math.sqrt(n) if n > 1 else 0.0
    return (f"your seed {seeds[i]} reproduces, both ways. On all {s['n_train']:,} sentences, logit MSE − labels = "
            f"{d.mean():+.2f} ± {se:.2f} points (mean ± s.e. over {n} seeds; described, not tested), higher on "
            f"{int((d > 0).sum())} of {n} seeds. Compare it with the chapter's line for the live transfer set.")
