"""A synthetic sentiment corpus from a small documented grammar (offline), and SST-2 (online).

The grammar
-----------
A sentence is one clause, or two clauses joined by ``but`` or ``and``::

    clause   := SUBJECT VERB [not] [INTENSIFIER] ADJECTIVE        "the plot was not very good"
    sentence := clause | clause "but" clause | clause "and" clause

Every word carries a number, and the sentence gets a latent sentiment **score** ``s``:

* an adjective has a polarity (``good`` +1.0, ``great`` +1.5, ``awful`` -2.0, ``fine`` +0.4, ...);
* an intensifier multiplies it (``very`` x1.5, ``extremely`` x2, ``somewhat`` x0.5, ...);
* ``not`` flips **and damps** it (x -0.5): "not good" is mildly negative, "not bad" mildly positive,
  as in real reviews;
* contrast, ``A but B``: ``0.25 * s(A) + s(B)``, the clause after "but" dominates;
* mixed, ``A and B``: ``s(A) + s(B)``; opposite clauses cancel into genuinely ambiguous sentences.

The **label** is not ``s > 0``: it is *sampled*, positive with probability
``p = sigmoid(sharpness * s)`` (``sharpness = 2``). So mild sentences get noisy labels, some labels are
"wrong", and a teacher that learns ``p`` carries information that the hard labels do not (dark
knowledge). ``TextSplit.probs`` holds the true ``p``: the Bayes-optimal soft target.

The splits are fixed by ``seed``: a pool of distinct sentences is drawn with Python's ``random.Random``
(the same on every platform) and cut into train/val/test, so no sentence is in two splits.
"""

from __future__ import annotations

import math
import os
import random
import socket
import sys
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset, default_collate

__all__ = [
    "TextSplit",
    "ADJECTIVES",
    "INTENSIFIERS",
    "CONSTRUCTIONS",
    "sentiment",
    "sentence_score",
    "tokenize",
    "text_loader",
    "LengthGroupedBatches",
    "trim_padding",
    "WordTokenizer",
    "word_tokenizer",
    "sst2",
]

SUBJECTS = ("the movie", "the film", "the plot", "the acting", "the script", "the ending", "the cast",
            "the dialogue", "the pacing", "the soundtrack", "the story", "the direction")
VERBS = ("is", "was", "felt", "seemed")
ADJECTIVES = {  # polarity of each adjective
    "good": 1.0, "great": 1.5, "excellent": 2.0, "wonderful": 2.0, "brilliant": 2.0, "nice": 0.8,
    "enjoyable": 1.0, "charming": 1.0, "fine": 0.4, "decent": 0.5,
    "bad": -1.0, "awful": -2.0, "terrible": -2.0, "dreadful": -2.0, "boring": -1.0, "dull": -0.8,
    "poor": -1.0, "disappointing": -1.2, "mediocre": -0.5, "weak": -0.6,
}
INTENSIFIERS = {"very": 1.5, "extremely": 2.0, "really": 1.3, "truly": 1.5, "somewhat": 0.5, "slightly": 0.5}
NEGATION = -0.5      # "not X" = -0.5 * X
BUT_WEIGHT = 0.25    # "A but B" = 0.25 * A + B
SHARPNESS = 2.0      # P(positive) = sigmoid(SHARPNESS * score)
CONSTRUCTIONS = ("plain", "negation", "intensifier", "contrast", "mixed")
SIZES = {"train": 2000, "val": 500, "test": 500}
SPLITS = tuple(SIZES)
LABELS = ("negative", "positive")


@dataclass(frozen=True)
class TextSplit:
    """One split: ``sentences`` (N strings), ``y`` (N,) int64 labels (1 = positive), and for the synthetic
    corpus the latent ``scores`` (N,), the true ``probs`` = P(positive) (N,) and each sentence's
    ``constructions`` (one of :data:`CONSTRUCTIONS`). Real data (SST-2) has ``None`` for those."""

    sentences: list[str]
    y: torch.Tensor
    scores: torch.Tensor | None = None
    probs: torch.Tensor | None = None
    constructions: list[str] | None = None

    def __len__(self) -> int:
        return len(self.sentences)


# --------------------------------------------------------------------------------------------
# the grammar
# --------------------------------------------------------------------------------------------
def _clause(rng: random.Random, negate: bool, intensify: bool) -> tuple[str, float]:
    adj = rng.choice(sorted(ADJECTIVES))
    words, score = [rng.choice(SUBJECTS), rng.choice(VERBS)], ADJECTIVES[adj]
    if negate:
        words.append("not")
    if intensify:
        word = rng.choice(sorted(INTENSIFIERS))
        words.append(word)
        score *= INTENSIFIERS[word]
    if negate:
        score *= NEGATION  # "not very good": the negation applies to the intensified adjective
    return " ".join(words + [adj]), score


def _sentence(rng: random.Random) -> tuple[str, float, str]:
    kind = rng.choice(CONSTRUCTIONS)
    if kind in ("plain", "negation", "intensifier"):
        text, score = _clause(rng, negate=kind == "negation", intensify=kind == "intensifier")
        return text, score, kind
    # two clauses, each with its own optional negation / intensifier
    (a, sa), (b, sb) = (_clause(rng, rng.random() < 0.3, rng.random() < 0.3) for _ in range(2))
    if kind == "contrast":
        return f"{a} but {b}", BUT_WEIGHT * sa + sb, kind
    return f"{a} and {b}", sa + sb, kind


def sentence_score(sentence: str) -> float:
    """The latent score of a sentence of the grammar, recomputed from its words (see the module docstring)."""
    if not isinstance(sentence, str):
        raise TypeError(f"sentence must be a string, got {type(sentence).__name__}")

    def clause(text: str) -> float:
        words = text.split()
        if not words or words[-1] not in ADJECTIVES:
            raise ValueError(f"sentence is not in the grammar (a clause must end with an adjective): {text!r}")
        score = ADJECTIVES[words[-1]]
        if len(words) >= 2 and words[-2] in INTENSIFIERS:
            score *= INTENSIFIERS[words[-2]]
        if "not" in words:
            score *= NEGATION
        return score

    if " but " in sentence:
        a, b = sentence.split(" but ", 1)
        return BUT_WEIGHT * clause(a) + clause(b)
    if " and " in sentence:
        a, b = sentence.split(" and ", 1)
        return clause(a) + clause(b)
    return clause(sentence)


@lru_cache(maxsize=4)
def _corpus(seed: int) -> dict[str, TextSplit]:
    rng = random.Random(seed)
    total = sum(SIZES.values())
    seen: dict[str, tuple[float, str]] = {}
    while len(seen) < total:  # distinct sentences only, so the splits are disjoint
        text, score, kind = _sentence(rng)
        seen.setdefault(text, (score, kind))
    items = list(seen.items())
    rng.shuffle(items)
    out, start = {}, 0
    for name, size in SIZES.items():
        chunk = items[start:start + size]
        start += size
        scores = [s for _, (s, _) in chunk]
        probs = [1.0 / (1.0 + math.exp(-SHARPNESS * s)) for s in scores]
        labels = [int(rng.random() < p) for p in probs]  # sampled: some labels disagree with the score
        out[name] = TextSplit(
            sentences=[t for t, _ in chunk],
            y=torch.tensor(labels, dtype=torch.int64),
            scores=torch.tensor(scores, dtype=torch.float32),
            probs=torch.tensor(probs, dtype=torch.float32),
            constructions=[k for _, (_, k) in chunk],
        )
    return out


def sentiment(split: str = "train", seed: int = 0, limit: int | None = None) -> TextSplit:
    """One split of the synthetic sentiment corpus (2,000 train / 500 val / 500 test sentences).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        seed: draws the sentences and samples their labels; the same seed always gives the same corpus.
        limit: keep only the first ``limit`` sentences (a smaller transfer set).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    data = _corpus(seed)[split]
    if limit is None or limit >= len(data):
        return data
    return TextSplit(data.sentences[:limit], data.y[:limit], data.scores[:limit], data.probs[:limit],
                     data.constructions[:limit])


# --------------------------------------------------------------------------------------------
# tokenisation and batches
# --------------------------------------------------------------------------------------------
class WordTokenizer:
    """A word-level tokenizer with the calling convention of a Hugging Face tokenizer, for students
    that do not share the teacher's WordPiece vocabulary (e.g. a BiLSTM trained from scratch).

    Ids: 0 ``[PAD]``, 1 ``[UNK]``, 2 ``[CLS]``, 3 ``[SEP]``, then the words. Every sequence is
    ``[CLS] words... [SEP]``, like BERT's, so [CLS] pooling works for a small BERT too.
    """

    specials = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
    pad_token_id, unk_token_id, cls_token_id, sep_token_id = 0, 1, 2, 3

    def __init__(self, words):
        self.vocab = {w: i for i, w in enumerate(self.specials)}
        for w in words:
            self.vocab.setdefault(w, len(self.vocab))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        return [self.cls_token_id] + [self.vocab.get(w, self.unk_token_id) for w in text.lower().split()] + [
            self.sep_token_id]

    def __call__(self, texts, padding=True, truncation=True, max_length=None, return_tensors="pt"):
        ids = [self.encode(t) for t in ([texts] if isinstance(texts, str) else texts)]
        if truncation and max_length is not None:
            ids = [x[:max_length] for x in ids]
        width = max(len(x) for x in ids)
        input_ids = torch.tensor([x + [self.pad_token_id] * (width - len(x)) for x in ids], dtype=torch.int64)
        return {"input_ids": input_ids, "attention_mask": (input_ids != self.pad_token_id).long()}


def word_tokenizer() -> WordTokenizer:
    """A :class:`WordTokenizer` covering every word the grammar can produce."""
    words = {w for phrase in SUBJECTS + VERBS for w in phrase.split()}
    words |= set(ADJECTIVES) | set(INTENSIFIERS) | {"not", "but", "and"}
    return WordTokenizer(sorted(words))


def tokenize(sentences, tokenizer, max_length: int = 64) -> dict[str, torch.Tensor]:
    """Tokenise a list of sentences into padded tensors: ``{"input_ids": (N, L), "attention_mask": (N, L)}``.

    ``tokenizer`` is any Hugging Face tokenizer (e.g. the one from :func:`kdedu.models.load_minilm`) or a
    :class:`WordTokenizer`; sequences are padded to the longest one and truncated to ``max_length``.
    """
    if isinstance(sentences, TextSplit):
        sentences = sentences.sentences
    if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences) or len(sentences) == 0:
        raise TypeError("sentences must be a non-empty list of strings (or a TextSplit)")
    if not callable(tokenizer):
        raise TypeError(f"tokenizer must be a callable tokenizer, got {type(tokenizer).__name__}")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")
    enc = tokenizer(list(sentences), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}


def text_loader(split: TextSplit, tokenizer, batch_size: int = 32, shuffle: bool = False, max_length: int = 64,
                soft: bool = False, seed: int | None = 0, group_by_length: bool = False) -> DataLoader:
    """Batches of ``(input_ids (B, L), y (B,))`` for :func:`kdedu.train.fit`.

    The attention mask is not in the batch: :class:`kdedu.models.SequenceClassifier` and
    :class:`kdedu.models.BiLSTMStudent` rebuild it from the padding id (``input_ids != pad``). With
    ``soft=True`` the targets are the true probabilities ``probs`` (N,) instead of the labels.
    ``shuffle`` is seeded by ``seed``; ``seed=None`` leaves the order to torch's global RNG, which
    :func:`kdedu.train.fit` seeds, so one loader gives each training seed its own order.

    Each batch is cut to its longest sentence (trailing all-padding columns are dropped: the same
    outputs, less work). ``group_by_length=True`` also puts sentences of similar length together
    (:class:`LengthGroupedBatches`), so batches carry little padding; on the synthetic corpus that makes
    a transformer epoch about 1.5x faster.
    """
    if not isinstance(split, TextSplit):
        raise TypeError(f"split must be a TextSplit (e.g. kdedu.data.sentiment('train')), got {type(split).__name__}")
    if soft and split.probs is None:
        raise ValueError("soft=True needs a split with true probabilities (the synthetic corpus), not real data")
    enc = tokenize(split.sentences, tokenizer, max_length)
    target = split.probs if soft else split.y
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = 0 if pad is None else int(pad)
    return batch_loader(TensorDataset(enc["input_ids"], target), enc["attention_mask"].sum(1), batch_size, shuffle,
                        seed, group_by_length, _TrimPadding(pad))


def batch_loader(dataset, lengths: torch.Tensor, batch_size: int, shuffle: bool, seed: int | None,
                 group_by_length: bool, collate_fn) -> DataLoader:
    """The ``DataLoader`` of :func:`text_loader` and :func:`kdedu.methods.precompute_teacher`: shuffled with
    a generator seeded by ``seed`` (``None``: torch's global RNG), batched by :class:`LengthGroupedBatches`
    over the sentence ``lengths`` when ``group_by_length``."""
    if group_by_length:
        sampler = LengthGroupedBatches(lengths, batch_size, shuffle=shuffle, seed=seed)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn)
    generator = torch.Generator().manual_seed(seed) if shuffle and seed is not None else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate_fn)


def trim_padding(input_ids: torch.Tensor, pad_token_id: int = 0) -> int:
    """The width that keeps every non-padding token of a right-padded (B, L) batch (at least 1)."""
    used = (input_ids != pad_token_id).any(0).nonzero()
    return int(used.max()) + 1 if len(used) else 1


class _TrimPadding:
    def __init__(self, pad: int):
        self.pad = pad

    def __call__(self, items):
        ids, y = default_collate(items)
        return ids[:, :trim_padding(ids, self.pad)], y


class LengthGroupedBatches(Sampler):
    """Batches of example indices with similar lengths (like ``group_by_length`` in ``transformers``).

    Shuffled (``shuffle=True``): the indices are permuted, cut into pools of
    ``pool_batches x batch_size``, each pool is sorted by length and cut into batches, and the batch
    order is shuffled; so batches stay random but hold sentences of similar length. Without
    ``shuffle`` the whole set is sorted by length (for evaluation). Every index appears exactly once.
    ``seed`` fixes the sequence of orders; ``seed=None`` draws each epoch's order from torch's global
    RNG, so ``kdedu.train.fit(..., seed=s)`` decides it (like a ``DataLoader(shuffle=True)``).
    """

    def __init__(self, lengths, batch_size: int, shuffle: bool = True, seed: int | None = 0,
                 pool_batches: int = 50):
        self.lengths = torch.as_tensor(lengths).flatten()
        if self.lengths.numel() == 0:
            raise ValueError("lengths is empty")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(pool_batches, bool) or not isinstance(pool_batches, int) or pool_batches < 1:
            raise ValueError(f"pool_batches must be a positive integer, got {pool_batches!r}")
        self.batch_size, self.shuffle, self.pool = batch_size, shuffle, pool_batches * batch_size
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def __iter__(self):
        n = len(self.lengths)
        generator = self.generator
        if generator is None:  # follow the global RNG (seeded by fit)
            generator = torch.Generator().manual_seed(int(torch.randint(2**62, ()).item()))
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        pools = order.split(self.pool) if self.shuffle else [order]
        batches = []
        for pool in pools:
            pool = pool[torch.sort(self.lengths[pool], descending=True, stable=True).indices]
            batches += [b.tolist() for b in pool.split(self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
        return iter(batches)

    def __len__(self) -> int:
        n = len(self.lengths)
        if not self.shuffle:
            return -(-n // self.batch_size)
        full, rest = divmod(n, self.pool)
        return full * -(-self.pool // self.batch_size) + -(-rest // self.batch_size)


# --------------------------------------------------------------------------------------------
# SST-2 (GLUE) through Hugging Face `datasets`: the `full` profile
# --------------------------------------------------------------------------------------------

def _check_split_limit(split: str, limit) -> tuple:
    """``(split, limit)`` of an online loader, checked: ``"val"`` means ``"validation"``."""
    split = "validation" if split == "val" else split
    if split not in ("train", "validation", "test"):
        raise ValueError(f"split must be 'train', 'validation' (or 'val') or 'test', got {split!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    return split, limit


def _local_rows(datasets, data_files, extensions: tuple):
    """A local file (one of ``extensions``) read by ``datasets``: nothing is downloaded."""
    path = os.fspath(data_files)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data_files: no such file {path!r}")
    ext = path.rsplit(".", 1)[-1].lower()
    if ext not in extensions:
        raise ValueError(f"data_files must end in {', '.join('.' + e for e in extensions)}, got {path!r}")
    builder = {"tsv": "csv", "jsonl": "json"}.get(ext, ext)
    extra = {"delimiter": "\t"} if ext == "tsv" else {}
    return datasets.load_dataset(builder, data_files=path, split="train", **extra)

def _hub_reachable(timeout_s: float) -> bool:
    if any(os.environ.get(v, "0").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def sst2(split: str = "train", data_files: str | os.PathLike | None = None, limit: int | None = None,
         timeout_s: float = 5.0) -> TextSplit:
    """The Stanford Sentiment Treebank (GLUE SST-2) as a :class:`TextSplit` (``scores``/``probs`` are None).

    Args:
        split: ``"train"`` (67,349 sentences), ``"validation"`` (872) or ``"test"`` (1,821, labels hidden: -1).
            ``"val"`` is accepted for ``"validation"``.
        data_files: a local parquet/CSV/JSON(L) file with ``sentence`` and ``label`` columns (e.g. a copy of
            the GLUE files); then nothing is downloaded.
        limit: keep only the first ``limit`` rows.
        timeout_s: how long to wait for the hub before concluding that there is no network.

    Needs the ``datasets`` package (``pip install datasets``, or ``pip install 'kdedu[text]'``). Without a
    network it fails at once with what to do; a copy in the ``datasets`` cache is used if there is one.
    """
    split, limit = _check_split_limit(split, limit)
    try:
        import datasets
    except ImportError:
        raise ImportError("sst2() needs the Hugging Face `datasets` package: `pip install datasets` "
                          "(or `pip install 'kdedu[text]'`). Offline, use kdedu.data.sentiment().") from None
    if data_files is not None:
        ds = _local_rows(datasets, data_files, ("parquet", "csv", "tsv", "json", "jsonl"))
    else:
        if _hub_reachable(timeout_s):
            ds = _load_glue(datasets, split, offline=False)
        else:
            try:  # no network: a copy in the local datasets cache still works
                ds = _load_glue(datasets, split, offline=True)
            except Exception:
                raise RuntimeError(
                    "SST-2 is not in the local `datasets` cache and the Hugging Face hub cannot be reached (no "
                    "network, or HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set). Use the offline corpus "
                    "kdedu.data.sentiment(), or pass data_files= a local copy of SST-2."
                ) from None
    missing = {"sentence", "label"} - set(ds.column_names)
    if missing:
        raise ValueError(f"the SST-2 data must have 'sentence' and 'label' columns; missing {sorted(missing)}")
    n = len(ds) if limit is None else min(limit, len(ds))
    rows = ds.select(range(n)) if n < len(ds) else ds
    return TextSplit(sentences=[str(s) for s in rows["sentence"]],
                     y=torch.tensor(list(rows["label"]), dtype=torch.int64))


def _load_glue(datasets, split: str, offline: bool):
    if not offline:
        return datasets.load_dataset("nyu-mll/glue", "sst2", split=split)
    # offline: read the local cache only. `local_files_only` alone still sends (retried) HEAD requests,
    # so the libraries' offline switches are turned on for the call and restored afterwards.
    switches = []
    for module_name in ("datasets.config", "huggingface_hub.constants"):
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, "HF_HUB_OFFLINE"):
            switches.append((module, module.HF_HUB_OFFLINE))
            module.HF_HUB_OFFLINE = True
    try:
        config = datasets.DownloadConfig(local_files_only=True)
        return datasets.load_dataset("nyu-mll/glue", "sst2", split=split, download_config=config)
    finally:
        for module, value in switches:
            module.HF_HUB_OFFLINE = value
