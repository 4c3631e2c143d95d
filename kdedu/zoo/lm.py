"""Part V: a decoder-only language-model teacher (a tiny GPT) on the grammar translation corpus (chapter 16).

The model reads one sequence ``source BOS target EOS`` (:func:`kdedu.data.translation_loader` with
``causal_lm=True``) and learns the target's next-token distributions: a conditional language model whose true
distribution ``p(y | x)`` the grammar knows, so a student's samples can be scored for validity and probability.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from kdedu.zoo._cache import _recipe_config, cached

__all__ = ["LM_RECIPES", "gpt_teacher"]

LM_RECIPES: dict[str, dict] = {
    # en->fr, animals: the GPT teacher of chapter 16 (2 layers of width 64, 75 k parameters; all 4,000 training
    # pairs, 6 epochs: 19 s on the shared 2-core CPU with one thread at load ~3, evaluation included)
    "en-fr": {"d_model": 64, "num_heads": 4, "layers": 2, "dim_feedforward": 128, "dropout": 0.0, "num_epochs": 6,
              "lr": 3e-3, "warmup_steps": 30, "batch_size": 64, "target": "fr", "domain": "animals",
              "data_seed": 0, "limit": None, "max_length": 48},
    # a tiny one for tests
    "tiny": {"d_model": 16, "num_heads": 2, "layers": 2, "dim_feedforward": 32, "dropout": 0.0, "num_epochs": 1,
             "lr": 3e-3, "warmup_steps": 0, "batch_size": 64, "target": "fr", "domain": "animals",
             "data_seed": 0, "limit": 128, "max_length": 48},
}


def gpt_teacher(name: str = "en-fr", seed: int = 0, root: str | os.PathLike | None = None, verbose: bool = True,
                **overrides) -> nn.Module:
    """A trained, frozen :class:`~kdedu.models.GPT` on the grammar corpus (:func:`kdedu.data.translation` with
    the recipe's ``target``/``domain``, the first ``limit`` training pairs), trained once per configuration by
    :func:`kdedu.train.fit` with next-token cross-entropy on the targets (``Supervised(causal_lm=True)``) and
    cached.

    ``model.vocab`` is its :class:`~kdedu.data.SeqVocab`; ``model.meta["metrics"]`` has, on the 500 test
    sources, ``test_mode_greedy`` (the share of greedy outputs that are the most probable translation) and
    ``test_valid_sample`` (the share of samples at temperature 1 that are valid translations, ``p(y | x) > 0``).
    """
    config = _recipe_config(LM_RECIPES, name, overrides, seed, "translation-causal-lm")
    from kdedu.data import in_grammar, modes, translation, translation_loader, translation_vocab
    from kdedu.metrics import exact_match
    from kdedu.models import GPT, translate

    data = {"target": config["target"], "domain": config["domain"], "seed": config["data_seed"]}
    vocab = translation_vocab(data["target"], domain=data["domain"])

    def build() -> nn.Module:
        torch.manual_seed(seed)
        return GPT(len(vocab), config["d_model"], config["num_heads"], config["layers"], config["dim_feedforward"],
                   config["dropout"], config["max_length"])

    def train(model: nn.Module) -> dict:
        from kdedu.methods import Supervised
        from kdedu.train import fit

        split = translation("train", limit=config["limit"], **data)
        loader = translation_loader(split, vocab, config["batch_size"], shuffle=True, seed=seed, causal_lm=True)
        fit(Supervised(model, causal_lm=True), loader, None, num_epochs=config["num_epochs"], lr=config["lr"],
            schedule="linear", warmup_steps=config["warmup_steps"], seed=seed, device="cpu",
            progress=None if verbose else False, desc=f"training GPT teacher {name}")
        test = translation("test", limit=None if config["limit"] is None else min(500, config["limit"]), **data)
        greedy = translate(model, test.sources, vocab, strategy="greedy")
        sampled = translate(model, test.sources, vocab, strategy="sample", seed=seed)
        valid = in_grammar(test.with_targets(sampled))
        return {"test_mode_greedy": exact_match(greedy, modes(test)), "test_valid_sample": sum(valid) / len(valid)}

    model, meta = cached(f"gpt-{name}", config, build, train, root=root, verbose=verbose)
    model.requires_grad_(False)
    model.meta, model.vocab = meta, vocab
    return model.eval()
