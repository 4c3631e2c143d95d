"""Parts III-IV and VI: the sentiment teachers and the masked language model that generates text."""

from __future__ import annotations

import os

import torch
from torch import nn

from kdedu.zoo._cache import _recipe_config, cached

__all__ = ["TEXT_RECIPES", "text_teacher", "CONSTRUCTION_RECIPES", "construction_labels", "construction_teacher",
           "MLM_RECIPES", "masked_lm"]

# ------------------------------------------------------------------------------------------
# Part III: the fine-tuned sentiment teacher (MiniLM on the synthetic corpus)
# ------------------------------------------------------------------------------------------
TEXT_RECIPES: dict[str, dict] = {
    # the pretrained MiniLM-L6 encoder; its top `train_layers` blocks (all 6) + the head are fine-tuned
    # (weight_decay 0.01 is AdamW's default, written out for kdedu.train.fit, whose default is 0)
    "sentiment-minilm": {"arch": "minilm", "pooling": "cls", "train_layers": 6, "num_epochs": 1, "lr": 2e-4,
                         "weight_decay": 0.01, "batch_size": 32, "max_length": 64, "limit": None, "dropout": 0.1,
                         "data_seed": 0},
    # a tiny randomly initialised BERT with a word tokenizer: for tests and quick experiments
    "sentiment-tiny": {"arch": "tiny", "pooling": "cls", "train_layers": 2, "num_epochs": 3, "lr": 2e-3,
                       "weight_decay": 0.01, "batch_size": 32, "max_length": 64, "limit": None, "dropout": 0.1,
                       "data_seed": 0, "num_layers": 2, "hidden": 32, "heads": 2},
    # a teacher of another kind (chapter 18): a BiLSTM on MiniLM's WordPiece tokens and frozen word embeddings
    "sentiment-bilstm": {"arch": "bilstm", "hidden": 128, "num_epochs": 4, "lr": 3e-3, "weight_decay": 0.0,
                         "batch_size": 32, "max_length": 64, "limit": None, "dropout": 0.1, "data_seed": 0},
}


def _freeze_below_top(model: nn.Module, train_layers: int) -> None:
    """Freeze a :class:`~kdedu.models.SequenceClassifier` except its head and its top ``k = train_layers``
    blocks: the embeddings and blocks 1..N-k keep their pretrained values (``requires_grad=False``)."""
    blocks = model.encoder.encoder.layer
    n, k = len(blocks), train_layers
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"train_layers must be an integer in [1, {n}], got {k!r}")
    model.requires_grad_(False)
    blocks[n - k:].requires_grad_(True)
    model.head.requires_grad_(True)


def _bert_encoder(config: dict, seed: int, tokenizer) -> nn.Module:
    """The encoder of a text recipe: the pretrained MiniLM-L6, or a tiny random BERT seeded with ``seed``."""
    from kdedu.models import load_minilm, small_bert

    if config["arch"] == "minilm":
        return load_minilm()[0]
    if config["arch"] == "tiny":
        torch.manual_seed(seed)
        return small_bert(config["num_layers"], config["hidden"], config["heads"], vocab_size=tokenizer.vocab_size)
    raise ValueError(f"unknown arch {config['arch']!r}")


def text_teacher(name: str = "sentiment-minilm", seed: int = 0, root: str | os.PathLike | None = None,
                 verbose: bool = True, **overrides) -> nn.Module:
    """The fine-tuned sentiment teacher of Part III: a :class:`~kdedu.models.SequenceClassifier`, frozen.

    ``"sentiment-minilm"``: the pretrained MiniLM-L6-H384 (:func:`kdedu.models.load_minilm`) with
    a linear head on the [CLS] vector (BERT's convention, which the layer losses of PKD, CKD and ALP-KD
    assume), fine-tuned on the synthetic corpus' train split (:func:`kdedu.data.sentiment`) by
    :func:`kdedu.train.fit` with :class:`~kdedu.methods.Supervised`: all six blocks and the head train
    (1 epoch, length-grouped batches of 32, AdamW with weight decay 0.01, lr 2e-4, linear decay to 0); the
    embeddings stay frozen at their pretrained values (dropout stays on everywhere while training). Measured
    on a shared 2-core CPU (one thread): 26-46 s the first time (val/test accuracy 0.824/0.832 for seed 0;
    seeds 0-2 give 0.824-0.834 / 0.828-0.844; Bayes-optimal 0.830/0.846), then a few seconds to load.
    ``train_layers=1`` (only the top block, 2 epochs at lr 3e-4) is no faster, as the frozen blocks still
    run forward at every step, and reaches only 0.768/0.786 (seed 0), less than a 3-layer student copied
    from its blocks 2, 4, 6 and trained on the labels of all 2,000 sentences for 2 epochs (0.824 test
    accuracy, mean of 5 seeds): too weak a teacher.
    ``"sentiment-tiny"``: a 2-layer, 32-wide random BERT with :func:`kdedu.data.word_tokenizer`, for tests.
    ``"sentiment-bilstm"``: a :class:`~kdedu.models.BiLSTMStudent` (hidden 128 per direction) on MiniLM's tokens
    and frozen word embeddings, all of it trained on the labels (4 epochs, lr 3e-3): chapter 18's teacher of
    another kind.

    The tokenizer is ``model.tokenizer``; ``model.meta["metrics"]`` has ``val_acc``/``test_acc`` and, to
    compare, ``bayes_val_acc``/``bayes_test_acc``: the accuracy of predicting the true ``p > 0.5``.
    """
    config = _recipe_config(TEXT_RECIPES, name, overrides, seed, "sentiment")
    from kdedu.data import sentiment, text_loader, word_tokenizer
    from kdedu.models import BiLSTMStudent, SequenceClassifier, load_minilm

    tokenizer = load_minilm()[1] if config["arch"] in ("minilm", "bilstm") else word_tokenizer()

    def build() -> nn.Module:
        if config["arch"] == "bilstm":
            table = load_minilm()[0].embeddings.word_embeddings.weight
            torch.manual_seed(seed)
            return BiLSTMStudent(2, embeddings=table, freeze_embeddings=True, hidden=config["hidden"],
                                 mlp_hidden=config["hidden"], dropout=config["dropout"])
        encoder = _bert_encoder(config, seed, tokenizer)
        torch.manual_seed(seed)
        return SequenceClassifier(encoder, 2, pooling=config["pooling"], dropout=config["dropout"])

    def train(model: nn.Module) -> dict:
        from kdedu.methods import Supervised
        from kdedu.train import evaluate, fit

        if config["arch"] != "bilstm":
            _freeze_below_top(model, config["train_layers"])
        split = sentiment("train", seed=config["data_seed"], limit=config["limit"])
        loader = text_loader(split, tokenizer, config["batch_size"], shuffle=True, max_length=config["max_length"],
                             seed=seed, group_by_length=True)  # batches of similar length, cut to their longest
        fit(Supervised(model), loader, None, num_epochs=config["num_epochs"], lr=config["lr"],
            weight_decay=config["weight_decay"], schedule="linear", seed=seed, device="cpu",
            progress=None if verbose else False, desc=f"training teacher {name}")
        metrics = {}
        for s in ("val", "test"):
            data = sentiment(s, seed=config["data_seed"])
            metrics[f"{s}_acc"] = evaluate(model, text_loader(data, tokenizer, 128, max_length=config["max_length"]),
                                           "cpu")["acc"]
            metrics[f"bayes_{s}_acc"] = ((data.probs > 0.5).long() == data.y).float().mean().item()
        return metrics

    model, meta = cached(name, config, build, train, root=root, verbose=verbose)
    model.requires_grad_(False)
    model.meta, model.tokenizer = meta, tokenizer
    return model


# ------------------------------------------------------------------------------------------
# Part III: a second task on the same sentences (chapter 09's multi-task KD): their construction
# ------------------------------------------------------------------------------------------
CONSTRUCTION_RECIPES: dict[str, dict] = {
    # the sentiment teacher's recipe on the 5-way construction task, cut to fit chapter 09's budget: the first 512
    # training sentences, one epoch in batches of 16 (32 steps), and mean pooling, the pooling all-MiniLM-L6-v2 was
    # trained with (a [CLS] head learns this task much more slowly; see construction_teacher's docstring)
    "construction-minilm": {"arch": "minilm", "pooling": "mean", "train_layers": 6, "num_epochs": 1, "lr": 2e-4,
                            "weight_decay": 0.01, "batch_size": 16, "max_length": 64, "limit": 512,
                            "dropout": 0.1, "data_seed": 0},
    # a tiny randomly initialised BERT with a word tokenizer: for tests
    "construction-tiny": {"arch": "tiny", "pooling": "cls", "train_layers": 2, "num_epochs": 3, "lr": 2e-3,
                          "weight_decay": 0.01, "batch_size": 32, "max_length": 64, "limit": None, "dropout": 0.1,
                          "data_seed": 0, "num_layers": 2, "hidden": 32, "heads": 2},
}


def construction_labels(split) -> torch.Tensor:
    """The (N,) int64 construction labels of a synthetic-corpus split: the index of each sentence's
    construction in :data:`kdedu.data.text.CONSTRUCTIONS` (plain, negation, intensifier, contrast, mixed)."""
    from kdedu.data.text import CONSTRUCTIONS, TextSplit

    if not isinstance(split, TextSplit) or split.constructions is None:
        raise TypeError("split must be a TextSplit of the synthetic corpus (kdedu.data.sentiment), which records "
                        f"each sentence's construction; got {type(split).__name__}")
    return torch.tensor([CONSTRUCTIONS.index(k) for k in split.constructions], dtype=torch.int64)


def construction_teacher(name: str = "construction-minilm", seed: int = 0, root: str | os.PathLike | None = None,
                         verbose: bool = True, **overrides) -> nn.Module:
    """A teacher for the second task on the sentiment corpus' sentences: which of the grammar's five
    constructions a sentence is (:func:`construction_labels`). A frozen 5-class
    :class:`~kdedu.models.SequenceClassifier`, with ``.tokenizer`` and ``.meta`` like :func:`text_teacher`.

    ``"construction-minilm"``: :func:`text_teacher`'s ``"sentiment-minilm"`` recipe (MiniLM-L6 + a linear head,
    six blocks and the head fine-tuned, embeddings frozen, AdamW lr 2e-4 with weight decay 0.01 and linear decay,
    length-grouped batches) on the construction labels, made cheap enough for chapter 09: the first 512 training
    sentences, one epoch in batches of 16 (32 steps), and the head on the **mean** of the last hidden states (the
    pooling all-MiniLM-L6-v2 was trained with) instead of [CLS]. Measured on a shared 2-core CPU (one thread):
    about 7 s of CPU, test accuracy 0.808 (seed 0). With the sentiment recipe's [CLS] head and batches of 32
    (16 steps) the test accuracy was 0.434; [CLS] with batches of 8 (64 steps), 0.678; higher learning rates
    (5e-4, 1e-3) diverged to 0.19. ``"construction-tiny"``: a 2-layer, 32-wide random BERT with
    :func:`kdedu.data.word_tokenizer`, for tests.

    The labels follow from the words (``but``: contrast, ``and``: mixed, else ``not``: negation, an intensifier:
    intensifier, else plain), so the best possible accuracy is 1. ``model.meta["metrics"]`` has
    ``val_acc``/``test_acc`` and ``majority_test_acc``, the accuracy of always predicting the test split's most
    frequent construction.
    """
    config = _recipe_config(CONSTRUCTION_RECIPES, name, overrides, seed, "sentiment-constructions")
    from kdedu.data import sentiment, text_loader, word_tokenizer
    from kdedu.data.text import CONSTRUCTIONS, TextSplit
    from kdedu.models import SequenceClassifier, load_minilm

    tokenizer = load_minilm()[1] if config["arch"] == "minilm" else word_tokenizer()

    def relabelled(split):  # the same sentences with the construction labels in y
        return TextSplit(split.sentences, construction_labels(split), split.scores, split.probs, split.constructions)

    def build() -> nn.Module:
        encoder = _bert_encoder(config, seed, tokenizer)
        torch.manual_seed(seed)
        return SequenceClassifier(encoder, len(CONSTRUCTIONS), pooling=config["pooling"], dropout=config["dropout"])

    def train(model: nn.Module) -> dict:
        from kdedu.methods import Supervised
        from kdedu.train import evaluate, fit

        _freeze_below_top(model, config["train_layers"])
        split = relabelled(sentiment("train", seed=config["data_seed"], limit=config["limit"]))
        loader = text_loader(split, tokenizer, config["batch_size"], shuffle=True, max_length=config["max_length"],
                             seed=seed, group_by_length=True)
        fit(Supervised(model), loader, None, num_epochs=config["num_epochs"], lr=config["lr"],
            weight_decay=config["weight_decay"], schedule="linear", seed=seed, device="cpu",
            progress=None if verbose else False, desc=f"training teacher {name}")
        metrics = {}
        for s in ("val", "test"):
            data = relabelled(sentiment(s, seed=config["data_seed"]))
            metrics[f"{s}_acc"] = evaluate(model, text_loader(data, tokenizer, 128, max_length=config["max_length"]),
                                           "cpu")["acc"]
        metrics["majority_test_acc"] = torch.bincount(data.y, minlength=len(CONSTRUCTIONS)).max().item() / len(data)
        return metrics

    model, meta = cached(name, config, build, train, root=root, verbose=verbose)
    model.requires_grad_(False)
    model.meta, model.tokenizer = meta, tokenizer
    return model


# ------------------------------------------------------------------------------------------
# Part IV: the masked language model that generates text (MATE-KD, word replacement)
# ------------------------------------------------------------------------------------------
MLM_RECIPES: dict[str, dict] = {
    # MiniLM's word embeddings (frozen, tied to the output) and its two lowest blocks + BERT's MLM head, trained to
    # fill masks on the sentences of the synthetic corpus' train split (their labels are not used)
    "sentiment-minilm": {"arch": "minilm", "layers": [0, 1], "rate": 0.3, "num_epochs": 2, "lr": 5e-4,
                         "weight_decay": 0.01, "batch_size": 32, "max_length": 64, "limit": None, "data_seed": 0},
    # a tiny random BERT over MiniLM's vocabulary (for tests): 1 block, width 32
    "sentiment-tiny": {"arch": "tiny", "num_layers": 1, "hidden": 32, "heads": 2, "rate": 0.3, "num_epochs": 2,
                       "lr": 3e-3, "weight_decay": 0.01, "batch_size": 32, "max_length": 64, "limit": 512,
                       "data_seed": 0},
}


def masked_lm(seed: int = 0, name: str = "sentiment-minilm", root: str | os.PathLike | None = None,
              verbose: bool = True, **overrides) -> nn.Module:
    """The book's pretrained masked LM (:class:`~kdedu.models.MaskedLM`), frozen, with ``.tokenizer`` attached.

    ``forward(input_ids, attention_mask)`` returns logits ``(B, L, V)`` over MiniLM's WordPiece vocabulary
    (``V = 30,522``), so it shares the tokenizer, and the word-embedding matrix, of the Part III teacher
    (:func:`text_teacher`) and its students.

    ``"sentiment-minilm"``: MiniLM-L6's word, position and type embeddings and its blocks 1-2
    (:func:`kdedu.models.student_from_teacher` with ``layers=[0, 1]``) under BERT's MLM head, whose vocabulary
    projection is the (frozen) word-embedding matrix. Trained by :func:`kdedu.train.fit` with
    :class:`~kdedu.methods.mlm.MaskedLMTraining` on the 2,000 sentences of the synthetic corpus' train split, 30 %
    of the tokens masked afresh in every batch (MATE-KD's rate), 2 epochs, AdamW (lr 5e-4, weight decay 0.01,
    linear decay). ``"sentiment-tiny"``: a 1-block, 32-wide random BERT on 512 sentences, for tests.

    ``model.meta["metrics"]`` holds the masked-token accuracy and cross-entropy on the validation split (30 % of
    its tokens masked with a fixed seed) and, to compare, the accuracy of always predicting the most frequent
    token of the training sentences.
    """
    config = _recipe_config(MLM_RECIPES, name, overrides, seed, "sentiment")
    from kdedu.data import sentiment, text_loader
    from kdedu.models import load_minilm, small_bert, student_from_teacher
    from kdedu.models.mlm import MaskedLM, minilm_tokenizer, special_token_ids

    tokenizer = minilm_tokenizer()

    def build() -> nn.Module:
        if config["arch"] == "minilm":
            encoder = student_from_teacher(load_minilm()[0], tuple(config["layers"]))
        elif config["arch"] == "tiny":
            torch.manual_seed(seed)
            encoder = small_bert(config["num_layers"], config["hidden"], config["heads"],
                                 vocab_size=tokenizer.vocab_size)
        else:
            raise ValueError(f"unknown arch {config['arch']!r}")
        torch.manual_seed(seed)
        model = MaskedLM(encoder, tokenizer.mask_token_id, special_token_ids(tokenizer))
        model.get_input_embeddings().weight.requires_grad_(config["arch"] == "tiny")  # MiniLM's stay as they are
        return model

    def train(model: nn.Module) -> dict:
        from kdedu.methods.mlm import MaskedLMTraining, fill_in_accuracy
        from kdedu.train import fit

        split = sentiment("train", seed=config["data_seed"], limit=config["limit"])
        loader = text_loader(split, tokenizer, config["batch_size"], shuffle=True, max_length=config["max_length"],
                             seed=seed, group_by_length=True)
        fit(MaskedLMTraining(model, rate=config["rate"]), loader, None, num_epochs=config["num_epochs"],
            lr=config["lr"], weight_decay=config["weight_decay"], schedule="linear", seed=seed, device="cpu",
            progress=None if verbose else False, desc=f"training masked LM {name}")
        counts = torch.zeros(model.vocab_size)
        for ids, _ in loader:
            counts += torch.bincount(ids[~torch.isin(ids, torch.tensor(model.special_ids))], minlength=len(counts))
        val = text_loader(sentiment("val", seed=config["data_seed"]), tokenizer, 128, max_length=config["max_length"])
        m = fill_in_accuracy(model, val, config["rate"], majority_token=int(counts.argmax()), seed=0)
        return {"val_mlm_acc": m["mlm_acc"], "val_mlm_loss": m["mlm_loss"], "val_majority_acc": m["majority_acc"]}

    model, meta = cached(f"mlm-{name}", config, build, train, root=root, verbose=verbose)
    model.requires_grad_(False)
    model.meta, model.tokenizer = meta, tokenizer
    return model


