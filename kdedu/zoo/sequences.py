"""Part V: encoder-decoder translation teachers on the grammar corpora."""

from __future__ import annotations

import os

import torch
from torch import nn

from kdedu.zoo._cache import _recipe_config, cached

__all__ = ["SEQ_RECIPES", "seq2seq_teacher"]

# ------------------------------------------------------------------------------------------
# Part V: encoder-decoder translation teachers on the grammar corpora
# ------------------------------------------------------------------------------------------
SEQ_RECIPES: dict[str, dict] = {
    # en->fr, animals: the teacher of chapter 13 (0.69 M parameters)
    "en-fr": {"d_model": 128, "num_heads": 4, "layers": 2, "dim_feedforward": 256, "dropout": 0.1, "num_epochs": 6,
              "lr": 2e-3, "warmup_steps": 50, "batch_size": 64, "target": "fr", "domain": "animals", "tag": False,
              "data_seed": 0, "limit": None},
    # the three-language set of Zhou et al. (2020): the autoregressive teacher of chapter 15 (4 epochs: its budget)
    "three-languages": {"d_model": 128, "num_heads": 4, "layers": 2, "dim_feedforward": 256, "dropout": 0.1,
                        "num_epochs": 4, "lr": 2e-3, "warmup_steps": 50, "batch_size": 64,
                        "target": ["fr", "de", "es"], "domain": "animals", "tag": False, "data_seed": 0, "limit": None},
    # en->fr, animals, small and quick: the teachers of chapter 14 (seeds 0 and 1: an ensemble); its vocabulary also
    # has the office domain's words (``vocab_domain``), which it never sees in training: domain adaptation needs them
    "small": {"d_model": 64, "num_heads": 4, "layers": 1, "dim_feedforward": 128, "dropout": 0.1, "num_epochs": 12,
              "lr": 2e-3, "warmup_steps": 30, "batch_size": 64, "target": "fr", "domain": "animals", "tag": False,
              "data_seed": 0, "limit": 2000, "vocab_domain": ["animals", "office"]},
    # a tiny one for tests
    "tiny": {"d_model": 32, "num_heads": 2, "layers": 1, "dim_feedforward": 64, "dropout": 0.0, "num_epochs": 1,
             "lr": 3e-3, "warmup_steps": 0, "batch_size": 64, "target": "fr", "domain": "animals", "tag": False,
             "data_seed": 0, "limit": 256},
}


def seq2seq_teacher(name: str = "en-fr", seed: int = 0, root: str | os.PathLike | None = None, verbose: bool = True,
                    **overrides) -> nn.Module:
    """A trained, frozen :class:`~kdedu.models.Seq2Seq` translation teacher on a grammar corpus
    (:func:`kdedu.data.translation` with the recipe's ``target``/``domain``/``tag``), trained once per
    configuration by :func:`kdedu.train.fit` with teacher-forced cross-entropy and cached.

    ``model.vocab`` is its :class:`~kdedu.data.SeqVocab`; ``model.meta["metrics"]`` has test-set BLEU against
    the one sampled reference (``test_bleu_greedy``, ``test_bleu_beam``, beam 5), ``test_exact_match_beam`` and
    ``test_valid_beam``, the share of beam outputs that are valid translations (``p(y | x) > 0``).
    Measured on the shared 2-core CPU (one thread, load average ~4.5): ``"en-fr"`` trains in 51 s (BLEU 44.9
    greedy / 44.1 beam against the one sampled reference; every output valid), then loads in 0.03 s.
    """
    config = _recipe_config(SEQ_RECIPES, name, overrides, seed, "translation")
    from kdedu.data import in_grammar, translation, translation_loader, translation_vocab
    from kdedu.models import Seq2Seq

    data = {"target": config["target"] if isinstance(config["target"], str) else tuple(config["target"]),
            "domain": config["domain"] if isinstance(config["domain"], str) else tuple(config["domain"]),
            "tag": config["tag"], "seed": config["data_seed"]}
    vocab_domain = config.get("vocab_domain")  # words of other domains too (default: the training domain's only)
    vocab = translation_vocab(data["target"], tag=data["tag"],
                              domain=data["domain"] if vocab_domain is None else tuple(vocab_domain))

    def build() -> nn.Module:
        torch.manual_seed(seed)
        return Seq2Seq(len(vocab), config["d_model"], config["num_heads"], config["layers"], config["layers"],
                       config["dim_feedforward"], config["dropout"])

    def train(model: nn.Module) -> dict:
        from kdedu.methods import WordKD
        from kdedu.metrics import bleu, exact_match
        from kdedu.models import translate
        from kdedu.train import fit

        split = translation("train", limit=config["limit"], **data)
        loader = translation_loader(split, vocab, config["batch_size"], shuffle=True, seed=seed)
        fit(WordKD(model, None, alpha=0.0), loader, None, num_epochs=config["num_epochs"], lr=config["lr"],
            schedule="linear", warmup_steps=config["warmup_steps"], seed=seed, device="cpu",
            progress=None if verbose else False, desc=f"training seq2seq teacher {name}")
        test = translation("test", limit=config["limit"], **data)
        metrics = {}
        for strategy in ("greedy", "beam"):
            out = translate(model, test.sources, vocab, strategy=strategy, beam_size=5)
            metrics[f"test_bleu_{strategy}"] = bleu(out, test.targets)
            metrics[f"test_exact_match_{strategy}"] = exact_match(out, test.targets)
            valid = in_grammar(test.with_targets(out))
            metrics[f"test_valid_{strategy}"] = sum(valid) / len(valid)
        return metrics

    model, meta = cached(f"seq2seq-{name}", config, build, train, root=root, verbose=verbose)
    model.requires_grad_(False)
    model.meta, model.vocab = meta, vocab
    return model
